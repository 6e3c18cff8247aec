"""No fork while another thread is inside SQLite.

Dash's diskcache jobs are processes forked from the threaded web server. A fork copies every
lock in its current state but only the forking thread: if another thread was inside SQLite at
that moment (the run store, or the job cache that Dash polls twice a second per running job),
SQLite's process-wide mutexes stay locked forever in the child, and the job hangs at its first
`sqlite3.connect` (seen under `tests/test_load.py`'s 20 clients, with a faulthandler dump).

So every SQLite call of the run store and of the job cache holds `held()`, and a fork (an
`os.register_at_fork` hook) waits for that lock: the child starts with no SQLite call in flight.
The lock is process-wide by nature (a fork is); in the child it is replaced by a fresh one.

The same goes for torch's CPU thread pool (OpenMP): once the server has run one multi-threaded
op (a forward for the baselines, the cost preview or a clicked head, on a model big enough to
parallelise), a forked job hangs at its first multi-threaded op. `single_threaded_server()`
makes the web server's own torch work single-threaded, so no pool exists when Dash forks, and
gives every forked job the machine's thread count back.

>>> with held():                  # doctest: +SKIP
...     db.execute("SELECT 1")
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import diskcache

from patching.runs.sqlite_lock import held


class _ThreadsHook:
    """Whether `single_threaded_server()` registered its fork hook in this process."""

    def __init__(self):
        self.registered = False


_THREADS_HOOK = _ThreadsHook()


JOB_THREADS_ENV = "PATCHBOARD_JOB_THREADS"     # inherited by forked jobs: their torch threads


def _job_threads_in_child() -> None:
    n = os.environ.get(JOB_THREADS_ENV)
    if n:
        import torch
        torch.set_num_threads(int(n))


def single_threaded_server(threads: int | None = None) -> int:
    """Run this process's torch ops on one thread and give forked jobs `threads` (default: the
    current torch thread count) back; idempotent. Returns the jobs' thread count. Called by
    `python -m dashboard`:

    >>> single_threaded_server()           # doctest: +SKIP
    2
    """
    import torch

    n = int(threads or os.environ.get(JOB_THREADS_ENV) or torch.get_num_threads())
    os.environ[JOB_THREADS_ENV] = str(n)
    torch.set_num_threads(1)
    if not _THREADS_HOOK.registered:
        os.register_at_fork(after_in_child=_job_threads_in_child)
        _THREADS_HOOK.registered = True
    return n


class GuardedCache(diskcache.Cache):
    """`diskcache.Cache` (what `dash.DiskcacheManager` requires) whose calls hold the fork guard."""

    def get(self, *args, **kwargs):
        with held():
            return super().get(*args, **kwargs)

    def set(self, *args, **kwargs):
        with held():
            return super().set(*args, **kwargs)

    def add(self, *args, **kwargs):
        with held():
            return super().add(*args, **kwargs)

    def delete(self, *args, **kwargs):
        with held():
            return super().delete(*args, **kwargs)

    def touch(self, *args, **kwargs):
        with held():
            return super().touch(*args, **kwargs)

    @contextmanager
    def transact(self, retry: bool = False):
        with held(), super().transact(retry):
            yield


def in_forked_process(fn, *args, timeout: float = 300.0):
    """`fn(*args)` in a forked child, as a job would run it (with the jobs' torch threads when the
    server is single-threaded), and its picklable result; the exception it raised, re-raised here.

    The dashboard's cost preview calibrates this way: timed in the single-threaded server, the
    forwards would be slower than the jobs that run the sweep.

    >>> in_forked_process(sum, [1, 2])          # doctest: +SKIP
    3
    """
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    queue = ctx.SimpleQueue()

    def child():
        try:
            queue.put((True, fn(*args)))
        except BaseException as exc:   # noqa: BLE001 - handed to the parent
            queue.put((False, exc))

    proc = ctx.Process(target=child, daemon=True)
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        raise TimeoutError(f"{getattr(fn, '__name__', fn)} did not finish in {timeout:.0f} s")
    if queue.empty():
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} exited with code {proc.exitcode} and no result")
    ok, value = queue.get()
    if not ok:
        raise value
    return value


def job_like_calibration(model, prompts):
    """`patching.methods.cost.calibrate` timed with the jobs' thread count: in a forked child when this
    server runs torch single-threaded (`single_threaded_server`), else here."""
    from patching.methods.cost import calibrate

    jobs = int(os.environ.get(JOB_THREADS_ENV) or 1)
    import torch
    if jobs > 1 and torch.get_num_threads() == 1:
        try:
            return in_forked_process(calibrate, model, prompts, timeout=60.0)
        except (TimeoutError, RuntimeError) as exc:     # a lost child: time it here (slower, still honest)
            import logging
            logging.getLogger(__name__).warning("calibration in a forked process failed (%s); timing it "
                                                "in the server instead", exc)
    return calibrate(model, prompts)


def _time_threads(model, prompts, threads: int, repeat: int = 3) -> float:
    """Seconds of a 1-row plus a CALIBRATION_ROWS-row resumed forward of `prompts` (best of
    `repeat`) on `threads` torch threads: the two batch sizes a job runs."""
    import torch

    from patching.methods.cost import CALIBRATION_ROWS, _best
    torch.set_num_threads(threads)
    with torch.inference_mode():
        if model.runner is None:
            def run(b):
                return lambda: model.bridge(prompts.corrupt_tokens[:1].expand(b, -1))
        else:
            base = model.runner.run(prompts.corrupt_tokens[:1])
            x = base.layers[0].resid_pre

            def run(b):
                rows = torch.zeros(b, dtype=torch.long, device=x.device)
                return lambda: model.runner.resume(base, rows, 0, "pre", x.expand(b, -1, -1).contiguous(), 0)
        run(1)()
        return _best(run(1), repeat) + _best(run(CALIBRATION_ROWS), repeat)


def choose_job_threads(model, prompts, most: int | None = None) -> int:
    """The torch thread count jobs run fastest with, on this model and machine: one thread and
    `most` (default: the jobs' count, `PATCHBOARD_JOB_THREADS`) timed in a forked child, as a job
    runs. A small model often runs many times faster on one thread: OpenMP's threads meet at
    every op, and on a busy machine each meeting waits for a core (the shipped model on this
    2-core host: a head_out sweep 0.08 s on one thread, 1-3 s on two).

    >>> choose_job_threads(model, prompts)            # doctest: +SKIP
    1
    """
    most = int(most or os.environ.get(JOB_THREADS_ENV) or 1)
    if most <= 1:
        return 1
    timings = {n: in_forked_process(_time_threads, model, prompts, n, timeout=120.0) for n in (1, most)}
    return min(timings, key=timings.get)


def warm_jobs(calibrations, model, prompts) -> tuple[int, object]:
    """At server start, before any page: pick the jobs' thread count (`choose_job_threads`; forked
    jobs inherit it through PATCHBOARD_JOB_THREADS) and calibrate the cost estimate with it, so
    neither the first page nor the first run waits for (or competes with) the calibration.
    Returns (threads, calibration).

    >>> warm_jobs(app.patchboard.calibrations, model, prompts)     # doctest: +SKIP
    (1, Calibration(...))
    """
    import torch
    if torch.get_num_threads() == 1 and os.environ.get(JOB_THREADS_ENV):   # a single-threaded server
        os.environ[JOB_THREADS_ENV] = str(choose_job_threads(model, prompts))
    return int(os.environ.get(JOB_THREADS_ENV) or torch.get_num_threads()), calibrations.get(model, prompts)
