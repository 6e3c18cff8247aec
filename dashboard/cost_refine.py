"""The run card's cost preview and the Attribution tab's exact-vs-attribution section.

- **Cost preview** (run card, under Run): whenever the model, prompts, kind or filters change,
  the estimate of the sweep Run would start (`cost_handlers.cost_view`). Above `SLOW_SECONDS` a
  suggestion appears with a button that opens the Attribution tab with the same kind and starts
  an attribution run.
- **Exact vs attribution** (Attribution tab, after "Compare with exact patching"): a scatter of
  each cell's exact effect against its estimate, missed / invented cells coloured, and the
  flagged cells as a table; both read the exact sweep the agreement line ran (kept on disk).
- **Refine top-k**: exact patching of the shown kind's k highest attribution cells only, as a
  table next to their estimates.

Layout pieces (`cost_line`, `compare_section`) are placed by `layout.py`; `register` wires the
callbacks and returns them as a namespace so tests call them directly.

>>> cost_refine.register(app, registry, store, data_dir).cost_preview(...)       # doctest: +SKIP
"""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import dash_bootstrap_components as dbc
from dash import Input, Output, State, dcc, html, no_update

from patching.methods.cost import SLOW_SECONDS, CalibrationCache

from dashboard import cost_handlers, figures, ids, refine_handlers
from dashboard.figures import agreement as figures_compare
from dashboard.server import fork_guard
from dashboard.handlers import Form

log = logging.getLogger("dashboard")
PAUSED = "Cost estimate paused while a run is in progress; it updates on the next change of the form."
COMPARE_HINT = ("Click 'Compare with exact patching' to see each cell's exact effect against its estimate, "
                "with the cells attribution misses or invents coloured.")


# -- layout pieces ----------------------------------------------------------------------------------
def cost_line() -> html.Div:
    """The run card's estimate line and the (hidden) slow-run suggestion."""
    return html.Div([
        html.Div(id=ids.COST_ESTIMATE, className="cost-estimate hint"),
        html.Div([
            html.Span(id=ids.COST_SUGGESTION, className="cost-suggestion-text"),
            dbc.Button("Run attribution first", id=ids.COST_ATTRIBUTION_BUTTON, color="warning", outline=True,
                       size="sm", n_clicks=0, className="mt-1"),
        ], id=ids.COST_SUGGESTION + "-box", hidden=True, className="cost-suggestion"),
    ], className="cost-preview")


def compare_section() -> html.Div:
    """Scatter + flagged table + the refine control, for the Attribution tab."""
    return html.Div([
        html.H3("Exact vs attribution", className="section-title"),
        dcc.Graph(id=ids.ATTR_COMPARE_FIGURE, figure=figures.empty_figure(COMPARE_HINT, 260),
                  config=figures.graph_config("png", "patchboard-exact-vs-attribution"), className="graph"),
        html.Div(id=ids.ATTR_FLAGGED),
        html.Div([
            html.Span("Refine: exact patching of the top", className="toolbar-label"),
            dbc.Input(id=ids.ATTR_REFINE_K, type="number", min=1, max=refine_handlers.MAX_REFINE_K, step=1,
                      value=10, size="sm", className="pair-input"),
            html.Span("attribution cells", className="toolbar-label"),
            dbc.Button("Refine top-k", id=ids.ATTR_REFINE_BUTTON, color="primary", outline=True, size="sm",
                       n_clicks=0),
        ], className="toolbar refine-row"),
        html.Div(id=ids.ATTR_REFINE_STATUS, className="hint"),
        html.Div(id=ids.ATTR_REFINE_TABLE),
    ], className="compare-section")


# -- render helpers (pure) ----------------------------------------------------------------------------
def render_flagged(agreement, rows: list[dict]):
    """The flagged cells as a table with a summary line (thresholds named), or a hint."""
    if agreement is None:
        return html.Div()
    head = html.Div([html.Span(agreement.summary()),
                     html.Span(f" · flags: missed = |exact| ≥ {agreement.large:g} × {agreement.scale:.3g} (the largest "
                               f"exact effect) while the estimate is < {agreement.small:g} × that or of the other sign; "
                               f"invented = the reverse", className="field-hint")], className="hint")
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


# -- callbacks ----------------------------------------------------------------------------------------
_FORM_INPUTS = (ids.MODEL_SELECT, ids.CLEAN_PROMPT, ids.CORRUPT_PROMPT, ids.ANSWER_TOKEN, ids.WRONG_TOKEN,
                ids.PREPEND_BOS, ids.PAIRS_STORE, ids.KIND_SELECT, ids.METRIC_SELECT, ids.DIRECTION_SELECT,
                ids.PER_POSITION, ids.LAYERS_FILTER, ids.POSITIONS_FILTER, ids.HEADS_FILTER)


def register(app, registry, store, data_dir: str | Path, *, slow_seconds: float = SLOW_SECONDS) -> SimpleNamespace:
    """Wire the cost preview and the exact-vs-attribution callbacks; returns them (for tests)."""
    data_dir = Path(data_dir)
    # one calibration per model, for this app, timed as the jobs will run (fork_guard)
    calibrations = CalibrationCache(fork_guard.job_like_calibration)

    def cost_preview(model, clean, corrupt, answer, wrong, bos, pairs, kind, metric, direction, per_position,
                     layers, positions, heads):
        """Form -> the estimate line, the suggestion text and whether the suggestion is hidden.
        While a run holds the run slot the estimate waits: its two forwards would compete with
        the run for the device's memory, and its timing would be skewed."""
        from dashboard.handlers import run_busy
        if run_busy(data_dir):
            return PAUSED, "", True
        form = Form.from_values(model=model, clean=clean, corrupt=corrupt, answer=answer, wrong=wrong,
                                prepend_bos="bos" in (bos or []), pairs=pairs, kind=kind, metric=metric,
                                direction=direction, per_position="per" in (per_position or []),
                                layers=layers, positions=positions, heads=heads)
        try:
            view = cost_handlers.cost_view(registry, calibrations, form, slow_seconds)
        except Exception:                      # a preview must never break the page
            log.exception("cost preview failed")
            return "", "", True
        return view.text, view.suggestion, not view.slow

    app.callback(Output(ids.COST_ESTIMATE, "children"), Output(ids.COST_SUGGESTION, "children"),
                 Output(ids.COST_SUGGESTION + "-box", "hidden"),
                 *[Input(i, "data" if i == ids.PAIRS_STORE else "value") for i in _FORM_INPUTS])(cost_preview)

    def attribution_first(n_clicks, kind, per_position, attr_clicks):
        """The suggestion's button: the Attribution tab, the same kind, and its Run pressed."""
        if not n_clicks:
            return no_update, no_update, no_update, no_update
        return ids.TAB_ATTRIBUTION, [kind] if kind else [], list(per_position or []), (attr_clicks or 0) + 1

    app.callback(Output(ids.TABS, "active_tab", allow_duplicate=True), Output(ids.ATTR_KINDS, "value"),
                 Output(ids.ATTR_PER_POSITION, "value"), Output(ids.ATTR_RUN_BUTTON, "n_clicks"),
                 Input(ids.COST_ATTRIBUTION_BUTTON, "n_clicks"), State(ids.KIND_SELECT, "value"),
                 State(ids.PER_POSITION, "value"), State(ids.ATTR_RUN_BUTTON, "n_clicks"),
                 prevent_initial_call=True)(attribution_first)

    def compare_view(agreement_children, att_id, kind):
        """After the agreement line changes: the scatter and flagged table from the kept exact
        sweep (empty when there is none, e.g. the line was cleared for another run or kind)."""
        empty = figures.empty_figure(COMPARE_HINT, 260)
        if not att_id or not kind or not agreement_children:
            return empty, html.Div()
        try:
            run = store.get_attribution(att_id)
            agreement = refine_handlers.compare_run(registry, run, kind, data_dir, compute=False)
        except (ValueError, KeyError) as exc:
            return figures.empty_figure(str(exc), 260), html.Div()
        if agreement is None:
            return empty, html.Div()
        return (figures_compare.agreement_scatter(agreement),
                render_flagged(agreement, refine_handlers.flagged_rows(agreement)))

    app.callback(Output(ids.ATTR_COMPARE_FIGURE, "figure"), Output(ids.ATTR_FLAGGED, "children"),
                 Input(ids.ATTR_AGREEMENT, "children"), State(ids.ATTR_RUN, "data"),
                 State(ids.ATTR_SHOW_KIND, "value"))(compare_view)

    def refine_top(n_clicks, k, att_id, kind):
        """Refine top-k (queued like a run): exact patching of the k best attribution cells."""
        from dashboard.handlers import run_slot
        if not n_clicks:
            return no_update, no_update
        if not att_id or not kind:
            return html.Span("Run attribution first; refine runs exact patching of its top cells.",
                             className="error-text"), html.Div()
        try:
            run = store.get_attribution(att_id)
            with run_slot(data_dir):
                refined, rows = refine_handlers.refine_run(registry, run, kind, k)
        except ValueError as exc:
            return html.Span(str(exc), className="error-text"), html.Div()
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

    return SimpleNamespace(cost_preview=cost_preview, attribution_first=attribution_first,
                           compare_view=compare_view, refine_top=refine_top, clear_refine=clear_refine,
                           calibrations=calibrations)
