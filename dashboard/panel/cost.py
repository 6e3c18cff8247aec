"""The run card's cost preview: whenever the model, prompts, kind or filters change, the estimate
of the sweep Run would start; above `SLOW_SECONDS` a suggestion with a button that opens the
Attribution tab with the same kind and starts an attribution run.

The estimate counts the work of the sweep the Run button would start (`patching.methods.cost`), with the
seconds calibrated once per model on this server (`CalibrationCache`, owned by the app). When it
exceeds `SLOW_SECONDS`, the card suggests attribution patching first.

>>> view = cost_view(registry, calibrations, form)              # doctest: +SKIP
>>> view.text                                                   # doctest: +SKIP
'≈ 32 patched forwards (≈ 13 forward-equivalents; TransformerLens ≈ 36), ≈ 0.2 s on cpu, peak ≈ 3.5 MB'
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace

import dash_bootstrap_components as dbc
from dash import Input, Output, State, html, no_update

from patching.methods.cost import SLOW_SECONDS, CalibrationCache, estimate_cost
from patching.runs.slot import run_busy

from dashboard import ids
from dashboard.components import page_inputs
from dashboard.forms import Form, check_model, parse_form
from dashboard.server import fork_guard

log = logging.getLogger("dashboard")
PAUSED = "Cost estimate paused while a run is in progress; it updates on the next change of the form."


@dataclass(frozen=True)
class CostView:
    """What the run card shows: the estimate's line, or nothing when the form is not valid yet
    (the form's error is shown by live validation)."""
    text: str = ""
    seconds: float = 0.0
    slow: bool = False
    kind: str = ""
    per_position: bool = False

    @property
    def suggestion(self) -> str:
        if not self.slow:
            return ""
        return (f"This exact sweep would take about {self.seconds / 60:.0f} min. Attribution patching estimates "
                f"every cell of every kind from about three forwards per pair; run it first, then refine the "
                f"top cells exactly." if self.seconds >= 120 else
                f"This exact sweep would take about {self.seconds:.0f} s. Attribution patching estimates every "
                f"cell of every kind from about three forwards per pair; run it first, then refine the top "
                f"cells exactly.")


def cost_view(registry, calibrations: CalibrationCache, form: Form, slow_seconds: float = SLOW_SECONDS,
              max_memory_mb: float | None = None) -> CostView:
    """The estimate for the form's sweep (batches of at most `max_memory_mb`, as the run's); an empty
    view when the form does not validate, and a line saying why when this web host has no weights
    to count with (--tokenizers-only)."""
    from patching.model.tokenizer_only import NoWeightsError
    try:
        model = registry.get(check_model(registry, form.model))
        spec, prompts = parse_form(model, form)
        est = estimate_cost(model, prompts, spec, calibration=calibrations.get(model, prompts),
                            max_memory_mb=max_memory_mb)
    except NoWeightsError:
        return CostView("No cost preview: this web host loads no weights (--tokenizers-only); the run "
                        "itself goes to a worker.")
    except ValueError:
        return CostView()
    return CostView(est.text(), est.seconds, est.seconds > slow_seconds, spec.kind, spec.per_position)


def cost_line() -> html.Div:
    """The run card's estimate line and the (hidden) slow-run suggestion."""
    return html.Div([
        html.Div(id=ids.COST_ESTIMATE, className="cost-estimate hint"),
        html.Div([
            html.Span(id=ids.COST_SUGGESTION, className="cost-suggestion-text"),
            dbc.Button("Run attribution first", id=ids.COST_ATTRIBUTION_BUTTON, color="warning", outline=True,
                       size="sm", n_clicks=0, className="mt-1"),
        ], id=ids.COST_SUGGESTION_BOX, hidden=True, className="cost-suggestion"),
    ], className="cost-preview")


def register(app, ctx, *, slow_seconds: float = SLOW_SECONDS) -> SimpleNamespace:
    """Wire the cost preview and its suggestion; returns them (for tests)."""
    registry, data_dir = ctx.registry, ctx.data_dir
    # one calibration per model, for this app, timed as the jobs will run (fork_guard)
    calibrations = CalibrationCache(fork_guard.job_like_calibration)

    def cost_preview(model, clean, corrupt, answer, wrong, bos, pairs, kind, metric, direction, per_position,
                     layers, positions, heads):
        """Form -> the estimate line, the suggestion text and whether the suggestion is hidden.
        While a run holds the run slot the estimate waits: its two forwards would compete with
        the run for the device's memory, and its timing would be skewed."""
        if run_busy(data_dir):
            return PAUSED, "", True
        form = Form.from_page(model, clean, corrupt, answer, wrong, bos, pairs, kind, metric, direction,
                              per_position, layers, positions, heads)
        try:
            view = cost_view(registry, calibrations, form, slow_seconds, ctx.max_memory_mb)
        except Exception:                      # a preview must never break the page
            log.exception("cost preview failed")
            return "", "", True
        return view.text, view.suggestion, not view.slow

    app.callback(Output(ids.COST_ESTIMATE, "children"), Output(ids.COST_SUGGESTION, "children"),
                 Output(ids.COST_SUGGESTION_BOX, "hidden"), *page_inputs())(cost_preview)

    def attribution_first(n_clicks, kind, per_position, attr_clicks):
        """The suggestion's button: the Attribution tab, the same kind, and its Run pressed."""
        if not n_clicks:
            return no_update, no_update, no_update, no_update
        return ids.TAB_ATTRIBUTION, [kind] if kind else [], list(per_position or []), (attr_clicks or 0) + 1

    app.callback(Output(ids.TABS, "active_tab", allow_duplicate=True), Output(ids.ATTR_KINDS, "value"),
                 Output(ids.ATTR_PER_POSITION, "value"), Output(ids.ATTR_RUN_BUTTON, "n_clicks"),
                 Input(ids.COST_ATTRIBUTION_BUTTON, "n_clicks"), State(ids.KIND_SELECT, "value"),
                 State(ids.PER_POSITION, "value"), State(ids.ATTR_RUN_BUTTON, "n_clicks"),
                 prevent_initial_call=True)(attribution_first)

    return SimpleNamespace(cost_preview=cost_preview, attribution_first=attribution_first, calibrations=calibrations)
