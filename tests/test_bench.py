"""The bench runs end to end on a tiny model: ratio and max abs difference from one run."""
import io

import pytest

from patching import PromptSet
from patching.bench.sweeps import _sweep_lines, bench_one, run_bench
from tests.conftest import IOI


@pytest.mark.slow
@pytest.mark.parametrize("kind,per_position", [("resid_pre", False), ("head_out", True)])
def test_bench_one_compares_with_transformer_lens(gpt2_model, kind, per_position):
    row = bench_one(gpt2_model, PromptSet.from_pairs(gpt2_model, IOI[:1]), kind, per_position, sample=12)
    assert row["max_abs_diff"] <= 1e-4
    assert row["reference_s"] > 0 and row["ours_s"] > 0 and row["speedup"] == pytest.approx(row["reference_s"] / row["ours_s"])
    assert row["reference_sampled"] and row["sampled"] == 12
    assert row["nnsight_max_abs_diff"] <= 1e-4           # nnsight, on the same 12 indices
    assert row["nnsight_speedup"] == pytest.approx(row["nnsight_s"] / row["ours_s"])


def test_nnsight_reference_matches_a_naive_hooked_patch(gpt2_model):
    """The nnsight sweep's values are the patched logit differences (checked by hand with a hook)."""
    from patching.bench.nnsight_ref import nnsight_reference
    prompts = PromptSet.from_pairs(gpt2_model, IOI[:1])
    grid, values, *_ = nnsight_reference(gpt2_model, prompts, "head_out", True, sample=5)
    hf = gpt2_model.hf
    d_head = hf.config.n_embd // gpt2_model.n_heads
    for (layer, pos, head), value in zip(grid.tolist(), values.tolist()):
        saved = {}
        grab = hf.transformer.h[layer].attn.c_proj.register_forward_pre_hook(
            lambda mod, args: saved.__setitem__("z", args[0].clone()))
        hf(prompts.clean_tokens[:1])
        grab.remove()
        cols = slice(head * d_head, (head + 1) * d_head)

        def patch(mod, args):
            z = args[0].clone()
            z[:, pos, cols] = saved["z"][:, pos, cols]
            return (z,)
        hook = hf.transformer.h[layer].attn.c_proj.register_forward_pre_hook(patch)
        logits = hf(prompts.corrupt_tokens[:1]).logits
        hook.remove()
        expected = float(logits[0, -1, prompts.answer_ids[0]] - logits[0, -1, prompts.wrong_ids[0]])
        assert abs(value - expected) < 1e-4


@pytest.mark.slow
def test_bench_prints_a_line_per_reference(gpt2_model):
    row = bench_one(gpt2_model, PromptSet.from_pairs(gpt2_model, IOI[:1]), "resid_pre", False, sample=6)
    lines = _sweep_lines("tiny", row).splitlines()
    assert [line.split("  vs ")[1].split()[0] for line in lines] == ["TransformerLens", "nnsight"]
    assert all(line.endswith("(timed on 6 indices, scaled)") for line in lines)


def test_bench_skips_a_missing_model_with_the_reason():
    out = io.StringIO()
    assert run_bench(quick=True, models=["/no/such/model"], out=out) == []
    assert "skipped: model directory '/no/such/model' does not exist" in out.getvalue()
