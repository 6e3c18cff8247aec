"""Feature pages (patching/inspect/features.py), checked against direct computations."""
from __future__ import annotations

import pytest
import torch

from patching.inspect import features
from patching.inspect.neurons import encode_texts, task_texts
from patching.model import hooks
from patching.model.sae import load_saes
from tests.conftest import RANDOM_D_SAE


@pytest.fixture(scope="module")
def saes(random_saes):
    return {s.layer: s for s in load_saes(random_saes).values()}


@pytest.fixture(scope="module")
def texts(shipped_model):
    return encode_texts(shipped_model, ["When Mary and John went to the store, John gave a drink to",
                                        "Paris is a city in the country of", "The war lasted from the year 1732"])


def test_activations_are_the_sae_of_each_block_input(shipped_model, saes, texts):
    acts = features.collect_feature_activations(shipped_model, texts, saes)
    assert acts.acts.shape == (shipped_model.n_layers, 3, max(texts.lengths), RANDOM_D_SAE)
    _, cache = shipped_model.bridge.run_with_cache(texts.tokens[1:2, :texts.lengths[1]])
    for layer in range(shipped_model.n_layers):
        want = saes[layer].encode(cache[hooks.resid_pre(layer)][0])
        assert torch.allclose(acts.acts[layer, 1, :texts.lengths[1]], want, atol=1e-4)
    assert (acts.acts[:, 1, texts.lengths[1]:] == 0).all()       # padding stays out


def test_top_contexts_are_the_largest_activations_with_both_sides(shipped_model, saes, texts):
    acts = features.collect_feature_activations(shipped_model, texts, saes)
    df = features.top_contexts(acts, 2, 3, k=4, context=3)
    assert list(df.columns[:3]) == ["rank", "layer", "feature"]
    real = acts.acts[2][texts.mask][:, 3]
    assert df["activation"].tolist() == pytest.approx(real.topk(4).values.tolist())
    row = df.iloc[0]
    toks = texts.str_tokens[row["prompt"]]
    assert row["left"] == "".join(toks[max(0, row["pos"] - 3):row["pos"]])
    assert row["right"] == "".join(toks[row["pos"] + 1:row["pos"] + 4])


def test_histogram_counts_every_active_token(shipped_model, saes, texts):
    acts = features.collect_feature_activations(shipped_model, texts, saes)
    hist, frac = features.histogram(acts, 1, 0, bins=5)
    real = acts.acts[1][texts.mask][:, 0]
    assert int(hist["count"].sum()) == int((real > 0).sum())
    assert frac == pytest.approx(float((real > 0).float().mean()))


def test_logit_effects_are_the_decoder_direction_through_the_unembedding(shipped_model, saes):
    df = features.logit_effects(shipped_model, saes[3], 7, k=5)
    w_u = shipped_model.hf.lm_head.weight
    effects = (w_u @ saes[3].W_dec[7]).detach()
    promoted = df[df["direction"] == "promoted"]
    assert promoted["token_id"].tolist() == effects.topk(5).indices.tolist()
    assert df[df["direction"] == "suppressed"]["effect"].iloc[0] == pytest.approx(float(effects.min()), abs=1e-5)


def test_task_effects_are_one_cell_of_the_feature_sweep(shipped_model, random_saes):
    from patching import PatchSpec, sweep
    from patching.inspect.neurons import task_prompt_set
    df = features.task_effects(shipped_model, 2, 4, tasks=["ioi"], n=8, saes=str(random_saes))
    full = sweep(shipped_model, task_prompt_set(shipped_model, "ioi", 8),
                 PatchSpec(kind="feature", layers=(2,), saes=str(random_saes)))
    assert df.loc[0, "patched"] == pytest.approx(float(full.values[0, 4]), abs=1e-5)
    assert df.loc[0, "effect"] == pytest.approx(float(full.values[0, 4]) - full.corrupt_value, abs=1e-5)


def test_a_feature_out_of_range_is_named(shipped_model, saes, texts):
    acts = features.collect_feature_activations(shipped_model, texts, saes)
    with pytest.raises(ValueError, match=f"feature 99 is out of range: each SAE has {RANDOM_D_SAE} features"):
        features.top_contexts(acts, 0, 99)


@pytest.mark.parametrize("view, columns", [("contexts", ["rank", "layer", "feature"]),
                                           ("histogram", ["bin_low", "bin_high", "count"]),
                                           ("logits", ["direction", "rank", "token_id"]),
                                           ("tasks", ["task", "n_pairs", "clean"])])
def test_the_features_command_writes_each_table(random_saes, tmp_path, view, columns):
    import pandas as pd
    from patching.cli import main
    out = tmp_path / f"{view}.csv"
    assert main(["features", "--layer", "1", "--feature", "2", "--view", view, "--n", "8",
                 "--saes", str(random_saes), "--out", str(out)]) == 0
    assert list(pd.read_csv(out).columns[:3]) == columns


def test_the_features_command_names_a_layer_without_an_sae(tmp_path, capsys):
    from patching.cli import main
    from patching.model.sae import Sae, save_sae
    save_sae(Sae.random(hooks.resid_pre(0), 128, 4), tmp_path / "s")
    assert main(["features", "--layer", "3", "--feature", "0", "--view", "logits", "--saes", str(tmp_path)]) == 2
    assert "--layer 3: no SAE there (SAEs on layers 0)" in capsys.readouterr().err
