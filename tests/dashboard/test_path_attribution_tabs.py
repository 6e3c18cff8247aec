"""The Path patching and Attribution tabs: handlers and figures directly, the store, and every
callback called directly (as a user would trigger them) on the tiny GPT-2 model."""
from __future__ import annotations

import io

import pandas as pd
import pytest
from dash import html, no_update

from dashboard import forms, ids
from patching import figures
from dashboard.tabs import attribution as attribution_tab
from dashboard.tabs import exact as exact_tab
from dashboard.forms import AttributionForm, Form, PathForm
from patching.methods.attribution import AttributionResult, attribution_kinds, run_attribution
from patching.methods.path import PathResult, PathSpec, run_path
from patching.core.prompts import PromptPair, PromptSet
from patching.core.results import CSV_COLUMNS
from tests.conftest import IOI


def _text(component) -> str:
    out = []

    def walk(c):
        ch = getattr(c, "children", None)
        if isinstance(ch, str):
            out.append(ch)
        for x in ch if isinstance(ch, (list, tuple)) else [ch]:
            if hasattr(x, "to_plotly_json"):
                walk(x)
            elif isinstance(x, str) and x is not ch:
                out.append(x)
    walk(component)
    return " ".join(out)


@pytest.fixture(scope="module")
def prompts(gpt2_model):
    return PromptSet.from_pairs(gpt2_model, [PromptPair(*p) for p in IOI])


class Progress:
    def __init__(self):
        self.calls = []

    def __call__(self, values):
        self.calls.append(values)


def _prompt_args(tiny_name, **over):
    clean, corrupt, answer, wrong = IOI[0]
    args = dict(model=tiny_name, clean=clean, corrupt=corrupt, answer=answer, wrong=wrong, bos=["bos"],
                pairs=None, metric="logit_diff", direction="denoise", session=None)
    args.update(over)
    return list(args.values())


# -- handlers -----------------------------------------------------------------------------------
def test_node_list():
    assert forms.node_list("q:1.0, q:1.1\nk:1.2") == ("q:1.0", "q:1.1", "k:1.2")
    assert forms.node_list("") is None and forms.node_list(None) is None


def test_parse_path_form_defaults_and_values(gpt2_model, form):
    spec, prompts = forms.parse_path_form(gpt2_model, form, PathForm())
    assert spec.receivers == ("logits",) and spec.senders is None and spec.sweep == "senders"
    spec, _ = forms.parse_path_form(gpt2_model, form, PathForm(receivers="q:1.0,q:1.1", mode="direct",
                                                                 per_position=True))
    assert spec.receivers == ("q:1.0", "q:1.1") and spec.mode == "direct" and spec.per_position
    spec, _ = forms.parse_path_form(gpt2_model, form, PathForm(senders="head:0.1", sweep="receivers"))
    assert spec.receivers is None and spec.senders == ("head:0.1",)
    assert spec.direction == form.direction and spec.metric == form.metric and spec.model == form.model


@pytest.mark.parametrize("path, needle", [
    (PathForm(receivers="q:7.0"), "receiver 'q:7.0': layer 7 out of range"),
    (PathForm(receivers="q:1.9"), "receiver 'q:1.9': head 9 out of range"),
    (PathForm(receivers="x:1.0"), "bad receiver 'x:1.0'"),
    (PathForm(receivers="q:1"), "bad receiver 'q:1'"),
    (PathForm(senders="head:0.1@99"), "position 99 out of range"),
    (PathForm(sweep="receivers"), "a receivers sweep follows one sender"),
    (PathForm(senders="head:0.1,head:0.2", sweep="receivers"), "follows one sender"),
    (PathForm(senders="head:0.1", per_position=True), "one cell per position applies"),
    (PathForm(receivers="logits,q:1.0"), "use it alone"),
    (PathForm(mode="sideways"), "mode must be one of heads_frozen, direct"),
])
def test_parse_path_form_errors_name_the_bad_value(gpt2_model, form, path, needle):
    with pytest.raises(ValueError, match=None) as exc:
        forms.parse_path_form(gpt2_model, form, path)
    assert needle in str(exc.value)


def test_parse_path_form_checks_the_prompts_and_metric(gpt2_model, form):
    from dataclasses import replace
    with pytest.raises(ValueError, match="unknown metric 'os:getcwd'"):
        forms.parse_path_form(gpt2_model, replace(form, metric="os:getcwd"), PathForm())
    with pytest.raises(ValueError, match="same number of tokens"):
        forms.parse_path_form(gpt2_model, replace(form, corrupt=form.corrupt + " Mary"), PathForm())


def test_parse_attribution_form(gpt2_model, form):
    kw, _ = forms.parse_attribution_form(gpt2_model, form, AttributionForm())
    assert kw["kinds"] == attribution_kinds(gpt2_model) and kw["method"] == "plain" and "steps" not in kw
    kw, _ = forms.parse_attribution_form(gpt2_model, form, AttributionForm(kinds=("head_out",), method="ig",
                                                                             steps="4"))
    assert kw["kinds"] == ("head_out",) and kw["steps"] == 4
    for attr, needle in ((AttributionForm(kinds=("nope",)), "kind 'nope'"),
                         (AttributionForm(method="ig", steps=0), "from 1 to 128, not 0"),
                         (AttributionForm(method="ig", steps="x"), "steps must be a whole number from 1 to 128, not 'x'"),
                         (AttributionForm(method="magic"), "method must be one of plain, ig, not 'magic'")):
        with pytest.raises(ValueError) as exc:
            forms.parse_attribution_form(gpt2_model, form, attr)
        assert needle in str(exc.value)


def test_parallel_model_has_no_resid_mid_attribution(tiny_models):
    names = [o["value"] for o in forms.attribution_kind_options(tiny_models["neox"])]
    assert "resid_mid" not in names and "head_out" in names


def test_agreement_text():
    text = exact_tab.agreement_text({"kind": "head_out", "pearson": 0.98765, "topk_overlap": 0.9, "k": 10,
                                    "cells": 48, "exact_seconds": 0.5})
    assert text == ("Agreement with exact patching · head_out: Pearson r = 0.988 · top-10 overlap 9/10 "
                    "(48 cells; exact sweep 0.50 s)")


# -- figures ------------------------------------------------------------------------------------
def test_path_heatmap_is_sender_layer_by_head(gpt2_model, prompts):
    result = run_path(gpt2_model, prompts, PathSpec(receivers=("q:1.0", "q:1.1")))
    fig = figures.result_figure(result, "raw")
    assert fig.data[0].type == "heatmap" and list(fig.data[0].x) == ["H0", "H1", "H2", "H3"]
    assert list(fig.data[0].y) == ["L0", "L1"]
    assert fig.layout.title.text.startswith("Path patching · every head → q:1.0+q:1.1 · heads_frozen")
    assert fig.data[0].z[1] == [None] * 4        # layer-1 senders have no path into layer-1 queries


def test_path_receivers_sweep_is_bars(gpt2_model, prompts):
    result = run_path(gpt2_model, prompts, PathSpec(senders=("head:0.1",), sweep="receivers"))
    fig = figures.result_figure(result, "normalized")
    bar = fig.data[0]
    assert bar.type == "bar" and bar.orientation == "h"
    assert "logits" in bar.y and "q:1.0" in bar.y and len(bar.y) == len(result.receiver_labels)
    assert bar.error_x.array is not None            # two pairs: 95% interval as error bars
    assert fig.layout.xaxis.title.text.startswith("effect, normalized")
    assert figures.cell_outline(result, {"layer": 0, "pos": None, "head": 1}) == []


def test_attribution_figure_title(gpt2_model, prompts):
    r = run_attribution(gpt2_model, prompts, kinds=["head_out"], method="ig", steps=2)[0]
    fig = figures.result_figure(r, "raw")
    assert fig.data[0].type == "heatmap"
    assert fig.layout.title.text.startswith("Attribution (integrated gradients, 2 steps) · ")


# -- store --------------------------------------------------------------------------------------
def test_store_round_trips_path_and_attribution(store, gpt2_model, prompts):
    result = run_path(gpt2_model, prompts, PathSpec(senders=("head:0.1",), sweep="receivers", mode="direct"))
    run_id = store.save(result, IOI)
    back = store.get(run_id).result
    assert isinstance(back, PathResult) and back.receiver_labels == result.receiver_labels
    assert back.to_csv() == result.to_csv()
    assert store.info(run_id).kind == "path"
    results = run_attribution(gpt2_model, prompts, kinds=["head_out", "resid_pre"])
    att_id = store.save_attribution(results, IOI)
    run = store.get_attribution(att_id)
    assert [r.spec.kind for r in run.results] == ["head_out", "resid_pre"]
    assert isinstance(run.result("head_out"), AttributionResult)
    assert run.result("head_out").to_csv() == results[0].to_csv()
    with pytest.raises(ValueError, match="has no kind 'neuron'"):
        run.result("neuron")
    with pytest.raises(ValueError, match="attribution run 999 does not exist"):
        store.get_attribution(999)
    assert len(store) == 1                        # attribution runs are not in the patching history
    from patching.methods.attribution import edge_attribution
    edges = edge_attribution(gpt2_model, prompts)
    back = store.get_attribution(store.save_attribution(results, IOI, edges=edges)).edges
    assert back.to_csv() == edges.to_csv() and store.get_attribution(att_id).edges is None


def test_store_adds_the_edges_column_to_an_older_store(tmp_path):
    import sqlite3
    from patching.runs.store import RunStore
    db = sqlite3.connect(tmp_path / "runs.sqlite")
    db.execute("CREATE TABLE attributions (id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, "
               "label TEXT NOT NULL, model TEXT NOT NULL, method TEXT NOT NULL, steps INTEGER NOT NULL, "
               "direction TEXT NOT NULL, metric TEXT NOT NULL, n_pairs INTEGER NOT NULL, "
               "pairs_json TEXT NOT NULL, results_json TEXT NOT NULL)")
    db.commit()
    db.close()
    RunStore(tmp_path)
    db = sqlite3.connect(tmp_path / "runs.sqlite")
    assert "edges_json" in {r[1] for r in db.execute("PRAGMA table_info(attributions)")}
    db.close()


# -- callbacks, called directly --------------------------------------------------------------------
def test_path_tab_run_show_download(app, store, tiny_name):
    cb = app.patchboard
    progress = Progress()
    run_id, err, version, status = cb.run_path(progress, 1, "q:1.0, q:1.1", "", "senders", "heads_frozen", [],
                                               *_prompt_args(tiny_name))
    assert err == "" and isinstance(run_id, int) and "saved to history" in _text(html.Div(status))
    assert any("path patches" in c[3] for c in progress.calls)
    assert any(c[4].startswith("clean logit_diff") for c in progress.calls)
    fig, summary, disabled = cb.show_path(run_id, "raw")
    assert fig.data[0].type == "heatmap" and not disabled and "q:1.0+q:1.1" in _text(html.Div(summary))
    sent = cb.download_path(1, run_id)
    df = pd.read_csv(io.StringIO(sent["content"]))
    assert tuple(df.columns[:9]) == CSV_COLUMNS and {"sender", "receiver", "mode"} <= set(df.columns)
    assert len(df) == 4 and set(df["receiver"]) == {"q:1.0+q:1.1"} and set(df["kind"]) == {"path"}
    assert "path" in sent["filename"]
    # the run is in the history and opens on the Results tab too
    _, options, _shown = cb.history(0, None)
    assert options[0]["value"] == run_id and "path" in options[0]["label"]
    rfig = cb.show_run(run_id, "raw", "png")[0]
    assert rfig.layout.title.text.startswith("Path patching")
    # a click on a sender cell shows the receiver head's attention
    click = {"points": [{"x": "H2", "y": "L0", "customdata": fig.data[0].customdata[0][2]}]}
    att_fig, _, att_status, cell, _, _ = cb.attention(click, run_id, "png")[:6]
    assert len(att_fig.data) == 5 and "Receiver attention · L1.H0 (q:1.0) · sender L0.H2" in att_status
    # ... and on the Path tab itself
    pfig, pstatus, outline = cb.path_attention(click, run_id)
    assert len(pfig.data) == 5 and pstatus.startswith("Receiver attention · L1.H0 (q:1.0) · sender L0.H2")
    assert "patched:" in pstatus
    shape = outline.to_plotly_json()["operations"][0]["params"]["value"][0]
    assert (shape["x0"], shape["y0"]) == (1.5, -0.5)          # the clicked cell is outlined


def test_path_tab_per_position_and_logits_receiver(app, tiny_name):
    cb = app.patchboard
    run_id, err, _, _ = cb.run_path(Progress(), 1, "", "", "senders", "direct", ["per"], *_prompt_args(tiny_name))
    assert err == ""
    fig, summary, _ = cb.show_path(run_id, "raw")
    assert list(fig.data[0].y)[:2] == ["L0.H0", "L0.H1"] and fig.data[0].x[10].startswith("10: ")
    assert "every head per pos → logits" in _text(html.Div(summary))
    click = {"points": [{"x": fig.data[0].x[10], "y": "L0.H1", "customdata": fig.data[0].customdata[1][10]}]}
    pfig, pstatus, outline = cb.path_attention(click, run_id)
    assert "no q/k/v receiver head" in pstatus and pfig.layout.annotations and outline is no_update


def test_path_tab_receivers_sweep_and_errors(app, tiny_name):
    cb = app.patchboard
    run_id, err, _, _ = cb.run_path(Progress(), 1, "", "mlp:0", "receivers", "direct", [], *_prompt_args(tiny_name))
    assert err == ""
    fig, _, _ = cb.show_path(run_id, "normalized")
    assert fig.data[0].type == "bar"
    out = cb.run_path(Progress(), 1, "q:1.0,q:9.0", "", "senders", "heads_frozen", [], *_prompt_args(tiny_name))
    assert out[0] is no_update and "receiver 'q:9.0': layer 9 out of range" in out[1]
    assert cb.run_path(Progress(), 0, "", "", "senders", "heads_frozen", [], *_prompt_args(tiny_name)) == \
        (no_update,) * 4
    assert cb.path_controls("receivers", "")[0]["disabled"]
    assert cb.path_controls("senders", "head:0.1")[0]["disabled"]
    assert not cb.path_controls("senders", "")[0]["disabled"]
    assert cb.path_cancelled(1)[0].startswith("Path run cancelled")
    fig, _, disabled = cb.show_path(None, "raw")
    assert disabled and fig.layout.annotations


def test_attribution_tab_run_show_download_agreement(app, registry, tiny_name):
    cb = app.patchboard
    assert "resid_mid" in [o["value"] for o in cb.attribution_kinds_for(tiny_name)]
    progress = Progress()
    att_id, err, status = cb.run_attribution(progress, 1, [], "plain", 16, [], [], *_prompt_args(tiny_name))
    assert err == "" and isinstance(att_id, int) and "kinds in" in _text(html.Div(status))
    (fig, options, kind, summary, dl_disabled, agree_disabled, agreement, edges_table,
     edges_disabled) = cb.show_attribution(att_id, None, "raw")
    assert edges_disabled and "Turn on 'edge scores (EAP)'" in _text(edges_table)
    assert cb.download_edges(1, att_id) is no_update
    assert kind == "head_out" and fig.data[0].type == "heatmap" and not dl_disabled and not agree_disabled
    assert {o["value"] for o in options} == set(attribution_kinds(registry.get(tiny_name)))
    assert agreement == ""
    fig2, _, kind2, *_ = cb.show_attribution(att_id, "resid_pre", "normalized")
    assert kind2 == "resid_pre" and fig2.data[0].x[0].startswith("0: ")     # positions labelled by token
    sent = cb.download_attribution(1, att_id)
    df = pd.read_csv(io.StringIO(sent["content"]))
    assert tuple(df.columns[:9]) == CSV_COLUMNS and "method" in df.columns
    assert set(df["kind"]) == {o["value"] for o in options}
    text = cb.agreement(1, att_id, "head_out")
    assert text.startswith("Agreement with exact patching · head_out: Pearson r = ")
    assert "top-" in text and "overlap" in text


def test_attribution_tab_ig_and_errors(app, tiny_name):
    cb = app.patchboard
    att_id, err, _ = cb.run_attribution(Progress(), 1, ["head_out", "mlp_out"], "ig", 2, ["per"], ["edges"],
                                        *_prompt_args(tiny_name))
    assert err == ""
    fig, options, kind, *_, edges_table, edges_disabled = cb.show_attribution(att_id, None, "raw")
    assert not edges_disabled
    cells = [c.children for c in edges_table.children[1].children[0].children]     # first row
    assert cells[0] in ("embed",) or cells[0].startswith(("head:", "mlp:"))
    assert len(edges_table.children[1].children) == 12
    sent = cb.download_edges(1, att_id)
    df = pd.read_csv(io.StringIO(sent["content"]))
    assert {"upstream", "downstream", "score", "normalized"} <= set(df.columns)
    assert set(df["method"]) == {"eap_ig"} and set(df["steps"]) == {2}
    assert [o["value"] for o in options] == ["head_out", "mlp_out"] and kind == "head_out"
    assert list(fig.data[0].y)[:2] == ["L0.H0", "L0.H1"]                     # per position: layer.head rows
    assert "integrated gradients, 2 steps" in fig.layout.title.text
    out = cb.run_attribution(Progress(), 1, [], "ig", 0, [], [], *_prompt_args(tiny_name))
    assert out[0] is no_update and "steps must be a whole number from 1 to 128, not 0" in out[1]
    out = cb.run_attribution(Progress(), 1, [], "plain", 16, [], [], *_prompt_args(tiny_name, answer=" Maryland"))
    assert "answer ' Maryland'" in out[1]
    assert cb.attribution_cancelled(1)[0].startswith("Attribution run cancelled")
    assert cb.show_attribution(12345, None, "raw")[0].layout.annotations[0].text.startswith("attribution run 12345")


def test_tabs_are_in_the_layout(app):
    from tests.dashboard.test_dashboard_app import _ids
    present = _ids(app.layout)
    for i in (ids.PATH_PANEL, ids.PATH_RECEIVERS, ids.PATH_FIGURE, ids.PATH_DOWNLOAD_BUTTON,
              ids.ATTRIBUTION_PANEL, ids.ATTR_KINDS, ids.ATTR_FIGURE, ids.ATTR_AGREE_BUTTON, ids.ATTR_EDGES,
              ids.ATTR_EDGES_TABLE):
        assert i in present, i


def test_top_edges_rows(gpt2_model, prompts):
    from patching.methods.attribution import edge_attribution
    edges = edge_attribution(gpt2_model, prompts)
    rows = attribution_tab.top_edges(edges, 5)
    assert len(rows) == 5 and list(rows[0]) == ["upstream", "downstream", "score", "normalized"]
    assert abs(rows[0]["score"]) >= abs(rows[-1]["score"])
    assert attribution_tab.top_edges(None) == []


def test_path_and_attribution_images_are_named_by_run(app):
    cb = app.patchboard
    assert cb.path_image_config(7)["toImageButtonOptions"]["filename"] == "patchboard-run7-path"
    assert cb.path_image_config(None)["toImageButtonOptions"]["filename"] == ids.PATH_FIGURE
    named = cb.attribution_image_config(3, "head_out")["toImageButtonOptions"]["filename"]
    assert named == "patchboard-attribution3-head_out"
