"""End-to-end: the Circuit tab in a real headless Chromium.

`python -m dashboard` in a subprocess around the tiny GPT-2 model (its default prompts are the IOI
pair). Opens the Circuit tab, types components, toggles one by clicking a grid cell, runs, and
box-selects two more, runs, and reads the faithfulness number and the curve; then computes EAP
edges and sees the graph. A head_out sweep then colours the grid and Top k picks from it.

Set PATCHBOARD_SCREENSHOTS=docs/screenshots to save 14-circuit.png.
"""
from __future__ import annotations

import re

import pytest

from dashboard.tabs import circuit as ct
from dashboard import ids
from tests.e2e.support import open_page, run_dashboard, shot, skip_reason

pytestmark = pytest.mark.e2e
TIMEOUT = 60_000   # ms

if skip_reason():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=skip_reason())]


@pytest.fixture(scope="module")
def server(tiny_dirs, tmp_path_factory):
    yield from run_dashboard(tiny_dirs["gpt2"], tmp_path_factory.mktemp("dashboard-data-circuit"))


@pytest.fixture(scope="module")
def page(server):
    yield from open_page(server, timeout_ms=TIMEOUT)


def test_circuit_tab_runs_and_shows_faithfulness(page):
    page.click("a.nav-link:text-is('Circuit')")
    page.wait_for_selector(f"#{ct.CIRCUIT_GRID} g.hm")
    page.fill(f"#{ct.CIRCUIT_COMPONENTS}", "L0H0, MLP0")
    page.press(f"#{ct.CIRCUIT_COMPONENTS}", "Tab")
    drag = page.locator(f"#{ct.CIRCUIT_GRID} .nsewdrag").first
    drag.scroll_into_view_if_needed()
    box = drag.bounding_box()                  # rows L0, L1; columns H0..H3, MLP: click L1.H2
    page.mouse.click(box["x"] + box["width"] * (2.5 / 5), box["y"] + box["height"] * (1.5 / 2))
    page.wait_for_function("([id, t]) => document.getElementById(id).value === t",
                           arg=[ct.CIRCUIT_COMPONENTS, "L0H0,MLP0,L1H2"])
    # a box over row L1, columns H3 and MLP adds L1H3 and MLP1
    page.mouse.move(box["x"] + box["width"] * (3.2 / 5), box["y"] + box["height"] * (1.15 / 2))
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * (4.8 / 5), box["y"] + box["height"] * (1.85 / 2), steps=8)
    page.mouse.up()
    page.wait_for_function("([id, t]) => document.getElementById(id).value === t",
                           arg=[ct.CIRCUIT_COMPONENTS, "L0H0,MLP0,L1H2,L1H3,MLP1"])
    page.click(f"#{ct.CIRCUIT_RUN_BUTTON}")
    page.wait_for_selector(f"#{ct.CIRCUIT_FAITHFULNESS}-value")
    number = page.inner_text(f"#{ct.CIRCUIT_FAITHFULNESS}-value")
    assert re.fullmatch(r"-?\d+\.\d{3}", number), number
    assert "5 components, mean ablation" in page.inner_text(f"#{ct.CIRCUIT_FAITHFULNESS}")
    page.wait_for_function(f"document.querySelectorAll('#{ct.CIRCUIT_CURVE} .scatterlayer .point').length === 6")
    assert not page.is_disabled(f"#{ct.CIRCUIT_DOWNLOAD_BUTTON}")
    page.click(f"#{ct.CIRCUIT_EDGES_BUTTON}")
    page.wait_for_function("([id, t]) => document.getElementById(id).innerText.includes(t)",
                           arg=[ct.CIRCUIT_EDGES_STATUS, "edges with |score|"])
    page.wait_for_selector(f"#{ct.CIRCUIT_EDGE_GRAPH} .scatterlayer .point")
    assert page.errors == []


def test_circuit_from_a_head_out_run_top_k(page):
    """A head_out sweep on the Results tab colours the grid; Top k keeps its 3 largest effects."""
    page.click("a.nav-link:text-is('Results')")
    page.click(f"#{ids.RUN_BUTTON}")
    page.wait_for_selector(f"#{ids.RESULTS_HEATMAP} g.hm")
    page.click("a.nav-link:text-is('Circuit')")
    page.click(f"#{ct.CIRCUIT_SOURCE}")
    page.click(".dash-dropdown-option:has-text('head_out')")
    page.keyboard.press("Escape")
    page.wait_for_function("([id, t]) => document.getElementById(id).innerText.includes(t)",
                           arg=[ct.CIRCUIT_GRID, "Effects from #"])
    page.fill(f"#{ct.CIRCUIT_TOP_K}", "3")
    page.click(f"#{ct.CIRCUIT_TOP_BUTTON}")
    page.wait_for_function("id => document.getElementById(id).value.split(',').length === 3",
                           arg=ct.CIRCUIT_COMPONENTS)
    page.click(f"#{ct.CIRCUIT_RUN_BUTTON}")
    page.wait_for_function("([id, t]) => document.getElementById(id).innerText.includes(t)",
                           arg=[ct.CIRCUIT_FAITHFULNESS, "ordered by |effect| in #"])
    assert re.fullmatch(r"-?\d+\.\d{3}", page.inner_text(f"#{ct.CIRCUIT_FAITHFULNESS}-value"))
    shot(page, "14-circuit")
    assert page.errors == []
