"""End-to-end: the run card's cost preview and the Attribution tab's exact-vs-attribution section
in a real headless Chromium, on the shipped default model (so the scatter shows a real model).

The estimate line appears under the run card and follows the kind; an attribution run, then
"Compare with exact patching", draws the scatter (one point per head) and the flagged table;
"Refine top-k" lists the top cells with their exact values.

Set PATCHBOARD_SCREENSHOTS=docs/screenshots to save 15-exact-vs-attribution.png.
"""
from __future__ import annotations

import pytest

from dashboard import ids
from tests.e2e.support import ROOT, open_page, run_dashboard, shot, skip_reason
from tests.e2e.test_path_attribution_e2e import fill, wait_text

pytestmark = pytest.mark.e2e
TIMEOUT = 90_000

if skip_reason():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=skip_reason())]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from run_dashboard(ROOT / "assets" / "models" / "patchboard-tiny", tmp_path_factory.mktemp("cost-e2e"))


@pytest.fixture(scope="module")
def page(server):
    yield from open_page(server, timeout_ms=TIMEOUT)


def test_cost_line_follows_the_form(page):
    wait_text(page, ids.COST_ESTIMATE, "patched forwards")
    before = page.inner_text(f"#{ids.COST_ESTIMATE}")
    assert "forward-equivalents" in before and "on cpu" in before and "peak ≈" in before
    page.click("details.filters summary")
    fill(page, ids.LAYERS_FILTER, "0")                        # fewer cells: a different estimate
    page.wait_for_function("([id, b]) => document.getElementById(id).innerText !== b && "
                           "document.getElementById(id).innerText.includes('patched forwards')",
                           arg=[ids.COST_ESTIMATE, before])
    fill(page, ids.LAYERS_FILTER, "")
    assert page.locator(f"#{ids.COST_SUGGESTION}-box").is_hidden()   # far below a minute here


def test_scatter_flagged_and_refine(page):
    page.click("a.nav-link:has-text('Attribution')")
    page.click(f"#{ids.ATTR_RUN_BUTTON}")
    wait_text(page, ids.ATTR_SUMMARY, "Attribution #")
    page.wait_for_selector(f"#{ids.ATTR_FIGURE} g.hm")
    page.click(f"#{ids.ATTR_AGREE_BUTTON}")
    wait_text(page, ids.ATTR_AGREEMENT, "Agreement with exact patching · head_out: Pearson r")
    page.wait_for_function(
        f"document.querySelectorAll('#{ids.ATTR_COMPARE_FIGURE} .scatterlayer .point').length >= 16")
    wait_text(page, ids.ATTR_FLAGGED, "Spearman")
    fill(page, ids.ATTR_REFINE_K, "5")
    page.click(f"#{ids.ATTR_REFINE_BUTTON}")
    wait_text(page, ids.ATTR_REFINE_STATUS, "Exact patching of the top 5 of 16 head_out cells")
    page.click(f"#{ids.ATTR_SHOW_KIND}")                     # resid_pre: its layer-0 cell is the usual miss
    page.click(".dash-dropdown-option:has(input[value='resid_pre'])")
    page.keyboard.press("Escape")
    page.click(f"#{ids.ATTR_AGREE_BUTTON}")
    wait_text(page, ids.ATTR_AGREEMENT, "Agreement with exact patching · resid_pre: Pearson r")
    wait_text(page, ids.ATTR_FLAGGED, "resid_pre: Pearson r")      # (on the shipped model: 1 missed)
    fill(page, ids.ATTR_REFINE_K, "5")
    page.click(f"#{ids.ATTR_REFINE_BUTTON}")
    wait_text(page, ids.ATTR_REFINE_STATUS, "Exact patching of the top 5 of 60 resid_pre cells")
    assert page.locator(f"#{ids.ATTR_REFINE_TABLE} tbody tr").count() == 5
    page.locator(f"#{ids.ATTR_COMPARE_FIGURE}").scroll_into_view_if_needed()
    shot(page, "15-exact-vs-attribution")
    assert not page.errors, page.errors


def test_slow_estimate_suggests_attribution_first(page, tmp_path):
    import csv
    from tests.conftest import IOI
    from tests.e2e.test_dashboard_e2e import choose
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["clean", "corrupt", "answer", "wrong"])
        w.writerows(IOI * 512)                                  # 1,024 pairs of 15 tokens
    page.set_input_files(f"#{ids.PAIRS_UPLOAD} input[type=file]", str(path))
    page.wait_for_selector(".pairs-preview")
    choose(page, ids.KIND_SELECT, "neuron")           # 4 layers x 512 neurons x 1,024 pairs: minutes
    page.wait_for_function("([id, t]) => /≈ [0-9],[0-9]{3},[0-9]{3} patched forwards/.test(document.getElementById(id).innerText)",
                           arg=[ids.COST_ESTIMATE, ""])
    page.wait_for_selector(f"#{ids.COST_SUGGESTION}-box", state="visible")
    assert "Attribution patching estimates every cell" in page.inner_text(f"#{ids.COST_SUGGESTION}")
    page.locator(f"#{ids.COST_SUGGESTION}-box").scroll_into_view_if_needed()
    shot(page, "16-cost-suggestion")
    page.click(f"#{ids.COST_ATTRIBUTION_BUTTON}")
    page.wait_for_selector(f"#{ids.ATTRIBUTION_PANEL}", state="visible")
    wait_text(page, ids.ATTR_SUMMARY, "Attribution #2")
    wait_text(page, ids.ATTR_SUMMARY, "1024 pairs")
    assert "MLP neurons" in page.inner_text(f"#{ids.ATTR_FIGURE}")
    assert not page.errors, page.errors
