"""End-to-end on the shipped default model: the IOI preset, head_out per position, a click on the
cell with the largest effect, and the attention panel showing a *receiver* head's change (a
head_out patch cannot change its own head's pattern). Saves the README's hero image
(00-hero-shipped-model.png) when PATCHBOARD_SCREENSHOTS is set.
"""
from __future__ import annotations

import pytest

from dashboard import ids
from tests.e2e.support import ROOT, open_page, run_dashboard, shot, skip_reason
from tests.e2e.test_dashboard_e2e import choose, run_and_wait

pytestmark = pytest.mark.e2e
if skip_reason():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=skip_reason())]

SHIPPED = ROOT / "assets" / "models" / "patchboard-tiny"


def figure_data(page, graph_id: str, expr: str):
    """Evaluate `expr` over `d`, the data (traces) of the plotly figure in dcc.Graph `graph_id`."""
    return page.evaluate(f"(() => {{ const d = document.getElementById('{graph_id}')"
                         f".querySelector('.js-plotly-plot').data; return {expr}; }})()")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    for url in run_dashboard(SHIPPED, tmp_path_factory.mktemp("hero-data")):
        yield from open_page(url, timeout_ms=90_000)


def _expected():
    """The IOI preset's pair on the shipped model: its largest-effect head_out cell and the
    receiver whose pattern that patch changes most (the engine, computed here independently)."""
    from patching import PatchSpec, PromptSet, load_model, sweep
    from patching.methods.attention import downstream_attention
    from patching.tasks.presets import runnable_pairs
    model = load_model(str(SHIPPED))
    prompts = PromptSet.from_pairs(model, runnable_pairs(model, "ioi", 1))
    spec = PatchSpec(kind="head_out", per_position=True)
    effect = sweep(model, prompts, spec).effect                  # [layer, pos, head]
    layer, pos, head = (int(i) for i in divmod_all(int(effect.abs().argmax()), effect.shape))
    down = downstream_attention(model, prompts, spec, {"layer": layer, "pos": pos, "head": head})
    return (layer, pos, head), down.most_changed(), float(down.change[down.most_changed()])


def divmod_all(flat: int, shape) -> list[int]:
    out = []
    for size in reversed(shape):
        flat, rest = divmod(flat, size)
        out.append(rest)
    return out[::-1]


def test_ioi_head_out_click_shows_the_receiver_attention_change(page):
    (layer, pos, head), (rl, rh), change = _expected()
    choose(page, ids.PRESET_SELECT, "ioi")
    page.wait_for_function(f"document.getElementById('{ids.CLEAN_PROMPT}').value.includes('gave')")
    page.wait_for_function(f"document.getElementById('{ids.ERROR_MESSAGE}').innerText === ''")
    page.click(f"#{ids.PER_POSITION} label")                   # head_out per position
    summary = run_and_wait(page)
    assert "head_out per position" in summary
    rows, cols = figure_data(page, ids.RESULTS_HEATMAP, "[d[0].y.length, d[0].x.length]")
    # one colour convention (#17 item 13): blue = towards clean, white = the unpatched run, named export
    bar = page.eval_on_selector(f"#{ids.RESULTS_HEATMAP} .cbtitle", "e => e.textContent")
    assert "towards clean" in bar or "white = the corrupt run" in bar
    export = page.evaluate(f"document.getElementById('{ids.RESULTS_HEATMAP}').querySelector('.js-plotly-plot')"
                           "._context.toImageButtonOptions.filename")
    assert export == "patchboard-run1-head_out-denoise"
    drag = page.locator(f"#{ids.RESULTS_HEATMAP} .nsewdrag").first
    drag.scroll_into_view_if_needed()
    box = drag.bounding_box()
    row = layer * 4 + head                                        # rows L0.H0 .. L3.H3
    page.mouse.click(box["x"] + box["width"] * ((pos + 0.5) / cols), box["y"] + box["height"] * ((row + 0.5) / rows))
    page.wait_for_function(f"document.getElementById('{ids.ATTENTION_STATUS}').innerText.startsWith('Receiver')")
    status = page.inner_text(f"#{ids.ATTENTION_STATUS}")
    assert status.startswith(f"Receiver L{rl}.H{rh} under a patch of L{layer}.H{head} at position {pos}"), status
    assert f"L{rl}H{rh}" in page.inner_text(f"#{ids.ATTENTION_RECEIVER}")   # the select names it
    page.wait_for_function(f"document.querySelectorAll('#{ids.ATTENTION_DIFF} g.hm').length >= 5")
    # the bottom-right panel is the receiver's change under the patch: its largest entry is the change
    shown = figure_data(page, ids.ATTENTION_DIFF,
                        "Math.max(...d[4].z.flat().filter(v => v !== null).map(Math.abs))")
    assert shown == pytest.approx(change, abs=1e-4) and change > 0.05
    export = page.evaluate(f"document.getElementById('{ids.ATTENTION_DIFF}').querySelector('.js-plotly-plot')"
                           "._context.toImageButtonOptions.filename")
    assert export == f"patchboard-run1-head_out-denoise-attention-L{rl}H{rh}"
    titles = page.eval_on_selector_all(f"#{ids.ATTENTION_DIFF} .annotation-text", "e => e.map(x => x.textContent)")
    assert any(t.startswith("patched − corrupt") for t in titles)
    page.locator(f"#{ids.RESULTS_HEATMAP}").scroll_into_view_if_needed()
    shot(page, "00-hero-shipped-model")
