"""dashboard/jobs.py: the job manager survives a job that exits while being terminated, and a
failed progress write never fails a run (both seen under tests/test_load.py's 20 clients)."""
from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from dashboard import make_jobs
from dashboard.actions import Progress
from dashboard.server.jobs import DiskcacheJobs, progress_reporter


def test_make_jobs_uses_the_tolerant_manager(tmp_path):
    assert isinstance(make_jobs("diskcache", tmp_path), DiskcacheJobs)


def test_terminate_a_job_that_exits_meanwhile(tmp_path, monkeypatch):
    jobs = make_jobs("diskcache", tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        def gone(self, *a, **k):              # the job exits between pid_exists and children()
            raise psutil.NoSuchProcess(proc.pid)
        monkeypatch.setattr(psutil.Process, "children", gone)
        with pytest.raises(psutil.NoSuchProcess):          # what Dash 4.4 itself does
            super(DiskcacheJobs, jobs).terminate_job(proc.pid)
        jobs.terminate_job(proc.pid)                       # ours: terminated, no error
        jobs.terminate_job(None)
    finally:
        proc.kill()
        proc.wait()
    jobs.terminate_job(proc.pid)                           # long gone: still fine


def test_progress_reporter_never_fails_the_run(caplog):
    seen = []
    report = progress_reporter(seen.append)
    report(Progress(1, 4, "1 / 4 patches", ""))
    assert seen == [(1, 4, "1 / 4", "1 / 4 patches", "")]

    def timeout(_values):
        raise TimeoutError("database is locked")
    report = progress_reporter(timeout)
    report(Progress(0, 1, "queued", ""))
    report(Progress(0, 1, "queued", ""))
    assert [r.message for r in caplog.records].count(
        "progress update lost (TimeoutError: database is locked); the run continues") == 1


def test_progress_reporter_passes_plain_values_through():
    # the Circuit tab reports status strings, not Progress objects
    seen = []
    report = progress_reporter(seen.append)
    report("running the circuit and its curve…")
    assert seen == ["running the circuit and its curve…"]
    progress_reporter(lambda _v: (_ for _ in ()).throw(TimeoutError("locked")))("queued")   # no raise
