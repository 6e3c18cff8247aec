"""Sharded runs measured: the speed-up of 2 workers over 1, and the overhead each shard adds.

    PYTHONPATH=. python scripts/bench_shards.py [--pairs 8] [--shards 4] [--repeats 3] [--threads 1]
                                                [--work sweep,path,attribution,curve]

Starts a private `redis-server` (127.0.0.1, a free port) and `python -m dashboard worker`s
(`--concurrency 1`, `--threads` torch threads each), then times, on the default model over --pairs
IOI pairs, --repeats times each, and prints medians per kind of work (`--work`):
- sweep: head_out per position (fixed 64 MB budget);
- path: every head x position as senders into the logits (64 MB; one batch per layer and position);
- attribution: integrated gradients, 16 steps, head_out + resid_pre + mlp_out (a 0.05 MB budget:
  one pair per backward, so the pairs make batches to deal);
- curve: the faithfulness curve of all 20 components (0.05 MB: one kept set per forward).
For each:
- unsharded: the one-worker function in this process (the same threads);
- 1 worker, 1 shard / 1 worker, N shards / 2 workers, 2 shards: `run_sharded` end to end (send,
  run, send back, merge);
- speed-up = (1 worker, 1 shard) / (2 workers, 2 shards);
- overhead per shard = ((1 worker, N shards) - unsharded) / N.
Every sharded result is checked equal to the unsharded one, value for value.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

IOI = [("When Mary and John went to the store, John gave a drink to",
        "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
       ("When John and Mary went to the park, Mary gave a book to",
        "When John and Mary went to the park, John gave a book to", " John", " Mary")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, ready, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} not ready after {timeout} s")
        time.sleep(0.25)


def start_worker(redis_url: str, tmp: Path, name: str, threads: int, procs: list) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log = tmp / f"{name}.log"
    procs.append(subprocess.Popen([sys.executable, "-m", "dashboard", "worker", "--redis-url", redis_url,
                                   "--model", "default", "--data-dir", str(tmp / "data"), "--device", "cpu",
                                   "--concurrency", "1", "--loglevel", "WARNING"], cwd=ROOT, env=env,
                                  stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True))


def workers_up(capp, n: int) -> bool:
    return len(capp.control.ping(timeout=1.0) or []) >= n


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def works(model, prompts):
    """name -> (spec, budget MB, the unsharded run) for each kind of work."""
    from patching import PatchSpec, sweep
    from patching.methods.attribution import AttributionSpec, run_attribution
    from patching.methods.circuit import CurveSpec, all_components, faithfulness_curve
    from patching.methods.path import PathSpec, run_path
    kinds = ("head_out", "resid_pre", "mlp_out")
    ranked = [c.name for c in all_components(model)]
    return {
        "sweep": (PatchSpec(kind="head_out", per_position=True), 64,
                  lambda: sweep(model, prompts, PatchSpec(kind="head_out", per_position=True), max_memory_mb=64)),
        "path": (PathSpec(per_position=True), 64,
                 lambda: run_path(model, prompts, PathSpec(per_position=True), max_memory_mb=64)),
        "attribution": (AttributionSpec(kinds=kinds, method="ig", steps=16), 0.05,
                        lambda: run_attribution(model, prompts, kinds=kinds, method="ig", steps=16,
                                                max_memory_mb=0.05)),
        "curve": (CurveSpec.of(ranked), 0.05, lambda: faithfulness_curve(model, prompts, ranked, max_memory_mb=0.05)),
    }


def bench_work(name, spec, mb, plain, url, capp, prompts, args, timings) -> None:
    """Time one kind of work unsharded, on 1 worker (1 and N shards); `timings[name]` gets them."""
    import torch
    from patching.methods.shards import plan, work_of
    from patching.runs.sharded import run_sharded
    values = work_of(spec).values
    t_plain, whole = timed(plain, args.repeats)

    def sharded(n):
        result, _ = run_sharded(url, prompts, plan(spec, n, mb), capp=capp)
        a, b = values(result), values(whole)
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()), \
            f"a sharded {name} result differs"
        return result
    sharded(1)                                       # warm: the worker's first forward
    timings[name] = {"plain": t_plain, "1w1": timed(lambda: sharded(1), args.repeats)[0],
                     "1wn": timed(lambda: sharded(args.shards), args.repeats)[0], "sharded": sharded}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (and for the unsharded run)")
    p.add_argument("--work", default="sweep,path,attribution,curve", help="comma-separated: sweep, path, attribution, curve")
    args = p.parse_args()
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    import torch
    from patching import PromptSet, load_model
    from patching.runs.celery_app import celery_app
    torch.set_num_threads(args.threads)
    model = load_model("default", device="cpu")
    prompts = PromptSet.from_pairs(model, (IOI * args.pairs)[:args.pairs])
    table = works(model, prompts)
    chosen = [w.strip() for w in args.work.split(",") if w.strip()]
    unknown = [w for w in chosen if w not in table]
    if unknown:
        raise SystemExit(f"--work: unknown {unknown}; choose from {', '.join(table)}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    (tmp / "data").mkdir()
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    procs = [subprocess.Popen([redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL,
                              start_new_session=True)]
    timings: dict = {}
    try:
        capp = celery_app(url)
        start_worker(url, tmp, "w1", args.threads, procs)
        wait_for("worker 1", lambda: workers_up(capp, 1))
        for name in chosen:
            bench_work(name, *table[name], url, capp, prompts, args, timings)
        start_worker(url, tmp, "w2", args.threads, procs)
        wait_for("worker 2", lambda: workers_up(capp, 2))
        for name in chosen:
            sharded = timings[name]["sharded"]
            sharded(2)
            timings[name]["2w2"] = timed(lambda: sharded(2), args.repeats)[0]
        print(f"default model, {args.pairs} pairs, {args.threads} thread(s) per worker; medians of {args.repeats}, "
              f"seconds")
        print(f"{'work':<12} {'unsharded':>9} {'1w 1sh':>7} {'1w ' + str(args.shards) + 'sh':>7} {'2w 2sh':>7} "
              f"{'2w/1w':>6} {'vs unsh':>7} {'per shard':>9}")
        for name in chosen:
            t = timings[name]
            print(f"{name:<12} {t['plain']:9.2f} {t['1w1']:7.2f} {t['1wn']:7.2f} {t['2w2']:7.2f} "
                  f"{t['1w1'] / t['2w2']:5.2f}x {t['plain'] / t['2w2']:6.2f}x {(t['1wn'] - t['plain']) / args.shards:9.2f}")
    finally:
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
