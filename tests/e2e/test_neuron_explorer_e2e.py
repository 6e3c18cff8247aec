"""End-to-end on the shipped default model: the Neurons tab's dataset explorer in a real headless
Chromium. The factual task's prompts are there at first; a CSV dataset with a long odd prompt is
uploaded and searched; a prompt is picked from the table, a token with the slider; a click on the
layers × neurons map picks a neuron, whose histogram, top-activating tokens (with context on both
sides) and PCA map coloured by it appear; a click on a map point selects that prompt; bad uploads
are refused inline, naming the file and the problem.

Set PATCHBOARD_SCREENSHOTS=docs/screenshots to save 28-neuron-explorer-dataset.png and
29-neuron-explorer-neuron.png.
"""
from __future__ import annotations

import csv

import pytest

from dashboard import ids
from tests.e2e.support import open_page, run_dashboard, shot, skip_reason
from tests.e2e.test_hero_e2e import SHIPPED, figure_data

pytestmark = pytest.mark.e2e
if skip_reason():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=skip_reason())]

LONG_ODD = ("  Ünïcödé résumé — naïve café 🙂🚀 tabs\there, \"quotes\" & <tags> =SUM(A1); the capital of "
            "France is Paris, and the capital of Italy is Rome, and the capital of Spain is")
ROWS = [(f"{city} is a city in the country of", country) for city, country in (
    ("Paris", "France"), ("Lyon", "France"), ("Rome", "Italy"), ("Milan", "Italy"), ("Madrid", "Spain"),
    ("Seville", "Spain"), ("Berlin", "Germany"), ("Munich", "Germany"))] + [
    ("The war lasted for many", "other"), ("When Mary and John went to the store, John gave a drink to", "other"),
    (LONG_ODD, "odd")]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    for url in run_dashboard(SHIPPED, tmp_path_factory.mktemp("explorer-data")):
        yield from open_page(url, timeout_ms=90_000)


def _text(page, id_: str) -> str:
    return page.inner_text(f"#{id_}")


def _wait_text(page, id_: str, text: str) -> None:
    page.wait_for_function("([id, t]) => document.getElementById(id)?.innerText.includes(t)", arg=[id_, text])


def _point(page, graph_id: str, x, y) -> list[float]:
    """The page coordinates of data point (x, y) in a dcc.Graph (plotly's own axis mapping)."""
    return page.evaluate(f"""(() => {{
        const gd = document.getElementById('{graph_id}').querySelector('.js-plotly-plot');
        const L = gd._fullLayout, r = gd.querySelector('.nsewdrag').getBoundingClientRect();
        return [r.left + L.xaxis.l2p({x}), r.top + L.yaxis.l2p({y})]; }})()""")


def _write(path, rows) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return str(path)


def test_task_prompts_then_an_uploaded_dataset_searched(page, tmp_path):
    page.click("a.nav-link:text-is('Neurons & weights')")
    _wait_text(page, ids.NX_SEARCH_STATUS, "the factual task: 64 of 64 prompts")
    page.set_input_files(f"#{ids.NX_UPLOAD} input[type=file]", _write(tmp_path / "cities.csv", ROWS))
    _wait_text(page, ids.NX_DATASET_STATUS, "Loaded cities.csv: 11 prompts")
    assert "memory budget" in _text(page, ids.NX_DATASET_STATUS)
    _wait_text(page, ids.NX_SEARCH_STATUS, "cities.csv: 11 of 11 prompts")
    page.fill(f"#{ids.NX_SEARCH}", "capital")
    page.press(f"#{ids.NX_SEARCH}", "Enter")
    _wait_text(page, ids.NX_SEARCH_STATUS, "1 of 11 prompts matching 'capital'")
    page.click(f"#{ids.NX_REGEX} label")
    page.fill(f"#{ids.NX_SEARCH}", "^(paris|rome|madrid) ")
    page.press(f"#{ids.NX_SEARCH}", "Enter")
    _wait_text(page, ids.NX_SEARCH_STATUS, "3 of 11 prompts matching")
    cells = page.locator(f"#{ids.NX_PROMPTS} td[data-dash-column='text']").all_inner_texts()
    assert [c.split()[0] for c in cells] == ["Paris", "Rome", "Madrid"]
    page.fill(f"#{ids.NX_SEARCH}", "")
    page.press(f"#{ids.NX_SEARCH}", "Enter")
    _wait_text(page, ids.NX_SEARCH_STATUS, "11 of 11 prompts")
    assert not page.errors, page.errors


def test_pick_the_long_odd_prompt_a_token_and_a_neuron(page):
    page.click(f"#{ids.NX_PROMPTS} .previous-next-container button.next-page")      # rows 8..10
    page.locator(f"#{ids.NX_PROMPTS} tr:has(td:has-text('Ünïcödé')) input[type=radio]").click()
    _wait_text(page, ids.NX_TOKEN_LABEL, "Prompt 10, token")
    label = _text(page, ids.NX_TOKEN_LABEL)
    n = int(label.split(" of ")[1].split(":")[0])
    assert n > 40 and f"token {n - 1} of {n}" in label                  # the slider starts on the last token
    handle = page.locator(f"#{ids.NX_TOKEN} [role=slider]").first
    handle.focus()
    for _ in range(3):
        page.keyboard.press("ArrowLeft")
    _wait_text(page, ids.NX_TOKEN_LABEL, f"token {n - 4} of {n}")
    rows, cols = figure_data(page, ids.NX_TOKEN_GRAPH, "[d[0].z.length, d[0].z[0].length]")
    assert (rows, cols) == (4, 512)
    # the neuron of layer 2 that fires most at this token
    neuron = figure_data(page, ids.NX_TOKEN_GRAPH, "d[0].z[2].indexOf(Math.max(...d[0].z[2]))")
    page.locator(f"#{ids.NX_TOKEN_GRAPH}").scroll_into_view_if_needed()
    page.mouse.click(*_point(page, ids.NX_TOKEN_GRAPH, neuron, 2))
    page.wait_for_function(f"document.getElementById('{ids.NX_LAYER}').value === '2'")
    assert int(page.input_value(f"#{ids.NX_NEURON}")) == neuron
    _wait_text(page, ids.NX_NEURON_STATUS, f"L2N{neuron}: mean")
    page.wait_for_function("s => document.querySelector(s)?.textContent.startsWith('L2N')", arg=f"#{ids.NX_HISTOGRAM} .gtitle")
    contexts = page.locator(f"#{ids.NX_TOP} td[data-dash-column='context']").all_inner_texts()
    assert len(contexts) == 10 and any(len(c) > 20 for c in contexts)    # tokens with context on both sides
    shot(page, "28-neuron-explorer-dataset")


def test_map_is_coloured_by_the_neuron_and_a_click_selects_a_prompt(page):
    page.wait_for_function("s => document.querySelector(s)?.textContent.includes('coloured by L2N')",
                           arg=f"#{ids.NX_CLUSTER} .gtitle")
    colours = figure_data(page, ids.NX_CLUSTER, "d[0].marker.color.length")
    assert colours == 11
    page.locator(f"#{ids.NX_CLUSTER}").scroll_into_view_if_needed()
    i = figure_data(page, ids.NX_CLUSTER, "d[0].customdata.findIndex(c => String(c[0]) === '2')")
    x, y = figure_data(page, ids.NX_CLUSTER, f"[d[0].x[{i}], d[0].y[{i}]]")
    page.mouse.click(*_point(page, ids.NX_CLUSTER, x, y))
    _wait_text(page, ids.NX_TOKEN_LABEL, "Prompt 2, token")
    assert "Rome" in _text(page, ids.NX_TOKEN_LABEL)
    page.wait_for_function(f"""document.querySelector("#{ids.NX_PROMPTS} tr:has(input[type=radio]:checked)")
                               ?.innerText.includes('Rome')""")          # the table follows the map
    page.click(f"#{ids.NX_METHOD} label:text-is('PCA → t-SNE')")
    page.wait_for_function("s => document.querySelector(s)?.textContent.startsWith('PCA → t-SNE')",
                           arg=f"#{ids.NX_CLUSTER} .gtitle")
    shot(page, "29-neuron-explorer-neuron")
    assert not page.errors, page.errors


@pytest.mark.parametrize("name, body, message", [
    ("binary.txt", b"\xff\xfe\x00\x00garbage", "'binary.txt' is not UTF-8 text"),
    ("prompts.csv", b"prompt,label\nParis is,France\n", "needs a 'text' column (and optionally 'label'); its columns are prompt, label"),
])
def test_a_bad_upload_is_refused_inline(page, tmp_path, name, body, message):
    path = tmp_path / name
    path.write_bytes(body)
    page.set_input_files(f"#{ids.NX_UPLOAD} input[type=file]", str(path))
    _wait_text(page, ids.NX_DATASET_STATUS, message)
    assert "cities.csv: 11 of 11" in _text(page, ids.NX_SEARCH_STATUS)     # the loaded dataset stays
