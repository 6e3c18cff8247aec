"""The Attribution tab's exact-vs-attribution section: "Compare with exact patching" (Pearson r and
top-10 overlap), the scatter of each cell's exact effect against its estimate with missed /
invented / under- or overestimated cells coloured, the flagged cells as a table, and "Refine top-k" (exact patching of the
k highest attribution cells only). Pure functions of the registry, a stored attribution run and
plain values first; `register(app, ctx)` wires the callbacks.

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
from types import SimpleNamespace

import dash_bootstrap_components as dbc
from dash import Input, Output, State, dcc, html, no_update

from metrics import METRICS
from patching.core.prompts import PromptPair, PromptSet
from patching.core.results import PatchResult
from patching.methods.compare import Agreement, cell_label, compare_cells
from patching.methods.refine import refine, top_cells
from patching.methods.sweep import sweep
from patching.runs.slot import run_slot

from dashboard import ids
from patching import figures
from dashboard.components import error_text
from patching.figures import agreement as figures_agreement
from dashboard.forms import check_model, multi_token_ok, whole_number

MAX_REFINE_K = 200
FLAGGED_ROWS = 20
COMPARE_HINT = ("Click 'Compare with exact patching' to see each cell's exact effect against its estimate, "
                "with the cells attribution misses or invents coloured.")


def _prompts(registry, run, estimate: PatchResult):
    model = registry.get(check_model(registry, estimate.spec.model))     # offered models only
    if estimate.spec.metric not in METRICS:     # a stored (or imported) 'pkg.mod:fn' would import code here
        raise ValueError(f"this run's metric {estimate.spec.metric!r} is not one the dashboard runs; choose "
                         f"one of {', '.join(METRICS)} (or compare it with the CLI)")
    prompts = PromptSet.from_pairs(model, [PromptPair(*p) for p in run.pairs], prepend_bos=estimate.spec.prepend_bos,
                                   multi_token=multi_token_ok(estimate.spec.metric))
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
    k = whole_number(value, "k", None, 1, MAX_REFINE_K)
    if k is None:
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


def agreement_text(a: dict) -> str:
    """'head_out: Pearson r = 0.982 · top-10 overlap 9/10 (48 cells; exact sweep 0.41 s)'."""
    r = "n/a" if a["pearson"] != a["pearson"] else f"{a['pearson']:.3f}"
    hits = round(a["topk_overlap"] * a["k"])
    return (f"Agreement with exact patching · {a['kind']}: Pearson r = {r} · top-{a['k']} overlap "
            f"{hits}/{a['k']} ({a['cells']} cells; exact sweep {a.get('exact_seconds', 0):.2f} s)")


# -- layout and render (pure) ------------------------------------------------------------------------
def compare_section() -> html.Div:
    """Scatter + flagged table + the refine control, for the Attribution tab."""
    return html.Div([
        html.H3("Exact vs attribution", className="section-title"),
        dcc.Graph(id=ids.ATTR_COMPARE_FIGURE, figure=figures.empty_figure(COMPARE_HINT, 260),
                  config=figures.graph_config("png", "patchboard-exact-vs-attribution"), className="graph"),
        html.Div(id=ids.ATTR_FLAGGED),
        html.Div([
            html.Span("Refine: exact patching of the top", className="toolbar-label"),
            dbc.Input(id=ids.ATTR_REFINE_K, type="number", min=1, max=MAX_REFINE_K, step=1,
                      value=10, size="sm", className="pair-input"),
            html.Span("attribution cells", className="toolbar-label"),
            dbc.Button("Refine top-k", id=ids.ATTR_REFINE_BUTTON, color="primary", outline=True, size="sm",
                       n_clicks=0),
        ], className="toolbar refine-row"),
        html.Div(id=ids.ATTR_REFINE_STATUS, className="hint"),
        html.Div(id=ids.ATTR_REFINE_TABLE),
    ], className="compare-section")


def render_flagged(agreement, rows: list[dict]):
    """The flagged cells as a table with a summary line (thresholds named), or a hint."""
    if agreement is None:
        return html.Div()
    head = html.Div([html.Span(agreement.summary()),
                     html.Span(" · " + agreement.flags_explained(), className="field-hint")], className="hint")
    if not rows:
        return html.Div([head, html.Div("No cell is flagged.", className="hint")])
    header = html.Thead(html.Tr([html.Th(c) for c in ("flag", "cell", "exact effect", "attribution")]))
    body = html.Tbody([html.Tr([html.Td(r["flag"], className=f"flag-{r['flag']}"), html.Td(r["label"]),
                                html.Td(f"{r['exact']:+.4f}"), html.Td(f"{r['approx']:+.4f}")]) for r in rows])
    return html.Div([head, dbc.Table([header, body], size="sm", striped=True, className="top-table flagged-table")])


def render_refined(rows: list[dict]):
    header = html.Thead(html.Tr([html.Th(c) for c in ("#", "cell", "attribution", "exact", "exact normalized")]))
    body = html.Tbody([html.Tr([html.Td(r["rank"]), html.Td(r["label"]), html.Td(f"{r['attribution']:.4f}"),
                                html.Td(f"{r['exact']:.4f}"),
                                html.Td("" if r["normalized"] is None else f"{r['normalized']:.3f}")])
                       for r in rows])
    return dbc.Table([header, body], size="sm", striped=True, className="top-table refine-table")


# -- callbacks ---------------------------------------------------------------------------------------
def register(app, ctx) -> SimpleNamespace:
    """Wire the agreement line, the scatter and flagged table, and refine; returns them (for tests)."""
    registry, store, data_dir = ctx.registry, ctx.store, ctx.data_dir

    def agreement(n_clicks, att_id, kind):
        """Exact sweep of the shown kind (queued like a run) -> Pearson r and top-10 overlap."""
        if not n_clicks or not att_id or not kind:
            return no_update
        try:
            run = store.get_attribution(att_id)
            with run_slot(data_dir):
                a = attribution_agreement(registry, run, kind, data_dir)
        except ValueError as exc:
            return error_text(str(exc))
        return agreement_text(a)

    app.callback(Output(ids.ATTR_AGREEMENT, "children", allow_duplicate=True),
                 Input(ids.ATTR_AGREE_BUTTON, "n_clicks"), State(ids.ATTR_RUN, "data"),
                 State(ids.ATTR_SHOW_KIND, "value"),
                 background=True, interval=400,
                 running=[(Output(ids.ATTR_AGREE_BUTTON, "children"), "Running the exact sweep…",
                           "Compare with exact patching")],
                 prevent_initial_call=True)(agreement)

    def compare_view(agreement_children, att_id, kind):
        """After the agreement line changes: the scatter and flagged table from the kept exact
        sweep (empty when there is none, e.g. the line was cleared for another run or kind)."""
        empty = figures.empty_figure(COMPARE_HINT, 260)
        if not att_id or not kind or not agreement_children:
            return empty, html.Div()
        try:
            run = store.get_attribution(att_id)
            agreement = compare_run(registry, run, kind, data_dir, compute=False)
        except (ValueError, KeyError) as exc:
            return figures.empty_figure(str(exc), 260), html.Div()
        if agreement is None:
            return empty, html.Div()
        return (figures_agreement.agreement_scatter(agreement),
                render_flagged(agreement, flagged_rows(agreement)))

    app.callback(Output(ids.ATTR_COMPARE_FIGURE, "figure"), Output(ids.ATTR_FLAGGED, "children"),
                 Input(ids.ATTR_AGREEMENT, "children"), State(ids.ATTR_RUN, "data"),
                 State(ids.ATTR_SHOW_KIND, "value"))(compare_view)

    def refine_top(n_clicks, k, att_id, kind):
        """Refine top-k (queued like a run): exact patching of the k best attribution cells."""
        if not n_clicks:
            return no_update, no_update
        if not att_id or not kind:
            return html.Span("Run attribution first; refine runs exact patching of its top cells.",
                             className="error-text"), html.Div()
        try:
            run = store.get_attribution(att_id)
            with run_slot(data_dir):
                refined, rows = refine_run(registry, run, kind, k)
        except ValueError as exc:
            return error_text(str(exc)), html.Div()
        cells = run.result(kind).values.numel()
        status = (f"Exact patching of the top {len(rows)} of {cells} {kind} cells by attribution: "
                  f"{refined.seconds:.2f} s.")
        return status, render_refined(rows)

    app.callback(Output(ids.ATTR_REFINE_STATUS, "children"), Output(ids.ATTR_REFINE_TABLE, "children"),
                 Input(ids.ATTR_REFINE_BUTTON, "n_clicks"), State(ids.ATTR_REFINE_K, "value"),
                 State(ids.ATTR_RUN, "data"), State(ids.ATTR_SHOW_KIND, "value"),
                 background=True, interval=400,
                 running=[(Output(ids.ATTR_REFINE_BUTTON, "disabled"), True, False),
                          (Output(ids.ATTR_REFINE_BUTTON, "children"), "Refining…", "Refine top-k")],
                 prevent_initial_call=True)(refine_top)

    def clear_refine(att_id, kind):
        """A different run or kind on screen: the refined table belongs to the old one."""
        return "", html.Div()

    app.callback(Output(ids.ATTR_REFINE_STATUS, "children", allow_duplicate=True),
                 Output(ids.ATTR_REFINE_TABLE, "children", allow_duplicate=True),
                 Input(ids.ATTR_RUN, "data"), Input(ids.ATTR_SHOW_KIND, "value"),
                 prevent_initial_call=True)(clear_refine)

    return SimpleNamespace(agreement=agreement, compare_view=compare_view, refine_top=refine_top,
                           clear_refine=clear_refine)
