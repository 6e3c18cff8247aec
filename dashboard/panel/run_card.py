"""The left panel's run card: kind, per-position, metric, direction, filters, the cost preview
(`panel/cost.py`), Run / Cancel with progress, and live validation into `error-message`.

>>> run_card.register(app, ctx).validate(...)                              # doctest: +SKIP
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import dash_bootstrap_components as dbc
from dash import Input, Output, State, dcc, html, no_update

from patching.kinds import KINDS
from patching.runs.jobs import job_token

from dashboard import ids
from dashboard.actions import execute_run, guarded
from dashboard.components import (background, label, page_inputs, page_values_error, register_cancel_notice,
                                  saved_status)
from dashboard.forms import Form, direction_options, kind_options, metric_options, metric_suggestion, parse_form
from dashboard.panel import cost
from dashboard.server.jobs import progress_reporter

# a random id per page load, made in the browser: it names the page's jobs for Cancel
_SESSION_ID = """function(_) { return (window.crypto && crypto.randomUUID) ? crypto.randomUUID()
                 : Date.now().toString(36) + Math.random().toString(36).slice(2); }"""


# kind, metric and direction survive a reload of this tab (sessionStorage); a second tab starts
# from the defaults rather than from whatever the first tab chose last
KEPT_ON_RELOAD = dict(persistence=True, persistence_type="session")


def layout() -> dbc.Card:
    return dbc.Card([
        dbc.CardHeader(html.H2("Patch", className="card-title-sm")),
        dbc.CardBody([
            label("Kind", ids.KIND_SELECT),
            dcc.Dropdown(id=ids.KIND_SELECT, options=kind_options(), value="head_out",
                         clearable=False, **KEPT_ON_RELOAD),
            dbc.Checklist(id=ids.PER_POSITION, options=[{"label": "one cell per position (head kinds)",
                                                         "value": "per"}],
                          value=[], switch=True, className="mt-1", **KEPT_ON_RELOAD),
            label("Metric", ids.METRIC_SELECT),
            dcc.Dropdown(id=ids.METRIC_SELECT, options=metric_options(), value="logit_diff",
                         clearable=False, **KEPT_ON_RELOAD),
            html.Div(id=ids.METRIC_NOTE, className="field-hint block metric-note"),
            label("Direction", ids.DIRECTION_SELECT),
            dbc.RadioItems(id=ids.DIRECTION_SELECT, options=direction_options(),
                           value="denoise", className="direction", **KEPT_ON_RELOAD),
            html.Details([
                html.Summary("Filters (optional)"),
                dbc.Row([
                    dbc.Col([label("Layers", ids.LAYERS_FILTER),
                             dbc.Input(id=ids.LAYERS_FILTER, placeholder="all, e.g. 0-2,5", size="sm",
                                       debounce=True)]),
                    dbc.Col([label("Positions", ids.POSITIONS_FILTER),
                             dbc.Input(id=ids.POSITIONS_FILTER, placeholder="all", size="sm",
                                       debounce=True)]),
                    dbc.Col([label("Heads", ids.HEADS_FILTER),
                             dbc.Input(id=ids.HEADS_FILTER, placeholder="all, e.g. 1.4,2.0", size="sm",
                                       debounce=True)]),
                ], className="g-2"),
            ], className="filters"),
            cost.cost_line(),
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


def register(app, ctx) -> SimpleNamespace:
    """Wire the card to `app`; returns the plain functions so tests call them directly."""
    registry, store, data_dir = ctx.registry, ctx.store, ctx.data_dir

    def validate(model, clean, corrupt, answer, wrong, bos, pairs, kind, metric, direction,
                 per_position, layers, positions, heads):
        """Live validation: what a Run would refuse, shown in error-message as the form changes."""
        problem = page_values_error(model, clean, corrupt, answer, wrong, bos, pairs, kind, metric, direction,
                                    per_position, layers, positions, heads)
        if problem:
            return problem
        form = Form.from_page(model, clean, corrupt, answer, wrong, bos, pairs, kind, metric, direction,
                              per_position, layers, positions, heads)
        try:
            parse_form(ctx.model(model), form)
        except ValueError as exc:
            return str(exc)
        return ""

    app.callback(
        Output(ids.ERROR_MESSAGE, "children", allow_duplicate=True),
        *page_inputs(), prevent_initial_call=True)(validate)

    def kind_controls(kind):
        """Per-position applies to head kinds; a heads filter to kinds with a head axis."""
        k = KINDS.get(kind) if isinstance(kind, str) else None
        per_pos_ok = bool(k and k.has_per_position)
        heads_ok = bool(k and "head" in k.index_axes)
        options = [{"label": "one cell per position (head kinds)", "value": "per", "disabled": not per_pos_ok}]
        return options, not heads_ok

    app.callback(Output(ids.PER_POSITION, "options"), Output(ids.HEADS_FILTER, "disabled"),
                 Input(ids.KIND_SELECT, "value"))(kind_controls)

    def metric_note(task, metric):
        """The chosen preset's task metric, suggested in words (the select stays the user's)."""
        return metric_suggestion(task, metric)

    app.callback(Output(ids.METRIC_NOTE, "children"),
                 Input(ids.PRESET_SELECT, "value"), Input(ids.METRIC_SELECT, "value"))(metric_note)

    # -- run (background) --------------------------------------------------------------------------
    def run_sweep(set_progress, n_clicks, model, clean, corrupt, answer, wrong, bos, pairs, kind,
                  metric, direction, per_position, layers, positions, heads, session=None):
        """The Run button: validate, queue, sweep (with progress), save to history."""
        if not n_clicks:
            return no_update, no_update, no_update, no_update
        problem = page_values_error(model, clean, corrupt, answer, wrong, bos, pairs, kind, metric, direction,
                                    per_position, layers, positions, heads)
        if problem or not isinstance(n_clicks, int) or not isinstance(session, (str, type(None))):
            return no_update, problem or "the Run button's value is not a click count", no_update, ""
        form = Form.from_page(model, clean, corrupt, answer, wrong, bos, pairs, kind, metric, direction,
                              per_position, layers, positions, heads)
        run_id, error = guarded("run", lambda: execute_run(
            registry, store, form, data_dir, report=progress_reporter(set_progress),
            token=job_token(session, ids.RUN_BUTTON, n_clicks)))
        if error:
            return no_update, error, no_update, ""
        return run_id, "", time.time(), saved_status(store, run_id, "Run")

    app.callback(
        Output(ids.CURRENT_RUN, "data"), Output(ids.ERROR_MESSAGE, "children"),
        Output(ids.HISTORY_VERSION, "data"), Output(ids.RUN_STATUS, "children"),
        Input(ids.RUN_BUTTON, "n_clicks"),
        *page_inputs(kind=State), State(ids.SESSION_ID, "data"),
        **background(ids.RUN_BUTTON, "Run", ids.CANCEL_BUTTON, ids.PROGRESS, ids.PROGRESS_TEXT,
                      ids.BASELINES))(run_sweep)

    cancelled = register_cancel_notice(app, store, "Run", ids.CANCEL_BUTTON, ids.RUN_BUTTON, ids.RUN_STATUS,
                                        ids.PROGRESS, ids.PROGRESS_TEXT)

    app.clientside_callback(_SESSION_ID, Output(ids.SESSION_ID, "data"), Input(ids.SESSION_ID, "id"))
    return SimpleNamespace(validate=validate, kind_controls=kind_controls, run_sweep=run_sweep, cancelled=cancelled,
                           metric_note=metric_note)
