"""The left column: the prompts card (`prompts`) and the run card (`run_card`, with the cost
preview of `cost`). Every tab reads its prompts, metric and direction from here.

>>> panel.layout(registry, "default")                                    # doctest: +SKIP
"""
from __future__ import annotations

from types import SimpleNamespace

from dashboard.panel import cost, prompts, run_card


def layout(registry, model: str) -> list:
    return [prompts.layout(registry, model), run_card.layout()]


def register(app, ctx) -> SimpleNamespace:
    """Wire the panel's callbacks; returns them as one namespace (for tests)."""
    return SimpleNamespace(**vars(prompts.register(app, ctx)), **vars(run_card.register(app, ctx)),
                           **vars(cost.register(app, ctx)))
