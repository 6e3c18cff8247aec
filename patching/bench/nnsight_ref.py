"""The same sweeps written as an nnsight user would: a second reference for `python -m patching bench`.

One trace saves the clean run's activations; then traces of many `tracer.invoke(corrupt)` blocks,
which nnsight batches into one forward each, patch one index per invoke and save the logit
difference (nnsight's documented activation-patching pattern). GPT-2-family models only (the
module paths are GPT-2's: `transformer.h[L].input` is resid_pre, `attn.c_proj.input` the heads'
concatenated z); other families are reported as not run.

>>> from patching import load_model, PromptSet
>>> model = load_model("default")
>>> prompts = PromptSet.single(model, "When Mary and John went out, John gave it to",
...                            "When Mary and John went out, Mary gave it to", " Mary", " John")
>>> grid, values, seconds, cpu, total = nnsight_reference(model, prompts, "resid_pre", False, sample=3)
>>> tuple(grid.shape), tuple(values.shape), total == model.n_layers * prompts.n_pos
((3, 2), (3,), True)
"""
from __future__ import annotations

import time
import warnings

import torch

INVOKES_PER_TRACE = 128          # a batch per trace, as a user would chunk a long sweep


def supports(model) -> bool:
    """Whether the nnsight reference knows this model's module paths (GPT-2 family)."""
    return getattr(model.hf.config, "model_type", "") == "gpt2"


def _language_model(model):
    from nnsight import LanguageModel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LanguageModel(model.hf, tokenizer=model.tokenizer)


def _site(lm, kind: str, layer: int):
    block = lm.transformer.h[layer]
    return block.input if kind == "resid_pre" else block.attn.c_proj.input


def nnsight_reference(model, prompts, kind: str, per_position: bool, sample: int | None,
                      grid: torch.Tensor | None = None):
    """(grid [n, axes], values [n], seconds, cpu seconds, indices in the full sweep) for a denoising
    logit-difference sweep of `kind` (resid_pre, or head_out per position) on pair 0, with nnsight.

    `grid` (e.g. the indices TransformerLens was timed on) is used when given, else a seeded sample
    of `sample` indices (None: all).
    """
    if kind not in ("resid_pre", "head_out") or (kind == "head_out" and not per_position):
        raise ValueError(f"the nnsight reference covers resid_pre and head_out per position, not {kind!r}")
    n_layers, n_pos, n_heads = model.n_layers, prompts.n_pos, model.n_heads
    sizes = [n_layers, n_pos] + ([n_heads] if kind == "head_out" else [])
    n_total = int(torch.tensor(sizes).prod())
    if grid is None:
        grid = torch.cartesian_prod(*[torch.arange(s) for s in sizes]).reshape(-1, len(sizes))
        if sample is not None and sample < len(grid):
            grid = grid[torch.randperm(len(grid), generator=torch.Generator().manual_seed(0))[:sample]]
    d_head = model.hf.config.n_embd // n_heads
    clean, corrupt = prompts.clean_tokens[:1], prompts.corrupt_tokens[:1]
    answer, wrong = int(prompts.answer_ids[0]), int(prompts.wrong_ids[0])
    lm = _language_model(model)
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        saved = []
        with lm.trace(clean):
            for layer in range(n_layers):
                saved.append(_site(lm, kind, layer).save())
        values = []
        for chunk in grid.split(INVOKES_PER_TRACE):
            with lm.trace() as tracer:
                for index in chunk.tolist():
                    layer, pos = index[0], index[1]
                    cols = slice(None) if kind == "resid_pre" else slice(index[2] * d_head, (index[2] + 1) * d_head)
                    with tracer.invoke(corrupt):
                        _site(lm, kind, layer)[:, pos, cols] = saved[layer][:, pos, cols]
                        logits = lm.lm_head.output
                        values.append((logits[0, -1, answer] - logits[0, -1, wrong]).save())
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    return grid, torch.stack([v.reshape(()) for v in values]).double(), seconds, cpu_seconds, n_total
