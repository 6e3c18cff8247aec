"""`python -m dashboard worker`: a Celery worker that runs the dashboard's background jobs.

The web server (`python -m dashboard --jobs celery --redis-url URL`) queues each Run / Path /
Attribution click on Redis; a worker takes it, runs the same callback code the page registered
(Dash names each background task by a hash of the callback's source and outputs, so the worker
builds the same app to register the same tasks), saves the result to the shared run store and
leaves the figure's data in Redis for the page. It also runs the shards of a sharded sweep
(`python -m patching sweep ... --shards N --redis-url URL`, `patching/runs/sharded.py`).

One pool process per `--concurrency`; each loads its models once, at start, and keeps them for
every job it runs (a cancel kills the process, and its replacement loads them again). Start the
web server and every worker with the same `--model` list and the same store (`--data-dir` on one
machine, `--store-url postgresql://...` across hosts).

    python -m dashboard worker --redis-url redis://127.0.0.1:6379/0 --model default --data-dir .patchboard
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from dataclasses import dataclass

from dashboard.server.celery import celery_app, register_shard_task

log = logging.getLogger("dashboard.server.worker")
PRELOAD_TIMEOUT_S = 1800.0      # how long a new pool process may take to load its model


@dataclass(frozen=True)
class WorkerConfig:
    """What one worker serves: Redis, the models (the first is preloaded), the store, the pool size."""
    redis_url: str
    models: tuple[str, ...] = ("default",)
    data_dir: str = ".patchboard"
    store_url: str | None = None
    concurrency: int = 1
    device: str = "auto"
    dtype: str = "float32"
    device_map: str | None = None
    loglevel: str = "INFO"
    max_memory_mb: float | None = None   # one batch of a dashboard job's exact sweep (as the web server's)
    pace_s: float = 0.0                  # testing only: each patched batch waits this long (model/pacing.py)

    def __post_init__(self):
        if not self.models:
            raise ValueError("a worker needs at least one --model")
        if not isinstance(self.concurrency, int) or not 1 <= self.concurrency <= 64:
            raise ValueError(f"--concurrency must be a whole number from 1 to 64, not {self.concurrency!r}")
        if self.loglevel.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"--loglevel must be DEBUG, INFO, WARNING or ERROR, not {self.loglevel!r}")
        if self.max_memory_mb is not None and not 0 < self.max_memory_mb < float("inf"):
            raise ValueError(f"--max-memory must be a positive number of MB, not {self.max_memory_mb!r}")
        from patching.model.pacing import check_pace
        check_pace(self.pace_s)


def open_worker_store(cfg: WorkerConfig):
    from patching.runs.store import open_store
    return open_store(cfg.store_url, data_dir=cfg.data_dir) if cfg.store_url else open_store(cfg.data_dir)


def build(cfg: WorkerConfig):
    """(celery app with the dashboard's background callbacks registered as tasks, model registry).

    The registry starts empty in this (parent) process; each pool process loads the models itself
    (CUDA cannot be used in a process forked after CUDA was initialised, and torch's CPU thread
    pool hangs in a child forked after it ran).
    """
    import dash

    from dashboard import create_app
    from patching.model.loading import ModelRegistry

    capp = celery_app(cfg.redis_url)
    store = open_worker_store(cfg)
    registry = ModelRegistry(list(cfg.models), device=cfg.device, dtype=cfg.dtype, pace_s=cfg.pace_s,
                             **({"device_map": cfg.device_map} if cfg.device_map else {}))
    from dashboard.server.shards import CeleryShards
    # shards=: a Run with Shards > 1 runs here (its job is the shards' client) and sends them back out
    create_app(registry, store, dash.CeleryManager(capp), data_dir=cfg.data_dir, model=cfg.models[0],
               max_memory_mb=cfg.max_memory_mb, shards=CeleryShards(cfg.redis_url))
    tasks = sorted(n for n in capp.tasks if n.startswith("background_callback_"))
    if not tasks:
        raise RuntimeError("the dashboard registered no background callbacks with the Celery app")
    register_shard_task(capp, registry.get, store)          # `--shards N` runs, the dashboard's Shards
    log.info("worker: %d background callbacks and the shard task registered; store %s",
             len(tasks), store.display_url)
    return capp, registry


def run(cfg: WorkerConfig) -> int:
    """Start the worker in this process (blocks until it is stopped: Ctrl-C / SIGTERM)."""
    from celery.signals import worker_process_init

    capp, registry = build(cfg)

    def preload(**_kwargs):
        try:
            registry.get(cfg.models[0])
            log.info("worker process %d: model %s loaded", os.getpid(), cfg.models[0])
        except ValueError as exc:          # the page shows it when a job asks for the model
            log.warning("worker process %d: model %s not available: %s", os.getpid(), cfg.models[0], exc)

    worker_process_init.connect(preload, weak=False)
    # a pool process reports UP only after preload: give a large model time to load (Celery's
    # default, 4 s, kills and restarts it forever)
    capp.conf.worker_proc_alive_timeout = PRELOAD_TIMEOUT_S
    argv = ["worker", "--pool=prefork", f"--concurrency={cfg.concurrency}", f"--loglevel={cfg.loglevel}",
            "--without-gossip", "--without-mingle", "-n", f"patchboard-{os.getpid()}@{socket.gethostname()}"]
    capp.worker_main(argv)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags of `python -m dashboard worker`.

    >>> parse_args(["--redis-url", "redis://127.0.0.1:6379/0"]).concurrency
    1
    """
    p = argparse.ArgumentParser(prog="python -m dashboard worker",
                                description="A Celery worker for `python -m dashboard --jobs celery` (Redis).")
    p.add_argument("--redis-url", default=os.environ.get("PATCHBOARD_REDIS_URL"),
                   help="redis://HOST:PORT/DB (broker and results; the web server uses the same)")
    p.add_argument("--model", action="append", default=None,
                   help="a model the jobs may ask for; repeat for several; the first is loaded at start "
                        "(default: 'default'); use the web server's --model list")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--data-dir", default=None, help="SQLite run history (and run lock) in this directory")
    where.add_argument("--store-url", default=os.environ.get("PATCHBOARD_STORE_URL"),
                       help="run history URL: sqlite:///path or postgresql://user:pw@host/db")
    p.add_argument("--concurrency", type=int, default=1, help="pool processes (jobs at once); 1 per GPU")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--device-map", default=None,
                   help="'auto': spread a large model over the GPUs and CPU (accelerate)")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--max-memory", type=float, default=None, metavar="MB",
                   help="most memory one batch of a dashboard job's exact sweep may use (use the web server's); "
                        "a sharded sweep's batches follow the CLI's --max-memory")
    p.add_argument("--test-pace", type=float, default=0.0, metavar="SECONDS",
                   help="testing only: every patched batch waits SECONDS first (patching/model/pacing.py)")
    return p.parse_args(argv)


def cmd_worker(args: argparse.Namespace) -> int:
    if not args.redis_url:
        raise ValueError("worker needs --redis-url (or $PATCHBOARD_REDIS_URL), e.g. redis://127.0.0.1:6379/0")
    from patching.paths import default_data_dir
    data_dir = args.data_dir or str(default_data_dir())
    cfg = WorkerConfig(redis_url=args.redis_url, models=tuple(args.model or ["default"]), data_dir=data_dir,
                       store_url=args.store_url if not args.data_dir else None, concurrency=args.concurrency,
                       device=args.device, dtype=args.dtype, device_map=args.device_map, loglevel=args.loglevel,
                       max_memory_mb=args.max_memory, pace_s=args.test_pace)
    logging.basicConfig(level=cfg.loglevel.upper(), format="%(levelname)s %(name)s: %(message)s")
    celery_app(cfg.redis_url)               # a bad URL or missing package: exit 2 before anything loads
    return run(cfg)


def main(argv: list[str] | None = None) -> int:
    """`python -m dashboard worker ...`: exit 2 with one line on bad input."""
    args = parse_args(argv)
    try:
        return cmd_worker(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
