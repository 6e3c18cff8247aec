"""Dash pieces the panel and the tabs share: labelled fields, graphs, value-mode toggles, the run
controls of every Run (buttons, progress, the background-callback keywords, the cancel notice) and
the figure + table + CSV body of the view tabs (Inspect, Neurons & weights).

>>> run_controls("x-run", "x-cancel", "x-progress", "x-text", "x-status", "x-baselines", "Run").className
'tab-run'
"""
from __future__ import annotations

import logging

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, dash_table, dcc, html

from patching.runs.jobs import job_token
from patching.runs.limits import clip

from dashboard import ids
from patching import figures
from dashboard.actions import baselines_text

log = logging.getLogger("dashboard")
PERSIST = dict(persistence=True, persistence_type="local")   # typed text survives a reload
HIDDEN = {"display": "none"}

# the left panel's inputs, in the order `forms.Form.from_page` takes them
PROMPT_IDS = (ids.MODEL_SELECT, ids.CLEAN_PROMPT, ids.CORRUPT_PROMPT, ids.ANSWER_TOKEN, ids.WRONG_TOKEN,
              ids.PREPEND_BOS, ids.PAIRS_STORE)
FORM_IDS = PROMPT_IDS + (ids.KIND_SELECT, ids.METRIC_SELECT, ids.DIRECTION_SELECT, ids.PER_POSITION,
                         ids.LAYERS_FILTER, ids.POSITIONS_FILTER, ids.HEADS_FILTER)


def _prop(id_: str) -> str:
    return "data" if id_ == ids.PAIRS_STORE else "value"


def page_inputs(id_list=FORM_IDS, kind=Input) -> list:
    """Inputs (or States) of left-panel components, each on its value (the pairs store: data)."""
    return [kind(i, _prop(i)) for i in id_list]


def prompt_states() -> list[State]:
    """The left panel's prompts, metric and direction, which the path and attribution tabs share
    (the order `forms.Form.from_page` takes, metric and direction by keyword)."""
    return page_inputs(PROMPT_IDS + (ids.METRIC_SELECT, ids.DIRECTION_SELECT), State)


def triggered_value():
    """(triggered id, its value) of the running callback, or (None, None) outside a callback."""
    try:
        trig = dash.ctx.triggered
        return dash.ctx.triggered_id, (trig[0]["value"] if trig else None)
    except Exception:
        return None, None


# -- small pieces -------------------------------------------------------------------------------
def label(text: str, for_id: str | None = None, hint: str | None = None) -> dbc.Label:
    children = [text] + ([html.Span(hint, className="field-hint")] if hint else [])
    return dbc.Label(children, html_for=for_id, className="field-label")


def graph(id_: str, message: str, height: int = 340, image_format: str = "png") -> dcc.Graph:
    return dcc.Graph(id=id_, figure=figures.empty_figure(message, height),
                     config=figures.graph_config(image_format, id_), className="graph")


def error_text(message: str) -> html.Span:
    return html.Span(message, className="error-text")


def mode_toggle(id_: str, class_name: str = "btn-group-toggle mode-toggle") -> dbc.RadioItems:
    """raw / normalized as a button group (normalized on load)."""
    return dbc.RadioItems(id=id_, inline=True, value="normalized",
                          options=[{"label": "raw", "value": "raw"},
                                   {"label": "normalized", "value": "normalized"}],
                          className=class_name, input_class_name="btn-check",
                          label_class_name="btn btn-outline-primary btn-sm", label_checked_class_name="active")


def field(field_id: str, label_text: str, control) -> html.Div:
    """A labelled control in a div whose id the tab shows or hides per view."""
    return html.Div([dbc.Label(label_text, html_for=getattr(control, "id", None), className="field-label"),
                     control], id=field_id, className="inspect-field")


def radio(id_: str, options: dict, value: str) -> dbc.RadioItems:
    """Inline radio items from {value: label}."""
    return dbc.RadioItems(id=id_, value=value, inline=True,
                          options=[{"label": v, "value": k} for k, v in options.items()])


def number(id_: str, value, placeholder: str = "", min_=None) -> dbc.Input:
    """A small whole-number input that reports on blur / Enter (debounced)."""
    return dbc.Input(id=id_, type="number", value=value, step=1, min=min_, size="sm",
                     placeholder=placeholder, debounce=True, className="inspect-number")


def summary_line(title: str, text: str, note: str | None = None) -> list:
    """'Run #12' then the run's summary, and a note (e.g. why raw values are shown) under it."""
    return [html.Span(title, className="run-id"), text] + ([html.Div(note, className="error-text")] if note else [])


def done_status(text: str, baselines: str) -> list:
    return [html.Div(text), html.Div(baselines, className="baselines")]


TITLE_CHARS = 1_000        # a clipped text's hover title: more of it, still bounded


def clipped(text: object, limit: int = 80, className: str | None = None) -> html.Span:
    """Stored text as the page shows it: at most `limit` characters with an ellipsis, the title
    (hover) holding up to TITLE_CHARS, so a huge label cannot stall a visitor's browser.

    >>> clipped("x" * 500, 10).children
    'xxxxxxxxx…'
    """
    s = "" if text is None else text if isinstance(text, str) else str(text)
    short = clip(s, limit)
    return html.Span(short, className=className, title=clip(s, TITLE_CHARS) if short != s else None)


def wrong_type(value: object, name: str, *types: type) -> str | None:
    """The inline message for a callback value of the wrong type (a tampered request), or None.

    >>> wrong_type({"a": 1}, "run id", int, str)
    'run id must be int or str, not dict'
    """
    if value is None or (isinstance(value, types) and (bool in types or not isinstance(value, bool))):
        return None
    return f"{name} must be {' or '.join(t.__name__ for t in types)}, not {type(value).__name__}"


PAGE_FIELDS = ("model", "clean", "corrupt", "answer", "wrong", "bos", "pairs", "kind", "metric", "direction",
               "per_position", "layers", "positions", "heads")      # `page_inputs` order
PAGE_LISTS = ("bos", "pairs", "per_position")                        # checklists and the pairs store


def _pair_error(n: int, pair: object) -> str | None:
    values = [pair.get(k) for k in ("clean", "corrupt", "answer", "wrong")] if isinstance(pair, dict) else pair
    if not isinstance(values, (list, tuple)) or len(values) != 4 or not all(isinstance(v, str) for v in values):
        return f"pair {n} must be four strings (clean, corrupt, answer, wrong), not {type(pair).__name__}"
    return None


def page_values_error(*values: object) -> str | None:
    """The inline message when a left-panel value (in `page_inputs` order) has the wrong type —
    a tampered request, never the page itself — or None.

    >>> page_values_error("default", {"x": 1}, "b", " c", " d", [], None, "resid_pre")
    'clean must be str, not dict'
    """
    for name, value in zip(PAGE_FIELDS, values):
        problem = wrong_type(value, name.replace("_", " "), list if name in PAGE_LISTS else str)
        if problem:
            return problem
    pairs = values[6] if len(values) > 6 and isinstance(values[6], list) else []
    return next((e for n, p in enumerate(pairs) if (e := _pair_error(n, p))), None)


def saved_status(store, run_id: int, what: str) -> list:
    """'<what> #N saved to history (1.20 s).' and the run's baselines, from its history entry."""
    info = store.info(run_id)
    return done_status(f"{what} #{run_id} saved to history ({info.seconds:.2f} s).",
                       baselines_text((info.clean_value, info.corrupt_value), info.metric))


def send_run_csv(ctx, n_clicks, run_id, name):
    """The stored run as the contract CSV named `name(run)`; nothing when not clicked, or when the
    run is gone (deleted meanwhile) or the value is no run number."""
    run = ctx.find_run(run_id) if n_clicks and run_id else None
    if run is None:
        return dash.no_update
    return dcc.send_string(run.result.to_csv(), name(run))


# -- run controls ---------------------------------------------------------------------------------
def run_controls(run_id: str, cancel_id: str, progress_id: str, text_id: str, status_id: str,
                 baselines_id: str, label_text: str) -> html.Div:
    """Run and Cancel, the progress bar, its text, the status and the baselines line."""
    return html.Div([
        html.Div([
            dbc.Button(label_text, id=run_id, color="primary", className="run-button", n_clicks=0),
            dbc.Button("Cancel", id=cancel_id, color="secondary", outline=True, disabled=True, n_clicks=0),
        ], className="run-row"),
        dbc.Progress(id=progress_id, value=0, max=1, label="", className="run-progress"),
        html.Div(id=text_id, className="progress-text"),
        html.Div(id=status_id, className="run-status"),
        html.Div(id=baselines_id, className="baselines"),
    ], className="tab-run")


def background(run_button: str, idle_label: str, cancel_button: str, progress: str, progress_text: str,
               baselines: str) -> dict:
    """The keyword arguments every Run's background callback shares: the button disabled and
    relabelled while it runs, Cancel enabled, progress bar / text / baselines as progress."""
    return dict(
        background=True, interval=400,
        running=[(Output(run_button, "disabled"), True, False),
                 (Output(run_button, "children"), "Running…", idle_label),
                 (Output(cancel_button, "disabled"), False, True)],
        cancel=[Input(cancel_button, "n_clicks")],
        progress=[Output(progress, "value"), Output(progress, "max"), Output(progress, "label"),
                  Output(progress_text, "children"), Output(baselines, "children")],
        progress_default=[0, 1, "", "", ""],
        prevent_initial_call=True)


def register_cancel_notice(app, store, what: str, cancel_button: str, run_button: str, status: str,
                           progress: str, progress_text: str, attached: str | None = None):
    """After Cancel: record the request in the run store under the job's token (so a job still
    queued, or on a worker that missed Celery's revoke, stops too, and a killed one is listed as
    cancelled), say nothing was saved and reset the progress bar (sweep, path, attribution).
    With `attached` (a dcc.Store holding the id of a job this page shows but did not start, see
    panel/run_card.py), Cancel pressed while this page runs nothing of its own cancels that job."""
    def cancelled(n_clicks, run_clicks=None, session=None, run_disabled=None, attached_job=None):
        if not n_clicks:
            return dash.no_update, dash.no_update, dash.no_update, dash.no_update
        if attached_job is not None and not run_disabled:
            return _cancel_attached(store, attached_job)
        token = (job_token(session, run_button, run_clicks)
                 if isinstance(session, str) and isinstance(run_clicks, (int, type(None))) else None)
        if token:
            try:
                store.request_cancel(token)
            except Exception:                    # Dash's own cancel still stops the job
                log.warning("could not record the cancel request %s", token, exc_info=True)
        return (f"{what} cancelled; nothing was saved unless it had already finished (then it is in "
                "the history).", "", 0, "")

    extra = [State(run_button, "disabled"), State(attached, "data")] if attached else []
    app.callback(Output(status, "children", allow_duplicate=True),
                 Output(progress_text, "children", allow_duplicate=True),
                 Output(progress, "value", allow_duplicate=True),
                 Output(progress, "label", allow_duplicate=True),
                 Input(cancel_button, "n_clicks"), State(run_button, "n_clicks"), State(ids.SESSION_ID, "data"),
                 *extra, prevent_initial_call=True)(cancelled)
    return cancelled


def _cancel_attached(store, job_id) -> tuple:
    """Cancel a job another page started (`patching.runs.jobs.cancel_job`): the status line says so."""
    from patching.runs.jobs import cancel_job
    if not isinstance(job_id, int) or isinstance(job_id, bool):
        return f"the job to cancel must be a job number, not {type(job_id).__name__}", dash.no_update, \
            dash.no_update, dash.no_update
    try:
        stopping = cancel_job(store, job_id)
    except ValueError as exc:
        return str(exc), dash.no_update, dash.no_update, dash.no_update
    if not stopping:
        return f"Job {job_id} has already ended (see the history).", "", 0, ""
    return (f"Cancel sent to job {job_id}: it stops at its next progress report and saves nothing.",
            dash.no_update, dash.no_update, dash.no_update)


# -- view tabs (Inspect, Neurons & weights) ----------------------------------------------------------
def view_body(prefix: str, idle: str, *, text_left: bool = False, loading: bool = False) -> list:
    """Image format + CSV toolbar, status, the figure and a (hidden) sortable table; ids from
    `ids.view_ids(prefix)`."""
    v = ids.view_ids(prefix)
    cell = {"fontFamily": figures.FONT, "fontSize": 13, "padding": "4px 8px", **({"textAlign": "left"}
                                                                               if text_left else {})}
    graph_ = dcc.Graph(id=v.graph, figure=figures.empty_figure(idle),
                       config=figures.graph_config("png", f"patchboard-{prefix}"), className="graph")
    return [
        html.Div([
            html.Div([html.Span("Image export", className="toolbar-label"),
                      radio(v.image_format, {"png": "PNG", "svg": "SVG"}, "png")], className="toolbar-group"),
            dbc.Button("Download CSV", id=v.download_button, color="primary", outline=True,
                       size="sm", disabled=True, n_clicks=0),
            dcc.Download(id=v.download),
        ], className="toolbar"),
        html.Div(idle, id=v.status, className="hint", role="status"),
        # a long prompt's figure has a fixed width (figures.lens.sized_by_tokens): it scrolls here
        html.Div(dcc.Loading(graph_, type="dot", delay_show=400) if loading else graph_,
                 className="graph-scroll", style={"overflowX": "auto"}),
        html.Div(dash_table.DataTable(id=v.table, columns=[], data=[], sort_action="native",
                                      **({"markdown_options": {"html": False}} if text_left else {}),
                                      style_table={"overflowX": "auto"}, style_cell=cell,
                                      style_header={"fontWeight": 600}),
                 id=v.table_box, style=HIDDEN),
    ]


def register_view(app, prefix: str, tab_id: str, option_ids: tuple[str, ...], compute):
    """The view tabs' two callbacks: selectors + prompts -> figure, status, table, CSV button
    (computed while the tab is open), and the CSV of the view on screen. `compute(options, page)`
    returns an object with figure, summary, table, frame and filename; ValueError is shown inline.
    Returns (show, download), called as Dash calls them."""
    from patching.core.results import write_csv
    v = ids.view_ids(prefix)
    n = len(option_ids)

    def show(*values):
        """Selectors + prompts -> figure, config, status, table columns/data/visibility, CSV button."""
        options, (image_format, active_tab), page = values[:n], values[n:n + 2], values[n + 2:]
        if active_tab not in (None, tab_id):           # computed when the tab is open
            return (dash.no_update,) * 7
        config = figures.graph_config(image_format or "png", f"patchboard-{options[0] or prefix}")
        try:
            r = compute(options, page)
        except ValueError as exc:
            return figures.empty_figure(str(exc)), config, error_text(str(exc)), [], [], HIDDEN, True
        # the image export is named like the view's CSV: patchboard-lens-accumulated-clean-pair0.png
        config = figures.graph_config(image_format or "png", r.filename.rsplit(".", 1)[0])
        columns, data = r.table if r.table else ([], [])
        return r.figure, config, r.summary, columns, data, ({} if r.table else HIDDEN), False

    app.callback(
        Output(v.graph, "figure"), Output(v.graph, "config"), Output(v.status, "children"),
        Output(v.table, "columns"), Output(v.table, "data"), Output(v.table_box, "style"),
        Output(v.download_button, "disabled"),
        *[Input(i, "value") for i in option_ids], Input(v.image_format, "value"), Input(ids.TABS, "active_tab"),
        *page_inputs(PROMPT_IDS))(show)

    def download(n_clicks, *values):
        """The view on screen as CSV (formula-neutralised cells)."""
        if not n_clicks:
            return dash.no_update
        try:
            r = compute(values[:n], values[n:])
        except ValueError:
            return dash.no_update
        return dcc.send_string(write_csv(r.frame), r.filename)

    app.callback(Output(v.download, "data"), Input(v.download_button, "n_clicks"),
                 *[State(i, "value") for i in option_ids], *page_inputs(PROMPT_IDS, State),
                 prevent_initial_call=True)(download)
    return show, download
