"""The run store on a real PostgreSQL server (the multi-host store): round trip, jobs, concurrent
writers from several processes, reopen.

A private server is started in a temp dir on a free 127.0.0.1 port and stopped in a finally.
Skips, printing why, where PostgreSQL (Debian's `postgresql`) or the `psycopg` driver is not
installed: the driver is optional and not pinned (docs/DEPLOY.md), so `make test` does not bring it.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from patching.runs.store import RunStore, open_store
from patching import PatchSpec, sweep
from tests.conftest import IOI
from tests.forked import in_processes
from tests.e2e.support import free_port

pytestmark = pytest.mark.slow


def _pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


@pytest.fixture(scope="module")
def pg_url():
    bindir = _pg_bin()
    reason = None
    if bindir is None:
        reason = "PostgreSQL is not installed (apt-get install postgresql)"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            reason = "the optional psycopg driver is not installed (pip install 'psycopg[binary]')"
    if reason:
        print(f"\nskipping the PostgreSQL store test: {reason}", file=sys.stderr)
        pytest.skip(reason)
    as_user: list[str] = []
    root = tempfile.mkdtemp(prefix="pb-pg-")
    if os.geteuid() == 0:                       # postgres refuses to run as root
        import pwd
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(root, "data"), free_port()
    subprocess.run(as_user + [f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "pb"], check=True,
                   capture_output=True, timeout=120)
    log = open(os.path.join(root, "server.log"), "w")
    server = subprocess.Popen(as_user + [f"{bindir}/postgres", "-D", data, "-p", str(port), "-h", "127.0.0.1",
                                         "-k", root], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([f"{bindir}/pg_isready", "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"postgres did not start:\n{open(os.path.join(root, 'server.log')).read()[-2000:]}")
            time.sleep(0.3)
        subprocess.run([f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "pb", "patchboard"],
                       check=True, capture_output=True, timeout=60)
        yield f"postgresql+psycopg://pb@127.0.0.1:{port}/patchboard"
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def result(gpt2_model, ioi_prompts):
    return sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out", model="tiny"))


def test_round_trip_jobs_and_reopen(pg_url, result, tmp_path):
    store = open_store(pg_url, data_dir=tmp_path)
    assert store.path is None and store.data_dir == tmp_path and "postgresql" in store.display_url
    run_id = store.save(result, IOI, label="IOI heads")
    run = store.get(run_id)
    assert run.info.label == "IOI heads" and run.pairs == [tuple(p) for p in IOI]
    assert run.result.to_csv() == result.to_csv()
    job = store.begin_job("sweep", "IOI heads", "tiny")
    assert store.heartbeat(job)
    store.finish_job(job, "done", run_id=run_id)
    dead = store.begin_job("sweep", "killed", "tiny", pid=2**22 + 4321)
    assert store.fail_stale(60) == 1 and "exited" in store.job(dead).reason
    reopened = open_store(pg_url, data_dir=tmp_path)          # a restart: the schema is there already
    assert run_id in [r.id for r in reopened.list()]
    assert [(j.id, j.status) for j in reopened.jobs()[:2]] == [(dead, "failed"), (job, "done")]
    assert reopened.delete(run_id) and not reopened.delete(run_id)


def test_cancel_requests_on_postgres(pg_url, tmp_path):
    """The job-token upsert is dialect-specific (ON CONFLICT on both): a request before the job
    starts, one after, and a killed job with a request listed as cancelled."""
    store = open_store(pg_url, data_dir=tmp_path)
    assert store.request_cancel("pg-page:run-button:1") is None           # queued: no job yet
    early = store.begin_job("sweep", "queued then cancelled", "tiny", token="pg-page:run-button:1")
    assert store.cancel_requested("pg-page:run-button:1")
    late = store.begin_job("sweep", "killed after cancel", "tiny", pid=2**22 + 4322, token="pg-page:run-button:2")
    assert not store.cancel_requested("pg-page:run-button:2")
    assert store.request_cancel("pg-page:run-button:2") == late
    store.finish_job(early, "cancelled", "cancelled before it started")
    assert store.fail_stale(60) == 1
    assert (store.job(late).status, store.job(late).reason) == (
        "cancelled", f"cancelled: Cancel was pressed and its process {2**22 + 4322} stopped")


def _writer(url, payload, n, q):
    from patching.core.results import PatchResult
    store = open_store(url, data_dir=tempfile.mkdtemp())
    result = PatchResult.from_json(payload)
    for _ in range(n):
        job = store.begin_job("sweep", "w", "tiny")
        run_id = store.save(result, IOI)
        store.finish_job(job, "done", run_id=run_id)
        q.put(run_id)


def test_concurrent_writers(pg_url, result, tmp_path):
    store = open_store(pg_url, data_dir=tmp_path)
    before = len(store)
    ids = in_processes(_writer, 4, results_each=5, args=(pg_url, result.to_json(), 5))
    assert len(set(ids)) == 20 and len(store) == before + 20
    assert all(store.get(i).result.values.shape == result.values.shape for i in ids[::5])
    assert sum(1 for j in store.jobs(limit=200) if j.run_id in set(ids) and j.status == "done") == 20


def test_same_answers_on_postgres_and_sqlite(pg_url, result, tmp_path):
    """The same calls give the same answers on both back ends (ids aside)."""
    pg, lite = open_store(pg_url, data_dir=tmp_path / "pg"), RunStore(tmp_path / "lite")
    for store in (pg, lite):
        store.save(result, IOI, label="same")
    a, b = pg.list(1)[0], lite.list(1)[0]
    assert (a.label, a.kind, a.n_pairs, a.clean_value) == (b.label, b.kind, b.n_pairs, b.clean_value)
