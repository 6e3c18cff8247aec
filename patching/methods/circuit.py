"""Circuits from cells: keep a set of components, ablate every other one, measure faithfulness.

Components are attention heads `L{l}H{h}`, MLPs `MLP{l}` and whole attention layers `ATTN{l}`
(shorthand for every head of layer l) -- or, in a **feature circuit**, sparse-autoencoder units:
features `L{l}F{i}` and error nodes `L{l}ERR` of the SAEs on the block inputs (kind `feature`).
A circuit run is the **clean** prompt with every head and MLP *not* in the circuit ablated: its
output replaced at every position by

- `mean`: its mean activation over the corrupt prompts, per position;
- `resample`: its activation on another pair's corrupt prompt (pair i reads pair
  (i + s_i) mod n with s_i in 1..n-1 drawn from `seed`; one draw per pair, shared by all
  ablated components; with a single pair, that pair's own corrupt prompt);
- `zero`: zeros;
- `corrupt`: its activation on the pair's own corrupt prompt (the counterfactual, as path patching
  and ACDC's patching ablation: only what differs between the pair's two prompts is removed).

Heads are ablated through their z (TransformerLens' `hook_z`, before W_O; the output bias b_O
stays), MLPs through their output (`hook_mlp_out`). Kept components are recomputed from the
changed residual stream. In a feature circuit the heads and MLPs all run (they are the
computation between the SAEs) and every SAE unit not kept is ablated: each layer's block input x
(`hook_resid_pre`, as the forward recomputes it) becomes

    decode(f') + e',  f'_i = f_i(x) if feature i is kept else its ablation value,
                      e'   = x - decode(f(x)) if the layer's error node is kept else its ablation value

(the ablation values are the corrupt run's features and errors, as above), so with every unit
kept x is unchanged. A circuit holds heads / MLPs or SAE units, not both. With m = the metric
averaged over pairs:

    faithfulness = (m_circuit - m_empty) / (m_full - m_empty)

m_full: nothing ablated (the clean run); m_empty: everything ablated. A circuit's row is
computed once per distinct kept set, so the full set is exactly 1 and the empty set exactly 0.
Every circuit of a call (and every k of a curve) runs in batched forwards: rows = circuits x
pairs, as many per forward as the memory budget allows.

>>> spec = CircuitSpec(parse_components("L0H1,L1H0,MLP1"), ablation="mean")   # doctest: +SKIP
>>> faithfulness(model, prompts, spec).faithfulness                          # doctest: +SKIP
0.83
>>> faithfulness_curve(model, prompts, rank_components(head_result)).to_dataframe()  # doctest: +SKIP
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import pandas as pd
import torch
from torch import Tensor

from metrics import Metric, get_metric

from patching.model import hooks
from patching.model.memory_budget import memory_budget, placed_devices
from patching.core.prompts import PromptSet
from patching.core.nodes import ROLES, Node, head_label, parse_node
from patching.core.results import PatchResult, write_csv
from patching.methods.pair import CachedPair
from patching.methods.share import Share
from patching.model.runner import Edit
from patching.core.spec import check_whole

ABLATIONS = ("mean", "resample", "zero", "corrupt")
RANK_KINDS = ("head_out", "mlp_out", "attn_out", "feature")    # results that rank components
REDUCTIONS = ("sum", "max")


# -- components -----------------------------------------------------------------------------------
COMPONENT_KINDS = ROLES["component"][0]
SAE_UNITS = ("feature", "error")             # a feature circuit's components


class Component(Node):
    """A circuit component: a `Node` of kind 'head' (layer, head), 'mlp' (layer), 'attn'
    (layer: every head), 'feature' (layer, the SAE feature's index in `head`) or 'error' (layer:
    the SAE's error node), built layer first. Equal to the same Node however it was spelled."""

    def __init__(self, layer: int, kind: str, head: int | None = None):
        if kind not in COMPONENT_KINDS:
            raise ValueError(f"component kind must be one of {', '.join(COMPONENT_KINDS)}, not {kind!r}")
        indexed = kind in ("head", "feature")
        if (head is None) == indexed:
            raise ValueError(f"a {kind} component {'needs' if indexed else 'takes no'} "
                             + ("feature index" if kind == "feature" else "head"))
        super().__init__(kind, layer, head)

    def __repr__(self) -> str:
        return f"Component(layer={self.layer!r}, kind={self.kind!r}, head={self.head!r})"


def parse_component(text: str | Node) -> Component:
    """'L1H4' -> a head, 'MLP2' -> an MLP, 'ATTN0' -> every head of layer 0 (case-insensitive;
    'head:1.4' and 'mlp:2' read too: `patching.core.nodes`).

    >>> parse_component("L1H4"), parse_component("mlp2").name
    (Component(layer=1, kind='head', head=4), 'MLP2')
    """
    if isinstance(text, Component):
        return text
    node = parse_node(text, "component")
    return Component(node.layer, node.kind, node.head)


def parse_components(text: str | Iterable[str | Node] | None) -> tuple[Component, ...]:
    """A comma / space separated list (or an iterable) -> components, duplicates dropped, in order.

    >>> [c.name for c in parse_components("L0H1, MLP0 L0H1")]
    ['L0H1', 'MLP0']
    """
    if text is None:
        return ()
    items = re.split(r"[,\s;]+", text.strip()) if isinstance(text, str) else list(text)
    out: list[Component] = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        c = parse_component(item)
        if c not in out:
            out.append(c)
    return tuple(out)


def format_components(components: Iterable[Node]) -> str:
    """Components -> 'L0H1,MLP0' (what `parse_components` reads back).

    >>> format_components(parse_components("L0H1 MLP0"))
    'L0H1,MLP0'
    """
    return ",".join(parse_component(c).name for c in components)


def all_components(model) -> tuple[Component, ...]:
    """Every head and MLP of the model, layer by layer (heads first)."""
    return tuple(c for l in range(model.n_layers)
                 for c in [Component(l, "head", h) for h in range(model.n_heads)] + [Component(l, "mlp")])


def is_feature_circuit(components: Iterable[Node]) -> bool:
    """True when the components are SAE units (features, error nodes); ValueError when heads or
    MLPs are mixed with them.

    >>> is_feature_circuit(parse_components("L1F12, L2ERR")), is_feature_circuit(parse_components("L0H1"))
    (True, False)
    """
    kinds = {c.kind in SAE_UNITS for c in components}
    if len(kinds) > 1:
        raise ValueError("a circuit holds heads / MLPs (L0H1, MLP0, ATTN0) or SAE units (L1F12, L1ERR), not both: "
                         "in a feature circuit every head and MLP runs and the SAE units not kept are ablated")
    return kinds == {True}


def feature_components(saes: dict) -> tuple[Component, ...]:
    """Every SAE feature and error node, layer by layer (`saes`: layer -> Sae, `model_saes`).

    >>> from types import SimpleNamespace
    >>> [c.name for c in feature_components({0: SimpleNamespace(d_sae=2)})]
    ['L0F0', 'L0F1', 'L0ERR']
    """
    return tuple(c for layer in sorted(saes) for c in
                 [Component(layer, "feature", i) for i in range(saes[layer].d_sae)] + [Component(layer, "error")])


def check_components(model, components: Iterable[Component], saes: dict | None = None) -> None:
    """ValueError naming the first component the model (or its SAEs, `saes`: layer -> Sae, for
    features and error nodes) does not have and the valid range."""
    L, H = model.n_layers, model.n_heads
    for c in components:
        if not 0 <= c.layer < L:
            raise ValueError(f"component {c.name}: layer {c.layer} out of range; this model has layers 0-{L - 1}")
        if c.kind == "head" and not 0 <= c.head < H:
            raise ValueError(f"component {c.name}: head {c.head} out of range; this model has heads 0-{H - 1} "
                             f"per layer")
        if c.kind in SAE_UNITS and saes is not None:
            if c.layer not in saes:
                raise ValueError(f"component {c.name}: no SAE on layer {c.layer}'s block input (SAEs on layers "
                                 f"{', '.join(map(str, sorted(saes))) or 'none'})")
            if c.kind == "feature" and not 0 <= c.head < saes[c.layer].d_sae:
                raise ValueError(f"component {c.name}: feature {c.head} out of range; the SAE has features "
                                 f"0-{saes[c.layer].d_sae - 1} (L{c.layer}ERR is its error node)")


# -- the spec -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CircuitSpec:
    """The kept components, how the others are ablated, the resample seed, and for a feature
    circuit the SAE folder (`saes`; None = the model's own)."""
    components: tuple[Component, ...] = ()
    ablation: str = "mean"
    seed: int = 0
    saes: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "components", parse_components(self.components))
        if self.ablation not in ABLATIONS:
            raise ValueError(f"unknown ablation {self.ablation!r}; choose one of {', '.join(ABLATIONS)}")
        check_whole(self.seed, "seed")
        is_feature_circuit(self.components)

    @property
    def features(self) -> bool:
        """Is this a feature circuit (SAE units kept, the other units ablated)?"""
        return is_feature_circuit(self.components)

    def validate(self, model) -> "CircuitSpec":
        check_components(model, self.components, _saes_for(model, self.components, self.saes))
        return self

    def to_dict(self) -> dict:
        d = {"components": format_components(self.components), "ablation": self.ablation, "seed": self.seed}
        return {**d, "saes": self.saes} if self.saes else d

    @classmethod
    def from_dict(cls, d: dict) -> "CircuitSpec":
        return cls(parse_components(d.get("components", "")), d.get("ablation", "mean"), int(d.get("seed", 0)),
                   d.get("saes") or None)


def _saes_for(model, components: Iterable[Node], source: str | None) -> dict | None:
    """The model's SAEs (layer -> Sae) when the components are SAE units, else None."""
    if not is_feature_circuit(components):
        return None
    from patching.model.sae import model_saes
    return model_saes(model, source)


def _node_ids(model, components: Iterable[Component], units: int = 0) -> frozenset[int]:
    """Heads are nodes l * H + h, MLPs L * H + l; ATTN{l} is every head of layer l; SAE units
    (`units` = d_sae + 1 per layer) follow: feature i of layer l is L * (H + 1) + l * units + i,
    its error node the layer's last unit."""
    L, H = model.n_layers, model.n_heads
    ids: set[int] = set()
    for c in components:
        if c.kind == "head":
            ids.add(c.layer * H + c.head)
        elif c.kind == "attn":
            ids.update(c.layer * H + h for h in range(H))
        elif c.kind in SAE_UNITS:
            ids.add(L * (H + 1) + c.layer * units + (c.head if c.kind == "feature" else units - 1))
        else:
            ids.add(L * H + c.layer)
    return frozenset(ids)


# -- results --------------------------------------------------------------------------------------------
def _faith(m: float, m_full: float, m_empty: float) -> float:
    gap = m_full - m_empty
    return (m - m_empty) / gap if abs(gap) > 1e-12 else float("nan")


class _FullAndEmpty:
    """m_full / m_empty: the means of a result's `full` and `empty` per-pair tensors."""

    @property
    def m_full(self) -> float:
        return float(self.full.mean())

    @property
    def m_empty(self) -> float:
        return float(self.empty.mean())


@dataclass(frozen=True, eq=False)
class CircuitResult(_FullAndEmpty):
    """One circuit's metric (per pair and mean) next to the full and empty (all-ablated) runs."""
    spec: CircuitSpec
    per_pair: Tensor = field(repr=False)        # [n_pairs] metric with the circuit only
    full: Tensor = field(repr=False)            # [n_pairs] nothing ablated (the clean run)
    empty: Tensor = field(repr=False)           # [n_pairs] everything ablated
    metric: str = "logit_diff"
    model_name: str = ""
    seconds: float = 0.0

    @property
    def m_circuit(self) -> float:
        return float(self.per_pair.mean())

    @property
    def faithfulness(self) -> float:
        """(m_circuit - m_empty) / (m_full - m_empty); NaN when full and empty agree."""
        return _faith(self.m_circuit, self.m_full, self.m_empty)

    def to_dict(self) -> dict:
        return {**self.spec.to_dict(), "n_components": len(self.spec.components), "metric": self.metric,
                "m_circuit": self.m_circuit, "m_full": self.m_full, "m_empty": self.m_empty,
                "faithfulness": self.faithfulness, "n_pairs": int(self.per_pair.numel()),
                "model": self.model_name, "seconds": self.seconds}


@dataclass(frozen=True, eq=False)
class CurveResult(_FullAndEmpty):
    """Faithfulness as components are added in order: k = 0 (empty) .. len(components)."""
    components: tuple[Component, ...]
    ks: tuple[int, ...]
    per_pair: Tensor = field(repr=False)        # [len(ks), n_pairs]
    full: Tensor = field(repr=False)            # [n_pairs]
    empty: Tensor = field(repr=False)           # [n_pairs]
    ablation: str = "mean"
    seed: int = 0
    metric: str = "logit_diff"
    effects: tuple[float, ...] | None = None    # the ranking's effect of each component, when known
    model_name: str = ""
    seconds: float = 0.0
    keep: tuple[Component, ...] = ()            # in every circuit of the curve

    @property
    def values(self) -> Tensor:
        """Mean metric per k, [len(ks)]."""
        return self.per_pair.mean(-1)

    @property
    def faithfulness(self) -> list[float]:
        return [_faith(float(v), self.m_full, self.m_empty) for v in self.values]

    def to_dataframe(self) -> pd.DataFrame:
        """One row per k: k, added (the k-th component), circuit (the first k), effect, metric,
        faithfulness, then the run's m_full, m_empty, ablation, seed, metric name."""
        rows = []
        for i, (k, v, f) in enumerate(zip(self.ks, self.values.tolist(), self.faithfulness)):
            rows.append({"k": k, "added": self.components[k - 1].name if k else "",
                         "circuit": format_components(self.keep + self.components[:k]),
                         "effect": (self.effects[k - 1] if self.effects and k else None),
                         "value": v, "faithfulness": f, "m_full": self.m_full, "m_empty": self.m_empty,
                         "ablation": self.ablation, "seed": self.seed, "metric": self.metric})
        return pd.DataFrame(rows)

    def to_csv(self, path_or_buf=None) -> str | None:
        """The curve as CSV (formula-neutralised cells); the text when no path."""
        return write_csv(self.to_dataframe(), path_or_buf)

    def to_json(self) -> dict:
        return {"components": format_components(self.components), "ks": list(self.ks),
                "per_pair": self.per_pair.tolist(), "full": self.full.tolist(), "empty": self.empty.tolist(),
                "ablation": self.ablation, "seed": self.seed, "metric": self.metric,
                "effects": list(self.effects) if self.effects is not None else None,
                "model_name": self.model_name, "seconds": self.seconds, "keep": format_components(self.keep)}

    @classmethod
    def from_json(cls, d: dict) -> "CurveResult":
        f64 = lambda x: torch.tensor(x, dtype=torch.float64)   # noqa: E731
        return cls(parse_components(d["components"]), tuple(d["ks"]), f64(d["per_pair"]).reshape(len(d["ks"]), -1),
                   f64(d["full"]), f64(d["empty"]), d["ablation"], d["seed"], d["metric"],
                   tuple(d["effects"]) if d.get("effects") is not None else None, d.get("model_name", ""),
                   d.get("seconds", 0.0), parse_components(d.get("keep", "")))


# -- the ablated forward ---------------------------------------------------------------------------------
@dataclass
class _Ablation:
    """Per layer, what an ablated head's z / MLP's output becomes: src_z[l][src[row]] and
    src_mlp[l][src[row]] (src_z [S, T, H, dh], src_mlp [S, T, d]; S = 1 for mean and zero);
    for a feature circuit, per layer with an SAE, (sae, features [S, T, d_sae], errors [S, T, d])."""
    src_z: list
    src_mlp: list
    src: Tensor          # [n_pairs] which source row each pair reads
    sae: dict | None = None

    @property
    def units(self) -> int:
        """SAE units per layer (d_sae + 1; 0 without SAEs)."""
        return next(iter(self.sae.values()))[0].d_sae + 1 if self.sae else 0


def _sae_sources(saes: dict, resid_pre: list, ablation: str, abl: _Ablation) -> _Ablation:
    """abl with each SAE layer's ablation values from the corrupt run's block inputs [P, T, d]."""
    out = {}
    for layer, sae in saes.items():
        x = resid_pre[layer]
        f = sae.encode(x)
        e = x - sae.decode(f)
        if ablation == "mean":
            f, e = f.mean(0, keepdim=True), e.mean(0, keepdim=True)
        elif ablation == "zero":
            f, e = torch.zeros_like(f[:1]), torch.zeros_like(e[:1])
        out[layer] = (sae, f, e)
    abl.sae = out
    return abl


def _splice(sae, x: Tensor, keep: Tensor, f_src: Tensor, e_src: Tensor) -> Tensor:
    """x [B, T, d] through the SAE with the units not kept (keep [B, d_sae + 1], the error last)
    replaced by f_src [B, T, d_sae] / e_src [B, T, d]: decode(f') + e'."""
    f = sae.encode(x)
    e = x - sae.decode(f)
    f = torch.where(keep[:, None, :-1], f, f_src.to(f.dtype))
    e = torch.where(keep[:, None, -1:], e, e_src.to(e.dtype))
    return sae.decode(f) + e


def _sae_keep(keep: Tensor, abl: _Ablation, layer: int, n_layers: int, n_heads: int) -> Tensor | None:
    """keep [B, nodes] -> the layer's SAE units [B, d_sae + 1], or None when it has no SAE."""
    if not abl.sae or layer not in abl.sae:
        return None
    lo = n_layers * (n_heads + 1) + layer * abl.units
    return keep[:, lo:lo + abl.units]


def _resample_sources(n_pairs: int, seed: int, device) -> Tensor:
    """Pair i reads pair (i + s_i) mod n, s_i in 1..n-1 (another pair), seeded; n = 1: itself."""
    if n_pairs < 2:
        return torch.zeros(n_pairs, dtype=torch.long, device=device)
    g = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, n_pairs, (n_pairs,), generator=g)
    return ((torch.arange(n_pairs) + shift) % n_pairs).to(device)


def _ablation_values(z: list, mlp: list, ablation: str, seed: int) -> _Ablation:
    """From the corrupt run's z [P, T, H, dh] and mlp_out [P, T, d] per layer."""
    n, device = z[0].shape[0], z[0].device
    if ablation == "mean":
        return _Ablation([t.mean(0, keepdim=True) for t in z], [t.mean(0, keepdim=True) for t in mlp],
                         torch.zeros(n, dtype=torch.long, device=device))
    if ablation == "zero":
        return _Ablation([torch.zeros_like(t[:1]) for t in z], [torch.zeros_like(t[:1]) for t in mlp],
                         torch.zeros(n, dtype=torch.long, device=device))
    src = torch.arange(n, device=device) if ablation == "corrupt" else _resample_sources(n, seed, device)
    return _Ablation(list(z), list(mlp), src)


class _AblationEdit(Edit):
    """The clean forward with ablations: per row, each head's z and each MLP's output replaced
    where keep [B, L*H + L] (heads l*H+h, then MLPs) is False by its source activation."""

    def __init__(self, keep: Tensor, abl: _Ablation, src: Tensor, n_layers: int, n_heads: int):
        self.keep, self.abl, self.src, self.n_layers, self.n_heads = keep, abl, src, n_layers, n_heads

    def resid_pre(self, layer, x):                                                # x [B, T, d]
        keep_u = _sae_keep(self.keep, self.abl, layer, self.n_layers, self.n_heads)
        if keep_u is None or bool(keep_u.all()):
            return x
        sae, f_src, e_src = self.abl.sae[layer]
        return _splice(sae, x, keep_u, f_src[self.src], e_src[self.src])

    def z(self, layer, pattern, z):                                               # z [B, T, H, dh]
        keep_h = self.keep[:, layer * self.n_heads:(layer + 1) * self.n_heads]   # [B, H]
        if bool(keep_h.all()):
            return z
        return torch.where(keep_h[:, None, :, None], z, self.abl.src_z[layer][self.src].to(z.dtype))

    def mlp_out(self, layer, out):                                                # out [B, T, d]
        keep_m = self.keep[:, self.n_layers * self.n_heads + layer]               # [B]
        if bool(keep_m.all()):
            return out
        return torch.where(keep_m[:, None, None], out, self.abl.src_mlp[layer][self.src].to(out.dtype))


def _runner_forward(runner, tokens: Tensor, pair: Tensor, keep: Tensor, abl: _Ablation, n_heads: int) -> Tensor:
    """The clean forward with ablations. tokens [P, T]; pair [B]: each row's pair; keep [B, L*H + L]
    bool (heads l*H+h, then MLPs). Returns the last position's logits [B, vocab]."""
    x_tokens = tokens[pair]
    positions = torch.arange(x_tokens.shape[1], device=x_tokens.device)
    edit = _AblationEdit(keep, abl, abl.src[pair], runner.arch.n_layers, n_heads)
    return runner.forward(runner.arch.embed(x_tokens, positions), rope=runner.rope_for(x_tokens), edit=edit)


def _hook_forward(bridge, tokens: Tensor, pair: Tensor, keep: Tensor, abl: _Ablation, n_layers: int,
                  n_heads: int) -> Tensor:
    """The same through TransformerLens hooks (hook_z, hook_mlp_out), for models without a runner."""
    src = abl.src[pair]
    fwd_hooks = []
    for layer in range(n_layers):
        keep_h = keep[:, layer * n_heads:(layer + 1) * n_heads]
        keep_m = keep[:, n_layers * n_heads + layer]

        def z_hook(act, hook, keep_h=keep_h, layer=layer):      # [B, T, H, dh]
            return torch.where(keep_h[:, None, :, None].to(act.device), act, abl.src_z[layer][src].to(act))

        def mlp_hook(act, hook, keep_m=keep_m, layer=layer):    # [B, T, d]
            return torch.where(keep_m[:, None, None].to(act.device), act, abl.src_mlp[layer][src].to(act))

        keep_u = _sae_keep(keep, abl, layer, n_layers, n_heads)
        if keep_u is not None and not bool(keep_u.all()):
            sae, f_src, e_src = abl.sae[layer]
            fwd_hooks.append((hooks.resid_pre(layer), lambda act, hook, sae=sae, k=keep_u, f=f_src, e=e_src:
                              _splice(sae, act, k.to(act.device), f[src].to(act), e[src].to(act))))
        if not bool(keep_h.all()):
            fwd_hooks.append((hooks.z(layer), z_hook))
        if not bool(keep_m.all()):
            fwd_hooks.append((hooks.mlp_out(layer), mlp_hook))
    return bridge.run_with_hooks(tokens[pair], fwd_hooks=fwd_hooks)[:, -1]


def _rows_per_forward(model, n_pos: int, max_memory_mb: float | None, units: int = 0) -> int:
    """Rows one ablated forward may hold; `units` = SAE units per layer of a feature circuit (its
    splice holds the features twice and a mask row)."""
    d, d_mlp, H = model.cfg.d_model, model.d_mlp, model.n_heads
    floats = n_pos * (10 * d + 3 * d_mlp + 2 * H * n_pos + 3 * units) + model.cfg.d_vocab
    budget = memory_budget(model.device, max_memory_mb or None,     # the devices' free memory
                           also=placed_devices(getattr(model, "device_map", None)))
    return max(1, int(budget // (4 * floats)))


@dataclass
class _Context:
    model: object
    pair: CachedPair             # the clean run (its log-probabilities) and the corrupt run's logits
    abl: _Ablation
    max_memory_mb: float | None

    @property
    def n_nodes(self) -> int:
        """Heads, MLPs, then every SAE unit (a feature circuit)."""
        L = self.model.n_layers
        return L * self.model.n_heads + L + L * self.abl.units

    @property
    def always(self) -> frozenset[int]:
        """Nodes in every circuit: a feature circuit keeps every head and MLP."""
        return frozenset(range(self.model.n_layers * (self.model.n_heads + 1))) if self.abl.sae else frozenset()

    def ids(self, components) -> frozenset[int]:
        """A kept set of components as node ids (with `always`)."""
        return _node_ids(self.model, components, self.abl.units) | self.always

    @property
    def metric(self) -> Metric:
        return self.pair.metric

    def measure(self, masks: list[frozenset[int]], share: Share | None = None,
                on_progress: Callable[[int, int], None] | None = None) -> list[Tensor | None]:
        """Metric per pair [n_pairs] for each kept node set, batched (rows = masks x pairs); with
        `share`, only that shard's batches (None for the other masks)."""
        model, prompts = self.model, self.pair.prompts
        L, H, P = model.n_layers, model.n_heads, prompts.n_pairs
        n_nodes = self.n_nodes
        device = prompts.clean_tokens.device
        per = max(1, _rows_per_forward(model, prompts.n_pos, self.max_memory_mb, self.abl.units) // P)
        batches = list(range(0, len(masks), per))
        mine = range(len(batches)) if share is None else share.mine([len(masks[lo:lo + per]) for lo in batches])
        out: list[Tensor | None] = [None] * len(masks)
        for done, b in enumerate(mine):
            lo = batches[b]
            part = masks[lo:lo + per]
            keep = torch.zeros(len(part), n_nodes, dtype=torch.bool, device=device)
            for i, m in enumerate(part):
                if m:
                    keep[i, list(m)] = True
            keep = keep.repeat_interleave(P, 0)                                  # [B, nodes], mask-major
            pair = torch.arange(P, device=device).repeat(len(part))
            with torch.inference_mode():
                if model.runner is not None:
                    logits = _runner_forward(model.runner, prompts.clean_tokens, pair, keep, self.abl, H)
                else:
                    logits = _hook_forward(model.bridge, prompts.clean_tokens, pair, keep, self.abl, L, H)
                values = self.pair.measure(logits, pair).view(len(part), P)
            out[lo:lo + len(part)] = list(values)
            if on_progress is not None:
                on_progress(done + 1, len(mine))
        return out


def _context(model, prompts: PromptSet, ablation: str, seed: int, metric, max_memory_mb,
             saes: dict | None = None) -> _Context:
    """The cached pair and the ablation values (of heads and MLPs, and of SAE units with `saes`)."""
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}")
    metric = get_metric(metric)
    L = model.n_layers
    with torch.inference_mode():
        if model.runner is not None:
            pair = CachedPair.run(model.runner, prompts, metric)
            z = [c.z for c in pair.corrupt.layers]
            mlp = [c.mlp_out for c in pair.corrupt.layers]
            resid = [c.resid_pre for c in pair.corrupt.layers]
        else:
            names = {hooks.z(l) for l in range(L)} | {hooks.mlp_out(l) for l in range(L)} | \
                {hooks.resid_pre(l) for l in range(L)}
            clean_logits = model.bridge(prompts.clean_tokens)[:, -1]
            corrupt_logits, cache = model.bridge.run_with_cache(prompts.corrupt_tokens,
                                                                names_filter=lambda n: n in names)
            pair = CachedPair.from_logits(prompts, clean_logits, corrupt_logits[:, -1], metric)
            z = [cache[hooks.z(l)] for l in range(L)]
            mlp = [cache[hooks.mlp_out(l)] for l in range(L)]
            resid = [cache[hooks.resid_pre(l)] for l in range(L)]
        abl = _ablation_values(z, mlp, ablation, seed)
        if saes:
            abl = _sae_sources(saes, resid, ablation, abl)
    return _Context(model, pair, abl, max_memory_mb)


def _evaluate(ctx: _Context, circuits: list[frozenset[int]], share: Share | None = None,
              on_progress=None) -> tuple[list[Tensor | None], Tensor | None, Tensor | None]:
    """Metric per pair for each circuit, and for the full and empty sets; each distinct node set
    is computed once (the full set's row *is* m_full). With `share`, None for another shard's."""
    full = frozenset(range(ctx.n_nodes))
    empty = ctx.always
    unique = list(dict.fromkeys([full, empty, *circuits]))
    values = dict(zip(unique, ctx.measure(unique, share, on_progress)))
    return [values[c] for c in circuits], values[full], values[empty]


def faithfulness(model, prompts: PromptSet, spec: CircuitSpec, metric: Metric | Callable | str = "logit_diff",
                 *, max_memory_mb: float | None = None) -> CircuitResult:
    """The circuit's metric with every other head and MLP ablated (a feature circuit: every other
    SAE unit, heads and MLPs all running), relative to the full model.

    >>> r = faithfulness(model, prompts, CircuitSpec(all_components(model)))   # doctest: +SKIP
    >>> r.faithfulness                                                        # doctest: +SKIP
    1.0
    """
    start = time.perf_counter()
    saes = _saes_for(model, spec.components, spec.saes)
    check_components(model, spec.components, saes)
    ctx = _context(model, prompts, spec.ablation, spec.seed, metric, max_memory_mb, saes)
    (values,), full, empty = _evaluate(ctx, [ctx.ids(spec.components)])
    return CircuitResult(spec, values, full, empty, ctx.metric.name, model.name, time.perf_counter() - start)


def faithfulness_curve(model, prompts: PromptSet, ranked: Iterable[Component | str] | Iterable[tuple],
                       *, ablation: str = "mean", seed: int = 0, metric: Metric | Callable | str = "logit_diff",
                       ks: Iterable[int] | None = None, keep: Iterable[Component | str] = (),
                       max_memory_mb: float | None = None, saes: str | None = None) -> CurveResult:
    """Faithfulness of the first k components of `ranked`, for k = 0..N (or the given ks).

    `ranked`: components (or names), or (component, effect) pairs as `rank_components` returns;
    `keep`: components in every circuit of the curve (e.g. every MLP, to rank heads alone);
    k = 0 is then `keep` alone. All circuits run in shared batched forwards. SAE units (features,
    error nodes) make a feature circuit (`saes`: their folder; None = the model's own).

    >>> curve = faithfulness_curve(model, prompts, ["L0H1", "MLP0"])   # doctest: +SKIP
    >>> curve.faithfulness[0], curve.ks                               # doctest: +SKIP
    (0.0, (0, 1, 2))
    """
    spec = CurveSpec.of(ranked, ablation=ablation, seed=seed, metric=metric if isinstance(metric, str) else "",
                        ks=ks, keep=keep, saes=saes)
    return _curve(model, prompts, spec, metric, max_memory_mb, None)[0]


@dataclass(frozen=True)
class CurveSpec:
    """A faithfulness curve as a value (what a shard of it carries): the ranked components (and
    their effects), the ks, the kept set, the ablation, the metric (a registry name; "" when the
    caller passes a metric object).

    >>> CurveSpec.of([("L0H1", 0.5), ("MLP0", 0.2)]).to_dict()["components"]
    'L0H1,MLP0'
    """
    components: tuple[Component, ...]
    effects: tuple[float, ...] | None = None
    ks: tuple[int, ...] | None = None             # None: 0..len(components)
    keep: tuple[Component, ...] = ()
    ablation: str = "mean"
    seed: int = 0
    metric: str = "logit_diff"
    model: str = "default"
    prepend_bos: bool = True
    saes: str | None = None                       # a feature circuit's SAE folder (None: the model's own)

    kind = "curve"

    def __post_init__(self):
        components = parse_components(self.components)
        if len(components) != len(self.components):
            raise ValueError("the ranked components contain duplicates; give each component once")
        object.__setattr__(self, "components", components)
        object.__setattr__(self, "keep", parse_components(self.keep))
        if self.ablation not in ABLATIONS:
            raise ValueError(f"unknown ablation {self.ablation!r}; choose one of {', '.join(ABLATIONS)}")
        check_whole(self.seed, "seed")
        if self.effects is not None:
            if len(self.effects) != len(components):
                raise ValueError(f"{len(self.effects)} effects for {len(components)} components")
            object.__setattr__(self, "effects", tuple(float(e) for e in self.effects))
        ks = tuple(range(len(components) + 1)) if self.ks is None else tuple(int(k) for k in self.ks)
        bad = [k for k in ks if not 0 <= k <= len(components)]
        if bad:
            raise ValueError(f"k {bad} out of range; choose k from 0 to {len(components)}")
        object.__setattr__(self, "ks", ks)

    @classmethod
    def of(cls, ranked, *, ks: Iterable[int] | None = None, **options) -> "CurveSpec":
        """From components (or names), or (component, effect) pairs as `rank_components` returns."""
        items = list(ranked)
        effects = None
        if items and isinstance(items[0], tuple):
            effects = tuple(float(e) for _, e in items)
            items = [c for c, _ in items]
        return cls(tuple(parse_component(c) for c in items), effects, tuple(ks) if ks is not None else None,
                   **options)

    def to_dict(self) -> dict:
        return {"kind": "curve", "components": format_components(self.components),
                "effects": list(self.effects) if self.effects is not None else None, "ks": list(self.ks),
                "keep": format_components(self.keep), "ablation": self.ablation, "seed": self.seed,
                "metric": self.metric, "model": self.model, "prepend_bos": self.prepend_bos, "saes": self.saes}

    @classmethod
    def from_dict(cls, d: dict) -> "CurveSpec":
        d = dict(d)
        if d.pop("kind", "curve") != "curve":
            raise ValueError("not a curve spec: kind must be 'curve'")
        known = {"components", "effects", "ks", "keep", "ablation", "seed", "metric", "model", "prepend_bos", "saes"}
        if set(d) - known:
            raise ValueError(f"unknown CurveSpec fields {sorted(set(d) - known)}; known: {sorted(known)}")
        d["components"] = parse_components(d.get("components", ""))
        d["keep"] = parse_components(d.get("keep", ""))
        for key in ("effects", "ks"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


def curve_share(model, prompts: PromptSet, spec: CurveSpec, share: Share | None, *,
                max_memory_mb: float | None = None, on_progress: Callable[[int, int], None] | None = None
                ) -> tuple[CurveResult, Tensor | None]:
    """(curve, written): the curve `spec` names; with `share`, only that shard's batches of kept
    sets (the others' rows NaN) and `written` [len(ks) + 2, pairs] (bool: the ks' rows, then full
    and empty) marking what it computed.

    >>> curve, written = curve_share(model, prompts, CurveSpec.of(["L0H1", "MLP0"]), Share(0, 1))
    >>> written.all().item(), curve.ks
    (True, (0, 1, 2))
    """
    return _curve(model, prompts, spec, spec.metric, max_memory_mb, share, on_progress)


def _curve(model, prompts: PromptSet, spec: CurveSpec, metric, max_memory_mb, share: Share | None,
           on_progress=None) -> tuple[CurveResult, Tensor | None]:
    start = time.perf_counter()
    sae_set = _saes_for(model, spec.components + spec.keep, spec.saes)
    check_components(model, spec.components + spec.keep, sae_set)
    ctx = _context(model, prompts, spec.ablation, spec.seed, metric, max_memory_mb, sae_set)
    circuits = [ctx.ids(spec.keep + spec.components[:k]) for k in spec.ks]
    values, full, empty = _evaluate(ctx, circuits, share, on_progress)
    rows = [*values, full, empty]
    nan = torch.full((prompts.n_pairs,), float("nan"), dtype=torch.float64)
    rows = [nan if r is None else r for r in rows]
    written = None
    if share is not None:
        written = torch.tensor([r is not nan for r in rows])[:, None].expand(len(rows), prompts.n_pairs).clone()
    result = CurveResult(spec.components, spec.ks, torch.stack(rows[:-2]), rows[-2], rows[-1], spec.ablation,
                         spec.seed, ctx.metric.name, spec.effects, model.name, time.perf_counter() - start, spec.keep)
    return result, written


# -- ranking components by a sweep's effect -----------------------------------------------------------
def component_effects(result: PatchResult, reduce: str = "sum") -> dict[Component, float]:
    """Each component's effect in a head_out / mlp_out (or attn_out) result: mean value minus the
    base run's metric (the corrupt run when denoising, the clean run when noising).

    Per-position results are reduced over positions: `sum` adds the signed effects (the first-
    order effect of patching the component at every position), `max` keeps the one with the
    largest |effect|. mlp_out is always per position; attn_out gives ATTN{l} components; a
    `feature` result gives SAE features L{l}F{i} and error nodes L{l}ERR (its last unit).

    >>> component_effects(head_out_result)[Component(0, "head", 1)]      # doctest: +SKIP
    0.42
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {', '.join(REDUCTIONS)}, not {reduce!r}")
    kind = result.spec.kind
    if kind not in RANK_KINDS:
        raise ValueError(f"rank components from a {', '.join(RANK_KINDS[:-1])} or {RANK_KINDS[-1]} result, "
                         f"not {kind!r}")
    base = result.base_value
    effect = result.values - base
    axes = list(result.axes)
    if "pos" in axes:
        d = axes.index("pos")
        e = effect.nan_to_num(0.0)
        if reduce == "sum":
            effect = e.sum(d)
        else:
            idx = e.abs().argmax(d, keepdim=True)
            effect = e.gather(d, idx).squeeze(d)
        axes.pop(d)
    out: dict[Component, float] = {}
    for li, layer in enumerate(result.coords["layer"]):
        if kind == "head_out":
            for hi, head in enumerate(result.coords["head"]):
                out[Component(layer, "head", head)] = float(effect[li, hi])
        elif kind == "feature":
            units = result.coords["feature"]
            for ui, unit in enumerate(units):
                c = Component(layer, "error") if unit == units[-1] else Component(layer, "feature", unit)
                out[c] = float(effect[li, ui])
        else:
            out[Component(layer, "mlp" if kind == "mlp_out" else "attn")] = float(effect[li])
    return out


def rank_components(*results: PatchResult, reduce: str = "sum") -> list[tuple[Component, float]]:
    """(component, effect) by |effect|, largest first, from one or more results (e.g. a head_out
    and an mlp_out sweep, or attribution estimates of them); ties keep layer order.

    >>> rank_components(heads, mlps)[:2]                                  # doctest: +SKIP
    [(Component(layer=1, kind='head', head=0), 1.3), (Component(layer=0, kind='mlp', head=None), -0.9)]
    """
    merged: dict[Component, float] = {}
    for r in results:
        merged.update(component_effects(r, reduce))
    return sorted(merged.items(), key=lambda ce: -abs(ce[1]) if ce[1] == ce[1] else 0.0)


def top_components(*results: PatchResult, k: int = 10, reduce: str = "sum") -> tuple[Component, ...]:
    """The k components with the largest |effect| (see `rank_components`)."""
    k = check_whole(k, "k", 0)
    return tuple(c for c, _ in rank_components(*results, reduce=reduce)[:k])


# -- EAP edge graph ---------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class EdgeGraph:
    """Nodes and edges of an EAP score table above a threshold, with a layered layout.

    nodes: node, layer, x, y, kind ('embed', 'head', 'kv', 'mlp', 'logits');
    edges: upstream, downstream, via ('q', 'k', 'v', 'mlp' or 'logits': the input it enters),
    score, abs_score, normalized, x0, y0, x1, y1.
    Layout: x = layer (heads at x = l, MLPs at x = l + 0.5, the embedding at -1, the logits
    at n_layers), y = head (MLPs and logits at y = n_heads, the embedding at y = -1).
    """
    nodes: pd.DataFrame
    edges: pd.DataFrame
    threshold: float
    by: str
    n_layers: int
    n_heads: int
    n_edges_total: int


def _graph_node(label: str, n_heads: int, n_kv: int) -> tuple[str, str, str, int | None, int | None]:
    """An EdgeScores label -> (node name, input it enters, node kind, layer, head)."""
    node = parse_node(label)
    if node.kind in ("embed", "logits"):
        return label, label, label, None, None
    if node.kind == "mlp":
        return node.name, "mlp", "mlp", node.layer, None
    if node.kind == "head":
        return node.name, "out", "head", node.layer, node.head
    if node.kind in ("k", "v") and n_kv != n_heads:     # grouped-query: k / v belong to a key/value head
        return f"L{node.layer}KV{node.head}", node.kind, "kv", node.layer, node.head
    return head_label(node.layer, node.head), node.kind, "head", node.layer, node.head


def edge_graph(edges, threshold: float = 0.0, *, by: str = "abs", top: int | None = None,
               n_heads: int | None = None, n_kv_heads: int | None = None) -> EdgeGraph:
    """The edges of an `EdgeScores` whose |score| (by='abs') or |normalized| score (by='normalized':
    the share of the clean - corrupt gap) is >= threshold, at most `top` of them (largest first),
    and the nodes they touch, laid out by layer and head.

    >>> g = edge_graph(edge_attribution(model, prompts), threshold=0.05)     # doctest: +SKIP
    >>> g.edges[["upstream", "downstream", "score"]].head(3)               # doctest: +SKIP
    """
    if by not in ("abs", "normalized"):
        raise ValueError(f"by must be 'abs' or 'normalized', not {by!r}")
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number, not {threshold!r}") from None
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, not {threshold!r}")
    df = edges.to_dataframe()
    heads = [int(u.split(".")[1]) for u in edges.upstream if u.startswith("head:")]
    layers = [int(u.split(":")[1].split(".")[0]) for u in edges.upstream if ":" in u]
    H = n_heads or (max(heads) + 1 if heads else 1)
    KV = n_kv_heads or len({d for d in edges.downstream if d.startswith("k:0.")}) or H
    L = max(layers) + 1 if layers else 0
    key = df["abs_score"] if by == "abs" else df["normalized"].abs()
    total = len(df)
    df = df.assign(_key=key.fillna(0))                  # before filtering: an empty frame would take key's index
    df = df[df["_key"] >= threshold].sort_values("_key", ascending=False)
    if top is not None:
        df = df.head(int(top))

    def place(kind, layer, head):
        if kind == "embed":
            return -1.0, -1.0
        if kind == "logits":
            return float(L), float(H)
        if kind == "mlp":
            return layer + 0.5, float(H)
        if kind == "kv":
            return float(layer), head * (H // KV) + (H // KV - 1) / 2
        return float(layer), float(head)

    nodes: dict[str, dict] = {}
    rows = []
    for r in df.itertuples(index=False):
        u, _, ukind, ul, uh = _graph_node(r.upstream, H, KV)
        v, via, vkind, vl, vh = _graph_node(r.downstream, H, KV)
        for name, kind, layer, head in ((u, ukind, ul, uh), (v, vkind, vl, vh)):
            if name not in nodes:
                x, y = place(kind, layer, head)
                nodes[name] = {"node": name, "kind": kind, "layer": layer, "head": head, "x": x, "y": y}
        rows.append({"upstream": u, "downstream": v, "via": via, "score": r.score, "abs_score": r.abs_score,
                     "normalized": r.normalized, "x0": nodes[u]["x"], "y0": nodes[u]["y"],
                     "x1": nodes[v]["x"], "y1": nodes[v]["y"]})
    node_df = pd.DataFrame(list(nodes.values()), columns=["node", "kind", "layer", "head", "x", "y"])
    edge_df = pd.DataFrame(rows, columns=["upstream", "downstream", "via", "score", "abs_score", "normalized",
                                          "x0", "y0", "x1", "y1"])
    return EdgeGraph(node_df, edge_df, threshold, by, L, H, total)


__all__ = ["ABLATIONS", "RANK_KINDS", "SAE_UNITS", "is_feature_circuit", "feature_components", "Component", "CircuitSpec", "CircuitResult", "CurveResult", "parse_component",
           "parse_components", "format_components", "all_components", "check_components", "faithfulness",
           "faithfulness_curve", "component_effects", "rank_components", "top_components", "EdgeGraph",
           "edge_graph"]
