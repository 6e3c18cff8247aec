"""The left panel's run card: kind, per-position, metric, direction, filters, the cost preview
(`panel/cost.py`), Run / Cancel with progress, and live validation into `error-message`.

>>> run_card.register(app, ctx).validate(...)                              # doctest: +SKIP
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace

import dash_bootstrap_components as dbc
from dash import Input, Output, State, dcc, html, no_update

from patching.kinds import KINDS
from patching.runs.jobs import cancel_job, job_token, running_jobs

from dashboard import ids
from dashboard.actions import execute_run, guarded
from dashboard.components import (background, label, page_inputs, page_values_error, register_cancel_notice,
                                  saved_status)
from dashboard.forms import Form, direction_options, kind_options, metric_options, metric_suggestion, parse_form
from dashboard.panel import cost
from dashboard.server.jobs import progress_reporter
from dashboard.server.shards import MAX_DASHBOARD_SHARDS, parse_shards, shard_control

# a random id per page load, made in the browser: it names the page's jobs for Cancel
_SESSION_ID = """function(_) { return (window.crypto && crypto.randomUUID) ? crypto.randomUUID()
                 : Date.now().toString(36) + Math.random().toString(36).slice(2); }"""


# kind, metric and direction survive a reload of this tab (sessionStorage); a second tab starts
# from the defaults rather than from whatever the first tab chose last
KEPT_ON_RELOAD = dict(persistence=True, persistence_type="session")


PER_POSITION_LABEL = "one cell per position (head and feature kinds)"
JOBS_POLL_MS = 1000       # how often a page looks for runs it did not start (a reload, another tab)
SHARDS_POLL_MS = 15000    # how often the Shards control looks for workers


@dataclass(frozen=True)
class AttachView:
    """What the run card shows of jobs this page did not start. `main` (progress value, max,
    label, text, Cancel disabled) is None when the card's own controls are left alone (this page
    runs something, or nothing changed); `waiting` is the job this page's queued run waits for."""
    attached: int | None
    main: tuple | None
    waiting: str = ""
    opened: int | None = None          # the run an attached sweep saved: put on screen when it ends


def attach_view(jobs, session: str | None, run_disabled: bool, attached: int | None, ended=None) -> AttachView:
    """Running jobs (`patching.runs.jobs.running_jobs`) -> the card's view. While this page runs
    nothing of its own, the job doing its work (else the first queued) takes the progress bar,
    its text (with the ETA) and Cancel; while this page's run waits, the job it waits for is named
    under it with a Cancel of its own. `ended`: the record (JobInfo) of the attached job once it
    is no longer running; a sweep it saved is opened.

    >>> attach_view([], "s", False, None)
    AttachView(attached=None, main=None, waiting='', opened=None)
    """
    others = [j for j in jobs if not j.started_by(session)]
    if run_disabled:                        # this page's own run owns the controls
        ahead = next((j for j in others if not j.queued), None)
        return AttachView(ahead.info.id if ahead else None, None, f"Ahead of it: {ahead.text()}" if ahead else "")
    if not others:
        if attached is None:
            return AttachView(None, None)
        if ended is not None and ended.status == "done" and ended.kind == "sweep" and ended.run_id is not None:
            return AttachView(None, (1, 1, "", f"Job {attached} finished: run #{ended.run_id} is on screen.", True),
                              opened=ended.run_id)
        how = f"ended ({ended.status}{': ' + ended.reason if ended.reason else ''})" if ended else "ended"
        return AttachView(None, (0, 1, "", f"Job {attached} {how}; anything it saved is in the history.", True))
    job = others[0]
    p = job.progress
    done, total = (p.done, p.total) if p is not None and p.total > 0 else (0, 1)
    label = f"{done} / {total}" if 0 < done < total else ""
    more = f" (+{len(others) - 1} queued)" if len(others) > 1 else ""
    text = f"Started elsewhere: {job.text()}{more}. Cancel stops it; Run queues behind it."
    return AttachView(job.info.id, (done, total, label, text, False))


def layout() -> dbc.Card:
    return dbc.Card([
        dbc.CardHeader(html.H2("Patch", className="card-title-sm")),
        dbc.CardBody([
            label("Kind", ids.KIND_SELECT),
            dcc.Dropdown(id=ids.KIND_SELECT, options=kind_options(), value="head_out",
                         clearable=False, **KEPT_ON_RELOAD),
            dbc.Checklist(id=ids.PER_POSITION, options=[{"label": PER_POSITION_LABEL,
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
                label("Shards", ids.SHARDS_INPUT),
                dbc.Input(id=ids.SHARDS_INPUT, type="number", min=1, max=MAX_DASHBOARD_SHARDS, step=1, value=1,
                          size="sm", disabled=True, className="shards-input"),
                html.Span(id=ids.SHARDS_NOTE, className="field-hint shards-note"),
                dcc.Interval(id=ids.SHARDS_POLL, interval=SHARDS_POLL_MS),
            ], className="shards-row"),
            html.Div([
                dbc.Button("Run", id=ids.RUN_BUTTON, color="primary", className="run-button", n_clicks=0),
                dbc.Button("Cancel", id=ids.CANCEL_BUTTON, color="secondary", outline=True,
                           disabled=True, n_clicks=0),
            ], className="run-row"),
            dbc.Progress(id=ids.PROGRESS, value=0, max=1, label="", className="run-progress"),
            html.Div(id=ids.PROGRESS_TEXT, className="progress-text"),
            html.Div([
                html.Span(id=ids.WAITING_FOR_TEXT),
                dbc.Button("Cancel that run", id=ids.WAITING_FOR_CANCEL, color="secondary", outline=True,
                           size="sm", n_clicks=0, className="ms-2"),
            ], id=ids.WAITING_FOR, hidden=True, className="progress-text waiting-for"),
            dcc.Interval(id=ids.JOBS_POLL, interval=JOBS_POLL_MS),
            dcc.Store(id=ids.ATTACHED_JOB, data=None),
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
        options = [{"label": PER_POSITION_LABEL, "value": "per", "disabled": not per_pos_ok}]
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
                  metric, direction, per_position, layers, positions, heads, session=None, shards=None):
        """The Run button: validate, queue, sweep (with progress; in shards over the workers when
        Shards > 1), save to history; the status says which workers took shards."""
        if not n_clicks:
            return no_update, no_update, no_update, no_update
        problem = page_values_error(model, clean, corrupt, answer, wrong, bos, pairs, kind, metric, direction,
                                    per_position, layers, positions, heads)
        if problem or not isinstance(n_clicks, int) or not isinstance(session, (str, type(None))):
            return no_update, problem or "the Run button's value is not a click count", no_update, ""
        try:
            n = parse_shards(shards)
        except ValueError as exc:
            return no_update, str(exc), no_update, ""
        form = Form.from_page(model, clean, corrupt, answer, wrong, bos, pairs, kind, metric, direction,
                              per_position, layers, positions, heads)
        took: list = []
        run_id, error = guarded("run", lambda: execute_run(
            registry, store, form, data_dir, report=progress_reporter(set_progress),
            token=job_token(session, ids.RUN_BUTTON, n_clicks), max_memory_mb=ctx.max_memory_mb,
            shards=n, backend=ctx.shards, on_shards=took.append))
        if error:
            return no_update, error, no_update, ""
        status = saved_status(store, run_id, "Run")
        if took:
            status.append(html.Div(f"{n} shards: {took[-1].line()}", className="shards-status"))
        return run_id, "", time.time(), status

    app.callback(
        Output(ids.CURRENT_RUN, "data"), Output(ids.ERROR_MESSAGE, "children"),
        Output(ids.HISTORY_VERSION, "data"), Output(ids.RUN_STATUS, "children"),
        Input(ids.RUN_BUTTON, "n_clicks"),
        *page_inputs(kind=State), State(ids.SESSION_ID, "data"), State(ids.SHARDS_INPUT, "value"),
        **background(ids.RUN_BUTTON, "Run", ids.CANCEL_BUTTON, ids.PROGRESS, ids.PROGRESS_TEXT,
                      ids.BASELINES))(run_sweep)

    cancelled = register_cancel_notice(app, store, "Run", ids.CANCEL_BUTTON, ids.RUN_BUTTON, ids.RUN_STATUS,
                                        ids.PROGRESS, ids.PROGRESS_TEXT, attached=ids.ATTACHED_JOB)

    # -- runs this page did not start: a reload mid-run, a second tab ------------------------------
    def watch_jobs(_n, session, run_disabled, attached):
        """Every JOBS_POLL_MS (and once the page has its session id): show the running job this
        page did not start, or the one its queued run waits for."""
        attached = attached if isinstance(attached, int) and not isinstance(attached, bool) else None
        jobs = running_jobs(store)
        ended = None
        if attached is not None and all(j.info.id != attached for j in jobs):
            try:
                ended = store.job(attached)
            except ValueError:                      # deleted meanwhile
                pass
        view = attach_view(jobs, session if isinstance(session, str) else None, bool(run_disabled), attached, ended)
        main = view.main if view.main is not None else (no_update,) * 5
        opened = (view.opened, time.time()) if view.opened is not None else (no_update, no_update)
        return (view.attached, *main, not view.waiting, view.waiting, *opened)

    app.callback(
        Output(ids.ATTACHED_JOB, "data"),
        Output(ids.PROGRESS, "value", allow_duplicate=True), Output(ids.PROGRESS, "max", allow_duplicate=True),
        Output(ids.PROGRESS, "label", allow_duplicate=True),
        Output(ids.PROGRESS_TEXT, "children", allow_duplicate=True),
        Output(ids.CANCEL_BUTTON, "disabled", allow_duplicate=True),
        Output(ids.WAITING_FOR, "hidden"), Output(ids.WAITING_FOR_TEXT, "children"),
        Output(ids.CURRENT_RUN, "data", allow_duplicate=True), Output(ids.HISTORY_VERSION, "data", allow_duplicate=True),
        Input(ids.JOBS_POLL, "n_intervals"), Input(ids.SESSION_ID, "data"),
        State(ids.RUN_BUTTON, "disabled"), State(ids.ATTACHED_JOB, "data"),
        prevent_initial_call=True)(watch_jobs)

    def cancel_waited_for(n_clicks, attached):
        """'Cancel that run': the job this page's queued run waits for."""
        if not n_clicks or not isinstance(attached, int) or isinstance(attached, bool):
            return no_update
        return (f"Cancel sent to job {attached}; this run starts when it has stopped."
                if cancel_job(store, attached) else f"Job {attached} has already ended.")

    app.callback(Output(ids.WAITING_FOR_TEXT, "children", allow_duplicate=True),
                 Input(ids.WAITING_FOR_CANCEL, "n_clicks"), State(ids.ATTACHED_JOB, "data"),
                 prevent_initial_call=True)(cancel_waited_for)

    def shards_state(_n):
        """Shards on only while workers answer; the note says why not, or who answers."""
        return shard_control(ctx.shards, ctx.celery_jobs)

    app.callback(Output(ids.SHARDS_INPUT, "disabled"), Output(ids.SHARDS_NOTE, "children"),
                 Input(ids.SHARDS_POLL, "n_intervals"))(shards_state)

    app.clientside_callback(_SESSION_ID, Output(ids.SESSION_ID, "data"), Input(ids.SESSION_ID, "id"))
    return SimpleNamespace(validate=validate, kind_controls=kind_controls, run_sweep=run_sweep, cancelled=cancelled,
                           watch_jobs=watch_jobs, cancel_waited_for=cancel_waited_for, metric_note=metric_note,
                           shards_state=shards_state)
