"""The Attribution tab: gradient estimates of every kind from one forward per prompt and one
backward (plain or integrated gradients, optionally EAP edge scores) over the left panel's
prompts, metric and direction; a heatmap per kind, the CSV of all kinds, the top edges, and the
exact-vs-attribution section (`tabs/exact.py`).

>>> attribution.register(app, ctx).show_attribution(3, "head_out", "raw")   # doctest: +SKIP
"""
from __future__ import annotations

from types import SimpleNamespace

import dash_bootstrap_components as dbc
from dash import Input, Output, State, dcc, html, no_update

from patching.runs.jobs import job_token

from dashboard import ids
from patching import figures
from dashboard.actions import baselines_text, execute_attribution, guarded
from dashboard.components import (background, done_status, graph, label, mode_toggle, prompt_states,
                                  register_cancel_notice, run_controls, summary_line)
from dashboard.forms import (ATTRIBUTION_METHOD_OPTIONS, MAX_IG_STEPS, AttributionForm, Form,
                             attribution_kind_options)
from dashboard.server.jobs import progress_reporter
from dashboard.tabs import exact
from dashboard.views import effective_mode


# -- pure views ---------------------------------------------------------------------------------
def attribution_summary(run) -> str:
    r = run.results[0]
    gap = r.clean_value - r.corrupt_value
    return (f"{run.label} · {r.n_pairs} pair{'s' if r.n_pairs != 1 else ''} · "
            f"clean {r.clean_value:.4f} · corrupt {r.corrupt_value:.4f} · gap {gap:.4f} · {r.seconds:.2f} s")


def attribution_view(run, kind: str | None, mode: str | None) -> tuple:
    """A stored attribution run and the kind to show (head_out, else the first, when it has no such
    kind) -> (heatmap, kind options, the kind shown, summary, top-edges table)."""
    kinds = [r.spec.kind for r in run.results]
    if kind not in kinds:
        kind = "head_out" if "head_out" in kinds else kinds[0]
    result = run.result(kind)
    mode, note = effective_mode(result, mode or "normalized")
    return (figures.result_figure(result, mode), [{"label": k, "value": k} for k in kinds], kind,
            summary_line(f"Attribution #{run.id}", attribution_summary(run), note),
            render_edges(top_edges(run.edges, 12), run.edges is not None))


def top_edges(edges, n: int = 12) -> list[dict]:
    """The n edges with the largest |score|, as table rows (upstream, downstream, score, normalized).

    >>> top_edges(edge_attribution(model, prompts), 3)[0].keys()      # doctest: +SKIP
    dict_keys(['upstream', 'downstream', 'score', 'normalized'])
    """
    if edges is None:
        return []
    df = edges.top(n)
    return [{"upstream": r.upstream, "downstream": r.downstream, "score": round(float(r.score), 4),
             "normalized": None if r.normalized != r.normalized else round(float(r.normalized), 3)}
            for r in df.itertuples()]


def render_edges(rows: list[dict] | None, asked: bool):
    """The top edges of an attribution run as a table (or a hint when edges were not asked for)."""
    if not rows:
        return html.Div("Turn on 'edge scores (EAP)' before Run attribution to score every edge between "
                        "embeddings, heads, MLPs and logits." if not asked else "No edges.", className="hint")
    header = html.Thead(html.Tr([html.Th(c) for c in ("upstream", "downstream", "score", "normalized")]))
    body = html.Tbody([html.Tr([html.Td(r["upstream"]), html.Td(r["downstream"]), html.Td(f"{r['score']:.4f}"),
                                html.Td("" if r["normalized"] is None else f"{r['normalized']:.3f}")])
                       for r in rows])
    return dbc.Table([header, body], size="sm", striped=True, className="top-table edges-table")


def layout() -> html.Div:
    """Attribution patching: kinds, method, steps, run, a heatmap per kind, CSV, agreement."""
    return html.Div([
        html.Div("Gradient estimates of every kind's patching effect from one forward per prompt and one "
                 "backward. Uses the prompts, metric and direction on the left.", className="hint mb-1"),
        dbc.Row([
            dbc.Col([label("Kinds", ids.ATTR_KINDS, "empty = all"),
                     dcc.Dropdown(id=ids.ATTR_KINDS, options=attribution_kind_options(), value=[],
                                  multi=True, placeholder="every kind")], md=6),
            dbc.Col([label("Method", ids.ATTR_METHOD),
                     dbc.RadioItems(id=ids.ATTR_METHOD, options=list(ATTRIBUTION_METHOD_OPTIONS),
                                    value="plain")], md=3),
            dbc.Col([label("IG steps", ids.ATTR_STEPS),
                     dbc.Input(id=ids.ATTR_STEPS, type="number", min=1, max=MAX_IG_STEPS, step=1,
                               value=16, size="sm", disabled=True),
                     dbc.Checklist(id=ids.ATTR_PER_POSITION, switch=True, value=[], className="mt-1",
                                   options=[{"label": "head and feature kinds per position", "value": "per"}]),
                     dbc.Checklist(id=ids.ATTR_EDGES, switch=True, value=[],
                                   options=[{"label": "edge scores (EAP)", "value": "edges"}])], md=3),
        ], className="g-3 tab-options"),
        run_controls(ids.ATTR_RUN_BUTTON, ids.ATTR_CANCEL_BUTTON, ids.ATTR_PROGRESS, ids.ATTR_PROGRESS_TEXT,
                      ids.ATTR_STATUS, ids.ATTR_BASELINES, "Run attribution", ids.ATTR_ERROR),
        html.Div(id=ids.ATTR_SUMMARY, className="results-summary"),
        html.Div([
            html.Span("Show", className="toolbar-label"),
            html.Div(dcc.Dropdown(id=ids.ATTR_SHOW_KIND, options=[], value=None, clearable=False,
                                  placeholder="kind"), className="kind-show"),
            mode_toggle(ids.ATTR_VALUE_MODE),
            dbc.Button("Download CSV (all kinds)", id=ids.ATTR_DOWNLOAD_BUTTON, color="primary", outline=True,
                       size="sm", disabled=True, n_clicks=0),
            dcc.Download(id=ids.ATTR_DOWNLOAD),
            dbc.Button("Compare with exact patching", id=ids.ATTR_AGREE_BUTTON, color="secondary",
                       outline=True, size="sm", disabled=True, n_clicks=0),
        ], className="toolbar"),
        html.Div(id=ids.ATTR_AGREEMENT, className="hint agreement"),
        graph(ids.ATTR_FIGURE, "Run attribution to see every kind's estimated effect."),
        exact.compare_section(),
        html.Div([
            html.Div([
                html.H3("Top edges", className="section-title"),
                dbc.Button("Download edges CSV", id=ids.ATTR_EDGES_DOWNLOAD_BUTTON, color="primary",
                           outline=True, size="sm", disabled=True, n_clicks=0),
                dcc.Download(id=ids.ATTR_EDGES_DOWNLOAD),
            ], className="toolbar"),
            html.Div(id=ids.ATTR_EDGES_TABLE),
        ], className="edges-section"),
    ], id=ids.ATTRIBUTION_PANEL, className="tab-panel")


# -- callbacks ----------------------------------------------------------------------------------
def register(app, ctx) -> SimpleNamespace:
    """Wire the tab (and its exact-vs-attribution section); returns the plain functions for tests."""
    return SimpleNamespace(**vars(_register_run(app, ctx)), **vars(_register_view(app, ctx)),
                           **vars(exact.register(app, ctx)))


def _register_run(app, ctx) -> SimpleNamespace:
    """The kinds the model has, Run (background, queued) and Cancel."""
    registry, store, data_dir = ctx.registry, ctx.store, ctx.data_dir

    def attribution_kinds_for(model):
        """The kinds select lists what the chosen model has."""
        try:
            m = ctx.model(model)
        except ValueError:
            return attribution_kind_options()
        return attribution_kind_options(m)

    app.callback(Output(ids.ATTR_KINDS, "options"), Input(ids.MODEL_SELECT, "value"))(attribution_kinds_for)

    app.callback(Output(ids.ATTR_STEPS, "disabled"), Input(ids.ATTR_METHOD, "value"))(
        lambda method: method != "ig")

    def run_attribution(set_progress, n_clicks, kinds, method, steps, per_position, edges, *prompt_and_session):
        """Run attribution for the chosen kinds (and edges): validate, queue, baselines, estimate, save."""
        if not n_clicks:
            return no_update, no_update, no_update
        *prompt, session = prompt_and_session
        form = Form.from_shared(*prompt)
        attr = AttributionForm(kinds=tuple(kinds or ()), method=method or "plain", steps=steps,
                                        per_position="per" in (per_position or []),
                                        edges="edges" in (edges or []))
        att_id, error = guarded("attribution run", lambda: execute_attribution(
            registry, store, form, attr, data_dir, report=progress_reporter(set_progress),
            token=job_token(session, ids.ATTR_RUN_BUTTON, n_clicks)))
        if error:
            return no_update, error, ""
        run = store.get_attribution(att_id)
        r = run.results[0]
        return att_id, "", done_status(
            f"Attribution run #{att_id}: {len(run.results)} kinds in {r.seconds:.2f} s.",
            baselines_text((r.clean_value, r.corrupt_value), r.spec.metric))

    app.callback(
        Output(ids.ATTR_RUN, "data"), Output(ids.ATTR_ERROR, "children"),
        Output(ids.ATTR_STATUS, "children"),
        Input(ids.ATTR_RUN_BUTTON, "n_clicks"),
        State(ids.ATTR_KINDS, "value"), State(ids.ATTR_METHOD, "value"), State(ids.ATTR_STEPS, "value"),
        State(ids.ATTR_PER_POSITION, "value"), State(ids.ATTR_EDGES, "value"), *prompt_states(),
        State(ids.SESSION_ID, "data"),
        **background(ids.ATTR_RUN_BUTTON, "Run attribution", ids.ATTR_CANCEL_BUTTON, ids.ATTR_PROGRESS,
                      ids.ATTR_PROGRESS_TEXT, ids.ATTR_BASELINES))(run_attribution)

    attribution_cancelled = register_cancel_notice(app, store, "Attribution run", ids.ATTR_CANCEL_BUTTON,
                                                    ids.ATTR_RUN_BUTTON, ids.ATTR_STATUS, ids.ATTR_PROGRESS,
                                                    ids.ATTR_PROGRESS_TEXT)
    return SimpleNamespace(attribution_kinds_for=attribution_kinds_for, run_attribution=run_attribution,
                           attribution_cancelled=attribution_cancelled)


def _register_view(app, ctx) -> SimpleNamespace:
    """The attribution run on screen: a kind's heatmap, summary, edges, the CSVs."""
    store = ctx.store

    def show_attribution(att_id, kind, mode):
        """The attribution run on screen + chosen kind -> its heatmap, the kind options, summary,
        buttons; the agreement line is cleared (it belongs to one kind)."""
        empty = figures.empty_figure("Run attribution to see every kind's estimated effect.")
        no_edges = render_edges(None, False)
        if not att_id:
            return empty, [], None, "", True, True, "", no_edges, True
        try:
            run = store.get_attribution(att_id)
        except ValueError as exc:
            return figures.empty_figure(str(exc)), [], None, "", True, True, "", no_edges, True
        fig, options, kind, summary, edges = attribution_view(run, kind, mode)
        return fig, options, kind, summary, False, False, "", edges, run.edges is None

    app.callback(Output(ids.ATTR_FIGURE, "figure"), Output(ids.ATTR_SHOW_KIND, "options"),
                 Output(ids.ATTR_SHOW_KIND, "value"), Output(ids.ATTR_SUMMARY, "children"),
                 Output(ids.ATTR_DOWNLOAD_BUTTON, "disabled"), Output(ids.ATTR_AGREE_BUTTON, "disabled"),
                 Output(ids.ATTR_AGREEMENT, "children"), Output(ids.ATTR_EDGES_TABLE, "children"),
                 Output(ids.ATTR_EDGES_DOWNLOAD_BUTTON, "disabled"),
                 Input(ids.ATTR_RUN, "data"), Input(ids.ATTR_SHOW_KIND, "value"),
                 Input(ids.ATTR_VALUE_MODE, "value"))(show_attribution)

    def attribution_image_config(att_id, kind):
        """The figure's image export, named by the attribution run and kind."""
        if not isinstance(att_id, int):
            return figures.graph_config("png", ids.ATTR_FIGURE)
        return figures.graph_config("png", f"patchboard-attribution{att_id}" + (f"-{kind}" if kind else ""))

    app.callback(Output(ids.ATTR_FIGURE, "config"), Input(ids.ATTR_RUN, "data"),
                 Input(ids.ATTR_SHOW_KIND, "value"))(attribution_image_config)

    def download_attribution(n_clicks, att_id):
        """Every kind of the attribution run in one contract CSV (method and steps columns after)."""
        if not n_clicks or not att_id:
            return no_update
        from patching.methods.attribution import attribution_csv
        run = store.get_attribution(att_id)
        r = run.results[0]
        return dcc.send_string(attribution_csv(run.results),
                               f"patchboard-attribution{run.id}-{r.method_label}-{r.spec.direction}.csv")

    app.callback(Output(ids.ATTR_DOWNLOAD, "data"), Input(ids.ATTR_DOWNLOAD_BUTTON, "n_clicks"),
                 State(ids.ATTR_RUN, "data"), prevent_initial_call=True)(download_attribution)

    def download_edges(n_clicks, att_id):
        """The run's edge scores: upstream, downstream, score, abs_score, normalized, method, ..."""
        if not n_clicks or not att_id:
            return no_update
        run = store.get_attribution(att_id)
        if run.edges is None:
            return no_update
        return dcc.send_string(run.edges.to_csv(), f"patchboard-attribution{run.id}-edges.csv")

    app.callback(Output(ids.ATTR_EDGES_DOWNLOAD, "data"), Input(ids.ATTR_EDGES_DOWNLOAD_BUTTON, "n_clicks"),
                 State(ids.ATTR_RUN, "data"), prevent_initial_call=True)(download_edges)
    return SimpleNamespace(show_attribution=show_attribution, attribution_image_config=attribution_image_config,
                           download_attribution=download_attribution,
                           download_edges=download_edges)
