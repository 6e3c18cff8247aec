"""End-to-end: the Inspect tab in a real headless Chromium.

The app is `create_app` around the tiny GPT-2 model, served in-process; the Inspect tab is
mounted the way dashboard/page.py mounts it (one more `dbc.Tab` in the main tabs) unless the
page already has it. Drives the logit lens, the attention view and the CSV download by the ids
in dashboard/tabs/inspect.py.

Set PATCHBOARD_SCREENSHOTS=docs/screenshots to save screenshots of the views.
"""
from __future__ import annotations

import csv
import threading

import pytest

from dashboard import ids
from dashboard.context import Context
from dashboard.tabs import inspect as lens_tab
from tests.e2e.support import free_port, open_page, shot, skip_reason

TIMEOUT = 30_000   # ms

pytestmark = pytest.mark.e2e
if skip_reason():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=skip_reason())]


def _mounted(app) -> bool:
    return lens_tab.TAB_INSPECT in str(app.layout.to_plotly_json())


def _mount(app, registry) -> None:
    """What dashboard/page.py does to mount the tab (when it does not yet)."""
    import dash_bootstrap_components as dbc

    def find(c):
        if getattr(c, "id", None) == ids.TABS:
            return c
        children = getattr(c, "children", None)
        for child in children if isinstance(children, (list, tuple)) else [children]:
            if hasattr(child, "to_plotly_json") and (hit := find(child)) is not None:
                return hit
        return None

    tabs = find(app.layout)
    tabs.children = list(tabs.children) + [dbc.Tab(lens_tab.layout(), label="Inspect",
                                                    tab_id=lens_tab.TAB_INSPECT)]
    lens_tab.register(app, Context(registry, None, None))


@pytest.fixture(scope="module")
def server(tiny_dirs, gpt2_model, tmp_path_factory):
    from werkzeug.serving import make_server

    from dashboard import create_app, make_jobs
    from patching.runs.store import RunStore
    from patching.model.loading import ModelRegistry
    name = str(tiny_dirs["gpt2"])
    registry = ModelRegistry([name])
    registry.add(name, gpt2_model)
    store = RunStore(tmp_path_factory.mktemp("inspect-data"))
    app = create_app(registry, store, make_jobs("diskcache", store.data_dir), model=name)
    if not _mounted(app):
        _mount(app, registry)
    port = free_port()
    srv = make_server("127.0.0.1", port, app.server, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/"
    srv.shutdown()


@pytest.fixture(scope="module")
def page(server):
    yield from open_page(server, timeout_ms=TIMEOUT)


def _title(page) -> str:
    return page.inner_text(f"#{lens_tab.INSPECT_GRAPH} .gtitle") if page.locator(
        f"#{lens_tab.INSPECT_GRAPH} .gtitle").count() else ""


def test_inspect_tab_shows_the_logit_lens(page):
    page.click(f"#{ids.TABS} .nav-link:has-text('Inspect')")
    page.wait_for_function(
        f"document.querySelector('#{lens_tab.INSPECT_GRAPH} .gtitle')?.textContent.includes('Logit lens')")
    ticks = page.eval_on_selector_all(f"#{lens_tab.INSPECT_GRAPH} .ytick text", "els => els.map(e => e.textContent)")
    assert sorted(ticks) == ["L0", "L1", "embed"]
    assert page.locator(f"#{lens_tab.INSPECT_GRAPH} g.hm").count() == 1
    assert page.is_visible(f"#{lens_tab.CONTROL_IDS['mode']}")
    assert not page.is_visible(f"#{lens_tab.CONTROL_IDS['layer']}")
    assert not page.errors
    shot(page, "10-inspect-logit-lens")


def test_attention_view_with_a_bad_layer_then_a_good_one(page):
    page.click(f"#{lens_tab.INSPECT_VIEW} label:has-text('Attention')")
    page.wait_for_function(
        f"document.querySelector('#{lens_tab.INSPECT_GRAPH} .gtitle')?.textContent.includes('Attention · layer 0')")
    page.fill(f"#{lens_tab.INSPECT_LAYER}", "7")
    page.press(f"#{lens_tab.INSPECT_LAYER}", "Enter")
    page.wait_for_function(
        f"document.getElementById('{lens_tab.INSPECT_STATUS}').innerText.includes('layer 7 is out of range')")
    assert page.is_disabled(f"#{lens_tab.INSPECT_DOWNLOAD_BUTTON}")
    page.fill(f"#{lens_tab.INSPECT_LAYER}", "1")
    page.press(f"#{lens_tab.INSPECT_LAYER}", "Enter")
    page.wait_for_function(
        f"document.querySelector('#{lens_tab.INSPECT_GRAPH} .gtitle')?.textContent.includes('layer 1')")
    assert page.locator(f"#{lens_tab.INSPECT_GRAPH} g.hm").count() == 4      # one per head
    shot(page, "11-inspect-attention")


def test_download_csv_of_the_view(page):
    page.wait_for_function(f"!document.getElementById('{lens_tab.INSPECT_DOWNLOAD_BUTTON}').disabled")
    with page.expect_download() as info:
        page.click(f"#{lens_tab.INSPECT_DOWNLOAD_BUTTON}")
    assert info.value.suggested_filename == "patchboard-attention-L1-clean-pair0.csv"
    with open(info.value.path(), newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["run", "pair", "layer", "head", "dest", "src", "dest_token", "src_token", "value"]
    assert len(rows) == 1 + 4 * 15 * 16 // 2


def test_top_k_table_is_shown(page):
    page.click(f"#{lens_tab.INSPECT_VIEW} label:has-text('Top-k')")
    page.wait_for_selector(f"#{lens_tab.INSPECT_TABLE} td")
    assert page.locator(f"#{lens_tab.INSPECT_TABLE} tr").count() == 11      # header + 10
    assert not page.errors
    shot(page, "12-inspect-topk")


LONG = ("When Mary and John went to the store,\nJohn gave a drink to Mary. Then, Alice and Bob had a long "
        "argument, and afterwards Bob said to Alice. Paris is a city in the country of France. Tom, Anna, "
        "Sarah went to  the school, the office")      # 59 tokens in the tiny tokenizer ('\n', ' '), 60 with BOS

OVERLAPS = """(sel) => {
    const boxes = [...document.querySelectorAll(sel)].filter(e => e.textContent.length)
        .map(e => e.getBoundingClientRect());
    let n = 0;
    for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
        const a = boxes[i], b = boxes[j];
        if (a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5) n++;
    }
    return [boxes.length, n];
}"""


def test_logit_lens_of_a_60_token_prompt_is_readable(page):
    """Every position's tick label is there (none thinned), cell texts do not overlap, odd tokens
    (\\n, a lone space) are shown visibly, and the panel scrolls sideways instead of squeezing the cells."""
    page.click(f"#{ids.TABS} .nav-link:has-text('Inspect')")
    page.click(f"#{lens_tab.INSPECT_VIEW} label:has-text('Logit lens')")
    for id_, text in ((ids.CLEAN_PROMPT, LONG), (ids.CORRUPT_PROMPT, LONG.replace("Mary.", "John."))):
        page.fill(f"#{id_}", text)
    page.click(f"#{ids.TOKEN_VIEW}")
    page.wait_for_function(
        f"document.querySelectorAll('#{lens_tab.INSPECT_GRAPH} .xtick text').length === 60", timeout=60_000)
    ticks = page.eval_on_selector_all(f"#{lens_tab.INSPECT_GRAPH} .xtick text", "els => els.map(e => e.textContent)")
    assert [t.split(":")[0] for t in ticks] == [str(i) for i in range(60)]
    assert "10: \\n" in ticks and "54: ␣" in ticks and "2: ␣Mary" in ticks
    n_ticks, tick_overlaps = page.evaluate(OVERLAPS, f"#{lens_tab.INSPECT_GRAPH} .xtick text")
    assert n_ticks == 60 and tick_overlaps == 0
    n_cells, cell_overlaps = page.evaluate(OVERLAPS, f"#{lens_tab.INSPECT_GRAPH} g.heatmap-label text")
    assert n_cells == 3 * 60 and cell_overlaps == 0          # embed, L0, L1 × 60 positions
    scroll, client = page.evaluate(
        f"(() => {{ const b = document.querySelector('#{lens_tab.INSPECT_GRAPH}').closest('.graph-scroll');"
        " return [b.scrollWidth, b.clientWidth]; })()")
    assert scroll > client                                   # the panel scrolls sideways
    assert not page.errors
    shot(page, "13-inspect-logit-lens-long-prompt")
