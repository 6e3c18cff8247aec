"""Issue #20's views: the attention overview, text highlighted by value, residual norms over pairs.

Values are checked against TransformerLens' bridge (`run_with_cache`, `run_with_hooks`) and the
Hugging Face modules' own weights on the tiny random models; figures against the frames they draw.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from patching import PatchSpec, PromptSet, sweep
from patching.model import hooks
from patching.figures import highlight as fh
from patching.figures import overview as fo
from patching.figures.lens import norms_figure
from patching.inspect.highlight import HighlightSpec, attention_row, effect_values, highlight_values
from patching.inspect.lens import attention_overview, attention_patterns, residual_norm_bands, residual_norms
from tests.conftest import IOI

FAMILIES = ("gpt2", "llama", "neox")
SHORT = ("When Mary and John went, John gave a drink to", "When Mary and John went, Mary gave a drink to",
         " Mary", " John")


@pytest.fixture(scope="module")
def prompts(tiny_models):
    return {f: PromptSet.from_pairs(m, IOI) for f, m in tiny_models.items()}


@pytest.fixture(scope="module")
def mixed(gpt2_model):
    """Three pairs of two lengths, aligned by the roles IO, S2 and END."""
    pairs = [IOI[0], SHORT, IOI[1]]
    roles = []
    for clean, *_ in pairs:
        ids = PromptSet.prompt(gpt2_model, clean).clean_tokens[0].tolist()
        toks = [gpt2_model.tokenizer.decode([i]) for i in ids]
        s2 = [i for i, t in enumerate(toks) if t in (" John", " Mary")][2]
        roles.append({"IO": 2, "S2": s2, "END": len(toks) - 1})
    ps = PromptSet.from_pairs(gpt2_model, pairs, roles=roles)
    assert ps.is_mixed
    return ps


def _cache(model, tokens):
    with torch.no_grad():
        return model.bridge.run_with_cache(tokens)[1]


def _o_weight(model, layer: int) -> torch.Tensor:
    """[n_heads, d_head, d_model]: each head's slice of the output projection, from the HF module."""
    hf = model.hf
    if hasattr(hf, "transformer"):                                  # GPT-2: Conv1D, weight [in, out]
        w = getattr(hf.transformer.h[layer].attn.c_proj, "_original_component", hf.transformer.h[layer].attn.c_proj)
        w = w.weight
    else:                                                           # Llama: Linear, weight [out, in]
        o = hf.model.layers[layer].self_attn.o_proj
        w = getattr(o, "_original_component", o).weight.T
    return w.reshape(model.n_heads, -1, w.shape[-1])


# -- attention overview -----------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_attention_overview_is_every_layers_bridge_pattern(tiny_models, prompts, family):
    model, ps = tiny_models[family], prompts[family]
    df = attention_overview(model, ps, run="corrupt", pair=1)
    cache = _cache(model, ps.corrupt_tokens[1:2])
    n = ps.n_pos
    assert len(df) == model.n_layers * model.n_heads * n * (n + 1) // 2
    for layer in range(model.n_layers):
        got = np.zeros((model.n_heads, n, n))
        sel = df[df.layer == layer]
        got[sel["head"], sel.dest, sel.src] = sel.value
        np.testing.assert_allclose(got, cache[hooks.pattern(layer)][0].numpy(), atol=1e-5)
        one = attention_patterns(model, ps, layer=layer, run="corrupt", pair=1)
        pd.testing.assert_frame_equal(sel.reset_index(drop=True), one)
    last = attention_overview(model, ps, layers=[-1, 0])
    assert list(dict.fromkeys(last.layer)) == [model.n_layers - 1, 0]


def test_attention_overview_of_a_mixed_set_uses_the_pairs_own_tokens(gpt2_model, mixed):
    df = attention_overview(gpt2_model, mixed, pair=1)               # the shorter pair: no padding
    n = mixed.lengths[1]
    assert df.dest.max() == n - 1
    cache = _cache(gpt2_model, mixed.clean_tokens[1:2, :n])
    got = df[(df.layer == 1) & (df["head"] == 2)]
    ref = cache[hooks.pattern(1)][0, 2].numpy()
    np.testing.assert_allclose(got.value, ref[got.dest, got.src], atol=1e-5)


def test_one_pair_of_a_mixed_set_is_its_own_length_in_every_view(gpt2_model, mixed):
    """The single-pair views read a pair of a mixed set without the padding (before: padded tokens
    ran as if they were text); every pair at once is refused, naming the lengths."""
    from patching.inspect.lens import logit_lens
    n = mixed.lengths[1]
    norms = residual_norms(gpt2_model, mixed, pair=1)
    ref = _cache(gpt2_model, mixed.corrupt_tokens[1:2, :n])[hooks.resid_post(1)][0].norm(dim=-1).numpy()
    rows = norms[(norms.run == "corrupt") & (norms.stage == "resid_post") & (norms.layer == 1)].sort_values("pos")
    np.testing.assert_allclose(rows.norm, ref, rtol=1e-5)
    assert logit_lens(gpt2_model, mixed, pair=1).pos.max() == n - 1
    with pytest.raises(ValueError, match=r"needs pairs of one token length; this set has 15 tokens \(pairs 0, 2\)"):
        residual_norms(gpt2_model, mixed, pair=None)


@pytest.mark.parametrize("call, message", [
    (lambda m, p: attention_overview(m, p, layers=[2]), "layer 2 is out of range: the model has 2 layers"),
    (lambda m, p: attention_overview(m, p, layers=[]), "layers is empty"),
    (lambda m, p: attention_overview(m, p, pair=5), "pair 5 is out of range"),
    (lambda m, p: attention_overview(m, p, run="patched"), "run must be 'clean' or 'corrupt'"),
])
def test_attention_overview_bad_input(gpt2_model, ioi_prompts, call, message):
    with pytest.raises(ValueError, match=message):
        call(gpt2_model, ioi_prompts)


def test_overview_figure_panels_scales_and_clicks(gpt2_model, ioi_prompts):
    df = attention_overview(gpt2_model, ioi_prompts)
    fig = fo.attention_overview_figure(df)
    panels = fo.overview_panels([0, 1], gpt2_model.n_heads)
    assert [t.meta[0] for t in fig.data] == [f"L{l}H{h}" for l, h in panels]
    for (layer, head), trace in zip(panels, fig.data):
        sel = df[(df.layer == layer) & (df["head"] == head)]
        z = np.array(trace.z, dtype=float)
        np.testing.assert_allclose(z[sel.dest, sel.src], sel.value)
        assert np.isnan(z[0, 1])                                             # the causal triangle is blank
        assert trace.zmax == pytest.approx(sel[sel.dest > 0].value.max())    # its own scale, first row left out
        assert trace.showscale and trace.colorbar.ticktext[-1] == f"{trace.zmax:.2f}"
    assert len({round(t.colorbar.x, 3) for t in fig.data}) == gpt2_model.n_heads      # a bar beside each column
    assert fig.layout.yaxis.ticktext is None and "2: ␣Mary" in fig.layout.yaxis.tickvals   # tokens down the side
    assert fo.panel_at({"points": [{"curveNumber": 6}]}, [0, 1], 4) == (1, 2)
    pair = fo.attention_overview_figure(df, layout="pair", layers=[1, 0], scale="shared")
    assert [t.meta[0] for t in pair.data][:4] == ["L1H0", "L0H0", "L1H1", "L0H1"]
    assert all(t.zmax == 1 for t in pair.data) and sum(bool(t.showscale) for t in pair.data) == 1
    assert fo.panel_at({"points": [{"curveNumber": 3}]}, [1, 0], 4, "pair") == (0, 1)
    with pytest.raises(ValueError, match="two layers, not 3"):
        fo.overview_panels([0, 1, 2], 4, "pair")
    zoom = fo.attention_zoom(df, 1, 3)
    assert len(zoom.data) == 1 and "L1H3" in zoom.layout.title.text


def test_a_long_prompt_thins_the_panels_tick_labels(gpt2_model):
    text = " ".join(["Mary and John went to the store,\n  then"] * 8)
    ps = PromptSet.prompt(gpt2_model, text)
    df = attention_overview(gpt2_model, ps, layers=[0])
    fig = fo.attention_overview_figure(df)
    n = ps.clean_tokens.shape[1]
    ticks = fig.layout.yaxis.tickvals
    assert n > 60 and 0 < len(ticks) < n and len(fig.layout.yaxis.tickvals) * fo.LABEL_PX <= 320 + fo.LABEL_PX
    assert any("\\n" in t for t in fig.data[0].y) and any("␣" in t for t in fig.data[0].y)


# -- highlighted text -------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_highlight_values_match_the_bridge(tiny_models, prompts, family):
    model, ps = tiny_models[family], prompts[family]
    cache = _cache(model, ps.corrupt_tokens[1:2])
    neuron = highlight_values(model, ps, HighlightSpec("neuron", layer=1, neuron=5, run="corrupt", pair=1))
    np.testing.assert_allclose(neuron.value, cache[hooks.mlp_post(1)][0, :, 5].numpy(), atol=1e-5)
    assert neuron.label.iloc[0] == "L1N5" and list(neuron.pos) == list(range(ps.n_pos))
    norm = highlight_values(model, ps, HighlightSpec("head_norm", layer=0, head=3, run="corrupt", pair=1))
    ref = (cache[hooks.z(0)][0, :, 3] @ _o_weight(model, 0)[3]).norm(dim=-1)
    np.testing.assert_allclose(norm.value, ref.detach().numpy(), rtol=1e-4)
    att = highlight_values(model, ps, HighlightSpec("attention", layer=1, head=2, dest=6, run="corrupt", pair=1))
    ref = cache[hooks.pattern(1)][0, 2, 6].numpy()
    np.testing.assert_allclose(att.value[:7], ref[:7], atol=1e-6)
    assert att.value[7:].isna().all() and att.value.sum() == pytest.approx(1.0, abs=1e-5)
    toks = model.to_str_tokens(ps.corrupt_tokens[1])
    assert list(att.token) == list(toks) and att.label.iloc[0] == f"L1H2 attention from 6: {toks[6]!r}"
    from_overview = attention_row(attention_overview(model, ps, run="corrupt", pair=1), layer=1, head=2, dest=6)
    pd.testing.assert_frame_equal(from_overview, att)


def test_highlight_refusals_name_the_value(tiny_models, ioi_prompts, gpt2_model):
    import dataclasses
    cases = [
        (lambda: HighlightSpec("logit"), "unknown source 'logit'; choose one of neuron, head_norm, attention, effect"),
        (lambda: HighlightSpec("effect"), "use effect_values"),
        (lambda: HighlightSpec("neuron", layer=1.5), "layer must be an integer, not 1.5"),
        (lambda: highlight_values(gpt2_model, ioi_prompts, HighlightSpec("neuron", neuron=128)),
         r"neuron 128 is out of range: layer 0 has 128 neurons \(0..127\)"),
        (lambda: highlight_values(gpt2_model, ioi_prompts, HighlightSpec("attention", head=4)),
         "head 4 is out of range"),
        (lambda: highlight_values(gpt2_model, ioi_prompts, HighlightSpec("attention", dest=15)),
         "dest 15 is out of range: the prompt has 15 tokens"),
        (lambda: highlight_values(dataclasses.replace(gpt2_model, runner=None, arch=None), ioi_prompts,
                                  HighlightSpec("neuron")), "needs the engine's own forward pass"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    bare = dataclasses.replace(gpt2_model, runner=None, arch=None)       # attention works without a runner
    a = highlight_values(bare, ioi_prompts, HighlightSpec("attention", layer=1, head=1))
    b = highlight_values(gpt2_model, ioi_prompts, HighlightSpec("attention", layer=1, head=1))
    np.testing.assert_allclose(a.value, b.value, atol=1e-5)


def _hooked_resid_effect(model, ps, layer: int, pos: int) -> float:
    """Denoising resid_pre at (layer, pos) with a plain bridge hook: patched − corrupt logit diff (mean)."""
    clean = _cache(model, ps.clean_tokens)
    rows = torch.arange(ps.n_pairs)

    def ld(logits):
        last = logits[:, -1]
        return (last[rows, ps.answer_ids] - last[rows, ps.wrong_ids]).mean().item()

    def patch(act, hook):
        act = act.clone()
        act[:, pos] = clean[hook.name][:, pos]
        return act

    with torch.no_grad():
        base = ld(model.bridge(ps.corrupt_tokens))
        patched = ld(model.bridge.run_with_hooks(ps.corrupt_tokens, fwd_hooks=[(hooks.resid_pre(layer), patch)]))
    return patched - base


def test_effect_values_match_a_plain_hooked_patch(gpt2_model, ioi_prompts):
    result = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="resid_pre"))
    df = effect_values(result, layer=1)
    assert list(df.pos) == list(range(ioi_prompts.n_pos)) and df.run.isna().all()
    for pos in (2, 4, 10, 14):
        assert df.value[pos] == pytest.approx(_hooked_resid_effect(gpt2_model, ioi_prompts, 1, pos), abs=1e-4)
    assert df.label.iloc[0] == "effect of resid_pre L1 · logit_diff · denoise"
    heads = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out", per_position=True, layers=(1,)))
    one = effect_values(heads, layer=1, head=2)
    np.testing.assert_allclose(one.value, heads.effect[0, :, 2].numpy())
    with pytest.raises(ValueError, match="needs a head: give one of 0, 1, 2, 3, not None"):
        effect_values(heads, layer=1)
    with pytest.raises(ValueError, match="layer 0 is not in this result; it has layers 1"):
        effect_values(heads, layer=0, head=1)
    with pytest.raises(ValueError, match="no position axis"):
        effect_values(sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out")), layer=1, head=0)


def test_spans_colour_by_sign_and_show_odd_tokens():
    df = pd.DataFrame({"pos": [0, 1, 2, 3, 4], "token": ["<b>", " ", "\n", "\t x", "y"],
                       "value": [2.0, -1.0, 0.0, np.nan, -2.0], "label": ["L0N1"] * 5})
    spans = fh.highlight_spans(df, mark=1)
    assert [s.text for s in spans] == ["<b>", "␣", "\\n", "\\t␣x", "y"]
    assert spans[0].background == "rgb(5, 48, 97)" and spans[-1].background == "rgb(103, 0, 31)"   # blue +, red −
    assert spans[2].background == "rgb(247, 247, 247)" and spans[3].background == "transparent"
    assert spans[1].mark and not spans[0].mark and spans[2].line_break
    assert spans[0].title == "0: <b> · 2" and "no value" in spans[3].title
    page = fh.highlight_html(df, mark=1)
    assert "&lt;b&gt;" in page and "<b>L0N1</b>" in page and page.count("<span") == 5 and "<br>" in page
    assert "outline" in page and "the darkest shade is |value| = 2" in page
    bars = fh.highlight_bars(df)
    assert list(bars.data[0].marker.color) == ["#2563eb", "#dc2626", "#2563eb", "#2563eb", "#dc2626"]
    assert list(bars.layout.xaxis.ticktext) == ["0: <b>", "1: ␣", "2: \\n", "3: \\t␣x", "4: y"]


# -- residual norms over pairs ----------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "neox"])
def test_norm_bands_are_the_mean_and_std_of_every_pairs_bridge_norms(tiny_models, prompts, family):
    model, ps = tiny_models[family], prompts[family]
    df = residual_norm_bands(model, ps)
    for run, tokens in (("clean", ps.clean_tokens), ("corrupt", ps.corrupt_tokens)):
        cache = _cache(model, tokens)
        for layer in range(model.n_layers):
            per_pair = cache[hooks.resid_post(layer)].norm(dim=-1).numpy()          # [pairs, pos]
            rows = df[(df.run == run) & (df.stage == "resid_post") & (df.layer == layer)].sort_values("pos")
            np.testing.assert_allclose(rows["mean"], per_pair.mean(0), rtol=1e-5)
            np.testing.assert_allclose(rows["std"], per_pair.std(0, ddof=1), rtol=1e-4, atol=1e-5)
    assert set(df.n_pairs) == {2}
    clean = df[(df.run == "clean") & (df.depth == 0)].sort_values("pos")
    assert clean.token.iloc[0] == model.to_str_tokens(ps.clean_tokens[0])[0] and "(varies)" in set(clean.token)
    assert len(df) == len(residual_norms(model, ps, pair=0))


def test_norm_bands_of_a_mixed_set_are_by_role(gpt2_model, mixed):
    df = residual_norm_bands(gpt2_model, mixed)
    assert set(df.token) == {"IO", "S2", "END"} and set(df.n_pairs) == {3}
    layer = 1
    per_pair = []
    for i, where in enumerate(mixed.role_positions()):
        n = mixed.lengths[i]
        cache = _cache(gpt2_model, mixed.clean_tokens[i:i + 1, :n])
        per_pair.append(cache[hooks.resid_post(layer)][0, where].norm(dim=-1).numpy())      # [roles]
    per_pair = np.stack(per_pair)
    rows = df[(df.run == "clean") & (df.stage == "resid_post") & (df.layer == layer)].sort_values("pos")
    np.testing.assert_allclose(rows["mean"], per_pair.mean(0), rtol=1e-5)
    np.testing.assert_allclose(rows["std"], per_pair.std(0, ddof=1), rtol=1e-4)


def test_norm_band_figure_draws_the_mean_and_the_band(gpt2_model, ioi_prompts):
    df = residual_norm_bands(gpt2_model, ioi_prompts)
    fig = norms_figure(df, pos=4)
    bands = [t for t in fig.data if t.fill == "toself"]
    lines = [t for t in fig.data if t.fill != "toself"]
    assert len(bands) == 4 and len(lines) == 4 and "mean ± std over 2 pairs" in fig.layout.title.text
    at = df[(df.run == "clean") & (df.pos == 4)].sort_values("depth")
    np.testing.assert_allclose(lines[0].y, at["mean"])
    upper = np.array(bands[0].y[:len(at)], dtype=float)
    np.testing.assert_allclose(upper, at["mean"] + at["std"])
    one = residual_norm_bands(gpt2_model, ioi_prompts.subset([0]))
    assert one["std"].isna().all() and "one pair: no band" in norms_figure(one).layout.title.text
