"""Sharded sweeps measured: the speed-up of 2 workers over 1, and the overhead each shard adds.

    PYTHONPATH=. python scripts/bench_shards.py [--pairs 8] [--shards 4] [--repeats 3] [--threads 1]

Starts a private `redis-server` (127.0.0.1, a free port) and `python -m dashboard worker`s
(`--concurrency 1`, `--threads` torch threads each), then times one head_out per-position sweep of
the default model over --pairs IOI pairs (fixed 64 MB budget), --repeats times each, and prints
medians:
- unsharded: `sweep()` in this process (the same threads);
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (and for the unsharded run)")
    args = p.parse_args()
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    import torch
    from patching import PatchSpec, PromptSet, load_model, sweep
    from patching.methods.shards import plan
    from patching.runs.celery_app import celery_app
    from patching.runs.sharded import run_sharded
    torch.set_num_threads(args.threads)
    model = load_model("default", device="cpu")
    prompts = PromptSet.from_pairs(model, (IOI * args.pairs)[:args.pairs])
    spec = PatchSpec(kind="head_out", per_position=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    (tmp / "data").mkdir()
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    procs = [subprocess.Popen([redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL,
                              start_new_session=True)]
    try:
        capp = celery_app(url)
        start_worker(url, tmp, "w1", args.threads, procs)
        wait_for("worker 1", lambda: workers_up(capp, 1))
        t_plain, whole = timed(lambda: sweep(model, prompts, spec, max_memory_mb=64), args.repeats)

        def sharded(n):
            result, _ = run_sharded(url, prompts, plan(spec, n, 64), capp=capp)
            assert torch.equal(result.per_pair, whole.per_pair), "a sharded result differs"
            return result
        sharded(1)                                       # warm: the worker's first forward
        t_1w1, _ = timed(lambda: sharded(1), args.repeats)
        t_1wn, _ = timed(lambda: sharded(args.shards), args.repeats)
        start_worker(url, tmp, "w2", args.threads, procs)
        wait_for("worker 2", lambda: workers_up(capp, 2))
        sharded(2)
        t_2w2, _ = timed(lambda: sharded(2), args.repeats)
        print(f"head_out per-position, {args.pairs} pairs, {len(whole.values.flatten())} cells, "
              f"{args.threads} thread(s) per worker; medians of {args.repeats}")
        print(f"unsharded sweep (this process)   {t_plain:7.2f} s")
        print(f"1 worker, 1 shard                {t_1w1:7.2f} s")
        print(f"1 worker, {args.shards} shards               {t_1wn:7.2f} s")
        print(f"2 workers, 2 shards              {t_2w2:7.2f} s")
        print(f"speed-up, 2 workers over 1       {t_1w1 / t_2w2:7.2f}x  (over the unsharded sweep: {t_plain / t_2w2:.2f}x)")
        print(f"overhead per shard               {(t_1wn - t_plain) / args.shards:7.2f} s")
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
