"""The run store behind a URL, and its job-status records: concurrent writers, a run killed
mid-sweep (SIGKILL) that `fail_stale` marks failed, restarts, and the history list showing it."""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import sqlite3
import time

import pytest

from dashboard import actions, forms
from dashboard.tabs import history as history_tab
from patching.runs import jobs as job_status
from patching.runs.store import JobInfo, RunStore, open_store
from patching import PatchSpec, sweep
from tests.conftest import IOI
from tests.forked import in_processes


@pytest.fixture(scope="module")
def result(gpt2_model, ioi_prompts):
    return sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out", model="tiny"))


@pytest.fixture
def form(tiny_dirs):
    clean, corrupt, answer, wrong = IOI[0]
    return forms.Form(model=str(tiny_dirs["gpt2"]), clean=clean, corrupt=corrupt, answer=answer,
                         wrong=wrong, kind="head_out")


def _integrity(path) -> str:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


# -- URLs --------------------------------------------------------------------------------------------
def test_open_store_by_dir_and_sqlite_url(tmp_path, result):
    by_dir = open_store(tmp_path / "a")
    assert by_dir.path == tmp_path / "a" / "runs.sqlite" and by_dir.data_dir == tmp_path / "a"
    run_id = by_dir.save(result, IOI)
    by_url = open_store(f"sqlite:///{tmp_path / 'a' / 'runs.sqlite'}")
    assert by_url.path == tmp_path / "a" / "runs.sqlite" and by_url.data_dir == tmp_path / "a"
    assert [r.id for r in by_url.list()] == [run_id]
    other = open_store(f"sqlite:///{tmp_path / 'db' / 'x.sqlite'}", data_dir=tmp_path / "local")
    assert other.path == tmp_path / "db" / "x.sqlite" and other.data_dir == tmp_path / "local"
    assert len(other) == 0


@pytest.mark.parametrize("url, needle", [("mysql://h/db", "unsupported store URL 'mysql://h/db'"),
                                         ("sqlite://", "needs a file"),
                                         ("sqlite:///:memory:", "needs a file")])
def test_bad_store_urls_say_what_is_accepted(tmp_path, url, needle):
    with pytest.raises(ValueError, match=needle):
        open_store(url, data_dir=tmp_path)


def test_postgres_url_without_driver_is_a_clear_error(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "psycopg", None)       # as where the optional driver is absent
    with pytest.raises(ValueError, match="needs the database driver 'psycopg'"):
        open_store("postgresql://pb:secret@db.example/patchboard", data_dir=tmp_path)


# -- job records ---------------------------------------------------------------------------------------
def test_job_lifecycle_and_validation(tmp_path):
    store = RunStore(tmp_path)
    job = store.begin_job("sweep", "IOI · head_out", "default")
    info = store.jobs()[0]
    assert (info.id, info.status, info.pid, info.finished) == (job, "running", os.getpid(), None)
    time.sleep(0.01)
    assert store.heartbeat(job) and store.job(job).updated > info.updated
    store.finish_job(job, "done", run_id=7)
    done = store.job(job)
    assert (done.status, done.run_id, done.reason) == ("done", 7, "") and done.finished is not None
    assert not store.heartbeat(job)                        # a finished job is not revived
    with pytest.raises(ValueError, match="one of done, failed, cancelled, not 'running'"):
        store.finish_job(job, "running")
    with pytest.raises(ValueError, match="job 999 does not exist"):
        store.finish_job(999, "failed")
    with pytest.raises(ValueError, match="status must be one of"):
        JobInfo(1, "sweep", "x", "m", "lost", "", None, None, "h", 0.0, 0.0, None)
    with pytest.raises(ValueError, match="max_age_s must be positive"):
        store.fail_stale(0)
    assert [j.id for j in store.jobs(status="done")] == [job] and store.jobs(status="failed") == []


def test_fail_stale_dead_pid_and_silent_remote_worker(tmp_path):
    store = RunStore(tmp_path)
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(0,))
    child.start()
    child.join()
    dead = store.begin_job("sweep", "dead", "m", pid=child.pid)
    alive = store.begin_job("sweep", "alive", "m")           # this process: alive, fresh heartbeat
    here, store._host = store._host, "gpu-worker-7"             # a job recorded by another host
    remote = store.begin_job("path", "remote", "m", pid=123)
    store._host = here
    assert store.fail_stale(60) == 1                           # remote: pid not checkable, heartbeat fresh
    assert store.job(dead).status == "failed"
    assert f"worker process {child.pid} exited" in store.job(dead).reason
    time.sleep(1.1)
    assert store.fail_stale(1.0) == 2                          # no heartbeat for > 1 s: alive and remote
    assert "worker stopped responding" in store.job(remote).reason
    assert "gpu-worker-7" in store.job(remote).reason
    store.finish_job(alive, "done", run_id=1)                   # a late finish still wins
    assert store.job(alive).status == "done"


def _writer(path, payload, n, q):
    """A separate process: n runs and n job records through its own store."""
    from patching.core.results import PatchResult
    store = RunStore(path)
    result = PatchResult.from_json(payload)
    for i in range(n):
        job = store.begin_job("sweep", f"w{os.getpid()}-{i}", "tiny")
        store.heartbeat(job)
        run_id = store.save(result, IOI)
        store.finish_job(job, "done", run_id=run_id)
        q.put((job, run_id))
    store.fail_stale(300)


def test_concurrent_writers_keep_the_sqlite_store_consistent(tmp_path, result):
    RunStore(tmp_path)
    got = in_processes(_writer, 4, results_each=6, args=(tmp_path, result.to_json(), 6))
    store = RunStore(tmp_path)
    assert len(store) == 24 and len({r for _, r in got}) == 24
    jobs = store.jobs(limit=100)
    assert len(jobs) == 24 and all(j.status == "done" for j in jobs)
    assert {j.run_id for j in jobs} == {r for _, r in got}
    assert _integrity(store.path) == "ok"


# -- a job killed mid-sweep -------------------------------------------------------------------------------
def _slow_run(registry, data_dir, form, started):
    import torch
    torch.set_num_threads(1)     # a child forked after the parent's multithreaded torch ops hangs otherwise
    store = RunStore(data_dir)

    def report(p):
        if p.total > 1:                  # the sweep is under way: let the parent kill us
            started.set()
            time.sleep(5)

    actions.execute_run(registry, store, form, data_dir, report=report)


def test_sigkill_mid_sweep_is_marked_failed_and_the_next_run_works(tmp_path, registry, form):
    store = RunStore(tmp_path)
    ctx = multiprocessing.get_context("fork")
    started = ctx.Event()
    proc = ctx.Process(target=_slow_run, args=(registry, tmp_path, form, started))
    proc.start()
    try:
        deadline = time.time() + 40
        while not started.wait(0.2):
            assert proc.is_alive(), f"the sweep process ended early (exit code {proc.exitcode})"
            assert time.time() < deadline, "the sweep never started"
        running = store.jobs()
        assert [(j.status, j.pid) for j in running] == [("running", proc.pid)]
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == -signal.SIGKILL
    assert store.jobs()[0].status == "running"           # nothing in a killed process can say otherwise
    assert store.fail_stale(120) == 1
    failed = store.jobs()[0]
    assert failed.status == "failed" and f"worker process {proc.pid} exited" in failed.reason
    assert len(store) == 0 and _integrity(store.path) == "ok"   # no half-saved run
    assert not actions.run_busy(tmp_path)                # the run slot was released with the process

    run_id = actions.execute_run(registry, store, form, tmp_path)
    assert store.get(run_id).result.values.shape == (2, 4)
    newest = store.jobs()[0]
    assert (newest.status, newest.run_id, newest.kind) == ("done", run_id, "sweep")
    assert [j.status for j in store.jobs()] == ["done", "failed"]


def _slow_run_with_token(registry, data_dir, form, started, token):
    import torch
    torch.set_num_threads(1)
    store = RunStore(data_dir)

    def report(p):
        if p.total > 1:
            started.set()
            time.sleep(5)

    actions.execute_run(registry, store, form, data_dir, report=report, token=token)


def test_a_killed_job_whose_cancel_was_pressed_is_listed_as_cancelled(tmp_path, registry, form):
    """Dash kills a cancelled diskcache job outright; the Cancel click's request in the store is how
    the history tells a cancel from a crash."""
    store = RunStore(tmp_path)
    token = job_status.job_token("page-1", "run-button", 1)
    ctx = multiprocessing.get_context("fork")
    started = ctx.Event()
    proc = ctx.Process(target=_slow_run_with_token, args=(registry, tmp_path, form, started, token))
    proc.start()
    try:
        assert started.wait(40), "the sweep never started"
        job = store.jobs()[0]
        assert store.request_cancel(token) == job.id           # the click, as the page sends it
        os.kill(proc.pid, signal.SIGKILL)                         # and Dash's kill
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
    assert store.fail_stale(120) == 1
    ended = store.job(job.id)
    assert (ended.status, ended.reason) == ("cancelled", f"cancelled: Cancel was pressed and its process {proc.pid} stopped")
    assert len(store) == 0


def test_cancel_pressed_while_queued_stops_the_job_before_it_starts(tmp_path, registry, form):
    """A Celery job whose revoke was lost (no worker up at the click) or a job queued behind another
    run: the worker that picks it up finds the request and records a cancel instead of running."""
    store = RunStore(tmp_path)
    token = job_status.job_token("page-2", "run-button", 4)
    assert not store.cancel_requested(token)
    assert store.request_cancel(token) is None                # no job has started under this token yet
    with pytest.raises(job_status.JobCancelled, match="Run cancelled; nothing was saved"):
        actions.execute_run(registry, store, form, tmp_path, token=token)
    job = store.jobs()[0]
    assert (job.status, job.reason) == ("cancelled", "cancelled before it started: Cancel was pressed while it was queued")
    assert len(store) == 0
    other = actions.execute_run(registry, store, form, tmp_path, token=job_status.job_token("page-2", "run-button", 5))
    assert store.jobs()[0].run_id == other                    # the next click is another job: it runs


def test_cancel_pressed_while_it_runs_stops_it_at_the_next_progress_report(tmp_path, registry, form, monkeypatch):
    monkeypatch.setattr(job_status, "CANCEL_CHECK_S", 0.0)
    store = RunStore(tmp_path)
    token = job_status.job_token("page-3", "run-button", 1)
    reports = []

    def report(p):                     # the click arrives once the sweep is under way
        reports.append(p.label)
        if p.total > 1 and not store.cancel_requested(token):
            store.request_cancel(token)
    with pytest.raises(job_status.JobCancelled):
        actions.execute_run(registry, store, form, tmp_path, report=report, token=token)
    job = store.jobs()[0]
    assert (job.status, job.reason) == ("cancelled", "cancelled: Cancel was pressed while it ran")
    assert len(store) == 0 and not any(str(r).startswith("done") for r in reports)


def test_old_job_tokens_are_pruned_when_a_job_begins(tmp_path):
    import sqlalchemy as sa
    from patching.runs import store as store_mod
    store = RunStore(tmp_path)
    store.request_cancel("old:run-button:1")
    kept = store.begin_job("sweep", "running", "m", token="old:run-button:2")      # still running: kept
    with store._transaction() as db:                                                  # age both tokens
        db.execute(store_mod.JOB_TOKENS.update().values(created=time.time() - 8 * 86400))
    store.begin_job("sweep", "new", "m", token="new:run-button:1")
    with store._read() as db:
        tokens = sorted(r[0] for r in db.execute(sa.select(store_mod.JOB_TOKENS.c.token)))
    assert tokens == ["new:run-button:1", "old:run-button:2"] and store.job(kept).status == "running"


def test_job_tokens_need_a_session():
    assert job_status.job_token(None, "run-button", 2) is None
    assert job_status.job_token("s", "path-run-button", None) == "s:path-run-button:0"
    with pytest.raises(ValueError, match="token"):
        RunStore.request_cancel(object(), "")


def test_store_reopened_keeps_runs_and_jobs(tmp_path, registry, form):
    store = RunStore(tmp_path)
    run_id = actions.execute_run(registry, store, form, tmp_path)
    with pytest.raises(ValueError, match="layers"):             # bad input: refused before a job begins
        actions.execute_run(registry, store, dataclasses.replace(form, layers="9"), tmp_path)
    reopened = RunStore(tmp_path)
    assert [r.id for r in reopened.list()] == [run_id]
    assert [(j.status, j.run_id) for j in reopened.jobs()] == [("done", run_id)]


def test_tracked_records_failure_and_interrupt(tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(ValueError):
        with job_status.tracked(store, "path", "bad", "m"):
            raise ValueError("receivers: no head q:9.9 in this model")
    with pytest.raises(RuntimeError):
        with job_status.tracked(store, "sweep", "oom", "m"):
            raise RuntimeError("CUDA out of memory")
    with pytest.raises(KeyboardInterrupt):
        with job_status.tracked(store, "sweep", "stopped", "m"):
            raise KeyboardInterrupt
    with job_status.tracked(store, "sweep", "no save", "m"):
        pass
    with job_status.tracked(store, "sweep", "ok", "m", interval=0.05) as job:
        time.sleep(0.3)                                           # the heartbeat thread beats meanwhile
        assert store.job(job.id).updated > store.job(job.id).started
        job.done(3)
    by_label = {j.label: j for j in store.jobs()}
    assert by_label["bad"].reason == "receivers: no head q:9.9 in this model"
    assert by_label["oom"].reason == "internal error: RuntimeError: CUDA out of memory"
    assert (by_label["stopped"].status, by_label["stopped"].reason) == (
        "cancelled", "cancelled: the job's process was stopped (KeyboardInterrupt)")
    assert by_label["no save"].status == "failed"
    assert (by_label["ok"].status, by_label["ok"].run_id) == ("done", 3)


def test_history_lists_failed_jobs_with_their_reason(tmp_path, result):
    store = RunStore(tmp_path)
    run_id = store.save(result, IOI, label="IOI heads")
    job = store.begin_job("sweep", "killed sweep", "tiny", pid=2**22 + 12345)   # no such process
    shown = job_status.unfinished_and_failed(store)
    assert [(j.id, j.status) for j in shown] == [(job, "failed")]
    html = str(history_tab.render_history(store.list(), run_id, shown))
    assert "killed sweep" in html and "worker process" in html and "exited" in html
    assert "job-item job-failed" in html and html.count("run-item") == 1


# -- the dashboard's flags ----------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["--store-url", "mysql://h/db"], "unsupported store URL 'mysql://h/db'"),
    (["--device-map", "everywhere"], "unknown device map 'everywhere'"),
    (["--device-map", "auto", "--device", "cuda:3"], "both place the model"),
    (["--jobs", "celery"], "--jobs celery needs --redis-url"),
])
def test_dashboard_flags_bad_input_exit_2_before_serving(tmp_path, argv, needle, capsys, monkeypatch):
    from dashboard.__main__ import main
    monkeypatch.delenv("PATCHBOARD_REDIS_URL", raising=False)
    monkeypatch.delenv("PATCHBOARD_STORE_URL", raising=False)
    assert main(["--data-dir", str(tmp_path), "--port", "1", *argv]) == 2
    assert needle in capsys.readouterr().err


# -- forks of a threaded server (Dash's diskcache jobs) ------------------------------------------------
def test_a_fork_waits_for_sqlite_work_in_another_thread():
    import threading
    from dashboard.server import fork_guard
    inside, release = threading.Event(), threading.Event()

    def busy():
        with fork_guard.held():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=busy)
    t.start()
    assert inside.wait(10)
    threading.Timer(0.5, release.set).start()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    waited = time.monotonic() - start
    os.waitpid(pid, 0)
    t.join(10)
    assert waited >= 0.4, "the fork did not wait for the thread inside SQLite"


def _child_reads(path, q):
    q.put(len(RunStore(path).list()))


def test_jobs_forked_while_threads_use_the_store_do_not_hang(tmp_path, result):
    import threading
    store = RunStore(tmp_path)
    store.save(result, IOI)
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            store.list()
            store.fail_stale(60)

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    try:
        children = []
        for _ in range(12):
            p = ctx.Process(target=_child_reads, args=(tmp_path, q))
            p.start()
            children.append(p)
        for p in children:
            p.join(30)
        hung = [p.pid for p in children if p.is_alive()]
        for p in children:
            if p.is_alive():
                p.kill()
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not hung, f"{len(hung)} forked children hung in SQLite"
    assert [q.get(timeout=5) for _ in children] == [1] * len(children)
