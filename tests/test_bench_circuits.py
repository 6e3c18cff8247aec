"""The bench rows for path and attribution patching exist, and the naive path method they time
computes the same values as run_path."""

import math

from patching import PromptSet
from patching.bench.circuits import bench_path_and_attribution, format_rows
from tests.conftest import IOI


def test_bench_rows(tiny_models):
    model = tiny_models["llama"]
    ps = PromptSet.from_pairs(model, IOI)
    rows = bench_path_and_attribution(model, ps, naive_sample=2, ig_steps=2, reference_kinds=("attn_out",))
    names = [r["name"] for r in rows]
    assert names[:4] == ["path_heads_frozen", "path_direct", "attribution_all_kinds", "attribution_ig2_all_kinds"]
    assert names[4].startswith("eap_edges_")
    for r in rows:
        assert {"name", "seconds", "reference_seconds", "ratio", "forward_equivalents", "reference"} <= set(r)
        assert r["seconds"] > 0 and r["forward_equivalents"] > 0
    for r in rows[:2]:
        assert r["max_abs_diff"] < 1e-4 and r["ratio"] > 0 and "naive" in r["reference"]
    assert "Pearson r" in rows[2]["reference"] and not math.isnan(rows[2]["ratio"])
    text = format_rows(rows)
    assert "path_direct" in text and "fwd-eq" in text
