"""patching/inspect/neurons.py: activations vs the bridge's hook_post, views vs direct computation,
PCA vs an SVD by hand, the shortlist vs the engine's exact neuron sweep."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from patching import PromptSet
from patching.inspect import neurons as N
from patching.methods.sweep import sweep
from patching.core.spec import PatchSpec
from tests.conftest import IOI

TEXTS = ["Paris is a city in the country of", "When Mary and John went to the store",
         "The war lasted", "Alice and Bob had a long argument, and afterwards Bob said to"]
LABELS = ["France", "x", "y", "x"]


@pytest.fixture(scope="module")
def acts(gpt2_model):
    return N.collect_activations(gpt2_model, N.encode_texts(gpt2_model, TEXTS, LABELS), batch_size=3)


@pytest.mark.parametrize("family", ("gpt2", "llama"))
def test_activations_match_the_bridges_hook_post(tiny_models, family):
    m = tiny_models[family]
    texts = N.encode_texts(m, TEXTS, LABELS)
    a = N.collect_activations(m, texts, batch_size=3)
    assert a.acts.shape == (m.n_layers, len(TEXTS), max(texts.lengths), m.d_mlp)
    for i, n in enumerate(texts.lengths):              # each prompt alone, unpadded
        _, cache = m.bridge.run_with_cache(texts.tokens[i:i + 1, :n])
        for layer in range(m.n_layers):
            torch.testing.assert_close(a.acts[layer, i, :n], cache[f"blocks.{layer}.mlp.hook_post"][0].float(),
                                       atol=1e-5, rtol=1e-5)
        assert (a.acts[:, i, n:] == 0).all()           # padding is masked


def test_positions_count_from_each_prompts_end(acts):
    lengths = torch.tensor(acts.texts.lengths)
    assert N.positions(acts.texts, -1).tolist() == (lengths - 1).tolist()
    assert N.positions(acts.texts, 2).tolist() == [2] * len(TEXTS)
    with pytest.raises(ValueError, match=f"pos 40 is out of range: the shortest prompt has {int(lengths.min())} tokens"):
        N.positions(acts.texts, 40)


def test_top_neurons_are_the_largest_mean_at_the_position(acts):
    df = N.top_neurons(acts, 1, -1, k=5)
    last = N.positions(acts.texts, -1)
    x = acts.acts[1, torch.arange(len(TEXTS)), last]                   # [n, d_mlp]
    assert df.neuron.tolist() == x.mean(0).topk(5).indices.tolist()
    assert df["mean"].to_numpy() == pytest.approx(x.mean(0).topk(5).values.numpy(), rel=1e-6)
    every = N.top_neurons(acts, 0, None, k=3, by="max")
    assert every.n_rows.iloc[0] == sum(acts.texts.lengths)


def test_profile_and_top_activating(acts):
    prof = N.neuron_profile(acts, 1, 7)
    assert len(prof) == sum(acts.texts.lengths)
    assert prof.activation.to_numpy() == pytest.approx(
        acts.acts[1, torch.tensor(prof.prompt.tolist()), torch.tensor(prof.pos.tolist()), 7].numpy())
    assert (prof.groupby("prompt").pos_from_end.max() == -1).all()
    top = N.top_activating(acts, 1, 7, k=3, context=2)
    best = prof.loc[prof.activation.idxmax()]
    assert (top.prompt.iloc[0], top.pos.iloc[0]) == (best.prompt, best.pos)
    toks = acts.texts.str_tokens[best.prompt]
    assert top.left.iloc[0] == "".join(toks[max(0, best.pos - 2):best.pos]) and top.token.iloc[0] == toks[best.pos]
    assert top.activation.is_monotonic_decreasing


def test_pca_matches_an_svd_by_hand(acts):
    df = N.cluster_prompts(acts, 1, -1, method="pca")
    x = acts.acts[1, torch.arange(len(TEXTS)), N.positions(acts.texts, -1)].double().numpy()
    xc = x - x.mean(0)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    assert df.explained_x.iloc[0] == pytest.approx(s[0] ** 2 / (s ** 2).sum())
    assert np.abs(df.x.to_numpy()) == pytest.approx(np.abs(xc @ vt[0]), abs=1e-6)
    assert df.label.tolist() == LABELS


def test_tsne_when_scikit_learn_is_installed(acts):
    pytest.importorskip("sklearn")
    a = N.cluster_prompts(acts, 1, -1, method="tsne", perplexity=1.0, seed=0)
    b = N.cluster_prompts(acts, 1, -1, method="tsne", perplexity=1.0, seed=0)
    assert len(a) == len(TEXTS) and np.allclose(a.x, b.x)


@pytest.fixture(scope="module")
def prompts(gpt2_model):
    return PromptSet.from_pairs(gpt2_model, IOI)


def test_exact_neuron_patch_matches_the_sweep(gpt2_model, prompts):
    pos = tuple(prompts.differing_positions())
    ref = sweep(gpt2_model, prompts, PatchSpec(kind="neuron", layers=(0, 1), positions=pos)).to_dataframe()
    ref = ref.set_index(["layer", "neuron"])
    chosen = [(0, 3), (1, 17), (1, 100)]
    got = N.exact_neuron_patch(gpt2_model, prompts, chosen, positions=pos)
    for row in got.itertuples():
        assert row.value == pytest.approx(ref.loc[(row.layer, row.neuron), "value"], abs=1e-6)
        assert row.normalized == pytest.approx(ref.loc[(row.layer, row.neuron), "normalized"], abs=1e-5)


def test_shortlist_ranks_by_attribution_and_patches_exactly(gpt2_model, prompts):
    from patching.methods.attribution import run_attribution
    pos = tuple(prompts.differing_positions())
    df = N.neuron_shortlist(gpt2_model, prompts, layers=[1], positions=pos, top=4)
    (att,) = run_attribution(gpt2_model, prompts, kinds=("neuron",), positions=pos)
    est = att.values[1]
    effect = (est - att.corrupt_value).abs()
    assert df.neuron.tolist() == effect.topk(4).indices.tolist() and (df.layer == 1).all()
    assert df.attribution.to_numpy() == pytest.approx(est[df.neuron.to_numpy()].numpy())
    exact = N.exact_neuron_patch(gpt2_model, prompts, list(zip(df.layer, df.neuron)), positions=pos)
    assert df.exact.to_numpy() == pytest.approx(exact.value.to_numpy())


def test_task_texts_label_the_country(gpt2_model):
    from patching.tasks.families import make_pairs
    t = N.task_texts(gpt2_model, "factual", 3)
    assert list(t.labels) == [p.answer.strip() for p in make_pairs("factual", 3)]


def test_bad_inputs_name_the_value(gpt2_model, acts):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        N.encode_texts(gpt2_model, ["a", ""])
    with pytest.raises(ValueError, match="2 labels for 1 prompts"):
        N.encode_texts(gpt2_model, ["a"], ["x", "y"])
    with pytest.raises(ValueError, match="neuron 9999 is out of range"):
        N.neuron_profile(acts, 0, 9999)
    with pytest.raises(ValueError, match="method must be one of pca, tsne, not 'umap'"):
        N.cluster_prompts(acts, 0, -1, method="umap")
