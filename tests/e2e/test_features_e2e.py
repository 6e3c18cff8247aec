"""End-to-end: the Features tab on the shipped model and its SAEs, in a real headless Chromium.

Set PATCHBOARD_SCREENSHOTS=docs/screenshots to save 21-features-top.png and
22-feature-page-contexts.png.
"""
from __future__ import annotations

import re

import pytest

from dashboard import ids
from tests.e2e.support import open_page, run_dashboard, shot, skip_reason

pytestmark = pytest.mark.e2e
if skip_reason():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=skip_reason())]

TIMEOUT = 120_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from run_dashboard(None, tmp_path_factory.mktemp("features-data"))


@pytest.fixture(scope="module")
def page(server):
    yield from open_page(server, timeout_ms=TIMEOUT)


def _choose_view(page, label: str) -> None:
    page.locator(f"#{ids.FEATURES_VIEW} label", has_text=label).click()


def test_top_features_of_the_ioi_prompt_are_drawn_by_layer(page):
    page.click("text=Features")
    page.wait_for_selector("#features-graph .heatmaplayer", timeout=TIMEOUT)
    page.wait_for_selector("#features-table td", timeout=TIMEOUT)
    cells = [t.strip() for t in page.locator("#features-table td").all_inner_texts() if t]
    assert any(re.fullmatch(r"F\d+|error", t) for t in cells), cells[:20]
    assert page.is_visible("#features-download-button:not([disabled])")
    shot(page, "21-features-top")


def test_a_feature_page_shows_contexts_with_both_sides_and_a_histogram(page):
    _choose_view(page, "Contexts")
    page.fill(f"#{ids.FEATURES_LAYER}", "2")
    page.fill(f"#{ids.FEATURES_FEATURE}", "0")
    page.press(f"#{ids.FEATURES_FEATURE}", "Enter")
    page.wait_for_function("document.querySelector('#features-graph .gtitle') && "
                           "document.querySelector('#features-graph .gtitle').textContent.includes('L2 F0')",
                           timeout=TIMEOUT)
    headers = page.locator("#features-table th").all_inner_texts()
    assert [h.strip() for h in headers[:4]] == ["rank", "left", "token", "right"]
    shot(page, "22-feature-page-contexts")


def test_a_feature_out_of_range_is_said_where_it_was_typed(page):
    _choose_view(page, "Logit effects")
    page.fill(f"#{ids.FEATURES_FEATURE}", "9999")
    page.press(f"#{ids.FEATURES_FEATURE}", "Enter")      # number boxes send on Enter / leaving them
    page.wait_for_selector("#features-status .error-text", timeout=TIMEOUT)
    assert "feature 9999 is out of range" in page.inner_text("#features-status")
