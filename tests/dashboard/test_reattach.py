"""Runs a page did not start (a reload mid-run, a second tab): the run card finds them in the run
store, shows their progress with an ETA, cancels them, names the one its own queued run waits
for, and opens a re-attached sweep's result when it ends (issue #17, item 5). Callbacks are
called directly; tests/e2e/test_reattach_e2e.py drives the same in a browser."""
from __future__ import annotations

import time

import pytest

from dashboard import actions
from patching.runs.jobs import JobCancelled, Job, cancel_job, running_jobs, tracked


def _begin(store, token, done=None, total=None, text="", queued=False, started_ago=10.0):
    job = store.begin_job("sweep", "head_out · denoise · logit_diff · tiny", "m", token=token)
    if done is not None:
        store.set_job_progress(job, done, total, text, queued=queued, work_started=time.time() - started_ago)
    return job


def test_a_page_shows_a_run_it_did_not_start_with_progress_eta_and_cancel(app, store):
    job = _begin(store, "other-page:run-button:1", 40, 160, "40 / 160 patched forwards")
    out = app.patchboard.watch_jobs(1, "this-page", False, None)
    attached, value, max_, label, text, cancel_disabled, waiting_hidden = out[:7]
    assert attached == job and (value, max_, label) == (40, 160, "40 / 160")
    assert "40 / 160 patched forwards" in text and "s left" in text and f"job {job}" in text
    assert cancel_disabled is False and waiting_hidden is True
    # Cancel, with nothing of this page's own running, cancels that job through its token
    status = app.patchboard.cancelled(1, 0, "this-page", False, job)[0]
    assert f"Cancel sent to job {job}" in status
    assert store.cancel_requested("other-page:run-button:1")
    assert not store.cancel_requested("this-page:run-button:0")


def test_a_page_leaves_its_own_run_to_its_own_controls(app, store):
    _begin(store, "this-page:run-button:3", 1, 10)
    out = app.patchboard.watch_jobs(1, "this-page", True, None)
    assert out[0] is None and all(v is actions_no_update() for v in out[1:6])
    assert out[6] is True                                  # nothing to wait for


def actions_no_update():
    from dash import no_update
    return no_update


def test_a_queued_run_names_the_run_it_waits_for_and_can_cancel_it(app, store):
    ahead = _begin(store, "other-page:run-button:1", 5, 50, "5 / 50 patched forwards")
    _begin(store, "this-page:run-button:1", 0, 0, "queued", queued=True)
    out = app.patchboard.watch_jobs(2, "this-page", True, None)
    assert out[0] == ahead and out[6] is False and f"job {ahead}" in out[7] and "5 / 50" in out[7]
    assert "Cancel sent" in app.patchboard.cancel_waited_for(1, ahead)
    assert store.cancel_requested("other-page:run-button:1")


def test_an_attached_sweep_that_ends_is_opened(app, store, registry, form):
    run_id = actions.execute_run(registry, store, form, store.data_dir, token="other-page:run-button:1")
    job = store.jobs(1)[0].id
    out = app.patchboard.watch_jobs(5, "this-page", False, job)
    assert out[0] is None and out[5] is True and f"run #{run_id} is on screen" in out[4]
    assert out[8] == run_id                                # current-run: the result is shown


def test_run_progress_is_in_the_store_for_other_pages_while_it_runs(registry, store, form):
    seen = []

    def report(p):
        if "patched forwards" in p.label:
            seen.append([(j.progress.done, j.progress.total) for j in running_jobs(store) if j.progress])
    actions.execute_run(registry, store, form, store.data_dir, report=report)
    assert seen[0] == [(0, 8)] and seen[-1] == [(8, 8)]   # first count, then the end (throttled between)
    assert running_jobs(store) == []                       # ended: no longer listed, progress row gone


def test_cancel_job_by_id_stops_a_run_at_its_next_progress_report(store):
    with pytest.raises(JobCancelled):
        with tracked(store, "sweep", "x", "m") as job:     # no page token: still cancellable by id
            assert cancel_job(store, job.id)
            job._checked = float("-inf")                   # the next report looks for the request
            job.beat()
    assert store.jobs(1)[0].status == "cancelled"
    assert not cancel_job(store, store.jobs(1)[0].id)      # no longer running


def test_a_queued_run_cancelled_by_id_never_starts(store):
    seen = []
    with pytest.raises(JobCancelled):
        with tracked(store, "sweep", "x", "m") as job:
            cancel_job(store, job.id)
            job._checked = float("-inf")
            actions._queued(seen.append, store, job)(3.0)
    assert "queued behind another run (3 s)" in seen[0].label
    assert store.jobs(1)[0].status == "cancelled"


def test_job_progress_is_throttled_but_keeps_the_first_count_and_the_end(store):
    job = Job(store, store.begin_job("sweep", "x", "m"))
    job.progress(0, 0, "caching")
    job.progress(0, 100, "0 / 100")
    for done in range(1, 100):
        job.progress(done, 100, f"{done} / 100")
    assert store.job_progress([job.id])[job.id].done < 99           # throttled
    job.progress(100, 100, "100 / 100")
    p = store.job_progress([job.id])[job.id]
    assert (p.done, p.total, p.text, p.queued) == (100, 100, "100 / 100", False) and p.work_started


def test_request_cancel_job_of_an_unknown_job_is_named(store):
    with pytest.raises(ValueError, match="job 99 does not exist"):
        store.request_cancel_job(99)
