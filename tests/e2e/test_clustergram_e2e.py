"""End-to-end on the shipped default model: an IOI preset of 8 pairs, head_out per position, then
*Cluster heads* under the heatmap: 16 heads in the engine's leaf order beside a dendrogram; the
profile option redraws it; its CSV is the order table; a run without heads is refused inline.

Set PATCHBOARD_SCREENSHOTS=docs/screenshots to save 30-head-clustergram.png.
"""
from __future__ import annotations

import pytest

from dashboard import ids
from tests.e2e.support import open_page, run_dashboard, shot, skip_reason
from tests.e2e.test_dashboard_e2e import choose, download, run_and_wait
from tests.e2e.test_hero_e2e import SHIPPED, figure_data

pytestmark = pytest.mark.e2e
if skip_reason():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=skip_reason())]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("clustergram-data")


@pytest.fixture(scope="module")
def page(data_dir):
    for url in run_dashboard(SHIPPED, data_dir):
        yield from open_page(url, timeout_ms=90_000)


def _ticks(page) -> list[str]:
    return page.evaluate(f"document.getElementById('{ids.CLUSTER_GRAPH}').querySelector('.js-plotly-plot')"
                         ".layout.yaxis2.ticktext")


def _expected(data_dir, run_id: int, profile: str):
    from patching.inspect.clustergram import ClusterSpec, clustergram
    from patching.runs.store import RunStore
    return clustergram(RunStore(data_dir).get(run_id).result, ClusterSpec(profile=profile))


def test_cluster_heads_of_a_several_pair_run(page, data_dir):
    page.fill(f"#{ids.PRESET_COUNT}", "8")
    choose(page, ids.PRESET_SELECT, "ioi")
    page.wait_for_function(f"document.getElementById('{ids.CLEAN_PROMPT}').value.includes('gave')")
    page.wait_for_function(f"document.getElementById('{ids.ERROR_MESSAGE}').innerText === ''")
    page.click(f"#{ids.PER_POSITION} label")
    summary = run_and_wait(page)
    assert "head_out per position" in summary and "8 pairs" in summary, summary
    page.locator(f"#{ids.CLUSTER_BUTTON}").scroll_into_view_if_needed()
    page.click(f"#{ids.CLUSTER_BUTTON}")
    page.wait_for_function(f"document.getElementById('{ids.CLUSTER_STATUS}').innerText.includes('heads clustered')")
    want = _expected(data_dir, 1, "pairs")
    assert _ticks(page) == [want.label(h) for h in want.heads] and len(want.heads) == 16
    cols = figure_data(page, ids.CLUSTER_GRAPH, "d[1].z[0].length")
    assert cols == want.profile.shape[1] and cols > 8                  # positions × 8 pairs
    assert page.locator(f"#{ids.CLUSTER_GRAPH} g.hm").count() == 1
    assert "16 heads" in page.inner_text(f"#{ids.CLUSTER_STATUS}")
    shot(page, "30-head-clustergram")
    page.click(f"#{ids.CLUSTER_PROFILE} label:text-is('mean over pairs')")
    mean = _expected(data_dir, 1, "mean")
    page.wait_for_function(f"document.getElementById('{ids.CLUSTER_GRAPH}').querySelector('.js-plotly-plot')"
                           f".data[1].z[0].length === {mean.profile.shape[1]}")
    assert _ticks(page) == [mean.label(h) for h in mean.heads]
    rows = download(page, ids.CLUSTER_DOWNLOAD_BUTTON)
    assert rows[0] == ["order", "layer", "head", "label", "detector", "joins_at"]
    assert [r[3] for r in rows[1:]] == [mean.label(h) for h in mean.heads]
    assert not page.errors, page.errors


def test_a_run_without_heads_is_refused_inline(page):
    choose(page, ids.KIND_SELECT, "resid_pre")
    run_and_wait(page)
    page.wait_for_function(f"document.getElementById('{ids.CLUSTER_STATUS}').innerText.startsWith('Cluster the heads')")
    page.click(f"#{ids.CLUSTER_BUTTON}")
    page.wait_for_function(f"document.getElementById('{ids.CLUSTER_STATUS}').innerText.includes('head axis')")
    assert page.is_disabled(f"#{ids.CLUSTER_DOWNLOAD_BUTTON}")
