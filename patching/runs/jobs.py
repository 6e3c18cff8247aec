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
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("dashboard")

HEARTBEAT_S = 10.0       # a running job writes a heartbeat this often (from a thread, progress or not)
PROGRESS_EVERY_S = 0.5   # a running job records its progress in the store at most this often (for other pages)
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
    _shown: float = float("-inf")
    _work_started: float | None = None

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

    def progress(self, done: int, total: int, text: str = "", *, queued: bool = False) -> None:
        """Record where the job is, for pages other than the one that started it (a reload, a
        second tab): at most every PROGRESS_EVERY_S, always at the first count (done 0 of a known
        total: the counted work begins, the ETA's clock starts) and at the end. Never raises."""
        now = time.monotonic()
        first = total > 0 and self._work_started is None
        if first:
            self._work_started = time.time()
        if not (first or done >= total > 0) and now - self._shown < PROGRESS_EVERY_S:
            return
        self._shown = now
        try:
            self.store.set_job_progress(self.id, done, total, text, queued=queued, work_started=self._work_started)
        except Exception:
            log.warning("could not record job %s's progress", self.id, exc_info=True)

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
    token = token or f"job:{uuid.uuid4().hex}"       # every job can be cancelled by id (`cancel_job`)
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


@dataclass(frozen=True)
class RunningJob:
    """A running job as another page shows it: its record, its progress (None before the first
    report) and the token of the page click that started it."""
    info: object                     # patching.runs.store.JobInfo
    progress: object | None          # patching.runs.store.JobProgress
    token: str | None

    @property
    def queued(self) -> bool:
        return self.progress is None or self.progress.queued

    def started_by(self, session: str | None) -> bool:
        """Whether the page with this session id started it (`job_token`)."""
        return bool(session and self.token and self.token.startswith(f"{session}:"))

    def text(self) -> str:
        """'head_out · denoise … — 40 / 160 patched forwards · ≈ 12 s left'.

        >>> from patching.runs.store import JobInfo, JobProgress
        >>> RunningJob(JobInfo(3, "sweep", "head_out", "m", "running", "", None, 1, "h", 0.0, 0.0, None),
        ...            JobProgress(3, 40, 160, "40 / 160 patched forwards", False, 100.0, 110.0), None).text()
        'job 3 · head_out — 40 / 160 patched forwards · ≈ 30 s left'
        """
        what = f"job {self.info.id} · {self.info.label}"
        if self.progress is None:
            return f"{what} — starting…"
        eta = self.progress.eta_seconds
        return f"{what} — {self.progress.text}" + ("" if eta is None else f" · {eta_text(eta)}")


def eta_text(seconds: float) -> str:
    """'≈ 12 s left', '≈ 3 min left'.

    >>> eta_text(4.2), eta_text(200)
    ('≈ 4 s left', '≈ 3 min left')
    """
    return f"≈ {seconds:.0f} s left" if seconds < 120 else f"≈ {seconds / 60:.0f} min left"


def running_jobs(store, limit: int = 20, check_stale: bool = True) -> list[RunningJob]:
    """The running jobs, the one doing its work first (then those queued, oldest first), each with
    its progress; stale jobs are failed first (unless `check_stale` is False). A store error gives
    an empty list.

    >>> job = store.begin_job("sweep", "IOI · head_out", "default", token="page:run-button:1")
    >>> [(j.info.id == job, j.queued, j.started_by("page")) for j in running_jobs(store)]
    [(True, True, True)]
    """
    try:
        if check_stale:
            store.fail_stale(STALE_AFTER_S)
        infos = store.jobs(limit, status="running")
        ids_ = [j.id for j in infos]
        progress, tokens = store.job_progress(ids_), store.job_tokens(ids_)
    except Exception:
        log.warning("could not read the running jobs", exc_info=True)
        return []
    jobs = [RunningJob(j, progress.get(j.id), tokens.get(j.id)) for j in infos]
    return sorted(jobs, key=lambda j: (j.queued, j.info.id))


def cancel_job(store, job_id: int) -> bool:
    """Cancel the running job `job_id` from any page (the History list's Cancel, a reloaded tab):
    the job stops at its next progress report (every few seconds at most), or before it starts
    when still queued, and is recorded as cancelled. False when it is no longer running.

    >>> cancel_job(store, store.begin_job("sweep", "IOI · head_out", "default", token="page:run-button:1"))
    True
    """
    return store.request_cancel_job(job_id)
