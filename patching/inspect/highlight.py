"""Text highlighted by value (Karpathy-style): one number per token of a prompt.

The values a researcher wants to read *on the text*: a neuron's activation, a head's output
norm, the attention one destination pays to every earlier token, or the effect of patching each
position (a per-position result of a sweep). Each function returns one long DataFrame, one row
per token (HIGHLIGHT_COLUMNS); `patching.figures.highlight` colours the tokens by it (HTML spans,
a diverging scale, blue = positive) and draws the same numbers as bars.

    python -m patching highlight --source neuron --layer 1 --neuron 7 --out F.csv --html F.html

>>> df = highlight_values(model, prompts, HighlightSpec("attention", layer=1, head=0, dest=-1))
>>> round(float(df.value.sum()), 4), df.label.iloc[0]
(1.0, "L1H0 attention from 14: ' to'")
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from patching.core.nodes import head_label
from patching.core.prompts import PromptSet
from patching.core.spec import check_index
from patching.inspect import lens

SOURCES = {
    "neuron": "a neuron's activation (MLP post-activation)",
    "head_norm": "a head's output norm (|z · W_O[h]|, no bias)",
    "attention": "attention from one destination position",
    "effect": "a patching effect (patched − unpatched metric, per position of a sweep)",
}
HIGHLIGHT_COLUMNS = ("source", "label", "run", "pair", "pos", "token", "value")


def _whole(value, what: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise ValueError(f"{what} must be an integer, not {value!r}")
    return int(value)


@dataclass(frozen=True)
class HighlightSpec:
    """What to colour a prompt's tokens by (the model-reading sources; `effect_values` reads a result).

    source: neuron (uses layer, neuron) | head_norm (layer, head) | attention (layer, head, dest:
    the destination position, negative counts from the end). run: clean | corrupt; pair: which
    pair of the set. Ranges are checked against the model when the values are computed.

    >>> HighlightSpec("neuron", layer=1, neuron=7).source
    'neuron'
    """
    source: str = "neuron"
    layer: int = 0
    neuron: int = 0
    head: int = 0
    dest: int = -1
    run: str = "clean"
    pair: int = 0

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"unknown source {self.source!r}; choose one of {', '.join(SOURCES)}")
        if self.source == "effect":
            raise ValueError("source 'effect' reads a sweep's result: use effect_values(result, layer=...) "
                             "(CLI: --result run.patchboard.zip)")
        for name in ("layer", "neuron", "head", "dest", "pair"):
            _whole(getattr(self, name), name)
        if self.run not in lens.RUNS:
            raise ValueError(f"run must be 'clean' or 'corrupt', not {self.run!r}")


def _frame(source: str, label: str, run: str | None, pair: int | None, tokens: list[str],
           values: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"source": source, "label": label, "run": run,
                         "pair": pd.array([pair] * len(tokens), dtype="Int64"),
                         "pos": np.arange(len(tokens)), "token": tokens, "value": values.astype(float)})


@torch.inference_mode()
def highlight_values(model, prompts: PromptSet, spec: HighlightSpec) -> pd.DataFrame:
    """One value per token of pair `spec.pair`'s clean or corrupt prompt, from one forward.

    Columns (HIGHLIGHT_COLUMNS): source, label (what the value is, e.g. "L1N7", "L1H2 output
    norm", "L1H0 attention from 14: ' to'"), run, pair, pos, token, value. For attention, the
    positions after the destination are NaN (the causal mask: nothing is attended there) and the
    others sum to 1. A set of mixed lengths gives the pair's own tokens.

    >>> df = highlight_values(model, prompts, HighlightSpec("neuron", layer=0, neuron=3))
    >>> len(df), df.label.iloc[0]
    (15, 'L0N3')
    """
    pair = lens._check_pair(prompts, spec.pair)
    layer = check_index(spec.layer, model.n_layers, "layer", f"the model has {model.n_layers} layers")
    if spec.source in ("neuron", "head_norm"):
        lens._check_model(model, f"highlighting by {SOURCES[spec.source]}")
    if spec.source in ("head_norm", "attention") and not 0 <= spec.head < model.n_heads:
        raise ValueError(f"head {spec.head} is out of range: layer {layer} has {model.n_heads} heads "
                         f"(0..{model.n_heads - 1})")
    cache = lens._run(model, prompts, spec.run, pair)
    tokens = lens._Decoder(model)(cache.tokens[0].cpu())
    lc = cache.layers[layer]
    if spec.source == "neuron":
        d_mlp = lc.mlp_post.shape[-1]
        if not 0 <= spec.neuron < d_mlp:
            raise ValueError(f"neuron {spec.neuron} is out of range: layer {layer} has {d_mlp} neurons "
                             f"(0..{d_mlp - 1})")
        values = lc.mlp_post[0, :, spec.neuron].float().cpu().numpy()                       # [pos]
        label = f"L{layer}N{spec.neuron}"
    elif spec.source == "head_norm":
        a = model.arch
        w_o = a.o_weight(layer).view(a.n_heads, a.d_head, a.d_model)[spec.head]              # [d_head, d_model]
        values = (lc.z[0, :, spec.head] @ w_o).float().norm(dim=-1).cpu().numpy()           # [pos]
        label = f"{head_label(layer, spec.head)} output norm"
    else:
        dest = check_index(spec.dest, len(tokens), "dest", f"the prompt has {len(tokens)} tokens")
        values = np.full(len(tokens), np.nan)
        values[:dest + 1] = lc.pattern[0, spec.head, dest, :dest + 1].float().cpu().numpy()
        from patching.figures.common import position_label       # plotly is loaded when a view draws
        label = f"{head_label(layer, spec.head)} attention from {position_label(dest, tokens)}"
    return _frame(spec.source, label, spec.run, pair, tokens, values)[list(HIGHLIGHT_COLUMNS)]


def attention_row(patterns: pd.DataFrame, *, layer: int, head: int, dest: int = -1) -> pd.DataFrame:
    """One head's attention from `dest` to every position, read from an `attention_patterns` /
    `attention_overview` frame (no forward): the same rows as `highlight_values` with source
    "attention" (NaN after the destination).

    >>> row = attention_row(attention_overview(model, prompts), layer=1, head=0, dest=-1)   # doctest: +SKIP
    >>> round(float(row.value.sum()), 4)                                                      # doctest: +SKIP
    1.0
    """
    sel = patterns[(patterns["layer"] == layer) & (patterns["head"] == head)]
    if sel.empty:
        present = sorted(set(zip(patterns["layer"].tolist(), patterns["head"].tolist())))
        raise ValueError(f"{head_label(layer, head)} is not in these patterns (they have "
                         f"{', '.join(head_label(l, h) for l, h in present[:8])}{', ...' if len(present) > 8 else ''})")
    toks = sel[["dest", "dest_token"]].drop_duplicates("dest").sort_values("dest")
    tokens = [str(t) for t in toks["dest_token"]]
    dest = check_index(_whole(dest, "dest"), len(tokens), "dest", f"the prompt has {len(tokens)} tokens")
    values = np.full(len(tokens), np.nan)
    row = sel[sel["dest"] == dest]
    values[row["src"].to_numpy()] = row["value"].to_numpy()
    from patching.figures.common import position_label
    label = f"{head_label(layer, head)} attention from {position_label(dest, tokens)}"
    return _frame("attention", label, str(sel["run"].iloc[0]), int(sel["pair"].iloc[0]), tokens,
                  values)[list(HIGHLIGHT_COLUMNS)]


def effect_values(result, *, layer: int, head: int | None = None) -> pd.DataFrame:
    """A per-position sweep's effect (patched − unpatched metric, mean over pairs) at `layer`
    (and `head`, for head kinds per position), one row per position: the highlight of a run.

    Columns as `highlight_values` (run and pair empty; token = the result's position labels,
    role names for a set aligned by role); label names the kind, layer, metric and direction.

    >>> r = sweep(model, prompts, PatchSpec(kind="resid_pre", layers=(1,)))     # doctest: +SKIP
    >>> effect_values(r, layer=1).value.abs().idxmax()                            # doctest: +SKIP
    4
    """
    axes = tuple(result.axes)
    kind = result.spec.kind
    if "pos" not in axes:
        raise ValueError(f"a {kind} result has no position axis (axes {', '.join(axes)}); highlight needs a "
                         "per-position sweep (a residual / block kind, or a head kind with --per-position)")
    extra = [a for a in axes if a not in ("layer", "pos", "head")]
    if extra:
        raise ValueError(f"a {kind} result has axes {', '.join(axes)}; highlight reads layer × pos (× head) only")
    layer = _whole(layer, "layer")
    layers = list(result.coords["layer"])
    if layer not in layers:
        raise ValueError(f"layer {layer} is not in this result; it has layers {', '.join(map(str, layers))}")
    index: list = [layers.index(layer), slice(None)]
    what = f"{kind} L{layer}"
    if "head" in axes:
        heads = list(result.coords["head"])
        if head is None or _whole(head, "head") not in heads:
            raise ValueError(f"a {kind} result needs a head: give one of {', '.join(map(str, heads))}, not {head!r}")
        index.append(heads.index(head))
        what = f"{kind} {head_label(layer, head)}"
    effect = result.effect[tuple(index)].float().cpu().numpy()                              # [pos]
    positions = list(result.coords["pos"])
    labels = list(result.str_tokens)               # a set aligned by role: the role names
    tokens = [labels[p] if p < len(labels) else str(p) for p in positions]
    label = f"effect of {what} · {result.spec.metric} · {result.spec.direction}"
    df = _frame("effect", label, None, None, tokens, effect)
    df["pos"] = positions
    return df[list(HIGHLIGHT_COLUMNS)]


__all__ = ["HighlightSpec", "highlight_values", "attention_row", "effect_values", "SOURCES", "HIGHLIGHT_COLUMNS"]
