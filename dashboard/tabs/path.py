"""The Path patching tab: receivers, senders, sweep and mode over the left panel's prompts, metric
and direction; Run (background, queued), a heatmap (every head) or bars (a receivers sweep), CSV,
and a receiver head's attention for a clicked sender.

>>> path.register(app, ctx).show_path(12, "raw")                         # doctest: +SKIP
"""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import dash_bootstrap_components as dbc
from dash import Input, Output, Patch, State, dcc, html, no_update

from patching.runs.jobs import job_token

from dashboard import ids
from patching import figures
from dashboard.actions import execute_path, guarded, path_label
from dashboard.components import (PERSIST, background, graph, label, mode_toggle, prompt_states,
                                  register_cancel_notice, run_controls, saved_status, send_run_csv, summary_line,
                                  triggered_value)
from dashboard.forms import PATH_MODE_OPTIONS, PATH_SWEEP_OPTIONS, Form, PathForm, node_list
from dashboard.server.jobs import progress_reporter
from dashboard.views import attention_for_cell, clicked_cell, effective_mode

IDLE = "Run path patching to see each sender's effect through the receivers."
PATH_ATTENTION_HINT = ("Click a sender cell of an every-head sweep with a q, k or v receiver to see that "
                       "receiver head's attention: clean, corrupt, and with the receivers patched.")


def path_summary(result) -> str:
    s = result.spec
    gap = result.clean_value - result.corrupt_value
    return (f"{Path(result.model_name or s.model).name} · {path_label(s)} · {result.n_pairs} "
            f"pair{'s' if result.n_pairs != 1 else ''} · clean {result.clean_value:.4f} · "
            f"corrupt {result.corrupt_value:.4f} · gap {gap:.4f} · {result.seconds:.2f} s")


def path_view(run, mode: str | None) -> tuple:
    """A stored path run -> (figure, summary): a heatmap (every head) or bars (a receivers sweep)."""
    mode, note = effective_mode(run.result, mode or "normalized")
    return (figures.result_figure(run.result, mode),
            summary_line(f"Run #{run.info.id}", path_summary(run.result), note))


def layout() -> html.Div:
    """Path patching: receivers / senders / sweep / mode, run (a refused run is said under its
    button), heatmap or bars, CSV — compact, so the Run button and the figure fit one screen."""
    return html.Div([
        html.Div("Uses the prompts, metric and direction on the left.", className="hint mb-1"),
        dbc.Row([
            dbc.Col([
                label("Receivers", ids.PATH_RECEIVERS, "comma-separated"),
                dbc.Input(id=ids.PATH_RECEIVERS, placeholder="logits", size="sm", debounce=True,
                          className="mono", **PERSIST),
                html.Div("q:L.H, k:L.H, v:L.H (a head's query / key / value input), mlp:L, or logits. "
                         "Empty: logits (senders sweep), every receiver after the sender (receivers sweep).",
                         className="field-hint block"),
            ], md=6),
            dbc.Col([
                label("Senders", ids.PATH_SENDERS, "optional"),
                dbc.Input(id=ids.PATH_SENDERS, placeholder="every head", size="sm", debounce=True,
                          className="mono", **PERSIST),
                html.Div("head:L.H (or L.H), head:L.H@POS, mlp:L, resid:L@POS. Empty: every head "
                         "(layer × head). A receivers sweep takes exactly one.", className="field-hint block"),
            ], md=6),
        ], className="g-3"),
        dbc.Row([
            dbc.Col([label("Sweep", ids.PATH_SWEEP),
                     dbc.RadioItems(id=ids.PATH_SWEEP, options=list(PATH_SWEEP_OPTIONS),
                                    value="senders")], md=4),
            dbc.Col([label("Mode", ids.PATH_MODE),
                     dbc.RadioItems(id=ids.PATH_MODE, options=list(PATH_MODE_OPTIONS),
                                    value="heads_frozen")], md=5),
            dbc.Col([label("Positions", ids.PATH_PER_POSITION),
                     dbc.Checklist(id=ids.PATH_PER_POSITION, switch=True, value=[],
                                   options=[{"label": "one cell per sender position", "value": "per"}])],
                    md=3),
        ], className="g-3 tab-options"),
        run_controls(ids.PATH_RUN_BUTTON, ids.PATH_CANCEL_BUTTON, ids.PATH_PROGRESS, ids.PATH_PROGRESS_TEXT,
                      ids.PATH_STATUS, ids.PATH_BASELINES, "Run path patching", ids.PATH_ERROR),
        html.Div(id=ids.PATH_SUMMARY, className="results-summary"),
        html.Div([
            mode_toggle(ids.PATH_VALUE_MODE),
            dbc.Button("Download CSV", id=ids.PATH_DOWNLOAD_BUTTON, color="primary", outline=True,
                       size="sm", disabled=True, n_clicks=0),
            dcc.Download(id=ids.PATH_DOWNLOAD),
        ], className="toolbar"),
        graph(ids.PATH_FIGURE, IDLE),
        html.Div([
            html.H3("Receiver attention", className="section-title"),
            html.Div(PATH_ATTENTION_HINT, id=ids.PATH_ATTENTION_STATUS, className="hint"),
            graph(ids.PATH_ATTENTION, "No sender selected yet.", height=260),
        ], className="attention-section"),
    ], id=ids.PATH_PANEL, className="tab-panel")


# -- callbacks ----------------------------------------------------------------------------------
def register(app, ctx) -> SimpleNamespace:
    """Wire the tab to `app`; returns the plain functions so tests call them directly."""
    return SimpleNamespace(**vars(_register_run(app, ctx)), **vars(_register_view(app, ctx)))


def _register_run(app, ctx) -> SimpleNamespace:
    """Run (background, one at a time), Cancel, and which options apply."""
    registry, store, data_dir = ctx.registry, ctx.store, ctx.data_dir

    def run_path(set_progress, n_clicks, receivers, senders, sweep, mode, per_position, *prompt_and_session):
        """Run path patching: validate, queue, sweep with progress, save to history."""
        if not n_clicks:
            return no_update, no_update, no_update, no_update
        *prompt, session = prompt_and_session
        form = Form.from_shared(*prompt)
        path = PathForm(receivers=receivers or "", senders=senders or "", sweep=sweep or "senders",
                        mode=mode or "heads_frozen", per_position="per" in (per_position or []))
        run_id, error = guarded("path run", lambda: execute_path(
            registry, store, form, path, data_dir, report=progress_reporter(set_progress),
            token=job_token(session, ids.PATH_RUN_BUTTON, n_clicks)))
        if error:
            return no_update, error, no_update, ""
        return run_id, "", time.time(), saved_status(store, run_id, "Path run")

    app.callback(
        Output(ids.PATH_RUN, "data"), Output(ids.PATH_ERROR, "children"),
        Output(ids.HISTORY_VERSION, "data", allow_duplicate=True), Output(ids.PATH_STATUS, "children"),
        Input(ids.PATH_RUN_BUTTON, "n_clicks"),
        State(ids.PATH_RECEIVERS, "value"), State(ids.PATH_SENDERS, "value"), State(ids.PATH_SWEEP, "value"),
        State(ids.PATH_MODE, "value"), State(ids.PATH_PER_POSITION, "value"), *prompt_states(),
        State(ids.SESSION_ID, "data"),
        **background(ids.PATH_RUN_BUTTON, "Run path patching", ids.PATH_CANCEL_BUTTON, ids.PATH_PROGRESS,
                      ids.PATH_PROGRESS_TEXT, ids.PATH_BASELINES))(run_path)

    path_cancelled = register_cancel_notice(app, store, "Path run", ids.PATH_CANCEL_BUTTON, ids.PATH_RUN_BUTTON,
                                             ids.PATH_STATUS, ids.PATH_PROGRESS, ids.PATH_PROGRESS_TEXT)

    def path_controls(sweep, senders):
        """Per position applies to the every-head senders sweep only."""
        ok = (sweep or "senders") == "senders" and not node_list(senders)
        return [{"label": "one cell per sender position", "value": "per", "disabled": not ok}]

    app.callback(Output(ids.PATH_PER_POSITION, "options"), Input(ids.PATH_SWEEP, "value"),
                 Input(ids.PATH_SENDERS, "value"))(path_controls)
    return SimpleNamespace(run_path=run_path, path_cancelled=path_cancelled, path_controls=path_controls)


def _register_view(app, ctx) -> SimpleNamespace:
    """The path run on screen: figure, summary, CSV, a receiver's attention."""

    def show_path(run_id, mode):
        """The path run on screen -> its figure (heatmap or bars), summary, CSV button."""
        if not run_id:
            return figures.empty_figure(IDLE), "", True
        try:
            run = ctx.run(run_id)
        except ValueError as exc:
            return figures.empty_figure(str(exc)), "", True
        return (*path_view(run, mode), False)

    app.callback(Output(ids.PATH_FIGURE, "figure"), Output(ids.PATH_SUMMARY, "children"),
                 Output(ids.PATH_DOWNLOAD_BUTTON, "disabled"),
                 Input(ids.PATH_RUN, "data"), Input(ids.PATH_VALUE_MODE, "value"))(show_path)

    def path_image_config(run_id):
        """The figure's image export, named by the run ('patchboard-run12-path')."""
        return figures.graph_config("png", f"patchboard-run{run_id}-path" if isinstance(run_id, int)
                                    else ids.PATH_FIGURE)

    app.callback(Output(ids.PATH_FIGURE, "config"), Input(ids.PATH_RUN, "data"))(path_image_config)

    def download_path(n_clicks, run_id):
        """The path run as the contract CSV, with sender / receiver / mode columns."""
        return send_run_csv(ctx, n_clicks, run_id, lambda run: (
            f"patchboard-run{run.info.id}-path-{run.result.spec.sweep}-{run.result.spec.mode}-"
            f"{run.result.spec.direction}.csv"))

    app.callback(Output(ids.PATH_DOWNLOAD, "data"), Input(ids.PATH_DOWNLOAD_BUTTON, "n_clicks"),
                 State(ids.PATH_RUN, "data"), prevent_initial_call=True)(download_path)

    def path_attention(click_data, run_id):
        """A click on a sender cell -> the first q/k/v receiver head's clean, corrupt and
        receivers-patched attention (pair 0)."""
        empty = figures.empty_figure("No sender selected yet.", 260)
        if triggered_value()[0] == ids.PATH_RUN or not click_data or not run_id:
            return empty, PATH_ATTENTION_HINT, no_update
        try:
            run = ctx.run(run_id)
            cell = clicked_cell(click_data)
            view = attention_for_cell(ctx.registry, run, cell, 0)
        except ValueError as exc:
            return empty, str(exc), no_update
        fig = figures.attention_diff(view.clean, view.corrupt, view.patched, view.str_tokens, title=view.title,
                                     corrupt_tokens=view.corrupt_tokens, patched_tokens=view.patched_tokens)
        outline = Patch()
        outline["layout"]["shapes"] = figures.cell_outline(run.result, cell)
        return fig, f"{view.title} — {view.note}", outline

    app.callback(Output(ids.PATH_ATTENTION, "figure"), Output(ids.PATH_ATTENTION_STATUS, "children"),
                 Output(ids.PATH_FIGURE, "figure", allow_duplicate=True),
                 Input(ids.PATH_FIGURE, "clickData"), Input(ids.PATH_RUN, "data"),
                 prevent_initial_call=True)(path_attention)
    return SimpleNamespace(path_image_config=path_image_config, show_path=show_path, download_path=download_path,
                           path_attention=path_attention)
