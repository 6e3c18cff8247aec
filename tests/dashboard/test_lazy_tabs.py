"""Lazy tabs (issue #17 item 15): the first load carries no body of the Inspect, Neurons and
Features tabs (so none of their graphs mount and none of their callbacks fire); opening one fills
its body with its layout once, and it stays."""
from __future__ import annotations

import dash

from dashboard import ids
from dashboard.page import LAZY, open_lazy_tabs
from tests.dash_tree import walk


def _ids(component) -> set:
    return {getattr(c, "id", None) for c in walk(component)} - {None}


def test_the_first_load_has_empty_bodies_for_the_lazy_tabs(app):
    present = _ids(app.layout)
    assert {t.tab_id for t in LAZY} == {ids.TAB_INSPECT, ids.TAB_NEURONS, ids.TAB_FEATURES}
    for t in LAZY:
        assert ids.tab_body(t.tab_id) in present
        assert not (_ids(t.module.layout()) & present), t.label       # none of its components yet
    assert {ids.RESULTS_HEATMAP, ids.RUN_HISTORY, ids.PATH_RUN_BUTTON, ids.CIRCUIT_RUN_BUTTON} <= present


def test_opening_a_lazy_tab_renders_it_once(app):
    bodies = app.patchboard.open_lazy_tabs(ids.TAB_RESULTS, *[None] * len(LAZY))
    assert all(b is dash.no_update for b in bodies)                      # another tab: nothing rendered
    bodies = list(open_lazy_tabs(ids.TAB_NEURONS, *[None] * len(LAZY)))
    k = [t.tab_id for t in LAZY].index(ids.TAB_NEURONS)
    assert ids.NEURONS_GRAPH in _ids(bodies[k])
    bodies = [None if b is dash.no_update else b for b in bodies]
    assert open_lazy_tabs(ids.TAB_NEURONS, *bodies)[k] is dash.no_update    # kept: its state stays
