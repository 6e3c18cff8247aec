"""A test-only pace: every patched batch of a model waits a fixed time before it runs.

End-to-end tests reload, cancel or kill a job mid-run (`tests/e2e/test_reattach_e2e.py`,
`test_history_e2e.py`, `tests/test_shards_celery.py`). On the tiny shipped model a run ends in
well under a second, so whether the test caught it running depended on the machine's speed. The
servers those tests start are given `--test-pace SECONDS` (`python -m dashboard` and
`python -m dashboard worker`), which reaches `ModelRegistry(pace_s=...)`: each model it loads runs
its resumed (patched) batches through `PacedRunner`, so a run of N batches lasts at least
N x SECONDS whatever the machine, and reports progress (and reads Cancel) after each batch. With a
small `--max-memory` the batches hold few cells, so a run has many of them. The numbers are the
model's own; only the time changes. Never set it outside tests; the default (0) paces nothing.

>>> paced(model, 0.0) is model
True
>>> type(paced(model, 0.01).runner).__name__
'PacedRunner'
"""
from __future__ import annotations

import dataclasses
import time

from patching.model.runner import Runner


class PacedRunner(Runner):
    """A `Runner` whose `resume` (one patched batch) first waits `pace_s` seconds."""

    def __init__(self, arch, pace_s: float):
        super().__init__(arch)
        self.pace_s = check_pace(pace_s)

    def resume(self, *args, **kwargs):
        time.sleep(self.pace_s)
        return super().resume(*args, **kwargs)


def check_pace(pace_s: float) -> float:
    """`pace_s` as a float, or ValueError naming it (a number of seconds from 0 to 60).

    >>> check_pace(-1)
    Traceback (most recent call last):
    ...
    ValueError: --test-pace must be a number of seconds from 0 to 60, not -1
    """
    if isinstance(pace_s, bool) or not isinstance(pace_s, (int, float)) or not 0 <= pace_s <= 60:
        raise ValueError(f"--test-pace must be a number of seconds from 0 to 60, not {pace_s!r}")
    return float(pace_s)


def paced(model, pace_s: float):
    """`model` itself when `pace_s` is 0 (or it has no runner: the hooked fallback is not paced),
    else a copy whose runner is a `PacedRunner` (the same weights, nothing reloaded)."""
    if not check_pace(pace_s) or getattr(model, "runner", None) is None:
        return model
    return dataclasses.replace(model, runner=PacedRunner(model.runner.arch, pace_s))
