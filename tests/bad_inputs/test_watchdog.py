"""Issue 18, class 9: a stopped job must not block the queue forever.

A real child process begins a job, takes the run slot and beats; the test SIGSTOPs it. A second
run queued for the slot (with the queue's watchdog, as every dashboard Run) gets the slot within
seconds: the stopped job is failed with the reason shown, and its process killed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from patching.runs import jobs
from patching.runs.slot import run_busy, run_slot
from patching.runs.store import RunStore

ROOT = Path(__file__).resolve().parents[2]
HOLDER = """
import sys, time
from patching.runs.store import RunStore
from patching.runs.slot import run_slot
from patching.runs.jobs import tracked
store = RunStore(sys.argv[1])
with tracked(store, "sweep", "holder", "default", interval=0.1) as job, run_slot(sys.argv[1]):
    print(job.id, flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """A child process holding the run slot inside a tracked job; (process, job id)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        job_id = int(proc.stdout.readline())
        yield proc, job_id
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_a_stopped_job_is_failed_and_the_queue_moves_on(tmp_path, holder):
    proc, job_id = holder
    store = RunStore(tmp_path)
    assert run_busy(tmp_path) and store.job(job_id).status == "running"
    os.kill(proc.pid, signal.SIGSTOP)
    start = time.monotonic()
    waited = []
    watch = jobs.watch_queue(store, waited.append, every_s=0.2, stopped_after=1.0)
    with run_slot(tmp_path, watch, poll=0.1):
        took = time.monotonic() - start
    assert took < 20, took                                  # not forever: about stopped_after_s
    assert waited                                           # it did queue behind the stopped job
    job = store.job(job_id)
    assert job.status == "failed"
    assert "no heartbeat for" in job.reason and "stopped or hung" in job.reason, job.reason
    assert proc.wait(timeout=10) == -signal.SIGKILL           # ours and stopped: killed, slot freed


def test_a_stopped_job_shows_its_reason_in_the_history_list(tmp_path, holder):
    from dashboard.tabs.history import render_job
    proc, job_id = holder
    store = RunStore(tmp_path)
    os.kill(proc.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 20
    while store.fail_stale(120, stopped_after_s=0.5) == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    text = str(render_job(store.job(job_id)).to_plotly_json())
    assert "failed: no heartbeat for" in text and "the job's process" in text and "stopped or hung" in text


def test_a_briefly_stopped_job_is_left_alone(tmp_path, holder):
    """Within stopped_after_s of its last heartbeat a stopped job is neither failed nor killed."""
    proc, job_id = holder
    store = RunStore(tmp_path)
    os.kill(proc.pid, signal.SIGSTOP)
    assert store.fail_stale(120, stopped_after_s=60) == 0
    os.kill(proc.pid, signal.SIGCONT)
    assert proc.poll() is None and store.job(job_id).status == "running"


def test_a_running_job_is_not_taken_for_stopped(tmp_path, holder):
    proc, job_id = holder
    store = RunStore(tmp_path)
    time.sleep(0.5)
    assert store.fail_stale(120, stopped_after_s=0.1) == 0 and proc.poll() is None
