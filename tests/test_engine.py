"""Engine behaviour beyond parity: filters, multi-pair statistics, batching, skipping, neurons."""
import pytest
import torch

from patching import PatchSpec, PromptSet, sweep
from patching.model import hooks
from patching.methods.sweep import plan_coords
from tests.conftest import IOI


def test_filters_select_a_sub_block(gpt2_model, ioi_prompts):
    full = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out", per_position=True))
    part = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out", per_position=True,
                                                     layers=(1,), positions=(10, 14), heads=((1, 2), (1, 3))))
    assert part.coords == {"layer": (1,), "pos": (10, 14), "head": (2, 3)}
    assert torch.allclose(part.values, full.values[1:2][:, [10, 14]][:, :, [2, 3]], atol=1e-6)


def test_heads_filter_leaves_other_cells_empty(gpt2_model, ioi_prompts):
    r = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out", heads=((0, 1), (1, 3))))
    assert r.coords["layer"] == (0, 1) and r.coords["head"] == (1, 3)
    assert torch.isnan(r.values[0, 1]) and torch.isnan(r.values[1, 0])
    assert not torch.isnan(r.values[0, 0]) and not torch.isnan(r.values[1, 1])
    assert len(r.to_dataframe()) == 2


def test_multi_pair_keeps_per_pair_values_and_statistics(gpt2_model, ioi_prompts):
    r = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="resid_pre"))
    assert r.per_pair.shape == (2, 15, 2)
    singles = [sweep(gpt2_model, PromptSet.from_pairs(gpt2_model, [p]), PatchSpec(kind="resid_pre")) for p in IOI]
    for k, s in enumerate(singles):
        assert torch.allclose(r.per_pair[..., k], s.values, atol=1e-6)
    lo, hi = r.bootstrap_ci()                             # intervals on the paired effect
    assert (lo <= r.effect + 1e-9).all() and (r.effect <= hi + 1e-9).all()
    effect = r.per_pair - r.corrupt_baseline                # denoise: patched - corrupt, pair by pair
    assert torch.allclose(r.effect, effect.mean(-1)) and torch.allclose(r.effect, r.values - r.corrupt_value)
    assert torch.allclose(r.stderr, effect.std(-1) / 2 ** 0.5)


def test_a_cell_that_changes_nothing_has_no_interval_in_either_direction(gpt2_model, ioi_prompts):
    """Positions before the first differing token change no pair: effect, stderr and the interval
    are exactly 0, though the pairs' baselines differ (an interval on the metric would be wide)."""
    assert ioi_prompts.differing_positions()[0] > 1
    for direction in ("denoise", "noise"):
        r = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="resid_pre", direction=direction))
        assert r.per_pair[0, 1].std() > 0                              # the metric varies over pairs
        lo, hi = r.bootstrap_ci()
        assert r.effect[:, 1].abs().max() == 0 and r.stderr[:, 1].abs().max() == 0
        assert lo[:, 1].abs().max() == 0 and hi[:, 1].abs().max() == 0
        assert r.normalized_effect[:, 1].abs().max() == 0


def test_batch_size_does_not_change_values(gpt2_model, ioi_prompts):
    big = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_k", per_position=True))
    small = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_k", per_position=True), max_memory_mb=0.001)
    assert torch.allclose(big.values, small.values, atol=1e-6)


def test_positions_before_the_first_difference_report_the_base_run(gpt2_model, ioi_prompts):
    r = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="resid_pre"))
    first = ioi_prompts.differing_positions()[0]
    assert torch.equal(r.values[:, :first], torch.full_like(r.values[:, :first], r.corrupt_value))
    assert (r.values[:, first] - r.corrupt_value).abs().max() > 1e-4


def test_denoise_at_every_position_of_resid_pre_0_restores_clean(gpt2_model, ioi_prompts):
    """Patching all differing positions' block-0 input reproduces the clean run's metric."""
    r = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="resid_pre", layers=(0,)))
    diff = ioi_prompts.differing_positions()
    assert len(diff) == 1
    assert abs(float(r.values[0, diff[0]]) - r.clean_value) < 1e-5


def test_neuron_kind_matches_a_hooked_reference(gpt2_model, ioi_prompts):
    spec = PatchSpec(kind="neuron", layers=(0,), positions=(10, 14))
    r = sweep(gpt2_model, ioi_prompts, spec)
    assert r.axes == ("layer", "neuron") and r.values.shape == (1, gpt2_model.d_mlp)
    bridge = gpt2_model.bridge
    _, clean_cache = bridge.run_with_cache(ioi_prompts.clean_tokens)
    donor = clean_cache[hooks.mlp_post(0)]
    for neuron in (0, 5, 77):
        def hook(act, hook, neuron=neuron):
            act = act.clone()
            act[:, [10, 14], neuron] = donor[:, [10, 14], neuron]
            return act
        logits = bridge.run_with_hooks(ioi_prompts.corrupt_tokens, fwd_hooks=[(hooks.mlp_post(0), hook)])[:, -1]
        ld = (logits.gather(1, ioi_prompts.answer_ids[:, None]) - logits.gather(1, ioi_prompts.wrong_ids[:, None])).mean()
        assert abs(float(r.values[0, neuron]) - float(ld.detach())) < 1e-4


def test_kv_kinds_range_over_key_value_heads(tiny_models):
    model = tiny_models["llama"]
    prompts = PromptSet.from_pairs(model, IOI)
    assert sweep(model, prompts, PatchSpec(kind="head_v")).values.shape == (2, 2)
    assert sweep(model, prompts, PatchSpec(kind="head_out")).values.shape == (2, 4)
    with pytest.raises(ValueError, match=r"heads \[3\] out of range; this model/prompt has heads 0-1 \(key/value heads\)"):
        sweep(model, prompts, PatchSpec(kind="head_k", heads=((0, 3),)))


def test_resid_mid_refused_on_parallel_models(tiny_models):
    model = tiny_models["neox"]
    with pytest.raises(ValueError, match="does not exist on .*attention and MLP run in parallel"):
        sweep(model, PromptSet.from_pairs(model, IOI), PatchSpec(kind="resid_mid"))


@pytest.mark.parametrize("kwargs,message", [
    ({"kind": "resid_pre", "layers": (9,)}, r"layers \[9\] out of range; this model/prompt has layers 0-1"),
    ({"kind": "resid_pre", "positions": (15,)}, r"positions \[15\] out of range; this model/prompt has positions 0-14"),
    ({"kind": "resid_pre", "heads": ((0, 1),)}, "heads apply to head kinds, not 'resid_pre'"),
])
def test_out_of_range_filters(gpt2_model, ioi_prompts, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_coords(gpt2_model, ioi_prompts, PatchSpec(**kwargs))


def test_progress_counts_patched_forwards_from_zero_like_the_estimate(gpt2_model, ioi_prompts):
    """Progress counts what the cost estimate counts (patched forwards: live cells x pairs, the
    skipped cells not at all), and its first report, (0, total), comes before any patched forward."""
    from patching.methods.cost import Calibration, estimate_cost
    spec = PatchSpec(kind="head_out", per_position=True)
    seen = []
    sweep(gpt2_model, ioi_prompts, spec, on_progress=lambda done, total: seen.append((done, total)))
    rows = estimate_cost(gpt2_model, ioi_prompts, spec, calibration=Calibration("t", "cpu", 1, 0, 1, 1)).patched_rows
    assert rows < 2 * 15 * 4 * ioi_prompts.n_pairs          # some cells change nothing and are not run
    assert seen[0] == (0, rows) and seen[-1] == (rows, rows)
    assert all(a <= b for (a, _), (b, _) in zip(seen, seen[1:]))


def test_noise_direction_uses_the_clean_run_as_base(gpt2_model, ioi_prompts):
    r = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="resid_pre", direction="noise"))
    first = ioi_prompts.differing_positions()[0]
    assert torch.equal(r.values[:, 0], torch.full_like(r.values[:, 0], r.clean_value))
    assert abs(float(r.normalized[0, first])) < 1e-5          # noising the only difference = corrupt


def test_callable_and_registered_metrics(gpt2_model, ioi_prompts):
    r_kl = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="resid_pre", metric="kl"))
    assert r_kl.clean_value == pytest.approx(0.0, abs=1e-6) and r_kl.metric_clean_is == "lower"
    custom = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="resid_pre"),
                   metric=lambda logits, inp: logits.gather(1, inp.answer[:, None])[:, 0])
    assert custom.values.shape == (2, 15)


@pytest.mark.parametrize("kind,per_position", [("resid_pre", False), ("attn_out", False), ("head_out", True),
                                               ("head_k", False), ("head_pattern", True), ("neuron", False)])
def test_hook_fallback_matches_the_runner(tiny_models, kind, per_position):
    """Architectures without a runner go through TransformerLens hooks, batched; same numbers."""
    import dataclasses
    model = tiny_models["llama"]
    prompts = PromptSet.from_pairs(model, IOI)
    spec = PatchSpec(kind=kind, per_position=per_position, layers=(1,),
                     positions=(3, 10, 14) if per_position or kind == "neuron" else None)
    fast = sweep(model, prompts, spec)
    slow = sweep(dataclasses.replace(model, runner=None, arch=None), prompts, spec)
    assert torch.allclose(fast.values, slow.values, atol=1e-4, equal_nan=True)


def test_many_pairs_are_swept_in_groups_with_the_same_numbers(gpt2_model):
    prompts = PromptSet.from_pairs(gpt2_model, IOI * 3)
    whole = sweep(gpt2_model, prompts, PatchSpec(kind="head_out"))
    seen = []
    grouped = sweep(gpt2_model, prompts, PatchSpec(kind="head_out"), max_memory_mb=0.2,
                    on_progress=lambda d, t: seen.append((d, t)))
    assert grouped.per_pair.shape == whole.per_pair.shape == (2, 4, 6)
    assert torch.allclose(grouped.per_pair, whole.per_pair, atol=1e-6)
    assert torch.allclose(grouped.clean_baseline, whole.clean_baseline)
    assert seen[-1][0] == seen[-1][1]
