"""Train sparse autoencoders on a model's residual stream (block inputs, every layer) and write
them in sae-lens' format beside the model, with their quality numbers.

    python scripts/train_saes.py                     # the shipped model -> assets/models/patchboard-tiny/saes/
    python scripts/train_saes.py --model DIR --out DIR --d-sae 512 --steps 4000 --seed 0
    python scripts/train_saes.py --steps 20 --items 300 --out /tmp/saes   # a smoke run (seconds)

Data: the activations of `blocks.L.hook_resid_pre` on the model's task corpus plus filler text
(`patching.tasks.families.training_examples`, the same generator the model was trained on, a
different seed), every position but BOS (whose residual is one fixed vector per model, not worth
features); 10% of the items are held out for the quality numbers. Read with plain `transformers`
(`output_hidden_states`), not through the engine.

SAE: sae-lens' `standard` architecture (ReLU(W_enc (x - b_dec) + b_enc), decoded by W_dec + b_dec)
trained with MSE + l1 * sum_i f_i ||W_dec[i]||, Adam, decoder rows renormalised to unit norm
after each step, b_dec initialised at the data mean. Seeded and single-threaded: the same flags
give the same bytes.

Quality, on the held-out items (written to `<out>/quality.json` and printed):
explained variance 1 - |x - x_hat|^2 / |x - mean|^2; L0 (mean active features per token); dead
features (never active on the held-out set); and the loss recovered when the reconstruction
(without its error) replaces the layer's input: (CE_zero - CE_sae) / (CE_zero - CE_model), CE_zero
with that input zero-ablated.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from patching.model.sae import Sae, save_sae  # noqa: E402
from patching.tasks.families import training_examples  # noqa: E402

DEFAULT_MODEL = ROOT / "assets" / "models" / "patchboard-tiny"
BOS = "<|endoftext|>"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a local model directory")
    p.add_argument("--out", type=Path, default=None, help="default: <model>/saes")
    p.add_argument("--d-sae", type=int, default=512, help="features per SAE (default 4 x d_model)")
    p.add_argument("--l1", type=float, default=8e-3, help="sparsity coefficient")
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--items", type=int, default=6000, help="corpus items (10%% held out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def token_rows(tokenizer, items: list[str]) -> list[list[int]]:
    return [tokenizer(BOS + text)["input_ids"] for text in items]


@torch.no_grad()
def residuals(model, rows: list[list[int]]) -> list[torch.Tensor]:
    """[n_layers] of [tokens, d_model]: each layer's block input at every position but BOS."""
    per_layer: list[list[torch.Tensor]] = [[] for _ in range(model.config.n_layer)]
    by_len: dict[int, list[list[int]]] = {}
    for r in rows:
        by_len.setdefault(len(r), []).append(r)
    for length in sorted(by_len):
        group = torch.tensor(by_len[length])
        for start in range(0, len(group), 256):
            hidden = model(group[start:start + 256], output_hidden_states=True).hidden_states
            for layer in range(model.config.n_layer):
                per_layer[layer].append(hidden[layer][:, 1:].reshape(-1, hidden[layer].shape[-1]))
    return [torch.cat(xs) for xs in per_layer]


def train_one(x: torch.Tensor, hook_name: str, args: argparse.Namespace, seed: int) -> Sae:
    """One standard SAE on activations x [n, d]."""
    g = torch.Generator().manual_seed(seed)
    d = x.shape[1]
    w_dec = torch.randn(args.d_sae, d, generator=g)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    params = {"W_enc": w_dec.T.clone().requires_grad_(), "b_enc": torch.zeros(args.d_sae, requires_grad=True),
              "W_dec": w_dec.requires_grad_(), "b_dec": x.mean(0).clone().requires_grad_()}
    opt = torch.optim.Adam(params.values(), lr=args.lr)
    scale = x.norm(dim=1).mean()          # MSE in units of the typical activation norm
    for step in range(args.steps):
        batch = x[torch.randint(len(x), (args.batch_size,), generator=g)]
        f = torch.relu((batch - params["b_dec"]) @ params["W_enc"] + params["b_enc"])
        recon = f @ params["W_dec"] + params["b_dec"]
        mse = ((recon - batch) ** 2).sum(-1).mean() / scale ** 2
        l1 = (f * params["W_dec"].norm(dim=1)).sum(-1).mean() / scale
        loss = mse + args.l1 * l1 * args.d_sae / 64
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            params["W_dec"] /= params["W_dec"].norm(dim=1, keepdim=True)
    p = {k: v.detach().clone() for k, v in params.items()}
    return Sae(hook_name, p["W_enc"], p["b_enc"], p["W_dec"], p["b_dec"],
               metadata={"model_name": "patchboard-tiny", "trained_by": "scripts/train_saes.py"})


@torch.no_grad()
def mean_ce(model, rows: list[list[int]], layer: int | None = None, replace=None) -> float:
    """Mean next-token cross-entropy over rows; with `replace`, block `layer`'s input x becomes
    replace(x) at every position but BOS."""
    handle = None
    if replace is not None:
        def pre_hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            new = hidden.clone()
            new[:, 1:] = replace(hidden[:, 1:])
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}
        handle = model.transformer.h[layer].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        total, count = 0.0, 0
        for r in rows:
            ids = torch.tensor([r])
            logits = model(ids).logits[0, :-1]
            total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += len(r) - 1
        return total / count
    finally:
        if handle is not None:
            handle.remove()


@torch.no_grad()
def quality(model, sae: Sae, x: torch.Tensor, rows: list[list[int]]) -> dict:
    acts = sae.encode(x)
    recon = sae.decode(acts)
    ev = 1 - ((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    ce_model = mean_ce(model, rows)
    ce_sae = mean_ce(model, rows, sae.layer, lambda h: sae.decode(sae.encode(h)))
    ce_zero = mean_ce(model, rows, sae.layer, torch.zeros_like)
    return {"hook_name": sae.hook_name, "d_sae": sae.d_sae, "tokens": len(x),
            "explained_variance": round(float(ev), 4),
            "l0": round(float((acts > 0).float().sum(-1).mean()), 2),
            "dead_features": int(((acts > 0).sum(0) == 0).sum()),
            "ce_model": round(ce_model, 4), "ce_with_sae": round(ce_sae, 4), "ce_zero_ablated": round(ce_zero, 4),
            "loss_recovered": round((ce_zero - ce_sae) / (ce_zero - ce_model), 4)}


def main(argv: list[str] | None = None) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = args.out or args.model / "saes"
    started, cpu_started = time.perf_counter(), time.process_time()
    model = AutoModelForCausalLM.from_pretrained(args.model, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    items = [text for _, text in training_examples(args.items, seed=1000 + args.seed)]
    n_held = max(1, len(items) // 10)
    train_rows, held_rows = token_rows(tokenizer, items[n_held:]), token_rows(tokenizer, items[:n_held])
    train_x, held_x = residuals(model, train_rows), residuals(model, held_rows)
    report = {"model": str(args.model.name), "seed": args.seed, "args": {k: str(v) for k, v in vars(args).items()},
              "saes": []}
    for layer, x in enumerate(train_x):
        hook = f"blocks.{layer}.hook_resid_pre"
        t0 = time.perf_counter()
        sae = train_one(x, hook, args, seed=args.seed * 100 + layer)
        save_sae(sae, out / hook)
        q = quality(model, sae, held_x[layer], held_rows[:300])
        q["train_s"] = round(time.perf_counter() - t0, 1)
        report["saes"].append(q)
        print(json.dumps(q), flush=True)
    report["total_s"] = round(time.perf_counter() - started, 1)
    report["cpu_s"] = round(time.process_time() - cpu_started, 1)     # this process's CPU time
    (out / "quality.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {len(train_x)} SAEs to {out} in {report['total_s']} s")
    return report


if __name__ == "__main__":
    main()
