"""Score a model on the held-out items of every task in :mod:`patching.tasks.families`.

    >>> from patching.tasks.evaluate import evaluate, format_table
    >>> print(format_table(evaluate("assets/models/patchboard-tiny", n=100)))  # doctest: +SKIP

Metrics, all at the last prompt position with BOS prepended (as the engine does):

- ``ioi.accuracy``: fraction of prompts where logit(IO) > logit(S) (the answer beats the
  subject); ``ioi.logit_diff``: mean logit(IO) - logit(S).
- ``factual.accuracy``: fraction where the country is the top-1 token of the whole vocabulary.
- ``greater_than.prob_mass``: mean probability (softmax over the whole vocabulary) on the
  two-digit tokens greater than the start year (Hanna et al.'s P(YY > start)).
- ``induction.accuracy``: fraction where the repeated token is the top-1 token.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch

from patching.tasks.families import TASKS, TaskPair, greater_than_start, make_pairs

__all__ = ["evaluate", "format_table", "DEFAULT_N"]

DEFAULT_N = 200          # items per task

LogitsFn = Callable[[torch.Tensor], torch.Tensor]   # tokens [batch, pos] -> logits [batch, pos, vocab]


def _load(model: Any, tokenizer: Any = None) -> tuple[LogitsFn, Any]:
    """-> (tokens -> logits, tokenizer) for a model directory, a HF model or a TransformerBridge."""
    if isinstance(model, (str, Path)):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model)
        if not (path / "config.json").exists():
            raise ValueError(f"no model at {str(path)!r}: expected a directory with config.json "
                             "and model.safetensors")
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
        model.eval()
    tokenizer = tokenizer or getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("pass tokenizer= for a model object that has no .tokenizer")

    def logits_fn(tokens: torch.Tensor) -> torch.Tensor:
        out = model(tokens)
        return out.logits if hasattr(out, "logits") else out

    return logits_fn, tokenizer


def _single_token(tokenizer: Any, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"answer {text!r} is {len(ids)} tokens {ids}, expected exactly one")
    return ids[0]


@torch.no_grad()
def _last_logits(logits_fn: LogitsFn, tokenizer: Any, prompts: list[str],
                 batch_size: int = 64) -> torch.Tensor:
    """Final-position logits ``[len(prompts), vocab]``, BOS prepended; equal-length batches."""
    bos = tokenizer.bos_token_id
    ids = [[bos] + tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, seq in enumerate(ids):
        by_len[len(seq)].append(i)
    out: list[torch.Tensor | None] = [None] * len(prompts)
    for idxs in by_len.values():
        for lo in range(0, len(idxs), batch_size):
            chunk = idxs[lo: lo + batch_size]
            tokens = torch.tensor([ids[i] for i in chunk])
            last = logits_fn(tokens)[:, -1].float()
            for j, i in enumerate(chunk):
                out[i] = last[j]
    return torch.stack(out)


def evaluate(model_dir_or_bridge: Any, n: int = DEFAULT_N, *, seed: int = 0,
             tokenizer: Any = None) -> dict:
    """Held-out task scores of a model (a directory, a HF causal LM or a TransformerBridge).

    Returns ``{"ioi": {"accuracy", "logit_diff"}, "factual": {"accuracy"},
    "greater_than": {"prob_mass"}, "induction": {"accuracy"}, "n": {task: items}}``.

    >>> evaluate("assets/models/patchboard-tiny", n=50)["ioi"]["accuracy"] > 0.9  # doctest: +SKIP
    True
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, not {n!r}")
    logits_fn, tok = _load(model_dir_or_bridge, tokenizer)
    pairs = {task: make_pairs(task, n, split="eval", seed=seed) for task in TASKS}

    def ids(ps: list[TaskPair], field: str) -> torch.Tensor:
        return torch.tensor([_single_token(tok, getattr(p, field)) for p in ps])

    result: dict[str, Any] = {}

    ps = pairs["ioi"]
    last = _last_logits(logits_fn, tok, [p.clean for p in ps])
    diff = last.gather(1, ids(ps, "answer")[:, None])[:, 0] - last.gather(
        1, ids(ps, "wrong")[:, None])[:, 0]
    result["ioi"] = {"accuracy": round((diff > 0).float().mean().item(), 4),
                     "logit_diff": round(diff.mean().item(), 4)}

    def top1(task: str) -> dict:
        ps = pairs[task]
        last = _last_logits(logits_fn, tok, [p.clean for p in ps])
        return {"accuracy": round((last.argmax(-1) == ids(ps, "answer")).float().mean().item(), 4)}

    result["factual"] = top1("factual")

    ps = pairs["greater_than"]
    last = _last_logits(logits_fn, tok, [p.clean for p in ps])
    probs = last.softmax(-1)                                    # [n, vocab]
    year_ids = torch.tensor([_single_token(tok, f"{y:02d}") for y in range(100)])
    year_probs = probs[:, year_ids]                             # [n, 100]
    starts = torch.tensor([greater_than_start(p.clean) for p in ps])
    above = torch.arange(100)[None, :] > starts[:, None]        # [n, 100]
    result["greater_than"] = {
        "prob_mass": round((year_probs * above).sum(-1).mean().item(), 4)}

    result["induction"] = top1("induction")
    result["n"] = {task: len(pairs[task]) for task in TASKS}
    return result


TARGETS = {("ioi", "accuracy"): 0.95, ("ioi", "logit_diff"): 3.0,
           ("factual", "accuracy"): 0.90, ("greater_than", "prob_mass"): 0.80,
           ("induction", "accuracy"): 0.90}


def format_table(d: dict) -> str:
    """A plain-text table of :func:`evaluate`'s result, with the shipped model's targets.

    >>> print(format_table({"ioi": {"accuracy": 1.0, "logit_diff": 4.0}, "n": {"ioi": 10}}))
    task  metric      value  target  n
    ioi   accuracy    1.000  >=0.95  10
    ioi   logit_diff  4.000  >=3     10
    """
    rows = [("task", "metric", "value", "target", "n")]
    for task, metrics in d.items():
        if task == "n":
            continue
        for metric, value in metrics.items():
            target = TARGETS.get((task, metric))
            rows.append((task, metric, f"{value:.3f}",
                         "" if target is None else f">={target:g}",
                         str(d.get("n", {}).get(task, ""))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


if __name__ == "__main__":   # python -m patching.tasks.evaluate [DIR] [N]
    import json
    import sys

    t0 = time.time()
    res = evaluate(sys.argv[1] if len(sys.argv) > 1 else "assets/models/patchboard-tiny",
                   n=int(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_N)
    print(format_table(res))
    print(json.dumps(res))
    print(f"({time.time() - t0:.1f} s)")
