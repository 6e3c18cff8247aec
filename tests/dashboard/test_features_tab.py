"""The Features tab's pure view function (dashboard/tabs/features.py) on the shipped model and SAEs."""
from __future__ import annotations

import pytest

from dashboard.tabs.features import FeatureOptions, feature_view
from dashboard.tabs.inspect import FrameMemo
from patching import PatchSpec, PromptSet, sweep

IOI = ("When Mary and John went to the store, John gave a drink to",
       "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")


@pytest.fixture(scope="module")
def prompts(shipped_model):
    return PromptSet.from_pairs(shipped_model, [IOI])


def test_top_view_draws_each_layers_strongest_units_of_the_exact_sweep(shipped_model, prompts):
    view = feature_view(shipped_model, prompts, FeatureOptions(view="top", k=5))
    full = sweep(shipped_model, prompts, PatchSpec(kind="feature")).to_dataframe()
    assert len(view.frame) == len(full) == shipped_model.n_layers * 513
    columns, rows = view.table
    assert len(rows) == 5 * shipped_model.n_layers
    for layer in range(shipped_model.n_layers):
        best = full[full.layer == layer].effect.abs().max()
        top = [r for r in rows if r["layer"] == layer and r["rank"] == 1][0]
        assert abs(abs(top["effect"]) - best) < 1e-3
    heat = view.figure.data[0]
    assert heat.zmid == 0 and heat.colorscale is not None and "effect" in heat.colorbar.title.text


def test_contexts_view_lists_tokens_with_both_sides(shipped_model, prompts):
    view = feature_view(shipped_model, prompts, FeatureOptions(view="contexts", layer=1, feature=3, n=8, k=4))
    columns, rows = view.table
    assert [c["id"] for c in columns][:4] == ["rank", "left", "token", "right"]
    assert view.filename == "patchboard-features-L1F3-contexts.csv"


def test_memo_keeps_the_sweep_across_k_changes(shipped_model, prompts):
    memo = FrameMemo()
    feature_view(shipped_model, prompts, FeatureOptions(view="top", k=3), memo)
    assert len(memo.items) == 1
    feature_view(shipped_model, prompts, FeatureOptions(view="top", k=8), memo)
    assert len(memo.items) == 1


@pytest.mark.parametrize("options, message", [
    (dict(view="logits", layer=9), "layer 9: no SAE there"),
    (dict(view="logits", feature=600), "feature 600 is out of range"),
    (dict(view="nope"), "unknown view 'nope'"),
])
def test_bad_selectors_are_named(shipped_model, prompts, options, message):
    with pytest.raises(ValueError, match=message):
        feature_view(shipped_model, prompts, FeatureOptions(**options))
