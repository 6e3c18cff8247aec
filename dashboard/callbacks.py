"""Thin callbacks: read inputs, call handlers / figures, return outputs.

`register` wires them to an app and returns the plain functions (a namespace), so the tests call
each one directly with ordinary arguments.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from types import SimpleNamespace

import dash
from dash import ALL, Input, Output, Patch, State, dcc, no_update

from patching.kinds import KINDS
from patching.core.results import write_csv

from dashboard import cost_refine, figures, handlers, ids, layout, share
from dashboard.server import jobs
from patching.runs import jobs as job_status
from patching.runs.jobs import job_token

log = logging.getLogger("dashboard")


def _form(model, clean, corrupt, answer, wrong, bos, pairs, kind=None, metric=None, direction=None,
          per_position=None, layers=None, positions=None, heads=None) -> handlers.Form:
    return handlers.Form.from_values(
        model=model, clean=clean, corrupt=corrupt, answer=answer, wrong=wrong,
        prepend_bos="bos" in (bos or []), pairs=pairs, kind=kind, metric=metric, direction=direction,
        per_position="per" in (per_position or []), layers=layers, positions=positions, heads=heads)


def _triggered_value():
    """(triggered id, its value) of the running callback, or (None, None) outside a callback."""
    try:
        trig = dash.ctx.triggered
        return dash.ctx.triggered_id, (trig[0]["value"] if trig else None)
    except Exception:
        return None, None


def register(app: dash.Dash, registry, store, data_dir: str | Path) -> SimpleNamespace:
    data_dir = Path(data_dir)

    # -- model ---------------------------------------------------------------------------------
    def model_status(name):
        """Load the chosen model here (in the server process, so runs inherit it)."""
        try:
            m = registry.get(handlers.check_model(registry, name))
        except ValueError as exc:
            return dash.html.Span(str(exc), className="error-text")
        share.warm_provenance(m)            # weights hash for provenance, inherited by forked runs
        kv = f" ({m.n_kv_heads} key/value)" if m.n_kv_heads != m.n_heads else ""
        where = m.device.type if registry.weights else "weights on the workers"
        return (f"{m.n_layers} layers · {m.n_heads} heads{kv} · d_model {m.cfg.d_model} · "
                f"context {m.n_ctx} · {where}")

    app.callback(Output(ids.MODEL_STATUS, "children"), Input(ids.MODEL_SELECT, "value"))(model_status)

    # -- presets and uploads ---------------------------------------------------------------------
    def fill_preset(task, count):
        """Preset -> the prompt fields (first pair) and, for several pairs, the pairs store."""
        if not task:
            return (no_update,) * 7
        try:
            pairs = handlers.preset_pairs(task, count)
        except ValueError as exc:
            return (no_update,) * 6 + (str(exc),)
        first = pairs[0]
        metric = handlers.preset_metric(task) or no_update
        return (first["clean"], first["corrupt"], first["answer"], first["wrong"],
                pairs if len(pairs) > 1 else None, metric, "")

    app.callback(
        Output(ids.CLEAN_PROMPT, "value"), Output(ids.CORRUPT_PROMPT, "value"),
        Output(ids.ANSWER_TOKEN, "value"), Output(ids.WRONG_TOKEN, "value"),
        Output(ids.PAIRS_STORE, "data"), Output(ids.METRIC_SELECT, "value"),
        Output(ids.ERROR_MESSAGE, "children", allow_duplicate=True),
        Input(ids.PRESET_SELECT, "value"), Input(ids.PRESET_COUNT, "value"),
        prevent_initial_call=True)(fill_preset)

    def upload_pairs(contents, filename):
        """An uploaded pairs CSV -> the pairs store (or the error); the upload is reset so the same
        file can be chosen again."""
        if not contents:
            return no_update, no_update, no_update
        try:
            pairs = handlers.parse_upload(contents, filename, handlers.upload_file_limit(
                app.server.config.get("MAX_CONTENT_LENGTH")))
        except ValueError as exc:
            return no_update, str(exc), None
        return pairs, "", None

    app.callback(
        Output(ids.PAIRS_STORE, "data", allow_duplicate=True),
        Output(ids.ERROR_MESSAGE, "children", allow_duplicate=True),
        Output(ids.PAIRS_UPLOAD, "contents"),
        Input(ids.PAIRS_UPLOAD, "contents"), State(ids.PAIRS_UPLOAD, "filename"),
        prevent_initial_call=True)(upload_pairs)

    def clear_pairs(n_clicks):
        return None if n_clicks else no_update

    app.callback(Output(ids.PAIRS_STORE, "data", allow_duplicate=True),
                 Input(ids.PAIRS_CLEAR, "n_clicks"), prevent_initial_call=True)(clear_pairs)
    app.config.suppress_callback_exceptions = True    # PAIRS_CLEAR exists only with a preview

    def pairs_preview(pairs):
        return layout.render_pairs_preview(pairs)

    app.callback(Output(ids.PAIRS_PREVIEW, "children"), Input(ids.PAIRS_STORE, "data"))(pairs_preview)

    # -- live token view ---------------------------------------------------------------------------
    def token_view(model, clean, corrupt, answer, wrong, bos, pairs):
        try:
            m = registry.get(handlers.check_model(registry, model))
        except ValueError as exc:
            return layout.render_token_view(None, f"model not available: {exc}")
        form = _form(model, clean, corrupt, answer, wrong, bos, pairs)
        try:
            view = handlers.token_view(m, form)
        except ValueError as exc:
            return layout.render_token_view(None, str(exc))
        return layout.render_token_view(view)

    app.callback(
        Output(ids.TOKEN_VIEW, "children"),
        Input(ids.MODEL_SELECT, "value"), Input(ids.CLEAN_PROMPT, "value"),
        Input(ids.CORRUPT_PROMPT, "value"), Input(ids.ANSWER_TOKEN, "value"),
        Input(ids.WRONG_TOKEN, "value"), Input(ids.PREPEND_BOS, "value"),
        Input(ids.PAIRS_STORE, "data"))(token_view)

    def validate(model, clean, corrupt, answer, wrong, bos, pairs, kind, metric, direction,
                 per_position, layers, positions, heads):
        """Live validation: what a Run would refuse, shown in error-message as the form changes."""
        form = _form(model, clean, corrupt, answer, wrong, bos, pairs, kind, metric, direction,
                     per_position, layers, positions, heads)
        try:
            handlers.parse_form(registry.get(handlers.check_model(registry, model)), form)
        except ValueError as exc:
            return str(exc)
        return ""

    app.callback(
        Output(ids.ERROR_MESSAGE, "children", allow_duplicate=True),
        Input(ids.MODEL_SELECT, "value"), Input(ids.CLEAN_PROMPT, "value"),
        Input(ids.CORRUPT_PROMPT, "value"), Input(ids.ANSWER_TOKEN, "value"),
        Input(ids.WRONG_TOKEN, "value"), Input(ids.PREPEND_BOS, "value"),
        Input(ids.PAIRS_STORE, "data"), Input(ids.KIND_SELECT, "value"),
        Input(ids.METRIC_SELECT, "value"), Input(ids.DIRECTION_SELECT, "value"),
        Input(ids.PER_POSITION, "value"), Input(ids.LAYERS_FILTER, "value"),
        Input(ids.POSITIONS_FILTER, "value"), Input(ids.HEADS_FILTER, "value"),
        prevent_initial_call=True)(validate)

    def kind_controls(kind):
        """Per-position applies to head kinds; a heads filter to kinds with a head axis."""
        k = KINDS.get(kind)
        per_pos_ok = bool(k and k.has_per_position)
        heads_ok = bool(k and "head" in k.index_axes)
        options = [{"label": "one cell per position (head kinds)", "value": "per", "disabled": not per_pos_ok}]
        return options, not heads_ok

    app.callback(Output(ids.PER_POSITION, "options"), Output(ids.HEADS_FILTER, "disabled"),
                 Input(ids.KIND_SELECT, "value"))(kind_controls)

    # -- run (background) --------------------------------------------------------------------------
    def run_sweep(set_progress, n_clicks, model, clean, corrupt, answer, wrong, bos, pairs, kind,
                  metric, direction, per_position, layers, positions, heads, session=None):
        """The Run button: validate, queue, baselines, sweep (with progress), save to history."""
        if not n_clicks:
            return no_update, no_update, no_update, no_update
        form = _form(model, clean, corrupt, answer, wrong, bos, pairs, kind, metric, direction,
                     per_position, layers, positions, heads)
        run_id, error = _guarded("run", lambda: handlers.execute_run(
            registry, store, form, data_dir, report=jobs.progress_reporter(set_progress),
            token=job_token(session, ids.RUN_BUTTON, n_clicks)))
        if error:
            return no_update, error, no_update, ""
        info = store.info(run_id)
        status = [dash.html.Div(f"Run #{run_id} saved to history ({info.seconds:.2f} s)."),
                  dash.html.Div(handlers.baselines_text((info.clean_value, info.corrupt_value), info.metric),
                                className="baselines")]
        return run_id, "", time.time(), status

    app.callback(
        Output(ids.CURRENT_RUN, "data"), Output(ids.ERROR_MESSAGE, "children"),
        Output(ids.HISTORY_VERSION, "data"), Output(ids.RUN_STATUS, "children"),
        Input(ids.RUN_BUTTON, "n_clicks"),
        State(ids.MODEL_SELECT, "value"), State(ids.CLEAN_PROMPT, "value"),
        State(ids.CORRUPT_PROMPT, "value"), State(ids.ANSWER_TOKEN, "value"),
        State(ids.WRONG_TOKEN, "value"), State(ids.PREPEND_BOS, "value"),
        State(ids.PAIRS_STORE, "data"), State(ids.KIND_SELECT, "value"),
        State(ids.METRIC_SELECT, "value"), State(ids.DIRECTION_SELECT, "value"),
        State(ids.PER_POSITION, "value"), State(ids.LAYERS_FILTER, "value"),
        State(ids.POSITIONS_FILTER, "value"), State(ids.HEADS_FILTER, "value"),
        State(ids.SESSION_ID, "data"),
        **_background(ids.RUN_BUTTON, "Run", ids.CANCEL_BUTTON, ids.PROGRESS, ids.PROGRESS_TEXT,
                      ids.BASELINES))(run_sweep)

    cancelled = _register_cancel_notice(app, store, "Run", ids.CANCEL_BUTTON, ids.RUN_BUTTON, ids.RUN_STATUS,
                                        ids.PROGRESS, ids.PROGRESS_TEXT)

    # a random id per page load, made in the browser: it names the page's jobs for Cancel
    app.clientside_callback(
        """function(_) { return (window.crypto && crypto.randomUUID) ? crypto.randomUUID()
                         : Date.now().toString(36) + Math.random().toString(36).slice(2); }""",
        Output(ids.SESSION_ID, "data"), Input(ids.SESSION_ID, "id"))

    # -- the run on screen ---------------------------------------------------------------------------
    def show_run(run_id, mode, image_format, cell=None):
        """current run + raw/normalized + image format -> heatmap, its config, summary, CSV button."""
        config = figures.graph_config(image_format or "png", "patchboard-heatmap")
        if not run_id:
            return (figures.empty_figure("Run a sweep to see its heatmap here."), config, "", True)
        try:
            run = store.get(handlers.parse_run_id(run_id))
        except ValueError as exc:
            return figures.empty_figure(str(exc)), config, "", True
        mode, note = handlers.effective_mode(run.result, mode or "normalized")
        fig = figures.result_figure(run.result, mode)
        if _triggered_value()[0] != ids.CURRENT_RUN:        # keep the clicked cell outlined
            fig.update_layout(shapes=figures.cell_outline(run.result, cell))
        summary = [dash.html.Span(f"Run #{run.info.id}", className="run-id"),
                   handlers.result_summary(run.result)] + ([dash.html.Div(note, className="error-text")]
                                                           if note else [])
        return fig, config, summary, False

    app.callback(
        Output(ids.RESULTS_HEATMAP, "figure"), Output(ids.RESULTS_HEATMAP, "config"),
        Output(ids.RESULTS_SUMMARY, "children"), Output(ids.DOWNLOAD_CSV_BUTTON, "disabled"),
        Input(ids.CURRENT_RUN, "data"), Input(ids.VALUE_MODE, "value"),
        Input(ids.IMAGE_FORMAT, "value"), State(ids.ATTENTION_CELL, "data"))(show_run)

    def download_csv(n_clicks, run_id):
        """The current run in the contract CSV format."""
        if not n_clicks or not run_id:
            return no_update
        try:
            run = store.get(handlers.parse_run_id(run_id))
        except ValueError:          # deleted meanwhile, or not a run number: nothing to send
            return no_update
        spec = run.result.spec
        name = f"patchboard-run{run.info.id}-{spec.kind}-{spec.direction}.csv"
        return dcc.send_string(run.result.to_csv(), name)

    app.callback(Output(ids.DOWNLOAD_CSV, "data"), Input(ids.DOWNLOAD_CSV_BUTTON, "n_clicks"),
                 State(ids.CURRENT_RUN, "data"), prevent_initial_call=True)(download_csv)

    # -- counterfactual attention --------------------------------------------------------------------
    def attention(click_data, run_id, image_format, pair=0):
        """A click on a head cell (or a new pair number) -> its attention patterns and differences."""
        config = figures.graph_config(image_format or "png", "patchboard-attention")
        trig, _ = _triggered_value()
        idle = "Click a head cell of the heatmap (head kinds) to see that head's attention patterns."
        empty = figures.empty_figure("No head selected yet.", 260)
        if trig == ids.CURRENT_RUN or not click_data or not run_id:
            return empty, config, idle, None, True, no_update
        cell = handlers.clicked_cell(click_data)
        try:
            pair = handlers.parse_pair(pair)
            run = store.get(handlers.parse_run_id(run_id))
            view = handlers.attention_for_cell(registry, run, cell, pair)
        except ValueError as exc:
            return empty, config, str(exc), None, True, no_update
        fig = figures.attention_diff(view.clean, view.corrupt, view.patched, view.str_tokens,
                                     title=view.title, note=view.note if view.patched is None else None)
        outline = Patch()
        outline["layout"]["shapes"] = figures.cell_outline(run.result, cell)
        status = f"{view.title} — {view.note}" if view.note else view.title
        return fig, config, status, {**cell, "pair": pair}, False, outline

    app.callback(
        Output(ids.ATTENTION_DIFF, "figure"), Output(ids.ATTENTION_DIFF, "config"),
        Output(ids.ATTENTION_STATUS, "children"), Output(ids.ATTENTION_CELL, "data"),
        Output(ids.ATTENTION_DOWNLOAD_BUTTON, "disabled"),
        Output(ids.RESULTS_HEATMAP, "figure", allow_duplicate=True),
        Input(ids.RESULTS_HEATMAP, "clickData"), Input(ids.CURRENT_RUN, "data"),
        Input(ids.IMAGE_FORMAT, "value"), Input(ids.ATTENTION_PAIR, "value"),
        prevent_initial_call=True)(attention)

    def download_attention(n_clicks, cell, run_id):
        if not n_clicks or not cell or not run_id:
            return no_update
        try:
            run = store.get(handlers.parse_run_id(run_id))
        except ValueError:
            return no_update
        view = handlers.attention_for_cell(registry, run, cell, int(cell.get("pair") or 0))
        text = write_csv(view.frame) if view.frame is not None else handlers.attention_csv(view)
        return dcc.send_string(text, f"patchboard-run{run_id}-attention-L{cell['layer']}H{cell['head']}.csv")

    app.callback(Output(ids.ATTENTION_DOWNLOAD, "data"), Input(ids.ATTENTION_DOWNLOAD_BUTTON, "n_clicks"),
                 State(ids.ATTENTION_CELL, "data"), State(ids.CURRENT_RUN, "data"),
                 prevent_initial_call=True)(download_attention)

    # -- history -----------------------------------------------------------------------------------
    def history(_version, run_id, _tab=None):
        """The history list and compare options; refreshed on save/delete and when the tab opens
        (runs from other tabs or users appear then)."""
        infos = store.list()
        options = [{"label": r.title, "value": r.id} for r in infos]
        jobs = job_status.unfinished_and_failed(store)     # killed / cancelled jobs are marked failed here
        return layout.render_history(infos, run_id, jobs), options

    app.callback(Output(ids.RUN_HISTORY, "children"), Output(ids.COMPARE_SELECT, "options"),
                 Input(ids.HISTORY_VERSION, "data"), Input(ids.CURRENT_RUN, "data"),
                 Input(ids.TABS, "active_tab"))(history)

    def open_run(clicks, trig=None):
        """An Open button -> that run on the Results tab."""
        trig, clicked = (trig, any(clicks or [])) if trig is not None else _triggered_value()
        if not trig or not clicked:      # buttons appearing (n_clicks 0) are not clicks
            return no_update, no_update
        return trig["run"], ids.TAB_RESULTS

    app.callback(Output(ids.CURRENT_RUN, "data", allow_duplicate=True), Output(ids.TABS, "active_tab"),
                 Input({"type": ids.HISTORY_OPEN, "run": ALL}, "n_clicks"),
                 prevent_initial_call=True)(lambda clicks: open_run(clicks))

    def delete_run(clicks, run_id, trig=None):
        """A Delete button -> the run is gone; the screen clears if it was on it."""
        trig, clicked = (trig, any(clicks or [])) if trig is not None else _triggered_value()
        if not trig or not clicked:
            return no_update, no_update
        store.delete(trig["run"])
        return time.time(), (None if run_id == trig["run"] else no_update)

    app.callback(Output(ids.HISTORY_VERSION, "data", allow_duplicate=True),
                 Output(ids.CURRENT_RUN, "data", allow_duplicate=True),
                 Input({"type": ids.HISTORY_DELETE, "run": ALL}, "n_clicks"),
                 State(ids.CURRENT_RUN, "data"),
                 prevent_initial_call=True)(lambda clicks, run_id: delete_run(clicks, run_id))

    # -- compare -------------------------------------------------------------------------------------
    def compare(selected, mode, image_format):
        config = figures.graph_config(image_format or "png", "patchboard-compare")
        selected = [s for s in (selected or []) if s is not None]
        if len(selected) != 2:
            msg = "Choose two runs." if len(selected) < 2 else \
                f"{len(selected)} runs chosen; compare takes exactly two (remove {len(selected) - 2})."
            return (figures.empty_figure("Choose two runs to compare them on one colour scale."),
                    config, None, msg)
        try:
            a, b = (store.get(handlers.parse_run_id(s)) for s in selected)
        except ValueError as exc:
            return figures.empty_figure(str(exc)), config, None, str(exc)
        mode = mode or "normalized"
        if mode == "normalized" and any(handlers.effective_mode(r.result, mode)[1] for r in (a, b)):
            mode = "raw"
        fig = figures.compare(a.result, b.result, mode, labels=(f"#{a.info.id}", f"#{b.info.id}"))
        status = "" if figures.same_layout(a.result, b.result) else \
            "These runs have different axes, so there is no cell-wise difference panel."
        tables = layout.render_top_tables([
            (f"Top components · #{a.info.id}", handlers.top_components(a.result, 10, mode)),
            (f"Top components · #{b.info.id}", handlers.top_components(b.result, 10, mode))])
        return fig, config, tables, status

    app.callback(Output(ids.COMPARE_HEATMAP, "figure"), Output(ids.COMPARE_HEATMAP, "config"),
                 Output(ids.COMPARE_TABLE, "children"), Output(ids.COMPARE_STATUS, "children"),
                 Input(ids.COMPARE_SELECT, "value"), Input(ids.VALUE_MODE, "value"),
                 Input(ids.IMAGE_FORMAT, "value"))(compare)

    def download_compare(n_clicks, selected):
        selected = [s for s in (selected or []) if s is not None]
        if not n_clicks or len(selected) != 2:
            return no_update
        try:
            a, b = (store.get(handlers.parse_run_id(s)) for s in selected)
        except ValueError:
            return no_update
        return dcc.send_string(handlers.compare_csv(a, b),
                               f"patchboard-compare-run{a.info.id}-run{b.info.id}.csv")

    app.callback(Output(ids.COMPARE_DOWNLOAD, "data"), Input(ids.COMPARE_DOWNLOAD_BUTTON, "n_clicks"),
                 State(ids.COMPARE_SELECT, "value"), prevent_initial_call=True)(download_compare)

    app.callback(Output(ids.COMPARE_DOWNLOAD_BUTTON, "disabled"), Input(ids.COMPARE_SELECT, "value"))(
        lambda selected: len([s for s in (selected or []) if s is not None]) != 2)

    path = _register_path(app, registry, store, data_dir)
    attribution = _register_attribution(app, registry, store, data_dir)
    costs = cost_refine.register(app, registry, store, data_dir)
    shared = share.register(app, registry, store)

    return SimpleNamespace(
        **vars(path), **vars(attribution), **vars(costs), **vars(shared),
        model_status=model_status, fill_preset=fill_preset, upload_pairs=upload_pairs,
        clear_pairs=clear_pairs, pairs_preview=pairs_preview, token_view=token_view,
        kind_controls=kind_controls, validate=validate, run_sweep=run_sweep, cancelled=cancelled, show_run=show_run,
        download_csv=download_csv, attention=attention, download_attention=download_attention,
        history=history, open_run=open_run, delete_run=delete_run, compare=compare,
        download_compare=download_compare)


_PROMPT_STATES = (ids.MODEL_SELECT, ids.CLEAN_PROMPT, ids.CORRUPT_PROMPT, ids.ANSWER_TOKEN, ids.WRONG_TOKEN,
                  ids.PREPEND_BOS, ids.PAIRS_STORE, ids.METRIC_SELECT, ids.DIRECTION_SELECT)


def _prompt_states() -> list[State]:
    """The left panel's prompts, metric and direction, which the path and attribution tabs share."""
    return [State(i, "data" if i == ids.PAIRS_STORE else "value") for i in _PROMPT_STATES]


def _background(run_button: str, idle_label: str, cancel_button: str, progress: str, progress_text: str,
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


def _guarded(what: str, compute):
    """(compute(), "") or (None, the message to show): a ValueError's own, or 'internal error: …'
    (logged with its traceback) for anything else, so the page stays alive."""
    try:
        return compute(), ""
    except ValueError as exc:
        return None, str(exc) or f"{what} refused ({type(exc).__name__})"
    except Exception as exc:
        log.exception("%s failed", what)
        return None, f"internal error: {type(exc).__name__}: {exc}"


def _prompt_form(model, clean, corrupt, answer, wrong, bos, pairs, metric, direction) -> handlers.Form:
    return _form(model, clean, corrupt, answer, wrong, bos, pairs, metric=metric, direction=direction)


def _done_status(text: str, baselines: str):
    return [dash.html.Div(text), dash.html.Div(baselines, className="baselines")]


def _register_path(app: dash.Dash, registry, store, data_dir: Path) -> SimpleNamespace:
    """The Path patching tab: run (background, one at a time), figure, CSV."""

    def run_path(set_progress, n_clicks, receivers, senders, sweep, mode, per_position, *prompt_and_session):
        """Run path patching: validate, queue, baselines, sweep with progress, save to history."""
        if not n_clicks:
            return no_update, no_update, no_update, no_update
        *prompt, session = prompt_and_session
        form = _prompt_form(*prompt)
        path = handlers.PathForm(receivers=receivers or "", senders=senders or "", sweep=sweep or "senders",
                                 mode=mode or "heads_frozen", per_position="per" in (per_position or []))
        run_id, error = _guarded("path run", lambda: handlers.execute_path(
            registry, store, form, path, data_dir, report=jobs.progress_reporter(set_progress),
            token=job_token(session, ids.PATH_RUN_BUTTON, n_clicks)))
        if error:
            return no_update, error, no_update, ""
        info = store.info(run_id)
        return run_id, "", time.time(), _done_status(
            f"Path run #{run_id} saved to history ({info.seconds:.2f} s).",
            handlers.baselines_text((info.clean_value, info.corrupt_value), info.metric))

    app.callback(
        Output(ids.PATH_RUN, "data"), Output(ids.ERROR_MESSAGE, "children", allow_duplicate=True),
        Output(ids.HISTORY_VERSION, "data", allow_duplicate=True), Output(ids.PATH_STATUS, "children"),
        Input(ids.PATH_RUN_BUTTON, "n_clicks"),
        State(ids.PATH_RECEIVERS, "value"), State(ids.PATH_SENDERS, "value"), State(ids.PATH_SWEEP, "value"),
        State(ids.PATH_MODE, "value"), State(ids.PATH_PER_POSITION, "value"), *_prompt_states(),
        State(ids.SESSION_ID, "data"),
        **_background(ids.PATH_RUN_BUTTON, "Run path patching", ids.PATH_CANCEL_BUTTON, ids.PATH_PROGRESS,
                      ids.PATH_PROGRESS_TEXT, ids.PATH_BASELINES))(run_path)

    path_cancelled = _register_cancel_notice(app, store, "Path run", ids.PATH_CANCEL_BUTTON, ids.PATH_RUN_BUTTON,
                                             ids.PATH_STATUS, ids.PATH_PROGRESS, ids.PATH_PROGRESS_TEXT)

    def path_controls(sweep, senders):
        """Per position applies to the every-head senders sweep only."""
        ok = (sweep or "senders") == "senders" and not handlers.node_list(senders)
        return [{"label": "one cell per sender position", "value": "per", "disabled": not ok}]

    app.callback(Output(ids.PATH_PER_POSITION, "options"), Input(ids.PATH_SWEEP, "value"),
                 Input(ids.PATH_SENDERS, "value"))(path_controls)

    def show_path(run_id, mode):
        """The path run on screen -> its figure (heatmap or bars), summary, CSV button."""
        if not run_id:
            return figures.empty_figure("Run path patching to see each sender's effect through the "
                                        "receivers."), "", True
        try:
            run = store.get(handlers.parse_run_id(run_id))
        except ValueError as exc:
            return figures.empty_figure(str(exc)), "", True
        mode, note = handlers.effective_mode(run.result, mode or "normalized")
        summary = [dash.html.Span(f"Run #{run.info.id}", className="run-id"), handlers.path_summary(run.result)] \
            + ([dash.html.Div(note, className="error-text")] if note else [])
        return figures.result_figure(run.result, mode), summary, False

    app.callback(Output(ids.PATH_FIGURE, "figure"), Output(ids.PATH_SUMMARY, "children"),
                 Output(ids.PATH_DOWNLOAD_BUTTON, "disabled"),
                 Input(ids.PATH_RUN, "data"), Input(ids.PATH_VALUE_MODE, "value"))(show_path)

    def download_path(n_clicks, run_id):
        """The path run as the contract CSV, with sender / receiver / mode columns."""
        if not n_clicks or not run_id:
            return no_update
        try:
            run = store.get(handlers.parse_run_id(run_id))
        except ValueError:          # deleted meanwhile, or not a run number: nothing to send
            return no_update
        spec = run.result.spec
        return dcc.send_string(run.result.to_csv(),
                               f"patchboard-run{run.info.id}-path-{spec.sweep}-{spec.mode}-{spec.direction}.csv")

    app.callback(Output(ids.PATH_DOWNLOAD, "data"), Input(ids.PATH_DOWNLOAD_BUTTON, "n_clicks"),
                 State(ids.PATH_RUN, "data"), prevent_initial_call=True)(download_path)

    def path_attention(click_data, run_id):
        """A click on a sender cell -> the first q/k/v receiver head's clean, corrupt and
        receivers-patched attention (pair 0)."""
        empty = figures.empty_figure("No sender selected yet.", 260)
        if _triggered_value()[0] == ids.PATH_RUN or not click_data or not run_id:
            return empty, layout.PATH_ATTENTION_HINT, no_update
        try:
            run = store.get(handlers.parse_run_id(run_id))
            cell = handlers.clicked_cell(click_data)
            view = handlers.attention_for_cell(registry, run, cell, 0)
        except ValueError as exc:
            return empty, str(exc), no_update
        fig = figures.attention_diff(view.clean, view.corrupt, view.patched, view.str_tokens, title=view.title)
        outline = Patch()
        outline["layout"]["shapes"] = figures.cell_outline(run.result, cell)
        return fig, f"{view.title} — {view.note}", outline

    app.callback(Output(ids.PATH_ATTENTION, "figure"), Output(ids.PATH_ATTENTION_STATUS, "children"),
                 Output(ids.PATH_FIGURE, "figure", allow_duplicate=True),
                 Input(ids.PATH_FIGURE, "clickData"), Input(ids.PATH_RUN, "data"),
                 prevent_initial_call=True)(path_attention)

    return SimpleNamespace(run_path=run_path, path_cancelled=path_cancelled, path_controls=path_controls,
                           show_path=show_path, download_path=download_path, path_attention=path_attention)


def _register_attribution(app: dash.Dash, registry, store, data_dir: Path) -> SimpleNamespace:
    """The Attribution tab: run (background), a heatmap per kind, CSV of all kinds, agreement."""

    def attribution_kinds_for(model):
        """The kinds select lists what the chosen model has."""
        try:
            m = registry.get(handlers.check_model(registry, model))
        except ValueError:
            return handlers.attribution_kind_options()
        return handlers.attribution_kind_options(m)

    app.callback(Output(ids.ATTR_KINDS, "options"), Input(ids.MODEL_SELECT, "value"))(attribution_kinds_for)

    app.callback(Output(ids.ATTR_STEPS, "disabled"), Input(ids.ATTR_METHOD, "value"))(
        lambda method: method != "ig")

    def run_attribution(set_progress, n_clicks, kinds, method, steps, per_position, edges, *prompt_and_session):
        """Run attribution for the chosen kinds (and edges): validate, queue, baselines, estimate, save."""
        if not n_clicks:
            return no_update, no_update, no_update
        *prompt, session = prompt_and_session
        form = _prompt_form(*prompt)
        attr = handlers.AttributionForm(kinds=tuple(kinds or ()), method=method or "plain", steps=steps,
                                        per_position="per" in (per_position or []),
                                        edges="edges" in (edges or []))
        att_id, error = _guarded("attribution run", lambda: handlers.execute_attribution(
            registry, store, form, attr, data_dir, report=jobs.progress_reporter(set_progress),
            token=job_token(session, ids.ATTR_RUN_BUTTON, n_clicks)))
        if error:
            return no_update, error, ""
        run = store.get_attribution(att_id)
        r = run.results[0]
        return att_id, "", _done_status(
            f"Attribution run #{att_id}: {len(run.results)} kinds in {r.seconds:.2f} s.",
            handlers.baselines_text((r.clean_value, r.corrupt_value), r.spec.metric))

    app.callback(
        Output(ids.ATTR_RUN, "data"), Output(ids.ERROR_MESSAGE, "children", allow_duplicate=True),
        Output(ids.ATTR_STATUS, "children"),
        Input(ids.ATTR_RUN_BUTTON, "n_clicks"),
        State(ids.ATTR_KINDS, "value"), State(ids.ATTR_METHOD, "value"), State(ids.ATTR_STEPS, "value"),
        State(ids.ATTR_PER_POSITION, "value"), State(ids.ATTR_EDGES, "value"), *_prompt_states(),
        State(ids.SESSION_ID, "data"),
        **_background(ids.ATTR_RUN_BUTTON, "Run attribution", ids.ATTR_CANCEL_BUTTON, ids.ATTR_PROGRESS,
                      ids.ATTR_PROGRESS_TEXT, ids.ATTR_BASELINES))(run_attribution)

    attribution_cancelled = _register_cancel_notice(app, store, "Attribution run", ids.ATTR_CANCEL_BUTTON,
                                                    ids.ATTR_RUN_BUTTON, ids.ATTR_STATUS, ids.ATTR_PROGRESS,
                                                    ids.ATTR_PROGRESS_TEXT)

    def show_attribution(att_id, kind, mode):
        """The attribution run on screen + chosen kind -> its heatmap, the kind options, summary,
        buttons; the agreement line is cleared (it belongs to one kind)."""
        empty = figures.empty_figure("Run attribution to see every kind's estimated effect.")
        no_edges = layout.render_edges(None, False)
        if not att_id:
            return empty, [], None, "", True, True, "", no_edges, True
        try:
            run = store.get_attribution(att_id)
        except ValueError as exc:
            return figures.empty_figure(str(exc)), [], None, "", True, True, "", no_edges, True
        kinds = [r.spec.kind for r in run.results]
        if kind not in kinds:
            kind = "head_out" if "head_out" in kinds else kinds[0]
        result = run.result(kind)
        mode, note = handlers.effective_mode(result, mode or "normalized")
        summary = [dash.html.Span(f"Attribution #{run.id}", className="run-id"), handlers.attribution_summary(run)] \
            + ([dash.html.Div(note, className="error-text")] if note else [])
        options = [{"label": k, "value": k} for k in kinds]
        edges = layout.render_edges(handlers.top_edges(run.edges, 12), run.edges is not None)
        return (figures.result_figure(result, mode), options, kind, summary, False, False, "", edges,
                run.edges is None)

    app.callback(Output(ids.ATTR_FIGURE, "figure"), Output(ids.ATTR_SHOW_KIND, "options"),
                 Output(ids.ATTR_SHOW_KIND, "value"), Output(ids.ATTR_SUMMARY, "children"),
                 Output(ids.ATTR_DOWNLOAD_BUTTON, "disabled"), Output(ids.ATTR_AGREE_BUTTON, "disabled"),
                 Output(ids.ATTR_AGREEMENT, "children"), Output(ids.ATTR_EDGES_TABLE, "children"),
                 Output(ids.ATTR_EDGES_DOWNLOAD_BUTTON, "disabled"),
                 Input(ids.ATTR_RUN, "data"), Input(ids.ATTR_SHOW_KIND, "value"),
                 Input(ids.ATTR_VALUE_MODE, "value"))(show_attribution)

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

    def agreement(n_clicks, att_id, kind):
        """Exact sweep of the shown kind (queued like a run) -> Pearson r and top-10 overlap."""
        if not n_clicks or not att_id or not kind:
            return no_update
        try:
            run = store.get_attribution(att_id)
            with handlers.run_slot(data_dir):
                a = handlers.attribution_agreement(registry, run, kind, data_dir)
        except ValueError as exc:
            return dash.html.Span(str(exc), className="error-text")
        return handlers.agreement_text(a)

    app.callback(Output(ids.ATTR_AGREEMENT, "children", allow_duplicate=True),
                 Input(ids.ATTR_AGREE_BUTTON, "n_clicks"), State(ids.ATTR_RUN, "data"),
                 State(ids.ATTR_SHOW_KIND, "value"),
                 background=True, interval=400,
                 running=[(Output(ids.ATTR_AGREE_BUTTON, "children"), "Running the exact sweep…",
                           "Compare with exact patching")],
                 prevent_initial_call=True)(agreement)

    return SimpleNamespace(attribution_kinds_for=attribution_kinds_for, run_attribution=run_attribution,
                           attribution_cancelled=attribution_cancelled, show_attribution=show_attribution,
                           download_attribution=download_attribution, download_edges=download_edges,
                           agreement=agreement)


def _register_cancel_notice(app, store, what: str, cancel_button: str, run_button: str, status: str,
                            progress: str, progress_text: str):
    """After Cancel: record the request in the run store under the job's token (so a job still
    queued, or on a worker that missed Celery's revoke, stops too, and a killed one is listed as
    cancelled), say nothing was saved and reset the progress bar (sweep, path, attribution)."""
    def cancelled(n_clicks, run_clicks=None, session=None):
        if not n_clicks:
            return no_update, no_update, no_update, no_update
        token = job_token(session, run_button, run_clicks)
        if token:
            try:
                store.request_cancel(token)
            except Exception:                    # Dash's own cancel still stops the job
                log.warning("could not record the cancel request %s", token, exc_info=True)
        return (f"{what} cancelled; nothing was saved unless it had already finished (then it is in "
                "the history).", "", 0, "")

    app.callback(Output(status, "children", allow_duplicate=True),
                 Output(progress_text, "children", allow_duplicate=True),
                 Output(progress, "value", allow_duplicate=True),
                 Output(progress, "label", allow_duplicate=True),
                 Input(cancel_button, "n_clicks"), State(run_button, "n_clicks"), State(ids.SESSION_ID, "data"),
                 prevent_initial_call=True)(cancelled)
    return cancelled
