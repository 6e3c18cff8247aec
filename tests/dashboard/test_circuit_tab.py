"""The Circuit tab (dashboard/tabs/circuit.py): ids, the grid and its selection, Run, CSV, the EAP
graph; callbacks called directly."""
from __future__ import annotations

import io

import dash
import pandas as pd
import pytest
from dash import no_update

from dashboard.context import Context
from dashboard.tabs import circuit as circuit_tab
from patching import PatchSpec, PromptSet, sweep
from patching.methods.circuit import CurveResult
from tests.conftest import IOI
from tests.dash_tree import walk


def _text(component) -> str:
    return " ".join(str(c.children) for c in walk(component) if isinstance(getattr(c, "children", None), str))


TAB_IDS = [v for k, v in vars(circuit_tab).items() if k.startswith("CIRCUIT_") and isinstance(v, str)]


@pytest.fixture
def cb(registry, store):
    app = dash.Dash(__name__, suppress_callback_exceptions=True)
    return circuit_tab.register(app, Context(registry, store, store.data_dir))


@pytest.fixture
def page(tiny_name):
    """The prompts panel: model, clean, corrupt, answer, wrong, bos, pairs."""
    pairs = [dict(zip(("clean", "corrupt", "answer", "wrong"), p)) for p in IOI]
    return (tiny_name, *IOI[0], ["bos"], pairs)


@pytest.fixture
def head_run(store, gpt2_model, tiny_name):
    prompts = PromptSet.from_pairs(gpt2_model, IOI)
    result = sweep(gpt2_model, prompts, PatchSpec(kind="head_out", model=tiny_name))
    return store.save(result, IOI, "head_out"), result


def test_layout_has_every_id_once_with_the_prefix():
    found = [c.id for c in walk(circuit_tab.layout()) if getattr(c, "id", None)]
    assert set(TAB_IDS) - {circuit_tab.TAB_CIRCUIT} <= set(found)
    assert len(found) == len(set(found))
    assert all(i.startswith("circuit-") for i in found)


def test_the_app_mounts_the_tab(app):
    assert circuit_tab.TAB_CIRCUIT in str(app.layout.to_plotly_json())
    assert hasattr(app, "patchboard_circuit")


def test_sources_and_grid_from_a_head_out_run(cb, store, head_run, tiny_name, gpt2_model):
    run_id, result = head_run
    store.save(sweep(gpt2_model, PromptSet.from_pairs(gpt2_model, IOI), PatchSpec(kind="resid_pre", layers=(0,))), IOI)
    options = cb.sources(0, None, None, None)
    assert [o["value"] for o in options] == [f"run:{run_id}"]           # resid_pre cannot rank components
    fig, status = cb.grid([f"run:{run_id}"], "sum", "L1H2", tiny_name)
    assert status is no_update
    missing, heat, cells, kept = fig.data
    assert missing.z[1][2] is None and missing.z[0][gpt2_model.n_heads] == 1       # MLPs: not in a head_out run
    assert heat.customdata[1][2] == "L1H2"
    assert heat.z[1][2] == pytest.approx(float(result.values[1, 2]) - result.corrupt_value)
    assert "L1H2" in cells.customdata and f"MLP{gpt2_model.n_layers - 1}" in cells.customdata
    assert (list(kept.x), list(kept.y)) == ([2], [1])
    fig, status = cb.grid([], "sum", "L0H1,bad", tiny_name)
    assert "bad component 'bad'" in _text(status)


def test_click_toggles_box_adds_top_k_and_clear(cb, head_run):
    run_id, result = head_run
    src = [f"run:{run_id}"]
    click = {"points": [{"curveNumber": 1, "customdata": "L1H0"}]}
    text, _ = cb.select(click, None, 0, 0, "L0H1", 5, src, "sum", trig=circuit_tab.CIRCUIT_GRID)
    assert text == "L0H1,L1H0"
    text, _ = cb.select(click, None, 0, 0, text, 5, src, "sum", trig=circuit_tab.CIRCUIT_GRID)
    assert text == "L0H1"
    box = {"points": [{"customdata": "L0H2"}, {"customdata": "MLP1"}, {"customdata": "L0H1"}]}
    text, _ = cb.select(None, box, 0, 0, "L0H1", 5, src, "sum", trig=circuit_tab.CIRCUIT_GRID)
    assert text == "L0H1,L0H2,MLP1"
    text, _ = cb.select(None, None, 1, 0, "", 3, src, "sum", trig=circuit_tab.CIRCUIT_TOP_BUTTON)
    effect = (result.values - result.corrupt_value).abs().flatten()
    top = effect.topk(3).indices.tolist()
    H = result.values.shape[1]
    assert text == ",".join(f"L{i // H}H{i % H}" for i in top)
    text, _ = cb.select(None, None, 1, 1, text, 3, src, "sum", trig=circuit_tab.CIRCUIT_CLEAR_BUTTON)
    assert text == ""
    text, status = cb.select(None, None, 1, 0, "", 3, [], "sum", trig=circuit_tab.CIRCUIT_TOP_BUTTON)
    assert text is no_update and "Effects from" in _text(status)


def test_run_shows_faithfulness_curve_and_csv(cb, page, head_run):
    run_id, _ = head_run
    progress = []
    payload, status = cb.run(progress.append, 1, "L0H0, L1H2, MLP0", "mean", 0, [f"run:{run_id}"], "sum", [], "kl", *page)
    assert isinstance(payload, dict), status
    c = payload["circuit"]
    assert c["components"] == "L0H0,L1H2,MLP0" and c["n_pairs"] == 2
    assert c["metric"] == "logit_diff"                 # the source run's metric, not the page's
    number, fig, disabled = cb.show(payload)
    assert disabled is False and f"{c['faithfulness']:.3f}" in _text(number)
    assert list(fig.data[0].x) == [0, 1, 2, 3]
    assert fig.data[0].y[-1] == pytest.approx(c["faithfulness"], abs=1e-5) and fig.data[0].y[0] == 0.0
    sent = cb.download(1, payload)
    df = pd.read_csv(io.StringIO(sent["content"]))
    assert list(df.k) == [0, 1, 2, 3] and set(df.added.dropna()) == {"L0H0", "L1H2", "MLP0"}
    assert df.faithfulness.iloc[-1] == pytest.approx(c["faithfulness"], abs=1e-5)
    # effects order the curve: by |effect| in the run (MLP0 has none there: last)
    assert df.added.iloc[-1] == "MLP0"


def test_run_with_the_curve_over_every_component(cb, page, head_run, gpt2_model):
    run_id, result = head_run
    payload, _ = cb.run(lambda *_: None, 1, "L0H0", "mean", 0, [f"run:{run_id}"], "sum", ["all"], "logit_diff", *page)
    curve = CurveResult.from_json(payload["curve"])
    n = gpt2_model.n_layers * (gpt2_model.n_heads + 1)
    assert curve.ks == tuple(range(n + 1)) and curve.faithfulness[-1] == 1.0 and curve.faithfulness[0] == 0.0
    heads = [c for c in curve.components if c.kind == "head"]
    assert curve.components[:len(heads)] == tuple(heads)            # MLPs have no effect in a head_out run: last
    mags = [abs(e) for e in curve.effects[:len(heads)]]
    assert mags == sorted(mags, reverse=True)
    assert "(every component)" in payload["ranked_by"]
    _, status = cb.run(lambda *_: None, 1, "L0H0", "mean", 0, [], "sum", ["all"], "logit_diff", *page)
    assert "needs runs to rank them" in _text(status)


def test_run_on_the_prompts_panel_without_sources(cb, page):
    full = ",".join(f"ATTN{l},MLP{l}" for l in range(2))
    payload, _ = cb.run(lambda *_: None, 1, full, "zero", 0, [], "sum", [], "prob_diff", *page)
    assert payload["circuit"]["faithfulness"] == 1.0 and payload["circuit"]["metric"] == "prob_diff"
    _, status = cb.run(lambda *_: None, 1, full, "zero", 0, [], "sum", [], "pkg.mod:fn", *page)
    assert "unknown metric 'pkg.mod:fn'" in _text(status)
    assert payload["where"] == "the prompts panel's prompts"


@pytest.mark.parametrize("components, message", [
    ("L0H9", "component L0H9: head 9 out of range; this model has heads 0-3"),
    ("", "no components kept"),
    ("L0Hx", "bad component 'L0Hx'"),
])
def test_run_bad_input_is_shown_inline(cb, page, components, message):
    payload, status = cb.run(lambda *_: None, 1, components, "mean", 0, [], "sum", [], "logit_diff", *page)
    assert payload is no_update and message in _text(status)


def test_edges_graph_and_threshold(cb, page, store):
    att_id, status = cb.edges(1, *page)
    assert isinstance(att_id, int) and "#" in status
    assert store.get_attribution(att_id).edges is not None
    low, low_status = cb.graph(att_id, 0.05)
    high, high_status = cb.graph(att_id, 0.6)
    n_low, n_high = (int(s.split(" of ")[0].split(": ")[1]) for s in (low_status, high_status))
    assert n_low > n_high >= 1
    assert any(t.name == "nodes" for t in high.data)
    assert cb.follow_attribution(att_id) == att_id and cb.follow_attribution(None) is no_update
    assert f"att:{att_id}" in [o["value"] for o in cb.sources(0, None, None, att_id)]
    # the attribution run's head_out / mlp_out estimates rank components too
    fig, _ = cb.grid([f"att:{att_id}"], "sum", "", page[0])
    assert any(v is not None for row in fig.data[1].z for v in row)


# -- figures ---------------------------------------------------------------------------------------------
def test_component_grid_places_heads_mlps_and_attn_layers():
    from patching.figures.circuit import component_grid
    from patching.methods.circuit import parse_components
    effects = {c: v for c, v in zip(parse_components("L0H1,MLP1,ATTN1"), (0.5, -0.25, 0.1))}
    fig = component_grid(effects, n_layers=2, n_heads=3, selected=parse_components("ATTN0,MLP1"))
    missing, heat, cells, kept = fig.data
    assert heat.z[0][1] == 0.5 and heat.z[1][3] == -0.25 and heat.z[1][0] == heat.z[1][2] == 0.1
    assert missing.z[0][0] == 1 and missing.z[0][1] is None
    assert sorted(zip(kept.x, kept.y)) == [(0, 0), (1, 0), (2, 0), (3, 1)]
    assert list(fig.layout.xaxis.ticktext) == ["H0", "H1", "H2", "MLP"]
    assert fig.layout.dragmode == "select"


def test_curve_and_edge_figures(gpt2_model):
    from patching.figures.circuit import curve_figure, edge_graph_figure
    from patching.methods.attribution import edge_attribution
    from patching.methods.circuit import edge_graph, faithfulness_curve
    prompts = PromptSet.from_pairs(gpt2_model, IOI)
    assert "Run to see" in curve_figure(None).layout.annotations[0].text
    curve = faithfulness_curve(gpt2_model, prompts, ["L0H1", "MLP0"])
    fig = curve_figure(curve)
    assert list(fig.data[0].x) == [0, 1, 2] and fig.data[0].y[0] == 0.0
    assert "+L0H1" in fig.data[0].text[1]
    edges = edge_attribution(gpt2_model, prompts)
    none = edge_graph_figure(edge_graph(edges, 1e9))
    assert "lower the threshold" in none.layout.annotations[0].text
    g = edge_graph(edges, 0.0, top=4)
    fig = edge_graph_figure(g)
    assert sum(1 for t in fig.data if t.mode == "lines") == 4
    nodes = next(t for t in fig.data if t.name == "nodes")
    assert set(nodes.text) == set(g.nodes.node)
