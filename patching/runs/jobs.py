"""A background run's status record: begun when it starts, kept alive by heartbeats, finished as
done / failed / cancelled — and given up on by `RunStore.fail_stale` when its process dies
(a cancelled Dash job is killed outright, so nothing in it can say so).

>>> from patching import PatchSpec, sweep
>>> with tracked(store, "sweep", "IOI · head_out", "default") as job:
...     run_id = store.save(sweep(model, prompts, PatchSpec(kind="resid_pre"), on_progress=job.beat), pairs)
...     job.done(run_id)
>>> store.jobs(1)[0].status
'done'
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("dashboard")

HEARTBEAT_S = 10.0       # a running job writes a heartbeat this often (from a thread, progress or not)
STALE_AFTER_S = 120.0    # a job on another host with no heartbeat for this long is marked failed
CANCEL_CHECK_S = 2.0     # a running job with a token looks for a Cancel request this often


class JobCancelled(ValueError):
    """Cancel was pressed for this job (`RunStore.request_cancel`): it stops, or never starts. A
    ValueError, so every Run handler shows its message inline like any other refusal."""


def job_token(session: str | None, button: str, n_clicks: int | None) -> str | None:
    """The name a page gives the job one click of `button` starts, or None without a session.

    >>> job_token("5f0c", "run-button", 3)
    '5f0c:run-button:3'
    """
    return f"{session}:{button}:{int(n_clicks or 0)}" if session else None


@dataclass
class Job:
    """The handle a running job holds: `beat()` (throttled, safe to call per patch), `done(run_id)`."""
    store: object
    id: int
    interval: float = HEARTBEAT_S
    run_id: int | None = None
    token: str | None = None
    cancel_check: float = CANCEL_CHECK_S
    _last: float = field(default_factory=time.monotonic)
    _checked: float = field(default_factory=time.monotonic)

    def beat(self, *_ignored) -> None:
        """Heartbeat, at most once per `interval` seconds; accepts on_progress's (done, total).
        Raises JobCancelled once Cancel was pressed for this job (checked every `cancel_check` s):
        a Celery worker whose revoke message was lost still stops at its next progress report."""
        now = time.monotonic()
        if self.token and now - self._checked >= self.cancel_check:
            self._checked = now
            self.raise_if_cancelled()
        if now - self._last >= self.interval:
            self._last = now
            try:
                self.store.heartbeat(self.id)
            except Exception:               # the run matters more than its status record
                log.warning("heartbeat for job %s failed", self.id, exc_info=True)

    def raise_if_cancelled(self) -> None:
        try:
            cancelled = self.store.cancel_requested(self.token)
        except Exception:
            log.warning("could not read job %s's cancel request", self.id, exc_info=True)
            return
        if cancelled:
            raise JobCancelled("Run cancelled; nothing was saved.")

    def done(self, run_id: int) -> None:
        self.run_id = int(run_id)


def _beat_until(job: Job, stop: threading.Event) -> None:
    while not stop.wait(job.interval):
        try:
            job.store.heartbeat(job.id)
        except Exception:
            log.warning("heartbeat for job %s failed", job.id, exc_info=True)


@contextmanager
def tracked(store, kind: str, label: str, model: str, *, interval: float = HEARTBEAT_S,
            stale_after: float = STALE_AFTER_S, token: str | None = None):
    """Record a job around a block: stale jobs are failed first, then this one is begun; a thread
    beats every `interval` s; the block's end finishes it — done (with `job.done(run_id)`), failed
    with the error's message, or cancelled (interrupted, or JobCancelled). The exception is
    re-raised. With a `token` (`job_token`), a job whose Cancel was pressed while it waited in a
    queue is recorded as cancelled and raises JobCancelled before the block runs."""
    try:
        store.fail_stale(stale_after)
    except Exception:
        log.warning("could not check for stale jobs", exc_info=True)
    job = Job(store, store.begin_job(kind, label, model, token=token), interval, token=token,
              cancel_check=CANCEL_CHECK_S)
    try:
        job.raise_if_cancelled()
    except JobCancelled:
        _finish(store, job.id, "cancelled", "cancelled before it started: Cancel was pressed while it was queued")
        raise
    stop = threading.Event()
    thread = threading.Thread(target=_beat_until, args=(job, stop), daemon=True, name=f"heartbeat-{job.id}")
    thread.start()
    try:
        yield job
    except JobCancelled:
        _finish(store, job.id, "cancelled", "cancelled: Cancel was pressed while it ran")
        raise
    except ValueError as exc:
        _finish(store, job.id, "failed", str(exc))
        raise
    except Exception as exc:
        _finish(store, job.id, "failed", f"internal error: {type(exc).__name__}: {exc}")
        raise
    except BaseException as exc:         # KeyboardInterrupt / SystemExit: stopped from outside
        _finish(store, job.id, "cancelled", f"cancelled: the job's process was stopped ({type(exc).__name__})")
        raise
    else:
        if job.run_id is None:
            _finish(store, job.id, "failed", "the job ended without saving a run")
        else:
            _finish(store, job.id, "done", "", job.run_id)
    finally:
        stop.set()


def _finish(store, job_id: int, status: str, reason: str, run_id: int | None = None) -> None:
    try:
        store.finish_job(job_id, status, reason, run_id)
    except Exception:
        log.warning("could not record the end of job %s", job_id, exc_info=True)


WATCH_EVERY_S = 5.0      # a job queued for the run slot runs the watchdog (`RunStore.fail_stale`) this often


def watch_queue(store, on_wait: Callable[[float], None] | None = None, every_s: float = WATCH_EVERY_S,
                stale_after: float = STALE_AFTER_S, stopped_after: float | None = None) -> Callable[[float], None]:
    """run_slot's `on_wait` for a queued job: `on_wait` as before, and every `every_s` s the
    watchdog, so a job whose process was stopped (SIGSTOP) while holding the slot is failed and
    killed and the queue moves on (`stopped_after`: RunStore.fail_stale's `stopped_after_s`).

    >>> with run_slot(data_dir, watch_queue(store, report)):              # doctest: +SKIP
    ...     run()
    """
    last = [float("-inf")]

    def waited(seconds: float) -> None:
        if on_wait is not None:
            on_wait(seconds)
        if seconds - last[0] >= every_s:
            last[0] = seconds
            try:
                store.fail_stale(stale_after, **({} if stopped_after is None else {"stopped_after_s": stopped_after}))
            except Exception:
                log.warning("the queue's watchdog could not check the running jobs", exc_info=True)
    return waited


def unfinished_and_failed(store, limit: int = 20, stale_after: float = STALE_AFTER_S) -> list:
    """The jobs the history list shows beside the runs: running, failed and cancelled ones (newest
    first), after marking the stale ones failed. A store error gives an empty list, not a broken page.

    >>> job = store.begin_job("sweep", "IOI · head_out", "default")
    >>> store.finish_job(job, "failed", "out of memory")
    >>> [j.status for j in unfinished_and_failed(store)]
    ['failed']
    """
    try:
        store.fail_stale(stale_after)
        return [j for j in store.jobs(limit) if j.status != "done"]
    except Exception:
        log.warning("could not read the job records", exc_info=True)
        return []
