"""Handlers for the Attribution tab's exact-vs-attribution check and its refine action (pure
functions of the registry, a stored attribution run and plain values; no Dash).

The exact sweep behind "Compare with exact patching" is kept on disk (`data_dir/exact/`, one JSON
per spec + prompts + model, content-addressed), so the agreement line, the scatter and the flagged
list all read the one sweep, and a second click does not run it again.

>>> agreement = compare_run(registry, run, "head_out", data_dir)        # doctest: +SKIP
>>> flagged_rows(agreement)[0]                                           # doctest: +SKIP
{'flag': 'missed', 'label': 'L0 H3', 'exact': 0.41, 'approx': 0.02}
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from patching.methods.compare import Agreement, cell_label, compare_cells
from patching.methods.sweep import sweep
from patching.core.prompts import PromptPair, PromptSet
from patching.methods.refine import refine, top_cells
from patching.core.results import PatchResult

MAX_REFINE_K = 200
FLAGGED_ROWS = 20


def _prompts(registry, run, estimate: PatchResult):
    from metrics import METRICS
    from dashboard.handlers import check_model
    model = registry.get(check_model(registry, estimate.spec.model))     # offered models only
    if estimate.spec.metric not in METRICS:     # a stored (or imported) 'pkg.mod:fn' would import code here
        raise ValueError(f"this run's metric {estimate.spec.metric!r} is not one the dashboard runs; choose "
                         f"one of {', '.join(METRICS)} (or compare it with the CLI)")
    prompts = PromptSet.from_pairs(model, [PromptPair(*p) for p in run.pairs], prepend_bos=estimate.spec.prepend_bos)
    return model, prompts


def _cache_path(data_dir: str | Path, estimate: PatchResult, pairs) -> Path:
    key = json.dumps({"spec": estimate.spec.to_dict(), "pairs": [list(p) for p in pairs],
                      "model": estimate.model_name}, sort_keys=True)
    return Path(data_dir) / "exact" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def cached_exact(run, kind: str, data_dir: str | Path) -> PatchResult | None:
    """The exact sweep of the run's `kind`, if one was run and kept; else None."""
    path = _cache_path(data_dir, run.result(kind), run.pairs)
    if not path.is_file():
        return None
    try:
        return PatchResult.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError):
        return None


def exact_sweep(registry, run, kind: str, data_dir: str | Path) -> PatchResult:
    """The exact sweep of the same spec and prompts as the run's `kind` (kept on disk, reused)."""
    found = cached_exact(run, kind, data_dir)
    if found is not None:
        return found
    estimate = run.result(kind)
    model, prompts = _prompts(registry, run, estimate)
    exact = sweep(model, prompts, estimate.spec)
    path = _cache_path(data_dir, estimate, run.pairs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(exact.to_json()), encoding="utf-8")
    tmp.replace(path)
    return exact


def compare_run(registry, run, kind: str, data_dir: str | Path, *, compute: bool = True) -> Agreement | None:
    """compare_cells(exact sweep, the run's estimate of `kind`); with compute=False only when the
    exact sweep is already kept (None otherwise).

    >>> compare_run(registry, run, "head_out", data_dir).counts()    # doctest: +SKIP
    {'missed': 0, 'invented': 1}
    """
    exact = exact_sweep(registry, run, kind, data_dir) if compute else cached_exact(run, kind, data_dir)
    if exact is None:
        return None
    return compare_cells(exact, run.result(kind))


def flagged_rows(agreement: Agreement | None, n: int = FLAGGED_ROWS) -> list[dict]:
    """The flagged cells (largest |exact - approx| first) as table rows."""
    if agreement is None:
        return []
    return [{"flag": c.flag, "label": c.label, "exact": round(c.exact, 4), "approx": round(c.approx, 4)}
            for c in agreement.flagged()[:n]]


def parse_k(value) -> int:
    """The refine control's k: a whole number in 1..MAX_REFINE_K.

    >>> parse_k("5")
    5
    """
    try:
        k = int(value)
        if k != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"k must be a whole number from 1 to {MAX_REFINE_K}, not {value!r}") from None
    if not 1 <= k <= MAX_REFINE_K:
        raise ValueError(f"k must be a whole number from 1 to {MAX_REFINE_K}, not {value!r}")
    return k


def refine_run(registry, run, kind: str, k) -> tuple[PatchResult, list[dict]]:
    """Exact patching of the top-k cells of the run's estimate of `kind`: (the refined result, rows
    of rank, label, attribution value, exact value, normalized exact value).

    >>> refine_run(registry, run, "head_out", 3)[1][0].keys()           # doctest: +SKIP
    dict_keys(['rank', 'label', 'attribution', 'exact', 'normalized'])
    """
    k = parse_k(k)
    estimate = run.result(kind)
    model, prompts = _prompts(registry, run, estimate)
    refined = refine(model, prompts, estimate, k)
    norm = refined.normalized
    rows = []
    for rank, cell in enumerate(top_cells(estimate, k), 1):
        idx = tuple(estimate.coords[a].index(c) for a, c in zip(estimate.axes, cell))
        nv = float(norm[idx])
        rows.append({"rank": rank, "label": cell_label(estimate, cell), "attribution": float(estimate.values[idx]),
                     "exact": float(refined.values[idx]), "normalized": None if nv != nv else nv})
    return refined, rows


def attribution_agreement(registry, run, kind: str, data_dir: str | Path | None = None) -> dict:
    """Attribution of one kind vs the exact sweep of the same spec: Pearson r and top-10 overlap
    (`patching.methods.attribution.agreement`), plus the exact sweep's seconds. With a data dir the exact
    sweep is kept there for the scatter and the flagged list (`compare_run`)."""
    from patching.methods.attribution import agreement
    estimate = run.result(kind)
    if data_dir is not None:
        exact = exact_sweep(registry, run, kind, data_dir)
    else:
        model, prompts = _prompts(registry, run, estimate)
        exact = sweep(model, prompts, estimate.spec)
    return {**agreement(estimate, exact, k=10), "exact_seconds": exact.seconds}
