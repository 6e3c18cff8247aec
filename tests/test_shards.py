"""Sharded sweeps without Celery (patching/methods/shards.py): the merged shards equal the
one-worker sweep value for value and CSV byte for byte; the work is dealt evenly; merge refuses
what is not one whole sweep."""
from __future__ import annotations

import contextlib

import pytest
import torch

from patching import PatchSpec, PromptSet, sweep
from patching.methods.shards import Shard, ShardPart, deal, merge, plan, run_shard
from patching.methods.sweep import batch_plan, patch_context, plan_coords
from tests.conftest import IOI

SPECS = [PatchSpec(kind="resid_pre"), PatchSpec(kind="head_out", per_position=True),
         PatchSpec(kind="mlp_out", direction="noise", metric="kl"), PatchSpec(kind="head_v")]


def _sharded(model, prompts, spec, n, mb):
    parts = [run_shard(model, prompts, s) for s in plan(spec, n, mb)]
    return merge(reversed(parts)), parts           # merge takes the parts in any order


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-{s.per_position}-{s.direction}")
@pytest.mark.parametrize("n", [2, 3])
def test_merged_shards_equal_the_one_worker_sweep_exactly(gpt2_model, ioi_prompts, spec, n):
    whole = sweep(gpt2_model, ioi_prompts, spec, max_memory_mb=64)
    merged, parts = _sharded(gpt2_model, ioi_prompts, spec, n, 64)
    assert torch.equal(merged.per_pair.isnan(), whole.per_pair.isnan())
    assert torch.equal(merged.per_pair.nan_to_num(), whole.per_pair.nan_to_num())
    assert merged.to_csv() == whole.to_csv()
    # a batch is never split (that would change the sums), so a shard works when there are batches
    # enough: here at least one per layer
    assert sum(bool(p.written.any()) for p in parts) >= min(n, gpt2_model.n_layers)


def test_small_batches_and_pair_groups_merge_exactly(gpt2_model):
    """A budget so small that the pairs are swept in groups and every layer in many batches: the
    shards deal out each group's batches and still merge to the one-worker values."""
    prompts = PromptSet.from_pairs(gpt2_model, IOI * 3)
    spec = PatchSpec(kind="head_out", per_position=True)
    whole = sweep(gpt2_model, prompts, spec, max_memory_mb=0.2)
    merged, parts = _sharded(gpt2_model, prompts, spec, 4, 0.2)
    assert torch.equal(merged.per_pair, whole.per_pair)
    assert merged.to_csv() == whole.to_csv()
    owners = sum(p.written.int() for p in parts)
    assert int(owners.max()) >= 1 and bool((owners >= 1).all())


def test_batches_are_dealt_evenly_by_cost(gpt2_model, ioi_prompts):
    """Each shard's cost (rows x layers resumed) is within the largest batch of the others'."""
    spec = PatchSpec(kind="head_out", per_position=True)
    axes, coords = plan_coords(gpt2_model, ioi_prompts, spec)
    from patching.methods.pair import CachedPair
    from metrics import get_metric
    pair = CachedPair.run(gpt2_model.runner, ioi_prompts, get_metric("logit_diff"), "denoise")
    from patching.kinds import KINDS
    ctx = patch_context(gpt2_model, ioi_prompts, spec, pair.base, pair.donor)
    steps = batch_plan(gpt2_model, ioi_prompts, spec, KINDS[spec.kind], axes, coords, ctx, 0.05 * 2**20)
    L = gpt2_model.n_layers
    cost = {(s, b): len(p) * (L - st.layer) for s, st in enumerate(steps) for b, p in enumerate(st.parts)}
    dealt = deal(steps, L, 3)
    assert sorted(u for share in dealt for u in share) == sorted(cost)         # each batch exactly once
    loads = [sum(cost[u] for u in share) for share in dealt]
    assert max(loads) - min(loads) <= max(cost.values())


def test_progress_counts_only_the_shards_own_work(gpt2_model, ioi_prompts):
    seen = []
    part = run_shard(gpt2_model, ioi_prompts, plan(PatchSpec(kind="resid_pre"), 2, 64)[1],
                     on_progress=lambda d, t: seen.append((d, t)))
    # progress counts patched forwards (cells x pairs); shard 2 of 2 fills no unchanged cells, so
    # every value it wrote is one forward
    assert seen[-1][0] == seen[-1][1] == int(part.written.sum())


def test_a_part_round_trips_through_json_exactly(gpt2_model, ioi_prompts):
    import json
    part = run_shard(gpt2_model, ioi_prompts, plan(PatchSpec(kind="head_out"), 2, 64)[0], worker="w1@h")
    back = ShardPart.from_json(json.loads(json.dumps(part.to_json())))
    assert torch.equal(back.written, part.written) and back.worker == "w1@h"
    assert torch.equal(back.result.per_pair.nan_to_num(), part.result.per_pair.nan_to_num())
    assert back.shard == part.shard


def test_merge_refuses_a_missing_or_repeated_shard(gpt2_model, ioi_prompts):
    parts = [run_shard(gpt2_model, ioi_prompts, s) for s in plan(PatchSpec(kind="resid_pre"), 3, 64)]
    with pytest.raises(ValueError, match=r"shard parts \[1, 3\] of 3: each shard 1-3 must come once"):
        merge([parts[0], parts[2]])
    with pytest.raises(ValueError, match="must come once"):
        merge([parts[0], parts[0], parts[1], parts[2]])


def test_merge_refuses_shards_that_planned_different_batches(gpt2_model, ioi_prompts):
    """Shards run under different budgets cut different batches: merge names the problem instead
    of returning a sweep with holes or cells computed twice."""
    spec = PatchSpec(kind="head_out", per_position=True)
    a = run_shard(gpt2_model, ioi_prompts, Shard(spec, 0, 2, 0.5))
    b = run_shard(gpt2_model, ioi_prompts, Shard(spec, 1, 2, 64.0))
    with pytest.raises(ValueError, match=r"different memory budgets \(0.5, 64 MB\)"):
        merge([a, b])
    other = run_shard(gpt2_model, ioi_prompts, Shard(spec, 1, 3, 0.5))     # dealt for 3 shards, not 2
    with pytest.raises(ValueError, match="computed by no shard|another shard computed too"):
        merge([a, ShardPart(Shard(spec, 1, 2, 0.5), other.result, other.written)])


def test_merge_refuses_parts_of_another_sweep(gpt2_model, ioi_prompts):
    a = run_shard(gpt2_model, ioi_prompts, plan(PatchSpec(kind="resid_pre"), 2, 64)[0])
    b = run_shard(gpt2_model, ioi_prompts, plan(PatchSpec(kind="resid_pre", direction="noise"), 2, 64)[1])
    with pytest.raises(ValueError, match="shard 2/2 belongs to another sweep"):
        merge([a, b])


@pytest.mark.parametrize("kwargs, message", [
    ({"index": 2, "count": 2}, "shard index must be a whole number from 0 to 1, not 2"),
    ({"count": 0}, "shard count must be a whole number from 1 to 256, not 0"),
    ({"max_memory_mb": 0}, "memory budget must be a positive number of MB, not 0"),
    ({"max_memory_mb": float("nan")}, "not nan"),
])
def test_a_bad_shard_names_the_value(kwargs, message):
    args = {"spec": PatchSpec(kind="resid_pre"), "index": 0, "count": 2, "max_memory_mb": 64.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        Shard(**args)


def test_plan_refuses_a_bad_count():
    with pytest.raises(ValueError, match="--shards must be a whole number from 1 to 256, not 0"):
        plan(PatchSpec(kind="resid_pre"), 0)


def _shard_task(prompts, shard):
    from patching.runs.sharded import payload
    return payload(prompts, shard, "run-1")


def test_a_worker_records_its_shard_as_a_job(gpt2_model, ioi_prompts, tmp_path):
    from patching.runs.sharded import execute_shard
    from patching.runs.store import RunStore
    store = RunStore(tmp_path)                         # empty (falsy by len): still recorded
    shard = plan(PatchSpec(kind="resid_pre", model="tiny"), 2, 64)[1]
    reports = []
    out = execute_shard(_shard_task(ioi_prompts, shard), lambda name: gpt2_model,
                        lambda d, t: reports.append((d, t)), lambda: False, store, "w@h")
    part = ShardPart.from_json(out)
    assert part.worker == "w@h" and part.shard == shard and reports[-1][0] == reports[-1][1]
    job = store.jobs(1)[0]
    assert (job.kind, job.label, job.status, job.model) == ("sweep", "resid_pre · shard 2/2", "done", "tiny")


def test_a_cancelled_shard_stops_and_is_recorded_cancelled(gpt2_model, ioi_prompts, tmp_path):
    from patching.runs.jobs import JobCancelled
    from patching.runs.sharded import execute_shard
    from patching.runs.store import RunStore
    store = RunStore(tmp_path)
    shard = plan(PatchSpec(kind="head_out", per_position=True), 2, 64)[0]
    with pytest.raises(JobCancelled, match="shard 1/2 cancelled"):
        execute_shard(_shard_task(ioi_prompts, shard), lambda name: gpt2_model, lambda d, t: None,
                      lambda: True, store)
    assert store.jobs(1)[0].status == "cancelled"


class _FakeTask:
    def __init__(self, n):
        self.id, self.revoked = f"t{n}", False

    def revoke(self):
        self.revoked = True


class _FakeCelery:
    """send_task only: what `_Run.retry` uses."""
    def __init__(self):
        self.sent = []

    def send_task(self, name, args):
        self.sent.append((name, args))
        return _FakeTask(len(self.sent))


def test_a_lost_shard_is_sent_again_then_the_run_fails_naming_why(ioi_prompts):
    from patching.runs.sharded import SHARD_TASK, ShardFailed, _Run
    capp = _FakeCelery()
    run = _Run(capp, ioi_prompts, plan(PatchSpec(kind="resid_pre"), 2, 64), retries=2)
    run.tasks = {0: _FakeTask(0), 1: _FakeTask(1)}
    first = run.tasks[1]
    run.retry(1, "its worker w2@h stopped answering (3 pings)")
    assert first.revoked and capp.sent[-1][0] == SHARD_TASK and capp.sent[-1][1][0]["shard"]["index"] == 1
    run.retry(1, "its process on w1@h died (WorkerLostError)")
    assert run.progress.retried == 2 and "2 retried" in run.progress.line()
    with pytest.raises(ShardFailed, match=r"shard 2/2 failed 3 times, so the sweep failed: its worker w2@h "
                                          r"stopped answering \(3 pings\); its process on w1@h died .*; boom"):
        run.retry(1, "boom")
    assert len(capp.sent) == 2                        # no third resend


@pytest.mark.parametrize("flags, message", [
    (["--shards", "2"], "--shards 2 needs --redis-url redis://HOST:PORT/DB"),
    (["--redis-url", "redis://127.0.0.1:6379/0"], "--redis-url 'redis://127.0.0.1:6379/0' is only used with --shards N"),
    (["--shards", "2", "--redis-url", "http://x"], "--redis-url must be a Redis URL like redis://HOST:6379/0, not 'http://x'"),
    (["--shards", "0", "--redis-url", "redis://x"], "--shards: '0' is not a whole number from 1 to 256"),
    (["--shards", "2", "--redis-url", "redis://x", "--dry-run"], "--dry-run estimates a one-worker run; leave out --shards"),
])
def test_cli_refuses_a_bad_shard_combination_with_exit_2(flags, message, capsys, monkeypatch):
    from patching.cli import main
    monkeypatch.delenv("PATCHBOARD_REDIS_URL", raising=False)
    args = ["sweep", "--clean", "a b", "--corrupt", "a c", "--answer", " x", "--wrong", " y", "--kind", "resid_pre"]
    with pytest.raises(SystemExit) if "whole number" in message else contextlib.nullcontext():
        code = main(args + flags)
        assert code == 2
    assert message in capsys.readouterr().err


def test_cli_says_when_redis_cannot_be_reached(capsys):
    from patching.cli import main
    from tests.e2e.support import free_port
    code = main(["sweep", "--clean", "When Mary and John went to the store, John gave a drink to",
                 "--corrupt", "When Mary and John went to the store, Mary gave a drink to", "--answer", " Mary",
                 "--wrong", " John", "--kind", "resid_pre", "--device", "cpu", "--quiet",
                 "--shards", "2", "--redis-url", f"redis://127.0.0.1:{free_port()}/0"])
    assert code == 2
    assert "cannot reach Redis at redis://127.0.0.1:" in capsys.readouterr().err

