"""Sharded sweeps end to end: a real `redis-server` (127.0.0.1, free port, no persistence), two
real `python -m dashboard worker`s (`--concurrency 1` each, prefork) and the CLI's
`sweep --shards 2 --redis-url`, as users run them.

1. The merged CSV is byte for byte the one-worker CSV, and both workers took a shard.
2. Ctrl-C in the CLI cancels every shard: each worker records its shard's job cancelled, and
   both run the next sweep.
3. A worker killed (SIGKILL, its whole process group) mid-run: its shard is sent again, the
   other worker runs it, and the result is still the one-worker result.

The workers are started with `--test-pace 0.25` (every patched batch waits 0.25 s first;
patching/model/pacing.py), so a sweep in small batches (`--max-memory 1`: ~48 batches a shard)
runs >= 12 s a shard on any machine: long enough to be cancelled or to lose a worker mid-shard.

Bounded: every wait has a time limit, every process started here is stopped in a finally.
Skips (printing why) only when redis-server or celery is not installed (`make test` installs them).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import IOI
from tests.e2e.support import free_port
from tests.test_celery_jobs import REDIS_SERVER, _skip_reason, _wait

ROOT = Path(__file__).resolve().parents[1]
PACE_S = 0.25              # each patched batch on the workers waits this long (module doc)
pytestmark = pytest.mark.slow
# one torch thread everywhere: a float sum's order (so its last bits) follows the thread count, and
# the reference below is computed single-threaded too
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Stack:
    """Redis and named workers on one data dir; every process is stopped by `close`."""

    def __init__(self, tmp: Path):
        self.tmp, self.data, self.procs, self.logs = tmp, tmp / "data", {}, []
        self.data.mkdir()
        port = free_port()
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self.start("redis", [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp)])
        import redis
        client = redis.Redis.from_url(self.redis_url, socket_timeout=1)

        def up():
            try:
                return client.ping()
            except redis.RedisError:
                return False
        _wait("redis-server", up, 20, [self.procs["redis"]], [tmp / "redis.log"])

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")
        self.logs.append(log)
        self.procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        return self.procs[name]

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def start_workers(self, *names: str) -> None:
        for name in names:
            self.start(name, [sys.executable, "-m", "dashboard", "worker", "--redis-url", self.redis_url,
                              "--model", "default", "--data-dir", str(self.data), "--device", "cpu",
                              "--concurrency", "1", "--test-pace", str(PACE_S)])
        for name in names:
            _wait(name, lambda: " ready." in self.log(name) and "model default loaded" in self.log(name), 150,
                  [self.procs[name]], [self.tmp / f"{name}.log"])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def close(self) -> None:
        for name in reversed(list(self.procs)):
            self.kill(name, signal.SIGTERM)
        for log in self.logs:
            log.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    reason = _skip_reason()
    if reason:
        print(f"\nskipping the sharded-sweep end-to-end test: {reason}", file=sys.stderr)
        pytest.skip(reason)
    s = Stack(tmp_path_factory.mktemp("shards"))
    try:
        s.start_workers("w1", "w2")
        yield s
    finally:
        s.close()


def _pairs_csv(tmp: Path, pairs) -> Path:
    import csv
    path = tmp / f"pairs{len(pairs)}.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("clean", "corrupt", "answer", "wrong"), *pairs])
    return path


def _sweep_cmd(stack: Stack, pairs: Path, out: Path, max_memory: str = "64") -> list[str]:
    return [sys.executable, "-m", "patching", "sweep", "--pairs", str(pairs), "--kind", "head_out",
            "--per-position", "--device", "cpu", "--max-memory", max_memory, "--out", str(out),
            "--shards", "2", "--redis-url", stack.redis_url]


PAIRS = IOI * 3            # in 1 MB batches (~96, paced), long enough to kill a worker in the middle of it


def _one_worker(model, max_memory_mb: float) -> str:
    """The CSV the CLI writes for PAIRS without --shards (the same sweep in this process)."""
    import torch
    from patching import PatchSpec, PromptSet, sweep
    prompts = PromptSet.from_pairs(model, PAIRS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                 # as the workers (ENV)
    try:
        return sweep(model, prompts, PatchSpec(kind="head_out", per_position=True),
                     max_memory_mb=max_memory_mb).to_csv()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_worker_csv(doctest_model) -> str:
    return _one_worker(doctest_model, 64)


@pytest.fixture(scope="module")
def one_worker_csv_small_batches(doctest_model) -> str:
    return _one_worker(doctest_model, 1)


def test_two_workers_merge_to_the_one_worker_csv(stack, tmp_path, one_worker_csv):
    out = tmp_path / "sharded.csv"
    run = subprocess.run(_sweep_cmd(stack, _pairs_csv(tmp_path, PAIRS), out), cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr
    assert out.read_text() == one_worker_csv
    assert "2 of 2 shards done · 2 workers took shards" in run.stderr, run.stderr
    for name in ("w1", "w2"):
        assert "patchboard.sweep_shard[" in stack.log(name), f"{name} took no shard"


def test_ctrl_c_cancels_every_shard(stack, tmp_path):
    from patching.runs.store import RunStore
    store = RunStore(stack.data)
    before = {j.id for j in store.jobs(200)}
    # small batches: a sweep that runs long enough to be cancelled
    cli = subprocess.Popen(_sweep_cmd(stack, _pairs_csv(tmp_path, IOI * 4), tmp_path / "x.csv", "1"), cwd=ROOT,
                           env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def both_running():
            jobs = [j for j in store.jobs(200) if j.id not in before]
            return len(jobs) == 2 and all(j.status == "running" for j in jobs)
        _wait("both shards running", both_running, 120, [cli])
        cli.send_signal(signal.SIGINT)
        _, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 130, err
    assert not (tmp_path / "x.csv").exists()

    def ended():
        jobs = [j for j in store.jobs(200) if j.id not in before]
        return all(j.status != "running" for j in jobs)
    _wait("both shards stopping", ended, 60)
    shards = [j for j in store.jobs(200) if j.id not in before]
    assert sorted(j.label for j in shards) == ["head_out · shard 1/2", "head_out · shard 2/2"]
    assert all(j.status == "cancelled" for j in shards), [(j.status, j.reason) for j in shards]
    # the next test's sweep needs both workers again: a revoke-terminated pool process is replaced


def test_a_killed_worker_s_shard_is_retried_on_the_other(stack, tmp_path, one_worker_csv_small_batches):
    from patching.runs.store import RunStore
    store = RunStore(stack.data)
    before = {j.id for j in store.jobs(200)}
    out = tmp_path / "sharded.csv"
    seen = {n: stack.log(n).count("Task patchboard.sweep_shard[") for n in ("w1", "w2")}
    cli = subprocess.Popen(_sweep_cmd(stack, _pairs_csv(tmp_path, PAIRS), out, "1"), cwd=ROOT, env=ENV,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # both shards running (one on each worker), not merely received: a worker killed while its
        # task waits for a pool process (the previous test's cancel replaced it) loses a task that
        # never started, which the client cannot see (noted as open in docs/ARCHITECTURE.md)
        def both_running():
            jobs = [j for j in store.jobs(200) if j.id not in before]
            return len(jobs) == 2 and all(j.status == "running" for j in jobs)
        _wait("both shards running", both_running, 120, [cli])
        stack.kill("w2")                                  # SIGKILL: the worker and its pool process
        _, err = cli.communicate(timeout=240)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, err
    assert "1 retried" in err and "stopped answering" in err, err
    assert out.read_text() == one_worker_csv_small_batches
    received = stack.log("w1").count("Task patchboard.sweep_shard[") - seen["w1"]
    assert received >= 2 * 2, "w1 did not take the lost shard"        # 'received' and 'succeeded' lines


def test_no_worker_answering_is_said_plainly(tmp_path, gpt2_model, ioi_prompts):
    """Redis up, no worker: the client says so instead of waiting forever."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from patching import PatchSpec
    from patching.methods.shards import plan
    from patching.runs.sharded import run_sharded
    lone = Stack(tmp_path)
    try:
        with pytest.raises(ValueError, match=f"no worker answers on {lone.redis_url}; start one or more"):
            run_sharded(lone.redis_url, ioi_prompts, plan(PatchSpec(kind="resid_pre"), 2, 64))
    finally:
        lone.close()


# -- path patching, attribution and the faithfulness curve on the same two workers (issue #22) ------------
# The CLI's `path` / `attribution` / `circuit` with --shards 2 write the one-worker CSV; a timeout and
# SIGTERM cancel every shard. Small budgets (--max-memory) so each run has batches for both workers.

@pytest.fixture
def both_workers(stack):
    """Both workers up: one killed by an earlier test (the killed-worker test) is started again."""
    dead = [n for n in ("w1", "w2") if stack.procs[n].poll() is not None]
    if dead:
        stack.start_workers(*dead)


def _one_thread():
    import contextlib
    import torch

    @contextlib.contextmanager
    def ctx():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)                 # as the workers (ENV)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
    return ctx()


def _cli(stack: Stack, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "patching", *args, "--device", "cpu", "--shards", "2",
                           "--redis-url", stack.redis_url], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def _took_both(stack: Stack, seen: dict) -> bool:
    return all(stack.log(n).count("Task patchboard.sweep_shard[") > seen[n] for n in seen)


def _counts(stack: Stack) -> dict:
    return {n: stack.log(n).count("Task patchboard.sweep_shard[") for n in ("w1", "w2")}


@pytest.mark.usefixtures("both_workers")
def test_path_and_attribution_on_two_workers_write_the_one_worker_csv(stack, tmp_path, doctest_model):
    from patching import PromptSet
    from patching.methods.attribution import AttributionSpec, attribution_csv, run_attribution
    from patching.methods.path import PathSpec, run_path
    from patching.methods.shards import plan
    from patching.runs.sharded import run_sharded
    prompts = PromptSet.from_pairs(doctest_model, IOI)
    with _one_thread():
        path_csv = run_path(doctest_model, prompts, PathSpec(receivers=("q:3.0", "v:3.1")),
                            max_memory_mb=0.1).to_csv()
        attr_csv = attribution_csv(run_attribution(doctest_model, prompts, kinds=("head_out", "resid_pre"),
                                                   max_memory_mb=0.05))
    seen = _counts(stack)
    run = _cli(stack, ["path", "--pairs", str(_pairs_csv(tmp_path, IOI)), "--receivers", "q:3.0,v:3.1",
                       "--max-memory", "0.1", "--out", str(tmp_path / "path.csv")])
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "path.csv").read_text() == path_csv
    assert "path: 2 of 2 shards done · 2 workers took shards" in run.stderr and _took_both(stack, seen)
    status = []                                  # attribution in this process (the CLI's path is path's)
    merged, parts = run_sharded(stack.redis_url, prompts, plan(AttributionSpec(kinds=("head_out", "resid_pre")),
                                                              2, 0.05), on_status=status.append)
    assert attribution_csv(merged) == attr_csv
    assert len({p.worker for p in parts}) == 2 and "2 workers took shards" in status[-1].line()


@pytest.mark.usefixtures("both_workers")
def test_circuit_curve_on_two_workers_writes_the_one_worker_csv(stack, tmp_path, doctest_model):
    from patching import PatchSpec, PromptSet, sweep
    from patching.methods.circuit import faithfulness_curve, rank_components
    prompts = PromptSet.from_pairs(doctest_model, IOI)
    with _one_thread():
        ranked = rank_components(sweep(doctest_model, prompts, PatchSpec(kind="head_out"), max_memory_mb=0.1))
        csv = faithfulness_curve(doctest_model, prompts, ranked[:8], max_memory_mb=0.1).to_csv()
    run = _cli(stack, ["circuit", "--pairs", str(_pairs_csv(tmp_path, IOI)), "--curve-from", "head_out",
                       "--top", "8", "--max-memory", "0.1", "--csv", str(tmp_path / "curve.csv")])
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "curve.csv").read_text() == csv
    assert "curve: 2 of 2 shards done · 2 workers took shards" in run.stderr, run.stderr


def _new_jobs(store, before: set) -> list:
    return [j for j in store.jobs(200) if j.id not in before]


def _all_cancelled(store, before: set, label: str) -> None:
    _wait("both shards stopping", lambda: all(j.status != "running" for j in _new_jobs(store, before)), 60)
    jobs = _new_jobs(store, before)
    assert sorted(j.label for j in jobs) == [f"{label} · shard 1/2", f"{label} · shard 2/2"]
    assert all(j.status == "cancelled" for j in jobs), [(j.status, j.reason) for j in jobs]


# a run of several seconds on any machine: integrated gradients, one pair and one step per backward
LONG = ["attribution", "--kinds", "head_out", "--method", "ig", "--steps", "128", "--max-memory", "0.02"]


@pytest.mark.usefixtures("both_workers")
def test_sigterm_on_the_cli_cancels_every_shard(stack, tmp_path):
    from patching.runs.store import RunStore
    store = RunStore(stack.data)
    before = {j.id for j in store.jobs(200)}
    cmd = [sys.executable, "-m", "patching", *LONG, "--pairs", str(_pairs_csv(tmp_path, IOI * 2)),
           "--out", str(tmp_path / "x.csv"), "--device", "cpu", "--shards", "2", "--redis-url", stack.redis_url]
    cli = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait("both shards running", lambda: len(_new_jobs(store, before)) == 2
              and all(j.status == "running" for j in _new_jobs(store, before)), 120, [cli])
        cli.send_signal(signal.SIGTERM)
        _, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 143, err
    assert "attribution: every shard cancelled" in err and "terminated (SIGTERM)" in err, err
    assert not (tmp_path / "x.csv").exists()
    _all_cancelled(store, before, "attribution")


@pytest.mark.usefixtures("both_workers")
def test_a_timeout_cancels_every_shard_and_names_itself(stack, tmp_path, doctest_model):
    from patching import PatchSpec, PromptSet
    from patching.methods.path import PathSpec
    from patching.methods.shards import plan
    from patching.runs.sharded import ShardTimeout, run_sharded
    from patching.runs.store import RunStore
    store = RunStore(stack.data)
    prompts = PromptSet.from_pairs(doctest_model, IOI * 2)
    # both pool processes up (a cancelled shard's process is replaced, and loads the model again)
    run_sharded(stack.redis_url, prompts, plan(PathSpec(), 2, 64), timeout_s=120)
    before = {j.id for j in store.jobs(200)}
    # a paced sweep in small batches (>= 12 s a shard on any machine; module doc): neither shard
    # can finish in 3 s, however fast the workers (an unpaced attribution shard sometimes did)
    spec = PatchSpec(kind="head_out", per_position=True)
    with pytest.raises(ShardTimeout, match=r"the sharded sweep did not finish in 3 s \(0 of 2 shards "
                                           r"done.*\); every shard was cancelled"):
        run_sharded(stack.redis_url, prompts, plan(spec, 2, 1), timeout_s=3)
    _all_cancelled(store, before, "head_out")


@pytest.mark.usefixtures("both_workers")
def test_the_dashboard_s_sharded_run_on_two_workers(stack, tmp_path, doctest_model):
    """The dashboard's Run with Shards 2 (`execute_run` + `CeleryShards`, what the run card calls): both
    workers answer the Shards control, both take a shard, and the saved run is the one-worker sweep."""
    from dashboard.actions import execute_run
    from dashboard.forms import Form
    from dashboard.server.shards import CeleryShards, shard_control
    from patching import PatchSpec, PromptSet, sweep
    from patching.model.loading import ModelRegistry
    from patching.model.memory_budget import memory_budget
    from patching.runs.store import RunStore
    backend = CeleryShards(stack.redis_url)
    off, note = shard_control(backend)
    assert not off and note.startswith("2 workers answer (")
    registry = ModelRegistry(["default"])
    registry.add("default", doctest_model)
    store = RunStore(tmp_path / "data")
    clean, corrupt, answer, wrong = IOI[0]
    form = Form(model="default", clean=clean, corrupt=corrupt, answer=answer, wrong=wrong, kind="head_out",
                per_position=True)
    took = []
    with _one_thread():
        budget = memory_budget("cpu") / 2**20
        run_id = execute_run(registry, store, form, tmp_path, shards=2, backend=backend, on_shards=took.append)
        whole = sweep(doctest_model, PromptSet.from_pairs(doctest_model, IOI[:1]),
                      PatchSpec(kind="head_out", per_position=True), max_memory_mb=budget)
    assert store.get(run_id).result.to_csv() == whole.to_csv()
    assert "2 of 2 shards done · 2 workers took shards" in took[-1].line()
