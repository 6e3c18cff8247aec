"""Per-family access to a Hugging Face causal LM's pieces, for the engine's own forward.

The engine does not run the Hugging Face forward: it needs to start at any layer, compute only
the positions a patch can change and reuse the cached keys and values of the rest. So each
supported family exposes the same small set of position-wise pieces (norms, projections, MLP)
by calling the model's own modules, which keeps the numbers identical to the model's forward.
Attention itself (scores, softmax, mixing) is written once in `runner.py`.

Families: GPT-2, Llama-style (Llama, Mistral, Qwen2: RMSNorm, rotary, gated MLP, grouped-query
attention) and GPT-NeoX / Pythia (partial rotary, parallel attention + MLP). Other architectures
fall back to hook-based patching through TransformerLens (see engine.py).

A model accelerate split over devices (or offloaded in part to the CPU or disk) gets `home`: each
piece then runs on its module's execution device and returns its output on `home` (`_call`), and
weights read directly come through `param`, which loads offloaded ones.

>>> from transformers import GPT2Config, GPT2LMHeadModel
>>> hf_model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=8))
>>> arch = arch_for(hf_model)
>>> tokens = torch.tensor([[1, 2, 3]])
>>> q, k, v = arch.qkv(0, arch.ln1(0, arch.embed(tokens, torch.arange(3))))
>>> q.shape                              # [batch, pos, heads, d_head]
torch.Size([1, 3, 2, 8])
"""
from __future__ import annotations

from dataclasses import dataclass, field

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
    home: torch.device | None = None   # set when the model is split over devices (see `_call`)
    _exec: dict = field(default_factory=dict, repr=False, compare=False)   # module id -> device

    # embed(tokens [b, T], positions [T]) -> resid [b, T, d]
    # rope(positions [T], like) -> (cos, sin) [1, T, rot] or None
    # ln1 / ln2 / ln_final: resid -> normalised
    # qkv(layer, x) -> q [b, T, n_heads, d_head], k, v [b, T, n_kv_heads, d_head]
    # _o_module(layer) -> the attention output projection (o_weight / o_bias / o_proj read it)
    # mlp_pre(layer, x) -> hidden [b, T, d_mlp]; mlp_act -> post; mlp_out(layer, post) -> [b, T, d]
    # unembed(x [b, d]) -> logits [b, vocab]

    def scaling(self, layer: int) -> float:
        raise NotImplementedError

    # -- calling the model's own modules, wherever accelerate placed them ------------------------
    def _call(self, module: nn.Module, *args: Tensor, raw: bool = True):
        """`module(*args)` (its wrapped Hugging Face module when `raw`). On a model split over
        devices (`home` set) the inputs go to the module's execution device and the outputs come
        back to `home`, so everything outside these pieces lives on one device; offloaded weights
        are loaded by accelerate's own hook on the module."""
        mod = _raw(module) if raw else module
        if self.home is None:
            return mod(*args)
        dev = self._device_of(mod)
        out = mod(*(a.to(dev) for a in args))
        return tuple(o.to(self.home) for o in out) if isinstance(out, tuple) else out.to(self.home)

    def param(self, module: nn.Module, name: str = "weight") -> Tensor | None:
        """A parameter of `module` (unwrapped) as a tensor on `home`; an offloaded one (on the meta
        device, its data on the CPU or disk) is loaded for the read."""
        mod = _raw(module)
        t = getattr(mod, name, None)
        if t is None or self.home is None:
            return t
        if t.device.type == "meta":
            from accelerate.utils import align_module_device
            with align_module_device(mod):
                t = getattr(mod, name)
        return t.to(self.home)

    def _device_of(self, mod: nn.Module) -> torch.device:
        dev = self._exec.get(id(mod))
        if dev is None:
            dev = self._exec[id(mod)] = execution_device(mod, self.home)
        return dev

    def o_weight(self, layer: int) -> Tensor:
        """The attention output projection as [n_heads * d_head, d_model]."""
        mod = self._o_module(layer)
        w = self.param(mod)
        return w if type(_raw(mod)).__name__ == "Conv1D" else w.T     # GPT-2's Conv1D is [in, out]

    def o_bias(self, layer: int) -> Tensor | None:
        return self.param(self._o_module(layer), "bias")

    def o_proj(self, layer: int, z: Tensor) -> Tensor:
        """z [b, T, n_heads, d_head] -> attention output [b, T, d_model], bias included."""
        if self.home is not None:            # split model: one call where the module is placed
            return self._call(self._o_module(layer), z.flatten(-2))
        out = z.flatten(-2) @ self.o_weight(layer)
        bias = self.o_bias(layer)
        return out + bias if bias is not None else out


def _raw(module: nn.Module) -> nn.Module:
    """The Hugging Face module a TransformerLens bridge component wraps (the module itself when
    unwrapped): the engine calls it directly, without the bridge's per-call hook machinery."""
    return getattr(module, "_original_component", module)


def execution_device(module: nn.Module, default: torch.device) -> torch.device:
    """Where `module` computes: accelerate's hook's execution device when it has one (the case
    for offloaded modules, whose parameters sit on the meta device), else its first parameter's
    or buffer's device, else `default`.

    >>> execution_device(nn.Linear(2, 2), torch.device("cpu"))
    device(type='cpu')
    """
    hook = getattr(module, "_hf_hook", None)
    for h in (hook, *getattr(hook, "hooks", ())):            # a SequentialHook chains several
        dev = getattr(h, "execution_device", None)
        if dev is not None:
            return torch.device("cuda", dev) if isinstance(dev, int) else torch.device(dev)
    for t in (*module.parameters(), *module.buffers()):
        if t.device.type != "meta":
            return t.device
    return default


class Gpt2Arch(Arch):
    def embed(self, tokens, positions):
        t = self.model.transformer
        return self._call(t.wte, tokens) + self._call(t.wpe, positions)[None]

    def rope(self, positions, like):
        return None

    def _block(self, layer):
        return self.model.transformer.h[layer]

    def ln1(self, layer, x):
        return self._call(self._block(layer).ln_1, x)

    def ln2(self, layer, x):
        return self._call(self._block(layer).ln_2, x)

    def ln_final(self, x):
        return self._call(self.model.transformer.ln_f, x)

    def qkv(self, layer, x):
        q, k, v = self._call(self._block(layer).attn.c_attn, x).split(self.d_model, dim=-1)
        shape = (*x.shape[:-1], self.n_heads, self.d_head)
        return q.view(shape), k.view(shape), v.view(shape)

    def scaling(self, layer):
        return self._block(layer).attn.scaling

    def _o_module(self, layer):
        return self._block(layer).attn.c_proj

    def mlp_pre(self, layer, x):
        return self._call(self._block(layer).mlp.c_fc, x)

    def mlp_act(self, layer, pre):
        act = self._block(layer).mlp.act
        if type(act).__name__ in ("NewGELUActivation", "GELUTanh"):   # same formula, one fused kernel
            return torch.nn.functional.gelu(pre, approximate="tanh")
        return act(pre)

    def mlp_out(self, layer, post):
        return self._call(self._block(layer).mlp.c_proj, post)

    def unembed(self, x):
        return self._call(self.model.get_output_embeddings(), x)


class LlamaArch(Arch):
    def embed(self, tokens, positions):
        return self._call(self.model.model.embed_tokens, tokens)

    def rope(self, positions, like):
        cos, sin = self._call(self.model.model.rotary_emb, like, positions[None], raw=False)
        return cos, sin

    def _block(self, layer):
        return self.model.model.layers[layer]

    def ln1(self, layer, x):
        return self._call(self._block(layer).input_layernorm, x)

    def ln2(self, layer, x):
        return self._call(self._block(layer).post_attention_layernorm, x)

    def ln_final(self, x):
        return self._call(self.model.model.norm, x)

    def qkv(self, layer, x):
        a = self._block(layer).self_attn
        lead = x.shape[:-1]
        return (self._call(a.q_proj, x).view(*lead, self.n_heads, self.d_head),
                self._call(a.k_proj, x).view(*lead, self.n_kv_heads, self.d_head),
                self._call(a.v_proj, x).view(*lead, self.n_kv_heads, self.d_head))

    def scaling(self, layer):
        return self._block(layer).self_attn.scaling

    def _o_module(self, layer):
        return self._block(layer).self_attn.o_proj

    def mlp_pre(self, layer, x):
        mlp = self._block(layer).mlp
        return torch.stack((self._call(mlp.gate_proj, x), self._call(mlp.up_proj, x)))   # [2, b, T, d_mlp]

    def mlp_act(self, layer, pre):
        return self._block(layer).mlp.act_fn(pre[0]) * pre[1]

    def mlp_out(self, layer, post):
        return self._call(self._block(layer).mlp.down_proj, post)

    def unembed(self, x):
        return self._call(self.model.get_output_embeddings(), x)


class NeoxArch(Arch):
    def embed(self, tokens, positions):
        return self._call(self.model.gpt_neox.embed_in, tokens)

    def rope(self, positions, like):
        return self._call(self.model.gpt_neox.rotary_emb, like, positions[None], raw=False)

    def _block(self, layer):
        return self.model.gpt_neox.layers[layer]

    def ln1(self, layer, x):
        return self._call(self._block(layer).input_layernorm, x)

    def ln2(self, layer, x):
        return self._call(self._block(layer).post_attention_layernorm, x)

    def ln_final(self, x):
        return self._call(self.model.gpt_neox.final_layer_norm, x)

    def qkv(self, layer, x):
        qkv = self._call(self._block(layer).attention.query_key_value, x)
        qkv = qkv.view(*x.shape[:-1], self.n_heads, 3 * self.d_head)
        return qkv.chunk(3, dim=-1)

    def scaling(self, layer):
        return self._block(layer).attention.scaling

    def _o_module(self, layer):
        return self._block(layer).attention.dense

    def mlp_pre(self, layer, x):
        return self._call(self._block(layer).mlp.dense_h_to_4h, x)

    def mlp_act(self, layer, pre):
        return self._block(layer).mlp.act(pre)

    def mlp_out(self, layer, post):
        return self._call(self._block(layer).mlp.dense_4h_to_h, post)

    def unembed(self, x):
        return self._call(self.model.get_output_embeddings(), x)


FAMILIES = {"gpt2": Gpt2Arch, "llama": LlamaArch, "mistral": LlamaArch, "qwen2": LlamaArch,
            "gpt_neox": NeoxArch}


def arch_for(model: nn.Module, home: torch.device | None = None) -> Arch | None:
    """The engine's view of a Hugging Face causal LM, or None when its family is not supported.

    `home`: for a model that accelerate split over devices (or offloaded in part), the device
    where the engine keeps activations; each piece then runs where its module is placed.

    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> arch_for(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50))).n_layers
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
        rotary=cfg.model_type != "gpt2", home=home,
    )
