"""The registry of patch kinds: which activation, which index axes, how one patch is applied.

Every kind turns a chunk of indices at one layer into a batch of patched residual streams that
the runner resumes from (`Patched`): residual kinds copy the donor's vector in; block outputs and
heads add the change they make to the residual stream (attention and MLP outputs enter it
additively, and a head's output is z_h @ W_O[h]). Head kinds that alter q, k, v or the pattern
recompute only the affected heads' z. A new kind is one function and one `Kind` entry.

Rows of a batch are index-major: row = index * n_pairs + pair.

>>> KINDS["head_out"].axes(per_position=True)
('layer', 'pos', 'head')
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from patching.model import hooks
from patching.model.runner import RunCache, Runner


@dataclass
class PatchContext:
    runner: Runner
    base: RunCache        # the run being patched (corrupt when denoising)
    donor: RunCache       # where patched-in values come from (clean when denoising)
    position_mask: Tensor | None = None   # [T] bool: positions a neuron patch applies to
    saes: dict | None = None              # layer -> Sae on blocks.<layer>.hook_resid_pre (feature kind)

    def sae(self, layer: int):
        """The SAE read at `layer`'s block input; ValueError naming the layers that have one."""
        if not self.saes or layer not in self.saes:
            have = ", ".join(map(str, sorted(self.saes or ()))) or "none"
            raise ValueError(f"no SAE on blocks.{layer}.hook_resid_pre (SAEs on layers: {have})")
        return self.saes[layer]

    @property
    def n_pairs(self) -> int:
        return self.base.tokens.shape[0]

    @property
    def n_pos(self) -> int:
        return self.base.tokens.shape[1]

    def rows(self, n: int) -> tuple[Tensor, Tensor]:
        """(index of row, pair of row) for n indices, each [n * n_pairs]."""
        device = self.base.tokens.device
        return (torch.arange(n, device=device).repeat_interleave(self.n_pairs),
                torch.arange(self.n_pairs, device=device).repeat(n))


@dataclass
class Patched:
    stage: str            # resume from this stage of the layer: "pre", "mid" or "post"
    resid: Tensor         # [rows, T - p0, d_model]
    p0: int               # first position that can differ from the base run


@dataclass(frozen=True)
class EstimateOptions:
    """What an attribution estimate of a kind needs besides the gradients (methods/attribution.py)."""
    per_position: bool = False
    position_mask: Tensor | None = None   # [T] bool: positions a neuron patch applies to
    saes: dict | None = None              # layer -> Sae (feature kind)


@dataclass(frozen=True)
class Kind:
    name: str
    title: str
    hook: Callable[[int], str]          # TransformerLens hook of the activation (hooks.py)
    index_axes: tuple[str, ...]         # after "layer": e.g. ("pos",) or ("head",)
    patch: Callable[[PatchContext, int, Tensor], Patched]   # ctx, layer, idx [n, axes] -> Patched
    source: str = ""                    # the LayerCache field it patches (for `changed`)
    has_per_position: bool = False      # head kinds: can add a "pos" axis
    kv_heads: bool = False              # head axis ranges over key/value heads
    needs_resid_mid: bool = False       # undefined on parallel-attention models
    changed_table: Callable[[PatchContext, int], Tensor] | None = None   # [T, unit] for `changed`
    # attribution: (att, layer, options) -> first-order estimate [b, *index axes] (None: no SAE
    # there); att has .pair (base / donor RunCache) and .grads (name -> per-layer gradients)
    attribute: Callable[[object, int, EstimateOptions], Tensor | None] | None = None

    def axes(self, per_position: bool = False) -> tuple[str, ...]:
        if per_position and self.has_per_position:
            return ("layer", "pos") + self.index_axes
        return ("layer",) + self.index_axes


# -- residual streams and block outputs ---------------------------------------------------------
def _expand(x: Tensor, n: int) -> Tensor:
    """[pairs, ...] -> [n * pairs, ...], index-major."""
    return x.repeat(n, *([1] * (x.dim() - 1)))


def _resid_kind(attr: str, stage: str):
    def patch(ctx: PatchContext, layer: int, idx: Tensor) -> Patched:
        pos = idx[:, 0]
        p0 = int(pos.min())
        i, pair = ctx.rows(len(idx))
        x = _expand(getattr(ctx.base.layers[layer], attr)[:, p0:], len(idx)).clone()
        x[torch.arange(len(i)), pos[i] - p0] = getattr(ctx.donor.layers[layer], attr)[pair, pos[i]]
        return Patched(stage, x, p0)
    return patch


def _after_attention(ctx: PatchContext, layer: int) -> tuple[str, Tensor]:
    """The residual stream right after attention's output is added, and its stage."""
    c = ctx.base.layers[layer]
    return ("post", c.resid_post) if c.resid_mid is None else ("mid", c.resid_mid)


def _add_at(ctx: PatchContext, stage: str, base_resid: Tensor, delta: Tensor, p0: int) -> Patched:
    """base_resid [pairs, T, d] + delta [rows, T - p0, d]."""
    n = delta.shape[0] // ctx.n_pairs
    return Patched(stage, _expand(base_resid[:, p0:], n) + delta, p0)


def _output_kind(attr: str):
    def patch(ctx: PatchContext, layer: int, idx: Tensor) -> Patched:
        pos = idx[:, 0]
        p0 = int(pos.min())
        i, pair = ctx.rows(len(idx))
        diff = getattr(ctx.donor.layers[layer], attr) - getattr(ctx.base.layers[layer], attr)
        delta = diff.new_zeros(len(i), ctx.n_pos - p0, diff.shape[-1])
        delta[torch.arange(len(i)), pos[i] - p0] = diff[pair, pos[i]]
        if attr == "attn_out":
            stage, resid = _after_attention(ctx, layer)
        else:
            stage, resid = "post", ctx.base.layers[layer].resid_post
        return _add_at(ctx, stage, resid, delta, p0)
    return patch


# -- heads ----------------------------------------------------------------------------------------
def _head_delta(ctx: PatchContext, layer: int, heads: Tensor, z_new: Tensor, p0: int) -> Patched:
    """Write new z for some heads into the residual stream.

    heads [rows, H]: query heads each row changes; z_new [rows, T - p0, H, d_head].
    """
    a = ctx.runner.arch
    _, pair = ctx.rows(heads.shape[0] // ctx.n_pairs if heads.shape[0] else 0)
    c = ctx.base.layers[layer]
    z_old = c.z[pair, p0:][torch.arange(len(pair))[:, None], :, heads].transpose(1, 2)  # [rows, T-p0, H, dh]
    w_o = a.o_weight(layer).view(a.n_heads, a.d_head, a.d_model)[heads]                # [rows, H, dh, d]
    delta = torch.einsum("bthd,bhdm->btm", z_new - z_old, w_o)
    stage, resid = _after_attention(ctx, layer)
    return _add_at(ctx, stage, resid, delta, p0)


def _head_rows(ctx: PatchContext, idx: Tensor) -> tuple[Tensor, Tensor | None, int, Tensor, Tensor, Tensor]:
    """A chunk of head indices idx [n, 1 or 2] laid out as patched rows (index-major):
    (head per index, position per index or None, p0, index i per row, pair per row, arange(rows))."""
    if idx.shape[1] == 2:       # (pos, head)
        head, pos, p0 = idx[:, 1], idx[:, 0], int(idx[:, 0].min())
    else:
        head, pos, p0 = idx[:, 0], None, 0
    i, pair = ctx.rows(len(idx))
    return head, pos, p0, i, pair, torch.arange(len(i))


def _patch_head_out(ctx: PatchContext, layer: int, idx: Tensor) -> Patched:
    head, pos, p0, i, pair, rows = _head_rows(ctx, idx)
    base_z = ctx.base.layers[layer].z[pair, p0:, head[i]]       # [rows, T-p0, dh]
    donor_z = ctx.donor.layers[layer].z[pair, p0:, head[i]]
    if pos is None:
        z_new = donor_z
    else:
        z_new = base_z.clone()
        z_new[rows, pos[i] - p0] = donor_z[rows, pos[i] - p0]
    return _head_delta(ctx, layer, head[i][:, None], z_new[:, :, None], p0)


def _patch_head_q(ctx: PatchContext, layer: int, idx: Tensor) -> Patched:
    head, pos, p0, i, pair, rows = _head_rows(ctx, idx)
    b, d = ctx.base.layers[layer], ctx.donor.layers[layer]
    q = b.q_rot[pair, p0:, head[i]].clone()                     # [rows, T-p0, dh]
    if pos is None:
        q = d.q_rot[pair, p0:, head[i]]
    else:
        q[rows, pos[i] - p0] = d.q_rot[pair, pos[i], head[i]]
    heads = head[i][:, None]
    _, z_new = ctx.runner.attend_heads(layer, q[:, :, None], b.k_rot[pair], b.v[pair], p0, heads,
                                         ctx.base.visible)
    return _head_delta(ctx, layer, heads, z_new, p0)


def _kv_kind(which: str):
    def patch(ctx: PatchContext, layer: int, idx: Tensor) -> Patched:
        group, pos, p0, i, pair, rows = _head_rows(ctx, idx)
        a = ctx.runner.arch
        b, d = ctx.base.layers[layer], ctx.donor.layers[layer]
        k, v = b.k_rot[pair].clone(), b.v[pair].clone()         # [rows, T, kv, dh]
        target, source = (k, d.k_rot) if which == "k" else (v, d.v)
        if pos is None:
            target[rows, :, group[i]] = source[pair, :, group[i]]
        else:
            target[rows, pos[i], group[i]] = source[pair, pos[i], group[i]]
        n_rep = a.n_heads // a.n_kv_heads
        heads = group[i][:, None] * n_rep + torch.arange(n_rep)[None]   # [rows, n_rep]
        q = b.q_rot[pair, p0:][rows[:, None], :, heads].transpose(1, 2)  # [rows, T-p0, n_rep, dh]
        _, z_new = ctx.runner.attend_heads(layer, q, k, v, p0, heads, ctx.base.visible)
        return _head_delta(ctx, layer, heads, z_new, p0)
    return patch


def _patch_head_pattern(ctx: PatchContext, layer: int, idx: Tensor) -> Patched:
    head, pos, p0, i, pair, rows = _head_rows(ctx, idx)
    a = ctx.runner.arch
    b, d = ctx.base.layers[layer], ctx.donor.layers[layer]
    pattern = b.pattern[pair, head[i], p0:].clone()             # [rows, T-p0, T]
    if pos is None:
        pattern = d.pattern[pair, head[i], p0:]
    else:
        pattern[rows, pos[i] - p0] = d.pattern[pair, head[i], pos[i]]
    kv = head[i] // (a.n_heads // a.n_kv_heads)
    v = b.v[pair][rows, :, kv]                                  # [rows, T, dh]
    z_new = torch.einsum("bqk,bkd->bqd", pattern, v)
    return _head_delta(ctx, layer, head[i][:, None], z_new[:, :, None], p0)


def _patch_neuron(ctx: PatchContext, layer: int, idx: Tensor) -> Patched:
    """idx [n, 1]: neuron, patched at the context's positions (all by default)."""
    neuron = idx[:, 0]
    i, pair = ctx.rows(len(idx))
    a = ctx.runner.arch
    b, d = ctx.base.layers[layer], ctx.donor.layers[layer]
    diff = (d.mlp_post - b.mlp_post)[pair, :, neuron[i]] * ctx.position_mask   # [rows, T]
    p0 = int(ctx.position_mask.nonzero()[0])
    one_hot = torch.zeros(len(i), a.d_mlp, dtype=diff.dtype, device=diff.device)
    one_hot[torch.arange(len(i)), neuron[i]] = 1
    w_out = a.mlp_out(layer, one_hot) - a.mlp_out(layer, torch.zeros_like(one_hot[:1]))  # [rows, d]
    delta = diff[:, p0:, None] * w_out[:, None, :]
    return _add_at(ctx, "post", b.resid_post, delta, p0)


# -- sparse-autoencoder features ------------------------------------------------------------------
# With an SAE spliced in at a block input x, the block reads decode(encode(x)) + error(x) = x: the
# model is unchanged. Swapping feature i's activation for the donor's makes the block read
# x + (f_donor_i - f_base_i) * W_dec[i]; swapping the error node makes it read
# x - error_base + error_donor. Unit d_sae of the feature axis is the error node.
def _sae_units(ctx: PatchContext, layer: int) -> tuple[Tensor, Tensor]:
    """(feature activation change [pairs, T, d_sae], error change [pairs, T, d]) donor - base."""
    sae = ctx.sae(layer)
    xb, xd = ctx.base.layers[layer].resid_pre, ctx.donor.layers[layer].resid_pre
    fb, fd = sae.encode(xb), sae.encode(xd)
    return fd - fb, (xd - sae.decode(fd)) - (xb - sae.decode(fb))


def _patch_feature(ctx: PatchContext, layer: int, idx: Tensor) -> Patched:
    """idx [n, 1] (feature) or [n, 2] (pos, feature); feature d_sae is the error node."""
    sae = ctx.sae(layer)
    unit, pos, p0, i, pair, rows = _head_rows(ctx, idx)
    d_feat, d_err = _sae_units(ctx, layer)
    u = unit[i]
    f = u.clamp(max=sae.d_sae - 1)
    coef = d_feat.transpose(1, 2)[pair, f, p0:]                          # [rows, T - p0]
    delta = coef[..., None] * sae.W_dec[f][:, None, :].to(coef.dtype)    # [rows, T - p0, d]
    is_err = u == sae.d_sae
    delta[is_err] = d_err[pair[is_err], p0:]
    if pos is not None:
        at = torch.arange(p0, ctx.n_pos, device=delta.device)[None] == pos[i][:, None]
        delta = delta * at[..., None]
    return _add_at(ctx, "pre", ctx.base.layers[layer].resid_pre, delta, p0)


def _feature_changes(ctx: PatchContext, layer: int) -> Tensor:
    """[T, d_sae + 1]: where a feature's activation (or the error) differs between the runs."""
    d_feat, d_err = _sae_units(ctx, layer)
    return torch.cat([(d_feat != 0).any(0), (d_err != 0).any(-1).any(0)[:, None]], dim=1)


# -- attribution: each kind's first-order term (donor - base) . gradient -----------------------------
def _grad_dot(att, attr: str, layer: int) -> Tensor:
    """(donor - base) * grad for one activation of one layer, same shape as the activation."""
    delta = getattr(att.pair.donor.layers[layer], attr) - getattr(att.pair.base.layers[layer], attr)
    return delta * att.grads[attr][layer]


def _attribute_stream(attr: str):
    def attribute(att, layer: int, opts: EstimateOptions) -> Tensor:
        return _grad_dot(att, attr, layer).sum(-1)                                 # [b, T]
    return attribute


def _attribute_head(attr: str):
    def attribute(att, layer: int, opts: EstimateOptions) -> Tensor:
        v = _grad_dot(att, attr, layer).sum(-1)                                    # [b, T, heads]
        if attr == "pattern":
            v = v.transpose(1, 2)                                                  # [b, T_dest, H]
        return v if opts.per_position else v.sum(1)
    return attribute


def _attribute_neuron(att, layer: int, opts: EstimateOptions) -> Tensor:
    v = _grad_dot(att, "mlp_post", layer)                                          # [b, T, d_mlp]
    return (v * opts.position_mask[None, :, None]).sum(1)                          # [b, d_mlp]


def _attribute_feature(att, layer: int, opts: EstimateOptions) -> Tensor | None:
    """[b, (T,) d_sae + 1]: each feature's (donor - base) activation times the gradient along its
    decoder direction, then the error node's (donor - base) error times the gradient."""
    if layer not in opts.saes:                                                     # outside the sweep's layers
        return None
    sae = opts.saes[layer]
    with torch.no_grad():
        xb, xd = att.pair.base.layers[layer].resid_pre, att.pair.donor.layers[layer].resid_pre
        fb, fd = sae.encode(xb), sae.encode(xd)
        d_err = (xd - sae.decode(fd)) - (xb - sae.decode(fb))
        grad = att.grads["resid_pre"][layer]                                       # [b, T, d]
        per_feature = (fd - fb) * (grad @ sae.W_dec.T.to(grad.dtype))               # [b, T, d_sae]
        v = torch.cat([per_feature, (d_err * grad).sum(-1, keepdim=True)], dim=-1)
    return v if opts.per_position else v.sum(1)


def changed(ctx: PatchContext, kind: Kind, layer: int) -> Tensor:
    """Where the donor's activation differs from the base run's, as a table [pos] or [pos, unit].

    An index whose slice is identical in both runs (e.g. every position before the first token
    where the prompts differ) cannot change the output: the engine reports the base run's value
    for it without running anything. Identity is exact (torch.equal per slice), never a tolerance.
    """
    if kind.changed_table is not None:
        return kind.changed_table(ctx, layer)
    base, donor = getattr(ctx.base.layers[layer], kind.source), getattr(ctx.donor.layers[layer], kind.source)
    diff = base != donor
    if kind.source == "pattern":                 # [b, H, dest, src] -> [dest, H]
        return diff.any(-1).any(0).T
    if diff.dim() == 4:                          # [b, T, H, d_head] -> [T, H]
        return diff.any(-1).any(0)
    if kind.source == "mlp_post":                # [b, T, d_mlp] -> [T, d_mlp]
        return diff.any(0)
    return diff.any(-1).any(0)                   # [b, T, d] -> [T]


def index_changes(ctx: PatchContext, kind: Kind, layer: int, idx: Tensor) -> Tensor:
    """[n] bool: does patching each index (rows of idx, as `patch` takes them) change anything?"""
    table = changed(ctx, kind, layer)
    if kind.name == "neuron":
        return table[ctx.position_mask][:, idx[:, 0]].any(0)
    if table.dim() == 1:                         # residual kinds: idx = (pos,)
        return table[idx[:, 0]]
    if idx.shape[1] == 2:                        # (pos, head)
        return table[idx[:, 0], idx[:, 1]]
    return table[:, idx[:, 0]].any(0)            # (head,) over every position


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("resid_pre", "Residual stream (block input)", hooks.resid_pre, ("pos",), _resid_kind("resid_pre", "pre"), source="resid_pre", attribute=_attribute_stream("resid_pre")),
    Kind("resid_mid", "Residual stream (between attention and MLP)", hooks.resid_mid, ("pos",),
         _resid_kind("resid_mid", "mid"), source="resid_mid", needs_resid_mid=True,
         attribute=_attribute_stream("resid_mid")),
    Kind("resid_post", "Residual stream (block output)", hooks.resid_post, ("pos",), _resid_kind("resid_post", "post"), source="resid_post", attribute=_attribute_stream("resid_post")),
    Kind("attn_out", "Attention layer output", hooks.attn_out, ("pos",), _output_kind("attn_out"), source="attn_out", attribute=_attribute_stream("attn_out")),
    Kind("mlp_out", "MLP layer output", hooks.mlp_out, ("pos",), _output_kind("mlp_out"), source="mlp_out", attribute=_attribute_stream("mlp_out")),
    Kind("head_out", "Attention head output (z)", hooks.z, ("head",), _patch_head_out, source="z", has_per_position=True,
         attribute=_attribute_head("z")),
    Kind("head_q", "Attention head queries", hooks.q, ("head",), _patch_head_q, source="q_rot", has_per_position=True,
         attribute=_attribute_head("q")),
    Kind("head_k", "Attention head keys", hooks.k, ("head",), _kv_kind("k"), source="k_rot", has_per_position=True, kv_heads=True,
         attribute=_attribute_head("k")),
    Kind("head_v", "Attention head values", hooks.v, ("head",), _kv_kind("v"), source="v", has_per_position=True, kv_heads=True,
         attribute=_attribute_head("v")),
    Kind("head_pattern", "Attention pattern", hooks.pattern, ("head",), _patch_head_pattern, source="pattern", has_per_position=True,
         attribute=_attribute_head("pattern")),
    Kind("neuron", "MLP neurons", hooks.mlp_post, ("neuron",), _patch_neuron, source="mlp_post", attribute=_attribute_neuron),
    Kind("feature", "SAE features (block input; last = error)", hooks.resid_pre, ("feature",), _patch_feature,
         source="resid_pre", has_per_position=True, changed_table=_feature_changes,
         attribute=_attribute_feature),
)}
