"""Refine: exact patching of only the cells attribution patching ranks highest.

Attribution patching estimates every cell at the cost of about three forwards; exact patching of
all of them can cost thousands. `refine` takes an attribution result, picks its top-k cells by
|estimated effect| (value - the base run's metric), and runs `engine.sweep` on those cells only
(`cells=`): the refined result has the same grid, exact values on the k cells and NaN elsewhere,
equal to what the full exact sweep gives there.

>>> approx = run_attribution(model, prompts, kinds=["head_out"])[0]      # doctest: +SKIP
>>> refined = refine(model, prompts, approx, k=5)                         # doctest: +SKIP
>>> int((~refined.values.isnan()).sum())                                   # doctest: +SKIP
5
"""
from __future__ import annotations

from typing import Callable

import torch

from metrics import Metric

from patching.methods.sweep import Progress, sweep
from patching.core.prompts import PromptSet
from patching.core.results import PatchResult
from patching.core.spec import check_whole


def _k(k) -> int:
    return check_whole(k, "k", 1)


def top_cells(approx: PatchResult, k: int) -> list[tuple[int, ...]]:
    """The k cells with the largest |estimated effect|, as coordinate tuples on approx's axes
    (fewer when the grid has fewer computed cells), largest first.

    >>> top_cells(approx, 3)                    # doctest: +SKIP
    [(3, 0), (2, 1), (0, 3)]
    """
    k = _k(k)
    base = approx.base_value
    effect = (approx.values.double() - base).abs()
    flat = effect.flatten()
    valid = (~torch.isnan(flat)).nonzero()[:, 0]
    order = valid[torch.argsort(flat[valid], descending=True, stable=True)][:k]
    shape = effect.shape
    out = []
    for n in order.tolist():
        idx = []
        for size in reversed(shape):
            idx.append(n % size)
            n //= size
        idx.reverse()
        out.append(tuple(approx.coords[a][i] for a, i in zip(approx.axes, idx)))
    return out


def refine(model, prompts: PromptSet, approx: PatchResult, k: int, metric: Metric | Callable | str | None = None,
           *, on_progress: Progress | None = None, max_memory_mb: float | None = None) -> PatchResult:
    """Exact patching of approx's top-k cells only (others NaN). metric: default the one approx
    was computed with (its spec's name).

    >>> refine(model, prompts, approx, 5).spec == approx.spec      # doctest: +SKIP
    True
    """
    cells = top_cells(approx, k)
    if not cells:
        raise ValueError(f"the attribution result of {approx.spec.kind!r} has no computed cells to refine")
    return sweep(model, prompts, approx.spec, metric=metric, cells=cells, on_progress=on_progress,
                 max_memory_mb=max_memory_mb)
