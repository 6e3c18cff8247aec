"""SIGTERM as an exception: what cancels a sharded run's shards on Ctrl-C (KeyboardInterrupt)
cancels them when the process is terminated too — the CLI killed by a supervisor, or the
dashboard's job process stopped by Cancel (diskcache's terminate, Celery's revoke both send
SIGTERM). Light on purpose: the CLI imports it before anything heavy.

>>> with sigterm_interrupts():
...     pass
"""
from __future__ import annotations

import contextlib
import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt."""


@contextlib.contextmanager
def sigterm_interrupts():
    """Within: SIGTERM raises `Terminated` in the main thread (in another thread: nothing changes,
    Python delivers signals to the main thread only). The previous handler comes back after.

    >>> import os
    >>> with sigterm_interrupts():
    ...     try:
    ...         os.kill(os.getpid(), signal.SIGTERM)
    ...     except Terminated as exc:
    ...         print(exc)
    terminated (SIGTERM)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Terminated("terminated (SIGTERM)")
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
