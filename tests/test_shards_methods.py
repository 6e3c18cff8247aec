"""Sharded path patching, attribution over many pairs and faithfulness curves, without Celery
(patching/methods/shards.py's WORKS rows): the merged shards equal the one-worker run under the
same memory budget value for value and CSV byte for byte, every shard gets work, and the parts
round-trip through JSON as a worker sends them."""
from __future__ import annotations

import json

import pytest
import torch

from patching import PromptSet
from patching.methods.attribution import AttributionSpec, attribution_csv, pair_batches, run_attribution
from patching.methods.circuit import CurveSpec, faithfulness_curve
from patching.methods.path import PathSpec, run_path
from patching.methods.shards import ShardPart, merge, plan, run_shard
from tests.conftest import IOI

TINY_MB = 0.05           # small batches: every plan has many, so every shard has some


@pytest.fixture(scope="module")
def six(gpt2_model):
    return PromptSet.from_pairs(gpt2_model, IOI * 3)


def _sharded(model, prompts, spec, n, mb=TINY_MB):
    parts = [run_shard(model, prompts, s) for s in plan(spec, n, mb)]
    parts = [ShardPart.from_json(json.loads(json.dumps(p.to_json()))) for p in parts]   # as workers send them
    assert all(bool(p.written.any()) for p in parts), "a shard had no work"
    return merge(reversed(parts))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.parametrize("spec, mb", [
    (PathSpec(receivers=("q:1.0", "k:1.1")), TINY_MB),
    (PathSpec(per_position=True, mode="direct"), 1.0),
    (PathSpec(senders=("head:0.1",), sweep="receivers", direction="noise"), TINY_MB),
], ids=["senders", "per-position-direct", "receivers-noise"])
def test_sharded_path_patching_equals_one_worker(gpt2_model, ioi_prompts, spec, mb):
    whole = run_path(gpt2_model, ioi_prompts, spec, max_memory_mb=mb)
    merged = _sharded(gpt2_model, ioi_prompts, spec, 3, mb)
    assert _same(merged.per_pair, whole.per_pair)         # NaN cells (no path) included
    assert merged.to_csv() == whole.to_csv()


@pytest.mark.parametrize("method", ["plain", "ig"])
def test_sharded_attribution_over_pair_batches_equals_one_worker(gpt2_model, six, method):
    assert len(pair_batches(gpt2_model, six, TINY_MB)) == 6          # one pair per backward here
    kinds = ("resid_pre", "head_out", "mlp_out")
    spec = AttributionSpec(kinds=kinds, method=method, steps=2, per_position=True, model=gpt2_model.name)
    whole = run_attribution(gpt2_model, six, kinds=kinds, method=method, steps=2, per_position=True,
                            max_memory_mb=TINY_MB)
    merged = _sharded(gpt2_model, six, spec, 4)
    for m, w in zip(merged, whole, strict=True):
        assert torch.equal(m.per_pair, w.per_pair) and torch.equal(m.clean_baseline, w.clean_baseline)
        assert torch.equal(m.corrupt_baseline, w.corrupt_baseline)
    assert attribution_csv(merged) == attribution_csv(whole)


def test_attribution_that_fits_one_backward_is_unchanged_by_pair_batches(gpt2_model, six):
    """All pairs fit: one batch, the run as before (every pair in one backward); a budget of one
    pair per backward gives the same values up to float rounding."""
    assert pair_batches(gpt2_model, six, 256) == [(0, 6)]
    one = run_attribution(gpt2_model, six, kinds=("head_out",), max_memory_mb=256)[0]
    split = run_attribution(gpt2_model, six, kinds=("head_out",), max_memory_mb=TINY_MB)[0]
    assert torch.allclose(one.per_pair, split.per_pair, atol=1e-5)


def test_sharded_faithfulness_curve_equals_one_worker(gpt2_model, six):
    ranked = [("L0H1", 0.9), ("MLP1", 0.5), ("L1H0", -0.4), ("ATTN1", 0.2), ("L0H2", 0.1)]
    whole = faithfulness_curve(gpt2_model, six, ranked, ablation="resample", seed=3, keep=["MLP0"],
                               max_memory_mb=TINY_MB)
    spec = CurveSpec.of(ranked, ablation="resample", seed=3, keep=("MLP0",), model=gpt2_model.name)
    merged = _sharded(gpt2_model, six, spec, 3)
    assert torch.equal(merged.per_pair, whole.per_pair)
    assert torch.equal(merged.full, whole.full) and torch.equal(merged.empty, whole.empty)
    assert merged.to_csv() == whole.to_csv()


def test_merge_refuses_a_curve_part_of_another_curve(gpt2_model, ioi_prompts):
    a = run_shard(gpt2_model, ioi_prompts, plan(CurveSpec.of(["L0H1", "MLP0"]), 2, TINY_MB)[0])
    b = run_shard(gpt2_model, ioi_prompts, plan(CurveSpec.of(["L0H1", "MLP1"]), 2, TINY_MB)[1])
    with pytest.raises(ValueError, match="shard 2/2 belongs to another faithfulness curve"):
        merge([a, b])


def test_a_shard_spec_round_trips_and_a_bad_one_is_named():
    from patching.methods.shards import Shard
    for spec in (PathSpec(receivers=("q:1.0",)), AttributionSpec(kinds=("head_out",), method="ig", steps=2),
                 CurveSpec.of([("L0H1", 0.5)], ks=(0, 1), ablation="zero")):
        shard = plan(spec, 2, 8)[1]
        assert Shard.from_dict(json.loads(json.dumps(shard.to_dict()))) == shard
    with pytest.raises(ValueError, match="a shard's spec must be one of PatchSpec, PathSpec, AttributionSpec, "
                                         "CurveSpec, not dict"):
        plan({"kind": "path"}, 2, 8)
    with pytest.raises(ValueError, match="unknown shard work 'edges'; known: sweep, path, attribution, curve"):
        Shard.from_dict({"work": "edges", "spec": {}, "index": 0, "count": 1, "max_memory_mb": 8})
    with pytest.raises(ValueError, match=r"attribution kinds \['nope'\]: choose one or more of"):
        AttributionSpec(kinds=("nope",))


@pytest.mark.parametrize("args, message", [
    (["path", "--timeout", "5"], "--timeout 5 limits a sharded run; add --shards N --redis-url URL"),
    (["path", "--shards", "2", "--redis-url", "redis://x", "--timeout", "0"], "'0' is not a time limit"),
    (["attribution", "--edges", "--shards", "2", "--redis-url", "redis://x"], "--edges runs one backward"),
    (["circuit", "--components", "L0H0", "--shards", "2", "--redis-url", "redis://x"],
     "--shards splits the ranking sweeps and the faithfulness curve; add --curve-from"),
])
def test_cli_refuses_bad_shard_flags_with_exit_2(args, message, capsys):
    from patching.cli import main
    try:
        code = main(args)
    except SystemExit as exc:                  # argparse's own refusals
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_cli_timeout_exits_124_naming_it(monkeypatch, capsys):
    """When the sharded run times out (run_sharded has cancelled its shards), the CLI says so and
    exits 124; no CSV is written."""
    from patching.cli import main
    from patching.runs import sharded
    from patching.runs.sharded import ShardTimeout

    def timed_out(*args, timeout_s=None, **kwargs):
        assert timeout_s is not None and timeout_s <= 7.5      # what is left after loading the model
        raise ShardTimeout("the sharded path-patching run did not finish in 7.5 s (1 of 2 shards done); "
                           "every shard was cancelled")
    monkeypatch.setattr(sharded, "run_sharded", timed_out)
    code = main(["path", "--clean", IOI[0][0], "--corrupt", IOI[0][1], "--answer", IOI[0][2], "--wrong", IOI[0][3],
                 "--device", "cpu", "--quiet", "--shards", "2", "--redis-url", "redis://127.0.0.1:1/0",
                 "--timeout", "7.5"])
    assert code == 124
    assert ("error: --timeout 7.5: the sharded path-patching run did not finish in 7.5 s (1 of 2 shards done); "
            "every shard was cancelled") in capsys.readouterr().err
