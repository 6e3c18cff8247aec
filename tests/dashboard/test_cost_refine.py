"""The run card's cost preview and the Attribution tab's exact-vs-attribution section: handlers,
the scatter, and every callback called directly on the tiny GPT-2 model."""
from __future__ import annotations

import dash
import pytest
from dash import no_update

from dashboard import ids
from dashboard.tabs import exact as exact_tab
from dashboard.panel import cost as cost_panel
from patching.figures import agreement as figures_compare
from dashboard.context import Context
from dashboard.forms import Form
from patching import PatchSpec, PromptSet, sweep
from patching.methods.compare import compare_cells
from patching.methods.cost import CalibrationCache, estimate_cost
from tests.conftest import IOI
from tests.dashboard.test_dashboard_app import _ids, _text
from tests.dashboard.test_path_attribution_tabs import Progress, _prompt_args


def _form_args(tiny_name, kind="head_out", per_position=(), layers="", **over):
    clean, corrupt, answer, wrong = IOI[0]
    args = dict(model=tiny_name, clean=clean, corrupt=corrupt, answer=answer, wrong=wrong, bos=["bos"], pairs=None,
                kind=kind, metric="logit_diff", direction="denoise", per_position=list(per_position),
                layers=layers, positions="", heads="")
    args.update(over)
    return list(args.values())


def test_cost_view_counts_the_forms_sweep(registry, form, gpt2_model):
    cal = CalibrationCache()
    view = cost_panel.cost_view(registry, cal, form)
    prompts = PromptSet.from_pairs(gpt2_model, [IOI[0]])
    est = estimate_cost(gpt2_model, prompts, PatchSpec(kind="head_out", model=form.model),
                        calibration=cal.get(gpt2_model, prompts))
    assert view.text.startswith(f"≈ {est.patched_rows} patched forwards") and "on cpu, peak ≈ " in view.text
    assert not view.slow and view.suggestion == ""
    slow = cost_panel.cost_view(registry, cal, form, slow_seconds=0.0)
    assert slow.slow and "Attribution patching estimates every cell" in slow.suggestion
    bad = Form(**{**form.__dict__, "layers": "9"})
    assert cost_panel.cost_view(registry, cal, bad) == cost_panel.CostView()


def test_cost_preview_callback_and_suggestion(app, registry, store, tiny_name):
    cb = app.patchboard
    text, suggestion, hidden = cb.cost_preview(*_form_args(tiny_name))
    assert "patched forwards" in text and hidden and suggestion == ""
    per_pos, _, _ = cb.cost_preview(*_form_args(tiny_name, per_position=["per"]))
    assert per_pos != text                               # the kind's options change the estimate
    assert cb.cost_preview(*_form_args(tiny_name, layers="0-9")) == ("", "", True)
    from dashboard.actions import run_slot
    with run_slot(store.data_dir):                      # a run in progress: the estimate waits
        assert cb.cost_preview(*_form_args(tiny_name)) == (cost_panel.PAUSED, "", True)
    slow = cost_panel.register(dash.Dash(__name__, suppress_callback_exceptions=True),
                               Context(registry, store, store.data_dir), slow_seconds=0.0)
    text, suggestion, hidden = slow.cost_preview(*_form_args(tiny_name))
    assert not hidden and "run it first" in suggestion
    assert cb.attribution_first(1, "resid_pre", ["per"], 2) == (ids.TAB_ATTRIBUTION, ["resid_pre"], ["per"], 3)
    assert cb.attribution_first(0, "resid_pre", [], None) == (no_update,) * 4


def test_compare_scatter_flagged_and_refine(app, store, tiny_name, gpt2_model):
    cb = app.patchboard
    att_id, err, _ = cb.run_attribution(Progress(), 1, ["head_out", "resid_pre"], "plain", 16, [], [],
                                        *_prompt_args(tiny_name))
    assert err == ""
    fig, flagged = cb.compare_view("", att_id, "head_out")            # before any comparison: the hint
    assert fig.layout.annotations[0].text.startswith("Click 'Compare with exact patching'")
    text = cb.agreement(1, att_id, "head_out")
    assert text.startswith("Agreement with exact patching · head_out")
    fig, flagged = cb.compare_view(text, att_id, "head_out")
    names = [t.name for t in fig.data]
    assert names[0].startswith("agree (") and names[1].startswith("missed (") and names[2].startswith("invented (")
    assert sum(len(t.x) for t in fig.data[:5]) == gpt2_model.n_layers * gpt2_model.n_heads
    assert set().union(*(set(t.text) for t in fig.data[:5])) >= {"L0 H0", "L1 H3"}
    assert "Pearson r" in _text(flagged) and "flags: missed" in _text(flagged)
    # the scatter's values are the exact sweep's (kept on disk, not run again)
    run = store.get_attribution(att_id)
    prompts = PromptSet.from_pairs(gpt2_model, [IOI[0]])
    exact = sweep(gpt2_model, prompts, run.result("head_out").spec)
    kept = exact_tab.cached_exact(run, "head_out", store.data_dir)
    assert kept is not None and kept.values.allclose(exact.values, atol=1e-9)
    a = compare_cells(exact, run.result("head_out"))
    assert exact_tab.flagged_rows(a) == exact_tab.flagged_rows(
        exact_tab.compare_run(None, run, "head_out", store.data_dir, compute=False))
    # another kind shown: the line is cleared and so is the scatter
    assert cb.compare_view("", att_id, "resid_pre")[0].layout.annotations
    # refine top-3 of head_out: exact values on those cells
    status, table = cb.refine_top(1, 3, att_id, "head_out")
    assert status.startswith("Exact patching of the top 3 of 8 head_out cells by attribution")
    rows = table.children[1].children
    assert len(rows) == 3
    for r in rows:
        label = r.children[1].children
        layer, head = int(label.split()[0][1:]), int(label.split()[1][1:])
        assert float(r.children[3].children) == pytest.approx(float(exact.values[layer, head]), abs=1e-4)
    status, _ = cb.refine_top(1, 0, att_id, "head_out")
    assert "k must be a whole number from 1 to 200, not 0" in _text(status)
    status, _ = cb.refine_top(1, 3, None, "head_out")
    assert "Run attribution first" in _text(status)
    assert cb.refine_top(0, 3, att_id, "head_out") == (no_update, no_update)
    assert cb.clear_refine(att_id, "resid_pre")[0] == ""


def test_refine_rows_and_k(registry, store, tiny_name, gpt2_model):
    from patching.methods.attribution import run_attribution
    prompts = PromptSet.from_pairs(gpt2_model, IOI)
    results = run_attribution(gpt2_model, prompts, kinds=["resid_pre"])
    att_id = store.save_attribution(results, IOI, "test")
    run = store.get_attribution(att_id)
    refined, rows = exact_tab.refine_run(registry, run, "resid_pre", "4")
    assert [r["rank"] for r in rows] == [1, 2, 3, 4] and int((~refined.values.isnan()).sum()) == 4
    assert rows[0]["label"].startswith("L") and "@" in rows[0]["label"]
    for bad in ("x", 2.5, 201, None):
        with pytest.raises(ValueError, match="k must be a whole number from 1 to 200"):
            exact_tab.parse_k(bad)


def test_agreement_scatter_colours_flags():
    import torch
    from patching.core.results import PatchResult
    v = lambda vals: torch.tensor(vals, dtype=torch.float64)[..., None]    # noqa: E731
    coords = {"layer": (0, 1), "head": (0, 1)}
    base = dict(clean_baseline=v([1.0])[0], corrupt_baseline=v([0.0])[0])
    exact = PatchResult(PatchSpec(kind="head_out"), ("layer", "head"), coords, v([[1.0, 0.5], [0.0, 0.1]]), **base)
    approx = PatchResult(PatchSpec(kind="head_out"), ("layer", "head"), coords, v([[0.9, 0.0], [0.6, 0.1]]), **base)
    fig = figures_compare.agreement_scatter(compare_cells(exact, approx))
    agree, missed, invented, under, over, diag = fig.data
    assert list(missed.text) == ["L0 H1"] and list(invented.text) == ["L1 H0"]
    assert missed.marker.color == figures_compare.COLOURS["missed"] and diag.mode == "lines"
    assert fig.layout.xaxis.title.text == "exact patching effect" and len(fig.layout.shapes) == 2


def test_layout_has_the_new_pieces(app):
    present = _ids(app.layout)
    for i in (ids.COST_ESTIMATE, ids.COST_SUGGESTION, ids.COST_ATTRIBUTION_BUTTON, ids.ATTR_COMPARE_FIGURE,
              ids.ATTR_FLAGGED, ids.ATTR_REFINE_K, ids.ATTR_REFINE_BUTTON, ids.ATTR_REFINE_TABLE):
        assert i in present, i
