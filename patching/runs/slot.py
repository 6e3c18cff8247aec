"""The run slot: one sweep at a time per data dir, across processes (an OS file lock).

Later runs queue in `run_slot` (released when the holder exits or is cancelled); `run_busy`
tells whether some process holds it.

>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> with run_slot(d):
...     run_busy(d)
True
>>> run_busy(d)
False
"""
from __future__ import annotations

import errno
import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable


@contextmanager
def run_slot(data_dir: str | Path, on_wait: Callable[[float], None] | None = None, poll: float = 0.5):
    """One sweep at a time per data dir: later runs queue here (an OS file lock, released when the
    holder exits or is cancelled). `on_wait(seconds_waited)` is called while queued."""
    path = Path(data_dir) / "run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    start = time.monotonic()
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                if on_wait is not None:
                    on_wait(time.monotonic() - start)
                time.sleep(poll)
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def run_busy(data_dir: str | Path) -> bool:
    """Whether some process holds the run slot right now."""
    path = Path(data_dir) / "run.lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
