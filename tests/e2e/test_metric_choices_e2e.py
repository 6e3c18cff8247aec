"""End-to-end: the metric select on the shipped model — a preset suggests its task's metric in
words and never switches it; greater-than's probability difference runs; multi-token answers run
with seq_logprob_diff, and the other metrics refuse them naming it.

One page, in file order: greater-than preset -> note, metric unchanged -> choose the suggested
metric -> run; then typed multi-token answers -> refused under logit_diff -> run under
seq_logprob_diff.
"""
from __future__ import annotations

import pytest

from dashboard import ids
from patching.paths import models_dir
from tests.e2e.support import open_page, run_dashboard, shot, skip_reason
from tests.e2e.test_dashboard_e2e import TIMEOUT, choose, run_and_wait

pytestmark = pytest.mark.e2e
if skip_reason():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=skip_reason())]

IOI_MULTI = ("When Mary and John went to the store, John gave a drink to",
             "When Mary and John went to the store, Mary gave a drink to", " Maryland", " Johnson")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from run_dashboard(models_dir() / "patchboard-tiny", tmp_path_factory.mktemp("metric-data"))


@pytest.fixture(scope="module")
def page(server):
    yield from open_page(server, timeout_ms=TIMEOUT)


def _text(page, id_: str) -> str:
    return page.inner_text(f"#{id_}")


def test_greater_than_preset_suggests_its_metric_without_switching(page):
    page.wait_for_function(f"document.getElementById('{ids.MODEL_STATUS}').innerText.includes('layers')")
    assert _text(page, ids.METRIC_NOTE) == ""
    choose(page, ids.PRESET_SELECT, "greater_than")
    page.wait_for_function(f"document.getElementById('{ids.METRIC_NOTE}').innerText.includes('greater_than_prob_diff')")
    note = _text(page, ids.METRIC_NOTE)
    assert "choose it under Metric" in note and "Still logit_diff" in note
    assert page.locator(f"#{ids.METRIC_NOTE}").is_visible()
    assert _text(page, ids.METRIC_SELECT).startswith("logit_diff")          # not switched
    shot(page, "metric-suggested-by-preset")


def test_the_suggested_metric_runs(page):
    choose(page, ids.METRIC_SELECT, "greater_than_prob_diff")
    page.wait_for_function(f"document.getElementById('{ids.METRIC_NOTE}').innerText === ''")
    run_and_wait(page)
    status = _text(page, ids.RUN_STATUS)
    assert "greater_than_prob_diff" in status, status
    assert _text(page, ids.ERROR_MESSAGE) == ""


def test_multi_token_answers_are_refused_by_other_metrics_naming_seq_logprob_diff(page):
    choose(page, ids.METRIC_SELECT, "logit_diff")
    for id_, text in zip((ids.CLEAN_PROMPT, ids.CORRUPT_PROMPT, ids.ANSWER_TOKEN, ids.WRONG_TOKEN), IOI_MULTI):
        page.fill(f"#{id_}", text)
    page.click(f"#{ids.TOKEN_VIEW}")
    page.wait_for_function(f"document.getElementById('{ids.TOKEN_VIEW}').innerText.includes(\"' Maryland' is 2 tokens\")")
    assert page.locator(f"#{ids.TOKEN_VIEW} .check-bad").count() == 2
    page.wait_for_function(f"document.getElementById('{ids.ERROR_MESSAGE}').innerText.includes('seq_logprob_diff')")


def test_multi_token_answers_run_with_seq_logprob_diff(page):
    choose(page, ids.METRIC_SELECT, "seq_logprob_diff")
    page.wait_for_function(f"document.querySelectorAll('#{ids.TOKEN_VIEW} .check-bad').length === 0")
    page.wait_for_function(f"document.getElementById('{ids.ERROR_MESSAGE}').innerText === ''")
    assert "each one scored" in _text(page, ids.TOKEN_VIEW)
    run_and_wait(page)
    assert "seq_logprob_diff" in _text(page, ids.RUN_STATUS)
    assert _text(page, ids.ERROR_MESSAGE) == ""
    shot(page, "multi-token-answers")
