"""A sharded run's shards (a sweep, path patching, attribution, a faithfulness curve) on Celery
workers: the client that sends them (a Celery group), follows them (progress summed over the
shards, an ETA, which workers took them), retries a shard whose worker died, cancels them all
(Ctrl-C, SIGTERM, a timeout), and merges the parts; and the task body a worker runs.

The client never imports the dashboard: the task is sent by name (`SHARD_TASK`) to the workers
`python -m dashboard worker` starts (they register it, `dashboard/server/celery.py`).

- Worker lost: a pool process killed mid-shard fails the task with WorkerLostError; a whole worker
  killed stops answering `ping`. Either way the client sends the shard again (a new task, taken by
  a worker that is alive) up to `retries` times, then fails naming the shard, its workers and why.
  Tasks are acknowledged when they start (`task_acks_late=False`): Redis redelivers an unacked
  task only after its visibility timeout (12 h), far too late, so the client retries instead.
- Cancel (Ctrl-C in the CLI): a flag in Redis that every shard reads at its progress reports,
  and Celery's revoke (terminate) of every shard's task; each worker records its shard's job
  cancelled.

>>> ShardProgress().line()
'0 of 0 shards done'
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from patching.core.prompts import PromptPair, PromptSet
from patching.methods.shards import Shard, ShardPart, merge, run_shard

log = logging.getLogger("patching.shards")

SHARD_TASK = "patchboard.sweep_shard"
CANCEL_KEY = "patchboard:shards:{run}:cancel"
CANCEL_TTL_S = 24 * 3600
PING_EVERY_S = 2.0           # the client pings the workers running its shards this often
LOST_AFTER_PINGS = 3         # ... and gives a shard up as lost after this many pings unanswered
REPORT_EVERY_S = 0.5         # a shard reports progress (and reads the cancel flag) this often


class ShardFailed(RuntimeError):
    """A shard failed for good (after its retries), or for a reason a retry cannot change."""


class ShardTimeout(ShardFailed, TimeoutError):
    """The run did not finish within its time limit; every shard was cancelled."""


@dataclass
class ShardProgress:
    """The client's view of the shards: cells done / total per shard, the worker of each."""
    done: dict[int, int] = field(default_factory=dict)
    total: dict[int, int] = field(default_factory=dict)
    workers: dict[int, str] = field(default_factory=dict)
    finished: set = field(default_factory=set)
    retried: int = 0
    count: int = 0

    def cells(self) -> tuple[int, int] | None:
        """(done, total) summed over the shards, once every shard has said its total."""
        if len(self.total) < self.count:
            return None
        return sum(self.done.values()), sum(self.total.values())

    def line(self) -> str:
        """'2 of 4 shards done · 2 workers took shards (w1@h, w2@h) · 1 retried'.

        >>> ShardProgress({0: 5}, {0: 5, 1: 9}, {0: "w1@h", 1: "w2@h"}, {0}, 0, 2).line()
        '1 of 2 shards done · 2 workers took shards (w1@h, w2@h)'
        """
        text = f"{len(self.finished)} of {self.count} shards done"
        names = sorted(set(self.workers.values()))
        if names:
            text += f" · {len(names)} worker{'s' if len(names) != 1 else ''} took shards ({', '.join(names)})"
        if self.retried:
            text += f" · {self.retried} retried"
        return text

    def eta(self, elapsed_s: float) -> float | None:
        """Seconds left at the pace so far (cells done per second over all shards); None before
        every shard has said its total or any cell is done.

        >>> ShardProgress({0: 5, 1: 5}, {0: 10, 1: 10}, count=2).eta(4.0)
        4.0
        """
        cells = self.cells()
        if cells is None or cells[0] <= 0:
            return None
        done, total = cells
        return elapsed_s / done * max(total - done, 0)


def payload(prompts: PromptSet, shard: Shard, run: str) -> dict:
    """What one shard's task carries: the shard, the prompt pairs as text, the run's id.

    >>> from patching import PatchSpec
    >>> sorted(payload(prompts, Shard(PatchSpec(kind="resid_pre"), 0, 2, 64.0), "r1"))
    ['pairs', 'prepend_bos', 'run', 'shard']
    """
    return {"shard": shard.to_dict(), "run": run, "prepend_bos": prompts.prepend_bos,
            "pairs": [[p.clean, p.corrupt, p.answer, p.wrong] for p in prompts.pairs]}


def execute_shard(data: dict, get_model: Callable, report: Callable[[int, int], None],
                  cancelled: Callable[[], bool], store=None, worker: str = "") -> dict:
    """A worker's task body: load the model, tokenise the pairs, run the shard, return its part as
    JSON. `report(done, total)` is called at most every REPORT_EVERY_S; `cancelled()` is read then
    and stops the shard (JobCancelled). With a `store`, the shard is a job in its history.

    >>> execute_shard({}, None, None, None)
    Traceback (most recent call last):
    ...
    ValueError: a shard task needs 'shard', 'pairs', 'prepend_bos' and 'run', not []
    """
    from patching.runs.jobs import Job, JobCancelled
    if not isinstance(data, dict) or not {"shard", "pairs", "prepend_bos", "run"} <= set(data):
        raise ValueError(f"a shard task needs 'shard', 'pairs', 'prepend_bos' and 'run', not {sorted(data or {})}")
    shard = Shard.from_dict(data["shard"])
    model = get_model(shard.spec.model)
    prompts = PromptSet.from_pairs(model, [PromptPair(*p) for p in data["pairs"]], bool(data["prepend_bos"]))
    job_id = store.begin_job(shard.work.name, f"{shard.spec.kind} · {shard.label}", shard.spec.model) \
        if store is not None else None
    job = Job(store, job_id) if job_id is not None else None
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if job is not None:
            job.beat()
        now = time.monotonic()
        if now - last[0] >= REPORT_EVERY_S or done >= total:
            last[0] = now
            if cancelled():
                raise JobCancelled(f"{shard.label} cancelled")
            report(done, total)
    try:
        part = run_shard(model, prompts, shard, on_progress=progress, worker=worker)
    except BaseException as exc:
        if job_id is not None:
            stopped = isinstance(exc, (JobCancelled, KeyboardInterrupt, SystemExit))
            _finish(store, job_id, "cancelled" if stopped else "failed", str(exc) or type(exc).__name__)
        raise
    if job_id is not None:
        _finish(store, job_id, "done", "")
    return part.to_json()


def _finish(store, job_id: int, status: str, reason: str) -> None:
    try:
        store.finish_job(job_id, status, reason)
    except Exception:
        log.warning("could not record the end of shard job %s", job_id, exc_info=True)


def _state(result) -> tuple[str, dict]:
    try:
        state, info = result.state, result.info
    except Exception as exc:                    # a result the backend cannot decode
        return "FAILURE", {"error": f"{type(exc).__name__}: {exc}"}
    return state, info if isinstance(info, dict) else {"error": info}


class _Run:
    """One sharded run in flight (the client's bookkeeping)."""

    def __init__(self, capp, prompts: PromptSet, shards: tuple[Shard, ...], retries: int):
        self.capp, self.prompts, self.shards, self.retries = capp, prompts, shards, retries
        self.id = uuid.uuid4().hex
        self.progress = ShardProgress(count=len(shards))
        self.attempts = {s.index: 0 for s in shards}
        self.history: dict[int, list[str]] = {s.index: [] for s in shards}
        self.missed: dict[int, int] = {}
        self.parts: dict[int, ShardPart] = {}
        self.tasks: dict[int, object] = {}

    def send_all(self) -> None:
        from celery import group
        sigs = [self.capp.signature(SHARD_TASK, args=[payload(self.prompts, s, self.id)]) for s in self.shards]
        for shard, result in zip(self.shards, group(sigs).apply_async().results):
            self.tasks[shard.index] = result

    def retry(self, k: int, why: str) -> None:
        """Send shard k again, or fail the run when it has had its retries."""
        shard = self.shards[k]
        self.history[k].append(why)
        self.tasks[k].revoke()                          # should its worker come back, it skips it
        self.progress.done.pop(k, None)
        self.progress.total.pop(k, None)
        self.progress.workers.pop(k, None)
        self.missed.pop(k, None)
        if self.attempts[k] >= self.retries:
            raise ShardFailed(f"{shard.label} failed {self.attempts[k] + 1} times, so the {shard.work.noun} failed: "
                              + "; ".join(self.history[k]))
        self.attempts[k] += 1
        self.progress.retried += 1
        log.warning("%s: %s; sending it again (retry %d of %d)", shard.label, why, self.attempts[k], self.retries)
        self.tasks[k] = self.capp.send_task(SHARD_TASK, args=[payload(self.prompts, shard, self.id)])

    def poll(self) -> None:
        """Read every unfinished shard's state once; collect finished parts, retry lost ones."""
        for k, result in list(self.tasks.items()):
            if k in self.parts:
                continue
            state, info = _state(result)
            if state == "SUCCESS":
                self.parts[k] = ShardPart.from_json(result.result)
                self.progress.finished.add(k)
                self.progress.total.setdefault(k, self.progress.done.get(k, 0))
                self.progress.done[k] = self.progress.total[k]
                self.progress.workers[k] = self.parts[k].worker or self.progress.workers.get(k, "?")
            elif state in ("PROGRESS", "STARTED"):
                if info.get("worker") or info.get("hostname"):
                    self.progress.workers[k] = info.get("worker") or info.get("hostname")
                if "total" in info:
                    self.progress.done[k], self.progress.total[k] = int(info["done"]), int(info["total"])
            elif state == "FAILURE":
                self._failed(k, result)

    def _failed(self, k: int, result) -> None:
        error = result.result
        name = type(error).__name__
        worker = self.progress.workers.get(k, "a worker")
        if name == "WorkerLostError":
            self.retry(k, f"its process on {worker} died ({error})")
            return
        label = self.shards[k].label
        if isinstance(error, ValueError):             # bad input: the same on every worker
            raise ValueError(f"{label} refused on {worker}: {error}")
        raise ShardFailed(f"{label} failed on {worker}: {name}: {error}")

    def check_workers(self) -> None:
        """Retry the shards whose worker stopped answering pings LOST_AFTER_PINGS times running."""
        running = {k: w for k, w in self.progress.workers.items() if k not in self.parts}
        if not running:
            return
        names = sorted(set(running.values()))            # returns as soon as they all answered
        replies = self.capp.control.ping(destination=names, timeout=1.0, limit=len(names)) or []
        alive = {name for reply in replies for name in reply}
        for k, worker in running.items():
            if worker in alive:
                self.missed.pop(k, None)
                continue
            self.missed[k] = self.missed.get(k, 0) + 1
            if self.missed[k] >= LOST_AFTER_PINGS:
                self.retry(k, f"its worker {worker} stopped answering ({LOST_AFTER_PINGS} pings)")

    def cancel(self) -> None:
        """Every shard stops: the run's cancel flag in Redis, and each task revoked (terminated)."""
        try:
            with self.capp.connection_for_write() as conn:
                conn.default_channel.client.set(CANCEL_KEY.format(run=self.id), "1", ex=CANCEL_TTL_S)
        except Exception:
            log.warning("could not set the cancel flag of run %s", self.id, exc_info=True)
        ids = [r.id for k, r in self.tasks.items() if k not in self.parts]
        if ids:
            self.capp.control.revoke(ids, terminate=True, signal="SIGTERM")


def live_workers(redis_url: str, *, capp=None, timeout_s: float = 1.0) -> list[str]:
    """The names of the workers answering a ping on `redis_url` (sorted; [] when none answers);
    ValueError when Redis cannot be reached.

    >>> live_workers("redis://127.0.0.1:6379/0")          # doctest: +SKIP
    ['w1@host', 'w2@host']
    """
    from patching.runs.celery_app import celery_app
    capp = capp or celery_app(redis_url)
    try:
        replies = capp.control.ping(timeout=timeout_s) or []
    except Exception as exc:             # kombu's OperationalError: nothing listens there
        raise ValueError(f"cannot reach Redis at {redis_url} ({exc}); start redis-server or fix --redis-url") from None
    return sorted(name for reply in replies for name in reply)


def run_sharded(redis_url: str, prompts: PromptSet, shards: tuple[Shard, ...], *,
                on_progress: Callable[[int, int], None] | None = None,
                on_status: Callable[[ShardProgress], None] | None = None,
                retries: int = 2, poll_s: float = 0.25, timeout_s: float | None = None,
                capp=None) -> tuple[object, list[ShardPart]]:
    """Send the shards as one Celery group, follow them, merge them: (result, parts in shard
    order). Any exception while they run (Ctrl-C's KeyboardInterrupt, a SIGTERM turned into one,
    the caller's from `on_progress` / `on_status`) cancels every shard before it is re-raised.
    ValueError when no worker answers or a shard refuses its input; ShardFailed when a shard fails
    for good; ShardTimeout after `timeout_s` (every shard cancelled).

    >>> run_sharded("redis://127.0.0.1:6379/0", prompts, plan(PatchSpec(kind="head_out"), 2))  # doctest: +SKIP
    """
    from patching.runs.celery_app import celery_app
    capp = capp or celery_app(redis_url)
    try:
        answered = capp.control.ping(timeout=2.0, limit=1)        # returns at the first answer
    except Exception as exc:             # kombu's OperationalError: nothing listens there
        raise ValueError(f"cannot reach Redis at {redis_url} ({exc}); start redis-server or fix --redis-url") from None
    if not answered:
        raise ValueError(f"no worker answers on {redis_url}; start one or more with "
                         f"`python -m dashboard worker --redis-url {redis_url}`")
    if timeout_s is not None and timeout_s <= 0:
        raise ShardTimeout(f"no time left for the sharded {shards[0].work.noun} (timeout {timeout_s:g} s)")
    run = _Run(capp, prompts, tuple(shards), retries)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        run.send_all()
        last_ping = time.monotonic()
        while len(run.parts) < len(run.shards):
            run.poll()
            if time.monotonic() - last_ping >= PING_EVERY_S:
                last_ping = time.monotonic()
                run.check_workers()
            cells = run.progress.cells()
            if on_progress is not None and cells is not None:
                on_progress(*cells)
            if on_status is not None:
                on_status(run.progress)
            if deadline is not None and time.monotonic() > deadline:
                raise ShardTimeout(f"the sharded {run.shards[0].work.noun} did not finish in {timeout_s:g} s "
                                   f"({run.progress.line()}); every shard was cancelled")
            if len(run.parts) < len(run.shards):
                time.sleep(poll_s)
    except BaseException:
        run.cancel()
        raise
    parts = [run.parts[s.index] for s in run.shards]
    return merge(parts), parts
