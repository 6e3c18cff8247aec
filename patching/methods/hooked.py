"""Hook-based patching through TransformerLens, for architectures the runner does not cover.

Still batched (many patched runs per forward, each row patching its own index), but every run
starts at layer 0 and computes every position: correct for any model the bridge supports,
without the runner's savings.

>>> sweep(model_without_runner, prompts, PatchSpec(kind="head_out"))   # doctest: +SKIP
"""
from __future__ import annotations

import itertools
import time

import torch

from patching.kinds import KINDS
from patching.model.loading import require_runner
from patching.core.results import PatchResult
from patching.methods.pair import CachedPair

ROWS_PER_FORWARD = 64


def _setter(kind_name: str, idx: torch.Tensor, pair: torch.Tensor, donor: torch.Tensor, mask):
    """A hook that writes each row's index of the donor activation into the batch."""
    rows = torch.arange(len(pair))

    def hook(act, hook):
        act = act.clone()
        if kind_name == "neuron":
            m = mask.nonzero()[:, 0]
            act[rows[:, None], m[None], idx[:, 0][:, None]] = donor[pair[:, None], m[None], idx[:, 0][:, None]]
        elif kind_name == "head_pattern":                       # [b, H, dest, src]
            if idx.shape[1] == 2:
                act[rows, idx[:, 1], idx[:, 0]] = donor[pair, idx[:, 1], idx[:, 0]]
            else:
                act[rows, idx[:, 0]] = donor[pair, idx[:, 0]]
        elif act.dim() == 4:                                     # [b, T, H, d_head]
            if idx.shape[1] == 2:
                act[rows, idx[:, 0], idx[:, 1]] = donor[pair, idx[:, 0], idx[:, 1]]
            else:
                act[rows, :, idx[:, 0]] = donor[pair, :, idx[:, 0]]
        else:                                                    # [b, T, d]
            act[rows, idx[:, 0]] = donor[pair, idx[:, 0]]
        return act
    return hook


def sweep_with_hooks(model, prompts, spec, metric, axes, coords, on_progress, start) -> PatchResult:
    kind = KINDS[spec.kind]
    if spec.kind == "feature":
        require_runner(model, "SAE feature patching")
    if spec.kind == "resid_mid":
        raise ValueError(f"resid_mid patching needs Patchboard's own runner, which does not support "
                         f"{model.cfg.architecture!r}; use resid_pre, resid_post, attn_out or mlp_out")
    bridge = model.bridge
    clean_tokens, corrupt_tokens = prompts.clean_tokens, prompts.corrupt_tokens
    base_tokens, donor_tokens = ((corrupt_tokens, clean_tokens) if spec.direction == "denoise"
                                 else (clean_tokens, corrupt_tokens))
    names = {kind.hook(layer) for layer in coords["layer"]}
    with torch.inference_mode():
        clean_logits, clean_cache = bridge.run_with_cache(clean_tokens, names_filter=lambda n: n in names)
        corrupt_logits = bridge(corrupt_tokens)
        donor_cache = clean_cache if spec.direction == "denoise" else bridge.run_with_cache(
            donor_tokens, names_filter=lambda n: n in names)[1]
    n_pairs = prompts.n_pairs
    pair_runs = CachedPair.from_logits(prompts, clean_logits[:, -1], corrupt_logits[:, -1], metric, spec.direction)
    all_pairs = torch.arange(n_pairs)
    mask = torch.zeros(prompts.n_pos, dtype=torch.bool)
    mask[list(spec.positions) if spec.positions is not None else slice(None)] = True
    shape = [len(coords[a]) for a in axes]
    per_pair = torch.full((*shape, n_pairs), float("nan"), dtype=torch.float64)
    index_axes = axes[1:]
    cells = list(itertools.product(*[range(len(coords[a])) for a in index_axes]))
    wanted = [[c for c in cells if spec.heads is None
               or (layer, coords["head"][c[index_axes.index("head")]]) in set(spec.heads)] for layer in coords["layer"]]
    total, done = sum(map(len, wanted)) * n_pairs, 0      # patched forwards, as the cost estimate counts
    if on_progress is not None:
        on_progress(0, total)
    chunk = max(1, ROWS_PER_FORWARD // n_pairs)
    for li, layer in enumerate(coords["layer"]):
        layer_cells = wanted[li]
        donor = donor_cache[kind.hook(layer)]
        for lo in range(0, len(layer_cells), chunk):
            part = layer_cells[lo:lo + chunk]
            idx = torch.tensor([[coords[a][c[j]] for j, a in enumerate(index_axes)] for c in part])
            i, pair = idx.repeat_interleave(n_pairs, 0), all_pairs.repeat(len(part))
            with torch.inference_mode():
                logits = bridge.run_with_hooks(base_tokens.repeat(len(part), 1),
                                               fwd_hooks=[(kind.hook(layer), _setter(spec.kind, i, pair, donor, mask))])
            values = pair_runs.measure(logits[:, -1], pair).view(len(part), n_pairs)
            for c, v in zip(part, values):
                per_pair[(li, *c)] = v
            done += len(part) * n_pairs
            if on_progress is not None:
                on_progress(done, total)
    return PatchResult(spec, axes, coords, per_pair, pair_runs.clean_baseline,
                       pair_runs.corrupt_baseline, prompts.str_tokens, metric.clean_is,
                       time.perf_counter() - start, model.name)
