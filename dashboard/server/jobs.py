"""Background jobs: `make_jobs` (diskcache | Celery), made robust under load (found by
`tests/test_load.py`, 20 clients):

- Dash 4.4's `DiskcacheManager.terminate_job` lists the job's children after checking the pid
  exists; a job that exits in between raises `psutil.NoSuchProcess`, and the poll that asked for
  the result answers HTTP 500 (the browser then never shows that run). `DiskcacheJobs` treats a
  job that is already gone as terminated.
- Progress goes through the job cache (SQLite); with many queued jobs writing "queued behind
  another run" twice a second, a write can time out (`diskcache.core.Timeout`) and, raised inside
  the run, failed it as an internal error. `progress_reporter` makes progress best-effort: a lost
  progress update never fails a run.

(No fork while a server thread is inside SQLite: `fork_guard.py`; `make_jobs` wraps the job cache
in it.)

>>> report = progress_reporter(set_progress)        # doctest: +SKIP
>>> actions.execute_run(registry, store, form, data_dir, report=report)   # doctest: +SKIP
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import dash

log = logging.getLogger("dashboard")
JOB_KINDS = ("diskcache", "celery")


class DiskcacheJobs(dash.DiskcacheManager):
    """`dash.DiskcacheManager` whose `terminate_job` tolerates a job process that has just exited."""

    def terminate_job(self, job):
        import psutil
        try:
            super().terminate_job(job)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, ProcessLookupError):
            pass                          # gone already: that is what terminating wanted


def progress_reporter(set_progress) -> Callable:
    """A `report(Progress)` for the run actions (`dashboard.actions`) that writes `Progress.as_tuple()` (or a plain value,
    e.g. a status string) through Dash's `set_progress` and never raises (a failed write is
    logged once per job)."""
    warned = []

    def report(progress) -> None:
        try:
            set_progress(progress.as_tuple() if hasattr(progress, "as_tuple") else progress)
        except Exception as exc:  # noqa: BLE001 - progress is best-effort; the run goes on
            if not warned:
                warned.append(exc)
                log.warning("progress update lost (%s: %s); the run continues", type(exc).__name__, exc)

    return report


def make_jobs(kind: str = "diskcache", data_dir: str | Path = ".patchboard", redis_url: str | None = None):
    """The background-callback manager: DiskcacheManager (embedded: jobs are processes forked from
    the server) or CeleryManager (jobs queued on Redis for `python -m dashboard worker` processes).

    ValueError with what to do when celery is asked for but cannot be used.

    >>> make_jobs("celery", redis_url="redis://127.0.0.1:6379/0")     # doctest: +SKIP
    """
    if kind == "diskcache":
        import diskcache
        cache_dir = Path(data_dir) / "jobs-cache"
        cache_dir.mkdir(parents=True, exist_ok=True)
        from dashboard.server.fork_guard import GuardedCache   # no fork while a thread is inside SQLite
        return DiskcacheJobs(GuardedCache(str(cache_dir)))
    if kind == "celery":
        if not redis_url:
            raise ValueError("--jobs celery needs --redis-url, e.g. redis://localhost:6379/0")
        from dashboard.server.celery import celery_app     # the same app config as `python -m dashboard worker`
        return dash.CeleryManager(celery_app(redis_url))
    raise ValueError(f"unknown jobs backend {kind!r}; choose one of {', '.join(JOB_KINDS)}")
