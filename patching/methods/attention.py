"""Counterfactual attention: one head's pattern in the clean, corrupt and patched runs.

For a head (layer, head) and one prompt pair, `counterfactual_attention` returns the head's
attention pattern [dest, src] in the clean run, the corrupt run and the run of a chosen patch
(a `PatchSpec` plus one cell of its sweep, e.g. the heatmap cell a user clicked), with the
differences clean - corrupt and patched - corrupt. `AttentionDiff.plot()` draws the dashboard's
figure (patching/figures), and in a notebook the diff shows itself (summary + figure).

"patched" is the run that spec + index describe, in spec.direction: denoise patches the clean
activation into the corrupt run, noise the corrupt activation into the clean run. Without a
spec it is the unpatched corrupt run (denoise's base). A patch at a later layer than the head,
or one that cannot reach the pattern (e.g. head_v, attn_out of the same layer), leaves it as in
the base run.

>>> diff = counterfactual_attention(model, prompts, layer=2, head=1,
...     spec=PatchSpec(kind="head_out", per_position=True), index={"layer": 1, "pos": 5, "head": 2})  # doctest: +SKIP
>>> diff.patched_minus_corrupt.shape                                              # doctest: +SKIP
torch.Size([15, 15])
>>> diff.to_csv("attention.csv")                                                  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor

from patching.kinds import KINDS, PatchContext
from patching.model.loading import require_runner
from patching.methods.path import PathSpec, path_patched_pattern
from patching.core.prompts import PromptSet
from patching.core.results import write_csv
from patching.model.runner import Edit, RunCache
from patching.core.spec import PatchSpec, check_whole
from patching.methods.pair import CachedPair


@dataclass(frozen=True, eq=False)
class AttentionDiff:
    """One head's attention pattern in three runs of one prompt pair; tensors are [dest, src]."""
    layer: int
    head: int
    str_tokens: tuple[str, ...]          # the clean prompt's tokens (the clean panel's labels)
    clean: Tensor = field(repr=False)    # [dest, src]
    corrupt: Tensor = field(repr=False)  # [dest, src]
    patched: Tensor = field(repr=False)  # [dest, src]
    patch_label: str = "no patch"        # what was patched, in words
    pair: int = 0
    direction: str = "denoise"
    corrupt_str_tokens: tuple[str, ...] = ()     # the corrupt prompt's tokens (the corrupt panel's)

    @property
    def patched_str_tokens(self) -> tuple[str, ...]:
        """The patched run's tokens: the run that was patched (corrupt when denoising, clean when noising)."""
        base = self.corrupt_str_tokens if self.direction == "denoise" else self.str_tokens
        return base or self.str_tokens

    @property
    def clean_minus_corrupt(self) -> Tensor:
        return self.clean - self.corrupt

    @property
    def patched_minus_corrupt(self) -> Tensor:
        return self.patched - self.corrupt

    def title(self) -> str:
        """'Counterfactual attention · L1.H2 · pair 0', as the dashboard titles it."""
        return f"Counterfactual attention · L{self.layer}.H{self.head} · pair {self.pair}"

    def plot(self):
        """The figure the dashboard draws (`patching.figures.attention_diff`): clean, corrupt and
        patched patterns (dest × src), and clean − corrupt, patched − corrupt, each panel labelled
        by its own run's tokens.

        >>> counterfactual_attention(model, prompts, 1, 0).plot().data[0].type
        'heatmap'
        """
        from patching.figures import attention_diff
        arr = lambda t: t.detach().float().cpu().numpy()     # noqa: E731
        return attention_diff(arr(self.clean), arr(self.corrupt), arr(self.patched), list(self.str_tokens),
                              title=self.title(), corrupt_tokens=list(self.corrupt_str_tokens) or None,
                              patched_tokens=list(self.patched_str_tokens))

    def to_html(self, include_plotlyjs: bool | str = True) -> str:
        """Which head, pair and patch, the largest changes, and the figure (plotly.js embedded by
        default, so it renders offline; see patching.core.display)."""
        from patching.core.display import attention_html
        from patching.figures import graph_config
        return attention_html(self, self.plot(), include_plotlyjs, graph_config())

    def _repr_html_(self) -> str:
        return self.to_html()

    def to_dataframe(self) -> pd.DataFrame:
        """Long format, one row per causal (dest, src) entry (src <= dest).

        Columns: layer, head, dest, src, dest_token, src_token (the clean prompt's), clean,
        corrupt, patched, clean_minus_corrupt, patched_minus_corrupt, patch, corrupt_dest_token,
        corrupt_src_token (the corrupt prompt's tokens at dest and src).
        """
        n = self.clean.shape[0]
        dest, src = torch.tril_indices(n, n)
        pick = lambda t: t.detach().double().cpu()[dest, src].tolist()   # noqa: E731
        tokens, corrupt = list(self.str_tokens), list(self.corrupt_str_tokens or self.str_tokens)
        return pd.DataFrame({
            "layer": self.layer, "head": self.head,
            "dest": dest.tolist(), "src": src.tolist(),
            "dest_token": [tokens[i] if i < len(tokens) else None for i in dest.tolist()],
            "src_token": [tokens[i] if i < len(tokens) else None for i in src.tolist()],
            "clean": pick(self.clean), "corrupt": pick(self.corrupt), "patched": pick(self.patched),
            "clean_minus_corrupt": pick(self.clean_minus_corrupt),
            "patched_minus_corrupt": pick(self.patched_minus_corrupt),
            "patch": self.patch_label,
            "corrupt_dest_token": [corrupt[i] if i < len(corrupt) else None for i in dest.tolist()],
            "corrupt_src_token": [corrupt[i] if i < len(corrupt) else None for i in src.tolist()],
        })

    def to_csv(self, path_or_buf=None) -> str | None:
        """CSV of `to_dataframe()` (text cells formula-neutralised); the text when no path."""
        return write_csv(self.to_dataframe(), path_or_buf)


def _check_range(value, size: int, what: str) -> int:
    value = check_whole(value, what)
    if not 0 <= value < size:
        raise ValueError(f"{what} {value!r} out of range; this model/prompt has {what} 0-{size - 1}")
    return value


def _index_tensor(model, prompts: PromptSet, spec: PatchSpec, index: dict | None) -> tuple[Tensor, tuple[str, ...]]:
    """index {"layer": .., "pos": .., "head": ..} -> ([1, len(index axes)] tensor, axes)."""
    kind = KINDS[spec.kind]
    per_position = spec.per_position or (kind.has_per_position and index is not None and "pos" in index)
    axes = kind.axes(per_position)
    if index is None:
        raise ValueError(f"a {spec.kind!r} patch needs an index with {', '.join(axes)}")
    missing, extra = [a for a in axes if a not in index], sorted(set(index) - set(axes))
    if missing or extra:
        raise ValueError(f"index {index!r} does not fit kind {spec.kind!r}: it needs exactly "
                         f"{', '.join(axes)}" + (f" (missing {', '.join(missing)})" if missing else "")
                         + (f" (unexpected {', '.join(extra)})" if extra else ""))
    sizes = {"layer": model.n_layers, "pos": prompts.n_pos,
             "head": model.n_kv_heads if kind.kv_heads else model.n_heads, "neuron": model.d_mlp}
    index = {a: _check_range(index[a], sizes[a], a if a != "head" or not kind.kv_heads else "key/value head")
             for a in axes}
    return torch.tensor([[index[a] for a in axes[1:]]], dtype=torch.long,
                        device=prompts.clean_tokens.device), axes


def _checked_index(model, prompts: PromptSet, spec: PatchSpec, index: dict | None) -> tuple[Tensor, dict]:
    """index -> ([1, len(axes) - 1] tensor after the layer, {axis: int}); kinds the model lacks refused."""
    idx, axes = _index_tensor(model, prompts, spec, index)
    if KINDS[spec.kind].needs_resid_mid and model.parallel_attn_mlp:
        raise ValueError(f"kind {spec.kind!r} does not exist on {model.name!r} (parallel attention and MLP)")
    return idx, {a: int(index[a]) for a in axes}


def _patch_of(runner, runs: CachedPair, spec: PatchSpec, idx: Tensor, layer: int, n_pos: int):
    """The kind's patch of one cell of the (one-pair) runs -> (Patched, rows [1])."""
    mask = None
    if spec.kind == "neuron":
        mask = torch.zeros(n_pos, dtype=torch.bool, device=idx.device)
        mask[list(spec.positions) if spec.positions is not None else slice(None)] = True
    ctx = PatchContext(runner, runs.base, runs.donor, mask)
    return KINDS[spec.kind].patch(ctx, layer, idx), torch.zeros(1, dtype=torch.long, device=idx.device)


def _describe(spec: PatchSpec, index: dict) -> str:
    where = ", ".join(f"{k}={v}" for k, v in index.items())
    if spec.kind == "neuron":
        where += ", positions=" + ("all" if spec.positions is None else ",".join(map(str, spec.positions)))
    donor, base = ("clean", "corrupt") if spec.direction == "denoise" else ("corrupt", "clean")
    return f"{spec.kind}[{where}]: {donor} activation patched into the {base} run ({spec.direction})"


def _same_layer_pattern(runner, base: RunCache, donor: RunCache, kind: str, layer: int, head: int,
                        idx: Tensor) -> Tensor | None:
    """The head's new pattern [dest, src] when a patch at its own layer changes it, else None."""
    a = runner.arch
    n_rep = a.n_heads // a.n_kv_heads
    b, d = base.layers[layer], donor.layers[layer]
    target = int(idx[0, -1])
    pos = int(idx[0, 0]) if idx.shape[1] == 2 else None
    rows = slice(None) if pos is None else slice(pos, pos + 1)
    if kind == "head_pattern" and target == head:
        pattern = b.pattern[0, head].clone()
        pattern[rows] = d.pattern[0, head, rows]
        return pattern
    if kind == "head_q" and target == head:
        q = b.q_rot[:, :, head:head + 1].clone()
        q[:, rows] = d.q_rot[:, rows, head:head + 1]
        return runner.attend(layer, q, b.k_rot, b.v, 0, torch.tensor([head], device=q.device))[0][0, 0]
    if kind == "head_k" and target == head // n_rep:
        k = b.k_rot.clone()
        k[:, rows, target] = d.k_rot[:, rows, target]
        return runner.attend(layer, b.q_rot[:, :, head:head + 1], k, b.v, 0, torch.tensor([head], device=k.device))[0][0, 0]
    return None


@torch.inference_mode()
def counterfactual_attention(model, prompts: PromptSet, layer: int, head: int, *,
                             spec: PatchSpec | PathSpec | None = None, index: dict | None = None,
                             pair: int = 0) -> AttentionDiff:
    """Head (layer, head)'s pattern [dest, src] in the clean, corrupt and patched runs of a pair.

    index names one cell of spec's sweep by its axes, e.g. {"layer": 1, "pos": 5, "head": 2}
    for head_out per position, {"layer": 0, "pos": 3} for resid_pre, {"layer": 1, "neuron": 7}
    for neuron (at spec.positions). With a `PathSpec`, "patched" is step 2 of that cell's path
    patching (the receivers patched), e.g. {"layer": 0, "head": 1} for an every-head sweep.

    >>> counterfactual_attention(model, prompts, 1, 0, spec=PatchSpec(kind="resid_pre"),
    ...                          index={"layer": 0, "pos": 4}).patched.shape    # doctest: +SKIP
    torch.Size([15, 15])
    """
    layer = _check_range(layer, model.n_layers, "layer")
    head = _check_range(head, model.n_heads, "head")
    pair = _check_range(pair, prompts.n_pairs, "pair")
    if spec is None and index is not None:
        raise ValueError("index given without spec; pass the PatchSpec whose cell it names")
    clean_ids = prompts.clean_tokens[pair:pair + 1]
    corrupt_ids = prompts.corrupt_tokens[pair:pair + 1]
    direction = spec.direction if spec is not None else "denoise"
    common = dict(layer=layer, head=head, pair=pair, direction=direction,
                  str_tokens=tuple(model.to_str_tokens(clean_ids[0].tolist())),
                  corrupt_str_tokens=tuple(model.to_str_tokens(corrupt_ids[0].tolist())))
    runner = model.runner
    if runner is None:        # unsupported family: read patterns through the bridge's hooks
        if spec is not None:
            require_runner(model, "patched attention", "; call without spec for the clean and corrupt patterns")
        from patching.model import hooks
        name = hooks.pattern(layer)
        pats = [model.bridge.run_with_cache(t, names_filter=name)[1][name][0, head].float()
                for t in (clean_ids, corrupt_ids)]
        return AttentionDiff(clean=pats[0], corrupt=pats[1], patched=pats[1].clone(),
                             patch_label="no patch: the corrupt run", **common)

    runs = CachedPair.run(runner, prompts.subset([pair]), None, direction)
    clean, corrupt, base, donor = runs.clean, runs.corrupt, runs.base, runs.donor
    clean_p, corrupt_p = clean.layers[layer].pattern[0, head], corrupt.layers[layer].pattern[0, head]
    base_p = base.layers[layer].pattern[0, head]
    if spec is None:
        return AttentionDiff(clean=clean_p, corrupt=corrupt_p, patched=corrupt_p.clone(),
                             patch_label="no patch: the corrupt run", **common)

    if isinstance(spec, PathSpec):
        if index is None:
            raise ValueError("a path-patching spec needs an index naming its cell, e.g. {'layer': 0, 'head': 1}")
        _, patched, label = path_patched_pattern(model, prompts, spec, index, layer, head, pair)
        return AttentionDiff(clean=clean_p, corrupt=corrupt_p, patched=patched, patch_label=label, **common)
    idx, index = _checked_index(model, prompts, spec, index)
    label = _describe(spec, index)
    patch_layer = index["layer"]
    patched = None
    if patch_layer == layer and spec.kind != "resid_pre":
        patched = _same_layer_pattern(runner, base, donor, spec.kind, layer, head, idx)
    elif patch_layer < layer or spec.kind == "resid_pre" and patch_layer == layer:
        p, rows = _patch_of(runner, runs, spec, idx, index["layer"], prompts.n_pos)
        x = runner.resume_until(base, rows, index["layer"], p.stage, p.resid, p.p0, until=layer)
        new = runner.attention_pattern(base, rows, layer, x, p.p0, torch.tensor([head], device=x.device))[0, 0]
        patched = base_p.clone()
        patched[p.p0:] = new
    if patched is None:
        patched = base_p.clone()
        label += " (does not reach this head's pattern)"
    return AttentionDiff(clean=clean_p, corrupt=corrupt_p, patched=patched, patch_label=label, **common)


# -- every head under one patch: the receivers of a sender ---------------------------------------
PATTERN_SOURCES = ("q_rot", "k_rot", "pattern")   # LayerCache fields a head's own pattern is made of
CHANGE_TOL = 1e-6     # a pattern "changed" when some weight moved more than this (float32 noise is ~1e-8)


def reshapes_own_pattern(kind: str) -> bool:
    """Whether patching `kind` changes the patched head's own pattern (q, k, pattern) — else
    (head_out, head_v, ...) only later heads can change, and the view to show is a receiver's.

    >>> reshapes_own_pattern("head_q"), reshapes_own_pattern("head_out")
    (True, False)
    """
    return KINDS[kind].source in PATTERN_SOURCES


class _PatternRecorder(Edit):
    """Changes nothing; keeps each layer's pattern [B, H, T - p0, T] as the forward computes it."""

    def __init__(self):
        self.patterns: dict[int, Tensor] = {}

    def z(self, layer: int, pattern: Tensor, z: Tensor) -> Tensor:
        self.patterns[layer] = pattern
        return z


@dataclass(frozen=True, eq=False)
class DownstreamAttention:
    """Every head's pattern in the clean, corrupt and patched runs of one pair under one patch
    (a sender); tensors [layer, head, dest, src]. `change` says which receivers moved."""
    clean: Tensor = field(repr=False)
    corrupt: Tensor = field(repr=False)
    base: Tensor = field(repr=False)       # the run that was patched (corrupt when denoising)
    patched: Tensor = field(repr=False)
    patch_label: str
    patch_layer: int
    direction: str
    pair: int
    str_tokens: tuple[str, ...]
    corrupt_str_tokens: tuple[str, ...]

    @property
    def change(self) -> Tensor:
        """[layer, head]: the largest |patched − base| attention weight of each head's pattern."""
        return (self.patched - self.base).abs().amax(dim=(-2, -1))

    def ranked(self) -> list[tuple[int, int, float]]:
        """(layer, head, change) of every head whose pattern changed (by more than CHANGE_TOL: a
        recomputed pattern differs from the cached one by float noise), largest change first."""
        c = self.change.double().cpu()
        order = sorted(((float(c[l, h]), l, h) for l in range(c.shape[0]) for h in range(c.shape[1])
                        if float(c[l, h]) > CHANGE_TOL), key=lambda t: (-t[0], t[1], t[2]))
        return [(l, h, v) for v, l, h in order]

    def most_changed(self) -> tuple[int, int] | None:
        """The (layer, head) whose pattern changed most under the patch; None when none changed."""
        ranked = self.ranked()
        return (ranked[0][0], ranked[0][1]) if ranked else None

    def head(self, layer: int, head: int) -> AttentionDiff:
        """One receiver's clean / corrupt / patched patterns as an `AttentionDiff`."""
        layer = _check_range(layer, self.clean.shape[0], "layer")
        head = _check_range(head, self.clean.shape[1], "head")
        label = self.patch_label + ("" if float(self.change[layer, head]) > CHANGE_TOL
                                    else " (leaves this head's pattern unchanged)")
        return AttentionDiff(layer=layer, head=head, str_tokens=self.str_tokens, clean=self.clean[layer, head],
                             corrupt=self.corrupt[layer, head], patched=self.patched[layer, head],
                             patch_label=label, pair=self.pair, direction=self.direction,
                             corrupt_str_tokens=self.corrupt_str_tokens)


def _stack(cache: RunCache) -> Tensor:
    return torch.stack([c.pattern[0] for c in cache.layers])          # [layer, head, dest, src]


@torch.inference_mode()
def downstream_attention(model, prompts: PromptSet, spec: PatchSpec, index: dict, *,
                         pair: int = 0) -> DownstreamAttention:
    """Every head's attention pattern when one cell of spec's sweep is patched (pair `pair`):
    one forward from the patch through the runner's `Edit` hooks, exact (no approximation).

    For a `head_out` sender this is what the patch does to attention: the patched head's own
    pattern cannot change, its receivers' can. Heads before the patch keep the base run's.

    >>> d = downstream_attention(model, prompts, PatchSpec(kind="head_out"), {"layer": 0, "head": 1})
    >>> d.patched.shape[:2] == (model.n_layers, model.n_heads), d.most_changed()[0] > 0
    (True, True)
    """
    if not isinstance(spec, PatchSpec):
        raise ValueError(f"downstream attention needs a PatchSpec (a sweep's cell), not {type(spec).__name__}")
    runner = require_runner(model, "downstream attention")
    pair = _check_range(pair, prompts.n_pairs, "pair")
    idx, index = _checked_index(model, prompts, spec, index)
    runs = CachedPair.run(runner, prompts.subset([pair]), None, spec.direction)
    layer = index["layer"]
    base = _stack(runs.base)
    patched = base.clone()
    for h in range(model.n_heads):                  # q / k / pattern kinds: the patched head's own
        own = _same_layer_pattern(runner, runs.base, runs.donor, spec.kind, layer, h, idx)
        if own is not None:
            patched[layer, h] = own
    p, rows = _patch_of(runner, runs, spec, idx, layer, prompts.n_pos)
    rec = _PatternRecorder()
    runner.forward(p.resid, src=runs.base, rows=rows, layer=layer, stage=p.stage, p0=p.p0,
                   until=model.n_layers, edit=rec)
    for l, pattern in rec.patterns.items():
        patched[l, :, p.p0:] = pattern[0]
    tokens = lambda t: tuple(model.to_str_tokens(t[pair].tolist()))   # noqa: E731
    return DownstreamAttention(clean=_stack(runs.clean), corrupt=_stack(runs.corrupt), base=base,
                               patched=patched, patch_label=_describe(spec, index), patch_layer=layer,
                               direction=spec.direction, pair=pair,
                               str_tokens=tokens(prompts.clean_tokens),
                               corrupt_str_tokens=tokens(prompts.corrupt_tokens))
