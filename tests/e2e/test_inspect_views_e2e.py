"""End-to-end: issue #20's Inspect views in a real headless Chromium, on the shipped model
(`python -m dashboard`, 4 layers × 4 heads): the attention overview (every layer × head, a colour
bar per panel, click one to enlarge it, tokens coloured by its attention), two layers side by
side, highlighted text on a long prompt with odd tokens, the highlight of a run's patching
effect, and residual norms as mean ± std over a set of mixed-length pairs (by role).

Set PATCHBOARD_SCREENSHOTS=docs/screenshots to save screenshots 23-27.
"""
from __future__ import annotations

import csv
import re

import pytest

from dashboard import ids
from dashboard.tabs import inspect as tab
from tests.e2e.support import open_page, run_dashboard, shot, skip_reason
from tests.e2e.test_dashboard_e2e import choose, run_and_wait, type_prompts

pytestmark = pytest.mark.e2e
if skip_reason():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=skip_reason())]

IOI = ("When Mary and John went to the store, John gave a drink to",
       "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")
LONG = ("When Mary and John went to the store,\nJohn gave a drink to Mary. Then, Alice and Bob had a long "
        "argument, and afterwards Bob said to Alice.\tParis is a city in the country of France. Tom,  Anna "
        "went to  the school")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from run_dashboard(None, tmp_path_factory.mktemp("views-data"))


@pytest.fixture(scope="module")
def page(server):
    yield from open_page(server)


def _view(page, label: str) -> None:
    page.click(f"#{ids.TABS} .nav-link:has-text('Inspect')")
    page.click(f"#{tab.INSPECT_VIEW} label:has-text('{label}')")


def _set(page, id_: str, value) -> None:
    page.fill(f"#{id_}", str(value))
    page.press(f"#{id_}", "Enter")


def _title(page, graph: str = tab.INSPECT_GRAPH) -> str:
    return page.evaluate(f"document.querySelector('#{graph} .gtitle')?.textContent || ''")


def _detail_title(page) -> str:
    return page.evaluate(f"document.querySelector('#{tab.INSPECT_DETAIL} .detail-title')?.textContent || ''")


def test_attention_overview_click_a_panel_to_enlarge_it(page):
    _view(page, "Attention overview")
    page.wait_for_function(f"document.querySelectorAll('#{tab.INSPECT_GRAPH} g.hm').length === 16")
    assert "every layer and head" in _title(page)
    assert page.locator(f"#{tab.INSPECT_GRAPH} g.colorbar").count() == 16          # one per panel
    ticks = page.eval_on_selector_all(f"#{tab.INSPECT_GRAPH} .yaxislayer-above .ytick text",
                                      "els => els.map(e => e.textContent)")
    assert "2: ␣Mary" in ticks and "14: ␣to" in ticks                              # tokens down the side
    scroll, client = page.evaluate("id => { const b = document.getElementById(id).closest('.graph-scroll');"
                                   " return [b.scrollWidth, b.clientWidth]; }", tab.INSPECT_GRAPH)
    assert scroll <= client                                        # 4 heads fit the tab: no sideways scroll
    page.wait_for_function(f"document.querySelectorAll('#{tab.INSPECT_TOKENS} .token-span').length === 15")
    assert _detail_title(page).startswith("L0H0 attention from 14: ' to'")
    # click the panel of L2H1 (the 10th: subplot x10y10)
    panel = page.locator(f"#{tab.INSPECT_GRAPH} .nsewdrag[data-subplot='x10y10']")
    panel.scroll_into_view_if_needed()                             # the grid is below the detail
    box = panel.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.8)
    page.wait_for_function(f"document.querySelector('#{tab.INSPECT_DETAIL} .detail-title')?.textContent"
                           ".startsWith('L2H1 attention from 14')")
    top = page.evaluate(f"document.getElementById('{tab.INSPECT_DETAIL}').getBoundingClientRect().top")
    assert 0 <= top < page.viewport_size["height"] / 2             # the enlarged head is brought on screen
    page.wait_for_function(f"document.querySelector('#{tab.INSPECT_ZOOM} .gtitle')?.textContent.includes('L2H1')")
    mark = page.locator(f"#{tab.INSPECT_TOKENS} .token-mark")
    assert mark.count() == 1 and mark.inner_text() == "␣to"
    titles = page.eval_on_selector_all(f"#{tab.INSPECT_TOKENS} .token-span", "els => els.map(e => e.title)")
    total = sum(float(t.split(" · ")[1]) for t in titles)
    assert abs(total - 1) < 0.01                                   # one destination's attention sums to 1
    _set(page, tab.INSPECT_POS, 6)                                 # another destination: later tokens uncoloured
    page.wait_for_function(f"document.querySelector('#{tab.INSPECT_DETAIL} .detail-title')?.textContent"
                           ".startsWith(\"L2H1 attention from 6: ' to'\")")
    after = page.eval_on_selector_all(f"#{tab.INSPECT_TOKENS} .token-span", "els => els.map(e => e.style.backgroundColor)")
    assert set(after[7:]) == {"transparent"} and "transparent" not in after[:7]
    assert not page.errors, page.errors
    shot(page, "23-attention-overview")


def test_two_layers_side_by_side(page):
    _view(page, "Attention overview")
    page.click(f"#{tab.INSPECT_OVERVIEW} label:has-text('two layers side by side')")
    page.wait_for_selector(f"#{tab.CONTROL_IDS['layer_b']}", state="visible")
    _set(page, tab.INSPECT_LAYER, 1)
    _set(page, tab.INSPECT_LAYER_B, 3)
    page.wait_for_function(f"document.querySelector('#{tab.INSPECT_GRAPH} .gtitle')?.textContent"
                           ".includes('layers 1 and 3 side by side')")
    page.wait_for_function(f"document.querySelectorAll('#{tab.INSPECT_GRAPH} g.hm').length === 8")
    titles = page.eval_on_selector_all(f"#{tab.INSPECT_GRAPH} .annotation-text", "els => els.map(e => e.textContent)")
    assert titles[:4] == ["L1H0", "L3H0", "L1H1", "L3H1"]
    _set(page, tab.INSPECT_LAYER_B, 1)
    page.wait_for_function(f"document.getElementById('{tab.INSPECT_STATUS}').innerText"
                           ".includes('two different layers, not layer 1 twice')")
    _set(page, tab.INSPECT_LAYER_B, 3)
    page.wait_for_function(f"document.querySelectorAll('#{tab.INSPECT_GRAPH} g.hm').length === 8")
    assert not page.errors, page.errors
    shot(page, "24-attention-two-layers")


def test_highlighted_text_of_a_long_prompt_with_odd_tokens(page, shipped_model):
    type_prompts(page, LONG, LONG.replace("Mary.", "John."), " Mary", " John")
    n = len(shipped_model.to_str_tokens(LONG)) + 1                 # and BOS
    _view(page, "Highlighted text")
    page.click(f"#{tab.INSPECT_SOURCE} label:has-text('neuron')")
    _set(page, tab.INSPECT_LAYER, 2)
    _set(page, tab.INSPECT_NEURON, 7)
    page.wait_for_function(f"document.querySelectorAll('#{tab.INSPECT_TOKENS} .token-span').length === {n}",
                           timeout=60_000)
    page.wait_for_function(f"document.querySelector('#{tab.INSPECT_DETAIL} .detail-title')?.textContent === 'L2N7'")
    page.wait_for_function(f"document.querySelectorAll('#{tab.INSPECT_GRAPH} .xtick text').length === {n} && "
                           f"document.querySelector('#{tab.INSPECT_GRAPH} .gtitle')?.textContent === 'L2N7'")
    texts = page.eval_on_selector_all(f"#{tab.INSPECT_TOKENS} .token-span", "els => els.map(e => e.textContent)")
    assert "\\n" in "".join(texts) and "\\t" in "".join(texts) and "␣" in texts          # odd tokens visible
    assert page.locator(f"#{tab.INSPECT_TOKENS} br").count() == 1                    # the text breaks at \n
    values = page.eval_on_selector_all(f"#{tab.INSPECT_TOKENS} .token-span", "els => els.map(e => e.dataset.value)")
    bars = page.evaluate(f"Array.from(document.getElementById('{tab.INSPECT_GRAPH}')"
                         ".querySelector('.js-plotly-plot')._fullData[0].y)")
    assert [round(float(v), 3) for v in values] == [round(float(b), 3) for b in bars]
    colours = page.eval_on_selector_all(f"#{tab.INSPECT_TOKENS} .token-span", "els => els.map(e => e.style.backgroundColor)")
    top = max(range(n), key=lambda i: abs(float(values[i])))
    blue = colours[top].startswith("rgb(5, 48, 97)") or colours[top].startswith("rgb(103, 0, 31)")
    assert blue and (float(values[top]) > 0) == colours[top].startswith("rgb(5, 48, 97)")   # the darkest shade
    overflow = page.evaluate("id => { const d = document.getElementById(id); return d.scrollWidth - d.clientWidth; }",
                             tab.INSPECT_DETAIL)
    assert overflow <= 1                                                                     # the text wraps
    ticks = page.locator(f"#{tab.INSPECT_GRAPH} .xtick text").count()
    assert ticks == n
    assert not page.errors, page.errors
    shot(page, "25-highlighted-text-long-prompt")


def test_highlight_by_a_runs_patching_effect(page):
    type_prompts(page, *IOI)
    page.click(f"#{ids.TABS} .nav-link:has-text('Results')")
    choose(page, ids.KIND_SELECT, "resid_pre")
    summary = run_and_wait(page)
    run_id = re.search(r"Run #(\d+)", summary).group(1)
    _view(page, "Highlighted text")
    page.click(f"#{tab.INSPECT_SOURCE} label:has-text('patching effect')")
    page.wait_for_function(f"document.getElementById('{tab.INSPECT_RUN_ID}').value === '{run_id}'")
    _set(page, tab.INSPECT_LAYER, 1)
    page.wait_for_function(f"document.querySelector('#{tab.INSPECT_DETAIL} .detail-title')?.textContent"
                           ".startsWith('effect of resid_pre L1')")
    page.wait_for_function(f"document.querySelectorAll('#{tab.INSPECT_TOKENS} .token-span').length === 15")
    values = [float(v) for v in page.eval_on_selector_all(f"#{tab.INSPECT_TOKENS} .token-span",
                                                          "els => els.map(e => e.dataset.value)")]
    assert values[:2] == [0.0, 0.0]                        # before the first differing token nothing changes
    assert f"run {run_id}" in page.inner_text(f"#{tab.INSPECT_STATUS}")
    assert not page.errors, page.errors
    shot(page, "26-highlight-patching-effect")


def test_residual_norms_mean_and_std_over_mixed_length_pairs(page, shipped_model, tmp_path):
    from patching.core.prompts import roles_text
    from patching.tasks.presets import aligned_pairs
    pairs = aligned_pairs(shipped_model, "ioi", 8)
    path = tmp_path / "ioi-mixed.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["clean", "corrupt", "answer", "wrong", "positions"])
        w.writerows([p.clean, p.corrupt, p.answer, p.wrong, roles_text(p.positions)] for p in pairs)
    page.set_input_files(f"#{ids.PAIRS_UPLOAD} input[type=file]", str(path))
    page.wait_for_function(f"document.getElementById('{ids.PAIRS_PREVIEW}').innerText.includes('Using 8 pairs')")
    _view(page, "Residual norms")
    _set(page, tab.INSPECT_POS, -1)                                # (an earlier view left it at 6: 5 roles here)
    page.click(f"#{tab.INSPECT_BAND} label:has-text('all pairs')")
    page.wait_for_function(f"document.querySelector('#{tab.INSPECT_GRAPH} .gtitle')?.textContent"
                           ".includes('mean ± std over 8 pairs')", timeout=60_000)
    assert page.locator(f"#{tab.INSPECT_GRAPH} .js-fill").count() == 4                 # 2 runs × 2 panels
    ticks = page.eval_on_selector_all(f"#{tab.INSPECT_GRAPH} .xaxislayer-above .x2tick text",
                                      "els => els.map(e => e.textContent)")
    assert {"0: 'IO'", "4: 'END'"} <= set(ticks)                                        # by role
    assert "by role" in page.inner_text(f"#{tab.INSPECT_STATUS}")
    page.click(f"#{tab.INSPECT_BAND} label:has-text('one pair')")                     # one pair: the old view
    page.wait_for_function(f"document.getElementById('{tab.INSPECT_STATUS}').innerText.includes('pair 0')")
    assert not page.errors, page.errors
    page.click(f"#{tab.INSPECT_BAND} label:has-text('all pairs')")
    page.wait_for_function(f"document.querySelector('#{tab.INSPECT_GRAPH} .gtitle')?.textContent"
                           ".includes('mean ± std over 8 pairs')")
    shot(page, "27-residual-norms-band")


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


def test_overview_of_another_pair_then_of_a_long_prompt(page):
    """Pair 3 of the 8 uploaded pairs (mixed lengths: read at its own length), then a 65-token
    prompt with odd tokens: the panels thin their token labels, which never overlap."""
    _view(page, "Attention overview")
    page.click(f"#{tab.INSPECT_OVERVIEW} label:has-text('every layer')")
    _set(page, tab.INSPECT_PAIR, 3)
    page.wait_for_function(f"document.querySelector('#{tab.INSPECT_GRAPH} .gtitle')?.textContent"
                           ".includes('clean run · pair 3')")
    assert " attention from " in _detail_title(page)
    page.click(f"#{ids.PAIRS_CLEAR}")
    _set(page, tab.INSPECT_PAIR, 0)
    type_prompts(page, LONG, LONG.replace("Mary.", "John."), " Mary", " John")
    page.wait_for_function(f"document.querySelectorAll('#{tab.INSPECT_TOKENS} .token-span').length === 65",
                           timeout=60_000)
    page.wait_for_function(f"document.querySelectorAll('#{tab.INSPECT_GRAPH} g.hm').length === 16")
    sel = f"#{tab.INSPECT_GRAPH} .yaxislayer-above .ytick text"
    n_ticks, overlaps = page.evaluate(OVERLAPS, sel)
    assert 0 < n_ticks < 4 * 65 and overlaps == 0                   # thinned, never on top of each other
    labels = page.eval_on_selector_all(sel, "els => els.map(e => e.textContent)")
    assert any("\\n" in t for t in labels) or any("␣" in t for t in labels)
    assert not page.errors, page.errors
