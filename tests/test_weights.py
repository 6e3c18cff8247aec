"""patching/inspect/weights.py: head weights, composition scores, OV/QK SVD, rank-k heads — checked against
the bridge's stacked weights and dense computation by hand on the tiny models."""
from __future__ import annotations

import pytest
import torch

from patching import PromptSet
from patching.inspect import weights as W
from tests.conftest import IOI

FAMILIES = ("gpt2", "llama", "neox")


@pytest.mark.parametrize("family", FAMILIES)
def test_head_weights_match_the_bridges_stacked_weights(tiny_models, family):
    m = tiny_models[family]
    w = W.head_weights(m, fold_ln=False)
    b = m.bridge
    rep = m.n_heads // m.n_kv_heads                    # llama: grouped-query, kv heads expanded
    torch.testing.assert_close(w.W_Q, b.W_Q.float())
    torch.testing.assert_close(w.W_K, b.W_K.float().repeat_interleave(rep, 1))
    torch.testing.assert_close(w.W_V, b.W_V.float().repeat_interleave(rep, 1))
    torch.testing.assert_close(w.W_O, b.W_O.float())


def test_fold_ln_scales_reading_rows_by_the_norm_weight(tiny_models):
    m = tiny_models["llama"]
    with torch.no_grad():                       # a non-trivial RMSNorm weight, restored after
        ln = m.hf.model.layers[1].input_layernorm.weight
        saved = ln.clone()
        ln.mul_(torch.linspace(0.5, 2.0, ln.numel()))
    try:
        raw, folded = W.head_weights(m, fold_ln=False), W.head_weights(m, fold_ln=True)
        torch.testing.assert_close(folded.W_K[1], raw.W_K[1] * ln.detach().float()[None, :, None])
        torch.testing.assert_close(folded.W_O, raw.W_O)
    finally:
        with torch.no_grad():
            ln.copy_(saved)


def _dense(w, l, h):
    ov = w.W_V[l, h].double() @ w.W_O[l, h].double()
    qk = w.W_Q[l, h].double() @ w.W_K[l, h].double().T
    return ov, qk


@pytest.mark.parametrize("family", ("gpt2", "llama"))
def test_composition_scores_match_the_formula_by_hand(tiny_models, family):
    m = tiny_models[family]
    df = W.composition_scores(m)
    w = W.head_weights(m)
    L, H = w.n_layers, w.n_heads
    assert len(df) == 3 * H * H * L * (L - 1) // 2 and (df.src_layer < df.dst_layer).all()
    fro = torch.linalg.matrix_norm
    for row in df.sample(12, random_state=0).itertuples():
        ov_a, _ = _dense(w, row.src_layer, row.src_head)
        ov_b, qk_b = _dense(w, row.dst_layer, row.dst_head)
        right = {"q": qk_b, "k": qk_b.T, "v": ov_b}[row.composition]
        want = fro(ov_a @ right) / (fro(ov_a) * fro(right))
        assert row.score == pytest.approx(float(want), rel=1e-6), row


def test_composition_rejects_an_unknown_kind(gpt2_model):
    with pytest.raises(ValueError, match="composition must be one of q, k, v, all, not 'x'"):
        W.composition_scores(gpt2_model, "x")


@pytest.mark.parametrize("circuit", W.CIRCUITS)
def test_head_svd_reconstructs_the_circuit(tiny_models, circuit):
    m = tiny_models["llama"]
    w = W.head_weights(m)
    U, S, V = W.head_svd(m, 1, 3, circuit)
    ov, qk = _dense(w, 1, 3)
    dense = ov if circuit == "ov" else qk
    torch.testing.assert_close(U @ torch.diag(S) @ V.T, dense, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(S, torch.linalg.svdvals(dense)[:len(S)], atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(U.T @ U, torch.eye(len(S), dtype=U.dtype), atol=1e-10, rtol=0)


def test_singular_values_energy_adds_up(gpt2_model):
    df = W.singular_values(gpt2_model, "ov")
    assert len(df) == gpt2_model.n_layers * gpt2_model.n_heads * gpt2_model.arch.d_head
    last = df[df["index"] == df["index"].max()]
    assert last.cumulative.to_numpy() == pytest.approx(1.0)
    assert (df.groupby("label").value.diff().dropna() <= 1e-12).all()          # descending


def test_singular_tokens_are_the_vocabulary_projection(gpt2_model):
    m = gpt2_model
    df = W.singular_tokens(m, 1, 2, "ov", n_dirs=2, k=4)
    U, S, V = W.head_svd(m, 1, 2, "ov")
    w_u = (m.hf.lm_head.weight * m.hf.transformer.ln_f.weight[None]).detach().double()
    out = df[(df.direction == 0) & (df.side == "output")]
    scores = w_u @ V[:, 0]
    if scores[scores.abs().argmax()] < 0:              # the documented sign convention
        scores = -scores
    top = scores.topk(4)
    assert out.token_id.tolist() == top.indices.tolist()
    assert out.score.to_numpy() == pytest.approx(top.values.numpy())
    assert set(df.side) == {"input", "output"} and df.singular_value.iloc[0] == pytest.approx(float(S[0]))


@pytest.fixture(scope="module")
def prompts(gpt2_model):
    return PromptSet.from_pairs(gpt2_model, IOI)


@pytest.mark.parametrize("family", FAMILIES)
def test_full_rank_reproduces_the_model(tiny_models, family):
    m = tiny_models[family]
    p = PromptSet.from_pairs(m, IOI)
    df = W.rank_k_head(m, p, 1, 1, ranks=[m.arch.d_head])
    assert abs(df.change.item()) < 1e-5 and df.pattern_max_abs.item() < 1e-5
    assert df.energy_kept.item() == pytest.approx(1.0)


def test_rank_k_pattern_matches_dense_truncation_by_hand(gpt2_model, prompts):
    """Scores recomputed from q and keys whose input is projected on the top-k right singular
    vectors of the dense QK matrix (folded basis), softmaxed under the causal mask."""
    m, layer, head, k = gpt2_model, 1, 0, 2
    w = W.head_weights(m)
    cache = m.runner.run(prompts.clean_tokens[:1])
    lc = cache.layers[layer]
    with torch.inference_mode():           # the cached activations are inference tensors
        normed = m.arch.ln1(layer, lc.resid_pre)[0]
    n = (normed.double() - w.ln_bias[layer].double()) / w.ln_weight[layer].double()
    _, _, vh = torch.linalg.svd(w.W_Q[layer, head].double() @ w.W_K[layer, head].double().T)
    P = vh[:k].T @ vh[:k]
    keys = n @ P @ w.W_K[layer, head].double() + w.b_K[layer, head].double()
    scores = lc.q[0, :, head].double() @ keys.T * m.arch.scaling(layer)
    T = scores.shape[0]
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    want = scores.softmax(-1)
    df = W.rank_k_pattern(m, prompts, layer, head, k)
    dest, src = torch.tensor(df.dest.tolist()), torch.tensor(df.src.tolist())
    got = torch.zeros(T, T, dtype=torch.float64)
    got[dest, src] = torch.tensor(df.approx.tolist(), dtype=torch.float64)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(df.original.tolist()), lc.pattern[0, head][dest, src].float())


def test_rank_k_metric_change_is_the_resumed_run(gpt2_model, prompts):
    df = W.rank_k_head(gpt2_model, prompts, 0, 1, ranks=[0, 1, 8])
    assert df["rank"].tolist() == [0, 1, 8] and (df.n_pairs == 2).all()
    assert df.value.to_numpy() - df.base_value.to_numpy() == pytest.approx(df.change.to_numpy())
    assert df.pattern_tv.iloc[-1] < 1e-6 and df.pattern_tv.iloc[0] > 0


def test_bad_inputs_name_the_value(gpt2_model, prompts):
    with pytest.raises(ValueError, match="layer 7 is out of range"):
        W.rank_k_head(gpt2_model, prompts, 7, 0)
    with pytest.raises(ValueError, match="rank must be .* 0 to d_head 8, not 9"):
        W.rank_k_head(gpt2_model, prompts, 0, 0, ranks=[9])
    with pytest.raises(ValueError, match="circuit must be one of ov, qk, not 'xy'"):
        W.head_svd(gpt2_model, 0, 0, "xy")
