"""End-to-end: the history keeps each run's context (issue #17, item 12), in a real Chromium at
1440×900 — every run shows its prompts and number of pairs; Open puts its form back on the left;
the provenance lists the prompts; Delete asks first; a stale /run/<id> says so and clears the
screen; a job still running shows "running…" and its Cancel stops it.

The tests run in file order on one page. The server is started with `--test-pace 0.2
--max-memory 1` (every patched batch waits 0.2 s and holds a few cells; patching/model/pacing.py):
the 20-pair neuron sweep the Cancel test starts is ~280 batches, >= 56 s on any machine, and
Cancel reaches it within one batch; the other runs here are 2-3 batches. Set PATCHBOARD_SCREENSHOTS=docs/screenshots to save
20-history-context.png.
"""
from __future__ import annotations

import csv

import pytest

from dashboard import ids
from tests.conftest import IOI
from tests.e2e.support import one_screen_page, run_dashboard, shot, skip_reason
from tests.e2e.test_dashboard_e2e import choose

pytestmark = pytest.mark.e2e
TIMEOUT = 60_000
VIEWPORT = {"width": 1440, "height": 900}

if skip_reason():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=skip_reason())]


@pytest.fixture(scope="module")
def server(tiny_dirs, tmp_path_factory):
    yield from run_dashboard(tiny_dirs["gpt2"], tmp_path_factory.mktemp("dashboard-data-history"),
                             "--test-pace", "0.2", "--max-memory", "1")


@pytest.fixture(scope="module")
def page(server):
    yield from one_screen_page(server, VIEWPORT, TIMEOUT,
                               f"document.querySelectorAll('#{ids.TOKEN_VIEW} .tok').length === 30")


def wait_text(page, id_: str, needle: str) -> None:
    page.wait_for_function("([id, t]) => { const e = document.getElementById(id);"
                           " return e !== null && e.innerText.includes(t); }", arg=[id_, needle])


def run(page) -> str:
    """Run and wait for the run to be saved; returns its summary."""
    before = page.inner_text(f"#{ids.RESULTS_SUMMARY}")
    page.click(f"#{ids.RUN_BUTTON}")
    page.wait_for_function("([id, b]) => { const t = document.getElementById(id).innerText;"
                           " return t.includes('Run #') && t !== b; }", arg=[ids.RESULTS_SUMMARY, before])
    page.wait_for_function(f"!document.getElementById('{ids.RUN_BUTTON}').disabled")
    return page.inner_text(f"#{ids.RESULTS_SUMMARY}")


def upload(page, path, pairs) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["clean", "corrupt", "answer", "wrong"])
        w.writerows(pairs)
    page.set_input_files(f"#{ids.PAIRS_UPLOAD} input[type=file]", str(path))
    wait_text(page, ids.PAIRS_PREVIEW, f"Using {len(pairs)} pairs")


def history_tab(page) -> None:
    page.click("a.nav-link:has-text('History & compare')")
    page.wait_for_selector(f"#{ids.RUN_HISTORY} .run-item")


def row(page, run_id: int):
    return page.locator(f"#{ids.RUN_HISTORY} .run-item", has=page.locator(f".run-id:text-is('#{run_id}')"))


def test_each_run_lists_its_prompts_and_pairs(page, tmp_path):
    run(page)                                                      # #1: head_out, denoise, 1 pair
    choose(page, ids.KIND_SELECT, "resid_pre")
    page.click(f"#{ids.DIRECTION_SELECT} label:has-text('noise (clean run')")
    page.click("summary:has-text('Filters')")
    page.fill(f"#{ids.LAYERS_FILTER}", "0")
    page.press(f"#{ids.LAYERS_FILTER}", "Tab")
    upload(page, tmp_path / "three.csv", IOI + IOI[:1])
    run(page)                                                      # #2: resid_pre, noise, layer 0, 3 pairs
    history_tab(page)
    one, two = row(page, 1), row(page, 2)
    assert "1 pair" in one.locator(".run-prompts").inner_text()
    assert "3 pairs" in two.locator(".run-prompts").inner_text()
    for r in (one, two):
        clean, corrupt = r.locator(".run-prompts .mono").all()
        # clipped in the list, the whole text on hover
        assert clean.inner_text().startswith("'When Mary and John went to the store, John")
        assert clean.get_attribute("title") == repr(IOI[0][0])
        assert corrupt.get_attribute("title") == repr(IOI[0][1])


def test_open_restores_the_runs_form(page):
    page.click(f"#{ids.PAIRS_PREVIEW} button:has-text('Clear')")      # the panel moves on ...
    choose(page, ids.KIND_SELECT, "mlp_out")
    page.click(f"#{ids.DIRECTION_SELECT} label:has-text('denoise')")
    page.fill(f"#{ids.LAYERS_FILTER}", "")
    page.press(f"#{ids.LAYERS_FILTER}", "Tab")
    history_tab(page)
    row(page, 2).locator("button:has-text('Open')").click()          # ... Open brings run #2's back
    wait_text(page, ids.RESULTS_SUMMARY, "Run #2")
    wait_text(page, ids.PAIRS_PREVIEW, "Using 3 pairs")
    assert "resid_pre" in page.inner_text(f"#{ids.KIND_SELECT}")
    assert page.is_checked(f"#{ids.DIRECTION_SELECT} input[value='noise']")
    assert page.input_value(f"#{ids.LAYERS_FILTER}") == "0"
    assert page.input_value(f"#{ids.CLEAN_PROMPT}") == IOI[0][0]
    assert page.input_value(f"#{ids.ANSWER_TOKEN}") == IOI[0][2]
    # the provenance on the Results tab lists the prompts the run was made from
    page.click(f"#{ids.PROVENANCE_PANEL} summary")
    wait_text(page, ids.PROVENANCE_PAIRS, IOI[1][0][:30])
    assert page.locator(f"#{ids.PROVENANCE_PAIRS} tbody tr").count() == 3
    history_tab(page)
    row(page, 1).locator("button:has-text('Open')").click()          # a one-pair run: no pairs store
    wait_text(page, ids.RESULTS_SUMMARY, "Run #1")
    page.wait_for_function(f"document.getElementById('{ids.PAIRS_PREVIEW}').innerText === ''")
    assert "head_out" in page.inner_text(f"#{ids.KIND_SELECT}")
    assert page.is_checked(f"#{ids.DIRECTION_SELECT} input[value='denoise']")
    assert page.input_value(f"#{ids.LAYERS_FILTER}") == ""


def test_delete_asks_first(page):
    run(page)                                                      # #3, to be deleted
    history_tab(page)
    three = row(page, 3)
    confirm = three.locator(".delete-confirm")
    assert not confirm.is_visible()
    three.locator(".run-actions > button:has-text('Delete')").click()
    confirm.wait_for(state="visible")
    assert "Delete run #3? This cannot be undone." in confirm.inner_text()
    confirm.locator("button:has-text('Keep')").click()
    confirm.wait_for(state="hidden")
    assert row(page, 3).count() == 1                               # kept
    three.locator(".run-actions > button:has-text('Delete')").click()
    confirm.locator("button:has-text('Delete')").click()
    wait_text(page, ids.HISTORY_STATUS, "Deleted run #3.")
    page.wait_for_function(f"document.querySelectorAll('#{ids.RUN_HISTORY} .run-item').length === 2")


@pytest.mark.parametrize("run_id", [3, 999])                       # deleted, never saved
def test_stale_run_url_says_not_found_and_clears_the_screen(page, run_id):
    page.goto(page.server)                                         # run #1 on screen (this tab's session)
    history_tab(page)
    row(page, 1).locator("button:has-text('Open')").click()
    wait_text(page, ids.RESULTS_SUMMARY, "Run #1")
    page.goto(f"{page.server}run/{run_id}")
    # The page opens with the session's run #1 (a session store) and the route clears it: wait until
    # the route has answered and no callback is in flight (Dash's own test helper reads the same
    # store), and the screen is clear then. Checking on the first empty summary raced run #1's redraw.
    page.wait_for_function("""([status, summary, heatmap, id]) => {
        const s = document.getElementById(status), t = document.getElementById(summary),
              h = document.getElementById(heatmap);
        return !!s && s.innerText.includes(`run ${id} not found`) && !window.store.getState().isLoading
               && t.innerText === '' && h.querySelectorAll('g.hm').length === 0    // run #1's heatmap is gone
               && h.innerText.includes('Run a sweep'); }""",
                           arg=[ids.RUN_URL_STATUS, ids.RESULTS_SUMMARY, ids.RESULTS_HEATMAP, run_id])


def test_a_running_job_shows_running_and_its_cancel_stops_it(page, tmp_path):
    page.goto(page.server)
    page.wait_for_function(f"document.querySelectorAll('#{ids.TOKEN_VIEW} .tok').length > 0")
    upload(page, tmp_path / "many.csv", IOI * 10)         # ~280 paced batches: >= 56 s (module doc)
    choose(page, ids.KIND_SELECT, "neuron")
    page.click(f"#{ids.RUN_BUTTON}")
    page.wait_for_function(f"document.getElementById('{ids.RUN_BUTTON}').disabled")
    history_tab(page)
    job = page.locator(f"#{ids.RUN_HISTORY} .job-item.job-running")
    job.wait_for(timeout=40_000)                 # listed once validated (polled while the tab is open)
    assert "running…" in job.inner_text() and "neuron" in job.inner_text()
    row(page, 1).locator(".run-actions > button:has-text('Delete')").click()    # for the picture
    shot(page, "20-history-context")
    row(page, 1).locator("button:has-text('Keep')").click()
    job.locator("button:has-text('Cancel')").click()
    wait_text(page, ids.HISTORY_STATUS, "Cancel requested for job")
    ended = page.locator(f"#{ids.RUN_HISTORY} .job-item.job-cancelled")
    ended.wait_for(timeout=40_000)               # at the job's next batch; the list refreshes meanwhile
    assert "Cancel was pressed" in ended.inner_text() and "neuron" in ended.inner_text()
    assert page.locator(f"#{ids.RUN_HISTORY} .job-running").count() == 0
    page.wait_for_function(f"!document.getElementById('{ids.RUN_BUTTON}').disabled")   # the page's Run is free
    wait_text(page, ids.ERROR_MESSAGE, "cancelled")
    assert page.locator(f"#{ids.RUN_HISTORY} .run-item").count() == 2             # nothing saved
    assert not page.errors, page.errors
