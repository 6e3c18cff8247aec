"""`python -m patching bench`: our sweeps vs TransformerLens' patching.py and vs the same sweep
written in nnsight, same process, same inputs.

Two lines per sweep, one per reference: kind, number of indices, reference seconds, our seconds,
speed-up, max abs difference of the values. Sweeps: resid_pre (layer x pos) and head_out per position
(layer x pos x head) on the shipped default model and on a random-weight GPT-2-small-shaped
model (12 layers, d_model 768, 12 heads, 20-token prompts). Wall-clock and CPU-time (process_time)
ratios are both printed: CPU time is robust to other load on a shared machine. `--quick` times the reference on a
sample of indices and scales its time to the full sweep (the line says so).

>>> run_bench(quick=True, models=["default"])      # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from metrics import MetricInputs, get_metric

from patching.methods.sweep import sweep
from patching.model.loading import load_model
from patching.core.prompts import PromptPair, PromptSet
from patching.core.spec import PatchSpec
from patching.bench import nnsight_ref

SWEEPS = (("resid_pre", False), ("head_out", True))


def _save_random_gpt2(directory: Path, n_layers=12, d_model=768, n_heads=12, vocab=50257) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=1024, n_embd=d_model,
                                       n_layer=n_layers, n_head=n_heads))
    model.save_pretrained(directory, safe_serialization=True)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab_map = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(sorted(alphabet))}}
    tok = Tokenizer(models.BPE(vocab=vocab_map, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>").save_pretrained(directory)
    return directory


def _random_prompts(model, n_pos: int = 20, seed: int = 0) -> PromptSet:
    """A BOS + random-token clean prompt; the corrupt one differs at three positions."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.cfg.d_vocab
    clean = torch.randint(1, vocab, (1, n_pos), generator=g)
    clean[0, 0] = model.bos_token_id
    corrupt = clean.clone()
    for p in (3, 9, 15):
        corrupt[0, p] = (clean[0, p] + 1 + torch.randint(vocab - 2, (1,), generator=g)) % vocab
    answer, wrong = torch.randint(1, vocab, (2,), generator=g)
    labels = tuple(f"t{int(t)}" for t in clean[0])
    pair = PromptPair(" ".join(labels), "corrupt", f"t{int(answer)}", f"t{int(wrong)}")
    return PromptSet((pair,), clean, corrupt, answer[None], wrong[None], labels, True)


def _reference(model, prompts: PromptSet, kind: str, per_position: bool, sample: int | None):
    """TransformerLens' own sweep (denoise, logit_diff); on a sample of indices when asked."""
    from transformer_lens import patching as tlp
    fn = tlp.get_act_patch_resid_pre if kind == "resid_pre" else tlp.get_act_patch_attn_head_out_by_pos
    axes = ["layer", "pos"] if kind == "resid_pre" else ["layer", "pos", "head_index"]
    sizes = [model.n_layers, prompts.n_pos] + ([model.n_heads] if kind != "resid_pre" else [])
    grid = torch.cartesian_prod(*[torch.arange(s) for s in sizes]).reshape(-1, len(sizes))
    if sample is not None and sample < len(grid):
        grid = grid[torch.randperm(len(grid), generator=torch.Generator().manual_seed(0))[:sample]]
    ld = get_metric("logit_diff")
    inputs = MetricInputs.of(prompts, None)
    metric = lambda logits: ld(logits[:, -1], inputs).mean()   # noqa: E731
    _, clean_cache = model.bridge.run_with_cache(prompts.clean_tokens)
    start, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stderr(io.StringIO()):          # TransformerLens' own tqdm bar
        values = fn(model.bridge, prompts.corrupt_tokens, clean_cache, metric, index_axis_names=None,
                    index_df=pd.DataFrame(grid.numpy(), columns=axes))
    return (grid, values.double(), time.perf_counter() - start, time.process_time() - cpu,
            int(torch.tensor(sizes).prod()))


def bench_one(model, prompts: PromptSet, kind: str, per_position: bool, sample: int | None,
              nnsight: bool = True) -> dict:
    """Our sweep timed against TransformerLens' (and nnsight's, on GPT-2 models) on the same indices."""
    sweep(model, prompts, PatchSpec(kind=kind, per_position=per_position, layers=(0,)))   # warm-up
    grid, ref_values, ref_s, ref_cpu, n_total = _reference(model, prompts, kind, per_position, sample)
    start, cpu = time.perf_counter(), time.process_time()
    ours = sweep(model, prompts, PatchSpec(kind=kind, per_position=per_position))
    ours_s, ours_cpu = time.perf_counter() - start, time.process_time() - cpu
    ours_at = ours.values[tuple(grid.T)]
    scale = n_total / len(grid)
    row = {"kind": kind + ("_per_pos" if per_position else ""), "indices": n_total,
           "reference_s": ref_s * scale, "ours_s": ours_s, "speedup": ref_s * scale / ours_s,
           "reference_cpu_s": ref_cpu * scale, "ours_cpu_s": ours_cpu,
           "cpu_speedup": ref_cpu * scale / max(ours_cpu, 1e-9),
           "max_abs_diff": float((ours_at - ref_values).abs().max()),
           "reference_sampled": len(grid) < n_total, "sampled": len(grid)}
    if nnsight and nnsight_ref.supports(model):
        _, nn_values, nn_s, nn_cpu, _ = nnsight_ref.nnsight_reference(model, prompts, kind, per_position,
                                                                      sample, grid=grid)
        row.update({"nnsight_s": nn_s * scale, "nnsight_speedup": nn_s * scale / ours_s,
                    "nnsight_cpu_speedup": nn_cpu * scale / max(ours_cpu, 1e-9),
                    "nnsight_max_abs_diff": float((ours_at - nn_values).abs().max())})
    return row


def _sweep_lines(name: str, row: dict) -> str:
    note = f"  (timed on {row['sampled']} indices, scaled)" if row["reference_sampled"] else ""
    lines = [(row["reference_s"], row["speedup"], row["max_abs_diff"], row["cpu_speedup"], "TransformerLens")]
    if "nnsight_s" in row:
        lines.append((row["nnsight_s"], row["nnsight_speedup"], row["nnsight_max_abs_diff"],
                      row["nnsight_cpu_speedup"], "nnsight"))
    return "".join(f"{name:<20} {row['kind']:<18} {row['indices']:>8} {ref_s:>9.2f} {row['ours_s']:>8.3f} "
                   f"{speedup:>8.1f}x {diff:>10.2e} {cpu:>17.1f}x  vs {ref}{note}\n"
                   for ref_s, speedup, diff, cpu, ref in lines)


def run_bench(quick: bool = False, models: list[str] | tuple[str, ...] = ("default", "gpt2-small-random"),
              out=sys.stdout, circuits: bool = True) -> list[dict]:
    rows = []
    out.write(f"{'model':<20} {'sweep':<18} {'indices':>8} {'ref s':>9} {'ours s':>8} {'speed-up':>9} "
              f"{'max|diff|':>10} {'CPU-time speed-up':>18}  reference\n")
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            if name == "gpt2-small-random":
                model = load_model(str(_save_random_gpt2(Path(tmp) / "gpt2-small-random")))
                prompts = _random_prompts(model)
            else:
                try:
                    model = load_model(name)
                except ValueError as exc:
                    out.write(f"{name:<20} skipped: {exc}\n")
                    continue
                from patching.tasks.families import make_pairs
                pair = make_pairs("ioi", 1, split="eval", seed=0)[0]
                prompts = PromptSet.single(model, pair.clean, pair.corrupt, pair.answer, pair.wrong)
            for kind, per_position in SWEEPS:
                sample = (48 if kind == "resid_pre" else 96) if quick else None
                row = {"model": name, **bench_one(model, prompts, kind, per_position, sample)}
                rows.append(row)
                out.write(_sweep_lines(name, row))
                out.flush()
            if circuits and name != "gpt2-small-random":
                _circuit_lines(model, prompts, name, rows, out)
    return rows


def _circuit_lines(model, prompts, name: str, rows: list, out) -> None:
    """Path patching vs the naive hooked method; attribution in forward-pass equivalents."""
    from patching.bench.circuits import bench_path_and_attribution
    for row in bench_path_and_attribution(model, prompts):
        rows.append({"model": name, **row})
        ratio = f"{row['ratio']:>8.1f}x" if row.get("ratio") else f"{'':>9}"
        ref = f"{row['reference_seconds']:>9.2f}" if row.get("reference_seconds") else f"{'':>9}"
        fe = row.get("forward_equivalents")
        extra = f"  {fe:.1f} forward-equivalents" if fe is not None else ""
        diff = row.get("max_abs_diff")
        out.write(f"{name:<20} {row['name']:<18} {'':>8} {ref} {row['seconds']:>8.3f} {ratio} "
                  f"{(f'{diff:.2e}' if diff is not None else ''):>10}{extra}  vs {row.get('reference', '')}\n")
        out.flush()
