"""The page: a prompts + run panel on the left, results / history / later panels on the right.

Built with dash-bootstrap-components; Bootstrap's CSS is served from `assets/` (no CDN), and
`assets/style.css` holds the few rules of our own. Render helpers (`render_*`) turn handler
data into components and are pure too.
"""
from __future__ import annotations

import time
from pathlib import Path

import dash_bootstrap_components as dbc
from dash import dcc, html

from dashboard import circuit_tab, cost_refine, figures, handlers, ids, lens_tab, neurons_tab, share
from dashboard.handlers import TokenView

PERSIST = dict(persistence=True, persistence_type="local")   # typed text survives a reload
SAMPLE = ("When Mary and John went to the store, John gave a drink to",
          "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")


def _label(text: str, for_id: str | None = None, hint: str | None = None):
    children = [text] + ([html.Span(hint, className="field-hint")] if hint else [])
    return dbc.Label(children, html_for=for_id, className="field-label")


def _graph(id_: str, message: str, height: int = 340, image_format: str = "png") -> dcc.Graph:
    return dcc.Graph(id=id_, figure=figures.empty_figure(message, height),
                     config=figures.graph_config(image_format, id_), className="graph")


def prompts_card(registry, model: str) -> dbc.Card:
    presets = handlers.preset_options()
    return dbc.Card([
        dbc.CardHeader(html.H2("Prompts", className="card-title-sm")),
        dbc.CardBody([
            _label("Model", ids.MODEL_SELECT),
            dcc.Dropdown(id=ids.MODEL_SELECT, options=handlers.model_options(registry), value=model,
                         clearable=False, className="mb-1"),
            html.Div(id=ids.MODEL_STATUS, className="model-status"),
            html.Div([
                html.Div([
                    _label("Preset", ids.PRESET_SELECT, "fills the prompts from a task family"),
                    dcc.Dropdown(id=ids.PRESET_SELECT, options=presets, value=None,
                                 placeholder="Choose a task…" if presets else "no task presets installed",
                                 disabled=not presets),
                ], className="preset-main"),
                html.Div([
                    _label("Pairs", ids.PRESET_COUNT),
                    dbc.Input(id=ids.PRESET_COUNT, type="number", min=1, max=handlers.MAX_PRESET_PAIRS,
                              step=1, value=1, size="sm"),
                ], className="preset-count"),
            ], className="preset-row"),
            _label("Clean prompt", ids.CLEAN_PROMPT, "the model does the behaviour"),
            dbc.Textarea(id=ids.CLEAN_PROMPT, value=SAMPLE[0], rows=2, debounce=0.3, spellcheck=False,
                         **PERSIST),
            _label("Corrupt prompt", ids.CORRUPT_PROMPT, "minimally changed; same token count"),
            dbc.Textarea(id=ids.CORRUPT_PROMPT, value=SAMPLE[1], rows=2, debounce=0.3, spellcheck=False,
                         **PERSIST),
            dbc.Row([
                dbc.Col([_label("Answer token", ids.ANSWER_TOKEN),
                         dbc.Input(id=ids.ANSWER_TOKEN, value=SAMPLE[2], debounce=0.3, **PERSIST)]),
                dbc.Col([_label("Wrong token", ids.WRONG_TOKEN),
                         dbc.Input(id=ids.WRONG_TOKEN, value=SAMPLE[3], debounce=0.3, **PERSIST)]),
            ], className="g-2"),
            html.Div("Leading spaces matter: ' Mary' and 'Mary' are different tokens.",
                     className="field-hint block"),
            dbc.Checklist(id=ids.PREPEND_BOS, options=[{"label": "Prepend BOS token", "value": "bos"}],
                          value=["bos"], switch=True, className="mt-2"),
            _label("Pairs CSV", ids.PAIRS_UPLOAD, "columns clean,corrupt,answer,wrong"),
            dcc.Upload(id=ids.PAIRS_UPLOAD, multiple=False, accept=".csv,text/csv",
                       className="upload-box",
                       children=html.Div(["Drop a pairs CSV here or ", html.A("choose a file")])),
            html.Div(id=ids.PAIRS_PREVIEW),
            html.Div(id=ids.TOKEN_VIEW, className="token-view"),
        ]),
    ], className="panel-card")


def run_card() -> dbc.Card:
    return dbc.Card([
        dbc.CardHeader(html.H2("Patch", className="card-title-sm")),
        dbc.CardBody([
            _label("Kind", ids.KIND_SELECT),
            dcc.Dropdown(id=ids.KIND_SELECT, options=handlers.kind_options(), value="head_out",
                         clearable=False),
            dbc.Checklist(id=ids.PER_POSITION, options=[{"label": "one cell per position (head kinds)",
                                                         "value": "per"}],
                          value=[], switch=True, className="mt-1"),
            _label("Metric", ids.METRIC_SELECT),
            dcc.Dropdown(id=ids.METRIC_SELECT, options=handlers.metric_options(), value="logit_diff",
                         clearable=False),
            _label("Direction", ids.DIRECTION_SELECT),
            dbc.RadioItems(id=ids.DIRECTION_SELECT, options=handlers.direction_options(),
                           value="denoise", className="direction"),
            html.Details([
                html.Summary("Filters (optional)"),
                dbc.Row([
                    dbc.Col([_label("Layers", ids.LAYERS_FILTER),
                             dbc.Input(id=ids.LAYERS_FILTER, placeholder="all, e.g. 0-2,5", size="sm",
                                       debounce=True)]),
                    dbc.Col([_label("Positions", ids.POSITIONS_FILTER),
                             dbc.Input(id=ids.POSITIONS_FILTER, placeholder="all", size="sm",
                                       debounce=True)]),
                    dbc.Col([_label("Heads", ids.HEADS_FILTER),
                             dbc.Input(id=ids.HEADS_FILTER, placeholder="all, e.g. 1.4,2.0", size="sm",
                                       debounce=True)]),
                ], className="g-2"),
            ], className="filters"),
            cost_refine.cost_line(),
            html.Div([
                dbc.Button("Run", id=ids.RUN_BUTTON, color="primary", className="run-button", n_clicks=0),
                dbc.Button("Cancel", id=ids.CANCEL_BUTTON, color="secondary", outline=True,
                           disabled=True, n_clicks=0),
            ], className="run-row"),
            dbc.Progress(id=ids.PROGRESS, value=0, max=1, label="", className="run-progress"),
            html.Div(id=ids.PROGRESS_TEXT, className="progress-text"),
            html.Div(id=ids.RUN_STATUS, className="run-status"),
            html.Div(id=ids.BASELINES, className="baselines"),
            html.Div(id=ids.ERROR_MESSAGE, role="alert", className="error-message"),
        ]),
    ], className="panel-card")


def results_tab() -> html.Div:
    return html.Div([
        share.results_header(),
        html.Div(id=ids.RESULTS_SUMMARY, className="results-summary"),
        html.Div([
            dbc.RadioItems(id=ids.VALUE_MODE, inline=True, value="normalized",
                           options=[{"label": "raw", "value": "raw"},
                                    {"label": "normalized", "value": "normalized"}],
                           className="btn-group-toggle", input_class_name="btn-check",
                           label_class_name="btn btn-outline-primary btn-sm",
                           label_checked_class_name="active"),
            html.Div([
                html.Span("Image export", className="toolbar-label"),
                dbc.RadioItems(id=ids.IMAGE_FORMAT, inline=True, value="png",
                               options=[{"label": "PNG", "value": "png"}, {"label": "SVG", "value": "svg"}]),
            ], className="toolbar-group"),
            dbc.Button("Download CSV", id=ids.DOWNLOAD_CSV_BUTTON, color="primary", outline=True,
                       size="sm", disabled=True, n_clicks=0),
            dcc.Download(id=ids.DOWNLOAD_CSV),
        ], className="toolbar"),
        _graph(ids.RESULTS_HEATMAP, "Run a sweep to see its heatmap here."),
        share.provenance_panel(),
        html.Div([
            html.H3("Counterfactual attention", className="section-title"),
            html.Div("Click a head cell of the heatmap (head kinds) to see that head's clean, corrupt "
                     "and patched attention patterns and their differences.",
                     id=ids.ATTENTION_STATUS, className="hint"),
            html.Div([
                html.Span("Pair", className="toolbar-label"),
                dbc.Input(id=ids.ATTENTION_PAIR, type="number", min=0, step=1, value=0, size="sm",
                          debounce=True, className="pair-input"),
                dbc.Button("Download attention CSV", id=ids.ATTENTION_DOWNLOAD_BUTTON, size="sm",
                           color="secondary", outline=True, disabled=True, n_clicks=0),
            ], className="toolbar"),
            dcc.Download(id=ids.ATTENTION_DOWNLOAD),
            _graph(ids.ATTENTION_DIFF, "No head selected yet.", height=260),
        ], className="attention-section"),
    ])


def history_tab() -> html.Div:
    return html.Div([
        html.H3("Run history", className="section-title"),
        html.Div("Every run is saved with its spec, prompts, baselines and result; it survives restarts.",
                 className="hint mb-2"),
        html.Div(id=ids.RUN_HISTORY, className="run-history"),
        share.history_section(),
        html.H3("Compare two runs", className="section-title mt-3"),
        html.Div([
            html.Div(dcc.Dropdown(id=ids.COMPARE_SELECT, multi=True, options=[], value=[],
                                  placeholder="Choose two runs…"), className="compare-select"),
            dbc.Button("Download compare CSV", id=ids.COMPARE_DOWNLOAD_BUTTON, size="sm", color="primary",
                       outline=True, disabled=True, n_clicks=0),
            dcc.Download(id=ids.COMPARE_DOWNLOAD),
        ], className="compare-row"),
        html.Div(id=ids.COMPARE_STATUS, className="hint mt-1"),
        _graph(ids.COMPARE_HEATMAP, "Choose two runs to compare them on one colour scale."),
        html.Div(id=ids.COMPARE_TABLE),
    ])


def _mode_toggle(id_: str) -> dbc.RadioItems:
    return dbc.RadioItems(id=id_, inline=True, value="normalized",
                          options=[{"label": "raw", "value": "raw"},
                                   {"label": "normalized", "value": "normalized"}],
                          className="btn-group-toggle mode-toggle", input_class_name="btn-check",
                          label_class_name="btn btn-outline-primary btn-sm", label_checked_class_name="active")


def _run_controls(run_id: str, cancel_id: str, progress_id: str, text_id: str, status_id: str,
                  baselines_id: str, label: str) -> html.Div:
    return html.Div([
        html.Div([
            dbc.Button(label, id=run_id, color="primary", className="run-button", n_clicks=0),
            dbc.Button("Cancel", id=cancel_id, color="secondary", outline=True, disabled=True, n_clicks=0),
        ], className="run-row"),
        dbc.Progress(id=progress_id, value=0, max=1, label="", className="run-progress"),
        html.Div(id=text_id, className="progress-text"),
        html.Div(id=status_id, className="run-status"),
        html.Div(id=baselines_id, className="baselines"),
    ], className="tab-run")


def path_tab() -> html.Div:
    """Path patching: receivers / senders / sweep / mode, run, heatmap or bars, CSV."""
    return html.Div([
        html.Div("Uses the prompts, metric and direction on the left. Errors appear in the red box there.",
                 className="hint mb-1"),
        dbc.Row([
            dbc.Col([
                _label("Receivers", ids.PATH_RECEIVERS, "comma-separated"),
                dbc.Input(id=ids.PATH_RECEIVERS, placeholder="logits", size="sm", debounce=True,
                          className="mono", **PERSIST),
                html.Div("q:L.H, k:L.H, v:L.H (a head's query / key / value input), mlp:L, or logits. "
                         "Empty: logits (senders sweep), every receiver after the sender (receivers sweep).",
                         className="field-hint block"),
            ], md=6),
            dbc.Col([
                _label("Senders", ids.PATH_SENDERS, "optional"),
                dbc.Input(id=ids.PATH_SENDERS, placeholder="every head", size="sm", debounce=True,
                          className="mono", **PERSIST),
                html.Div("head:L.H (or L.H), head:L.H@POS, mlp:L, resid:L@POS. Empty: every head "
                         "(layer × head). A receivers sweep takes exactly one.", className="field-hint block"),
            ], md=6),
        ], className="g-3"),
        dbc.Row([
            dbc.Col([_label("Sweep", ids.PATH_SWEEP),
                     dbc.RadioItems(id=ids.PATH_SWEEP, options=list(handlers.PATH_SWEEP_OPTIONS),
                                    value="senders")], md=4),
            dbc.Col([_label("Mode", ids.PATH_MODE),
                     dbc.RadioItems(id=ids.PATH_MODE, options=list(handlers.PATH_MODE_OPTIONS),
                                    value="heads_frozen")], md=5),
            dbc.Col([_label("Positions", ids.PATH_PER_POSITION),
                     dbc.Checklist(id=ids.PATH_PER_POSITION, switch=True, value=[],
                                   options=[{"label": "one cell per sender position", "value": "per"}])],
                    md=3),
        ], className="g-3"),
        _run_controls(ids.PATH_RUN_BUTTON, ids.PATH_CANCEL_BUTTON, ids.PATH_PROGRESS, ids.PATH_PROGRESS_TEXT,
                      ids.PATH_STATUS, ids.PATH_BASELINES, "Run path patching"),
        html.Div(id=ids.PATH_SUMMARY, className="results-summary"),
        html.Div([
            _mode_toggle(ids.PATH_VALUE_MODE),
            dbc.Button("Download CSV", id=ids.PATH_DOWNLOAD_BUTTON, color="primary", outline=True,
                       size="sm", disabled=True, n_clicks=0),
            dcc.Download(id=ids.PATH_DOWNLOAD),
        ], className="toolbar"),
        _graph(ids.PATH_FIGURE, "Run path patching to see each sender's effect through the receivers."),
        html.Div([
            html.H3("Receiver attention", className="section-title"),
            html.Div(PATH_ATTENTION_HINT, id=ids.PATH_ATTENTION_STATUS, className="hint"),
            _graph(ids.PATH_ATTENTION, "No sender selected yet.", height=260),
        ], className="attention-section"),
    ], id=ids.PATH_PANEL, className="tab-panel")


PATH_ATTENTION_HINT = ("Click a sender cell of an every-head sweep with a q, k or v receiver to see that "
                       "receiver head's attention: clean, corrupt, and with the receivers patched.")


def attribution_tab() -> html.Div:
    """Attribution patching: kinds, method, steps, run, a heatmap per kind, CSV, agreement."""
    return html.Div([
        html.Div("Gradient estimates of every kind's patching effect from one forward per prompt and one "
                 "backward. Uses the prompts, metric and direction on the left.", className="hint mb-1"),
        dbc.Row([
            dbc.Col([_label("Kinds", ids.ATTR_KINDS, "empty = all"),
                     dcc.Dropdown(id=ids.ATTR_KINDS, options=handlers.attribution_kind_options(), value=[],
                                  multi=True, placeholder="every kind")], md=6),
            dbc.Col([_label("Method", ids.ATTR_METHOD),
                     dbc.RadioItems(id=ids.ATTR_METHOD, options=list(handlers.ATTRIBUTION_METHOD_OPTIONS),
                                    value="plain")], md=3),
            dbc.Col([_label("IG steps", ids.ATTR_STEPS),
                     dbc.Input(id=ids.ATTR_STEPS, type="number", min=1, max=handlers.MAX_IG_STEPS, step=1,
                               value=16, size="sm", disabled=True),
                     dbc.Checklist(id=ids.ATTR_PER_POSITION, switch=True, value=[], className="mt-1",
                                   options=[{"label": "head kinds per position", "value": "per"}]),
                     dbc.Checklist(id=ids.ATTR_EDGES, switch=True, value=[],
                                   options=[{"label": "edge scores (EAP)", "value": "edges"}])], md=3),
        ], className="g-3"),
        _run_controls(ids.ATTR_RUN_BUTTON, ids.ATTR_CANCEL_BUTTON, ids.ATTR_PROGRESS, ids.ATTR_PROGRESS_TEXT,
                      ids.ATTR_STATUS, ids.ATTR_BASELINES, "Run attribution"),
        html.Div(id=ids.ATTR_SUMMARY, className="results-summary"),
        html.Div([
            html.Span("Show", className="toolbar-label"),
            html.Div(dcc.Dropdown(id=ids.ATTR_SHOW_KIND, options=[], value=None, clearable=False,
                                  placeholder="kind"), className="kind-show"),
            _mode_toggle(ids.ATTR_VALUE_MODE),
            dbc.Button("Download CSV (all kinds)", id=ids.ATTR_DOWNLOAD_BUTTON, color="primary", outline=True,
                       size="sm", disabled=True, n_clicks=0),
            dcc.Download(id=ids.ATTR_DOWNLOAD),
            dbc.Button("Compare with exact patching", id=ids.ATTR_AGREE_BUTTON, color="secondary",
                       outline=True, size="sm", disabled=True, n_clicks=0),
        ], className="toolbar"),
        html.Div(id=ids.ATTR_AGREEMENT, className="hint agreement"),
        _graph(ids.ATTR_FIGURE, "Run attribution to see every kind's estimated effect."),
        cost_refine.compare_section(),
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


def page(registry, model: str) -> html.Div:
    navbar = html.Header([
        html.Div([html.Span("Patchboard", className="brand"),
                  html.Span("activation patching", className="brand-sub")], className="brand-box"),
    ], className="topbar")
    return html.Div([
        navbar,
        share.location(),
        dcc.Store(id=ids.SESSION_ID, data=None),          # set in the browser on load (callbacks.py)
        dcc.Store(id=ids.CURRENT_RUN, storage_type="session"),
        dcc.Store(id=ids.PAIRS_STORE, data=None, storage_type="session"),
        dcc.Store(id=ids.HISTORY_VERSION, data=0),
        dcc.Store(id=ids.ATTENTION_CELL, data=None),
        dcc.Store(id=ids.PATH_RUN, storage_type="session"),
        dcc.Store(id=ids.ATTR_RUN, storage_type="session"),
        dbc.Container(dbc.Row([
            dbc.Col([prompts_card(registry, model), run_card()], lg=4, className="left-col"),
            dbc.Col(dbc.Card(dbc.CardBody(dbc.Tabs(id=ids.TABS, active_tab=ids.TAB_RESULTS, children=[
                dbc.Tab(results_tab(), label="Results", tab_id=ids.TAB_RESULTS),
                dbc.Tab(history_tab(), label="History & compare", tab_id=ids.TAB_HISTORY),
                dbc.Tab(path_tab(), label="Path patching", tab_id=ids.TAB_PATH),
                dbc.Tab(attribution_tab(), label="Attribution", tab_id=ids.TAB_ATTRIBUTION),
                dbc.Tab(lens_tab.layout(), label="Inspect", tab_id=lens_tab.TAB_INSPECT),
                dbc.Tab(neurons_tab.layout(), label="Neurons & weights", tab_id=neurons_tab.TAB_NEURONS),
                dbc.Tab(circuit_tab.layout(), label="Circuit", tab_id=circuit_tab.TAB_CIRCUIT),
            ])), className="panel-card results-card"), lg=8),
        ]), fluid=True, className="main"),
    ])


# -- render helpers (pure) ---------------------------------------------------------------------
def _chip(i: int, tok: str, diff: bool):
    shown = repr(tok)[1:-1].replace(" ", "␣") or "∅"      # spaces visible: ' Mary' -> ␣Mary
    return html.Span([html.Span(str(i), className="tok-i"), html.Span(shown, className="tok-t")],
                     className="tok tok-diff" if diff else "tok", title=repr(tok))


def render_token_view(view: TokenView | None, error: str | None = None):
    if view is None:
        return html.Div(error or "", className="hint error-text" if error else "hint")
    diff = set(view.differing)
    rows = []
    for name, toks in (("clean", view.clean), ("corrupt", view.corrupt)):
        rows.append(html.Div([html.Span(f"{name} · {len(toks)}", className="tok-row-label"),
                              html.Div([_chip(i, t, i in diff) for i, t in enumerate(toks)],
                                       className="tok-chips")], className="tok-row"))
    checks = []
    for text in (view.answer, view.wrong):
        if text:
            ok = "is one token" in text
            checks.append(html.Div(("✓ " if ok else "✗ ") + text,
                                   className="check-ok" if ok else "check-bad"))
    head = "Tokens" + (f" (pair 0 of {view.n_pairs} uploaded)" if view.n_pairs > 1 else "")
    legend = (f"{len(view.differing)} differing position{'s' if len(view.differing) != 1 else ''}: "
              f"{', '.join(map(str, view.differing))}" if view.differing else "no differing positions")
    return html.Div([html.Div([html.Span(head, className="field-label"),
                               html.Span(legend, className="field-hint")]), *rows, *checks])


def render_pairs_preview(pairs: list[dict] | None):
    if not pairs:
        return None
    shown = pairs[:handlers.PREVIEW_ROWS]
    header = html.Thead(html.Tr([html.Th("#")] + [html.Th(c) for c in ("clean", "corrupt", "answer", "wrong")]))
    body = html.Tbody([html.Tr([html.Td(i)] + [html.Td(repr(p[c]) if c in ("answer", "wrong") else p[c])
                                               for c in ("clean", "corrupt", "answer", "wrong")])
                       for i, p in enumerate(shown)])
    more = len(pairs) - len(shown)
    return html.Div([
        html.Div([html.Span(f"Using {len(pairs)} pairs instead of the prompts above",
                            className="pairs-note"),
                  dbc.Button("Clear", id=ids.PAIRS_CLEAR, size="sm", color="link", n_clicks=0)],
                 className="pairs-head"),
        html.Div(dbc.Table([header, body], size="sm", bordered=False, striped=True, className="pairs-table"),
                 className="pairs-scroll"),
        html.Div(f"… and {more} more" if more > 0 else "", className="hint"),
    ], className="pairs-preview")


def render_job(job):
    """A running, failed or cancelled background job in the history list (no Open: nothing was saved)."""
    when = time.strftime("%H:%M:%S", time.localtime(job.started))
    model = Path(job.model).name or job.model
    what = "running…" if job.status == "running" else f"{job.status}: {job.reason}" if job.reason else job.status
    return dbc.ListGroupItem([
        html.Div([html.Span(f"job {job.id}", className="run-id"), html.Span(job.label, className="run-label")]),
        html.Div(f"{model} · {job.kind} · started {when}", className="run-meta"),
        html.Div(what, className="job-reason" if job.status == "running" else "job-reason error-text"),
    ], className=f"job-item job-{job.status}")


def render_history(infos, current: int | None, jobs=()):
    """The saved runs and, among them by start time, the jobs that are running or did not finish."""
    if not infos and not jobs:
        return html.Div("No runs yet. Runs are saved here and survive restarts.", className="hint")
    items = []
    for j in jobs:
        items.append((j.started, render_job(j)))
    for r in infos:
        when = time.strftime("%H:%M:%S", time.localtime(r.created))
        model = Path(r.model).name or r.model
        meta = (f"{model} · {r.n_pairs} pair{'s' if r.n_pairs != 1 else ''} · "
                f"clean {r.clean_value:.3f} · corrupt {r.corrupt_value:.3f} · {when}"
                if r.clean_value is not None else f"{model} · {when}")
        items.append((r.created, dbc.ListGroupItem([
            html.Div([html.Span(f"#{r.id}", className="run-id"), html.Span(r.label, className="run-label")]),
            html.Div(meta, className="run-meta"),
            html.Div([
                dbc.Button("Open", id={"type": ids.HISTORY_OPEN, "run": r.id}, size="sm",
                           color="primary", outline=True, n_clicks=0),
                dbc.Button("Delete", id={"type": ids.HISTORY_DELETE, "run": r.id}, size="sm",
                           color="danger", outline=True, n_clicks=0),
            ], className="run-actions"),
        ], active=(r.id == current), className="run-item")))
    items.sort(key=lambda pair: -pair[0])
    return dbc.ListGroup([item for _, item in items], flush=True)


def render_top_tables(tables: list[tuple[str, list[dict]]]):
    cols = []
    for title, rows in tables:
        header = html.Thead(html.Tr([html.Th(c) for c in ("component", "token", "value", "normalized")]))
        body = html.Tbody([html.Tr([html.Td(r["component"]), html.Td(repr(r["token"]) if r["token"] else ""),
                                    html.Td(f"{r['value']:.4f}"),
                                    html.Td("" if r["normalized"] is None else f"{r['normalized']:.3f}")])
                           for r in rows])
        cols.append(dbc.Col([html.H4(title, className="table-title"),
                             dbc.Table([header, body], size="sm", striped=True, className="top-table")], md=6))
    return dbc.Row(cols)


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
