"""The Celery side the web server (`--jobs celery`) and `python -m dashboard worker` share: the one
app config (`celery_app`, kept in the engine so the CLI's sharded sweeps use it too) and the task
a worker runs for one shard of a sweep (`register_shard_task`; the client is
`patching/runs/sharded.py`).

>>> celery_app("http://x")
Traceback (most recent call last):
...
ValueError: --redis-url must be a Redis URL like redis://HOST:6379/0, not 'http://x'
"""
from __future__ import annotations

from typing import Callable

from patching.runs.celery_app import celery_app
from patching.runs.sharded import CANCEL_KEY, SHARD_TASK, execute_shard

__all__ = ["celery_app", "register_shard_task"]


def register_shard_task(capp, get_model: Callable, store=None):
    """Register `SHARD_TASK` on `capp`: one shard of a sweep (`execute_shard`) with its progress
    in the task's state (PROGRESS: done, total, worker), the run's cancel flag read from Redis at
    each report, and (with a `store`) a job record per shard. Returns the task.

    >>> register_shard_task(celery_app("redis://127.0.0.1:6379/0"), registry.get).name   # doctest: +SKIP
    'patchboard.sweep_shard'
    """
    @capp.task(name=SHARD_TASK, bind=True, track_started=True, acks_late=False)
    def sweep_shard(self, data: dict) -> dict:
        worker = self.request.hostname or ""
        client = capp.backend.client
        key = CANCEL_KEY.format(run=data.get("run", "") if isinstance(data, dict) else "")

        def report(done: int, total: int) -> None:
            self.update_state(state="PROGRESS", meta={"done": done, "total": total, "worker": worker})
        return execute_shard(data, get_model, report, lambda: bool(client.exists(key)), store, worker)
    return sweep_shard
