"""End-to-end: the dashboard in a real headless Chromium (Debian's, driven by Playwright).

The app runs as `python -m dashboard` in a subprocess on a free 127.0.0.1 port around the tiny
GPT-2 model the session fixtures save; the page is driven by the ids in dashboard/ids.py. The
tests run in file order and share one page: load → preset → validation error → own prompts →
run → click a head → attention → download CSV → upload pairs → multi-pair run → compare.

Set PATCHBOARD_SCREENSHOTS=docs/screenshots to save screenshots of the main views.
"""
from __future__ import annotations

import csv

import pytest

from dashboard import ids
from patching.core.results import CSV_COLUMNS
from tests.e2e.support import open_page, run_dashboard, shot, skip_reason
from tests.conftest import IOI

pytestmark = pytest.mark.e2e
TIMEOUT = 60_000   # ms: generous, the machine may be busy

if skip_reason():     # the reason is also printed in the run's summary (tests/e2e/conftest.py)
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=skip_reason())]


@pytest.fixture(scope="module")
def server(tiny_dirs, tmp_path_factory):
    """`python -m dashboard` around the tiny GPT-2 model; yields its URL."""
    yield from run_dashboard(tiny_dirs["gpt2"], tmp_path_factory.mktemp("dashboard-data"))


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    yield from open_page(server, timeout_ms=TIMEOUT)


def choose(page, dropdown_id: str, value) -> None:
    """Pick an option of a dcc.Dropdown by its value."""
    page.click(f"#{dropdown_id}")
    page.click(f".dash-dropdown-option:has(input[value='{value}'])")
    page.keyboard.press("Escape")


def run_and_wait(page) -> str:
    """Click Run and wait for a new run to be on screen; returns the summary text."""
    before = page.inner_text(f"#{ids.RESULTS_SUMMARY}")
    page.click(f"#{ids.RUN_BUTTON}")
    page.wait_for_function(
        """([id, before]) => { const t = document.getElementById(id).innerText;
                               return t.includes('Run #') && t !== before; }""",
        arg=[ids.RESULTS_SUMMARY, before])
    page.wait_for_selector(f"#{ids.RESULTS_HEATMAP} g.hm")
    page.wait_for_function(f"!document.getElementById('{ids.RUN_BUTTON}').disabled")
    return page.inner_text(f"#{ids.RESULTS_SUMMARY}")


def type_prompts(page, clean, corrupt, answer, wrong) -> None:
    for id_, text in ((ids.CLEAN_PROMPT, clean), (ids.CORRUPT_PROMPT, corrupt),
                      (ids.ANSWER_TOKEN, answer), (ids.WRONG_TOKEN, wrong)):
        page.fill(f"#{id_}", text)
    page.click(f"#{ids.TOKEN_VIEW}")       # blur: debounced values are sent
    page.wait_for_function(
        f"""() => document.querySelectorAll('#{ids.TOKEN_VIEW} .tok').length > 0
                  && !document.getElementById('{ids.TOKEN_VIEW}').innerText.includes('✗')""")


def download(page, button_id: str) -> list[list[str]]:
    with page.expect_download() as info:
        page.click(f"#{button_id}")
    path = info.value.path()
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_page_loads_with_model_and_token_view(page):
    page.wait_for_function("document.title === 'Patchboard'")
    for id_ in ids.CONTRACT:
        # lazily loaded components (dcc.Dropdown, dcc.Upload, Graph) attach once their bundle loads
        page.wait_for_selector(f"#{id_}", state="attached")
        assert page.locator(f"#{id_}").count() == 1, id_
    page.wait_for_function(f"document.getElementById('{ids.MODEL_STATUS}').innerText.includes('2 layers')")
    page.wait_for_function(f"document.querySelectorAll('#{ids.TOKEN_VIEW} .tok').length === 30")
    assert page.locator(f"#{ids.TOKEN_VIEW} .tok-diff").count() == 2      # position 10, both rows
    shot(page, "01-prompts-and-token-view")


def test_preset_fills_prompts_and_validation_error_shows(page):
    choose(page, ids.PRESET_SELECT, "ioi")
    page.wait_for_function(f"document.getElementById('{ids.CLEAN_PROMPT}').value !== {IOI[0][0]!r}")
    assert page.input_value(f"#{ids.ANSWER_TOKEN}").startswith(" ")
    # the preset's names are several tokens in the tiny test tokenizer: the live check says so,
    # and a Run is refused with the same message
    page.wait_for_function(f"document.getElementById('{ids.ERROR_MESSAGE}').innerText.length > 0")
    page.click(f"#{ids.RUN_BUTTON}")
    page.wait_for_function(f"!document.getElementById('{ids.RUN_BUTTON}').disabled")
    message = page.inner_text(f"#{ids.ERROR_MESSAGE}")
    assert "tokens" in message
    assert page.locator(f"#{ids.TOKEN_VIEW} .check-bad").count() + ("same number" in message) >= 1
    assert page.input_value(f"#{ids.CLEAN_PROMPT}")            # the form keeps its text
    shot(page, "03-validation-error")


def test_run_per_position_heads_and_click_a_head(page):
    type_prompts(page, *IOI[0])
    page.wait_for_function(f"document.getElementById('{ids.ERROR_MESSAGE}').innerText === ''")
    page.click(f"#{ids.PER_POSITION} label")                   # head_out per position
    summary = run_and_wait(page)
    assert "head_out per position" in summary and "1 pair" in summary
    assert page.inner_text(f"#{ids.ERROR_MESSAGE}") == ""
    assert "clean logit_diff" in page.inner_text(f"#{ids.RUN_STATUS}")      # baselines stay
    ticks = page.eval_on_selector_all(f"#{ids.RESULTS_HEATMAP} .xtick text", "els => els.map(e => e.textContent)")
    assert "10: ' John'" in ticks
    drag = page.locator(f"#{ids.RESULTS_HEATMAP} .nsewdrag").first
    drag.scroll_into_view_if_needed()
    box = drag.bounding_box()
    # rows L0.H0 .. L1.H3 (8), columns positions 0..14: click row 6 (L1.H2), column 10
    page.mouse.click(box["x"] + box["width"] * (10.5 / 15), box["y"] + box["height"] * (6.5 / 8))
    page.wait_for_function(
        f"document.querySelectorAll('#{ids.ATTENTION_DIFF} g.hm').length >= 5")
    status = page.inner_text(f"#{ids.ATTENTION_STATUS}")
    assert "L1.H2 at position 10" in status and "head_out" in status
    shot(page, "02-heatmap-and-attention")


def test_download_csv_contract_format(page):
    rows = download(page, ids.DOWNLOAD_CSV_BUTTON)
    assert tuple(rows[0][:9]) == CSV_COLUMNS
    assert len(rows) - 1 == 2 * 15 * 4                         # layers x positions x heads
    assert {r[0] for r in rows[1:]} == {"head_out"}


def test_upload_pairs_csv_and_run_multi_pair(page, tmp_path):
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["clean", "corrupt", "answer", "wrong"])
        w.writerows(IOI)
    page.set_input_files(f"#{ids.PAIRS_UPLOAD} input[type=file]", str(path))
    page.wait_for_selector(".pairs-preview")
    assert "Using 2 pairs" in page.inner_text(f"#{ids.PAIRS_PREVIEW}")
    choose(page, ids.KIND_SELECT, "resid_pre")
    summary = run_and_wait(page)
    assert "resid_pre" in summary and "2 pairs" in summary
    rows = download(page, ids.DOWNLOAD_CSV_BUTTON)
    assert tuple(rows[0][:9]) == CSV_COLUMNS and "ci_low" in rows[0]
    assert len(rows) - 1 == 2 * 15
    shot(page, "04-multi-pair-upload")


def test_bad_upload_shows_error(page, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,answer\nhello, world\n")
    page.set_input_files(f"#{ids.PAIRS_UPLOAD} input[type=file]", str(path))
    page.wait_for_function(
        f"document.getElementById('{ids.ERROR_MESSAGE}').innerText.includes('missing column')")
    assert "bad.csv" in page.inner_text(f"#{ids.ERROR_MESSAGE}")


def test_compare_with_an_earlier_run(page):
    page.click(f"#{ids.DIRECTION_SELECT} label:has-text('noise (clean run')")
    summary = run_and_wait(page)
    assert "noise" in summary
    page.click("a.nav-link:has-text('History & compare')")
    page.wait_for_selector(f"#{ids.RUN_HISTORY} .run-item")
    assert page.locator(f"#{ids.RUN_HISTORY} .run-item").count() == 3   # the refused run is not saved
    values = page.locator(f"#{ids.RUN_HISTORY} .run-id").all_inner_texts()
    newest, previous = (int(v.lstrip("#")) for v in values[:2])
    page.click(f"#{ids.COMPARE_SELECT}")
    for v in (newest, previous):
        page.click(f".dash-dropdown-option:has(input[value='{v}'])")
    page.keyboard.press("Escape")
    page.wait_for_function(f"document.querySelectorAll('#{ids.COMPARE_HEATMAP} g.hm').length >= 3")
    assert "Top components" in page.inner_text(f"#{ids.COMPARE_TABLE}")
    shot(page, "05-history-and-compare")
    assert not page.errors, page.errors


def test_cancel_and_a_second_run_queues(page, tmp_path):
    """A long run (6000 pairs, every neuron) holds the run slot: a Run from a second tab queues
    behind it and starts once the first is cancelled; the cancelled run is not saved."""
    page.click("a.nav-link:has-text('Results')")
    history_before = page.locator(f"#{ids.RUN_HISTORY} .run-item").count()
    path = tmp_path / "many.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["clean", "corrupt", "answer", "wrong"])
        w.writerows(IOI * 3000)
    page.set_input_files(f"#{ids.PAIRS_UPLOAD} input[type=file]", str(path))
    page.wait_for_function(f"document.getElementById('{ids.PAIRS_PREVIEW}').innerText.includes('Using 6000 pairs')")
    choose(page, ids.KIND_SELECT, "neuron")
    page.click(f"#{ids.RUN_BUTTON}")
    page.wait_for_function(f"document.getElementById('{ids.RUN_BUTTON}').disabled")
    assert page.inner_text(f"#{ids.RUN_BUTTON}") == "Running…"
    page.wait_for_function(f"document.getElementById('{ids.PROGRESS_TEXT}').innerText.includes('patched forwards')",
                           timeout=60_000)

    other = page.context.new_page()
    other.goto(page.url)
    other.wait_for_selector(f"#{ids.RUN_BUTTON}")
    other.wait_for_function(f"document.querySelectorAll('#{ids.TOKEN_VIEW} .tok').length === 30")
    other.click(f"#{ids.RUN_BUTTON}")
    other.wait_for_function(f"document.getElementById('{ids.PROGRESS_TEXT}').innerText.includes('queued')")
    shot(other, "06-queued-behind-another-run")

    page.click(f"#{ids.CANCEL_BUTTON}")
    page.wait_for_function(f"document.getElementById('{ids.RUN_STATUS}').innerText.includes('cancelled')")
    page.wait_for_function(f"!document.getElementById('{ids.RUN_BUTTON}').disabled")
    # its own progress is gone: empty, or the queued run of the other tab, which this page now
    # shows as running elsewhere (re-attach)
    page.wait_for_function(f"['', 'Started elsewhere'].some(t => t === '' ? "
                           f"document.getElementById('{ids.PROGRESS_TEXT}').innerText === '' : "
                           f"document.getElementById('{ids.PROGRESS_TEXT}').innerText.startsWith(t))")
    # the queued run goes ahead once the slot is free
    # (wait for its own "saved" status: page.url is /run/<id>, so the other page already shows a run)
    other.wait_for_function(f"document.getElementById('{ids.RUN_STATUS}').innerText.includes('saved to history')",
                            timeout=60_000)
    other.close()
    page.click("a.nav-link:has-text('History & compare')")
    page.wait_for_function(
        f"document.querySelectorAll('#{ids.RUN_HISTORY} .run-item').length === {history_before + 1}")
    labels = page.locator(f"#{ids.RUN_HISTORY} .run-item .run-label").all_inner_texts()
    assert not any(label.startswith("neuron") for label in labels)       # nothing saved
    # ... but the history says what happened to it: Dash kills a cancelled job's process, and the
    # click's request in the store (named by the page's session id) tells a cancel from a crash
    ended = page.locator(f"#{ids.RUN_HISTORY} .job-item")
    assert ended.count() == 1 and "neuron" in ended.inner_text()
    assert "cancelled" in ended.inner_text() and "Cancel was pressed" in ended.inner_text(), ended.inner_text()
    assert "crashed" not in ended.inner_text()


def test_open_and_delete_from_history(page):
    page.click("a.nav-link:has-text('History & compare')")
    items = page.locator(f"#{ids.RUN_HISTORY} .run-item")
    page.wait_for_function(f"document.querySelectorAll('#{ids.RUN_HISTORY} .run-item').length > 1")
    count = items.count()
    oldest = page.locator(f"#{ids.RUN_HISTORY} .run-id").all_inner_texts()[-1]
    items.last.locator("button:has-text('Open')").click()
    page.wait_for_function(                                         # "Run #1" and not "Run #10"
        f"/^Run {oldest}(?![0-9])/.test(document.getElementById('{ids.RESULTS_SUMMARY}').innerText)")
    assert page.locator(f"#{ids.RESULTS_HEATMAP}").is_visible()          # the Results tab is open
    page.click("a.nav-link:has-text('History & compare')")
    items.first.locator(".run-actions > button:has-text('Delete')").click()
    items.first.locator(".delete-confirm button:has-text('Delete')").click()     # it asks first
    page.wait_for_function(
        f"document.querySelectorAll('#{ids.RUN_HISTORY} .run-item').length === {count - 1}")
