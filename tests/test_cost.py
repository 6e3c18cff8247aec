"""Cost preview: the counts are those of the work the engine really does (counted by watching the
runner), the seconds follow the calibration exactly, and bad input names itself. Timing itself is
never asserted here (scripts and the report measure it)."""
import pytest
import torch

from patching import PatchSpec, PromptSet, sweep
from patching.methods.attribution import run_attribution
from patching.methods.cost import (Calibration, CalibrationCache, CostEstimate, _row_units, calibrate,
                           estimate_attribution_cost, estimate_cost, estimate_path_cost)
from patching.methods.path import PathSpec, run_path
from tests.conftest import IOI

UNIT = Calibration("test", "cpu", unit_seconds=1.0, step_seconds=0.0, forward_seconds=1.0, rows=1,
                   run_unit_seconds=1.0, run_step_seconds=0.0)


class Watch:
    """Counts the runner's resumed batches: calls, rows and row x half-block x position units."""

    def __init__(self, model, n_pos):
        self.model, self.n_pos = model, n_pos
        self.calls = self.rows = self.units = 0
        self.max_rows = 0
        self._resume = model.runner.resume

    def __call__(self, src, rows, layer, stage, resid, p0=0):
        assert resid.shape[1] == self.n_pos - p0
        self.calls += 1
        self.rows += len(rows)
        self.max_rows = max(self.max_rows, len(rows))
        self.units += len(rows) * _row_units(self.model.n_layers, layer, stage, self.n_pos, p0)
        return self._resume(src, rows, layer, stage, resid, p0)


def watched_sweep(monkeypatch, model, prompts, spec, **kw):
    watch = Watch(model, prompts.n_pos)
    monkeypatch.setattr(model.runner, "resume", watch)
    result = sweep(model, prompts, spec, **kw)
    monkeypatch.undo()
    return result, watch


@pytest.mark.parametrize("spec,memory", [
    (PatchSpec(kind="resid_pre"), None),
    (PatchSpec(kind="resid_mid", layers=(1,)), None),
    (PatchSpec(kind="attn_out"), 0.05),
    (PatchSpec(kind="mlp_out", positions=(3, 10, 14)), None),
    (PatchSpec(kind="head_out"), None),
    (PatchSpec(kind="head_k", per_position=True), 0.05),
    (PatchSpec(kind="head_pattern", per_position=True, heads=((1, 2),)), None),
    (PatchSpec(kind="neuron", layers=(0,), positions=(10, 14)), None),
])
def test_counts_match_the_work_the_sweep_does(monkeypatch, gpt2_model, ioi_prompts, spec, memory):
    est = estimate_cost(gpt2_model, ioi_prompts, spec, calibration=UNIT, max_memory_mb=memory)
    result, watch = watched_sweep(monkeypatch, gpt2_model, ioi_prompts, spec, max_memory_mb=memory)
    n_pairs, full = ioi_prompts.n_pairs, 2 * gpt2_model.n_layers * ioi_prompts.n_pos
    assert est.patched_rows == watch.rows
    assert est.batches == watch.calls
    assert est.forward_equivalents == pytest.approx(watch.units / full + 2 * n_pairs)
    assert est.cells == result.values.numel()
    computed = int((~torch.isnan(result.values)).sum())
    assert est.patched_rows == (computed - est.skipped_cells) * n_pairs
    assert est.reference_forwards == computed * n_pairs + 2 * n_pairs
    assert est.forward_equivalents < est.reference_forwards          # resuming is cheaper
    assert est.batch_bytes > 0 and est.cache_bytes > 0
    # with unit cost 1 per unit and no fixed cost, seconds are the work in units exactly
    assert est.seconds == pytest.approx(est.forward_equivalents * full)


def test_skipped_cells_are_those_before_the_first_differing_token(gpt2_model, ioi_prompts):
    est = estimate_cost(gpt2_model, ioi_prompts, PatchSpec(kind="resid_pre"), calibration=UNIT)
    first = ioi_prompts.differing_positions()[0]
    # layer 0 differs only at the differing tokens; later layers from the first one on
    diff = ioi_prompts.differing_positions()
    live = len(diff) + (gpt2_model.n_layers - 1) * (ioi_prompts.n_pos - first)
    assert est.skipped_cells == est.cells - live
    assert est.patched_rows == live * ioi_prompts.n_pairs


def test_chosen_cells_are_counted_like_a_refine_run(monkeypatch, gpt2_model, ioi_prompts):
    cells = [(0, 1), (1, 3), (1, 0)]
    est = estimate_cost(gpt2_model, ioi_prompts, PatchSpec(kind="head_out"), calibration=UNIT, cells=cells)
    _, watch = watched_sweep(monkeypatch, gpt2_model, ioi_prompts, PatchSpec(kind="head_out"), cells=cells)
    assert est.patched_rows == watch.rows == 3 * ioi_prompts.n_pairs
    assert est.cells == gpt2_model.n_layers * gpt2_model.n_heads


def test_seconds_add_the_fixed_cost_per_half_block_step(gpt2_model, ioi_prompts):
    spec = PatchSpec(kind="head_out")
    per_unit = estimate_cost(gpt2_model, ioi_prompts, spec, calibration=UNIT)
    fixed = estimate_cost(gpt2_model, ioi_prompts, spec,
                          calibration=Calibration("t", "cpu", 0.0, 1.0, 1.0, 1, 0.0, 1.0))
    # head_out resumes after attention (stage mid): 2 * n_layers - (2 * layer + 1) steps per batch,
    # one batch per layer here, plus 2 * n_layers steps for each of the two cached runs
    L = gpt2_model.n_layers
    assert fixed.batches == L
    assert fixed.seconds == sum(2 * L - (2 * l + 1) for l in range(L)) + 4 * L
    assert per_unit.seconds > 0


def test_calibration_is_measured_and_cached_per_model(gpt2_model, ioi_prompts):
    cal = calibrate(gpt2_model, ioi_prompts, rows=8, repeat=1)
    assert cal.unit_seconds > 0 and cal.run_unit_seconds > 0 and cal.forward_seconds > 0 and cal.device == "cpu"
    cache = CalibrationCache()
    assert cache.get(gpt2_model, ioi_prompts) is cache.get(gpt2_model, ioi_prompts)


def test_attribution_estimate(gpt2_model, ioi_prompts):
    results = run_attribution(gpt2_model, ioi_prompts)
    est = estimate_attribution_cost(gpt2_model, ioi_prompts, calibration=UNIT)
    cells = sum(r.values.numel() for r in results)
    assert est.cells == cells
    assert est.forward_equivalents == 3 * ioi_prompts.n_pairs
    assert est.reference_forwards == (cells + 2) * ioi_prompts.n_pairs
    ig = estimate_attribution_cost(gpt2_model, ioi_prompts, method="ig", steps=8, calibration=UNIT)
    assert ig.forward_equivalents == (2 + 2 * 8) * ioi_prompts.n_pairs
    assert ig.seconds > est.seconds
    assert "attribution of" in est.text()


def test_path_estimate_counts_live_senders(gpt2_model, ioi_prompts):
    for spec in (PathSpec(receivers=("logits",)), PathSpec(receivers=("q:1.0", "k:1.1")), PathSpec(receivers=("mlp:1",), mode="direct")):
        totals = []
        run_path(gpt2_model, ioi_prompts, spec, on_progress=lambda d, t: totals.append(t))
        est = estimate_path_cost(gpt2_model, ioi_prompts, spec, calibration=UNIT)
        assert est.patched_rows == totals[-1] * ioi_prompts.n_pairs
        assert est.reference_forwards == (2 * est.cells + 2) * ioi_prompts.n_pairs
        assert 0 < est.forward_equivalents < est.reference_forwards


def test_fallback_model_counts_full_forwards(gpt2_model, ioi_prompts, monkeypatch):
    import dataclasses
    no_runner = dataclasses.replace(gpt2_model, runner=None)
    est = estimate_cost(no_runner, ioi_prompts, PatchSpec(kind="head_out"), calibration=UNIT)
    cells = gpt2_model.n_layers * gpt2_model.n_heads
    assert est.patched_rows == cells * ioi_prompts.n_pairs
    assert est.forward_equivalents == est.reference_forwards == (cells + 2) * ioi_prompts.n_pairs


def test_text_and_dict():
    est = CostEstimate("sweep", "resid_pre", "cpu", 1, 60, 1240, 0, 4, 96.0, 1242, "TL", 4.2,
                       150_000_000, 30_000_000)
    assert est.text() == ("≈ 1,240 patched forwards (≈ 96 forward-equivalents; TransformerLens ≈ 1,242), "
                          "≈ 4.2 s on cpu, peak ≈ 172 MB")
    d = est.to_dict()
    assert d["peak_bytes"] == 180_000_000 and d["speedup"] == pytest.approx(1242 / 96)
    assert not est.slow
    assert CostEstimate("sweep", "resid_pre", "cpu", 1, 60, 1240, 0, 4, 96.0, 1242, "TL", 61.0, 0, 0).slow


@pytest.mark.parametrize("kwargs,match", [
    (dict(analysis="exact"), "analysis must be one of sweep, path, attribution, not 'exact'"),
    (dict(patched_rows=-1), "patched_rows must be a whole number >= 0, not -1"),
    (dict(seconds=float("nan")), "seconds must be >= 0"),
])
def test_estimate_validates_itself(kwargs, match):
    base = dict(analysis="sweep", kind="resid_pre", device="cpu", n_pairs=1, cells=1, patched_rows=1,
                skipped_cells=0, batches=1, forward_equivalents=1.0, reference_forwards=3, reference="",
                seconds=1.0, cache_bytes=0, batch_bytes=0)
    with pytest.raises(ValueError, match=match):
        CostEstimate(**{**base, **kwargs})


def test_bad_input_is_named(gpt2_model, ioi_prompts):
    with pytest.raises(ValueError, match="unit_seconds must be >= 0 seconds, not -1"):
        Calibration("m", "cpu", -1, 0, 0, 1)
    with pytest.raises(ValueError, match=r"device 'cuda': the estimate is calibrated where the model is loaded \(cpu\)"):
        estimate_cost(gpt2_model, ioi_prompts, PatchSpec(kind="resid_pre"), device="cuda", calibration=UNIT)
    with pytest.raises(ValueError, match=r"layers \[9\] out of range"):
        estimate_cost(gpt2_model, ioi_prompts, PatchSpec(kind="resid_pre", layers=(9,)), calibration=UNIT)
    with pytest.raises(ValueError, match=r"cell \(0, 99\): pos 99 is not in this sweep"):
        estimate_cost(gpt2_model, ioi_prompts, PatchSpec(kind="resid_pre"), calibration=UNIT, cells=[(0, 99)])
    with pytest.raises(ValueError, match="method must be one of plain, ig, not 'eap'"):
        estimate_attribution_cost(gpt2_model, ioi_prompts, method="eap", calibration=UNIT)


def test_more_pairs_than_one_group_are_counted_per_group(monkeypatch, gpt2_model):
    prompts = PromptSet.from_pairs(gpt2_model, IOI * 3)
    spec = PatchSpec(kind="resid_pre", layers=(1,))
    est = estimate_cost(gpt2_model, prompts, spec, calibration=UNIT, max_memory_mb=0.05)
    _, watch = watched_sweep(monkeypatch, gpt2_model, prompts, spec, max_memory_mb=0.05)
    assert est.patched_rows == watch.rows and est.batches == watch.calls


# -- the CLI: --dry-run ----------------------------------------------------------------------------
def cli_args(model_dir, command, *extra):
    from tests.conftest import IOI as pairs
    clean, corrupt, answer, wrong = pairs[0]
    return [command, "--model", str(model_dir), "--clean", clean, "--corrupt", corrupt, "--answer", answer,
            "--wrong", wrong, "--quiet", *extra]


def test_cli_dry_run_prints_the_estimate_and_runs_nothing(tiny_dirs, capsys, monkeypatch):
    import json
    import patching.methods.sweep
    from patching.cli import main

    def no_sweep(*a, **k):
        raise AssertionError("--dry-run must not run the sweep")
    monkeypatch.setattr(patching.methods.sweep, "sweep", no_sweep)
    assert main(cli_args(tiny_dirs["gpt2"], "sweep", "--kind", "resid_pre,head_out", "--dry-run")) == 0
    out = capsys.readouterr().out
    assert out.startswith("resid_pre: ≈ ") and "\nhead_out: ≈ " in out and "total: ≈ " in out
    assert "patched forwards" in out and "on cpu, peak ≈ " in out
    assert main(cli_args(tiny_dirs["gpt2"], "sweep", "--kind", "head_out", "--dry-run", "--json")) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["kind"] == "head_out" and row["patched_rows"] == 2 * 4 and row["reference_forwards"] == 8 + 2
    assert main(cli_args(tiny_dirs["gpt2"], "attribution", "--dry-run", "--json")) == 0
    (att,) = json.loads(capsys.readouterr().out)
    assert att["analysis"] == "attribution" and att["forward_equivalents"] == 3.0
    assert main(cli_args(tiny_dirs["gpt2"], "path", "--receivers", "logits", "--dry-run")) == 0
    assert capsys.readouterr().out.startswith("path: ≈ 8 patched forwards")


def test_cli_dry_run_bad_input_exits_2(tiny_dirs, capsys):
    from patching.cli import main
    assert main(cli_args(tiny_dirs["gpt2"], "sweep", "--kind", "resid_pre", "--layers", "7", "--dry-run")) == 2
    assert "layers [7] out of range" in capsys.readouterr().err


def test_a_sweeps_own_cost_is_calibrated_and_added_once_per_sweep(gpt2_model, ioi_prompts):
    """Small runs are mostly what a sweep does besides its forwards (plan, metric, provenance):
    the calibration measures it (a one-cell sweep less its forwards' estimate) and the estimate
    adds it once, whatever the kind or the number of batches."""
    import dataclasses
    cal = calibrate(gpt2_model, ioi_prompts, repeat=2)
    assert cal.sweep_seconds >= 0
    for spec in (PatchSpec(kind="resid_pre"), PatchSpec(kind="head_out", per_position=True)):
        with_it = estimate_cost(gpt2_model, ioi_prompts, spec, calibration=dataclasses.replace(UNIT, sweep_seconds=7.0))
        without = estimate_cost(gpt2_model, ioi_prompts, spec, calibration=UNIT)
        assert with_it.batches > 1 and with_it.seconds == pytest.approx(without.seconds + 7.0)
    with pytest.raises(ValueError, match="sweep_seconds must be >= 0"):
        dataclasses.replace(UNIT, sweep_seconds=-1.0)


@pytest.mark.skipif(not __import__("os").environ.get("PATCHBOARD_TIMING_TESTS"),
                    reason="timing: set PATCHBOARD_TIMING_TESTS=1 on a machine that is not shared (under loads "
                           "of 12-20 on 2 cores one load spike on either side moves the ratio 0.05x-4x)")
@pytest.mark.parametrize("spec", [PatchSpec(kind="head_out", per_position=True), PatchSpec(kind="resid_pre")])
def test_the_estimate_is_within_2x_of_the_sweep_timed_in_the_same_process(gpt2_model, ioi_prompts, spec):
    """The estimate's model (calibrated per-unit, per-step and per-sweep costs) against the sweep
    it prices, both timed here one after the other, best of several (issue #17 item 14: within
    2x). Not a speed bound: both sides run under whatever load the machine has; on a shared
    machine a load spike can still land on one side, so the comparison is made afresh up to three
    times — a model that is off (before the per-sweep cost was calibrated, a small run was
    estimated at a tenth of its time) fails all three."""
    import time
    ratios = []
    for _ in range(3):
        cal = calibrate(gpt2_model, ioi_prompts)
        est = estimate_cost(gpt2_model, ioi_prompts, spec, calibration=cal).seconds
        sweep(gpt2_model, ioi_prompts, spec)
        measured = []
        for _ in range(5):
            start = time.perf_counter()
            sweep(gpt2_model, ioi_prompts, spec)
            measured.append(time.perf_counter() - start)
        ratios.append(est / min(measured))
        if 0.5 <= ratios[-1] <= 2.0:
            break
    assert 0.5 <= ratios[-1] <= 2.0, ratios
