"""Celery wiring without Redis: the manager, the worker's CLI errors, and the invariant that the
web server and a worker register the SAME background tasks (Dash names each by a hash of the
callback's source and outputs; a worker that registered others would never pick up a job)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dash
import pytest

from dashboard import make_jobs
from dashboard.__main__ import main as dashboard_main
from patching import cli
from dashboard.server.celery import celery_app
from dashboard.server.worker import WorkerConfig

ROOT = Path(__file__).resolve().parents[1]
URL = "redis://127.0.0.1:1/0"          # nothing listens there; nothing here connects


def test_make_jobs_celery_uses_the_shared_celery_config():
    jobs = make_jobs("celery", redis_url=URL)
    assert isinstance(jobs, dash.CeleryManager)
    assert jobs.handle.conf.broker_url == URL and jobs.handle.conf.worker_prefetch_multiplier == 1
    with pytest.raises(ValueError, match="--jobs celery needs --redis-url"):
        make_jobs("celery")
    with pytest.raises(ValueError, match="unknown jobs backend 'rq'; choose one of diskcache, celery"):
        make_jobs("rq")
    with pytest.raises(ValueError, match="must be a Redis URL"):
        celery_app("amqp://localhost")


@pytest.mark.parametrize("argv, needle", [
    (["worker"], "worker needs --redis-url"),
    (["worker", "--redis-url", "http://x"], "must be a Redis URL like redis://HOST:6379/0, not 'http://x'"),
    (["worker", "--redis-url", URL, "--concurrency", "0"], "--concurrency must be a whole number from 1 to 64"),
    (["worker", "--redis-url", URL, "--loglevel", "loud"], "--loglevel must be DEBUG, INFO, WARNING or ERROR"),
])
def test_worker_cli_bad_input_exits_2(argv, needle, capsys, monkeypatch):
    monkeypatch.delenv("PATCHBOARD_REDIS_URL", raising=False)
    assert dashboard_main(argv) == 2
    assert needle in capsys.readouterr().err


def test_the_patching_worker_command_points_to_the_dashboard(capsys):
    assert cli.main(["worker", "--redis-url", URL]) == 2
    assert "python -m dashboard worker" in capsys.readouterr().err


def test_worker_config_validates():
    with pytest.raises(ValueError, match="at least one --model"):
        WorkerConfig(URL, models=())


WEB = """
import json, sys
from dashboard import create_app, make_jobs
from patching.runs.store import RunStore
from patching.model.loading import ModelRegistry
jobs = make_jobs("celery", redis_url=sys.argv[1])
create_app(ModelRegistry(["default"]), RunStore(sys.argv[2]), jobs)
print(json.dumps(sorted(n for n in jobs.handle.tasks if n.startswith("background_callback_"))))
"""
WORKER = """
import json, sys
from dashboard.server.worker import WorkerConfig, build
capp, _ = build(WorkerConfig(sys.argv[1], data_dir=sys.argv[2]))
print(json.dumps(sorted(n for n in capp.tasks if n.startswith("background_callback_"))))
"""


@pytest.mark.slow
def test_web_server_and_worker_register_the_same_tasks(tmp_path):
    names = []
    for script in (WEB, WORKER):      # separate processes: Dash registers callbacks with every manager in one
        out = subprocess.run([sys.executable, "-c", script, URL, str(tmp_path)], cwd=ROOT, capture_output=True,
                             text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-2000:]
        names.append(json.loads(out.stdout.strip().splitlines()[-1]))
    web, worker = names
    assert len(web) >= 3 and web == worker      # run, path and attribution at least
