"""The engine's own forward pass: cache every activation once, then resume from any layer.

`Runner.run` is one ordinary forward that keeps what patching needs (residual streams, q/k/v,
patterns, z, block outputs, MLP activations). `Runner.resume` continues a batch of patched
residual streams from a given layer and stage, computing only positions >= `p0`: positions
before the earliest patched one cannot change under causal attention, so their keys and values
come from the cache of the run being patched. Only the last position's logits are produced,
since every metric reads the next-token distribution.

>>> runner = Runner(arch_for(hf_model))                                   # doctest: +SKIP
>>> cache = runner.run(tokens)                         # tokens [pairs, pos]  # doctest: +SKIP
>>> runner.resume(cache, rows, layer=3, stage="pre", resid=x, p0=5)   # -> [rows, vocab]  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from patching.model.arch import Arch, apply_rotary

STAGES = ("pre", "mid", "post")


def _causal_softmax(scores: Tensor, q_offset: int) -> Tensor:
    """Softmax over keys of scores [..., Tq, Tk], queries at positions q_offset.., keys at 0.."""
    tq, tk = scores.shape[-2:]
    future = (torch.arange(tk, device=scores.device)[None, :]
              > torch.arange(q_offset, q_offset + tq, device=scores.device)[:, None])
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1)


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
    tokens: Tensor                     # [b, T]
    layers: list[LayerCache]
    logits: Tensor                     # [b, vocab] at the last position
    rope: tuple[Tensor, Tensor] | None = field(default=None, repr=False)   # cos, sin [1, T, rot]


class Runner:
    """A functional forward over an `Arch`, with caching and resumption."""

    def __init__(self, arch: Arch):
        self.arch = arch

    # -- attention, written once for every family ------------------------------------------
    def attend(self, layer: int, q_rot: Tensor, k_rot: Tensor, v: Tensor, q_offset: int,
               heads: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Causal attention of queries at positions q_offset.. over keys at 0..

        q_rot [b, Tq, H, d_head] for the heads `heads` (all heads when None); k_rot, v
        [b, Tk, n_kv_heads, d_head]. Returns pattern [b, H, Tq, Tk] and z [b, Tq, H, d_head].
        """
        a = self.arch
        kv_of_head = torch.arange(a.n_heads, device=q_rot.device) // (a.n_heads // a.n_kv_heads)
        if heads is not None:
            kv_of_head = kv_of_head[heads]
        if a.n_kv_heads != a.n_heads or heads is not None:
            k_rot, v = k_rot[:, :, kv_of_head], v[:, :, kv_of_head]
        scores = torch.einsum("bqhd,bkhd->bhqk", q_rot, k_rot) * a.scaling(layer)
        pattern = _causal_softmax(scores, q_offset).to(v.dtype)
        return pattern, torch.einsum("bhqk,bkhd->bqhd", pattern, v)

    def attend_heads(self, layer: int, q_rot: Tensor, k_rot: Tensor, v: Tensor, q_offset: int,
                     heads: Tensor) -> tuple[Tensor, Tensor]:
        """Like `attend`, with a different head set per row.

        q_rot [B, Tq, H, d_head]; k_rot, v [B, Tk, n_kv_heads, d_head]; heads [B, H] query heads.
        Returns pattern [B, H, Tq, Tk] and z [B, Tq, H, d_head].
        """
        a = self.arch
        kv = heads // (a.n_heads // a.n_kv_heads)
        rows = torch.arange(kv.shape[0], device=kv.device)[:, None]
        k_sel, v_sel = k_rot[rows, :, kv], v[rows, :, kv]          # [B, H, Tk, d_head]
        scores = torch.einsum("bqhd,bhkd->bhqk", q_rot, k_sel) * a.scaling(layer)
        pattern = _causal_softmax(scores, q_offset).to(v.dtype)
        return pattern, torch.einsum("bhqk,bhkd->bqhd", pattern, v_sel)

    def _rope(self, rope, q, k, start: int):
        if rope is None:
            return q, k
        cos, sin = rope[0][:, start:start + q.shape[1]], rope[1][:, start:start + q.shape[1]]
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

    def rope_for(self, tokens: Tensor) -> tuple[Tensor, Tensor] | None:
        if not self.arch.rotary:
            return None
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        like = torch.zeros(1, dtype=self.dtype, device=tokens.device)
        return self.arch.rope(positions, like)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.arch.model.parameters()).dtype

    # -- a full forward that keeps everything --------------------------------------------------
    @torch.inference_mode()
    def run(self, tokens: Tensor) -> RunCache:
        """tokens [b, T] -> every layer's activations and the last position's logits."""
        a = self.arch
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        rope = self.rope_for(tokens)
        x = a.embed(tokens, positions)
        layers = []
        for layer in range(a.n_layers):
            resid_pre = x
            q, k, v = a.qkv(layer, a.ln1(layer, x))
            q_rot, k_rot = self._rope(rope, q, k, 0)
            pattern, z = self.attend(layer, q_rot, k_rot, v, 0)
            attn_out = a.o_proj(layer, z)
            if a.parallel:
                resid_mid, mlp_in = None, a.ln2(layer, resid_pre)
            else:
                resid_mid = resid_pre + attn_out
                mlp_in = a.ln2(layer, resid_mid)
            mlp_pre = a.mlp_pre(layer, mlp_in)
            mlp_post = a.mlp_act(layer, mlp_pre)
            mlp_out = a.mlp_out(layer, mlp_post)
            x = (resid_pre + attn_out + mlp_out) if a.parallel else resid_mid + mlp_out
            layers.append(LayerCache(resid_pre, q, k, v, q_rot, k_rot, pattern, z, attn_out,
                                     resid_mid, mlp_pre, mlp_post, mlp_out, x))
        logits = a.unembed(a.ln_final(x[:, -1]))
        return RunCache(tokens, layers, logits, rope)

    # -- resuming a batch of patched residual streams ------------------------------------------
    @torch.inference_mode()
    def resume(self, src: RunCache, rows: Tensor, layer: int, stage: str, resid: Tensor,
               p0: int = 0) -> Tensor:
        """Continue patched runs from `layer`'s `stage` ('pre', 'mid' or 'post').

        rows [B]: which prompt of `src` each row patches (its unpatched prefix, keys and values).
        resid [B, T - p0, d_model]: the residual stream at positions p0.. at that stage.
        Returns the last position's logits [B, vocab].
        """
        a = self.arch
        last = a.n_layers - 1
        x = resid
        if stage == "mid":
            x = self._mlp_step(layer, x, x, last_only=layer == last)
            layer += 1
        elif stage == "post":
            layer += 1
        for l in range(layer, a.n_layers):
            x = self._block_step(src, rows, l, x, p0, last_only=l == last)
        return a.unembed(a.ln_final(x[:, -1]))

    def _mlp_step(self, layer, x_resid, x_mlp_in, last_only):
        a = self.arch
        if last_only:
            x_resid, x_mlp_in = x_resid[:, -1:], x_mlp_in[:, -1:]
        return x_resid + a.mlp_out(layer, a.mlp_act(layer, a.mlp_pre(layer, a.ln2(layer, x_mlp_in))))

    def _block_step(self, src: RunCache, rows, layer, x, p0, last_only):
        a = self.arch
        cache = src.layers[layer]
        q, k, v = a.qkv(layer, a.ln1(layer, x))
        q, k = self._rope(src.rope, q, k, p0)
        if p0 > 0:
            k = torch.cat((cache.k_rot[rows, :p0], k), dim=1)
            v = torch.cat((cache.v[rows, :p0], v), dim=1)
        offset = p0
        if last_only:
            q, x, offset = q[:, -1:], x[:, -1:], p0 + q.shape[1] - 1
        _, z = self.attend(layer, q, k, v, offset)
        attn_out = a.o_proj(layer, z)
        if a.parallel:
            return self._mlp_step(layer, x + attn_out, x, last_only=False)
        return self._mlp_step(layer, x + attn_out, x + attn_out, last_only=False)

    # -- partial resumption, for views that read activations inside a patched run ---------------
    @torch.inference_mode()
    def resume_until(self, src: RunCache, rows: Tensor, layer: int, stage: str, resid: Tensor,
                     p0: int, until: int) -> Tensor:
        """Continue patched runs like `resume`, but stop at layer `until`'s block input.

        Returns resid_pre of layer `until` at positions p0.. [B, T - p0, d_model]. The start
        (`layer`, `stage`) must not be after that point.

        >>> x = runner.resume_until(cache, rows, 0, "post", resid, p0=3, until=2)  # doctest: +SKIP
        """
        start = layer + (stage != "pre")
        if start > until:
            raise ValueError(f"cannot stop at layer {until}'s input: the run resumes after it "
                             f"(layer {layer}, stage {stage!r})")
        x = resid
        if stage == "mid":
            x = self._mlp_step(layer, x, x, last_only=False)
        for l in range(start, until):
            x = self._block_step(src, rows, l, x, p0, last_only=False)
        return x

    @torch.inference_mode()
    def attention_pattern(self, src: RunCache, rows: Tensor, layer: int, resid: Tensor, p0: int,
                          heads: Tensor | None = None) -> Tensor:
        """Attention patterns of `layer` for block inputs resid [B, T - p0, d_model].

        Keys and values before p0 come from `src`'s cache (rows [B] pick its prompts).
        Returns [B, H, T - p0, T] for the query heads `heads` (all when None).
        """
        a = self.arch
        q, k, v = a.qkv(layer, a.ln1(layer, resid))
        q, k = self._rope(src.rope, q, k, p0)
        if p0 > 0:
            k = torch.cat((src.layers[layer].k_rot[rows, :p0], k), dim=1)
            v = torch.cat((src.layers[layer].v[rows, :p0], v), dim=1)
        if heads is not None:
            q = q[:, :, heads]
        pattern, _ = self.attend(layer, q, k, v, p0, heads)
        return pattern
