"""The test-only pace (`--test-pace`, patching/model/pacing.py) and the server's batch cap
(`--max-memory`): what the end-to-end tests that reload, cancel or kill a run mid-way rely on."""
from __future__ import annotations

import time

import pytest
import torch

from patching import PatchSpec, sweep
from patching.model.pacing import PacedRunner, paced


def _batches(model, prompts, spec, max_memory_mb):
    seen = []
    sweep(model, prompts, spec, on_progress=lambda done, total: seen.append(done), max_memory_mb=max_memory_mb)
    return seen


def test_a_paced_sweep_waits_per_batch_and_computes_the_same_numbers(doctest_model, doctest_prompts):
    spec = PatchSpec(kind="head_out")
    slow = paced(doctest_model, 0.05)
    assert isinstance(slow.runner, PacedRunner) and slow.hf is doctest_model.hf      # nothing reloaded
    calls = []
    real = slow.runner.resume
    slow.runner.resume = lambda *a, **k: calls.append(1) or real(*a, **k)
    start = time.perf_counter()
    result = sweep(slow, doctest_prompts, spec, max_memory_mb=1)
    assert time.perf_counter() - start >= 0.05 * len(calls) and len(calls) >= 4       # one batch a layer at least
    torch.testing.assert_close(result.values, sweep(doctest_model, doctest_prompts, spec, max_memory_mb=1).values,
                               rtol=0, atol=0)


def test_a_paced_sweep_reports_progress_after_every_batch(doctest_model, doctest_prompts):
    """Unpaced, the tiny model's batches end within the sweep's 0.1 s report interval, so progress
    comes at the start and the end only; paced by more than that, after each batch."""
    spec = PatchSpec(kind="neuron")
    assert len(_batches(paced(doctest_model, 0.11), doctest_prompts, spec, 16)) > 2 + 20


def test_the_pace_is_checked():
    from patching.model.loading import ModelRegistry
    with pytest.raises(ValueError, match="--test-pace must be a number of seconds from 0 to 60, not -0.5"):
        ModelRegistry(["default"], pace_s=-0.5)
    assert paced("not a model", 0) == "not a model"


def test_the_servers_batch_cap_reaches_the_run_and_its_estimate(registry, tiny_dirs, tmp_path):
    """`create_app(max_memory_mb=)` (`--max-memory`): the estimate counts the batches the run has."""
    from dashboard import create_app
    from dashboard.forms import Form
    from dashboard.panel.cost import cost_view
    from patching.methods.cost import CalibrationCache
    from patching.runs.store import RunStore
    from tests.conftest import IOI
    with pytest.raises(ValueError, match="max_memory_mb must be a positive number of megabytes, not 0"):
        create_app(registry, RunStore(tmp_path), max_memory_mb=0)
    form = Form(str(tiny_dirs["gpt2"]), *IOI[0], kind="neuron")
    cal = CalibrationCache()
    small, large = (cost_view(registry, cal, form, max_memory_mb=mb) for mb in (1, 4096))
    # more, smaller batches: more per-batch overhead counted and a smaller peak
    assert small.seconds > large.seconds and small.text.split("peak")[1] != large.text.split("peak")[1], \
        (small.text, large.text)
