"""Results draw themselves in a notebook (issue 21): `plot()` is the very figure the dashboard
draws for the same result (sweep, path, attribution, counterfactual attention), and
`_repr_html_` is a compact summary plus that figure, rendering offline (plotly.js embedded)."""
from __future__ import annotations

import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from patching import PatchSpec, PathSpec, PromptSet, counterfactual_attention, run_attribution, run_path, sweep
from patching import figures


def _dashboard_figure(result):
    """What the Results / Path tabs draw for a stored run holding `result` (default mode)."""
    from dashboard.tabs.path import path_view
    from dashboard.tabs.results import run_view
    run = SimpleNamespace(result=result, info=SimpleNamespace(id=1))
    fig = path_view(run, None)[0] if result.spec.kind == "path" else run_view(run, None, None, "png")[0]
    return _plain(fig)


def _plain(fig) -> dict:
    d = fig.to_dict()
    d["layout"].pop("shapes", None)          # the Results tab's clicked-cell outline (none here)
    return d


@pytest.fixture(scope="module")
def heads(gpt2_model, ioi_prompts):
    return sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out", per_position=True))


def test_sweep_plot_is_the_dashboard_figure(heads):
    fig = heads.plot()
    assert _plain(fig) == _dashboard_figure(heads)
    assert fig.data[0].type == "heatmap" and "normalized" in fig.data[0].colorbar.title.text
    assert any("' Mary'" in str(label) or "' John'" in str(label) for label in fig.data[0].x)   # token labels
    assert _plain(heads.plot("raw")) == _plain(figures.result_figure(heads, "raw"))


def test_equal_baselines_fall_back_to_raw_as_the_dashboard_does(gpt2_model):
    same = "When Mary and John went to the store, John gave a drink to"
    result = sweep(gpt2_model, PromptSet.single(gpt2_model, same, same, " Mary", " John"),
                   PatchSpec(kind="resid_pre"))
    assert result.display_mode() == "raw"
    assert _plain(result.plot()) == _dashboard_figure(result) == _plain(figures.result_figure(result, "raw"))


def test_path_results_plot_as_the_path_tab_draws_them(gpt2_model, ioi_prompts):
    every = run_path(gpt2_model, ioi_prompts, PathSpec(receivers=("q:1.0",)))
    senders = run_path(gpt2_model, ioi_prompts, PathSpec(senders=("head:0.1", "head:0.2"), receivers=("logits",)))
    assert _plain(every.plot()) == _dashboard_figure(every)
    assert senders.plot().data[0].type == "bar" and _plain(senders.plot()) == _dashboard_figure(senders)
    assert "Path patching" in every.plot().layout.title.text


def test_attribution_result_plot_is_titled_as_attribution(gpt2_model, ioi_prompts):
    (att,) = run_attribution(gpt2_model, ioi_prompts, kinds=["head_out"])
    assert _plain(att.plot()) == _plain(figures.result_figure(att, "normalized"))
    assert att.plot().layout.title.text.startswith("Attribution (plain)")
    assert "head_out (attribution)" in att._repr_html_()


def test_counterfactual_attention_plot_is_the_dashboards_attention_figure(gpt2_model, ioi_prompts):
    diff = counterfactual_attention(gpt2_model, ioi_prompts, 1, 2, spec=PatchSpec(kind="head_out"),
                                    index={"layer": 0, "head": 1})
    fig = diff.plot()
    arr = lambda t: t.detach().float().numpy()      # noqa: E731
    want = figures.attention_diff(arr(diff.clean), arr(diff.corrupt), arr(diff.patched), list(diff.str_tokens),
                                  title="Counterfactual attention · L1.H2 · pair 0",
                                  corrupt_tokens=list(diff.corrupt_str_tokens),
                                  patched_tokens=list(diff.patched_str_tokens))
    assert _plain(fig) == _plain(want)
    page = diff._repr_html_()
    assert "L1H2" in page and "head_out" in page and "max |patched − corrupt|" in page


def test_repr_html_summarises_and_embeds_the_figure_offline(heads):
    page = heads._repr_html_()
    summary = page[:page.index("<script")]
    for text in (heads.model_name, "head_out per position", "logit_diff", "denoise", "2",
                 f"clean {heads.clean_value:.4g}", f"corrupt {heads.corrupt_value:.4g}"):
        assert text in summary, text
    top = heads.to_dataframe().assign(size=lambda d: d["effect"].abs()).sort_values("size", ascending=False).iloc[0]
    first_row = re.search(r"<tbody>\s*<tr>(.*?)</tr>", summary, re.S).group(1)
    cells = re.findall(r"<td>(.*?)</td>", first_row)
    assert cells[:3] == [str(top["layer"]), str(top["pos"]), str(top["head"])]     # largest |effect| first
    assert len(page) > 1_000_000                                                    # plotly.js inside
    assert not re.search(r"<script[^>]*src=", page)                                 # nothing to fetch
    light = heads.to_html(include_plotlyjs="cdn")
    assert re.search(r"<script[^>]*src=\"https://cdn.plot.ly", light) and len(light) < 200_000


def test_summary_escapes_text(gpt2_model, heads):
    import dataclasses
    odd = dataclasses.replace(heads, model_name="<img src=x onerror=alert(1)>")
    assert "<img" not in odd._repr_html_()[:5000] and "&lt;img" in odd._repr_html_()[:5000]


def test_import_patching_stays_light():
    code = "import sys, patching; print(any(m.startswith(('plotly', 'patching.figures')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
