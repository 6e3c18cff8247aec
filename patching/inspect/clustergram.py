"""Heads clustered by their effect profile: hierarchical clustering of a head-kind result.

Each head (layer, head) of a result with a head axis (head_out, head_q/k/v, head_pattern, a path
sweep's senders) gets a profile: its paired patching effect for every pair — and every position
of a per-position sweep — (`profile="pairs"`), or the mean over pairs per position
(`profile="mean"`). Profiles are the normalized effect (effect / (clean − corrupt)) or the raw
effect (patched − unpatched, in the metric's units). Heads are clustered by agglomerative
clustering (scipy's `linkage`: average, complete or single) on euclidean or correlation distances;
the leaf order puts heads with alike profiles next to each other.

>>> cg = clustergram(result, ClusterSpec(profile="pairs"))
>>> cg.frame().columns.tolist()
['order', 'layer', 'head', 'label', 'detector', 'joins_at']
>>> len(cg.linkage_frame()) == len(cg.heads) - 1
True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd

PROFILES = ("pairs", "mean")
DISTANCES = ("euclidean", "correlation")
LINKAGES = ("average", "complete", "single")
VALUES = ("normalized", "effect")


@dataclass(frozen=True)
class ClusterSpec:
    """How heads are profiled and clustered.

    >>> ClusterSpec(distance="cosine")
    Traceback (most recent call last):
    ...
    ValueError: distance must be one of euclidean, correlation, not 'cosine'
    """
    profile: str = "pairs"          # "pairs": each pair's effect (× position); "mean": the mean over pairs
    distance: str = "euclidean"     # between two heads' profiles; "correlation": 1 − Pearson r
    linkage: str = "average"        # how a cluster's distance to another is taken (scipy's method)
    value: str = "normalized"       # "normalized": effect / (clean − corrupt); "effect": metric units

    def __post_init__(self):
        for name, allowed in (("profile", PROFILES), ("distance", DISTANCES), ("linkage", LINKAGES),
                              ("value", VALUES)):
            got = getattr(self, name)
            if got not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {got!r}")


@dataclass(frozen=True, eq=False)
class Clustergram:
    """Heads in leaf order, their profiles and the linkage (scipy's layout: left, right, distance, size)."""
    spec: ClusterSpec
    heads: tuple[tuple[int, int], ...]                 # (layer, head) in leaf order
    features: tuple[str, ...]                          # one name per profile column ("pos 3 ' Mary' · pair 0")
    profile: np.ndarray = field(repr=False)            # [heads (leaf order), features]
    linkage: np.ndarray = field(repr=False)            # [heads - 1, 4]; node i < n is heads_in[i]
    heads_in: tuple[tuple[int, int], ...] = field(repr=False, default=())   # (layer, head) by node id
    detectors: Mapping[tuple[int, int], str] = field(default_factory=dict, repr=False)
    unit: str = "normalized effect"                    # what a profile value is, for axes and CSVs

    def label(self, head: tuple[int, int]) -> str:
        """'L1H2', or 'L1H2 · induction' when a detector fires on it."""
        name = f"L{head[0]}H{head[1]}"
        return f"{name} · {self.detectors[head]}" if head in self.detectors else name

    def frame(self) -> pd.DataFrame:
        """One row per head in leaf order: order, layer, head, label, detector (empty when none),
        joins_at (the linkage distance at which the head first joins a cluster)."""
        n = len(self.heads_in)
        joins = np.full(n, np.nan)
        for row in self.linkage:
            for node in row[:2].astype(int):
                if node < n:
                    joins[node] = row[2]
        at = {h: i for i, h in enumerate(self.heads_in)}
        return pd.DataFrame({
            "order": np.arange(len(self.heads)), "layer": [h[0] for h in self.heads],
            "head": [h[1] for h in self.heads], "label": [self.label(h) for h in self.heads],
            "detector": [self.detectors.get(h, "") for h in self.heads],
            "joins_at": [joins[at[h]] for h in self.heads]})

    def linkage_frame(self) -> pd.DataFrame:
        """One row per merge: step, left, right (node ids: 0..n-1 the heads, n+i the cluster of step
        i), left_label / right_label (a head's name, or 'cluster k'), distance, size."""
        n = len(self.heads_in)

        def name(node: int) -> str:
            return f"L{self.heads_in[node][0]}H{self.heads_in[node][1]}" if node < n else f"cluster {node - n}"

        left, right = self.linkage[:, 0].astype(int), self.linkage[:, 1].astype(int)
        return pd.DataFrame({
            "step": np.arange(len(self.linkage)), "left": left, "right": right,
            "left_label": [name(i) for i in left], "right_label": [name(i) for i in right],
            "distance": self.linkage[:, 2], "size": self.linkage[:, 3].astype(int)})

    def profile_frame(self) -> pd.DataFrame:
        """The clustered matrix, long: order, layer, head, label, feature, value."""
        n, f = self.profile.shape
        return pd.DataFrame({
            "order": np.repeat(np.arange(n), f), "layer": np.repeat([h[0] for h in self.heads], f),
            "head": np.repeat([h[1] for h in self.heads], f),
            "label": np.repeat([self.label(h) for h in self.heads], f),
            "feature": np.tile(list(self.features), n), "value": self.profile.reshape(-1)})

    def plot(self, title: str | None = None):
        """The heatmap in leaf order with its dendrogram (`patching.figures.clustergram`)."""
        from patching.figures.clustergram import clustergram_figure
        return clustergram_figure(self, title)


def head_profiles(result, spec: ClusterSpec = ClusterSpec()) -> tuple[list, list[str], np.ndarray]:
    """(heads, feature names, profiles [heads, features]) of a result with a head axis; heads whose
    cells were all left uncomputed are left out, as are features some head lacks.

    >>> heads, names, x = head_profiles(result, ClusterSpec(profile="pairs", value="effect"))
    >>> x.shape == (len(heads), result.n_pairs), names[0]
    (True, 'pair 0')
    """
    axes = tuple(result.axes)
    if "head" not in axes or "layer" not in axes:
        raise ValueError(f"a clustergram needs a result with a head axis (kinds head_out, head_q, head_k, "
                         f"head_v, head_pattern, or path senders); this one has axes {', '.join(axes)}")
    gap = result.clean_value - result.corrupt_value
    if spec.value == "normalized" and abs(gap) < 1e-12:
        raise ValueError(f"normalized effects are undefined: the clean and corrupt baselines are equal "
                         f"({result.clean_value:.6g}); use value 'effect'")
    eff = result.effect_per_pair.double()                         # [*axes, pairs]
    if spec.value == "normalized":
        eff = eff / gap
    rest = [a for a in axes if a not in ("layer", "head")]
    order = [axes.index("layer"), axes.index("head")] + [axes.index(a) for a in rest] + [len(axes)]
    x = eff.permute(*order).numpy()                                # [layer, head, *rest, pairs]
    if spec.profile == "mean":
        x = x.mean(-1, keepdims=True)
    L, H = x.shape[:2]
    names = _feature_names(result, rest, x.shape[2:], spec.profile)
    x = x.reshape(L * H, -1)
    heads = [(result.coords["layer"][i], result.coords["head"][j]) for i in range(L) for j in range(H)]
    keep = ~np.isnan(x).all(1)
    x, heads = x[keep], [h for h, k in zip(heads, keep) if k]
    cols = ~np.isnan(x).any(0)
    if len(heads) < 2 or not cols.any():
        raise ValueError(f"a clustergram needs at least 2 heads with computed values, got {len(heads)} "
                         f"with {int(cols.sum())} complete profile columns")
    return heads, [n for n, c in zip(names, cols) if c], x[:, cols]


def _feature_names(result, rest: list[str], shape: tuple, profile: str) -> list[str]:
    """Names of the profile columns: 'pos 3 ' Mary' · pair 0', 'pair 1', 'mean', 'pos IO · mean'."""
    pairs = ["mean"] if profile == "mean" else [f"pair {p}" for p in range(shape[-1])]
    if not rest:
        return pairs
    positions = []
    for p in result.coords["pos"]:
        tok = result.roles[p] if result.roles else (result.str_tokens[p] if p < len(result.str_tokens) else "")
        positions.append(f"pos {tok}" if result.roles else f"pos {p} {tok!r}")
    return [f"{pos} · {pair}" for pos in positions for pair in pairs]


def distances(x: np.ndarray, distance: str = "euclidean") -> np.ndarray:
    """Condensed pairwise distances of the rows of x [n, f] (scipy's `pdist` order).

    correlation: 1 − Pearson r; a constant row (a head that changes every pair alike, e.g. not
    at all) has no correlation: it is at distance 1 from every other row and 0 from another
    constant row.

    >>> distances(np.array([[0., 0.], [3., 4.]]))
    array([5.])
    >>> distances(np.array([[1., 2.], [2., 4.], [5., 5.]]), "correlation").round(6)
    array([0., 1., 1.])
    """
    from scipy.spatial.distance import pdist
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, not {distance!r}")
    if distance == "euclidean":
        return pdist(x, "euclidean")
    c = x - x.mean(1, keepdims=True)
    norm = np.linalg.norm(c, axis=1)
    flat = norm <= 1e-12 * np.maximum(1.0, np.abs(x).max(1))
    u = np.where(flat[:, None], 0.0, c / np.where(flat, 1.0, norm)[:, None])
    d = np.clip(1.0 - u @ u.T, 0.0, 2.0)
    both = flat[:, None] & flat[None, :]
    d[flat[:, None] ^ flat[None, :]] = 1.0
    d[both] = 0.0
    i, j = np.triu_indices(len(x), 1)
    return d[i, j]


def clustergram(result, spec: ClusterSpec = ClusterSpec(), head_labels: Mapping | None = None) -> Clustergram:
    """Heads of `result` clustered by their effect profiles (ValueError when it has no head axis,
    fewer than two heads, or normalized effects are undefined); `head_labels` ((layer, head) ->
    detector, `figures.detectors.firing_labels`) names the heads that fire.

    >>> cg = clustergram(result, ClusterSpec(profile="mean", linkage="complete"))
    >>> sorted(cg.heads) == sorted(cg.heads_in)
    True
    """
    from scipy.cluster.hierarchy import leaves_list, linkage
    if not isinstance(spec, ClusterSpec):
        raise ValueError(f"spec must be a ClusterSpec, not {type(spec).__name__}")
    heads, names, x = head_profiles(result, spec)
    z = linkage(distances(x, spec.distance), method=spec.linkage)
    leaves = leaves_list(z)
    return Clustergram(spec, tuple(heads[i] for i in leaves), tuple(names), x[leaves], z, tuple(heads),
                       dict(head_labels or {}),
                       "normalized effect" if spec.value == "normalized" else f"effect ({result.spec.metric})")


__all__ = ["ClusterSpec", "Clustergram", "clustergram", "head_profiles", "distances", "PROFILES", "DISTANCES",
           "LINKAGES", "VALUES"]
