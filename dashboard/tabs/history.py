"""The History & compare tab: every saved run (and the jobs still running or failed), Open /
Delete, run files (`dashboard.share`), and two runs on one colour scale with their top components
and a stacked CSV.

>>> history.register(app, ctx).compare([1, 2], "raw", "png")           # doctest: +SKIP
"""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import dash_bootstrap_components as dbc
import pandas as pd
import torch
from dash import ALL, MATCH, Input, Output, State, dcc, html, no_update

from patching.core.results import PatchResult, write_csv
from patching.runs import jobs as job_status

from dashboard import ids, share
from patching import figures
from dashboard.components import PAGE_FIELDS, TITLE_CHARS, clipped, graph, page_outputs, triggered_value, wrong_type
from dashboard.forms import restored_values
from patching.runs.limits import clip
from dashboard.views import effective_mode


# -- pure views ---------------------------------------------------------------------------------
def top_components(result: PatchResult, n: int = 10, mode: str = "raw") -> list[dict]:
    """The n cells with the largest |effect| — the change from the unpatched run, so a noise
    run's no-effect cells (normalized 1) rank last, as a denoise run's (normalized 0) do — as
    rows for a table (the mode changes units, not the order).

    >>> top_components(result, 3)[0].keys()
    dict_keys(['component', 'token', 'value', 'normalized', 'effect'])
    """
    df = result.to_dataframe() if result.n_pairs == 1 else _df_without_ci(result)
    if df.empty:
        return []
    order = df["effect"].abs().sort_values(ascending=False, kind="stable").index[:n]
    rows = []
    for _, r in df.loc[order].iterrows():
        parts = []
        if r["layer"] is not None and str(r["layer"]) != "<NA>":
            parts.append(f"L{int(r['layer'])}")
        if "head" in r and str(r["head"]) != "<NA>" and r["head"] is not None:
            parts.append(f"H{int(r['head'])}")
        if "neuron" in r and r.get("neuron") is not None and str(r.get("neuron")) not in ("<NA>", "nan"):
            parts.append(f"N{int(r['neuron'])}")
        if str(r["pos"]) != "<NA>" and r["pos"] is not None:
            parts.append(f"pos {int(r['pos'])}")
        norm = r["normalized"]
        rows.append({"component": " ".join(parts), "token": r["token"] if isinstance(r["token"], str) else "",
                     "value": round(float(r["value"]), 4),
                     "normalized": None if norm != norm else round(float(norm), 3),
                     "effect": round(float(r["effect"]), 4)})
    return rows


def _df_without_ci(result: PatchResult):
    """to_dataframe without the bootstrap (the table needs only values)."""
    single = PatchResult(result.spec, result.axes, result.coords, result.values[..., None].double(),
                         torch.tensor([result.clean_value], dtype=torch.float64),
                         torch.tensor([result.corrupt_value], dtype=torch.float64),
                         result.str_tokens, result.metric_clean_is, result.seconds, result.model_name)
    return single.to_dataframe()


def compare_csv(run_a, run_b) -> str:
    """Both runs of the compare view in the contract format, stacked, with extra columns `run`
    (its id) and, when their axes match, `value_minus_other` / `normalized_minus_other`."""
    frames = []
    same = _same_cells(run_a.result, run_b.result)
    for run, other in ((run_a, run_b), (run_b, run_a)):
        df = run.result.to_dataframe()
        if same:
            o = other.result.to_dataframe()
            df["value_minus_other"] = df["value"].to_numpy() - o["value"].to_numpy()
            df["normalized_minus_other"] = df["normalized"].to_numpy() - o["normalized"].to_numpy()
        df["run"] = run.info.id
        frames.append(df)
    return write_csv(pd.concat(frames, ignore_index=True))


def _same_cells(a: PatchResult, b: PatchResult) -> bool:
    return (tuple(a.axes) == tuple(b.axes) and all(tuple(a.coords[k]) == tuple(b.coords[k]) for k in a.axes)
            and bool((a.per_pair.isnan().all(-1) == b.per_pair.isnan().all(-1)).all()))


LABEL_CHARS = 80         # a label in the list (the title shows more)
META_CHARS = 60          # a model name in the list
REASON_CHARS = 300       # a failed job's reason
MAX_LISTED = 200         # runs and jobs in the list at most (the store reads no more)
OPTION_CHARS = 100       # a compare dropdown option
TOKEN_CHARS = 40         # a token in the top-components table
POLL_MS = 2_000          # the list refreshes this often while the tab is open and a job runs


def _model_name(model: object) -> str:
    text = clip(model, 1_000)
    return Path(text).name or text


def render_job(job):
    """A running, failed or cancelled background job in the history list (no Open: nothing was
    saved); stored text is clipped.

    >>> render_job(job).className                                      # doctest: +SKIP
    'job-item job-failed'
    """
    when = time.strftime("%H:%M:%S", time.localtime(job.started))
    running = job.status == "running"
    what = "running…" if running else f"{job.status}: {job.reason}" if job.reason else job.status
    return dbc.ListGroupItem([
        html.Div([html.Span(f"job {job.id}", className="run-id"), clipped(job.label, LABEL_CHARS, "run-label")]),
        html.Div([clipped(_model_name(job.model), META_CHARS), f" · {clip(job.kind, 40)} · started {when}"],
                 className="run-meta"),
        html.Div([html.Span(clipped(what, REASON_CHARS),
                            className="job-reason" if running else "job-reason error-text"),
                  dbc.Button("Cancel", id={"type": ids.HISTORY_CANCEL_JOB, "job": job.id}, size="sm",
                             color="danger", outline=True, n_clicks=0) if running else None],
                 className="job-row"),
    ], className=f"job-item job-{job.status}")


PROMPT_CHARS = 60        # a prompt in the list (the title shows it whole)


def render_prompts(pair, n_pairs: int):
    """A run's prompts in the history list: clean and corrupt of its first pair, clipped (the full
    text on hover), and how many pairs it has.

    >>> render_prompts(("When Mary and John", "When Mary and Mary", " John", " Mary"), 3).className
    'run-prompts'
    """
    count = html.Span(f"{n_pairs} pair{'s' if n_pairs != 1 else ''}" + (" · first:" if n_pairs > 1 else ""),
                      className="run-pairs")
    if pair is None:
        return html.Div([count, html.Span(" prompts too long to list here; Open shows them",
                                          className="hint")], className="run-prompts")
    def text(s: str) -> html.Span:                     # the whole text on hover, clipped or not
        return html.Span(clip(repr(s), PROMPT_CHARS), title=clip(repr(s), TITLE_CHARS), className="mono")

    return html.Div([
        count,
        html.Div([html.Span("clean", className="prompt-tag"), text(pair[0])]),
        html.Div([html.Span("corrupt", className="prompt-tag"), text(pair[1])]),
    ], className="run-prompts")


def render_run(r, pair, active: bool):
    """One saved run: id, label, model and baselines, its prompts, Open, and Delete behind an
    inline "delete #N?" (Keep / Delete)."""
    when = time.strftime("%H:%M:%S", time.localtime(r.created))
    meta = (f" · clean {r.clean_value:.3f} · corrupt {r.corrupt_value:.3f} · {when}"
            if r.clean_value is not None else f" · {when}")
    return dbc.ListGroupItem([
        html.Div([html.Span(f"#{r.id}", className="run-id"), clipped(r.label, LABEL_CHARS, "run-label")]),
        html.Div([clipped(_model_name(r.model), META_CHARS), meta], className="run-meta"),
        render_prompts(pair, r.n_pairs),
        html.Div([
            dbc.Button("Open", id={"type": ids.HISTORY_OPEN, "run": r.id}, size="sm",
                       color="primary", outline=True, n_clicks=0,
                       title="show this run and put its prompts, kind, metric and direction back on the left"),
            dbc.Button("Delete", id={"type": ids.HISTORY_DELETE, "run": r.id}, size="sm",
                       color="danger", outline=True, n_clicks=0),
            html.Span([
                html.Span(f"Delete run #{r.id}? This cannot be undone.", className="confirm-text"),
                dbc.Button("Delete", id={"type": ids.HISTORY_CONFIRM_DELETE, "run": r.id}, size="sm",
                           color="danger", n_clicks=0),
                dbc.Button("Keep", id={"type": ids.HISTORY_KEEP, "run": r.id}, size="sm",
                           color="secondary", outline=True, n_clicks=0),
            ], id={"type": ids.HISTORY_CONFIRM, "run": r.id}, hidden=True, className="delete-confirm"),
        ], className="run-actions"),
    ], active=active, className="run-item")


def render_history(infos, current: int | None, jobs=(), prompts=None):
    """The saved runs (with their prompts: `RunStore.first_pairs`) and, among them by start
    time, the jobs that are running or did not finish."""
    if not infos and not jobs:
        return html.Div("No runs yet. Runs are saved here and survive restarts.", className="hint")
    prompts = prompts or {}
    items = [(j.started, render_job(j)) for j in list(jobs)[:MAX_LISTED]]
    for r in list(infos)[:MAX_LISTED]:
        pair, _ = prompts.get(r.id, (None, r.n_pairs))
        items.append((r.created, render_run(r, pair, r.id == current)))
    items.sort(key=lambda pair: -pair[0])
    return dbc.ListGroup([item for _, item in items], flush=True)


def _clicked(clicks: object) -> bool:
    """Whether a pattern-matched button list (n_clicks of each) holds a click; False for junk.

    >>> _clicked([0, 2]), _clicked({"a": 1}), _clicked(None)
    (True, False, False)
    """
    return isinstance(clicks, list) and any(isinstance(c, int) and c > 0 for c in clicks)


def render_top_tables(tables: list[tuple[str, list[dict]]]):
    cols = []
    for title, rows in tables:
        header = html.Thead(html.Tr([html.Th(c) for c in ("component", "token", "effect", "value", "normalized")]))
        body = html.Tbody([html.Tr([html.Td(r["component"]),
                                    html.Td(clipped(repr(r["token"]), TOKEN_CHARS) if r["token"] else ""),
                                    html.Td(f"{r['effect']:+.4f}"), html.Td(f"{r['value']:.4f}"),
                                    html.Td("" if r["normalized"] is None else f"{r['normalized']:.3f}")])
                           for r in rows])
        cols.append(dbc.Col([html.H4(title, className="table-title"),
                             dbc.Table([header, body], size="sm", striped=True, className="top-table")], md=6))
    return dbc.Row(cols)


def layout() -> html.Div:
    return html.Div([
        html.H3("Run history", className="section-title"),
        html.Div("Every run is saved with its spec, prompts, baselines and result; it survives restarts.",
                 className="hint mb-2"),
        html.Div(id=ids.HISTORY_STATUS, role="status", className="hint"),
        html.Div(id=ids.RUN_HISTORY, className="run-history"),
        dcc.Interval(id=ids.HISTORY_POLL, interval=POLL_MS, disabled=True),
        dcc.Store(id=ids.HISTORY_SHOWN, data=None),
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
        graph(ids.COMPARE_HEATMAP, "Choose two runs to compare them on one colour scale."),
        html.Div(id=ids.COMPARE_TABLE),
    ])


# -- callbacks ----------------------------------------------------------------------------------
def register(app, ctx) -> SimpleNamespace:
    """Wire the tab to `app`; returns the plain functions so tests call them directly."""
    return SimpleNamespace(**vars(_register_history(app, ctx)), **vars(_register_actions(app, ctx)),
                           **vars(_register_compare(app, ctx)))


def _register_history(app, ctx) -> SimpleNamespace:
    """The list of runs and jobs, Open (the run and its form), Delete (confirmed), Cancel a job."""
    store = ctx.store

    def listing(current):
        """(the list, the compare options, what it shows) read from the store now."""
        infos = store.list(MAX_LISTED)
        jobs = job_status.unfinished_and_failed(store)     # killed / cancelled jobs are marked failed here
        try:
            prompts = store.first_pairs([r.id for r in infos])
        except Exception:                   # a list without prompts rather than no list
            prompts = {}
        options = [{"label": clip(r.title, OPTION_CHARS), "value": r.id} for r in infos]
        seen = [[r.id for r in infos], [[j.id, j.status] for j in jobs], current]
        return render_history(infos, current, jobs, prompts), options, seen

    def history(_version, run_id, _tab=None):
        """The history list and compare options; refreshed on save/delete and when the tab opens
        (runs from other tabs or users appear then)."""
        return listing(run_id if isinstance(run_id, int) else None)

    app.callback(Output(ids.RUN_HISTORY, "children"), Output(ids.COMPARE_SELECT, "options"),
                 Output(ids.HISTORY_SHOWN, "data"),
                 Input(ids.HISTORY_VERSION, "data"), Input(ids.CURRENT_RUN, "data"),
                 Input(ids.TABS, "active_tab"))(history)

    def poll(_tick, tab, running_here=None, shown=None):
        """While the tab is open and a job runs (or this page's Run is busy), the list is re-read
        every POLL_MS and redrawn only when its runs or jobs' statuses changed (an open "delete?"
        stays open). Its inputs are none of a Run's outputs: Dash holds back a callback whose
        inputs a running callback will write, and this one must go on while a run runs."""
        if tab not in (None, ids.TAB_HISTORY):
            return no_update, no_update, no_update, True
        current = shown[2] if isinstance(shown, list) and len(shown) == 3 and isinstance(shown[2], int) else None
        items, options, seen = listing(current)
        poll_off = not (running_here is True or any(status == "running" for _, status in seen[1]))
        if seen == shown:
            return no_update, no_update, no_update, poll_off
        return items, options, seen, poll_off

    app.callback(Output(ids.RUN_HISTORY, "children", allow_duplicate=True),
                 Output(ids.COMPARE_SELECT, "options", allow_duplicate=True),
                 Output(ids.HISTORY_SHOWN, "data", allow_duplicate=True), Output(ids.HISTORY_POLL, "disabled"),
                 Input(ids.HISTORY_POLL, "n_intervals"), Input(ids.TABS, "active_tab"),
                 Input(ids.RUN_BUTTON, "disabled"), State(ids.HISTORY_SHOWN, "data"),
                 prevent_initial_call=True)(poll)

    def open_run(clicks, trig=None):
        """An Open button -> that run on the Results tab and its form (prompts, kind, metric,
        direction, options) back on the left panel (`forms.restored_values`)."""
        trig, clicked = (trig, _clicked(clicks)) if trig is not None else triggered_value()
        keep = (no_update,) * len(PAGE_FIELDS)
        if not isinstance(trig, dict) or not clicked:      # buttons appearing (n_clicks 0) are not clicks
            return (no_update, no_update) + keep
        try:
            run = ctx.run(trig.get("run"))
        except ValueError:                                 # gone meanwhile: the Results tab says so
            return (trig.get("run"), ids.TAB_RESULTS) + keep
        values = restored_values(run.result.spec.to_dict(), run.pairs, ctx.registry.names())
        return (run.info.id, ids.TAB_RESULTS) + tuple(values.get(f, no_update) for f in PAGE_FIELDS)

    app.callback(Output(ids.CURRENT_RUN, "data", allow_duplicate=True), Output(ids.TABS, "active_tab"),
                 *[Output(i, p, allow_duplicate=True) for i, p in page_outputs()],
                 Input({"type": ids.HISTORY_OPEN, "run": ALL}, "n_clicks"),
                 prevent_initial_call=True)(lambda clicks: open_run(clicks))

    return SimpleNamespace(history=history, poll_history=poll, open_run=open_run)


def _register_actions(app, ctx) -> SimpleNamespace:
    """Delete (after the row's confirmation) and Cancel of a running job."""
    store = ctx.store

    def ask_delete(_delete, _keep, trig=None):
        """Delete shows the row's "delete #N?" box; Keep hides it again."""
        trig = trig if trig is not None else triggered_value()[0]
        if not isinstance(trig, dict):
            return no_update
        return trig.get("type") != ids.HISTORY_DELETE

    app.callback(Output({"type": ids.HISTORY_CONFIRM, "run": MATCH}, "hidden"),
                 Input({"type": ids.HISTORY_DELETE, "run": MATCH}, "n_clicks"),
                 Input({"type": ids.HISTORY_KEEP, "run": MATCH}, "n_clicks"),
                 prevent_initial_call=True)(lambda d, k: ask_delete(d, k))

    def delete_run(clicks, run_id, trig=None):
        """A confirmed Delete -> the run is gone; the screen clears if it was on it."""
        trig, clicked = (trig, _clicked(clicks)) if trig is not None else triggered_value()
        if not isinstance(trig, dict) or not clicked:
            return no_update, no_update, no_update
        try:
            gone = store.delete(trig.get("run"))
        except ValueError:                       # a tampered button id: nothing to delete
            return no_update, no_update, no_update
        said = f"Deleted run #{trig['run']}." if gone else f"Run #{trig['run']} was already deleted."
        return time.time(), (None if run_id == trig["run"] else no_update), said

    app.callback(Output(ids.HISTORY_VERSION, "data", allow_duplicate=True),
                 Output(ids.CURRENT_RUN, "data", allow_duplicate=True),
                 Output(ids.HISTORY_STATUS, "children"),
                 Input({"type": ids.HISTORY_CONFIRM_DELETE, "run": ALL}, "n_clicks"),
                 State(ids.CURRENT_RUN, "data"),
                 prevent_initial_call=True)(lambda clicks, run_id: delete_run(clicks, run_id))

    def cancel_job(clicks, trig=None):
        """A running job's Cancel -> the request recorded on its job record (`request_cancel_job`):
        the job stops at its next progress report and is listed as cancelled."""
        trig, clicked = (trig, _clicked(clicks)) if trig is not None else triggered_value()
        if not isinstance(trig, dict) or not clicked:
            return no_update, no_update
        try:
            reached = store.request_cancel_job(trig.get("job"))
        except ValueError as exc:
            return no_update, html.Span(str(exc), className="error-text")
        if not reached:
            return no_update, html.Span(f"job {trig['job']} is not running any more (or was started without a "
                                        "job token), so there is nothing to cancel from here.",
                                        className="error-text")
        return time.time(), f"Cancel requested for job {trig['job']}: it stops at its next progress report."

    app.callback(Output(ids.HISTORY_VERSION, "data", allow_duplicate=True),
                 Output(ids.HISTORY_STATUS, "children", allow_duplicate=True),
                 Input({"type": ids.HISTORY_CANCEL_JOB, "job": ALL}, "n_clicks"),
                 prevent_initial_call=True)(lambda clicks: cancel_job(clicks))
    return SimpleNamespace(ask_delete=ask_delete, delete_run=delete_run, cancel_job=cancel_job)


def _register_compare(app, ctx) -> SimpleNamespace:
    """Two runs on one colour scale, their top components, the stacked CSV."""

    def compare(selected, mode, image_format):
        problem = (wrong_type(selected, "the runs to compare", list) or wrong_type(mode, "the value mode", str)
                   or wrong_type(image_format, "the image format", str)
                   or (f"the value mode must be raw or normalized, not {clip(mode, 40)!r}"
                       if mode not in (None, "", "raw", "normalized") else None))
        if problem:
            return figures.empty_figure(problem), figures.graph_config("png", "patchboard-compare"), None, problem
        config = figures.graph_config(image_format or "png", "patchboard-compare")
        selected = [s for s in (selected or []) if s is not None]
        if len(selected) != 2:
            msg = "Choose two runs." if len(selected) < 2 else \
                f"{len(selected)} runs chosen; compare takes exactly two (remove {len(selected) - 2})."
            return (figures.empty_figure("Choose two runs to compare them on one colour scale."),
                    config, None, msg)
        try:
            a, b = (ctx.run(s) for s in selected)
        except ValueError as exc:
            return figures.empty_figure(str(exc)), config, None, str(exc)
        config = figures.graph_config(image_format or "png", f"patchboard-compare-run{a.info.id}-vs-run{b.info.id}")
        mode = mode or "normalized"
        if mode == "normalized" and any(effective_mode(r.result, mode)[1] for r in (a, b)):
            mode = "raw"
        fig = figures.compare(a.result, b.result, mode, labels=(f"#{a.info.id}", f"#{b.info.id}"))
        status = "" if figures.same_layout(a.result, b.result) else \
            "These runs have different axes, so there is no cell-wise difference panel."
        tables = render_top_tables([
            (f"Top components · #{a.info.id}", top_components(a.result, 10, mode)),
            (f"Top components · #{b.info.id}", top_components(b.result, 10, mode))])
        return fig, config, tables, status

    app.callback(Output(ids.COMPARE_HEATMAP, "figure"), Output(ids.COMPARE_HEATMAP, "config"),
                 Output(ids.COMPARE_TABLE, "children"), Output(ids.COMPARE_STATUS, "children"),
                 Input(ids.COMPARE_SELECT, "value"), Input(ids.VALUE_MODE, "value"),
                 Input(ids.IMAGE_FORMAT, "value"))(compare)

    def download_compare(n_clicks, selected):
        if not isinstance(selected, list):
            return no_update
        selected = [s for s in (selected or []) if s is not None]
        if not n_clicks or len(selected) != 2:
            return no_update
        try:
            a, b = (ctx.run(s) for s in selected)
        except ValueError:
            return no_update
        return dcc.send_string(compare_csv(a, b),
                               f"patchboard-compare-run{a.info.id}-run{b.info.id}.csv")

    app.callback(Output(ids.COMPARE_DOWNLOAD, "data"), Input(ids.COMPARE_DOWNLOAD_BUTTON, "n_clicks"),
                 State(ids.COMPARE_SELECT, "value"), prevent_initial_call=True)(download_compare)

    app.callback(Output(ids.COMPARE_DOWNLOAD_BUTTON, "disabled"), Input(ids.COMPARE_SELECT, "value"))(
        lambda selected: not isinstance(selected, list) or len([s for s in selected if s is not None]) != 2)
    return SimpleNamespace(compare=compare, download_compare=download_compare)
