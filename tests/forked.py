"""Running one function in several forked processes that report through a queue (the stores'
concurrent-writer tests).

>>> run_ids = in_processes(_writer, 4, results_each=6, args=(data_dir, payload, 6))   # doctest: +SKIP
"""
from __future__ import annotations

import multiprocessing


def in_processes(target, n_procs: int, results_each: int, args=(), timeout: float = 120) -> list:
    """Fork `n_procs` processes of `target(*args, queue)`, collect `results_each` items from each,
    join them, and assert they all exited with 0; returns the items in arrival order."""
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, q)) for _ in range(n_procs)]
    for p in procs:
        p.start()
    got = [q.get(timeout=timeout) for _ in range(n_procs * results_each)]
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return got
