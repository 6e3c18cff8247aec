"""SAE features in the flow (issue #23): the Attribution tab's feature kind and its agreement with
exact patching, the Results tab's top units per layer (figure and CSV), and features as circuit
components in the Circuit tab; on the shipped model and its SAEs, callbacks called directly."""
from __future__ import annotations

import io

import dash
import pandas as pd
import pytest
import torch

from dashboard import forms
from dashboard.context import Context
from dashboard.tabs import circuit as circuit_tab
from dashboard.tabs import exact
from dashboard.tabs import results as results_tab
from patching import PatchSpec, PromptSet, sweep
from patching.methods.attribution import run_attribution
from patching.methods.circuit import CircuitSpec, faithfulness, parse_components

PAIRS = [("When Mary and John went to the store, John gave a drink to",
          "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
         ("When John and Mary went to the store, Mary gave a drink to",
          "When John and Mary went to the store, John gave a drink to", " John", " Mary"),
         ("When Mary and John went to the shop, Mary gave a drink to",
          "When Mary and John went to the shop, John gave a drink to", " John", " Mary")]
D_SAE = 512


@pytest.fixture(scope="module")
def registry(shipped_model):
    from patching.model.loading import ModelRegistry
    reg = ModelRegistry(["default"])
    reg.add("default", shipped_model)
    return reg


@pytest.fixture
def ctx(registry, store):
    return Context(registry, store, store.data_dir)


@pytest.fixture(scope="module")
def prompts(shipped_model):
    return PromptSet.from_pairs(shipped_model, PAIRS)


@pytest.fixture(scope="module")
def feature_sweeps(shipped_model, prompts):
    return {d: sweep(shipped_model, prompts, PatchSpec(kind="feature", direction=d, model="default"))
            for d in ("denoise", "noise")}


def test_the_feature_kind_is_listed_when_the_model_has_saes(shipped_model, gpt2_model, form):
    assert "feature" in [o["value"] for o in forms.attribution_kind_options(shipped_model)]
    assert "feature" not in [o["value"] for o in forms.attribution_kind_options(gpt2_model)]   # no SAEs
    kw, _ = forms.parse_attribution_form(shipped_model, forms.Form(**{**vars(form), "model": "default"}),
                                         forms.AttributionForm())
    assert "feature" in kw["kinds"]                     # empty = every kind listed
    with pytest.raises(ValueError, match="no attribution estimate for kind 'feature'"):
        forms.parse_attribution_form(gpt2_model, form, forms.AttributionForm(kinds=("feature",)))


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_feature_attribution_agreement_is_reported_like_other_kinds(registry, store, shipped_model, prompts,
                                                                   feature_sweeps, direction):
    (estimate,) = run_attribution(shipped_model, prompts, kinds=["feature"], direction=direction)
    att_id = store.save_attribution([estimate], PAIRS, label="features")
    run = store.get_attribution(att_id)
    a = exact.attribution_agreement(registry, run, "feature", store.data_dir)
    exact_values = feature_sweeps[direction].values.flatten().double()
    est_values = estimate.values.flatten().double()
    naive = float(torch.corrcoef(torch.stack([exact_values, est_values]))[0, 1])
    assert a["cells"] == shipped_model.n_layers * (D_SAE + 1) and a["pearson"] == pytest.approx(naive, abs=1e-6)
    assert exact.agreement_text(a).startswith("Agreement with exact patching · feature: Pearson r = ")
    agreement = exact.compare_run(registry, run, "feature", store.data_dir, compute=False)   # the kept sweep
    labels = {c.label for c in agreement.cells}
    assert {"L0 F0", "L3 error", f"L2 F{D_SAE - 1}"} <= labels
    cell = next(c for c in agreement.cells if c.label == "L3 error")
    want = float(feature_sweeps[direction].values[3, D_SAE]) - feature_sweeps[direction].base_value
    assert cell.exact == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_a_feature_run_shows_each_layers_top_units_and_their_csv(ctx, store, feature_sweeps, direction):
    result = feature_sweeps[direction]
    run_id = store.save(result, PAIRS)
    fig, _, _, disabled = results_tab.run_view(ctx.run(run_id), None, "normalized", "png")
    heat = fig.data[0]
    assert list(heat.x) == [f"#{r}" for r in range(1, 11)] and list(heat.y) == ["L0", "L1", "L2", "L3"]
    effect = result.values - result.base_value                     # [layer, unit]
    for layer in range(4):
        order = effect[layer].abs().argsort(descending=True)[:10].tolist()
        want = ["error" if u == D_SAE else f"F{u}" for u in order]
        assert list(heat.text[layer]) == want
        gap = float(result.clean_value - result.corrupt_value)
        assert heat.z[layer][0] == pytest.approx(float(effect[layer, order[0]]) / gap, abs=1e-6)   # normalised
    raw = results_tab.run_view(ctx.run(run_id), None, "raw", "png")[0].data[0]
    assert list(raw.text[0]) == list(heat.text[0]) and "effect / gap" in heat.colorbar.title.text
    assert raw.z[0][0] == pytest.approx(float(effect[0].abs().max()) * (1 if raw.z[0][0] > 0 else -1), abs=1e-6)
    cb = results_tab.register(dash.Dash(__name__, suppress_callback_exceptions=True), ctx)
    assert cb.top_features_button(run_id) == {}
    sent = cb.download_top_features(1, run_id)
    df = pd.read_csv(io.StringIO(sent["content"]))
    assert list(df.columns[:4]) == ["layer", "rank", "feature_label", "feature"] and len(df) == 40
    assert sent["filename"] == f"patchboard-run{run_id}-feature-{direction}-top-features.csv"
    first = df[(df.layer == 2) & (df["rank"] == 1)].iloc[0]
    assert first.feature_label == list(heat.text[2])[0]
    assert first.effect == pytest.approx(float(effect[2].abs().max()) * (1 if heat.z[2][0] > 0 else -1), abs=1e-4)


def test_the_top_features_button_is_hidden_for_other_kinds(ctx, store, shipped_model, prompts):
    run_id = store.save(sweep(shipped_model, prompts, PatchSpec(kind="head_out", model="default")), PAIRS)
    cb = results_tab.register(dash.Dash(__name__, suppress_callback_exceptions=True), ctx)
    assert cb.top_features_button(run_id) == {"display": "none"}
    assert cb.download_top_features(1, run_id) is dash.no_update


def _page():
    pairs = [dict(zip(("clean", "corrupt", "answer", "wrong"), p)) for p in PAIRS]
    return ("default", *PAIRS[0], ["bos"], pairs)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_feature_runs_rank_sae_units_in_the_circuit_tab(ctx, store, shipped_model, prompts, feature_sweeps,
                                                       direction):
    result = feature_sweeps[direction]
    run_id = store.save(result, PAIRS)
    cb = circuit_tab.register(dash.Dash(__name__, suppress_callback_exceptions=True), ctx)
    assert f"run:{run_id}" in [o["value"] for o in cb.sources(0, None, None, None)]
    fig, status = cb.grid([f"run:{run_id}"], "sum", "L3ERR", "default")
    heat, cells = fig.data
    effect = result.values - result.base_value
    best = int(effect[3].abs().argmax())
    assert heat.customdata[3][0] == ("L3ERR" if best == D_SAE else f"L3F{best}")
    at = [(x, y) for x, y, n in zip(cells.x, cells.y, cells.customdata) if n == "L3ERR"]
    assert [((s.x0 + s.x1) / 2, (s.y0 + s.y1) / 2) for s in fig.layout.shapes] == [tuple(map(float, p)) for p in at]
    text, _ = cb.select(None, None, 1, 0, "", 5, [f"run:{run_id}"], "sum", trig=circuit_tab.CIRCUIT_TOP_BUTTON)
    top5 = parse_components(text)
    assert len(top5) == 5 and all(c.kind in ("feature", "error") for c in top5)
    payload = circuit_tab.run_circuit(ctx.registry, store, circuit_tab.CircuitForm(text, "mean", 0, (f"run:{run_id}",)),
                                      _page())
    want = faithfulness(shipped_model, prompts, CircuitSpec(top5))
    assert payload["circuit"]["faithfulness"] == pytest.approx(want.faithfulness, abs=1e-6)
    assert "5 components" in str(circuit_tab.faithfulness_text(payload).to_plotly_json())


def test_heads_and_features_cannot_share_a_circuit(ctx, store, shipped_model, prompts, feature_sweeps):
    f_id = store.save(feature_sweeps["denoise"], PAIRS)
    h_id = store.save(sweep(shipped_model, prompts, PatchSpec(kind="head_out", model="default")), PAIRS)
    with pytest.raises(ValueError, match="not both"):
        circuit_tab.load_sources(store, [f"run:{f_id}", f"run:{h_id}"])
    with pytest.raises(ValueError, match="not both"):
        circuit_tab.CircuitForm("L0H1, L1F3").spec()


def test_an_attribution_run_offers_its_feature_estimates_apart(ctx, store, shipped_model, prompts):
    results = run_attribution(shipped_model, prompts, kinds=["head_out", "feature"])
    att_id = store.save_attribution(results, PAIRS)
    values = [o["value"] for o in circuit_tab.source_options(store, (att_id,))]
    assert values == [f"att:{att_id}", f"attf:{att_id}"]
    assert [r.spec.kind for r in circuit_tab.load_sources(store, [f"attf:{att_id}"]).results] == ["feature"]
    assert [r.spec.kind for r in circuit_tab.load_sources(store, [f"att:{att_id}"]).results] == ["head_out"]
