"""End-to-end: the Path patching and Attribution tabs in a real headless Chromium.

`python -m dashboard` in a subprocess around the tiny GPT-2 model the session fixtures save (its
default prompts are the IOI pair, which that tokenizer splits into 15 tokens each); the page is
driven by the ids in dashboard/ids.py: a bad receiver is refused under the tab's Run button, a path sweep
draws its heatmap, downloads its CSV and shows a receiver head's attention for a clicked sender, a receivers sweep draws bars, an attribution run draws a
heatmap per kind and its top edges, downloads every kind's CSV and the edges' CSV, and reports its
agreement with exact patching.

Set PATCHBOARD_SCREENSHOTS=docs/screenshots to save 07-path-patching.png and 08-attribution.png.
"""
from __future__ import annotations

import csv

import pytest

from dashboard import ids
from patching.core.results import CSV_COLUMNS
from tests.e2e.support import open_page, run_dashboard, shot, skip_reason

pytestmark = pytest.mark.e2e
TIMEOUT = 60_000   # ms: generous, the machine may be busy

if skip_reason():     # the reason is also printed in the run's summary (tests/e2e/conftest.py)
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=skip_reason())]


@pytest.fixture(scope="module")
def server(tiny_dirs, tmp_path_factory):
    """`python -m dashboard` around the tiny GPT-2 model; yields its URL."""
    yield from run_dashboard(tiny_dirs["gpt2"], tmp_path_factory.mktemp("dashboard-data-path"))


@pytest.fixture(scope="module")
def page(server):
    for pg in open_page(server, timeout_ms=TIMEOUT):
        pg.wait_for_function(f"document.querySelectorAll('#{ids.TOKEN_VIEW} .tok').length === 30")
        yield pg


def download(page, button_id: str) -> list[list[str]]:
    with page.expect_download() as info:
        page.click(f"#{button_id}")
    with open(info.value.path(), newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def fill(page, id_: str, text: str) -> None:
    page.fill(f"#{id_}", text)
    page.press(f"#{id_}", "Tab")             # debounced inputs send on blur


def wait_text(page, id_: str, needle: str) -> None:
    page.wait_for_function("([id, t]) => document.getElementById(id).innerText.includes(t)",
                           arg=[id_, needle])


def test_path_bad_receiver_then_sweep_then_csv(page):
    page.click("a.nav-link:has-text('Path patching')")
    fill(page, ids.PATH_RECEIVERS, "q:1.0, q:7.0")
    page.click(f"#{ids.PATH_RUN_BUTTON}")
    wait_text(page, ids.PATH_ERROR, "receiver 'q:7.0': layer 7 out of range")
    fill(page, ids.PATH_RECEIVERS, "q:1.0, q:1.1")
    page.click(f"#{ids.PATH_RUN_BUTTON}")
    wait_text(page, ids.PATH_SUMMARY, "Run #")
    page.wait_for_selector(f"#{ids.PATH_FIGURE} g.hm")
    assert page.inner_text(f"#{ids.PATH_ERROR}") == ""
    assert "every head → q:1.0+q:1.1" in page.inner_text(f"#{ids.PATH_SUMMARY}")
    assert "clean logit_diff" in page.inner_text(f"#{ids.PATH_STATUS}")
    ticks = page.eval_on_selector_all(f"#{ids.PATH_FIGURE} .xtick text", "els => els.map(e => e.textContent)")
    assert ticks == ["H0", "H1", "H2", "H3"]
    rows = download(page, ids.PATH_DOWNLOAD_BUTTON)
    header = rows[0]
    assert tuple(header[:9]) == CSV_COLUMNS and "sender" in header and "receiver" in header
    assert len(rows) - 1 == 4                         # layer-0 heads; layer 1 writes after q:1.* read
    assert {r[header.index("receiver")] for r in rows[1:]} == {"q:1.0+q:1.1"}
    drag = page.locator(f"#{ids.PATH_FIGURE} .nsewdrag").first
    drag.scroll_into_view_if_needed()
    box = drag.bounding_box()                          # rows L0, L1; columns H0..H3: click L0.H2
    page.mouse.click(box["x"] + box["width"] * (2.5 / 4), box["y"] + box["height"] * (0.5 / 2))
    page.wait_for_function(f"document.querySelectorAll('#{ids.PATH_ATTENTION} g.hm').length >= 5")
    assert "L1.H0 (q:1.0) · sender L0.H2" in page.inner_text(f"#{ids.PATH_ATTENTION_STATUS}")
    shot(page, "07-path-patching")


def test_path_receivers_sweep_draws_bars(page):
    fill(page, ids.PATH_SENDERS, "head:0.1")
    fill(page, ids.PATH_RECEIVERS, "")
    page.click(f"#{ids.PATH_SWEEP} label:has-text('one sender through each receiver')")
    before = page.inner_text(f"#{ids.PATH_SUMMARY}")
    page.click(f"#{ids.PATH_RUN_BUTTON}")
    page.wait_for_function("([id, b]) => document.getElementById(id).innerText !== b && "
                           "document.getElementById(id).innerText.includes('each receiver')",
                           arg=[ids.PATH_SUMMARY, before])
    page.wait_for_selector(f"#{ids.PATH_FIGURE} g.barlayer .point")
    labels = page.eval_on_selector_all(f"#{ids.PATH_FIGURE} .ytick text", "els => els.map(e => e.textContent)")
    assert "logits" in labels and "q:1.0" in labels


def test_attribution_run_kinds_csv_agreement(page):
    page.click("a.nav-link:has-text('Attribution')")
    page.click(f"#{ids.ATTR_EDGES} label")                      # edge scores too
    page.click(f"#{ids.ATTR_RUN_BUTTON}")
    wait_text(page, ids.ATTR_SUMMARY, "Attribution #")
    page.wait_for_selector(f"#{ids.ATTR_FIGURE} g.hm")
    assert "Attention head output" in page.inner_text(f"#{ids.ATTR_FIGURE}")   # head_out shown first
    page.click(f"#{ids.ATTR_SHOW_KIND}")
    page.click(".dash-dropdown-option:has(input[value='resid_pre'])")
    page.keyboard.press("Escape")
    page.wait_for_function(
        f"Array.from(document.querySelectorAll('#{ids.ATTR_FIGURE} .xtick text')).some(e => e.textContent.startsWith('10: '))")
    rows = download(page, ids.ATTR_DOWNLOAD_BUTTON)
    header = rows[0]
    assert tuple(header[:9]) == CSV_COLUMNS and "method" in header
    kinds = {r[0] for r in rows[1:]}
    assert {"resid_pre", "head_out", "mlp_out", "neuron"} <= kinds
    assert page.locator(f"#{ids.ATTR_EDGES_TABLE} tbody tr").count() == 12
    edges = download(page, ids.ATTR_EDGES_DOWNLOAD_BUTTON)
    assert edges[0][:3] == ["upstream", "downstream", "score"] and len(edges) > 12
    page.click(f"#{ids.ATTR_AGREE_BUTTON}")
    wait_text(page, ids.ATTR_AGREEMENT, "Agreement with exact patching · resid_pre: Pearson r")
    shot(page, "08-attribution")
    assert not page.errors, page.errors
