"""Celery jobs end to end: a real `redis-server` (127.0.0.1, free port, no persistence), a real
`python -m dashboard worker` and a real `python -m dashboard --jobs celery`, driven over HTTP the
way dash-renderer drives them (`tests/dash_http.py`).

The web host runs with `--tokenizers-only` (no weights on it). A sweep runs on the worker and its
result reaches the run history the page reads (and equals the same sweep computed here); a second, longer sweep is cancelled while it runs: nothing is saved, the
cancelled job shows in the history with its reason; the worker then runs a third. Then, with the
worker stopped, a queued sweep is cancelled (Celery's revoke reaches no one): the next worker to
start takes it and records it cancelled, from the request the Cancel click left in the store.

Bounded: every wait has a time limit, and every process started here is stopped in a finally.
Skips (printing why) only when redis-server is not installed (`make test` installs it).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dashboard import ids
from tests.conftest import IOI
from tests.dash_http import Page
from tests.e2e.support import free_port

ROOT = Path(__file__).resolve().parents[1]
REDIS_SERVER = shutil.which("redis-server")

pytestmark = pytest.mark.slow


def _skip_reason() -> str | None:
    if REDIS_SERVER is None:
        return "redis-server is not installed (`make test` installs Debian's redis-server)"
    try:
        import celery  # noqa: F401
        import redis  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed in the venv (pip install -r requirements.txt)"
    return None


def _wait(what: str, ready, timeout: float, procs=(), logs=()):
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [p for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            tail = "\n".join(f"--- {log.name}\n{log.read_text()[-2500:]}" for log in logs if log.exists())
            pytest.fail(f"{what} {'exited' if dead else f'not ready after {timeout} s'}\n{tail}")
        time.sleep(0.25)


def _stop(proc: subprocess.Popen, grace: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(dashboard URL, data dir, worker process, worker log) on a private Redis."""
    reason = _skip_reason()
    if reason:
        print(f"\nskipping the Celery end-to-end test: {reason}", file=sys.stderr)
        pytest.skip(reason)
    import redis

    tmp = tmp_path_factory.mktemp("celery")
    data = tmp / "data"
    data.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen] = []
    opened = []

    def start(cmd, log_name):
        log = open(tmp / log_name, "w")
        opened.append(log)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        procs.append(proc)
        return proc, tmp / log_name

    try:
        port = free_port()
        redis_url = f"redis://127.0.0.1:{port}/0"
        rproc, rlog = start([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp)], "redis.log")
        client = redis.Redis.from_url(redis_url, socket_timeout=1)

        def redis_up():
            try:
                return client.ping()
            except redis.RedisError:
                return False
        _wait("redis-server", redis_up, 20, [rproc], [rlog])

        def start_worker(log_name="worker.log"):
            wproc, wlog = start([sys.executable, "-m", "dashboard", "worker", "--redis-url", redis_url,
                                 "--model", "default", "--data-dir", str(data), "--device", "cpu",
                                 "--concurrency", "1"], log_name)
            _wait("the worker", lambda: " ready." in wlog.read_text() and "model default loaded" in wlog.read_text(),
                  120, [wproc], [wlog])
            return wproc, wlog
        wproc, wlog = start_worker()

        web_port = free_port()
        dproc, dlog = start([sys.executable, "-m", "dashboard", "--host", "127.0.0.1", "--port", str(web_port),
                             "--model", "default", "--data-dir", str(data), "--device", "cpu",
                             "--jobs", "celery", "--redis-url", redis_url, "--tokenizers-only"], "server.log")
        url = f"http://127.0.0.1:{web_port}/"

        def web_up():
            try:
                Page(url, timeout=2)
                return True
            except OSError:
                return False
        _wait("the dashboard", web_up, 120, [dproc], [dlog])
        yield url, data, wproc, wlog, start_worker
    finally:
        for proc in reversed(procs):          # dashboard, worker (and its pool), redis
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, 15)
                except ProcessLookupError:
                    pass
        for proc in reversed(procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(5)
        for log in opened:
            log.close()


def _form(kind: str, pairs=IOI) -> dict:
    clean, corrupt, answer, wrong = pairs[0]
    values = {"run-button.n_clicks": 1, "model-select.value": "default", "clean-prompt.value": clean,
              "corrupt-prompt.value": corrupt, "answer-token.value": answer, "wrong-token.value": wrong,
              "prepend-bos.value": ["bos"], "kind-select.value": kind, "metric-select.value": "logit_diff",
              "direction-select.value": "denoise"}
    if len(pairs) > 1:
        values["pairs-store.data"] = [dict(zip(("clean", "corrupt", "answer", "wrong"), p)) for p in pairs]
    return values


def _history(page: Page) -> str:
    _, data = page.call("history-version.data", {"history-version.data": time.time()}, output="run-history.children")
    return str(data["response"]["run-history"]["children"])


def test_sweep_on_a_celery_worker_then_cancel(stack):
    from patching.runs.store import RunStore
    from patching import PatchSpec, sweep
    from patching.model.loading import load_model
    from patching.core.prompts import PromptSet

    url, data, worker, wlog, start_worker = stack
    store = RunStore(data)
    page = Page(url)
    # the web host runs with --tokenizers-only: it reads no weights, every run is the worker's
    _, out = page.call("model-select.value", {"model-select.value": "default"}, output=f"{ids.MODEL_STATUS}.children")
    assert "weights on the workers" in str(out["response"][ids.MODEL_STATUS]["children"]), out

    # 1. a sweep runs on the worker; its result is in the history the page reads
    job = page.start("run-button.n_clicks", _form("head_out"))
    status, out = page.wait(job, timeout=120)
    assert status == 200, (status, out)
    resp = out["response"]
    assert resp["error-message"]["children"] == "", resp["error-message"]
    run_id = resp["current-run"]["data"]
    run = store.get(run_id)
    assert run.pairs == [tuple(p) for p in IOI] and run.result.spec.kind == "head_out"
    model = load_model("default", device="cpu")
    local = sweep(model, PromptSet.from_pairs(model, IOI, prepend_bos=True), PatchSpec(kind="head_out", model="default"))
    assert torch.allclose(run.result.values, local.values, atol=1e-4), "the worker's sweep differs from ours"
    done = store.jobs()[0]
    assert (done.status, done.run_id, done.kind) == ("done", run_id, "sweep")
    assert done.pid != worker.pid                         # it ran in a pool process of the worker
    assert f"#{run_id}" in _history(page)

    # 2. a longer sweep, cancelled while it runs: the worker's pool process is killed
    slow = page.start("run-button.n_clicks", _form("neuron", IOI * 4))
    deadline = time.monotonic() + 90
    while not any(p.get(f"{ids.PROGRESS}.value", 0) > 0 for p in slow.progress if isinstance(p, dict)):
        assert time.monotonic() < deadline, f"the second sweep never made progress: {slow.progress}"
        page.poll(slow)
        time.sleep(0.2)
    running = store.jobs()[0]
    assert running.status == "running" and running.kind == "sweep"
    assert page.cancel(slow, "cancel-button.n_clicks") in (200, 204)
    deadline = time.monotonic() + 30
    while store.fail_stale(120) == 0 and store.job(running.id).status == "running":
        assert time.monotonic() < deadline, "the cancelled job's process is still running"
        time.sleep(0.3)
    ended = store.job(running.id)
    # Celery stops the pool process with SIGTERM: the job records 'cancelled' itself on the way out;
    # had it been killed outright, fail_stale would have marked it failed (process exited)
    assert (ended.status, ended.reason) == ("cancelled", "cancelled: the job's process was stopped (SystemExit)") \
        or (ended.status == "failed" and f"worker process {running.pid} exited" in ended.reason), ended
    assert [r.id for r in store.list()] == [run_id]          # the cancelled sweep saved nothing
    shown = _history(page)
    assert f"job {running.id}" in shown and ended.reason in shown and f"#{run_id}" in shown

    # 3. the worker replaced its pool process and runs the next job
    job3 = page.start("run-button.n_clicks", _form("resid_pre"))
    status, out = page.wait(job3, timeout=120)
    assert status == 200 and out["response"]["error-message"]["children"] == ""
    run3 = store.get(out["response"]["current-run"]["data"])
    assert run3.result.spec.kind == "resid_pre" and run3.result.values.isfinite().all()
    assert worker.poll() is None
    assert [j.status for j in store.jobs()][0::2] == ["done", "done"] and len(store.jobs()) == 3

    # 4. no worker up: a Run waits on Redis; Cancel's revoke reaches no one (Celery keeps revokes in
    # the workers' memory), but the click's request in the store does: the next worker to take the
    # job records it as cancelled instead of running it
    _stop(worker)
    assert worker.poll() is not None
    page_values = {**_form("resid_pre"), "run-button.n_clicks": 4, f"{ids.SESSION_ID}.data": "celery-page"}
    queued = page.start("run-button.n_clicks", page_values)
    time.sleep(1.0)
    status, data = page.poll(queued)
    assert status == 200 and "response" not in (data or {}), data          # still waiting for a worker
    assert page.cancel(queued, "cancel-button.n_clicks") in (200, 204)
    page.call("cancel-button.n_clicks", {"cancel-button.n_clicks": 2, "run-button.n_clicks": 4,
                                         f"{ids.SESSION_ID}.data": "celery-page"}, output=f"{ids.RUN_STATUS}.children")
    assert store.cancel_requested("celery-page:run-button:4")
    jobs_before, runs_before = len(store.jobs()), len(store)
    worker2, _ = start_worker("worker2.log")
    deadline = time.monotonic() + 60
    while len(store.jobs()) == jobs_before or store.jobs()[0].status == "running":
        assert time.monotonic() < deadline, "the new worker never took the queued job"
        time.sleep(0.3)
    ended = store.jobs()[0]
    assert (ended.status, ended.reason) == ("cancelled", "cancelled before it started: Cancel was pressed while it was queued")
    assert len(store) == runs_before                                      # nothing computed or saved
    assert worker2.poll() is None
