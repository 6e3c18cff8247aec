"""End-to-end: SAE features in the flow (issue #23) on the shipped model and its SAEs, in a real
headless Chromium, one page in file order, four IOI preset pairs:

- Results: a `feature` run (denoise, then noise) shows each layer's strongest units as layer x
  rank, its top-features CSV says the same;
- Attribution: the `feature` kind in the kinds list, its layer x rank figure, and "Compare with
  exact patching" reporting Pearson r, top-k overlap and the flagged cells (both directions);
- Circuit: the feature run ranks SAE units, Top k keeps the 10 strongest, Run gives the feature
  circuit's faithfulness and curve; heads mixed with features are refused inline;
- Features: the page of L2 F109, the IOI preset's strongest single feature.

Set PATCHBOARD_SCREENSHOTS=docs/screenshots to save 31-feature-attribution.png,
32-feature-circuit.png, 33-feature-results.png and 34-feature-L2F109-contexts.png.
"""
from __future__ import annotations

import re

import pytest

from dashboard import ids
from dashboard.tabs import circuit as ct
from tests.e2e.support import open_page, run_dashboard, shot, skip_reason
from tests.e2e.test_dashboard_e2e import choose, download, run_and_wait
from tests.e2e.test_hero_e2e import figure_data

pytestmark = pytest.mark.e2e
if skip_reason():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=skip_reason())]

TIMEOUT = 180_000
N_PAIRS = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from run_dashboard(None, tmp_path_factory.mktemp("feature-flow-data"))


@pytest.fixture(scope="module")
def page(server):
    for pg in open_page(server, timeout_ms=TIMEOUT):
        pg.set_default_timeout(TIMEOUT)
        yield pg


def wait_text(page, id_: str, needle: str) -> None:
    page.wait_for_function("([id, t]) => document.getElementById(id).innerText.includes(t)", arg=[id_, needle])


def _top_units(page, graph_id: str) -> tuple[list, list, list]:
    """(x labels, y labels, cell labels per row) of the layer x rank figure on screen."""
    return tuple(figure_data(page, graph_id, f"d[0].{a}") for a in ("x", "y", "text"))


def test_a_feature_run_shows_each_layers_top_units_and_their_csv(page):
    choose(page, ids.PRESET_SELECT, "ioi")
    page.fill(f"#{ids.PRESET_COUNT}", str(N_PAIRS))
    page.press(f"#{ids.PRESET_COUNT}", "Tab")
    page.wait_for_function(f"document.getElementById('{ids.CLEAN_PROMPT}').value.includes('gave')")
    page.wait_for_function(f"document.getElementById('{ids.ERROR_MESSAGE}').innerText === ''")
    choose(page, ids.KIND_SELECT, "feature")
    for direction in ("denoise", "noise"):
        if direction == "noise":
            page.click(f"#{ids.DIRECTION_SELECT} label:has-text('noise (clean run')")
        summary = run_and_wait(page)
        assert f"feature · {direction}" in summary and f"{N_PAIRS} pairs" in summary, summary
        x, y, text = _top_units(page, ids.RESULTS_HEATMAP)
        assert x == [f"#{r}" for r in range(1, 11)] and y == ["L0", "L1", "L2", "L3"]
        assert all(re.fullmatch(r"F\d+|error", t) for row in text for t in row), text
        assert "top units per layer" in page.inner_text(f"#{ids.RESULTS_HEATMAP}")
        assert page.is_visible(f"#{ids.RESULTS_TOP_FEATURES_BUTTON}")
        rows = download(page, ids.RESULTS_TOP_FEATURES_BUTTON)
        assert rows[0][:4] == ["layer", "rank", "feature_label", "feature"] and len(rows) == 41
        firsts = {int(r[0]): r[2] for r in rows[1:] if r[1] == "1"}
        assert [firsts[layer] for layer in range(4)] == [row[0] for row in text]       # the CSV = the picture
        assert {r[rows[0].index("direction")] for r in rows[1:]} == {direction}
        if direction == "denoise":
            shot(page, "33-feature-results")
    assert not page.errors, page.errors


def test_feature_attribution_and_its_agreement_with_exact_patching(page):
    page.click("a.nav-link:has-text('Attribution')")
    choose(page, ids.ATTR_KINDS, "feature")
    for direction in ("noise", "denoise"):          # the left panel's direction is noise from the Results test
        if direction == "denoise":
            page.click(f"#{ids.DIRECTION_SELECT} label:has-text('denoise')")
        before = page.inner_text(f"#{ids.ATTR_SUMMARY}")
        page.click(f"#{ids.ATTR_RUN_BUTTON}")
        page.wait_for_function("([id, b]) => { const t = document.getElementById(id).innerText;"
                               " return t.includes('Attribution #') && t !== b; }", arg=[ids.ATTR_SUMMARY, before])
        page.wait_for_selector(f"#{ids.ATTR_FIGURE} g.hm")
        x, y, text = _top_units(page, ids.ATTR_FIGURE)
        assert x[0] == "#1" and y == ["L0", "L1", "L2", "L3"] and all(t for row in text for t in row)
        assert "Attribution (plain)" in page.inner_text(f"#{ids.ATTR_FIGURE}")
        assert direction in page.inner_text(f"#{ids.ATTR_FIGURE}")
        page.click(f"#{ids.ATTR_AGREE_BUTTON}")
        wait_text(page, ids.ATTR_AGREEMENT, "Agreement with exact patching · feature: Pearson r = ")
        line = page.inner_text(f"#{ids.ATTR_AGREEMENT}")
        r = float(re.search(r"Pearson r = (-?[\d.]+)", line).group(1))
        assert -1 <= r <= 1 and "2052 cells" in line, line
        wait_text(page, ids.ATTR_FLAGGED, "feature: Pearson r")
        assert "(2052 cells)" in page.inner_text(f"#{ids.ATTR_FLAGGED}")
        page.wait_for_selector(f"#{ids.ATTR_COMPARE_FIGURE} .scatterlayer .point")
    shot(page, "31-feature-attribution")
    assert not page.errors, page.errors


def test_a_feature_circuit_from_the_feature_run(page):
    page.click("a.nav-link:text-is('Circuit')")
    page.click(f"#{ct.CIRCUIT_SOURCE}")
    page.click(".dash-dropdown-option:has-text('· feature')")
    page.keyboard.press("Escape")
    wait_text(page, ct.CIRCUIT_GRID, "SAE units' effects from #")
    page.fill(f"#{ct.CIRCUIT_TOP_K}", "10")
    page.click(f"#{ct.CIRCUIT_TOP_BUTTON}")
    page.wait_for_function("id => document.getElementById(id).value.split(',').length === 10",
                           arg=ct.CIRCUIT_COMPONENTS)
    kept = page.input_value(f"#{ct.CIRCUIT_COMPONENTS}").split(",")
    assert all(re.fullmatch(r"L\dF\d+|L\dERR", c) for c in kept), kept
    grid_names = [n for row in figure_data(page, ct.CIRCUIT_GRID, "d[0].customdata") for n in row]
    assert set(kept) <= set(grid_names)
    page.click(f"#{ct.CIRCUIT_RUN_BUTTON}")
    page.wait_for_selector(f"#{ct.CIRCUIT_FAITHFULNESS}-value")
    number = page.inner_text(f"#{ct.CIRCUIT_FAITHFULNESS}-value")
    assert re.fullmatch(r"-?\d+\.\d{3}", number), number
    assert "10 components, mean ablation" in page.inner_text(f"#{ct.CIRCUIT_FAITHFULNESS}")
    page.wait_for_function(f"document.querySelectorAll('#{ct.CIRCUIT_CURVE} .scatterlayer .point').length === 11")
    shot(page, "32-feature-circuit")
    page.fill(f"#{ct.CIRCUIT_COMPONENTS}", "L0H1, L1F3")
    page.press(f"#{ct.CIRCUIT_COMPONENTS}", "Tab")
    page.click(f"#{ct.CIRCUIT_RUN_BUTTON}")
    wait_text(page, ct.CIRCUIT_STATUS, "not both")
    assert not page.errors, page.errors


def test_the_strongest_ioi_feature_has_a_page(page):
    """L2 F109, the IOI preset's strongest single feature (docs/features.md): its contexts page."""
    page.click("a.nav-link:text-is('Features')")
    page.locator(f"#{ids.FEATURES_VIEW} label", has_text="Contexts").click()
    page.fill(f"#{ids.FEATURES_LAYER}", "2")
    page.fill(f"#{ids.FEATURES_FEATURE}", "109")
    page.press(f"#{ids.FEATURES_FEATURE}", "Enter")
    page.wait_for_function("document.querySelector('#features-graph .gtitle') && "
                           "document.querySelector('#features-graph .gtitle').textContent.includes('L2 F109')")
    page.wait_for_selector("#features-table td")
    shot(page, "34-feature-L2F109-contexts")
    assert not page.errors, page.errors
