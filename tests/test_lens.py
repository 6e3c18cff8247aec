"""Inspection views (patching/inspect/lens.py), checked against TransformerLens' bridge and the model's modules.

References: the bridge's `run_with_cache` (its logits, residual streams, patterns, and
`ActivationCache.apply_ln_to_stack` / `decompose_resid` / `stack_head_results` for direct
contributions), decoded with the model's own final norm and unembedding.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from patching import PromptSet
from patching.model import hooks
from patching.inspect.lens import (attention_patterns, direct_logit_attribution, logit_lens, residual_norms,
                           top_k)
from tests.conftest import IOI

FAMILIES = ("gpt2", "llama", "neox")
ATOL = 1e-4


@pytest.fixture(scope="module")
def prompts(tiny_models):
    return {f: PromptSet.from_pairs(m, IOI) for f, m in tiny_models.items()}


def _ref(model, prompts, run="clean", pair=0):
    tokens = (prompts.clean_tokens if run == "clean" else prompts.corrupt_tokens)[pair:pair + 1]
    with torch.no_grad():
        return model.bridge.run_with_cache(tokens)


def _w_u(model):
    lin = model.hf.get_output_embeddings()
    return getattr(lin, "_original_component", lin).weight        # [vocab, d_model]


def _ln_weight(model):
    """The final norm's weight: TransformerLens' apply_ln_to_stack leaves it out (it folds it)."""
    for path in ("transformer.ln_f", "model.norm", "gpt_neox.final_layer_norm"):
        obj = model.hf
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is not None:
            return getattr(obj, "_original_component", obj).weight
    raise AssertionError("no final norm")


def _direct_logits(model, cache, stack):
    """Reference direct contributions: stack [C, 1, pos, d] -> logits [C, pos, vocab]."""
    normed = cache.apply_ln_to_stack(stack, layer=-1)                # centred, / cached scale
    return (normed[:, 0] * _ln_weight(model)) @ _w_u(model).T


# -- logit lens ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_accumulated_lens_matches_bridge_residuals_and_logits(tiny_models, prompts, family):
    model, ps = tiny_models[family], prompts[family]
    df = logit_lens(model, ps, run="corrupt", pair=1, mode="accumulated", k=3)
    logits, cache = _ref(model, ps, "corrupt", 1)
    a = model.arch
    n_pos = ps.n_pos
    assert len(df) == (1 + model.n_layers) * n_pos * 3
    refs = {"embed": cache[hooks.resid_pre(0)][0]} | {
        f"L{l}": cache[hooks.resid_post(l)][0] for l in range(model.n_layers)}
    for label, resid in refs.items():
        with torch.no_grad():
            ref = a.unembed(a.ln_final(resid)).float()                  # [pos, vocab]
        rows = df[df.label == label].sort_values(["pos", "top_rank"])
        top_p, top_i = ref.softmax(-1).topk(3)
        np.testing.assert_array_equal(rows.top_id.to_numpy(), top_i.reshape(-1).numpy())
        np.testing.assert_allclose(rows.top_prob.to_numpy(), top_p.reshape(-1).numpy(), atol=ATOL)
        first = rows[rows.top_rank == 1]
        ans = int(ps.answer_ids[1])
        np.testing.assert_allclose(first.answer_logit.to_numpy(), ref[:, ans].numpy(), atol=ATOL)
        np.testing.assert_allclose(first.answer_prob.to_numpy(), ref.softmax(-1)[:, ans].numpy(), atol=ATOL)
        np.testing.assert_array_equal(first.answer_rank.to_numpy(),
                                      (ref > ref[:, ans:ans + 1]).sum(-1).numpy() + 1)
    # the last layer is the model's own output, at every position
    last = df[(df.label == f"L{model.n_layers - 1}") & (df.top_rank == 1)].sort_values("pos")
    np.testing.assert_allclose(last.answer_logit.to_numpy(), logits[0, :, int(ps.answer_ids[1])].numpy(),
                               atol=ATOL)
    np.testing.assert_array_equal(last.top_id.to_numpy(), logits[0].argmax(-1).numpy())
    assert list(last.token) == model.to_str_tokens(ps.corrupt_tokens[1])
    assert set(df.answer) == {IOI[1][2]} and set(df.wrong) == {IOI[1][3]}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_per_layer_lens_matches_apply_ln_to_stack(tiny_models, prompts, family):
    model, ps = tiny_models[family], prompts[family]
    df = logit_lens(model, ps, mode="per_layer", k=1)
    logits, cache = _ref(model, ps)
    heads, labels = cache.stack_head_results(layer=-1, return_labels=True)       # [C, 1, pos, d]
    with torch.no_grad():
        ref = _direct_logits(model, cache, heads)
    ans = int(ps.answer_ids[0])
    for i, label in enumerate(labels):
        rows = df[df.label == label].sort_values("pos")
        assert len(rows) == ps.n_pos, label
        np.testing.assert_allclose(rows.answer_logit.to_numpy(), ref[i, :, ans].numpy(), atol=ATOL)
        np.testing.assert_array_equal(rows.top_id.to_numpy(), ref[i].argmax(-1).numpy())
    comps = ["embed"] + [f"L{l} {c}" for l in range(model.n_layers) for c in ("attn", "mlp")]
    assert set(df.label) == set(comps) | set(labels)


def test_per_layer_contributions_add_up_to_the_logits(tiny_models, prompts):
    """embed + every attn + every mlp + the final norm's and unembedding's bias = the logits."""
    model, ps = tiny_models["neox"], prompts["neox"]
    df = logit_lens(model, ps, mode="per_layer")
    logits, _ = _ref(model, ps)
    blocks = df[df.component.isin(["embed", "attn", "mlp"])]
    summed = blocks.groupby("pos").answer_logit.sum().sort_index().to_numpy()
    ans = int(ps.answer_ids[0])
    norm = model.hf.gpt_neox.final_layer_norm
    with torch.no_grad():
        bias = float(_w_u(model)[ans] @ getattr(norm, "_original_component", norm).bias)
    np.testing.assert_allclose(summed + bias, logits[0, :, ans].numpy(), atol=1e-3)


# -- direct logit attribution ----------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_dla_matches_transformer_lens_apply_ln_to_stack(tiny_models, prompts, family):
    model, ps = tiny_models[family], prompts[family]
    df = direct_logit_attribution(model, ps, pair=0)
    logits, cache = _ref(model, ps)
    w_u = _w_u(model)
    direction = w_u[int(ps.answer_ids[0])] - w_u[int(ps.wrong_ids[0])]
    with torch.no_grad():
        layers, layer_labels = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
        heads, head_labels = cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)
        ref_layers = (cache.apply_ln_to_stack(layers, layer=-1, pos_slice=-1)[:, 0] * _ln_weight(model)) @ direction
        ref_heads = (cache.apply_ln_to_stack(heads, layer=-1, pos_slice=-1)[:, 0] * _ln_weight(model)) @ direction
    got = dict(zip(df.label, df.value))
    for label, value in zip(head_labels, ref_heads.tolist()):
        assert got[label] == pytest.approx(value, abs=ATOL), label
    by_tl = dict(zip(layer_labels, ref_layers.tolist()))
    embed = by_tl.pop("embed") + by_tl.pop("pos_embed", 0.0)
    assert got["embed"] == pytest.approx(embed, abs=ATOL)
    for l in range(model.n_layers):
        assert got[f"L{l} attn"] == pytest.approx(by_tl[f"{l}_attn_out"], abs=ATOL)
        assert got[f"L{l} mlp"] == pytest.approx(by_tl[f"{l}_mlp_out"], abs=ATOL)
    total = float(logits[0, -1, int(ps.answer_ids[0])] - logits[0, -1, int(ps.wrong_ids[0])])
    assert got["total"] == pytest.approx(total, abs=ATOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_dla_sums_to_the_logit_difference_and_averages_pairs(tiny_models, prompts, family):
    model, ps = tiny_models[family], prompts[family]
    df = direct_logit_attribution(model, ps)            # mean over both pairs
    parts = df[df.kind.isin(["embed", "attn", "mlp", "final_bias"])].value.sum()
    assert parts == pytest.approx(df[df.kind == "total"].value.item(), abs=1e-4)
    per_pair = [direct_logit_attribution(model, ps, pair=p).set_index("label").value for p in (0, 1)]
    np.testing.assert_allclose(df.set_index("label").value, (per_pair[0] + per_pair[1]) / 2, atol=1e-5)
    assert df.pair.isna().all() and (df.n_pairs == 2).all()
    # heads + the attention output bias = the layer's attention row
    a = model.arch
    for l in range(model.n_layers):
        heads = df[(df.kind == "head") & (df.layer == l)].value.sum()
        attn = df[(df.kind == "attn") & (df.layer == l)].value.item()
        if a.o_bias(l) is None:
            assert heads == pytest.approx(attn, abs=1e-5)


# -- top-k -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_top_k_matches_bridge_logits(tiny_models, prompts, family):
    model, ps = tiny_models[family], prompts[family]
    df = top_k(model, ps, run="corrupt", pos=5, k=7, pair=1)
    logits, _ = _ref(model, ps, "corrupt", 1)
    logp = logits[0, 5].log_softmax(-1)
    top_lp, top_i = logp.topk(7)
    assert list(df["rank"]) == list(range(1, 8))
    np.testing.assert_array_equal(df.pred_id.to_numpy(), top_i.numpy())
    np.testing.assert_allclose(df.logprob.to_numpy(), top_lp.numpy(), atol=ATOL)
    np.testing.assert_allclose(df.prob.to_numpy(), top_lp.exp().numpy(), atol=ATOL)
    np.testing.assert_allclose(df.logit.to_numpy(), logits[0, 5, top_i].numpy(), atol=ATOL)
    assert list(df.pred_token) == model.to_str_tokens(top_i.tolist())
    assert set(df.token) == {model.to_str_tokens(ps.corrupt_tokens[1])[5]}
    last = top_k(model, ps, k=1)                        # pos=-1: the last position
    assert last.pos.item() == ps.n_pos - 1


# -- attention -------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_attention_patterns_match_bridge(tiny_models, prompts, family):
    model, ps = tiny_models[family], prompts[family]
    df = attention_patterns(model, ps, layer=1, run="clean", pair=0)
    _, cache = _ref(model, ps)
    ref = cache[hooks.pattern(1)][0]                                    # [H, dest, src]
    n = ps.n_pos
    assert len(df) == model.n_heads * n * (n + 1) // 2
    assert (df.src <= df.dest).all()
    got = np.zeros(ref.shape)
    got[df["head"], df.dest, df.src] = df.value
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(df.groupby(["head", "dest"]).value.sum(), 1.0, atol=1e-5)
    toks = model.to_str_tokens(ps.clean_tokens[0])
    assert all(df.src_token == [toks[i] for i in df.src])
    assert len(attention_patterns(model, ps, layer=-1)) == len(df)
    some = attention_patterns(model, ps, layer=1, heads=[3, 1])
    assert list(some["head"].unique()) == [3, 1]
    pd.testing.assert_series_equal(some[some["head"] == 1].value.reset_index(drop=True),
                                   df[df["head"] == 1].value.reset_index(drop=True))


# -- residual norms --------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "neox"])
def test_residual_norms_match_bridge(tiny_models, prompts, family):
    model, ps = tiny_models[family], prompts[family]
    df = residual_norms(model, ps, pair=1)
    assert set(df.run) == {"clean", "corrupt"}
    for run in ("clean", "corrupt"):
        _, cache = _ref(model, ps, run, 1)
        rows = df[df.run == run]
        embed = rows[rows.stage == "embed"].sort_values("pos").norm.to_numpy()
        np.testing.assert_allclose(embed, cache[hooks.resid_pre(0)][0].norm(dim=-1).numpy(), rtol=1e-5)
        for l in range(model.n_layers):
            post = rows[(rows.stage == "resid_post") & (rows.layer == l)].sort_values("pos").norm
            np.testing.assert_allclose(post.to_numpy(), cache[hooks.resid_post(l)][0].norm(dim=-1).numpy(),
                                       rtol=1e-5)
    stages = set(df.stage)
    assert ("resid_mid" in stages) == (not model.parallel_attn_mlp)
    every = residual_norms(model, ps, pair=None)
    assert set(every.pair) == {0, 1} and len(every) == 2 * len(df)


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, message", [
    (lambda m, p: attention_patterns(m, p, layer=2),
     "layer 2 is out of range: the model has 2 layers (0..1, or -1 for the last)"),
    (lambda m, p: attention_patterns(m, p, layer=-3), "layer -3 is out of range"),
    (lambda m, p: top_k(m, p, pos=15), "pos 15 is out of range: the prompt has 15 tokens (0..14"),
    (lambda m, p: direct_logit_attribution(m, p, pos=-16), "pos -16 is out of range"),
    (lambda m, p: top_k(m, p, k=0), "k must be an integer from 1"),
    (lambda m, p: logit_lens(m, p, k=10**6), "k must be an integer from 1"),
    (lambda m, p: logit_lens(m, p, run="patched"), "run must be 'clean' or 'corrupt', not 'patched'"),
    (lambda m, p: logit_lens(m, p, mode="stacked"), "mode must be one of accumulated, per_layer, not 'stacked'"),
    (lambda m, p: logit_lens(m, p, pair=2), "pair 2 is out of range: the set has 2 pairs"),
    (lambda m, p: residual_norms(m, p, pair=-1), "pair -1 is out of range"),
    (lambda m, p: top_k(m, p, pos="last"), "pos must be an integer, not 'last'"),
    (lambda m, p: attention_patterns(m, p, layer=1, heads=[0, 4]),
     "head 4 is out of range: layer 1 has 4 heads (0..3)"),
])
def test_bad_input_names_the_value(gpt2_model, ioi_prompts, call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(gpt2_model, ioi_prompts)


@pytest.mark.parametrize("family", ["gpt2", "neox"])
def test_without_a_runner_the_bridge_gives_the_same_views(tiny_models, prompts, family):
    """Models the runner does not cover: accumulated lens, top-k, attention and norms through the
    bridge's run_with_cache, equal to the runner's; direct contributions are refused."""
    model, ps = tiny_models[family], prompts[family]
    bare = dataclasses.replace(model, runner=None, arch=None)
    for view, kw in ((logit_lens, dict(k=2, run="corrupt")), (top_k, dict(pos=4)),
                     (attention_patterns, dict(layer=1, pair=1)), (residual_norms, dict(pair=None))):
        fast, slow = view(model, ps, **kw), view(bare, ps, **kw)
        assert list(fast.columns) == list(slow.columns) and len(fast) == len(slow), view.__name__
        for col in fast.columns:
            if fast[col].dtype.kind == "f":
                np.testing.assert_allclose(slow[col], fast[col], atol=1e-4, err_msg=col)
            elif col not in ("top_id", "top_token", "top_rank", "pred_id", "pred_token", "rank"):
                pd.testing.assert_series_equal(slow[col], fast[col], check_dtype=False)
    with pytest.raises(ValueError, match="direct logit attribution needs the engine's own forward pass"):
        direct_logit_attribution(bare, ps)
    with pytest.raises(ValueError, match="per-component logit lens .* supported families: gpt2"):
        logit_lens(bare, ps, mode="per_layer")


def test_half_precision_models_work(tiny_dirs):
    """bfloat16: the final-norm check allows half-precision rounding; DLA still adds up (roughly)."""
    from patching import load_model
    model = load_model(str(tiny_dirs["llama"]), dtype="bfloat16")
    ps = PromptSet.from_pairs(model, IOI)
    df = direct_logit_attribution(model, ps)
    parts = df[df.kind.isin(["embed", "attn", "mlp", "final_bias"])].value.sum()
    assert parts == pytest.approx(df[df.kind == "total"].value.item(), abs=0.01)
    lensed = logit_lens(model, ps, mode="per_layer")
    assert lensed.top_prob.between(0, 1).all()


def test_chunked_decoding_gives_the_same_lens(gpt2_model, ioi_prompts, monkeypatch):
    """Long prompts / big vocabularies are decoded a few rows at a time: same numbers."""
    import patching.inspect.lens as lens_module
    whole = logit_lens(gpt2_model, ioi_prompts, mode="per_layer", k=2)
    monkeypatch.setattr(lens_module, "MAX_LOGITS", 7 * len(gpt2_model.tokenizer))   # 7 rows a chunk
    chunked = logit_lens(gpt2_model, ioi_prompts, mode="per_layer", k=2)
    pd.testing.assert_frame_equal(whole, chunked)
