"""Figures: pure functions of results (token-labelled axes, centred diverging scale, hover,
raw/normalized, compare on one scale + difference, attention differences)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from patching import figures
from patching import PatchSpec, sweep


@pytest.fixture(scope="module")
def resid(gpt2_model, ioi_prompts):
    return sweep(gpt2_model, ioi_prompts, PatchSpec(kind="resid_pre"))


@pytest.fixture(scope="module")
def heads(gpt2_model, ioi_prompts):
    return sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out"))


@pytest.fixture(scope="module")
def heads_pos(gpt2_model, ioi_prompts):
    return sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out", per_position=True))


@pytest.fixture(scope="module")
def single(gpt2_model):
    from patching import PromptSet
    from tests.conftest import IOI
    prompts = PromptSet.from_pairs(gpt2_model, IOI[:1])
    return sweep(gpt2_model, prompts, PatchSpec(kind="head_out", direction="noise"))


def test_position_label_shows_index_and_token():
    assert figures.position_label(3, ["<s>", "When", " and", " Mary"]) == "3: ' Mary'"
    assert figures.position_label(9, ["a"]) == "9"


def test_layer_by_pos_heatmap(resid):
    fig = figures.heatmap(resid, "raw")
    hm = fig.data[0]
    assert hm.type == "heatmap"
    assert list(hm.y) == ["L0", "L1"]
    assert hm.x[10] == "10: ' John'" and len(hm.x) == 15
    assert hm.zmid == 0 and hm.zmin == -hm.zmax
    assert hm.zmax == pytest.approx(float(resid.effect.abs().max()))
    assert fig.layout.yaxis.autorange == "reversed"       # layer 0 at the top
    assert np.allclose(np.array(hm.z, dtype=float), resid.effect.numpy())     # the change, not the metric
    assert hm.colorbar.title.text == (f"effect on logit_diff<br>(patched − corrupt run)<br>"
                                      f"white = the corrupt run: {resid.corrupt_value:.3g}")


def test_hover_shows_raw_normalized_and_interval_for_multi_pair(resid):
    hm = figures.heatmap(resid).data[0]
    assert "patched" in hm.hovertemplate and "normalized" in hm.hovertemplate
    assert "95% CI of the effect" in hm.hovertemplate
    layer, pos, head, raw, norm, lo, hi, effect = hm.customdata[1][10]
    assert (layer, pos, head) == (1, 10, None)
    assert raw == pytest.approx(float(resid.values[1, 10]))
    assert norm == pytest.approx(float(resid.normalized[1, 10]))
    assert effect == pytest.approx(float(resid.effect[1, 10]))
    assert lo <= effect <= hi


def test_single_pair_hover_has_no_interval(single):
    hm = figures.heatmap(single).data[0]
    assert "CI" not in hm.hovertemplate
    assert hm.customdata[0][0][5] is None


def test_normalized_toggle(resid):
    hm = figures.heatmap(resid, "normalized").data[0]
    assert np.allclose(np.array(hm.z, dtype=float), resid.normalized_effect.numpy())
    assert hm.colorbar.title.text.startswith("effect, normalized")
    with pytest.raises(ValueError, match="mode must be one of raw, normalized"):
        figures.heatmap(resid, "log")


def test_layer_by_head_heatmap_cells_carry_layer_and_head(heads):
    hm = figures.heatmap(heads).data[0]
    assert list(hm.x) == ["H0", "H1", "H2", "H3"] and list(hm.y) == ["L0", "L1"]
    assert hm.customdata[1][2][:3] == [1, None, 2]


def test_per_position_heads_become_rows(heads_pos):
    fig = figures.heatmap(heads_pos)
    hm = fig.data[0]
    assert list(hm.y)[:5] == ["L0.H0", "L0.H1", "L0.H2", "L0.H3", "L1.H0"] and len(hm.y) == 8
    assert hm.x[10] == "10: ' John'"
    assert hm.customdata[5][10][:3] == [1, 10, 1]        # row L1.H1, position 10
    assert hm.z[5][10] == pytest.approx(float(heads_pos.effect[1, 10, 1]))
    assert fig.layout.height >= 340


def test_filtered_cells_are_gaps(gpt2_model, ioi_prompts):
    result = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out", heads=((0, 1), (1, 3))))
    hm = figures.heatmap(result).data[0]
    flat = [v for row in hm.z for v in row]
    assert flat.count(None) == 2 and len(flat) == 4


def test_compare_shares_one_scale_and_shows_difference(heads, single):
    fig = figures.compare(heads, single, "raw", labels=("#1", "#2"))
    a, b, d = fig.data
    assert a.coloraxis == b.coloraxis == "coloraxis" and d.coloraxis == "coloraxis2"
    shared = max(float(heads.effect.abs().max()), float(single.effect.abs().max()))
    assert fig.layout.coloraxis.cmax == pytest.approx(shared) and fig.layout.coloraxis.cmid == 0
    assert np.allclose(np.array(d.z, dtype=float), (heads.effect - single.effect).numpy())
    titles = [a.text for a in fig.layout.annotations]
    assert titles[0].startswith("#1:") and titles[2] == "#1 − #2"


@pytest.mark.parametrize("mode", ["raw", "normalized"])
def test_a_noise_run_draws_no_effect_as_white_and_the_cell_that_matters_strongest(gpt2_model, ioi_prompts, mode):
    """Noise: unpatched cells sit at normalized 1; drawn by the metric they were a saturated wall
    and the cell that matters was white. Drawn by the effect, both directions read alike."""
    noise = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="resid_pre", direction="noise"))
    hm = figures.heatmap(noise, mode).data[0]
    z = np.array(hm.z, dtype=float)
    assert np.allclose(z[:, 1], 0)                                  # before the difference: no change
    assert np.allclose(noise.normalized.numpy()[:, 1], 1)           # ... though normalized is 1 there
    strongest = np.unravel_index(np.nanargmax(np.abs(z)), z.shape)
    assert strongest == np.unravel_index(np.nanargmax(np.abs(noise.effect.numpy())), z.shape)
    assert "clean run" in hm.colorbar.title.text or "normalized" in hm.colorbar.title.text


def test_compare_different_axes_has_no_difference(heads, resid):
    fig = figures.compare(heads, resid)
    assert len(fig.data) == 2 and not figures.same_layout(heads, resid)


def test_attention_diff_figure():
    n = 4
    clean = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    corrupt = torch.eye(n)
    patched = (clean + corrupt) / 2
    toks = ["<s>", "A", " B", " C"]
    fig = figures.attention_diff(clean.numpy(), corrupt.numpy(), patched.numpy(), toks, title="L1.H2")
    assert len(fig.data) == 5
    assert list(fig.data[0].x) == ["0: '<s>'", "1: 'A'", "2: ' B'", "3: ' C'"]
    assert fig.data[0].z[0][1] is None                      # src after dest: masked
    assert fig.data[3].z[3][0] == pytest.approx(0.25)       # clean - corrupt
    assert fig.data[4].z[3][3] == pytest.approx((0.25 + 1) / 2 - 1)
    assert fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == 1
    assert fig.layout.coloraxis2.cmid == 0


def test_attention_diff_without_patched():
    m = np.eye(3)
    fig = figures.attention_diff(m, m, None, ["a", "b", "c"], note="needs attention.py")
    assert len(fig.data) == 3
    assert any("needs attention.py" in (a.text or "") for a in fig.layout.annotations)


def test_graph_config_exports_png_or_svg():
    assert figures.graph_config("svg")["toImageButtonOptions"]["format"] == "svg"
    assert figures.graph_config("bogus")["toImageButtonOptions"]["format"] == "png"
    assert figures.graph_config()["displaylogo"] is False


def test_empty_figure_message():
    fig = figures.empty_figure("nothing yet")
    assert fig.layout.annotations[0].text == "nothing yet" and not fig.data
    assert math.isclose(fig.layout.annotations[0].x, 0.5)


def test_attention_panels_are_labelled_by_their_own_runs_tokens_and_every_tick_shows():
    n = 30
    m = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]
    clean = ["<s>"] + [f" c{i}" for i in range(1, n)]
    corrupt = list(clean)
    corrupt[11] = " Amy"
    fig = figures.attention_diff(m, m, m, clean, corrupt_tokens=corrupt)
    clean_panel, corrupt_panel, patched_panel, diff_panel = fig.data[:4]
    assert clean_panel.x[11] == "11: ' c11'" and corrupt_panel.x[11] == "11: ' Amy'"
    assert patched_panel.x[11] == "11: ' Amy'"                   # denoise: the corrupt run, patched
    assert diff_panel.x[11] == "11: ' c11'/' Amy'"
    axes = [fig.layout[k] for k in fig.layout if k.startswith(("xaxis", "yaxis"))]
    assert axes and all(a.dtick == 1 and a.tickmode == "linear" for a in axes)
