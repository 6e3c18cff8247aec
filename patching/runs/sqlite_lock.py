"""One process-wide lock around SQLite work, held across fork (`os.register_at_fork`).

A fork copies every lock in its current state but only the forking thread: if another thread
was inside SQLite at that moment, SQLite's process-wide mutexes stay locked forever in the child.
So every SQLite call of the run store (and of the dashboard's job cache) holds `held()`, and a
fork waits for that lock: the child starts with no SQLite call in flight. The lock is
process-wide by nature (a fork is); in the child it is replaced by a fresh one.

>>> with held():
...     pass
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager


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
    with _GUARD.lock:
        yield
