"""The Results tab: the run on screen as a heatmap (raw / normalized, PNG / SVG), its summary, CSV,
link and provenance, and the counterfactual attention of a clicked head cell.

The run on screen is read from the store once per screen: one callback draws the heatmap and the
share pieces (link, provenance, export button) from the same read. `register` returns the plain
functions so the tests call them directly.

>>> results.register(app, ctx).show_run(12, "raw", "png")               # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import dash_bootstrap_components as dbc
from dash import Input, Output, Patch, State, dcc, html, no_update

from patching.core.results import PatchResult, write_csv
from patching.inspect.detectors import head_scores

from dashboard import ids, share
from dashboard.tabs import clustergram
from patching import figures
from dashboard.components import graph, mode_toggle, radio, send_run_csv, summary_line, triggered_value
from patching.figures.detectors import FIRES, firing_labels
from dashboard.forms import parse_pair
from dashboard.tabs.inspect import FrameMemo
from dashboard.views import attention_csv, attention_for_cell, clicked_cell, effective_mode

IDLE = "Run a sweep to see its heatmap here."
ATTENTION_IDLE = "Click a head cell of the heatmap (head kinds) to see that head's attention patterns."


# -- pure views ---------------------------------------------------------------------------------
def result_summary(result: PatchResult) -> str:
    s = result.spec
    gap = result.clean_value - result.corrupt_value
    return (f"{Path(result.model_name or s.model).name} · {s.kind}{' per position' if s.per_position else ''} · "
            f"{s.direction} · {s.metric} · {result.n_pairs} pair{'s' if result.n_pairs != 1 else ''} · "
            f"clean {result.clean_value:.4f} · corrupt {result.corrupt_value:.4f} · gap {gap:.4f} · "
            f"{result.seconds:.2f} s")


def export_name(run, what: str = "") -> str:
    """The image / file name of a stored run: 'patchboard-run12-head_out-denoise' (+ '-' + what).

    >>> export_name(SimpleNamespace(info=SimpleNamespace(id=12), result=result), "attention")
    'patchboard-run12-head_out-denoise-attention'
    """
    spec = run.result.spec
    kind = getattr(spec, "kind", "run")
    return f"patchboard-run{run.info.id}-{kind}-{spec.direction}" + (f"-{what}" if what else "")


def run_view(run, error: str | None, mode: str | None, image_format: str | None, cell=None,
             outline: bool = True, head_labels=None) -> tuple:
    """(heatmap, its config, summary, CSV button disabled) of a stored run (None: `error` or idle);
    `head_labels` ((layer, head) -> detector) names the heads that fire."""
    config = figures.graph_config(image_format or "png", "patchboard-heatmap")
    if run is None:
        return figures.empty_figure(error or IDLE), config, "", True
    config = figures.graph_config(image_format or "png", export_name(run))
    mode, note = effective_mode(run.result, mode or "normalized")
    fig = figures.result_figure(run.result, mode, head_labels)
    if outline:                                           # keep the clicked cell outlined
        fig.update_layout(shapes=figures.cell_outline(run.result, cell))
    return fig, config, summary_line(f"Run #{run.info.id}", result_summary(run.result), note), False


def layout() -> html.Div:
    return html.Div([
        share.results_header(),
        html.Div(id=ids.RESULTS_SUMMARY, className="results-summary"),
        html.Div([
            mode_toggle(ids.VALUE_MODE, "btn-group-toggle"),
            html.Div([
                html.Span("Image export", className="toolbar-label"),
                radio(ids.IMAGE_FORMAT, {"png": "PNG", "svg": "SVG"}, "png"),
            ], className="toolbar-group"),
            dbc.Button("Download CSV", id=ids.DOWNLOAD_CSV_BUTTON, color="primary", outline=True,
                       size="sm", disabled=True, n_clicks=0),
            dcc.Download(id=ids.DOWNLOAD_CSV),
            dbc.Button("Download top features CSV", id=ids.RESULTS_TOP_FEATURES_BUTTON, color="primary",
                       outline=True, size="sm", n_clicks=0, style={"display": "none"}),
            dcc.Download(id=ids.RESULTS_TOP_FEATURES_DOWNLOAD),
            dbc.Checklist(id=ids.RESULTS_HEAD_LABELS, switch=True, value=[], options=[
                {"label": f"name heads that fire on a head detector (score ≥ {FIRES})", "value": "on"}]),
        ], className="toolbar"),
        graph(ids.RESULTS_HEATMAP, IDLE),
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
                html.Span("Receiver head", className="toolbar-label"),
                dcc.Dropdown(id=ids.ATTENTION_RECEIVER, options=[], value=None, clearable=False,
                             placeholder="(head_out / head_v: a later head)", className="receiver-select",
                             style={"minWidth": "300px"}),
                dbc.Button("Download attention CSV", id=ids.ATTENTION_DOWNLOAD_BUTTON, size="sm",
                           color="secondary", outline=True, disabled=True, n_clicks=0),
            ], className="toolbar"),
            dcc.Download(id=ids.ATTENTION_DOWNLOAD),
            graph(ids.ATTENTION_DIFF, "No head selected yet.", height=260),
        ], className="attention-section"),
        clustergram.section(),
    ])


# -- callbacks ----------------------------------------------------------------------------------
def register(app, ctx) -> SimpleNamespace:
    """Wire the tab to `app`; returns the plain functions so tests call them directly."""
    run = _register_run(app, ctx)
    return SimpleNamespace(**vars(run), **vars(_register_attention(app, ctx)),
                           **vars(_register_top_features(app, ctx)),
                           **vars(clustergram.register(app, ctx, run.head_labels)))


def _register_top_features(app, ctx) -> SimpleNamespace:
    """A feature run's top units per layer (what its heatmap shows) as CSV; the button shows for
    feature runs only."""
    def top_features_button(run_id):
        run, _ = _read(ctx, run_id)
        return {} if run is not None and "feature" in run.result.axes else {"display": "none"}

    app.callback(Output(ids.RESULTS_TOP_FEATURES_BUTTON, "style"), Input(ids.CURRENT_RUN, "data"))(top_features_button)

    def download_top_features(n_clicks, run_id):
        """layer, rank, feature_label, the contract columns of each unit, ... (k per layer)."""
        run = ctx.find_run(run_id) if n_clicks and run_id else None
        if run is None or "feature" not in run.result.axes:
            return no_update
        from patching.figures.features import result_top_features
        return dcc.send_string(write_csv(result_top_features(run.result)), export_name(run, "top-features") + ".csv")

    app.callback(Output(ids.RESULTS_TOP_FEATURES_DOWNLOAD, "data"), Input(ids.RESULTS_TOP_FEATURES_BUTTON, "n_clicks"),
                 State(ids.CURRENT_RUN, "data"), prevent_initial_call=True)(download_top_features)
    return SimpleNamespace(top_features_button=top_features_button, download_top_features=download_top_features)


def _read(ctx, run_id):
    """(run, None), (None, the reason) or (None, None) when no run is chosen."""
    if not run_id:
        return None, None
    try:
        return ctx.run(run_id), None
    except ValueError as exc:
        return None, str(exc)


def _register_run(app, ctx) -> SimpleNamespace:
    """The run on screen (heatmap, summary, link, provenance, export button) and its CSV."""
    href = share.run_href_for(app)
    memo = FrameMemo(size=4)

    def head_labels(run, switch) -> dict | None:
        """The run's heads that fire on a detector (default DetectorSpec, cached per model), when
        the switch is on and the run has a head axis; None otherwise or when the model cannot run here."""
        if not switch or run is None or "head" not in run.result.axes:
            return None
        try:
            model = ctx.model(run.result.spec.model or run.result.model_name)
        except ValueError:
            return None
        return firing_labels(memo.get((model.name, "detectors"), lambda: head_scores(model)))

    def show_run(run_id, mode, image_format, cell=None, labels=None):
        """current run + raw/normalized + image format -> heatmap, its config, summary, CSV button."""
        run, error = _read(ctx, run_id)
        return run_view(run, error, mode, image_format, cell, triggered_value()[0] != ids.CURRENT_RUN,
                        head_labels(run, labels))

    def show_screen(run_id, mode, image_format, cell=None, labels=None):
        """One read of the run on screen -> the heatmap outputs and (when the run changed) the
        share outputs."""
        run, error = _read(ctx, run_id)
        trig = triggered_value()[0]
        shown = run_view(run, error, mode, image_format, cell, trig != ids.CURRENT_RUN, head_labels(run, labels))
        if trig in (ids.VALUE_MODE, ids.IMAGE_FORMAT, ids.RESULTS_HEAD_LABELS):
            return shown + (no_update,) * 4
        return shown + share.share_view(run, bool(run_id), href)

    app.callback(
        Output(ids.RESULTS_HEATMAP, "figure"), Output(ids.RESULTS_HEATMAP, "config"),
        Output(ids.RESULTS_SUMMARY, "children"), Output(ids.DOWNLOAD_CSV_BUTTON, "disabled"),
        *share.share_outputs(),
        Input(ids.CURRENT_RUN, "data"), Input(ids.VALUE_MODE, "value"),
        Input(ids.IMAGE_FORMAT, "value"), State(ids.ATTENTION_CELL, "data"),
        Input(ids.RESULTS_HEAD_LABELS, "value"))(show_screen)

    def download_csv(n_clicks, run_id):
        """The current run in the contract CSV format."""
        return send_run_csv(ctx, n_clicks, run_id, lambda run: (
            f"patchboard-run{run.info.id}-{run.result.spec.kind}-{run.result.spec.direction}.csv"))

    app.callback(Output(ids.DOWNLOAD_CSV, "data"), Input(ids.DOWNLOAD_CSV_BUTTON, "n_clicks"),
                 State(ids.CURRENT_RUN, "data"), prevent_initial_call=True)(download_csv)
    return SimpleNamespace(show_run=show_run, show_screen=show_screen, download_csv=download_csv,
                           head_labels=head_labels, detector_memo=memo)


def receiver_options(view) -> list[dict]:
    """The receiver dropdown: every head the sender's patch moved, largest change first.

    >>> receiver_options(SimpleNamespace(receivers=((1, 3, 0.4215),)))
    [{'label': 'L1H3 · max change 0.421', 'value': '1.3'}]
    """
    return [{"label": f"L{l}H{h} · max change {c:.3f}", "value": f"{l}.{h}"} for l, h, c in view.receivers]


def _receiver(value) -> tuple[int, int] | None:
    """'1.3' (a dropdown value) -> (1, 3); None for none."""
    if not value:
        return None
    layer, head = str(value).split(".")
    return int(layer), int(head)


def _register_attention(app, ctx) -> SimpleNamespace:
    """The counterfactual attention of a clicked head cell (or of its receiver), and its CSV."""

    def attention(click_data, run_id, image_format, pair=0, receiver=None, trig=None):
        """A click on a head cell (a new pair, a receiver choice) -> its attention patterns and
        differences; a new click shows the receiver that changed most, other triggers keep the chosen one."""
        config = figures.graph_config(image_format or "png", "patchboard-attention")
        empty = figures.empty_figure("No head selected yet.", 260)
        trig = trig or triggered_value()[0]
        if trig == ids.CURRENT_RUN or not click_data or not run_id:
            return empty, config, ATTENTION_IDLE, None, True, no_update, [], None
        cell = clicked_cell(click_data)
        try:
            pair = parse_pair(pair)
            run = ctx.run(run_id)
            keep = trig in (ids.ATTENTION_RECEIVER, ids.ATTENTION_PAIR, ids.IMAGE_FORMAT)
            chosen = _receiver(receiver) if keep else None
            view = attention_for_cell(ctx.registry, run, cell, pair, chosen)
        except ValueError as exc:
            return empty, config, str(exc), None, True, no_update, [], None
        shown = f"L{view.receiver[0]}H{view.receiver[1]}" if view.receiver else f"L{cell['layer']}H{cell['head']}"
        config = figures.graph_config(image_format or "png", export_name(run, f"attention-{shown}"))
        fig = figures.attention_diff(view.clean, view.corrupt, view.patched, view.str_tokens,
                                     title=view.title, note=view.note if view.patched is None else None,
                                     corrupt_tokens=view.corrupt_tokens, patched_tokens=view.patched_tokens,
                                     direction=view.direction)
        outline = Patch()
        outline["layout"]["shapes"] = figures.cell_outline(run.result, cell)
        status = f"{view.title} — {view.note}" if view.note else view.title
        stored = {**cell, "pair": pair, "receiver": list(view.receiver) if view.receiver else None}
        value = f"{view.receiver[0]}.{view.receiver[1]}" if view.receiver else None
        return fig, config, status, stored, False, outline, receiver_options(view), value

    app.callback(
        Output(ids.ATTENTION_DIFF, "figure"), Output(ids.ATTENTION_DIFF, "config"),
        Output(ids.ATTENTION_STATUS, "children"), Output(ids.ATTENTION_CELL, "data"),
        Output(ids.ATTENTION_DOWNLOAD_BUTTON, "disabled"),
        Output(ids.RESULTS_HEATMAP, "figure", allow_duplicate=True),
        Output(ids.ATTENTION_RECEIVER, "options"), Output(ids.ATTENTION_RECEIVER, "value"),
        Input(ids.RESULTS_HEATMAP, "clickData"), Input(ids.CURRENT_RUN, "data"),
        Input(ids.IMAGE_FORMAT, "value"), Input(ids.ATTENTION_PAIR, "value"),
        Input(ids.ATTENTION_RECEIVER, "value"),
        prevent_initial_call=True)(attention)

    def download_attention(n_clicks, cell, run_id):
        run = ctx.find_run(run_id) if n_clicks and cell and run_id else None
        if run is None:
            return no_update
        receiver = cell.get("receiver")
        view = attention_for_cell(ctx.registry, run, cell, int(cell.get("pair") or 0),
                                  tuple(receiver) if receiver else None)
        text = write_csv(view.frame) if view.frame is not None else attention_csv(view)
        shown = f"-receiver-L{receiver[0]}H{receiver[1]}" if receiver else ""
        return dcc.send_string(text, f"patchboard-run{run_id}-attention-L{cell['layer']}H{cell['head']}{shown}.csv")

    app.callback(Output(ids.ATTENTION_DOWNLOAD, "data"), Input(ids.ATTENTION_DOWNLOAD_BUTTON, "n_clicks"),
                 State(ids.ATTENTION_CELL, "data"), State(ids.CURRENT_RUN, "data"),
                 prevent_initial_call=True)(download_attention)
    return SimpleNamespace(attention=attention, download_attention=download_attention)
