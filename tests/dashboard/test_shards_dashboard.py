"""The run card's Shards control (dashboard/server/shards.py, panel/run_card.py) with a fake shard
backend that runs the shards in this process: off (and why) without workers, a sharded Run saves the
one-worker values with progress summed over the shards and an ETA, the status names the workers
that took shards, and Cancel stops every shard. The real Redis + workers path is in
tests/test_shards_celery.py."""
from __future__ import annotations

import pytest
import torch

from dashboard import create_app, make_jobs
from patching.runs.jobs import cancel_job, running_jobs
from patching.runs.sharded import ShardProgress
from tests.conftest import IOI
from tests.dash_tree import walk


class FakeShards:
    """The shard backend's interface, run in this process: shard k is 'taken' by worker fake{k+1}."""
    redis_url = "redis://fake:6379/0"

    def __init__(self, names=("fake1@h", "fake2@h"), stop_after: int | None = None):
        self.names, self.stop_after, self.runs, self.cancelled = list(names), stop_after, [], []

    def workers(self):
        return self.names

    def run(self, model, prompts, spec, n, on_progress, on_status, max_memory_mb=None):
        from patching.methods.shards import merge, plan, run_shard
        shards = plan(spec, n, 64)
        status = ShardProgress(count=n)
        parts = []
        self.runs.append(n)
        try:
            for s in shards:
                status.workers[s.index] = self.names[s.index % len(self.names)]

                def progress(done, total, k=s.index):
                    status.done[k], status.total[k] = done, total
                    for other in shards:                    # the others have said their totals
                        status.total.setdefault(other.index, total)
                        status.done.setdefault(other.index, 0)
                    on_status(status)
                    on_progress(*status.cells())
                    if self.stop_after is not None and sum(status.done.values()) >= self.stop_after:
                        self.stop_after = None
                        cancel_job(self.store, running_jobs(self.store)[0].info.id)    # Cancel pressed
                parts.append(run_shard(model, prompts, s, on_progress=progress))
                status.finished.add(s.index)
                on_status(status)
        except BaseException as exc:              # as run_sharded: every shard cancelled, then re-raised
            self.cancelled.append(type(exc).__name__)
            raise
        return merge(parts)


def _app(registry, store, tiny_name, shards):
    return create_app(registry, store, make_jobs("diskcache", store.data_dir), model=tiny_name, shards=shards)


def _args(tiny_name, shards, n_clicks=1):
    clean, corrupt, answer, wrong = IOI[0]
    return [n_clicks, tiny_name, clean, corrupt, answer, wrong, ["bos"], None, "head_out", "logit_diff", "denoise",
            ["per"], None, None, None, "session-1", shards]


def _text(component) -> str:
    from dash import html
    return " ".join(c.children for c in walk(html.Div(component)) if isinstance(getattr(c, "children", None), str))


def test_shards_is_off_and_says_why_without_workers(registry, store, tiny_name):
    off, note = _app(registry, store, tiny_name, None).patchboard.shards_state(0)
    assert off and "start the server with --redis-url" in note
    off, note = _app(registry, store, tiny_name, FakeShards(names=[])).patchboard.shards_state(0)
    assert off and "no worker answers on redis://fake:6379/0" in note
    on, note = _app(registry, store, tiny_name, FakeShards()).patchboard.shards_state(0)
    assert not on and note.startswith("2 workers answer (fake1@h, fake2@h)")


def test_a_sharded_run_saves_the_one_worker_values_and_names_the_workers(registry, store, tiny_name, gpt2_model):
    from patching import PatchSpec, PromptSet, sweep
    backend = FakeShards()
    cb = _app(registry, store, tiny_name, backend).patchboard
    calls = []
    run_id, error, _, status = cb.run_sweep(calls.append, *_args(tiny_name, 2))
    assert error == "" and backend.runs == [2]
    whole = sweep(gpt2_model, PromptSet.from_pairs(gpt2_model, IOI[:1]), PatchSpec(kind="head_out", per_position=True),
                  max_memory_mb=64)
    saved = store.get(run_id)
    assert torch.equal(saved.result.per_pair, whole.per_pair)
    assert saved.info.label.endswith("· 2 shards")
    assert "2 shards: 2 of 2 shards done · 2 workers took shards (fake1@h, fake2@h)" in _text(status)
    texts = [c[3] for c in calls if isinstance(c, tuple) and "patched forwards" in str(c[3])]
    assert any("≈" in t and "left" in t and "shards done" in t for t in texts), texts   # summed, with an ETA
    assert any(c[0] < c[1] for c in calls if isinstance(c, tuple) and c[1] > 1)


@pytest.mark.parametrize("shards, message", [
    ("0", "Shards must be a whole number from 1 to 16, not '0'"),
    (2.5, "Shards must be a whole number from 1 to 16, not '2.5'"),
    (99, "not '99'"),
])
def test_a_bad_shard_count_is_refused_inline(registry, store, tiny_name, shards, message):
    cb = _app(registry, store, tiny_name, FakeShards()).patchboard
    _, error, _, _ = cb.run_sweep(lambda v: None, *_args(tiny_name, shards))
    assert message in error


def test_shards_without_a_backend_is_refused_inline(registry, store, tiny_name):
    cb = _app(registry, store, tiny_name, None).patchboard
    _, error, _, _ = cb.run_sweep(lambda v: None, *_args(tiny_name, 2))
    assert "sharding needs workers (the server started with --redis-url); set Shards to 1" in error


def test_cancel_stops_every_shard(registry, store, tiny_name, monkeypatch):
    monkeypatch.setattr("patching.runs.jobs.CANCEL_CHECK_S", 0.0)      # read the flag at every report
    backend = FakeShards(stop_after=3)
    backend.store = store
    cb = _app(registry, store, tiny_name, backend).patchboard
    _, error, _, _ = cb.run_sweep(lambda v: None, *_args(tiny_name, 2))
    assert error == "Run cancelled; nothing was saved."
    assert backend.cancelled == ["JobCancelled"]               # raised inside the shards' client
    assert store.jobs(1)[0].status == "cancelled" and not store.list()
