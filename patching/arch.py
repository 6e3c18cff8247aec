"""Per-family access to a Hugging Face causal LM's pieces, for the engine's own forward.

The engine does not run the Hugging Face forward: it needs to start at any layer, compute only
the positions a patch can change and reuse the cached keys and values of the rest. So each
supported family exposes the same small set of position-wise pieces (norms, projections, MLP)
by calling the model's own modules, which keeps the numbers identical to the model's forward.
Attention itself (scores, softmax, mixing) is written once in `runner.py`.

Families: GPT-2, Llama-style (Llama, Mistral, Qwen2: RMSNorm, rotary, gated MLP, grouped-query
attention) and GPT-NeoX / Pythia (partial rotary, parallel attention + MLP). Other architectures
fall back to hook-based patching through TransformerLens (see engine.py).

>>> arch = arch_for(hf_model)            # doctest: +SKIP
>>> q, k, v = arch.qkv(0, arch.ln1(0, arch.embed(tokens)))   # [batch, pos, heads, d_head]
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding on the first `cos.shape[-1]` dims of x [batch, pos, heads, d_head]."""
    rot = cos.shape[-1]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x_rot = x_rot * cos + rotate_half(x_rot) * sin
    return torch.cat((x_rot, x_pass), dim=-1) if x_pass.shape[-1] else x_rot


@dataclass
class Arch:
    """Shared shape facts; subclasses implement the pieces for one family."""
    model: nn.Module
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    d_mlp: int
    parallel: bool = False       # attention and MLP both read resid_pre (GPT-NeoX)
    rotary: bool = False

    # embed(tokens [b, T], positions [T]) -> resid [b, T, d]
    # rope(positions [T], like) -> (cos, sin) [1, T, rot] or None
    # ln1 / ln2 / ln_final: resid -> normalised
    # qkv(layer, x) -> q [b, T, n_heads, d_head], k, v [b, T, n_kv_heads, d_head]
    # o_weight(layer) -> [n_heads * d_head, d_model];  o_bias(layer) -> [d_model] or None
    # mlp_pre(layer, x) -> hidden [b, T, d_mlp]; mlp_act -> post; mlp_out(layer, post) -> [b, T, d]
    # unembed(x [b, d]) -> logits [b, vocab]

    def scaling(self, layer: int) -> float:
        raise NotImplementedError

    def o_proj(self, layer: int, z: Tensor) -> Tensor:
        """z [b, T, n_heads, d_head] -> attention output [b, T, d_model], bias included."""
        out = z.flatten(-2) @ self.o_weight(layer)
        bias = self.o_bias(layer)
        return out + bias if bias is not None else out


def _raw(module: nn.Module) -> nn.Module:
    """The Hugging Face module a TransformerLens bridge component wraps (the module itself when
    unwrapped): the engine calls it directly, without the bridge's per-call hook machinery."""
    return getattr(module, "_original_component", module)


def _linear_weight_t(lin: nn.Module) -> Tensor:
    """An nn.Linear's or GPT-2 Conv1D's weight as [in, out]."""
    return lin.weight if type(lin).__name__ == "Conv1D" else lin.weight.T


class Gpt2Arch(Arch):
    def embed(self, tokens, positions):
        t = self.model.transformer
        return _raw(t.wte)(tokens) + _raw(t.wpe)(positions)[None]

    def rope(self, positions, like):
        return None

    def _block(self, layer):
        return self.model.transformer.h[layer]

    def ln1(self, layer, x):
        return _raw(self._block(layer).ln_1)(x)

    def ln2(self, layer, x):
        return _raw(self._block(layer).ln_2)(x)

    def ln_final(self, x):
        return _raw(self.model.transformer.ln_f)(x)

    def qkv(self, layer, x):
        q, k, v = _raw(self._block(layer).attn.c_attn)(x).split(self.d_model, dim=-1)
        shape = (*x.shape[:-1], self.n_heads, self.d_head)
        return q.view(shape), k.view(shape), v.view(shape)

    def scaling(self, layer):
        return self._block(layer).attn.scaling

    def o_weight(self, layer):
        return _linear_weight_t(_raw(self._block(layer).attn.c_proj))

    def o_bias(self, layer):
        return _raw(self._block(layer).attn.c_proj).bias

    def mlp_pre(self, layer, x):
        return _raw(self._block(layer).mlp.c_fc)(x)

    def mlp_act(self, layer, pre):
        act = self._block(layer).mlp.act
        if type(act).__name__ in ("NewGELUActivation", "GELUTanh"):   # same formula, one fused kernel
            return torch.nn.functional.gelu(pre, approximate="tanh")
        return act(pre)

    def mlp_out(self, layer, post):
        return _raw(self._block(layer).mlp.c_proj)(post)

    def unembed(self, x):
        return _raw(self.model.get_output_embeddings())(x)


class LlamaArch(Arch):
    def embed(self, tokens, positions):
        return _raw(self.model.model.embed_tokens)(tokens)

    def rope(self, positions, like):
        cos, sin = self.model.model.rotary_emb(like, positions[None])
        return cos, sin

    def _block(self, layer):
        return self.model.model.layers[layer]

    def ln1(self, layer, x):
        return _raw(self._block(layer).input_layernorm)(x)

    def ln2(self, layer, x):
        return _raw(self._block(layer).post_attention_layernorm)(x)

    def ln_final(self, x):
        return _raw(self.model.model.norm)(x)

    def qkv(self, layer, x):
        a = self._block(layer).self_attn
        lead = x.shape[:-1]
        return (_raw(a.q_proj)(x).view(*lead, self.n_heads, self.d_head),
                _raw(a.k_proj)(x).view(*lead, self.n_kv_heads, self.d_head),
                _raw(a.v_proj)(x).view(*lead, self.n_kv_heads, self.d_head))

    def scaling(self, layer):
        return self._block(layer).self_attn.scaling

    def o_weight(self, layer):
        return _raw(self._block(layer).self_attn.o_proj).weight.T

    def o_bias(self, layer):
        return _raw(self._block(layer).self_attn.o_proj).bias

    def mlp_pre(self, layer, x):
        mlp = self._block(layer).mlp
        return torch.stack((_raw(mlp.gate_proj)(x), _raw(mlp.up_proj)(x)))   # [2, b, T, d_mlp]

    def mlp_act(self, layer, pre):
        return self._block(layer).mlp.act_fn(pre[0]) * pre[1]

    def mlp_out(self, layer, post):
        return _raw(self._block(layer).mlp.down_proj)(post)

    def unembed(self, x):
        return _raw(self.model.get_output_embeddings())(x)


class NeoxArch(Arch):
    def embed(self, tokens, positions):
        return _raw(self.model.gpt_neox.embed_in)(tokens)

    def rope(self, positions, like):
        return self.model.gpt_neox.rotary_emb(like, positions[None])

    def _block(self, layer):
        return self.model.gpt_neox.layers[layer]

    def ln1(self, layer, x):
        return _raw(self._block(layer).input_layernorm)(x)

    def ln2(self, layer, x):
        return _raw(self._block(layer).post_attention_layernorm)(x)

    def ln_final(self, x):
        return _raw(self.model.gpt_neox.final_layer_norm)(x)

    def qkv(self, layer, x):
        qkv = _raw(self._block(layer).attention.query_key_value)(x)
        qkv = qkv.view(*x.shape[:-1], self.n_heads, 3 * self.d_head)
        return qkv.chunk(3, dim=-1)

    def scaling(self, layer):
        return self._block(layer).attention.scaling

    def o_weight(self, layer):
        return _raw(self._block(layer).attention.dense).weight.T

    def o_bias(self, layer):
        return _raw(self._block(layer).attention.dense).bias

    def mlp_pre(self, layer, x):
        return _raw(self._block(layer).mlp.dense_h_to_4h)(x)

    def mlp_act(self, layer, pre):
        return self._block(layer).mlp.act(pre)

    def mlp_out(self, layer, post):
        return _raw(self._block(layer).mlp.dense_4h_to_h)(post)

    def unembed(self, x):
        return _raw(self.model.get_output_embeddings())(x)


FAMILIES = {"gpt2": Gpt2Arch, "llama": LlamaArch, "mistral": LlamaArch, "qwen2": LlamaArch,
            "gpt_neox": NeoxArch}


def arch_for(model: nn.Module) -> Arch | None:
    """The engine's view of a Hugging Face causal LM, or None when its family is not supported.

    >>> arch_for(GPT2LMHeadModel(GPT2Config(n_layer=2))).n_layers   # doctest: +SKIP
    2
    """
    cfg = model.config
    family = FAMILIES.get(cfg.model_type)
    if family is None:
        return None
    n_heads = cfg.num_attention_heads
    d_model = cfg.hidden_size
    d_head = getattr(cfg, "head_dim", None) or d_model // n_heads
    if cfg.model_type == "gpt2":
        if getattr(cfg, "reorder_and_upcast_attn", False) or getattr(cfg, "add_cross_attention", False):
            return None
        d_mlp = cfg.n_inner or 4 * d_model
    else:
        d_mlp = cfg.intermediate_size
    return family(
        model=model, n_layers=cfg.num_hidden_layers, n_heads=n_heads,
        n_kv_heads=getattr(cfg, "num_key_value_heads", None) or n_heads,
        d_head=d_head, d_model=d_model, d_mlp=d_mlp,
        parallel=bool(getattr(cfg, "use_parallel_residual", False)) if cfg.model_type == "gpt_neox" else False,
        rotary=cfg.model_type != "gpt2",
    )
