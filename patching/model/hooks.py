"""TransformerLens hook names: the only place they are built.

The engine's fast path works on its own cache (runner.py) and needs no hook names; they are used
by the hook-based fallback, by inspection views and by the parity tests that call
TransformerLens' `patching.py`.

>>> resid_pre(3)
'blocks.3.hook_resid_pre'
"""
from __future__ import annotations


def resid_pre(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def resid_mid(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_mid"


def resid_post(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def attn_out(layer: int) -> str:
    return f"blocks.{layer}.hook_attn_out"


def mlp_out(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def mlp_post(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_post"


def z(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def q(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_q"


def k(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_k"


def v(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_v"


def pattern(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def logits() -> str:
    return "hook_unembed"
