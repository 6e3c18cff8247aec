"""One colour and hover convention across the figures (issue #17 item 13): blue = positive /
towards clean everywhere, a diverging colour bar centred at 0 on every difference panel, raw
scales that say what white is, byte-fragment tokens kept apart, hover text in words, image
exports named by run."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from patching import PatchSpec, PromptSet, sweep
from patching import figures
from patching.figures import neurons as fn
from patching.inspect import neurons as N
from patching.inspect import weights as W
from tests.conftest import IOI

BLUE_END = "rgb(5,48,97)"         # RdBu's positive end as plotly resolves it


def _resolved(trace_or_axis) -> list:
    """The colour scale as plotly resolves it (a name becomes its list of stops)."""
    scale = trace_or_axis.colorscale
    return [tuple(s) for s in scale]


def _positive_end(scale, reversed_=False) -> str:
    return scale[0][1] if reversed_ else scale[-1][1]


@pytest.fixture(scope="module")
def acts(gpt2_model):
    texts = ["When Mary and John went to the store", "Paris is a city in the country of France",
             "Tom, Anna, Sarah went to the school"]
    return N.collect_activations(gpt2_model, N.encode_texts(gpt2_model, texts, ["a", "b", "c"]), batch_size=3)


def test_neuron_profile_is_blue_for_positive_activations(acts):
    hm = fn.neuron_profile_heatmap(N.neuron_profile(acts, 1, 7)).data[0]
    assert not hm.reversescale                                   # it was reversed: red = positive
    assert _positive_end(_resolved(hm)) == BLUE_END and hm.zmid == 0
    assert "activation" in hm.colorbar.title.text and "blue +" in hm.colorbar.title.text
    assert hm.hovertemplate.startswith("activation %{z:.4f}")


def test_rank_k_difference_has_a_diverging_colour_bar_centred_at_zero(gpt2_model):
    df = W.rank_k_pattern(gpt2_model, PromptSet.from_pairs(gpt2_model, IOI), 1, 2, 1)
    fig = fn.rank_k_pattern_figure(df)
    diff = fig.data[2]
    assert diff.coloraxis == "coloraxis2"
    ax = fig.layout.coloraxis2
    assert ax.cmid == 0 and ax.cmin == -ax.cmax and ax.showscale is not False
    assert ax.colorbar.title.text.startswith("rank 1 − original")
    assert _positive_end(_resolved(ax)) == BLUE_END
    assert "from %{y}" in diff.hovertemplate and "dest" not in diff.hovertemplate


def test_byte_fragment_tokens_stay_apart_in_the_svd_view():
    from patching import load_model
    model = load_model("default")
    ids = model.tokenizer.encode("’—")                        # 0xE2 0x80 0x99 0xE2 0x80 0x94
    assert [W.token_string(model.tokenizer, i) for i in ids] == \
        ["<0xE2>", "<0x80>", "<0x99>", "<0xE2>", "<0x80>", "<0x94>"]
    df = pd.DataFrame({"circuit": "ov", "layer": 0, "head": 0, "label": "L0H0", "direction": 0,
                       "singular_value": 1.0, "side": ["output"] * 4, "matrix": "unembed",
                       "rank": [1, 2, 3, 4], "token_id": [5, 6, 7, 8],
                       "token": ["\ufffd", "\ufffd", " a", "<0xE2>"], "score": [4.0, 3.0, 2.0, 1.0]})
    bars = fn.singular_tokens_figure(df).data[0]
    assert len(set(bars.y)) == 4                                # not merged into one '�' bar
    assert "token id %{customdata}" in bars.hovertemplate


def test_singular_tokens_of_the_shipped_model_have_no_replacement_character():
    from patching import load_model
    df = W.singular_tokens(load_model("default"), 0, 0, "ov", n_dirs=3, k=40)
    assert not df.token.str.contains("\ufffd").any()


def test_cluster_hover_is_written_for_people(acts):
    fig = fn.cluster_scatter(N.cluster_prompts(acts, 1, -1, method="pca"))
    for trace in fig.data:
        assert "=" not in trace.hovertemplate and trace.hovertemplate.startswith("prompt %{customdata[0]}")


def test_raw_colour_bar_names_the_unpatched_value(gpt2_model, ioi_prompts):
    for direction, base in (("denoise", "corrupt"), ("noise", "clean")):
        result = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out", direction=direction))
        hm = figures.heatmap(result, "raw").data[0]
        value = result.corrupt_value if base == "corrupt" else result.clean_value
        assert hm.zmid == 0 and hm.zmin == -hm.zmax               # white = the unpatched run
        assert hm.colorbar.title.text.endswith(f"white = the {base} run: {value:.3g}")
        assert _positive_end(_resolved(hm)) == BLUE_END


def test_attention_difference_panels_are_centred_and_worded():
    m = np.tril(np.full((3, 3), 1 / 3))
    fig = figures.attention_diff(m, m * 0.5, m * 0.9, ["<s>", " a", " b"], direction="noise")
    ax = fig.layout.coloraxis2
    assert ax.cmid == 0 and ax.cmin == -ax.cmax and "0 = no change" in ax.colorbar.title.text
    assert _positive_end(_resolved(ax)) == BLUE_END
    titles = [a.text for a in fig.layout.annotations]
    assert "patched − clean (the patch's change)" in titles      # noise: the patched run is the clean one
    assert fig.data[0].hovertemplate.startswith("attention %{z:.3f}")
    diff = np.array([[v if v is not None else np.nan for v in row] for row in fig.data[4].z])
    assert np.nanmax(np.abs(diff)) == pytest.approx(1 / 3 - 0.9 / 3)      # patched − clean, not − corrupt


def test_image_exports_are_named_by_run(gpt2_model, ioi_prompts):
    from dashboard.tabs.results import export_name, run_view
    result = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out", direction="noise"))
    run = SimpleNamespace(info=SimpleNamespace(id=7), result=result)
    assert export_name(run) == "patchboard-run7-head_out-noise"
    _, config, _, _ = run_view(run, None, "raw", "svg")
    assert config["toImageButtonOptions"]["filename"] == "patchboard-run7-head_out-noise"
    assert config["toImageButtonOptions"]["format"] == "svg"
