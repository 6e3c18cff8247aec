"""End-to-end: the head-detector view of the Neurons & weights tab in a real headless Chromium.

`python -m dashboard` in a subprocess around the shipped default model (so the screenshot shows
a trained model's heads). Opens the tab, picks "Head detectors", sees the three layer × head
maps with their colour bars, types a bad number of sequences and reads the inline message, then
a good one, and downloads the `layer,head,detector,score` CSV.

Set PATCHBOARD_SCREENSHOTS=docs/screenshots to save 17-head-detectors.png.
"""
from __future__ import annotations

import csv

import pytest

from dashboard.tabs import neurons as nt
from tests.e2e.support import open_page, run_dashboard, shot, skip_reason

pytestmark = pytest.mark.e2e
TIMEOUT = 60_000   # ms

if skip_reason():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=skip_reason())]

GRAPH = f"#{nt.NEURONS_GRAPH}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from run_dashboard(None, tmp_path_factory.mktemp("dashboard-data-detectors"))


@pytest.fixture(scope="module")
def page(server):
    yield from open_page(server, timeout_ms=TIMEOUT)


def _status(page) -> str:
    return page.inner_text(f"#{nt.NEURONS_STATUS}")


def test_head_detectors_view_shows_three_maps(page):
    page.click("a.nav-link:text-is('Neurons & weights')")
    page.click(f"#{nt.NEURONS_VIEW}")
    page.click(".dash-dropdown-option:has-text('Head detectors')")
    page.keyboard.press("Escape")
    page.wait_for_function("s => document.querySelector(s)?.textContent.includes('Head detectors ·')",
                           arg=f"{GRAPH} .gtitle")
    assert page.locator(f"{GRAPH} g.hm").count() == 3
    titles = page.eval_on_selector_all(f"{GRAPH} .annotation-text", "els => els.map(e => e.textContent)")
    assert [t.split(" · best ")[0] for t in titles] == ["Previous-token", "Duplicate-token", "Induction"]
    bars = page.eval_on_selector_all(f"{GRAPH} .colorbar .cbtitle", "els => els.map(e => e.textContent)")
    assert "mean attention tothe previous token" in bars and len(bars) == 3        # two lines, no space
    ticks = page.eval_on_selector_all(f"{GRAPH} .xy .ytick text",
                                      "els => els.map(e => [e.textContent, e.getBoundingClientRect().top])")
    assert [name for name, _ in sorted(ticks, key=lambda t: t[1])] == ["L0", "L1", "L2", "L3"]   # layer 0 on top
    for name in ("sequences", "half_length", "seed"):
        assert page.is_visible(f"#{nt.CONTROL_IDS[name]}")
    assert not page.is_visible(f"#{nt.CONTROL_IDS['layer']}")
    assert not page.errors
    shot(page, "17-head-detectors")


def test_bad_sequences_is_an_inline_message_then_a_good_one_redraws(page):
    page.fill(f"#{nt.NEURONS_SEQUENCES}", "0")
    page.press(f"#{nt.NEURONS_SEQUENCES}", "Enter")
    page.wait_for_function("([id, t]) => document.getElementById(id).innerText.includes(t)",
                           arg=[nt.NEURONS_STATUS, "sequences must be a whole number from 1 to 256, not 0"])
    assert page.is_disabled(f"#{nt.NEURONS_DOWNLOAD_BUTTON}")
    page.fill(f"#{nt.NEURONS_SEQUENCES}", "8")
    page.press(f"#{nt.NEURONS_SEQUENCES}", "Enter")
    page.wait_for_function("s => document.querySelector(s)?.textContent.includes('8 repeated random sequences')",
                           arg=f"{GRAPH} .gtitle")
    assert "previous token" in _status(page)


def test_download_csv_is_layer_head_detector_score(page):
    page.wait_for_function(f"!document.getElementById('{nt.NEURONS_DOWNLOAD_BUTTON}').disabled")
    with page.expect_download() as info:
        page.click(f"#{nt.NEURONS_DOWNLOAD_BUTTON}")
    assert info.value.suggested_filename == "patchboard-head-detectors-n8-half20-seed0.csv"
    with open(info.value.path(), newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["layer", "head", "detector", "score"]
    assert len(rows) == 1 + 4 * 4 * 3
    assert all(0 <= float(r[3]) <= 1 for r in rows[1:])
    assert not page.errors


def test_results_switch_names_firing_heads_without_errors(page):
    """A head_out run, then the Results tab's detector-label switch: the heatmap redraws (the
    default model has no head >= 0.4, so no cell is labelled) and the page stays error-free."""
    page.click("a.nav-link:text-is('Results')")
    page.click("#run-button")
    page.wait_for_selector("#results-heatmap g.hm")
    page.click("label:has-text('name heads that fire on a head detector')")
    page.wait_for_function("document.querySelector('#results-head-labels input').checked")
    page.wait_for_timeout(1500)
    assert page.locator("#results-heatmap g.hm").count() == 1
    assert not page.errors
