"""Exact vs approximate: where attribution patching misses or invents an effect.

`compare_cells(exact, approx)` lines up an exact sweep (`engine.sweep`) and an attribution
estimate (`attribution.run_attribution`) of the same spec cell by cell. Each cell's **effect** is
its value minus the base run's metric (the corrupt baseline when denoising, the clean one when
noising), so 0 means "patching this does nothing". With `scale` = the largest |exact effect|:

- **missed**: |exact| >= `large` x scale, and the estimate is small (|approx| < `small` x scale)
  or has the opposite sign: a real effect the approximation would not show;
- **invented**: |approx| >= `large` x scale and |exact| < `small` x scale: an effect the
  approximation shows that exact patching does not have;
- **underestimated** / **overestimated**: a cell that matters (|exact| >= `large` x scale), of the
  right sign, whose estimate is off by at least `relative` x |exact| (default 0.5: a dominant
  cell estimated at 8.9 for an exact 23.8 is flagged, though Pearson's r can still read 0.99).

Defaults: large = 0.3, small = 0.1 (both relative to the largest exact effect, so the flags do not
depend on the metric's units), relative = 0.5. Cells NaN in either result (not computed) are left out.

Summary statistics: Pearson r and top-k overlap come from `attribution.agreement` (the same
numbers the Attribution tab's "Compare with exact patching" line shows); Spearman's rank
correlation is Pearson's r of the ranks (average ranks for ties).

>>> a = compare_cells(sweep(model, prompts, spec), run_attribution(model, prompts, kinds=[spec.kind])[0])  # doctest: +SKIP
>>> [c.label for c in a.flagged()]                                                                     # doctest: +SKIP
['L0 H3', 'L2 H1']
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from patching.methods.attribution import agreement
from patching.core.results import PatchResult

FLAGS = ("missed", "invented", "underestimated", "overestimated")
LARGE, SMALL, RELATIVE = 0.3, 0.1, 0.5


def cell_label(result: PatchResult, cell: tuple[int, ...]) -> str:
    """A cell's coordinates as text: 'L1 H3', 'L2 @5 ␣Mary', 'L0 N77', 'L1 F12', 'L3 error'.

    >>> cell_label(result, (1, 3))            # doctest: +SKIP
    'L1 H3'
    """
    parts = []
    for axis, c in zip(result.axes, cell):
        if axis == "layer":
            parts.append(f"L{c}")
        elif axis == "pos":
            tok = result.str_tokens[c] if c < len(result.str_tokens) else ""
            parts.append(f"@{c} {tok!r}" if tok else f"@{c}")
        elif axis == "head":
            parts.append(f"H{c}")
        elif axis == "neuron":
            parts.append(f"N{c}")
        elif axis == "feature":                 # the last unit is each SAE's error node
            parts.append("error" if c == result.coords["feature"][-1] else f"F{c}")
        else:
            parts.append(f"{axis} {c}")
    return " ".join(parts)


@dataclass(frozen=True)
class CellAgreement:
    cell: tuple[int, ...]      # coordinates on the results' axes (layer, pos, head numbers)
    label: str
    exact: float               # exact effect (value - the base run's metric)
    approx: float              # estimated effect
    flag: str = ""             # "" or one of FLAGS

    def __post_init__(self):
        if self.flag not in ("",) + FLAGS:
            raise ValueError(f"flag must be '' or one of {', '.join(FLAGS)}, not {self.flag!r}")


@dataclass(frozen=True)
class Agreement:
    kind: str
    axes: tuple[str, ...]
    cells: tuple[CellAgreement, ...]
    pearson: float
    spearman: float
    topk_overlap: float
    k: int
    scale: float               # the largest |exact effect|
    large: float = LARGE
    small: float = SMALL
    relative: float = RELATIVE

    def __post_init__(self):
        _check_thresholds(self.large, self.small, self.relative)

    def flagged(self, flag: str | None = None) -> list[CellAgreement]:
        """Flagged cells (only `flag` when given), the largest |exact - approx| first."""
        if flag is not None and flag not in FLAGS:
            raise ValueError(f"flag must be one of {', '.join(FLAGS)}, not {flag!r}")
        out = [c for c in self.cells if c.flag and (flag is None or c.flag == flag)]
        return sorted(out, key=lambda c: -abs(c.exact - c.approx))

    def counts(self) -> dict[str, int]:
        return {f: sum(c.flag == f for c in self.cells) for f in FLAGS}

    def summary(self) -> str:
        """'head_out: Pearson r = 0.91 · Spearman 0.85 · top-5 overlap 4/5 · 1 missed, 0 invented,
        1 underestimated (16 cells)' (under- / overestimated named only when there are any)."""
        fmt = lambda v: "n/a" if v != v else f"{v:.3f}"   # noqa: E731
        n = self.counts()
        off = "".join(f", {n[f]} {f}" for f in ("underestimated", "overestimated") if n[f])
        return (f"{self.kind}: Pearson r = {fmt(self.pearson)} · Spearman {fmt(self.spearman)} · top-{self.k} "
                f"overlap {round(self.topk_overlap * self.k)}/{self.k} · {n['missed']} missed, "
                f"{n['invented']} invented{off} ({len(self.cells)} cells)")

    def flags_explained(self) -> str:
        """The flag rules with this comparison's numbers, one line (the CLI and the page show it).

        >>> Agreement("head_out", ("layer", "head"), (), 1.0, 1.0, 1.0, 1, 2.0).flags_explained()[:44]
        'flags: missed = |exact| >= 0.3 x 2 (the larg'
        """
        return (f"flags: missed = |exact| >= {self.large:g} x {self.scale:.3g} (the largest exact effect) while "
                f"the estimate is < {self.small:g} x that or of the other sign; invented = the reverse; "
                f"under- / overestimated = such a cell's estimate off by >= {self.relative:.0%} of it")

    def to_dataframe(self) -> pd.DataFrame:
        """One row per cell: the axes' coordinates, label, exact, approx, flag."""
        rows = [{**dict(zip(self.axes, c.cell)), "label": c.label, "exact": c.exact, "approx": c.approx,
                 "flag": c.flag} for c in self.cells]
        return pd.DataFrame(rows, columns=[*self.axes, "label", "exact", "approx", "flag"])


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean of their ranks), 0-based."""
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    for v in torch.unique(x):
        tie = x == v
        if int(tie.sum()) > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-d tensors (NaN when either is constant).

    >>> round(spearman(torch.tensor([1., 2., 3.]), torch.tensor([10., 30., 20.])), 6)
    0.5
    """
    ra, rb = _ranks(a.double()), _ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denom if denom > 0 else float("nan")


def _check_thresholds(large: float, small: float, relative: float) -> None:
    if not 0 < small <= large:
        raise ValueError(f"thresholds need 0 < small <= large, not small={small!r}, large={large!r}")
    if not 0 < relative:
        raise ValueError(f"relative must be a positive fraction of the exact effect, not {relative!r}")


def _flag(e: float, a: float, scale: float, large: float, small: float, relative: float) -> str:
    """One cell's flag from its exact (e) and estimated (a) effects (module doc).

    >>> _flag(23.8, 8.9, 23.8, 0.3, 0.1, 0.5), _flag(23.8, 22.0, 23.8, 0.3, 0.1, 0.5)
    ('underestimated', '')
    """
    if scale <= 0:
        return ""
    if abs(e) >= large * scale:
        if abs(a) < small * scale or a * e < 0:
            return "missed"
        if abs(a - e) >= relative * abs(e):
            return "underestimated" if abs(a) < abs(e) else "overestimated"
    elif abs(a) >= large * scale and abs(e) < small * scale:
        return "invented"
    return ""


def compare_cells(exact: PatchResult, approx: PatchResult, *, k: int = 10, large: float = LARGE,
                  small: float = SMALL, relative: float = RELATIVE) -> Agreement:
    """Cell by cell: exact and estimated effects, flags (module doc), Pearson r, Spearman, top-k overlap.

    >>> compare_cells(exact, approx).counts()          # doctest: +SKIP
    {'missed': 1, 'invented': 0}
    """
    if exact.spec.kind != approx.spec.kind or exact.axes != approx.axes or exact.coords != approx.coords:
        raise ValueError(f"exact ({exact.spec.kind}, axes {exact.axes}) and approx ({approx.spec.kind}, axes "
                         f"{approx.axes}) are not the same grid; run both with the same spec")
    if exact.spec.direction != approx.spec.direction:
        raise ValueError(f"directions differ: exact {exact.spec.direction!r}, approx {approx.spec.direction!r}")
    _check_thresholds(large, small, relative)
    stats = agreement(approx, exact, k)
    ex = exact.values.double() - exact.base_value
    ap = approx.values.double() - approx.base_value
    keep = ~(torch.isnan(ex) | torch.isnan(ap))
    scale = float(ex[keep].abs().max()) if bool(keep.any()) else 0.0
    cells = []
    for idx in keep.nonzero().tolist():
        cell = tuple(exact.coords[a][i] for a, i in zip(exact.axes, idx))
        e, a = float(ex[tuple(idx)]), float(ap[tuple(idx)])
        cells.append(CellAgreement(cell, cell_label(exact, cell), e, a, _flag(e, a, scale, large, small, relative)))
    rho = spearman(ex[keep], ap[keep]) if int(keep.sum()) > 1 else float("nan")
    return Agreement(exact.spec.kind, exact.axes, tuple(cells), stats["pearson"], rho, stats["topk_overlap"],
                     stats["k"], scale, large, small, relative)
