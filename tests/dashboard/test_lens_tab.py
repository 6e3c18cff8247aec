"""The Inspect tab (dashboard/tabs/inspect.py): layout ids, callbacks called directly, CSV download."""
from __future__ import annotations

import io

import dash
import numpy as np
import pandas as pd
import pytest
from dash import no_update

from dashboard import ids
from dashboard.context import Context
from dashboard.tabs import inspect as lens_tab
from tests.conftest import IOI
from tests.dash_tree import walk


TAB_IDS = [v for k, v in vars(lens_tab).items() if k.startswith("INSPECT_") and isinstance(v, str)]


@pytest.fixture(scope="module")
def cb(registry):
    app = dash.Dash(__name__, suppress_callback_exceptions=True)
    return lens_tab.register(app, Context(registry, None, None))


@pytest.fixture
def page(tiny_name):
    """The prompts panel's values: model, clean, corrupt, answer, wrong, bos, pairs."""
    return (tiny_name, *IOI[0], ["bos"], None)


def _options(view="lens", run="clean", pair=0, mode="accumulated", value="top_prob", components="all",
             dla_by="layer", layer=0, head=None, attention_view="grid", pos=-1, k=10, overview="grid", layer_b=-1,
             source="neuron", neuron=0, run_id=None, band="one") -> tuple:
    """The selectors' values in OPTION_IDS order."""
    return (view, run, pair, mode, value, components, dla_by, layer, head, attention_view, pos, k, overview,
            layer_b, source, neuron, run_id, band)


def _show(cb, page, image_format="png", tab=lens_tab.TAB_INSPECT, **options):
    return cb.show(*_options(**options), image_format, tab, *page)


def test_layout_has_every_tab_id_and_no_clash_with_the_page():
    present = {getattr(c, "id", None) for c in walk(lens_tab.layout())} - {None}
    missing = [i for i in TAB_IDS if i not in present and i != lens_tab.INSPECT_PANEL
               and i not in lens_tab.DYNAMIC_IDS]
    assert not missing and lens_tab.INSPECT_PANEL in present
    assert set(lens_tab.CONTROL_IDS.values()) <= present
    page_ids = {v for k, v in vars(ids).items() if k.isupper() and isinstance(v, str)
                and not k.startswith("INSPECT_") and k != "TAB_INSPECT"}      # the tab's own live in ids.py too
    assert not (set(TAB_IDS) | {lens_tab.TAB_INSPECT} | set(lens_tab.CONTROL_IDS.values())) & page_ids


def test_registers_beside_the_dashboards_own_callbacks(app, registry):
    """What the mount does: create_app, then the tab's callbacks on the same app (once the mount
    is in create_app itself, they are already there)."""
    if not any(lens_tab.INSPECT_GRAPH in key for key in app.callback_map):
        lens_tab.register(app, Context(registry, None, None))
    outputs = " ".join(app.callback_map)
    assert lens_tab.INSPECT_GRAPH in outputs and lens_tab.INSPECT_DOWNLOAD in outputs


def test_controls_show_only_the_views_selectors(cb):
    names = list(lens_tab.CONTROLS)
    styles = dict(zip(names, cb.controls("attention")))
    assert styles["layer"] == {} and styles["head"] == {} and styles["mode"] == {"display": "none"}
    styles = dict(zip(names, cb.controls("lens", "accumulated")))
    assert styles["mode"] == {} and styles["k"] == {} and styles["layer"] == {"display": "none"}
    assert styles["components"] == {"display": "none"}
    assert dict(zip(names, cb.controls("lens", "per_layer")))["components"] == {}


@pytest.mark.parametrize("view", list(lens_tab.VIEWS))
def test_every_view_draws_a_figure(cb, page, view):
    fig, config, status, columns, data, box, disabled = _show(cb, page, view=view, layer=1, pos=-1, k=3)
    assert not disabled and fig.data, status
    assert config["toImageButtonOptions"]["format"] == "png"
    if view == "topk":
        assert box == {} and len(data) == 3 and [c["id"] for c in columns][0] == "rank"
    else:
        assert box == {"display": "none"} and data == []


def test_lens_options_reach_the_figure(cb, page):
    fig = _show(cb, page, mode="per_layer", components="blocks", value="answer_rank")[0]
    assert list(fig.data[0].y) == ["embed", "L0 attn", "L0 mlp", "L1 attn", "L1 mlp"]
    assert "answer's rank" in fig.layout.title.text
    svg = _show(cb, page, image_format="svg")[1]
    assert svg["toImageButtonOptions"]["format"] == "svg"


def test_attention_head_and_token_view(cb, page):
    one = _show(cb, page, view="attention", layer=1, head=2)[0]
    assert len(one.data) == 1 and one.layout.annotations[0].text == "H2"
    token = _show(cb, page, view="attention", layer=1, attention_view="token", pos=5)[0]
    assert list(token.data[0].y) == ["H0", "H1", "H2", "H3"] and len(token.data[0].x) == 6


@pytest.mark.parametrize("kwargs, message", [
    (dict(view="attention", layer=9), "layer 9 is out of range"),
    (dict(view="attention", layer=1, head=7), "head 7 is out of range"),
    (dict(view="topk", pos=30), "pos 30 is out of range"),
    (dict(view="topk", k=0), "k must be an integer from 1"),
    (dict(view="lens", pair=4), "pair 4 is out of range"),
    (dict(view="norms", pos="1.5"), "position must be a whole number"),
])
def test_bad_input_is_shown_not_raised(cb, page, kwargs, message):
    fig, _, status, _, _, _, disabled = _show(cb, page, **kwargs)
    assert message in status.children and disabled
    assert message in fig.layout.annotations[0].text


def test_bad_prompts_are_shown(cb, tiny_name):
    status = _show(cb, (tiny_name, "A B", "A B C", " Mary", " John", ["bos"], None))[2]
    assert "same number of tokens" in status.children


def test_not_computed_while_another_tab_is_open(cb, page):
    assert _show(cb, page, tab=ids.TAB_RESULTS) == (no_update,) * 7


def test_download_is_the_views_csv(cb, page):
    sent = cb.download(1, *_options("topk", "corrupt", k=5), *page)
    assert sent["filename"] == "patchboard-topk-corrupt-pair0-pos14.csv"
    df = pd.read_csv(io.StringIO(sent["content"]))
    assert list(df["rank"]) == [1, 2, 3, 4, 5] and set(df.run) == {"corrupt"}
    att = cb.download(1, *_options("attention", layer=1, head=3), *page)
    assert set(pd.read_csv(io.StringIO(att["content"]))["head"]) == {3}
    assert cb.download(0, "topk", *([None] * (len(lens_tab.OPTION_IDS) - 1)), *page) is no_update


def test_figure_only_changes_do_not_rerun_the_model(registry, page, monkeypatch):
    cb = lens_tab.register(dash.Dash(__name__, suppress_callback_exceptions=True), Context(registry, None, None))
    calls = []
    real = lens_tab.lens.logit_lens
    monkeypatch.setattr(lens_tab.lens, "logit_lens", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    for value in ("top_prob", "answer_rank", "answer_logit"):
        assert _show(cb, page, value=value)[0].data
    assert len(calls) == 1
    _show(cb, page, run="corrupt")                     # different data: computed
    _show(cb, page, mode="per_layer", components="heads")
    _show(cb, page, mode="per_layer", components="blocks")
    assert len(calls) == 3
    other = (page[0], "A B C", "A B D", " Mary", " John", ["bos"], None)
    _show(cb, other)                                   # other prompts: computed
    assert len(calls) == 4


# -- issue #20's views: attention overview, highlighted text, norms over pairs ------------------------
def _detail(cb, page, focus=None, tab=lens_tab.TAB_INSPECT, **options):
    return cb.show_detail(focus, *_options(**options), tab, *page)


def test_new_views_show_their_own_selectors(cb):
    names = list(lens_tab.CONTROLS)

    def visible(*args):
        return {n for n, s in zip(names, cb.controls(*args)) if s == {}}
    assert visible("overview", None, "grid", None) == {"run", "pair", "overview", "pos"}
    assert visible("overview", None, "pair", None) == {"run", "pair", "overview", "pos", "layer", "layer_b"}
    assert visible("highlight", None, None, "neuron") == {"run", "pair", "source", "layer", "neuron"}
    assert visible("highlight", None, None, "attention") == {"run", "pair", "source", "layer", "head", "pos"}
    assert visible("highlight", None, None, "effect") == {"source", "run_id", "layer", "head"}
    assert "band" in visible("norms") and "band" not in visible("lens", "accumulated")
    assert "pair" in visible("norms", None, None, None, "one") and "pair" not in visible("norms", None, None, None, "all")


def test_overview_figure_and_its_enlarged_head(cb, page, gpt2_model):
    fig, _, status, *_, disabled = _show(cb, page, view="overview")
    assert not disabled and len(fig.data) == gpt2_model.n_layers * gpt2_model.n_heads
    assert "Click a panel to enlarge it" in status
    children, style = _detail(cb, page, view="overview", pos=6)
    assert style == {}
    title, tokens, legend, zoom = children
    assert title.children.startswith("L0H0 attention from 6: ' to'") and "click a panel" in title.children
    assert tokens.id == lens_tab.INSPECT_TOKENS and zoom.id == lens_tab.INSPECT_ZOOM
    spans = [s for s in tokens.children if getattr(s, "className", "").startswith("token-span")]
    assert len(spans) == 15 and spans[6].className == "token-span token-mark"
    assert spans[7].style["backgroundColor"] == "transparent"              # after the destination
    children, _ = _detail(cb, page, focus={"layer": 1, "head": 3}, view="overview", pos=6)
    assert children[0].children == "L1H3 attention from 6: ' to'" and "L1H3" in children[3].figure.layout.title.text
    pair = _show(cb, page, view="overview", overview="pair", layer=1, layer_b=0)[0]
    assert [t.meta[0] for t in pair.data][:2] == ["L1H0", "L0H0"]


def test_a_click_on_a_panel_enlarges_that_head(cb, tiny_name):
    click = {"points": [{"curveNumber": 6, "x": "1: When", "y": "3: ␣and", "z": 0.1}]}
    assert cb.focus_head(click, "overview", "grid", 0, -1, tiny_name) == {"layer": 1, "head": 2}
    assert cb.focus_head(click, "overview", "pair", 1, 0, tiny_name) == {"layer": 1, "head": 3}
    assert cb.focus_head(click, "attention", "grid", 0, -1, tiny_name) is no_update
    assert cb.focus_head(None, "overview", "grid", 0, -1, tiny_name) is no_update


@pytest.mark.parametrize("kwargs, message", [
    (dict(view="overview", overview="pair", layer=1, layer_b=1), "two different layers, not layer 1 twice"),
    (dict(view="overview", overview="pair", layer=0, layer_b=5), "second layer 5 is out of range"),
    (dict(view="highlight", source="neuron", neuron=500), "neuron 500 is out of range"),
    (dict(view="highlight", source="effect"), "highlight by a patching effect reads a run"),
    (dict(view="highlight", source="attention", pos=20), "dest 20 is out of range"),
])
def test_new_views_bad_input_is_shown(cb, page, kwargs, message):
    fig, _, status, *_, disabled = _show(cb, page, **kwargs)
    assert message in status.children and disabled
    assert _detail(cb, page, **kwargs) == ([], {"display": "none"})


def test_highlight_detail_is_the_text_coloured_by_value(cb, page):
    fig, _, status, *_ = _show(cb, page, view="highlight", source="head_norm", layer=1, head=2)
    assert "L1H2 output norm on every token of the clean prompt, pair 0" in status
    assert fig.layout.yaxis.title.text == "output norm"
    children, _ = _detail(cb, page, view="highlight", source="head_norm", layer=1, head=2)
    title, tokens, legend = children
    values = [float(s.title.split(" · ")[1]) for s in tokens.children if hasattr(s, "title")]
    np.testing.assert_allclose(values, fig.data[0].y, rtol=1e-3)
    assert title.children == "L1H2 output norm" and "blue = positive" in legend.children
    assert _detail(cb, page, view="lens") == ([], {"display": "none"})


def test_highlight_by_a_stored_runs_effect(registry, page, gpt2_model, tmp_path):
    from patching import PatchSpec, PromptSet, sweep
    from patching.inspect.highlight import effect_values
    from patching.runs.store import RunStore
    store = RunStore(tmp_path)
    result = sweep(gpt2_model, PromptSet.single(gpt2_model, *IOI[0]), PatchSpec(kind="resid_pre"))
    run_id = store.save(result, [IOI[0]])
    cb = lens_tab.register(dash.Dash(__name__, suppress_callback_exceptions=True), Context(registry, store, tmp_path))
    assert cb.follow_run(run_id) == run_id and cb.follow_run(None) is no_update
    fig, _, status, *_, disabled = _show(cb, page, view="highlight", source="effect", run_id=run_id, layer=1)
    assert not disabled and f"run {run_id}" in status
    np.testing.assert_allclose(fig.data[0].y, effect_values(result, layer=1).value, atol=1e-6)
    sent = cb.download(1, *_options("highlight", source="effect", run_id=run_id, layer=1), *page)
    assert sent["filename"] == "patchboard-highlight-effect-of-resid_pre-L1.csv"
    status = _show(cb, page, view="highlight", source="effect", run_id=run_id + 7, layer=1)[2]
    assert f"run {run_id + 7} does not exist" in status.children


def test_norms_over_all_pairs(cb, tiny_name):
    both = (tiny_name, None, None, None, None, ["bos"], [list(p) for p in IOI])
    fig, _, status, *_ = _show(cb, both, view="norms", band="all", pos=4)
    assert "mean ± std over 2 pairs" in status and any(t.fill == "toself" for t in fig.data)
    sent = cb.download(1, *_options("norms", band="all"), *both)
    assert sent["filename"] == "patchboard-norms-all-pairs.csv"
    assert {"mean", "std", "n_pairs"} <= set(pd.read_csv(io.StringIO(sent["content"])).columns)
