"""The bench runs end to end on a tiny model: ratio and max abs difference from one run."""
import io

import pytest

from patching import PromptSet
from patching.bench.sweeps import bench_one, run_bench
from tests.conftest import IOI


@pytest.mark.slow
@pytest.mark.parametrize("kind,per_position", [("resid_pre", False), ("head_out", True)])
def test_bench_one_compares_with_transformer_lens(gpt2_model, kind, per_position):
    row = bench_one(gpt2_model, PromptSet.from_pairs(gpt2_model, IOI[:1]), kind, per_position, sample=12)
    assert row["max_abs_diff"] <= 1e-4
    assert row["reference_s"] > 0 and row["ours_s"] > 0 and row["speedup"] == pytest.approx(row["reference_s"] / row["ours_s"])
    assert row["reference_sampled"] and row["sampled"] == 12


def test_bench_skips_a_missing_model_with_the_reason():
    out = io.StringIO()
    assert run_bench(quick=True, models=["/no/such/model"], out=out) == []
    assert "skipped: model directory '/no/such/model' does not exist" in out.getvalue()
