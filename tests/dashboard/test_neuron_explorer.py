"""The Neurons tab's dataset explorer (dashboard/tabs/neuron_explorer.py) through its callbacks:
upload (saved, over-budget and bad files refused inline), search, prompt selection from the table
and the map, the token slider, every layer at a token, a neuron's histogram / top tokens / map."""
from __future__ import annotations

import base64

import dash
import numpy as np
import pytest
from dash import no_update

from dashboard import ids
from dashboard.context import Context
from dashboard.tabs import neuron_explorer as X
from dashboard.tabs import neurons as T
from patching.inspect import datasets as D
from patching.inspect import neurons as N
from tests.dash_tree import walk

LONG_ODD = "  Ünïcödé résumé — naïve café 🙂🚀 tabs\there, \"quotes\" & <tags> =SUM(A1) and on and on"
ROWS = [("Paris is a city in the country of", "France"), ("Rome is a city in the country of", "Italy"),
        ("The war lasted", ""), (LONG_ODD, "odd")]


def data_url(body: bytes, mime="text/csv") -> str:
    return f"data:{mime};base64," + base64.b64encode(body).decode()


def csv_bytes() -> bytes:
    import csv
    import io
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["text", "label"])
    w.writerows(ROWS)
    return buf.getvalue().encode()


@pytest.fixture
def cb(registry, tmp_path):
    app = dash.Dash(__name__, suppress_callback_exceptions=True)
    return T.register(app, Context(registry, None, tmp_path)).explorer


@pytest.fixture
def loaded(cb, tiny_name):
    dataset, status = cb.upload(data_url(csv_bytes()), "cities.csv", tiny_name)
    return dataset


def test_section_is_in_the_neurons_tab():
    present = {getattr(c, "id", None) for c in walk(T.layout())}
    for name in ("NX_UPLOAD", "NX_SEARCH", "NX_PROMPTS", "NX_TOKEN", "NX_TOKEN_GRAPH", "NX_HISTOGRAM", "NX_TOP",
                 "NX_CLUSTER", "NX_LAYER", "NX_NEURON", "NX_METHOD"):
        assert getattr(ids, name) in present, name


def test_upload_is_saved_and_listed_and_searched(cb, tiny_name, tmp_path):
    dataset, status = cb.upload(data_url(csv_bytes()), "cities.csv", tiny_name)
    assert dataset["n"] == 4 and (tmp_path / "datasets" / f"{dataset['sha']}.json").exists()
    assert status.startswith("Loaded cities.csv: 4 prompts") and "memory budget" in status
    rows, selected, status = cb.prompts(dataset, "", [], tiny_name, ids.TAB_NEURONS)
    assert [r["prompt"] for r in rows] == [0, 1, 2, 3] and selected == [0]
    assert status.startswith("cities.csv: 4 of 4 prompts")
    rows, _, status = cb.prompts(dataset, "country", [], tiny_name, ids.TAB_NEURONS)
    assert [r["label"] for r in rows] == ["France", "Italy"] and "2 of 4 prompts matching 'country'" in status
    rows, _, _ = cb.prompts(dataset, r"^(rome|the)\b", ["re"], tiny_name, ids.TAB_NEURONS)
    assert [r["prompt"] for r in rows] == [1, 2]
    rows, _, status = cb.prompts(dataset, "(", ["re"], tiny_name, ids.TAB_NEURONS)
    assert rows == [] and "is not a regular expression" in str(status)
    assert cb.prompts(dataset, "", [], tiny_name, ids.TAB_RESULTS) == (no_update,) * 3    # tab closed


@pytest.mark.parametrize("body, name, message", [
    (b"\xff\xfe\x00\x01", "bad.txt", "'bad.txt' is not UTF-8 text"),
    (b"prompt\nx\n", "p.csv", "needs a 'text' column"),
    (b"x", "model.safetensors", "expected a .txt file (one prompt a line) or a .csv"),
    (b"", "empty.txt", "the file is empty"),
])
def test_a_bad_upload_is_refused_inline(cb, tiny_name, body, name, message):
    dataset, status = cb.upload(data_url(body) if body else "", name, tiny_name)
    assert dataset is no_update and message in str(status)


def test_a_dataset_over_the_memory_budget_is_refused_naming_both(cb, tiny_name, monkeypatch):
    monkeypatch.setattr(N, "memory_budget", lambda device, mb=None: 4096)
    dataset, status = cb.upload(data_url(csv_bytes()), "cities.csv", tiny_name)
    text = str(status)
    assert dataset is no_update and "the prompts' activations need" in text
    assert "4 prompts ×" in text and "the memory budget is 4.0 KiB (4,096 bytes)" in text


def test_select_slider_token_view_and_pick(cb, tiny_name, gpt2_model, loaded):
    rows, _, _ = cb.prompts(loaded, "", [], tiny_name, ids.TAB_NEURONS)
    assert cb.select([3], None, rows, trig=ids.NX_PROMPTS) == (3, no_update, no_update)
    assert cb.select(None, {"points": [{"customdata": [2, "", "x"]}]}, rows, trig=ids.NX_CLUSTER) == (2, [2], 0)
    assert cb.select(None, {"points": [{"customdata": [2, "", "x"]}]}, rows[:1], trig=ids.NX_CLUSTER) == (2, [], no_update)
    acts = cb.acts_of(tiny_name, loaded)
    n = acts.texts.lengths[3]
    top, value, marks = cb.slider(3, loaded, tiny_name)
    assert top == value == n - 1 and 0 in marks
    fig, label = cb.token_view(5, 3, loaded, tiny_name, 1, 7)
    want = D.token_activations(acts, 3, 5).pivot(index="layer", columns="neuron", values="activation")
    assert np.allclose(np.asarray(fig.data[0].z), want.to_numpy())
    assert fig.data[1].x == (7,) and fig.data[1].y == (1,)               # the picked neuron is ringed
    assert "Prompt 3, token 5 of" in str(label)
    assert cb.pick({"points": [{"curveNumber": 0, "x": 9, "y": 1}]}) == (1, 9)
    fig, label = cb.token_view(n + 3, 3, loaded, tiny_name, 1, 7)
    assert f"token {n + 3} is out of range" in str(label)


def test_neuron_views_and_the_map(cb, tiny_name, loaded):
    acts = cb.acts_of(tiny_name, loaded)
    fig, columns, data, status = cb.neuron(1, 9, 3, 4, loaded, tiny_name)
    assert sum(fig.data[0].y) == sum(acts.texts.lengths)
    assert fig.layout.shapes[0].x0 == pytest.approx(float(acts.acts[1, 3, 4, 9]))
    assert data[0]["rank"] == 1 and "context (token in bold)" in [c["name"] for c in columns]
    assert status.startswith("L1N9: mean")
    bad = cb.neuron(1, 99999, 3, 4, loaded, tiny_name)
    assert "neuron must be a whole number from 0 to" in str(bad[3])
    fig = cb.cluster(1, 9, "pca", -1, 2, loaded, tiny_name)
    want = D.cluster_by_neuron(acts, 1, 9, -1)
    assert np.allclose(np.asarray(fig.data[0].marker.color), want.activation)
    assert np.allclose(np.asarray(fig.data[0].x), want.x) and fig.data[1].x[0] == pytest.approx(want.x[2])
    assert [int(c[0]) for c in fig.data[0].customdata] == want.prompt.tolist()


def test_default_dataset_is_the_factual_task(cb, tiny_name):
    rows, _, status = cb.prompts(X.TASK, "", [], tiny_name, ids.TAB_NEURONS)
    assert status.startswith(f"the factual task: {X.TASK_PROMPTS} of {X.TASK_PROMPTS} prompts")
