"""End-to-end: a pairs CSV of mixed token lengths with a `positions` column, uploaded in a real
headless Chromium: the preview lists each pair's roles, the token view marks them, a run's
heatmap has the roles on its position axis and its CSV names them; the same pairs without
positions are refused, naming the lengths and the positions column.
"""
from __future__ import annotations

import csv

import pytest

from dashboard import ids
from tests.e2e.support import open_page, run_dashboard, shot, skip_reason
from tests.e2e.test_dashboard_e2e import choose, download, run_and_wait
from tests.test_roles import ROLES, TEXTS, roles_of

pytestmark = pytest.mark.e2e
if skip_reason():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=skip_reason())]


@pytest.fixture(scope="module")
def server(tiny_dirs, tmp_path_factory):
    yield from run_dashboard(tiny_dirs["gpt2"], tmp_path_factory.mktemp("roles-data"))


@pytest.fixture(scope="module")
def page(server):
    yield from open_page(server)


def _write(path, model, with_positions: bool):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["clean", "corrupt", "answer", "wrong"] + (["positions"] if with_positions else []))
        for c, k, io, s in TEXTS:
            roles = " ".join(f"{n}:{i}" for n, i in roles_of(model, c, io, s).items())
            w.writerow([c, k, " " + io, " " + s] + ([roles] if with_positions else []))
    return path


def test_mixed_lengths_with_positions_run_by_role(page, gpt2_model, tmp_path):
    page.set_input_files(f"#{ids.PAIRS_UPLOAD} input[type=file]", str(_write(tmp_path / "roles.csv", gpt2_model, True)))
    page.wait_for_function(f"document.getElementById('{ids.PAIRS_PREVIEW}').innerText.includes('Using 5 pairs')")
    preview = page.inner_text(f"#{ids.PAIRS_PREVIEW}")
    assert "positions" in preview and "IO:2 S1:4 S1+1:5 S2:10 END:14" in preview
    # the token view marks pair 0's roles on its clean tokens
    page.wait_for_function(f"document.querySelectorAll('#{ids.TOKEN_VIEW} .tok-role').length === 5")
    tags = page.locator(f"#{ids.TOKEN_VIEW} .tok-role").all_inner_texts()
    assert tags == list(ROLES)
    assert page.locator(f"#{ids.TOKEN_VIEW} .tok:has(.tok-role:text-is('S2')) .tok-t").inner_text() == "␣John"
    choose(page, ids.KIND_SELECT, "resid_pre")
    summary = run_and_wait(page)
    assert "5 pairs" in summary
    ticks = page.eval_on_selector_all(f"#{ids.RESULTS_HEATMAP} .xtick text", "els => els.map(e => e.textContent)")
    assert [t.split(": ")[-1].strip("'") for t in ticks] == list(ROLES), ticks
    shot(page, "18-mixed-lengths-by-role")
    rows = download(page, ids.DOWNLOAD_CSV_BUTTON)
    header = rows[0]
    pos, tok = header.index("pos"), header.index("token")
    assert [r[pos] for r in rows[1:6]] == list(ROLES) and all(r[pos] == r[tok] for r in rows[1:])
    assert not page.errors, page.errors


def test_mixed_lengths_without_positions_are_refused(page, gpt2_model, tmp_path):
    page.set_input_files(f"#{ids.PAIRS_UPLOAD} input[type=file]", str(_write(tmp_path / "plain.csv", gpt2_model, False)))
    page.wait_for_function(f"!document.getElementById('{ids.PAIRS_PREVIEW}').innerText.includes('positions')")
    page.click(f"#{ids.RUN_BUTTON}")
    page.wait_for_function(f"document.getElementById('{ids.ERROR_MESSAGE}').innerText.includes('tokens (pair')")
    message = page.inner_text(f"#{ids.ERROR_MESSAGE}")
    assert "15 tokens (pairs 0, 2), 12 tokens (pairs 1, 4), 17 tokens (pair 3)" in message
    assert "`positions` column" in message
