"""Inspection figures (patching/figures/lens.py): pure functions of the lens DataFrames."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from patching.figures import lens as fl
from patching.inspect import lens


@pytest.fixture(scope="module")
def acc(gpt2_model, ioi_prompts):
    return lens.logit_lens(gpt2_model, ioi_prompts, k=3)


@pytest.fixture(scope="module")
def per_layer(gpt2_model, ioi_prompts):
    return lens.logit_lens(gpt2_model, ioi_prompts, mode="per_layer")


@pytest.fixture(scope="module")
def att(gpt2_model, ioi_prompts):
    return lens.attention_patterns(gpt2_model, ioi_prompts, layer=1)


def test_token_text_shows_spaces_and_cuts():
    assert fl.token_text(" Mary") == "␣Mary"
    assert fl.token_text("\n") == "\\n"
    assert fl.token_text(" international", 6) == "␣inte…"


def test_lens_heatmap_cells_are_top_tokens_coloured_by_prob(acc):
    fig = fl.lens_heatmap(acc, "top_prob")
    hm = fig.data[0]
    assert list(hm.y) == ["embed", "L0", "L1"]
    assert len(hm.x) == 15 and hm.x[10] == "10: ' John'"
    top1 = acc[acc.top_rank == 1]
    cell = top1[(top1.label == "L1") & (top1.pos == 4)].iloc[0]
    assert hm.text[2][4] == fl.token_text(cell.top_token)
    assert hm.z[2][4] == pytest.approx(cell.top_prob)
    assert (hm.zmin, hm.zmax) == (0, 1)
    assert fig.layout.yaxis.autorange == "reversed"
    assert "answer ' Mary'" in hm.hovertemplate
    assert fig.layout.width is None                      # 15 positions: the figure fills the panel


def test_long_prompt_lens_is_sized_by_tokens_and_keeps_every_label(acc):
    """Past FIT_TOKENS positions: fixed px per token (the panel scrolls), every position ticked
    with visible odd tokens, the cell text kept (it fits the fixed column), hover in words."""
    wide = acc.assign(pos=acc.pos * 4)                  # 57 positions (the gaps are empty cells)
    wide.loc[wide.pos == 4, "token"] = "\r"
    fig = fl.lens_heatmap(wide)
    hm = fig.data[0]
    assert fig.layout.width == 57 * fl.PX_PER_TOKEN + 300
    assert len(fig.layout.xaxis.ticktext) == 57 and fig.layout.xaxis.tickmode == "array"
    assert fig.layout.xaxis.ticktext[4] == "4: \\r" and fig.layout.xaxis.tickangle == -90
    assert hm.text is not None and hm.colorbar.orientation == "h"
    assert "top token" in hm.hovertemplate and "%{customdata[5]}" in hm.hovertemplate
    many_rows = fl.lens_heatmap(pd.concat([acc.assign(label=acc.label + f"#{i}") for i in range(60)]))
    assert len(many_rows.data[0].y) == 180 and many_rows.data[0].text is None   # rows too low: hover only


def test_lens_heatmap_answer_logit_and_rank_scales(acc):
    logit = fl.lens_heatmap(acc, "answer_logit").data[0]
    assert logit.zmid == 0 and logit.zmin == -logit.zmax
    rank = fl.lens_heatmap(acc, "answer_rank").data[0]
    top1 = acc[acc.top_rank == 1]
    want = np.log10(top1[top1.label == "embed"].sort_values("pos").answer_rank.to_numpy(dtype=float))
    np.testing.assert_allclose(np.array(rank.z[0], dtype=float), want)
    assert rank.reversescale and rank.colorbar.ticktext[0] == "1"
    with pytest.raises(ValueError, match="value must be one of"):
        fl.lens_heatmap(acc, "entropy")


def test_per_layer_lens_components(per_layer):
    blocks = fl.lens_heatmap(per_layer, components="blocks").data[0]
    assert list(blocks.y) == ["embed", "L0 attn", "L0 mlp", "L1 attn", "L1 mlp"]
    heads = fl.lens_heatmap(per_layer, components="heads").data[0]
    assert list(heads.y)[:2] == ["L0H0", "L0H1"] and len(heads.y) == 8
    assert len(fl.lens_heatmap(per_layer).data[0].y) == 13
    with pytest.raises(ValueError, match="components must be one of"):
        fl.lens_heatmap(per_layer, components="neurons")


def test_dla_bars_and_head_heatmap(gpt2_model, ioi_prompts):
    df = lens.direct_logit_attribution(gpt2_model, ioi_prompts)
    bars = fl.dla_figure(df, "layer")
    assert list(bars.data[0].x) == ["embed", "L0 attn", "L0 mlp", "L1 attn", "L1 mlp", "final bias", "total"]
    assert bars.data[0].y[-1] == pytest.approx(df[df.kind == "total"].value.item())
    assert "mean over 2 pairs" in bars.layout.title.text
    hm = fl.dla_figure(df, "head").data[0]
    assert list(hm.y) == ["L0", "L1"] and list(hm.x) == ["H0", "H1", "H2", "H3"]
    heads = df[df.kind == "head"]
    assert hm.z[1][2] == pytest.approx(heads[(heads.layer == 1) & (heads["head"] == 2)].value.item())
    assert hm.zmid == 0


def test_topk_table_and_bars(gpt2_model, ioi_prompts):
    df = lens.top_k(gpt2_model, ioi_prompts, k=4)
    columns, data = fl.topk_table(df)
    assert [c["id"] for c in columns] == list(fl.TOPK_TABLE_COLUMNS)
    assert data[0]["rank"] == 1 and data[0]["pred_token"] == repr(df.pred_token.iloc[0])
    assert data[0]["prob"] == pytest.approx(df.prob.iloc[0], abs=1e-4)
    bars = fl.topk_bars(df).data[0]
    assert list(bars.x) == pytest.approx(list(df.prob))


def test_attention_grid_has_every_head_with_token_labels(att, ioi_prompts, gpt2_model):
    fig = fl.attention_grid(att)
    assert len(fig.data) == 4
    assert [a.text for a in fig.layout.annotations] == ["H0", "H1", "H2", "H3"]
    toks = gpt2_model.to_str_tokens(ioi_prompts.clean_tokens[0])
    assert fig.data[0].y[3] == f"3: {toks[3]!r}"
    z = np.array(fig.data[2].z, dtype=float)
    sel = att[att["head"] == 2]
    assert z[5, 3] == pytest.approx(sel[(sel.dest == 5) & (sel.src == 3)].value.item())
    assert np.isnan(z[3, 5])                                # causal mask: blank
    assert fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == 1
    assert len(fl.attention_grid(att, heads=[1, 3]).data) == 2


def test_attention_token_view_is_head_by_source(att):
    fig = fl.attention_token_view(att, dest=-1)
    hm = fig.data[0]
    assert list(hm.y) == ["H0", "H1", "H2", "H3"] and len(hm.x) == 15
    np.testing.assert_allclose(np.nansum(np.array(hm.z, dtype=float), axis=1), 1.0, atol=1e-5)
    assert len(fl.attention_token_view(att, dest=3).data[0].x) == 4
    with pytest.raises(ValueError, match="dest 15 is out of range"):
        fl.attention_token_view(att, dest=15)


def test_norm_lines_clean_vs_corrupt(gpt2_model, ioi_prompts):
    df = lens.residual_norms(gpt2_model, ioi_prompts)
    fig = fl.norms_figure(df, pos=-1)
    names = [t.name for t in fig.data]
    assert names == ["clean", "clean", "corrupt", "corrupt"]
    by_depth = fig.data[0]
    assert list(by_depth.x) == ["embed", "L0 mid", "L0 post", "L1 mid", "L1 post"]
    clean = df[(df.run == "clean") & (df.pos == 14)].sort_values("depth").norm
    np.testing.assert_allclose(by_depth.y, clean.to_numpy(), rtol=1e-6)
    assert len(fig.data[1].x) == 15
    with pytest.raises(ValueError, match="pos 40 is out of range"):
        fl.norms_figure(df, pos=40)
