"""End-to-end: a run opened by its URL (/run/<id>), exported and imported, in a real headless Chromium.

The data dir is seeded with one sweep (head_out on the tiny GPT-2 model) before `python -m
dashboard` starts; the browser opens /run/1 directly and must show that run's heatmap on the
Results tab, its link and its provenance; /run/abc and /run/999 say so inline; Export downloads
run-1.patchboard.zip and Import stores it again as run #2.

Set PATCHBOARD_SCREENSHOTS=docs/screenshots to save 09-shared-run.png.
"""
from __future__ import annotations


import pytest

from dashboard import ids
from tests.conftest import IOI
from tests.e2e.support import open_context, run_dashboard, shot, skip_reason

pytestmark = pytest.mark.e2e
TIMEOUT = 60_000   # ms: generous, the machine may be busy

if skip_reason():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=skip_reason())]


@pytest.fixture(scope="module")
def seeded(gpt2_model, ioi_prompts, tmp_path_factory):
    """A data dir holding one saved run (#1), and that result."""
    from patching.runs.store import RunStore
    from patching import PatchSpec, sweep
    data_dir = tmp_path_factory.mktemp("dashboard-data-share")
    result = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out", model=gpt2_model.name))
    assert RunStore(data_dir).save(result, IOI, label="IOI heads (shared)") == 1
    return data_dir, result


@pytest.fixture(scope="module")
def server(tiny_dirs, seeded):
    yield from run_dashboard(tiny_dirs["gpt2"], seeded[0])


@pytest.fixture(scope="module")
def browser_context(server):
    yield from open_context(TIMEOUT)


def wait_text(page, id_: str, needle: str) -> None:
    page.wait_for_function("([id, t]) => { const el = document.getElementById(id); "
                           "return el !== null && el.innerText.includes(t); }", arg=[id_, needle])


def test_run_url_opens_the_heatmap_with_link_and_provenance(browser_context, server, seeded):
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server + "run/1")
    wait_text(page, ids.RESULTS_SUMMARY, "Run #1")
    page.wait_for_selector(f"#{ids.RESULTS_HEATMAP} g.hm")
    assert page.get_attribute(f"#{ids.TABS} a.nav-link.active", "class") is not None
    assert "Results" in page.inner_text(f"#{ids.TABS} a.nav-link.active")
    ticks = page.eval_on_selector_all(f"#{ids.RESULTS_HEATMAP} .xtick text", "els => els.map(e => e.textContent)")
    assert ticks == ["H0", "H1", "H2", "H3"]
    assert page.get_attribute(f"#{ids.RUN_LINK} a", "href") == "/run/1"
    assert page.inner_text(f"#{ids.RUN_URL_STATUS}") == ""
    page.wait_for_function("([id, t]) => document.getElementById(id).value === t",
                           arg=[ids.CLEAN_PROMPT, IOI[0][0]])      # the link brings the run's form back
    assert "head_out" in page.inner_text(f"#{ids.KIND_SELECT}")
    page.click(f"#{ids.PROVENANCE_PANEL} summary")
    wait_text(page, ids.PROVENANCE_PANEL, seeded[1].provenance["weights_sha256"])
    assert "transformer_lens" in page.inner_text(f"#{ids.PROVENANCE_PANEL}")
    shot(page, "09-shared-run")
    assert errors == []
    page.close()


@pytest.mark.parametrize("path, message", [("run/abc", "malformed run id 'abc'"),
                                           ("run/999", "run 999 not found")])
def test_bad_run_urls_are_said_inline(browser_context, server, path, message):
    page = browser_context.new_page()
    page.goto(server + path)
    wait_text(page, ids.RUN_URL_STATUS, message)
    page.close()


def test_export_then_import_in_the_history_tab(browser_context, server, tmp_path):
    page = browser_context.new_page()
    page.goto(server + "run/1")
    wait_text(page, ids.RESULTS_SUMMARY, "Run #1")
    page.click("a.nav-link:has-text('History')")
    wait_text(page, ids.EXPORT_RUN_BUTTON, "Export run #1")
    with page.expect_download() as info:
        page.click(f"#{ids.EXPORT_RUN_BUTTON}")
    assert info.value.suggested_filename == "run-1.patchboard.zip"
    saved = tmp_path / "run-1.patchboard.zip"
    info.value.save_as(saved)
    page.set_input_files(f"#{ids.IMPORT_RUN_UPLOAD} input[type=file]", str(saved))
    wait_text(page, ids.SHARE_STATUS, "as run #2")
    assert "Warning" not in page.inner_text(f"#{ids.SHARE_STATUS}")
    wait_text(page, ids.RUN_HISTORY, "IOI heads (shared) (imported)")
    page.wait_for_function("() => window.location.pathname === '/run/2'")   # the address follows the run
    page.click(f"#{ids.RUN_HISTORY} button:has-text('Open') >> nth=-1")    # the oldest: run #1
    wait_text(page, ids.RESULTS_SUMMARY, "Run #1")
    page.wait_for_function("() => window.location.pathname === '/run/1'")
    page.reload()
    wait_text(page, ids.RESULTS_SUMMARY, "Run #1")
    page.click("a.nav-link:has-text('History')")
    bad = tmp_path / "bad.patchboard.zip"
    bad.write_bytes(b"not a zip at all")
    page.set_input_files(f"#{ids.IMPORT_RUN_UPLOAD} input[type=file]", str(bad))
    wait_text(page, ids.SHARE_STATUS, "not a zip archive")
    page.close()
