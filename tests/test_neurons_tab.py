"""The Neurons & weights tab (dashboard/tabs/neurons.py): layout ids, every view through the
callbacks called directly, errors, CSV download, click-to-pick."""
from __future__ import annotations

import io

import dash
import pandas as pd
import pytest
from dash import no_update

from dashboard import ids
from dashboard.context import Context
from dashboard.tabs import inspect as lens_tab, neurons as T
from tests.conftest import IOI
from tests.dash_tree import walk


TAB_IDS = [v for k, v in vars(T).items() if k.startswith("NEURONS_") and isinstance(v, str)]


@pytest.fixture(scope="module")
def cb(registry):
    app = dash.Dash(__name__, suppress_callback_exceptions=True)
    return T.register(app, Context(registry, None, None))


@pytest.fixture(scope="module")
def page(tiny_dirs):
    """The prompts panel's values: model, clean, corrupt, answer, wrong, bos, pairs."""
    return (str(tiny_dirs["gpt2"]), *IOI[0], ["bos"], None)


def _show(cb, page, view="top", source="task", task_n=8, run="clean", layer=1, pos=-1, neuron=3, k=5,
          method="pca", composition="all", circuit="ov", head=1, rank=2, sequences=4, half_length=6, seed=0,
          image_format="png", tab=T.TAB_NEURONS):
    return cb.show(view, source, task_n, run, layer, pos, neuron, k, method, composition, circuit, head, rank,
                   sequences, half_length, seed, image_format, tab, *page)


def test_layout_has_every_tab_id_and_no_clash_with_the_page():
    present = {getattr(c, "id", None) for c in walk(T.layout())} - {None}
    assert not [i for i in TAB_IDS if i not in present]
    assert set(T.CONTROL_IDS.values()) <= present
    others = {v for k, v in vars(ids).items() if k.isupper() and isinstance(v, str)
              and not k.startswith("NEURONS_") and k != "TAB_NEURONS"}      # the tab's own live in ids.py too
    others |= {v for k, v in vars(lens_tab).items() if k.isupper() and isinstance(v, str)}
    others |= set(lens_tab.CONTROL_IDS.values())
    assert not (set(TAB_IDS) | {T.TAB_NEURONS} | set(T.CONTROL_IDS.values())) & others


def test_controls_show_only_the_views_selectors(cb):
    styles = dict(zip(T.CONTROLS, cb.controls("cluster")))
    assert styles["method"] == {} and styles["layer"] == {} and styles["head"] == {"display": "none"}
    styles = dict(zip(T.CONTROLS, cb.controls("composition")))
    assert styles["composition"] == {} and styles["layer"] == {"display": "none"}


@pytest.mark.parametrize("view", list(T.VIEWS))
def test_every_view_draws_a_figure(cb, page, view):
    # patching views need equal-length pairs: the panel's IOI pair (the tiny tokenizer has few countries)
    source = "page" if view in ("shortlist", "rank_k", "rank_k_pattern") else "task"
    fig, config, status, columns, data, box, disabled = _show(cb, page, view=view, source=source)
    assert not disabled and fig.data, status
    assert config["toImageButtonOptions"]["format"] == "png"
    if view in ("top_activating", "svd_tokens"):
        assert box == {} and data and columns
    else:
        assert box == {"display": "none"}


def test_page_prompts_are_labelled_by_answer(cb, page):
    fig, *_ = _show(cb, page, view="cluster", source="page", task_n=None)
    # one pair: PCA needs two prompts -> a clear error, not a crash
    assert "at least 2 prompts" in fig.layout.annotations[0].text


def test_bad_input_shows_the_message_and_disables_download(cb, page):
    fig, _, status, columns, data, box, disabled = _show(cb, page, view="profile", neuron=99999)
    assert disabled and "neuron 99999 is out of range" in status.children
    assert box == {"display": "none"} and not data


def test_other_tab_open_computes_nothing(cb, page):
    assert _show(cb, page, tab="tab-results") == (no_update,) * 7


def test_download_is_the_views_frame(cb, page):
    sent = cb.download(1, "top", "task", 8, "clean", 1, -1, 3, 5, "pca", "all", "ov", 1, 2, 4, 6, 0, *page)
    df = pd.read_csv(io.StringIO(sent["content"]))
    assert list(df.columns[:4]) == ["layer", "pos", "rank", "neuron"] and len(df) == 5
    assert sent["filename"] == "patchboard-top-neurons-L1.csv"
    assert cb.download(0, "top", "task", 8, "clean", 1, -1, 3, 5, "pca", "all", "ov", 1, 2, 4, 6, 0, *page) is no_update


def test_clicking_a_bar_picks_the_neuron(cb):
    assert cb.pick_neuron({"points": [{"y": "N17", "x": 0.3}]}, "top") == 17
    assert cb.pick_neuron({"points": [{"y": "L1H2"}]}, "composition") is no_update


def test_activations_are_memoised_across_views(cb, page):
    _show(cb, page, view="top", task_n=9)
    n = len(cb.memo.items)
    _show(cb, page, view="profile", task_n=9, neuron=4)
    assert len(cb.memo.items) == n          # same prompts: no new forward pass
