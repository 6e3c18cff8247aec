"""No fork while another thread is inside SQLite.

Dash's diskcache jobs are processes forked from the threaded web server. A fork copies every
lock in its current state but only the forking thread: if another thread was inside SQLite at
that moment (the run store, or the job cache that Dash polls twice a second per running job),
SQLite's process-wide mutexes stay locked forever in the child, and the job hangs at its first
`sqlite3.connect` (seen under `tests/test_load.py`'s 20 clients, with a faulthandler dump).

So every SQLite call of the run store and of the job cache holds `held()`, and a fork (an
`os.register_at_fork` hook) waits for that lock: the child starts with no SQLite call in flight.
The lock is process-wide by nature (a fork is); in the child it is replaced by a fresh one.

>>> with held():                  # doctest: +SKIP
...     db.execute("SELECT 1")
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager

import diskcache


class _Guard:
    """The lock and its fork hooks (one per process; re-created in a forked child)."""

    def __init__(self):
        self.lock = threading.RLock()

    def before_fork(self):
        self.lock.acquire()

    def after_fork_in_parent(self):
        self.lock.release()

    def after_fork_in_child(self):
        self.lock = threading.RLock()      # the child's only thread owns nothing yet


_GUARD = _Guard()
os.register_at_fork(before=_GUARD.before_fork, after_in_parent=_GUARD.after_fork_in_parent,
                    after_in_child=_GUARD.after_fork_in_child)


@contextmanager
def held():
    """Hold the fork guard around SQLite work (re-entrant)."""
    lock = _GUARD.lock
    with lock:
        yield


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
