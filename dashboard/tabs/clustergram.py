"""The Results tab's head clustergram: the heads of the run on screen clustered by their effect
profile (patching/inspect/clustergram.py), the heatmap in leaf order beside its dendrogram.

Shown under the heatmap of a finished head-kind run; *Cluster heads* draws it, its options
redraw it, a new run on screen clears it. It follows the tab's raw / normalized toggle (normalized
effect, or the effect in the metric's units) and its head-detector switch (row labels such as
'L1H2 · induction'). `register` returns the plain functions so tests call them directly.

>>> clustergram.register(app, ctx, head_labels).show(1, 12, "pairs", ...)          # doctest: +SKIP
"""
from __future__ import annotations

from types import SimpleNamespace

import dash_bootstrap_components as dbc
from dash import Input, Output, State, dcc, html, no_update

from dashboard import ids
from dashboard.components import error_text, graph, radio, triggered_value
from dashboard.views import effective_mode
from patching import figures
from patching.core.results import write_csv
from patching.inspect.clustergram import ClusterSpec, clustergram

IDLE = "Cluster the heads of a head-kind run (head_out, head_q/k/v, head_pattern) by their effect profiles."


def cluster_spec(profile, distance, linkage, mode: str, result) -> tuple[ClusterSpec, str | None]:
    """The options and the tab's raw / normalized toggle as a ClusterSpec (normalized falls back to
    the raw effect, with the reason, when the baselines are equal); ValueError on a bad option.

    >>> cluster_spec("mean", "euclidean", "average", "raw", result)[0].value
    'effect'
    """
    mode, note = effective_mode(result, mode or "normalized")
    return ClusterSpec(profile or "pairs", distance or "euclidean", linkage or "average",
                       "normalized" if mode == "normalized" else "effect"), note


def clustergram_view(run, spec_values: tuple, mode: str | None, head_labels=None) -> tuple:
    """(figure, status, CSV disabled) of a stored run; ValueError (no head axis, ...) propagates."""
    spec, note = cluster_spec(*spec_values, mode, run.result)
    cg = clustergram(run.result, spec, head_labels)
    n_feat = cg.profile.shape[1]
    status = (f"Run #{run.info.id}: {len(cg.heads)} heads clustered by {cg.unit} over {n_feat} profile "
              f"column{'s' if n_feat != 1 else ''} ({spec.linkage} linkage, {spec.distance} distance); "
              "alike heads sit next to each other." + (f" {note}." if note else ""))
    return cg.plot(f"Run #{run.info.id} · heads clustered by {cg.unit}"), status, False


def section() -> html.Div:
    """The clustergram's block of the Results tab: options, Cluster heads, CSV, the figure."""
    return html.Div([
        html.H3("Head clustergram", className="section-title"),
        html.Div(IDLE, id=ids.CLUSTER_STATUS, className="hint", role="status"),
        html.Div([
            html.Span("Profile", className="toolbar-label"),
            radio(ids.CLUSTER_PROFILE, {"pairs": "each pair", "mean": "mean over pairs"}, "pairs"),
            html.Span("Distance", className="toolbar-label"),
            radio(ids.CLUSTER_DISTANCE, {"euclidean": "euclidean", "correlation": "correlation"}, "euclidean"),
            html.Span("Linkage", className="toolbar-label"),
            radio(ids.CLUSTER_LINKAGE, {"average": "average", "complete": "complete", "single": "single"},
                  "average"),
            dbc.Button("Cluster heads", id=ids.CLUSTER_BUTTON, color="primary", size="sm", n_clicks=0),
            dbc.Button("Download CSV", id=ids.CLUSTER_DOWNLOAD_BUTTON, color="primary", outline=True, size="sm",
                       disabled=True, n_clicks=0),
            dcc.Download(id=ids.CLUSTER_DOWNLOAD),
            dcc.Store(id=ids.CLUSTER_FOR),
        ], className="toolbar"),
        graph(ids.CLUSTER_GRAPH, "No clustergram yet.", height=260),
    ], className="clustergram-section")


def register(app, ctx, head_labels) -> SimpleNamespace:
    """Wire the section; `head_labels(run, switch)` is the Results tab's (detector labels, cached)."""

    def show(n_clicks, run_id, profile, distance, linkage, mode, switch, shown_for, trig=None):
        """Cluster heads / an option / the toggle -> figure, status, CSV button, which run is shown;
        a new run on screen clears it."""
        trig = trig or triggered_value()[0]
        idle = figures.empty_figure("No clustergram yet.", 260), IDLE, True, None
        if trig == ids.CURRENT_RUN or not run_id:
            return idle
        if trig != ids.CLUSTER_BUTTON and shown_for != run_id:     # options change nothing until clicked
            return (no_update,) * 4
        try:
            run = ctx.run(run_id)
            fig, status, disabled = clustergram_view(run, (profile, distance, linkage), mode,
                                                     head_labels(run, switch))
        except ValueError as exc:
            return figures.empty_figure(str(exc), 260), error_text(str(exc)), True, None
        return fig, status, disabled, run_id

    app.callback(
        Output(ids.CLUSTER_GRAPH, "figure"), Output(ids.CLUSTER_STATUS, "children"),
        Output(ids.CLUSTER_DOWNLOAD_BUTTON, "disabled"), Output(ids.CLUSTER_FOR, "data"),
        Input(ids.CLUSTER_BUTTON, "n_clicks"), Input(ids.CURRENT_RUN, "data"),
        Input(ids.CLUSTER_PROFILE, "value"), Input(ids.CLUSTER_DISTANCE, "value"),
        Input(ids.CLUSTER_LINKAGE, "value"), Input(ids.VALUE_MODE, "value"),
        Input(ids.RESULTS_HEAD_LABELS, "value"), State(ids.CLUSTER_FOR, "data"),
        prevent_initial_call=True)(show)

    def download(n_clicks, shown_for, profile, distance, linkage, mode, switch):
        """The clustergram on screen as CSV: order,layer,head,label,detector,joins_at (as the CLI)."""
        if not n_clicks or not shown_for:
            return no_update
        run = ctx.run(shown_for)
        spec, _ = cluster_spec(profile, distance, linkage, mode, run.result)
        cg = clustergram(run.result, spec, head_labels(run, switch))
        return dcc.send_string(write_csv(cg.frame()), f"patchboard-run{shown_for}-clustergram.csv")

    app.callback(Output(ids.CLUSTER_DOWNLOAD, "data"), Input(ids.CLUSTER_DOWNLOAD_BUTTON, "n_clicks"),
                 State(ids.CLUSTER_FOR, "data"), State(ids.CLUSTER_PROFILE, "value"),
                 State(ids.CLUSTER_DISTANCE, "value"), State(ids.CLUSTER_LINKAGE, "value"),
                 State(ids.VALUE_MODE, "value"), State(ids.RESULTS_HEAD_LABELS, "value"),
                 prevent_initial_call=True)(download)
    return SimpleNamespace(show_clustergram=show, download_clustergram=download)


__all__ = ["section", "register", "clustergram_view", "cluster_spec", "IDLE"]
