"""Exact vs approximate: cell-by-cell comparison with flags, Spearman, and refine (exact patching
of the top-k attribution cells only, equal to the full sweep there)."""
import pytest
import scipy.stats
import torch

from patching import PatchSpec, sweep
from patching.methods.attribution import agreement, run_attribution
from patching.methods.compare import Agreement, CellAgreement, cell_label, compare_cells, spearman
from patching.methods.refine import refine, top_cells
from patching.core.results import PatchResult


@pytest.fixture(scope="module")
def head_out(gpt2_model, ioi_prompts):
    exact = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out"))
    approx = run_attribution(gpt2_model, ioi_prompts, kinds=["head_out"])[0]
    return exact, approx


def fake(values, base=0.0, clean=1.0, kind="head_out", direction="denoise") -> PatchResult:
    """A result with given mean values on a [layer, head] grid (one pair)."""
    v = torch.tensor(values, dtype=torch.float64)
    coords = {"layer": tuple(range(v.shape[0])), "head": tuple(range(v.shape[1]))}
    corrupt, clean_b = (base, clean) if direction == "denoise" else (clean, base)
    return PatchResult(PatchSpec(kind=kind, direction=direction), ("layer", "head"), coords, v[..., None],
                       torch.tensor([clean_b], dtype=torch.float64), torch.tensor([corrupt], dtype=torch.float64))


def test_flags_follow_the_documented_thresholds():
    exact = fake([[1.0, 0.5, 0.0, 0.02], [-0.4, 0.35, 0.0, 0.2]])
    approx = fake([[0.9, 0.05, 0.5, 0.02], [0.3, 0.34, 0.0, 0.2]])
    a = compare_cells(exact, approx, k=2)
    flags = {c.cell: c.flag for c in a.cells}
    assert flags[(0, 1)] == "missed"        # 0.5 of scale 1 is large; 0.05 is small
    assert flags[(1, 0)] == "missed"        # large, opposite sign
    assert flags[(0, 2)] == "invented"      # approx 0.5 large, exact 0 small
    assert flags[(0, 0)] == flags[(1, 1)] == flags[(1, 3)] == flags[(0, 3)] == ""
    assert a.counts() == {"missed": 2, "invented": 1, "underestimated": 0, "overestimated": 0}
    assert a.scale == 1.0
    assert [c.cell for c in a.flagged()] == [(1, 0), (0, 2), (0, 1)]     # largest |exact - approx| first
    assert [c.cell for c in a.flagged("invented")] == [(0, 2)]
    df = a.to_dataframe()
    assert list(df.columns) == ["layer", "head", "label", "exact", "approx", "flag"]
    assert len(df) == 8 and set(df[df.flag == "missed"].label) == {"L0 H1", "L1 H0"}
    stricter = compare_cells(exact, approx, large=0.6, small=0.1)
    assert stricter.counts() == {"missed": 0, "invented": 0, "underestimated": 0, "overestimated": 0}


def test_a_dominant_cell_estimated_far_too_small_is_flagged_though_r_is_high():
    """Issue 17: 'r = 0.986, no cell flagged' while the dominant cell was 8.9 for an exact 23.8."""
    exact = fake([[23.8, 2.0, 1.0, 0.0], [0.5, 3.0, 0.2, 0.1]])
    approx = fake([[8.9, 0.8, 0.4, 0.0], [0.2, 1.1, 0.1, 0.0]])
    a = compare_cells(exact, approx)
    assert a.pearson > 0.98
    assert {c.cell: c.flag for c in a.cells}[(0, 0)] == "underestimated"
    assert a.counts()["underestimated"] == 1 and "1 underestimated" in a.summary()
    over = compare_cells(exact, fake([[40.0, 2.0, 1.0, 0.0], [0.5, 3.0, 0.2, 0.1]]))
    assert over.flagged()[0].flag == "overestimated"
    close = compare_cells(exact, fake([[20.0, 2.0, 1.0, 0.0], [0.5, 3.0, 0.2, 0.1]]))
    assert close.flagged() == []                                    # off by 16%: within the default 50%


def test_effects_are_measured_from_the_base_run_in_both_directions():
    exact = fake([[3.0, 2.0]], base=2.0, direction="noise")     # noise: base = the clean run
    approx = fake([[2.0, 2.0]], base=2.0, direction="noise")
    a = compare_cells(exact, approx)
    assert [(c.exact, c.approx, c.flag) for c in a.cells] == [(1.0, 0.0, "missed"), (0.0, 0.0, "")]


def test_statistics_reuse_agreement_and_spearman_matches_scipy(head_out):
    exact, approx = head_out
    a = compare_cells(exact, approx, k=5)
    ref = agreement(approx, exact, 5)
    assert (a.pearson, a.topk_overlap, a.k) == (ref["pearson"], ref["topk_overlap"], ref["k"])
    rho = scipy.stats.spearmanr(approx.values.flatten().numpy(), exact.values.flatten().numpy()).statistic
    assert a.spearman == pytest.approx(rho, abs=1e-9)
    assert len(a.cells) == exact.values.numel()
    base = exact.corrupt_value
    c = a.cells[5]
    assert c.exact == pytest.approx(float(exact.values[c.cell]) - base)
    assert c.approx == pytest.approx(float(approx.values[c.cell]) - base)
    assert "Spearman" in a.summary() and "head_out" in a.summary()


def test_spearman_handles_ties_and_constants():
    assert spearman(torch.tensor([1., 1., 2.]), torch.tensor([1., 2., 3.])) == pytest.approx(
        scipy.stats.spearmanr([1, 1, 2], [1, 2, 3]).statistic)
    assert spearman(torch.tensor([1., 1.]), torch.tensor([1., 2.])) != spearman(torch.tensor([1., 1.]),
                                                                               torch.tensor([1., 2.]))   # NaN


def test_compare_refuses_different_grids(head_out, gpt2_model, ioi_prompts):
    exact, _ = head_out
    other = run_attribution(gpt2_model, ioi_prompts, kinds=["resid_pre"])[0]
    with pytest.raises(ValueError, match=r"not the same grid; run both with the same spec"):
        compare_cells(exact, other)
    with pytest.raises(ValueError, match=r"thresholds need 0 < small <= large, not small=0.5, large=0.2"):
        compare_cells(exact, exact, large=0.2, small=0.5)
    with pytest.raises(ValueError, match="flag must be one of missed, invented, underestimated, overestimated, not 'lost'"):
        compare_cells(exact, exact).flagged("lost")
    with pytest.raises(ValueError, match="flag must be '' or one of missed, invented, underestimated, overestimated, not 'x'"):
        CellAgreement((0,), "L0", 0.0, 0.0, "x")
    with pytest.raises(ValueError, match="thresholds need"):
        Agreement("k", ("layer",), (), 0, 0, 0, 1, 1.0, large=0.1, small=0.2)


def test_cell_labels(gpt2_model, ioi_prompts):
    r = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out", per_position=True, layers=(1,), positions=(14,)))
    assert cell_label(r, (1, 14, 2)) == f"L1 @14 {ioi_prompts.str_tokens[14]!r} H2"
    n = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="neuron", layers=(0,), positions=(14,)))
    assert cell_label(n, (0, 7)) == "L0 N7"


def test_top_cells_rank_by_estimated_effect():
    approx = fake([[0.1, -0.9, 0.3], [0.0, 0.5, -0.2]], base=0.0)
    assert top_cells(approx, 3) == [(0, 1), (1, 1), (0, 2)]
    assert len(top_cells(approx, 100)) == 6
    with pytest.raises(ValueError, match="k must be a whole number >= 1, not 0"):
        top_cells(approx, 0)
    with pytest.raises(ValueError, match="k must be a whole number >= 1, not 2.5"):
        top_cells(approx, 2.5)


@pytest.mark.parametrize("kind,per_position,k", [("head_out", False, 3), ("resid_pre", False, 5),
                                                 ("head_v", True, 4)])
def test_refine_equals_the_full_sweep_on_exactly_k_cells(gpt2_model, ioi_prompts, kind, per_position, k):
    approx = run_attribution(gpt2_model, ioi_prompts, kinds=[kind], per_position=per_position)[0]
    full = sweep(gpt2_model, ioi_prompts, approx.spec)
    totals, rows = [], []
    resume = gpt2_model.runner.resume

    def counting(src, pair, *args, **kw):
        rows.append(len(pair))
        return resume(src, pair, *args, **kw)
    gpt2_model.runner.resume = counting
    try:
        refined = refine(gpt2_model, ioi_prompts, approx, k, on_progress=lambda d, t: totals.append(t))
    finally:
        del gpt2_model.runner.resume
    assert totals[-1] == sum(rows)                           # progress counts the patched forwards run
    assert sum(rows) <= k * ioi_prompts.n_pairs              # at most k patched runs per pair
    done = ~torch.isnan(refined.values)
    assert int(done.sum()) == k
    picked = top_cells(approx, k)
    for cell in picked:
        idx = tuple(refined.coords[a].index(c) for a, c in zip(refined.axes, cell))
        assert done[idx]
        assert float(refined.values[idx]) == pytest.approx(float(full.values[idx]), abs=1e-6)
    assert refined.axes == full.axes and refined.coords == full.coords


def test_sweep_over_cells_refuses_bad_cells(gpt2_model, ioi_prompts):
    with pytest.raises(ValueError, match=r"cell \(0,\) has 1 coordinates; this sweep's cells are \(layer, head\)"):
        sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out"), cells=[(0,)])
    with pytest.raises(ValueError, match=r"cell \(5, 0\): layer 5 is not in this sweep \(layer 0-1\)"):
        sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out"), cells=[(5, 0)])
    with pytest.raises(ValueError, match="cells is empty"):
        sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out"), cells=[])


# -- the CLI: --compare-exact and --refine ----------------------------------------------------------
def cli_args(model_dir, *extra):
    from tests.conftest import IOI
    clean, corrupt, answer, wrong = IOI[0]
    return ["attribution", "--model", str(model_dir), "--clean", clean, "--corrupt", corrupt, "--answer", answer,
            "--wrong", wrong, "--quiet", "--kinds", "head_out", *extra]


def test_cli_compare_exact_prints_the_flagged_cells(tiny_dirs, gpt2_model, capsys, tmp_path):
    import json
    from patching import PromptSet
    from patching.cli import main
    from tests.conftest import IOI
    out = tmp_path / "att.csv"
    assert main(cli_args(tiny_dirs["gpt2"], "--compare-exact", "--json", "--out", str(out))) == 0
    (report,) = json.loads(capsys.readouterr().out)
    prompts = PromptSet.from_pairs(gpt2_model, IOI[:1])
    approx = run_attribution(gpt2_model, prompts, kinds=["head_out"])[0]
    a = compare_cells(sweep(gpt2_model, prompts, approx.spec), approx)
    assert report["counts"] == a.counts() and report["pearson"] == pytest.approx(a.pearson)
    assert [c["label"] for c in report["flagged"]] == [c.label for c in a.flagged()]
    assert out.read_text().startswith("kind,direction,metric,layer,pos,head,token,value,normalized")
    assert main(cli_args(tiny_dirs["gpt2"], "--compare-exact")) == 0
    text = capsys.readouterr().out
    assert text.startswith("head_out: Pearson r = ") and "flags: missed = |exact| >= 0.3" in text
    assert "under- / overestimated = such a cell's estimate off by >= 50% of it" in text


def test_cli_refine_prints_k_cells(tiny_dirs, capsys):
    from patching.cli import main
    assert main(cli_args(tiny_dirs["gpt2"], "--refine", "3")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("head_out: exact patching of the top 3 attribution cells")
    assert len(lines) == 4 and all("attribution" in l and "exact" in l for l in lines[1:])
    assert main(cli_args(tiny_dirs["gpt2"], "--refine", "0")) == 2
    assert "--refine must be a whole number >= 1, not 0" in capsys.readouterr().err
