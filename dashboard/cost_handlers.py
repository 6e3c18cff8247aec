"""Handlers for the run card's cost preview (pure: the registry, a calibration cache, the form).

The estimate counts the work of the sweep the Run button would start (`patching.methods.cost`), with the
seconds calibrated once per model on this server (`CalibrationCache`, owned by the app). When it
exceeds `SLOW_SECONDS`, the card suggests attribution patching first.

>>> view = cost_view(registry, calibrations, form)              # doctest: +SKIP
>>> view.text                                                   # doctest: +SKIP
'≈ 32 patched forwards (≈ 13 forward-equivalents; TransformerLens ≈ 36), ≈ 0.2 s on cpu, peak ≈ 3.5 MB'
"""
from __future__ import annotations

from dataclasses import dataclass

from patching.methods.cost import SLOW_SECONDS, CalibrationCache, estimate_cost

from dashboard.handlers import Form, check_model, parse_form


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


def cost_view(registry, calibrations: CalibrationCache, form: Form, slow_seconds: float = SLOW_SECONDS) -> CostView:
    """The estimate for the form's sweep; an empty view when the form does not validate, and a
    line saying why when this web host has no weights to count with (--tokenizers-only)."""
    from patching.model.tokenizer_only import NoWeightsError
    try:
        model = registry.get(check_model(registry, form.model))
        spec, prompts = parse_form(model, form)
        est = estimate_cost(model, prompts, spec, calibration=calibrations.get(model, prompts))
    except NoWeightsError:
        return CostView("No cost preview: this web host loads no weights (--tokenizers-only); the run "
                        "itself goes to a worker.")
    except ValueError:
        return CostView()
    return CostView(est.text(), est.seconds, est.seconds > slow_seconds, spec.kind, spec.per_position)
