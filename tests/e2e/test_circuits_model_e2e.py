"""End-to-end on the shipped patchboard-circuits model: what its MODEL_CARD.md says a researcher
will find is what the dashboard shows.

- IOI preset, 8 pairs, head_out: the strongest heads on the heatmap are the engine's (computed
  here independently) and the card's IOI story names them.
- The card's keys-only induction pairs (induction_key_pairs.csv) uploaded, Path patching into the
  induction heads' keys: the previous-token head is the strongest sender, as the card says.

Set PATCHBOARD_SCREENSHOTS=docs/screenshots to save 35-circuits-ioi-head-out.png and
36-circuits-induction-keys-path.png.
"""
from __future__ import annotations

import re

import pytest

from dashboard import ids
from tests.e2e.support import ROOT, open_page, run_dashboard, shot, skip_reason
from tests.e2e.test_dashboard_e2e import choose, run_and_wait
from tests.e2e.test_hero_e2e import figure_data

pytestmark = pytest.mark.e2e
if skip_reason():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=skip_reason())]

CIRCUITS = ROOT / "assets" / "models" / "patchboard-circuits"
CARD = (CIRCUITS / "MODEL_CARD.md").read_text() if (CIRCUITS / "MODEL_CARD.md").exists() else ""


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    for url in run_dashboard(CIRCUITS, tmp_path_factory.mktemp("circuits-data")):
        yield from open_page(url, timeout_ms=90_000)


def card_section(title: str) -> str:
    """The card's text under the heading that starts with `title`, up to the next heading."""
    match = re.search(rf"^#+ {re.escape(title)}.*?$(.*?)(?=^#)", CARD, re.S | re.M)
    assert match, f"MODEL_CARD.md has no section {title!r}"
    return match.group(1)


def top_heads(page, graph_id: str, k: int) -> list[str]:
    """The k cells with the largest |value| on a layer x head heatmap, as 'L0H0' labels."""
    cells = figure_data(page, graph_id, "d[0].z.flatMap((row, i) => row.map((v, j) => "
                                        "[v === null ? 0 : Math.abs(v), d[0].y[i], d[0].x[j]]))")
    cells.sort(key=lambda c: -c[0])
    return [f"{y}{x}" for _, y, x in cells[:k]]


def _engine_top_ioi_heads(k: int) -> list[str]:
    from patching import PatchSpec, PromptSet, load_model, sweep
    from patching.tasks.presets import runnable_pairs
    model = load_model(str(CIRCUITS))
    effect = sweep(model, PromptSet.from_pairs(model, runnable_pairs(model, "ioi", 8)),
                   PatchSpec(kind="head_out")).effect                      # [layer, head]
    order = effect.abs().flatten().argsort(descending=True)[:k].tolist()
    return [f"L{i // model.n_heads}H{i % model.n_heads}" for i in order]


def test_ioi_heads_on_the_heatmap_are_the_cards(page):
    page.fill(f"#{ids.PRESET_COUNT}", "8")
    choose(page, ids.PRESET_SELECT, "ioi")
    page.wait_for_function(f"document.getElementById('{ids.CLEAN_PROMPT}').value.includes('gave')")
    page.wait_for_function(f"document.getElementById('{ids.ERROR_MESSAGE}').innerText === ''")
    choose(page, ids.KIND_SELECT, "head_out")
    summary = run_and_wait(page)
    assert "head_out" in summary and "8 pairs" in summary, summary
    shown = top_heads(page, ids.RESULTS_HEATMAP, 2)
    assert shown == _engine_top_ioi_heads(2)
    story = card_section("IOI")
    assert all(head in story for head in shown), (shown, story[:400])
    shot(page, "35-circuits-ioi-head-out")


def test_the_previous_token_head_is_the_top_sender_into_the_induction_keys(page):
    receivers = re.search(r"receivers `([^`]+)`", card_section("Induction")).group(1)
    page.set_input_files(f"#{ids.PAIRS_UPLOAD} input[type=file]", str(CIRCUITS / "induction_key_pairs.csv"))
    page.wait_for_selector(".pairs-preview")
    # the uploaded pairs are not the IOI preset's any more: the Preset box says so
    page.wait_for_function(f"document.getElementById('{ids.PRESET_SELECT}').innerText.includes('Choose a task')")
    page.click("a.nav-link:has-text('Path patching')")
    page.fill(f"#{ids.PATH_RECEIVERS}", receivers)
    page.press(f"#{ids.PATH_RECEIVERS}", "Tab")
    page.click(f"#{ids.PATH_RUN_BUTTON}")
    page.wait_for_function("([id, t]) => document.getElementById(id).innerText.includes(t)",
                           arg=[ids.PATH_SUMMARY, "Run #"])
    page.wait_for_selector(f"#{ids.PATH_FIGURE} g.hm")
    assert page.inner_text(f"#{ids.PATH_ERROR}") == ""
    top = top_heads(page, ids.PATH_FIGURE, 1)[0]
    assert top == "L0H0" and "previous-token head L0H0" in card_section("Induction")
    shot(page, "36-circuits-induction-keys-path")
