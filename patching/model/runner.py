"""The engine's own forward pass: one block loop, with edits, caching and resumption.

`Runner.forward` is the one forward every method runs: from any layer and stage (`pre`, `mid`,
`post`) of a cached run, over the positions >= `p0` only (positions before the earliest changed
one cannot change under causal attention, so their keys and values come from the cached run),
with an optional `Edit` that replaces or reads activations block by block (path patching's
receivers, circuits' ablations, attribution's edge inputs). Unless asked otherwise it produces
only the last position's logits, and computes only the last position at the last layer, since
every metric reads the next-token distribution. `run`, `resume` and `resume_until` are its
three common uses.

>>> runner = Runner(arch_for(hf_model))                                   # doctest: +SKIP
>>> cache = runner.run(tokens)                         # tokens [pairs, pos]  # doctest: +SKIP
>>> runner.resume(cache, rows, layer=3, stage="pre", resid=x, p0=5)   # -> [rows, vocab]  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from patching.model.arch import Arch, apply_rotary

STAGES = ("pre", "mid", "post")


def _causal_softmax(scores: Tensor, q_offset: int, visible: Tensor | None = None) -> Tensor:
    """Softmax over keys of scores [..., Tq, Tk], queries at slots q_offset.., keys at 0..;
    visible [slots, slots]: which key slot each query slot sees (branches), else causal."""
    tq, tk = scores.shape[-2:]
    if visible is not None:
        hidden = ~visible[q_offset:q_offset + tq, :tk]
    else:
        hidden = (torch.arange(tk, device=scores.device)[None, :]
                  > torch.arange(q_offset, q_offset + tq, device=scores.device)[:, None])
    return scores.masked_fill(hidden, float("-inf")).softmax(dim=-1)


@dataclass
class LayerCache:
    """One layer's activations for a batch of prompts (shapes: b = prompts, T = positions)."""
    resid_pre: Tensor      # [b, T, d_model]
    q: Tensor              # [b, T, n_heads, d_head], before rotary (TransformerLens' hook_q)
    k: Tensor              # [b, T, n_kv_heads, d_head], before rotary
    v: Tensor              # [b, T, n_kv_heads, d_head]
    q_rot: Tensor          # after rotary (== q without rotary)
    k_rot: Tensor
    pattern: Tensor        # [b, n_heads, T_dest, T_src]
    z: Tensor              # [b, T, n_heads, d_head]
    attn_out: Tensor       # [b, T, d_model]
    resid_mid: Tensor | None   # [b, T, d_model]; None on parallel-attention models
    mlp_pre: Tensor        # [b, T, d_mlp] (gated models: [2, b, T, d_mlp])
    mlp_post: Tensor       # [b, T, d_mlp]
    mlp_out: Tensor        # [b, T, d_model]
    resid_post: Tensor     # [b, T, d_model]


@dataclass
class RunCache:
    tokens: Tensor | None              # [b, T]
    layers: list[LayerCache]
    logits: Tensor                     # [b, vocab] at the last position ([b, readout, vocab] with branches)
    rope: tuple[Tensor, Tensor] | None = field(default=None, repr=False)   # cos, sin [1, T, rot]
    branches: object | None = field(default=None, repr=False)   # patching.model.branches.Branches

    @property
    def visible(self) -> Tensor | None:
        """[slots, slots] which slot sees which (a run with continuation branches), else None."""
        return self.branches.visible if self.branches is not None else None

    def detached(self) -> "RunCache":
        """The same activations without autograd history (a grad-enabled `forward(keep=True)`)."""
        det = lambda t: t.detach() if isinstance(t, Tensor) else t   # noqa: E731
        layers = [LayerCache(*(det(getattr(c, f.name)) for f in dataclasses.fields(LayerCache)))
                  for c in self.layers]
        return RunCache(self.tokens, layers, self.logits.detach(), self.rope, self.branches)


class Edit:
    """Changes to a forward, block by block; every hook returns its input unchanged by default.

    Tensors cover the positions the pass computes (p0.., rows = the batch B). A layer the edit
    `touches` is computed at every position even when it is the last one; an untouched last
    layer computes only the last position.

    >>> class Zero(Edit):                                                    # doctest: +SKIP
    ...     def mlp_out(self, layer, out):
    ...         return out * 0 if layer == 1 else out
    >>> runner.forward(x0, rope=rope, edit=Zero())      # -> logits [B, vocab]  # doctest: +SKIP
    """

    def touches(self, layer: int) -> bool:
        return True

    def resid_pre(self, layer: int, x: Tensor) -> Tensor:
        """x [B, T', d_model]: the block input, before anything of the block reads it."""
        return x

    def qkv(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q [B, T', H, dh], k and v [B, T', KV, dh], before rotary."""
        return q, k, v

    def z(self, layer: int, pattern: Tensor, z: Tensor) -> Tensor:
        """pattern [B, H, T', T] (read only), z [B, T', H, dh] -> the z that W_O reads."""
        return z

    def mlp_in(self, layer: int, x: Tensor) -> Tensor:
        """x [B, T', d_model]: the residual stream the MLP's norm reads."""
        return x

    def mlp_out(self, layer: int, out: Tensor) -> Tensor:
        """out [B, T', d_model]: the MLP's output."""
        return out

    def final(self, x: Tensor) -> Tensor:
        """x [B, d_model]: the last position's final residual stream, before the final norm."""
        return x


@dataclass(frozen=True)
class _Pass:
    """What stays fixed over one forward's blocks."""
    src: RunCache | None           # keys/values before p0 (rows pick its prompts)
    rows: Tensor | None            # [B]
    p0: int
    rope: tuple[Tensor, Tensor] | None
    edit: Edit | None
    last_only: int                 # the layer computed at the last position only (-1: none)
    keep: list | None              # LayerCaches, appended per block when keeping
    branches: object | None = None  # continuation branches (Branches): the mask, `readout` slots at the end

    @property
    def readout(self) -> int:
        return self.branches.readout if self.branches is not None else 1

    @property
    def visible(self) -> Tensor | None:
        return self.branches.visible if self.branches is not None else None


class Runner:
    """A functional forward over an `Arch`, with caching, resumption and edits."""

    def __init__(self, arch: Arch):
        self.arch = arch

    # -- attention, written once for every family ------------------------------------------
    def attend(self, layer: int, q_rot: Tensor, k_rot: Tensor, v: Tensor, q_offset: int,
               heads: Tensor | None = None, visible: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Causal attention of queries at positions q_offset.. over keys at 0..

        q_rot [b, Tq, H, d_head] for the heads `heads` (all heads when None); k_rot, v
        [b, Tk, n_kv_heads, d_head]; visible: a run's branch mask (`RunCache.visible`).
        Returns pattern [b, H, Tq, Tk] and z [b, Tq, H, d_head].
        """
        a = self.arch
        kv_of_head = torch.arange(a.n_heads, device=q_rot.device) // (a.n_heads // a.n_kv_heads)
        if heads is not None:
            kv_of_head = kv_of_head[heads]
        if a.n_kv_heads != a.n_heads or heads is not None:
            k_rot, v = k_rot[:, :, kv_of_head], v[:, :, kv_of_head]
        scores = torch.einsum("bqhd,bkhd->bhqk", q_rot, k_rot) * a.scaling(layer)
        pattern = _causal_softmax(scores, q_offset, visible).to(v.dtype)
        return pattern, torch.einsum("bhqk,bkhd->bqhd", pattern, v)

    def attend_heads(self, layer: int, q_rot: Tensor, k_rot: Tensor, v: Tensor, q_offset: int,
                     heads: Tensor, visible: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Like `attend`, with a different head set per row.

        q_rot [B, Tq, H, d_head]; k_rot, v [B, Tk, n_kv_heads, d_head]; heads [B, H] query heads.
        Returns pattern [B, H, Tq, Tk] and z [B, Tq, H, d_head].
        """
        a = self.arch
        kv = heads // (a.n_heads // a.n_kv_heads)
        rows = torch.arange(kv.shape[0], device=kv.device)[:, None]
        k_sel, v_sel = k_rot[rows, :, kv], v[rows, :, kv]          # [B, H, Tk, d_head]
        scores = torch.einsum("bqhd,bhkd->bhqk", q_rot, k_sel) * a.scaling(layer)
        pattern = _causal_softmax(scores, q_offset, visible).to(v.dtype)
        return pattern, torch.einsum("bhqk,bhkd->bqhd", pattern, v_sel)

    def _rope(self, rope, q, k, start: int):
        if rope is None:
            return q, k
        cos, sin = rope[0][:, start:start + q.shape[1]], rope[1][:, start:start + q.shape[1]]
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

    def rope_for(self, tokens: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor] | None:
        """Rotary tables [1, T, rot] for the slots of `tokens` (positions: each slot's position id)."""
        if not self.arch.rotary:
            return None
        if positions is None:
            positions = torch.arange(tokens.shape[1], device=tokens.device)
        like = torch.zeros(1, dtype=self.dtype, device=tokens.device)
        return self.arch.rope(positions, like)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.arch.model.parameters()).dtype

    # -- the one forward ------------------------------------------------------------------------
    def forward(self, resid: Tensor, *, src: RunCache | None = None, rows: Tensor | None = None,
                layer: int = 0, stage: str = "pre", p0: int = 0, until: int | None = None,
                edit: Edit | None = None, rope: tuple[Tensor, Tensor] | None = None,
                keep: bool = False, branches=None) -> Tensor | RunCache:
        """Run the blocks from `layer`'s `stage` on resid [B, T - p0, d_model] (positions p0..).

        src, rows [B]: the cached run whose prompts the rows continue (keys and values before
        p0, rotary); rope: rotary tables when there is no src (a run from the embeddings).
        Returns the last position's logits [B, vocab]; with `until`, the block input of layer
        `until` [B, T - p0, d_model] (n_layers: the final stream); with `keep`, a RunCache of
        every block's activations (a run from layer 0, stage pre). No autograd mode is set here:
        `run` / `resume` run under inference mode, attribution with gradients. With continuation
        `branches` (src's, or given for a run from the embeddings) attention follows their mask
        and the logits are the last `readout` slots' [B, readout, vocab].

        >>> runner.forward(x, src=cache, rows=rows, layer=2, stage="mid", p0=4)   # doctest: +SKIP
        """
        a = self.arch
        start = layer + (stage != "pre")
        if until is not None and start > until:
            raise ValueError(f"cannot stop at layer {until}'s input: the run resumes after it "
                             f"(layer {layer}, stage {stage!r})")
        last = a.n_layers - 1
        cut = -1 if (until is not None or keep or (edit is not None and edit.touches(last))) else last
        branches = src.branches if src is not None else branches
        if branches is not None and edit is not None:
            raise ValueError("a run with continuation branches takes no edit (exact sweeps only)")
        run = _Pass(src, rows, p0, src.rope if src is not None else rope, edit, cut, [] if keep else None,
                    branches)
        x = resid
        if stage == "mid":
            x = self._mlp_half(layer, x if layer != cut else x[:, -run.readout:], None, run)
        for l in range(start, a.n_layers if until is None else until):
            x = self._block(l, x, run)
        if until is not None:
            return x
        if branches is not None:
            final = x[:, -run.readout:]                               # [B, readout, d_model]
        else:
            final = x[:, -1] if edit is None else edit.final(x[:, -1])
        logits = a.unembed(a.ln_final(final))
        return RunCache(None, run.keep, logits, run.rope, branches) if keep else logits

    def _qkv(self, layer: int, x: Tensor, run: _Pass):
        """q, k, v of block input x [B, T', d]; k_rot, v with the cached prefix before p0."""
        a = self.arch
        q, k, v = a.qkv(layer, a.ln1(layer, x))
        if run.edit is not None:
            q, k, v = run.edit.qkv(layer, q, k, v)
        q_rot, k_rot = self._rope(run.rope, q, k, run.p0)
        k_all, v_all = k_rot, v
        if run.p0 > 0:
            cache = run.src.layers[layer]
            k_all = torch.cat((cache.k_rot[run.rows, :run.p0], k_rot), dim=1)
            v_all = torch.cat((cache.v[run.rows, :run.p0], v), dim=1)
        return q, k, v, q_rot, k_rot, k_all, v_all

    def _block(self, layer: int, x: Tensor, run: _Pass) -> Tensor:
        """One transformer block on x [B, T', d] (the whole block loop of the engine)."""
        a, edit = self.arch, run.edit
        if edit is not None:
            x = edit.resid_pre(layer, x)
        resid_pre = x
        q, k, v, q_rot, k_rot, k_all, v_all = self._qkv(layer, x, run)
        q_in, offset = q_rot, run.p0
        if layer == run.last_only:
            k = run.readout
            q_in, x, offset = q_rot[:, -k:], x[:, -k:], run.p0 + q_rot.shape[1] - k
        pattern, z = self.attend(layer, q_in, k_all, v_all, offset, visible=run.visible)
        if edit is not None:
            z = edit.z(layer, pattern, z)
        attn_out = a.o_proj(layer, z)
        if run.keep is not None:
            run.keep.append(LayerCache(resid_pre, q, k, v, q_rot, k_rot, pattern, z, attn_out,
                                       *([None] * 5)))
        return self._mlp_half(layer, x, attn_out, run)

    def _mlp_half(self, layer: int, x: Tensor, attn_out: Tensor | None, run: _Pass) -> Tensor:
        """The MLP half of a block: x the block input (attn_out given) or resid_mid (None)."""
        a, edit = self.arch, run.edit
        if attn_out is None:
            mid, mlp_in = x, x
        elif a.parallel:
            mid, mlp_in = None, x
        else:
            mid = mlp_in = x + attn_out
        if edit is not None:
            mlp_in = edit.mlp_in(layer, mlp_in)
        pre = a.mlp_pre(layer, a.ln2(layer, mlp_in))
        post = a.mlp_act(layer, pre)
        out = a.mlp_out(layer, post)
        if edit is not None:
            out = edit.mlp_out(layer, out)
        x = (x + attn_out + out) if attn_out is not None and a.parallel else mid + out
        if run.keep is not None:
            c = run.keep[-1]
            c.resid_mid, c.mlp_pre, c.mlp_post, c.mlp_out, c.resid_post = mid, pre, post, out, x
        return x

    # -- its common uses ------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, tokens: Tensor, branches=None) -> RunCache:
        """tokens [b, T] -> every layer's activations and the last position's logits; with
        continuation `branches` (`patching.model.branches.extend`), the readout slots' logits.

        >>> runner.run(tokens).layers[0].z.shape          # [b, T, H, d_head]  # doctest: +SKIP
        """
        positions = (branches.positions if branches is not None
                     else torch.arange(tokens.shape[1], device=tokens.device))
        cache = self.forward(self.arch.embed(tokens, positions), rope=self.rope_for(tokens, positions), keep=True,
                             branches=branches)
        cache.tokens = tokens
        return cache

    @torch.inference_mode()
    def resume(self, src: RunCache, rows: Tensor, layer: int, stage: str, resid: Tensor,
               p0: int = 0) -> Tensor:
        """Continue patched runs from `layer`'s `stage` ('pre', 'mid' or 'post').

        rows [B]: which prompt of `src` each row patches (its unpatched prefix, keys and values).
        resid [B, T - p0, d_model]: the residual stream at positions p0.. at that stage.
        Returns the last position's logits [B, vocab].

        >>> runner.resume(cache, rows, 3, "pre", x, p0=5)        # [B, vocab]   # doctest: +SKIP
        """
        return self.forward(resid, src=src, rows=rows, layer=layer, stage=stage, p0=p0)

    @torch.inference_mode()
    def resume_until(self, src: RunCache, rows: Tensor, layer: int, stage: str, resid: Tensor,
                     p0: int, until: int) -> Tensor:
        """Continue patched runs like `resume`, but stop at layer `until`'s block input.

        Returns resid_pre of layer `until` at positions p0.. [B, T - p0, d_model]. The start
        (`layer`, `stage`) must not be after that point.

        >>> x = runner.resume_until(cache, rows, 0, "post", resid, p0=3, until=2)  # doctest: +SKIP
        """
        return self.forward(resid, src=src, rows=rows, layer=layer, stage=stage, p0=p0, until=until)

    @torch.inference_mode()
    def attention_pattern(self, src: RunCache, rows: Tensor, layer: int, resid: Tensor, p0: int,
                          heads: Tensor | None = None) -> Tensor:
        """Attention patterns of `layer` for block inputs resid [B, T - p0, d_model].

        Keys and values before p0 come from `src`'s cache (rows [B] pick its prompts).
        Returns [B, H, T - p0, T] for the query heads `heads` (all when None).

        >>> runner.attention_pattern(cache, rows, 2, x, p0=3)     # [B, H, T-3, T]  # doctest: +SKIP
        """
        run = _Pass(src, rows, p0, src.rope, None, -1, None, src.branches)
        _, _, _, q_rot, _, k_all, v_all = self._qkv(layer, resid, run)
        if heads is not None:
            q_rot = q_rot[:, :, heads]
        pattern, _ = self.attend(layer, q_rot, k_all, v_all, p0, heads, run.visible)
        return pattern
