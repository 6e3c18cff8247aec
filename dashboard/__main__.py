"""`python -m dashboard [serve]`: serve the Patchboard dashboard; `python -m dashboard worker`: a
Celery worker for its jobs (`dashboard/server/worker.py`).

    python -m dashboard --host 127.0.0.1 --port 8050 --model default --data-dir .patchboard \\
        --jobs diskcache|celery --redis-url redis://... --store-url sqlite:///...|postgresql://... \\
        --dtype float32|float16|bfloat16 --device-map auto --tokenizers-only --max-memory MB --debug

`--model` may be repeated (a name, a local directory or a cached hub name); the first is
selected on load and preloaded. The page starts even when a model cannot be loaded and shows
why next to the model select. Debug mode is off unless `--debug`. With `--jobs celery
--tokenizers-only` the web host reads no weights: runs go to the workers, and the views that
compute on the web host (attention on click, Inspect, Neurons, the cost preview) say so inline.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

from dashboard import JOB_KINDS, create_app, make_jobs
from patching.paths import default_data_dir
from patching.runs.store import RunStore, open_store


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dashboard", description="Serve the Patchboard dashboard.")
    p.add_argument("--host", default=os.environ.get("PATCHBOARD_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PATCHBOARD_PORT", "8050")))
    p.add_argument("--model", action="append", default=None,
                   help="model name, local directory or cached hub name; repeat for several "
                        "(default: 'default', or $PATCHBOARD_MODEL)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--data-dir", default=str(default_data_dir()),
                   help="run history (SQLite) and job cache live here")
    p.add_argument("--jobs", default="diskcache", choices=JOB_KINDS,
                   help="background jobs: diskcache (embedded) or celery (needs --redis-url and workers)")
    p.add_argument("--redis-url", default=os.environ.get("PATCHBOARD_REDIS_URL"),
                   help="redis://HOST:PORT/DB of the `python -m dashboard worker`s: --jobs celery runs every job "
                        "there; with either jobs backend a Run can be split into shards over them")
    p.add_argument("--store-url", default=os.environ.get("PATCHBOARD_STORE_URL"),
                   help="run history URL: sqlite:///path/runs.sqlite or postgresql://user:pw@host/db "
                        "(default: runs.sqlite in --data-dir)")
    p.add_argument("--device-map", default=None,
                   help="'auto': spread a large model over the GPUs and CPU (accelerate)")
    p.add_argument("--tokenizers-only", action="store_true",
                   help="with --jobs celery: load each model's tokenizer and config, not its weights; every "
                        "run goes to the workers and this host stays small (views that run the model here "
                        "are refused inline)")
    p.add_argument("--max-upload-mb", type=float, default=float(os.environ.get("PATCHBOARD_MAX_UPLOAD_MB", "16")),
                   help="largest request the server accepts, in MB (default 16); pairs CSVs may be 3/4 of it")
    p.add_argument("--max-memory", type=float, default=None, metavar="MB",
                   help="most memory one batch of an exact sweep may use, in MB (default: a quarter of the "
                        "free memory, at most 4096); the cost estimate counts the same batches")
    p.add_argument("--test-pace", type=float, default=0.0, metavar="SECONDS",
                   help="testing only: every patched batch waits SECONDS first, so end-to-end tests can "
                        "reload, cancel or kill a run mid-way on any machine (patching/model/pacing.py)")
    p.add_argument("--debug", action="store_true", help="Dash debug mode (dev tools, reloader); off by default")
    return p.parse_args(argv)


def _warm_jobs(app, registry, name: str) -> None:
    """Pick the jobs' thread count and calibrate the cost estimate before serving (a few seconds
    at start rather than on the first page, where it competed with the first run)."""
    from dashboard.forms import Form, parse_form
    from dashboard.panel.prompts import SAMPLE
    from dashboard.server.fork_guard import warm_jobs
    try:
        model = registry.get(name)
        _, prompts = parse_form(model, Form(name, *SAMPLE, kind="resid_pre"))
        threads, _ = warm_jobs(app.patchboard.calibrations, model, prompts)
    except Exception as exc:                      # the page calibrates on first use instead
        print(f"warning: could not calibrate the cost estimate at start: {exc}", file=sys.stderr)
        return
    print(f"Patchboard: runs use {threads} torch thread{'s' if threads > 1 else ''}", file=sys.stderr)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        from dashboard.server import worker
        return worker.main(argv[1:])
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from patching.model.loading import ModelRegistry

    models = args.model or [os.environ.get("PATCHBOARD_MODEL", "default")]
    if not _is_loopback(args.host):
        print(f"warning: serving on {args.host}, reachable from other machines; the dashboard has no "
              "authentication and runs models for anyone who can reach it", file=sys.stderr)
    if not args.max_upload_mb > 0:
        print(f"error: --max-upload-mb must be a positive number, not {args.max_upload_mb:g}", file=sys.stderr)
        return 2
    if args.tokenizers_only and args.jobs != "celery":
        print("error: --tokenizers-only needs --jobs celery: with diskcache jobs the runs fork from this "
              "process and need the weights here", file=sys.stderr)
        return 2
    try:
        jobs = make_jobs(args.jobs, args.data_dir, args.redis_url)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        store = open_store(args.store_url, data_dir=args.data_dir) if args.store_url else RunStore(Path(args.data_dir))
        registry = ModelRegistry(models, device=args.device, dtype=args.dtype, weights=not args.tokenizers_only,
                                 pace_s=args.test_pace, **({"device_map": args.device_map} if args.device_map else {}))
        if args.max_memory is not None and not 0 < args.max_memory < float("inf"):
            raise ValueError(f"--max-memory must be a positive number of MB, not {args.max_memory:g}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.jobs == "diskcache":     # jobs fork from this process: no torch thread pool in it
        from dashboard.server.fork_guard import single_threaded_server
        single_threaded_server()
    try:
        registry.get(models[0])   # preload: background runs fork from this process and inherit it
    except ValueError as exc:
        print(f"warning: model {models[0]!r} is not available yet: {exc}", file=sys.stderr)
    shards = None
    if args.redis_url:
        from dashboard.server.shards import CeleryShards
        try:
            shards = CeleryShards(args.redis_url)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    app = create_app(registry, store, jobs, data_dir=args.data_dir, model=models[0],
                     max_upload_mb=args.max_upload_mb, max_memory_mb=args.max_memory, shards=shards)
    if args.jobs == "diskcache" and not args.tokenizers_only:
        _warm_jobs(app, registry, models[0])
    print(f"Patchboard: http://{args.host}:{args.port}/  (history in {store.display_url})", file=sys.stderr)
    app.run(host=args.host, port=args.port, debug=args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
