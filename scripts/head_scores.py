"""Previous-token, duplicate-token and induction scores of every head, with plain `transformers`
(no Patchboard engine): an independent check of `python -m patching heads`.

    python scripts/head_scores.py assets/models/patchboard-circuits [--n 64] [--half 20] [--seed 0]
    python scripts/head_scores.py DIR --json        # one JSON object instead of the table

Input: BOS followed by a random half of distinct tokens drawn uniformly from the vocabulary
(special tokens excluded) and the same half again, as in Olsson et al. Scores are mean attention
weights: previous-token from each position after BOS to the one before it; duplicate-token from
each second-half token to its first occurrence; induction from each second-half token to the
token after its first occurrence. A textbook head scores well above 0.5.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def random_repeats(vocab: int, special: set[int], bos: int, n: int, half: int,
                   seed: int) -> torch.Tensor:
    """[n, 1 + 2 * half] ids: BOS, a random half without repeats, the half again.

    >>> t = random_repeats(50, {0}, 0, 2, 4, seed=0)
    >>> tuple(t.shape), bool((t[:, 1:5] == t[:, 5:]).all()), bool((t[:, 1:] != 0).all())
    ((2, 9), True, True)
    """
    pool = torch.tensor([i for i in range(vocab) if i not in special])
    g = torch.Generator().manual_seed(seed)
    halves = torch.stack([pool[torch.randperm(len(pool), generator=g)[:half]] for _ in range(n)])
    return torch.cat([torch.full((n, 1), bos), halves, halves], dim=1)


def scores(attentions: torch.Tensor, half: int) -> dict[str, torch.Tensor]:
    """attentions [layer, batch, head, dest, src] -> {detector: [layer, head] mean weight}.

    >>> a = torch.zeros(1, 1, 1, 5, 5)
    >>> a[0, 0, 0, 3, 2] = a[0, 0, 0, 4, 3] = 1.0        # dest 3 -> 2, dest 4 -> 3: induction
    >>> scores(a, 2)["induction"].tolist()
    [[1.0]]
    """
    n_pos = attentions.shape[-1]
    prev = torch.arange(1, n_pos)
    second = torch.arange(1 + half, n_pos)
    pick = {"previous_token": (prev, prev - 1), "duplicate_token": (second, second - half),
            "induction": (second, second - half + 1)}
    return {name: attentions[..., dest, src].mean(dim=(1, 3)) for name, (dest, src) in pick.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="a model directory (config.json + safetensors)")
    ap.add_argument("--n", type=int, default=64, help="sequences")
    ap.add_argument("--half", type=int, default=20, help="tokens per half")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="eager").eval()
    special = {i for i in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) if i is not None}
    ids = random_repeats(model.config.vocab_size, special, tok.bos_token_id, args.n, args.half,
                         args.seed)
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True)
    result = {name: [[round(float(v), 4) for v in row] for row in grid]
              for name, grid in scores(torch.stack(out.attentions), args.half).items()}
    if args.json:
        print(json.dumps(result))
        return result
    for name, grid in result.items():
        best = max((v, layer, head) for layer, row in enumerate(grid) for head, v in enumerate(row))
        print(f"{name}: best L{best[1]}H{best[2]} = {best[0]:.3f}")
        for layer, row in enumerate(grid):
            print(f"  L{layer}  " + "  ".join(f"{v:.3f}" for v in row))
    return result


if __name__ == "__main__":
    main()
