"""Sharded runs from the dashboard: the backend a server started with `--redis-url` gets
(`CeleryShards`), and what the run card's Shards control says (`shard_control`).

The Run's own job (diskcache: forked from the server; Celery: on a worker) is the client: it sends
the shards to the `python -m dashboard worker`s (`patching/runs/sharded.py`), follows them
(progress summed over the shards, with an ETA), merges them and saves the run. Cancel stops the
job at its next progress report (JobCancelled) or terminates it (SIGTERM, `sigterm_interrupts`);
either way every shard is cancelled. With `--jobs celery` that job holds one worker's slot while
its shards run: start the workers with a slot to spare (`--concurrency 2`), or one more worker.

>>> shard_control(None)
(True, 'Sharding needs workers: start the server with --redis-url redis://HOST:PORT/DB and `python -m dashboard worker`s on it.')
"""
from __future__ import annotations

from typing import Callable

MAX_DASHBOARD_SHARDS = 16


class CeleryShards:
    """The shard backend on the workers of `redis_url`: who answers, and one run over them."""

    def __init__(self, redis_url: str):
        from patching.runs.celery_app import celery_app
        self.redis_url = redis_url
        self.capp = celery_app(redis_url)

    def workers(self) -> list[str]:
        """The names of the workers answering now (ValueError when Redis cannot be reached)."""
        from patching.runs.sharded import live_workers
        return live_workers(self.redis_url, capp=self.capp, timeout_s=0.5)

    def run(self, model, prompts, spec, n: int, on_progress: Callable[[int, int], None],
            on_status: Callable, max_memory_mb: float | None = None) -> object:
        """`spec`'s run in n shards, merged (the one-worker values under this machine's fixed budget);
        every shard cancelled when it stops early (an exception, SIGTERM)."""
        from patching.methods.shards import plan
        from patching.runs.sharded import run_sharded
        from patching.runs.signals import sigterm_interrupts
        with sigterm_interrupts():
            result, _parts = run_sharded(self.redis_url, prompts, plan(spec, n, max_memory_mb), on_progress=on_progress,
                                         on_status=on_status, capp=self.capp)
        return result


def shard_control(backend, celery_jobs: bool = False) -> tuple[bool, str]:
    """(Shards control disabled?, the note under it): why it is off, or who would take shards.

    >>> class Two:
    ...     redis_url = "redis://h:6379/0"
    ...     def workers(self): return ["w1@h", "w2@h"]
    >>> shard_control(Two())
    (False, '2 workers answer (w1@h, w2@h): a Run can be split over them.')
    """
    if backend is None:
        return True, ("Sharding needs workers: start the server with --redis-url redis://HOST:PORT/DB and "
                      "`python -m dashboard worker`s on it.")
    try:
        names = backend.workers()
    except ValueError as exc:
        return True, f"Sharding is off: {exc}"
    if not names:
        return True, (f"Sharding is off: no worker answers on {backend.redis_url}; start "
                      f"`python -m dashboard worker --redis-url {backend.redis_url}`.")
    note = f"{len(names)} worker{'s' if len(names) != 1 else ''} answer ({', '.join(names)}): a Run can be split over them."
    if celery_jobs:
        note += " The Run's own job holds one worker slot while its shards run."
    return False, note


def parse_shards(value) -> int:
    """The Shards control's value as a count: 1 (not sharded) for empty, else a whole number
    1..MAX_DASHBOARD_SHARDS; ValueError naming the value otherwise.

    >>> parse_shards(None), parse_shards("3")
    (1, 3)
    """
    if value in (None, ""):
        return 1
    try:
        number = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        number = float("nan")
    if not (number.is_integer() and 1 <= number <= MAX_DASHBOARD_SHARDS):     # NaN and inf are not integers
        raise ValueError(f"Shards must be a whole number from 1 to {MAX_DASHBOARD_SHARDS}, not {str(value)[:40]!r}")
    return int(number)
