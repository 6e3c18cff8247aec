"""End-to-end: at 1440×900 the run controls, the result and the error of what was just done are on
screen together, with no page scroll (issue #17, item 10), on the Results, Path patching and
Attribution tabs.

"On screen" is measured in the browser (`on_screen`): the element's box lies inside the viewport
and inside every ancestor that clips (a scrolling panel), so an element scrolled out of its panel
counts as off screen, as it would for a person.

Set PATCHBOARD_SCREENSHOTS=docs/screenshots to save 19-layout-1440x900.png (the viewport only).
"""
from __future__ import annotations

import os

import pytest

from dashboard import ids
from tests.e2e.support import ROOT, one_screen_page, run_dashboard, skip_reason

pytestmark = pytest.mark.e2e
TIMEOUT = 60_000
VIEWPORT = {"width": 1440, "height": 900}

if skip_reason():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=skip_reason())]

# '' when the element is on screen, else why not
ON_SCREEN = """(sel) => {
  const el = document.querySelector(sel);
  if (!el) return 'missing';
  const r = el.getBoundingClientRect();
  if (r.width < 1 || r.height < 1) return 'not rendered (' + r.width + 'x' + r.height + ')';
  const inside = (o) => r.top >= o.top - 1 && r.left >= o.left - 1 && r.bottom <= o.bottom + 1
                        && r.right <= o.right + 1;
  const box = 'top ' + Math.round(r.top) + ', bottom ' + Math.round(r.bottom);
  if (!inside({top: 0, left: 0, bottom: innerHeight, right: innerWidth}))
    return 'outside the ' + innerWidth + 'x' + innerHeight + ' viewport (' + box + ')';
  for (let a = el.parentElement; a && a !== document.documentElement; a = a.parentElement) {
    const s = getComputedStyle(a);
    if (/(auto|scroll|hidden|clip)/.test(s.overflowX + ' ' + s.overflowY) && !inside(a.getBoundingClientRect()))
      return 'scrolled out of .' + String(a.className).split(' ').join('.') + ' (' + box + ')';
  }
  return '';
}"""


def on_screen(page, *element_ids: str) -> dict[str, str]:
    """{id: why it is not on screen} for those that are not (empty: all are)."""
    return {i: why for i in element_ids if (why := page.evaluate(ON_SCREEN, f"#{i}"))}


@pytest.fixture(scope="module")
def server(tiny_dirs, tmp_path_factory):
    yield from run_dashboard(tiny_dirs["gpt2"], tmp_path_factory.mktemp("dashboard-data-layout"))


@pytest.fixture(scope="module")
def page(server):
    yield from one_screen_page(server, VIEWPORT, TIMEOUT,
                               f"document.querySelectorAll('#{ids.TOKEN_VIEW} .tok').length === 30")


def viewport_shot(page, name: str) -> None:
    """The viewport as a person sees it (not the full page), under $PATCHBOARD_SCREENSHOTS."""
    target = os.environ.get("PATCHBOARD_SCREENSHOTS")
    if target:
        out = ROOT / target if not os.path.isabs(target) else target
        os.makedirs(out, exist_ok=True)
        page.mouse.move(2, 2)
        page.wait_for_timeout(600)
        page.screenshot(path=os.path.join(out, f"{name}.png"), full_page=False)


def wait_text(page, id_: str, needle: str) -> None:
    page.wait_for_function("([id, t]) => document.getElementById(id).innerText.includes(t)",
                           arg=[id_, needle])


def fill(page, id_: str, text: str) -> None:
    page.fill(f"#{id_}", text)
    page.press(f"#{id_}", "Tab")


def test_results_run_controls_heatmap_and_error_on_one_screen(page):
    page.click(f"#{ids.RUN_BUTTON}")
    wait_text(page, ids.RESULTS_SUMMARY, "Run #")
    page.wait_for_selector(f"#{ids.RESULTS_HEATMAP} g.hm")
    page.wait_for_function(f"!document.getElementById('{ids.RUN_BUTTON}').disabled")
    assert page.evaluate("window.scrollY") == 0                          # the page itself never scrolls
    assert not on_screen(page, ids.RUN_BUTTON, ids.KIND_SELECT, ids.METRIC_SELECT, ids.DIRECTION_SELECT,
                         ids.RESULTS_HEATMAP, ids.RUN_STATUS)
    viewport_shot(page, "19-layout-1440x900")
    # a bad input: said under Run, and the heatmap of the last run stays in view beside it
    fill(page, ids.CORRUPT_PROMPT, "When Mary and John went to the store, Mary gave a drink to the")
    wait_text(page, ids.ERROR_MESSAGE, "token")
    assert not on_screen(page, ids.ERROR_MESSAGE, ids.RUN_BUTTON, ids.RESULTS_HEATMAP)
    fill(page, ids.CORRUPT_PROMPT, "When Mary and John went to the store, Mary gave a drink to")
    page.wait_for_function(f"document.getElementById('{ids.ERROR_MESSAGE}').innerText === ''")


def test_path_error_and_heatmap_on_screen_beside_its_run_button(page):
    page.click("a.nav-link:has-text('Path patching')")
    fill(page, ids.PATH_RECEIVERS, "q:7.0")
    page.click(f"#{ids.PATH_RUN_BUTTON}")
    wait_text(page, ids.PATH_ERROR, "receiver 'q:7.0': layer 7 out of range")
    assert not on_screen(page, ids.PATH_ERROR, ids.PATH_RUN_BUTTON, ids.PATH_FIGURE)
    fill(page, ids.PATH_RECEIVERS, "q:1.0")
    page.click(f"#{ids.PATH_RUN_BUTTON}")
    wait_text(page, ids.PATH_SUMMARY, "Run #")
    page.wait_for_selector(f"#{ids.PATH_FIGURE} g.hm")
    assert page.inner_text(f"#{ids.PATH_ERROR}") == ""                    # the old message is gone
    assert not on_screen(page, ids.PATH_RUN_BUTTON, ids.PATH_FIGURE, ids.PATH_STATUS)


def test_attribution_error_and_heatmap_on_screen_beside_its_run_button(page):
    page.click("a.nav-link:has-text('Attribution')")
    fill(page, ids.WRONG_TOKEN, " Mary")                 # the answer too: refused by the run
    page.click(f"#{ids.ATTR_RUN_BUTTON}")
    wait_text(page, ids.ATTR_ERROR, "answer and wrong are the same token")
    assert not on_screen(page, ids.ATTR_ERROR, ids.ATTR_RUN_BUTTON, ids.ATTR_FIGURE)
    fill(page, ids.WRONG_TOKEN, " John")
    page.click(f"#{ids.ATTR_RUN_BUTTON}")
    wait_text(page, ids.ATTR_SUMMARY, "Attribution #")
    page.wait_for_selector(f"#{ids.ATTR_FIGURE} g.hm")
    assert page.inner_text(f"#{ids.ATTR_ERROR}") == ""
    assert not on_screen(page, ids.ATTR_RUN_BUTTON, ids.ATTR_FIGURE, ids.ATTR_STATUS)
    assert not page.errors, page.errors
