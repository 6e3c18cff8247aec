"""The head-detector view (Neurons & weights tab) and its figures: the maps hold exactly
`head_scores`' numbers, hover and head labels read as people write them, the CSV is
`layer,head,detector,score`, bad options come back as an inline message, and the Results
heatmap can label the heads that fire."""
from __future__ import annotations

import io

import dash
import numpy as np
import pandas as pd
import pytest
import torch

from dashboard.context import Context
from patching.figures import detectors as F
from patching.figures import results as figures_results
from dashboard.tabs import neurons as T
from patching.inspect import detectors as D
from tests.conftest import IOI

SPEC = D.DetectorSpec(n_sequences=4, half_length=6, seed=3)


@pytest.fixture(scope="module")
def scores(gpt2_model):
    return D.head_scores(gpt2_model, SPEC)


@pytest.fixture(scope="module")
def cb(registry):
    app = dash.Dash(__name__, suppress_callback_exceptions=True)
    return T.register(app, Context(registry, None, None))


@pytest.fixture(scope="module")
def page(tiny_dirs):
    return (str(tiny_dirs["gpt2"]), *IOI[0], ["bos"], None)


def _options(sequences=4, half_length=6, seed=3):
    """The tab's selector values in OPTION_IDS order, on the detectors view."""
    values = dict(view="detectors", source="task", task_n=8, run="clean", layer=-1, pos=-1, neuron=0, k=5,
                  method="pca", composition="all", circuit="ov", head=0, rank=1,
                  sequences=sequences, half_length=half_length, seed=seed)
    return list(values.values())


def test_three_maps_side_by_side_hold_head_scores_values(gpt2_model, scores):
    fig = F.detector_heatmaps(scores)
    assert [t.name for t in fig.data] == list(D.DETECTORS)
    assert [fig.data[i].xaxis for i in range(3)] == ["x", "x2", "x3"]          # three panels, one row
    for trace in fig.data:
        want = scores[scores.detector == trace.name].pivot(index="layer", columns="head", values="score")
        np.testing.assert_array_equal(np.asarray(trace.z, dtype=float), want.to_numpy())
        assert list(trace.y) == [f"L{l}" for l in range(gpt2_model.n_layers)]
        assert list(trace.x) == [f"H{h}" for h in range(gpt2_model.n_heads)]
        assert (trace.zmin, trace.zmax, trace.colorscale[0][1]) == (0, 1, "rgb(247,251,255)")   # Blues, 0..1
        assert trace.colorbar.title.text.replace("<br>", " ") == F.MEANINGS[trace.name]
    induction = fig.data[2]
    assert induction.text[1][2] == f"L1H2 · induction {float(induction.z[1][2]):.2f}"
    assert induction.hovertemplate == "%{text}<extra></extra>"
    titles = [a.text for a in fig.layout.annotations]
    for title, name, word in zip(titles, D.DETECTORS, ["Previous-token", "Duplicate-token", "Induction"]):
        best = scores[scores.detector == name].sort_values("score").iloc[-1]
        assert title == f"{word} · best L{best.layer}H{best['head']} {best.score:.2f}"


def test_meanings_say_what_the_number_is():
    assert F.MEANINGS["previous_token"] == "mean attention to the previous token"
    assert set(F.MEANINGS) == set(D.DETECTORS)


def test_uniform_score_is_what_an_even_head_scores():
    half, n_pos = 5, 11
    pattern = torch.tril(torch.ones(n_pos, n_pos))
    pattern = (pattern / pattern.sum(-1, keepdim=True))[None, None].expand(2, 1, n_pos, n_pos)
    for name in D.DETECTORS:
        dest, src = D._detector_sources(name, n_pos, half)
        assert float(pattern[..., dest, src].mean()) == pytest.approx(F.uniform_score(name, half))


def test_firing_labels_threshold_and_order():
    df = pd.DataFrame({"layer": [0, 0, 1, 1, 1], "head": [0, 0, 2, 2, 3],
                       "detector": ["previous_token", "induction", "induction", "duplicate_token", "induction"],
                       "score": [0.39, 0.1, 0.83, 0.4, 0.2]})
    assert F.firing_labels(df) == {(1, 2): "induction / duplicate"}
    assert F.firing_labels(df, threshold=0.3) == {(0, 0): "previous-token", (1, 2): "induction / duplicate"}
    assert F.firing_labels(df, threshold=0.9) == {}


def test_view_through_the_callback_matches_head_scores(cb, page, scores):
    fig, config, status, columns, data, box, disabled = cb.show(*_options(), "png", T.TAB_NEURONS, *page)
    assert not disabled and "Head detectors · 4 repeated random sequences of 2 × 6 tokens · seed 3" in \
        fig.layout.title.text
    assert "previous token" in status and box == {"display": "none"}
    assert "would score 0.18 / 0.10 / 0.10." in status         # half length 6: mean 1/(d+1), d = 1..12 / 7..12
    for trace in fig.data:
        want = scores[scores.detector == trace.name].sort_values(["layer", "head"]).score.to_numpy()
        np.testing.assert_array_equal(np.asarray(trace.z, dtype=float).ravel(), want)


def test_csv_is_layer_head_detector_score(cb, page, scores):
    sent = cb.download(1, *_options(), *page)
    assert sent["filename"] == "patchboard-head-detectors-n4-half6-seed3.csv"
    df = pd.read_csv(io.StringIO(sent["content"]))
    assert list(df.columns) == ["layer", "head", "detector", "score"]
    assert len(df) == len(scores) and set(df.detector) == set(D.DETECTORS)
    np.testing.assert_allclose(df.score.to_numpy(), scores.score.to_numpy(), rtol=1e-5)


def test_the_view_is_cached_per_model_and_spec(cb, page):
    before = len(cb.memo.items)
    cb.show(*_options(seed=11), "png", T.TAB_NEURONS, *page)
    cb.show(*_options(seed=11), "png", T.TAB_NEURONS, *page)
    assert len(cb.memo.items) == before + 1
    assert any(isinstance(k[-1], D.DetectorSpec) and k[-1].seed == 11 for k in cb.memo.items)


@pytest.mark.parametrize("sequences, half_length, seed, message", [
    (0, 6, 0, "sequences must be a whole number from 1 to 256, not 0"),
    ("many", 6, 0, "sequences must be a whole number from 1 to 256, not 'many'"),
    (4, 1, 0, "half length must be a whole number from 2 to 4096, not 1"),
    (4, 6, -1, "seed must be a whole number from 0 to 2147483647, not -1"),
    (4, 2.5, 0, "half length must be a whole number from 2 to 4096, not 2.5"),
    (4, 300, 0, "half_length 300 makes 601 tokens; the model takes at most"),
])
def test_bad_options_are_an_inline_message(cb, page, sequences, half_length, seed, message):
    fig, _, status, _, data, box, disabled = cb.show(*_options(sequences, half_length, seed), "png",
                                                     T.TAB_NEURONS, *page)
    assert disabled and message in status.children and not data
    assert message in fig.layout.annotations[0].text.replace("<br>", " ")


def test_empty_options_mean_the_defaults():
    assert T.detector_spec(None, "", None) == D.DetectorSpec()


def test_controls_show_the_detector_options_only_on_their_view(cb):
    styles = dict(zip(T.CONTROLS, cb.controls("detectors")))
    assert styles["sequences"] == styles["half_length"] == styles["seed"] == {}
    assert styles["layer"] == styles["source"] == {"display": "none"}
    styles = dict(zip(T.CONTROLS, cb.controls("composition")))
    assert styles["sequences"] == {"display": "none"}


# -- the Results heatmap, heads labelled by the detector that fires ---------------------------------
@pytest.fixture(scope="module")
def head_result(gpt2_model, ioi_prompts):
    from patching import PatchSpec, sweep
    return sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out"))


@pytest.fixture(scope="module")
def head_pos_result(gpt2_model, ioi_prompts):
    from patching import PatchSpec, sweep
    return sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out", per_position=True))


def test_results_heatmap_labels_are_off_by_default(head_result):
    fig = figures_results.heatmap(head_result)
    assert fig.data[0].text is None and fig.data[0].texttemplate is None


def test_results_heatmap_layer_by_head_names_the_firing_heads(head_result):
    fig = figures_results.heatmap(head_result, head_labels={(1, 2): "induction"})
    text = fig.data[0].text
    assert text[1][2] == "L1H2 · induction"
    assert sum(bool(t) for row in text for t in row) == 1
    assert "%{text}" in fig.data[0].hovertemplate and fig.data[0].texttemplate == "%{text}"


def test_results_heatmap_head_rows_name_the_firing_heads(head_pos_result):
    fig = figures_results.heatmap(head_pos_result, head_labels={(0, 1): "previous-token"})
    ticks = dict(zip(fig.layout.yaxis.tickvals, fig.layout.yaxis.ticktext))
    assert ticks["L0.H1"] == "L0H1 · previous-token" and ticks["L1.H2"] == "L1.H2"


def test_results_heatmap_labels_from_head_scores(head_result, scores):
    labels = F.firing_labels(scores, threshold=0.0)          # every head fires at 0: one label each
    fig = figures_results.heatmap(head_result, head_labels=labels)
    assert all(t.startswith(f"L{l}H{h} · ") for l, row in enumerate(fig.data[0].text) for h, t in enumerate(row))
