"""The SQLite run store: round trip, list, delete, restarts, concurrent writers."""
from __future__ import annotations

import multiprocessing
import threading

import pytest
import torch

from patching.runs.store import RunStore
from patching import PatchSpec, sweep
from tests.conftest import IOI


@pytest.fixture(scope="module")
def result(gpt2_model, ioi_prompts):
    return sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out", model="tiny"))


def test_save_get_round_trip(tmp_path, result):
    store = RunStore(tmp_path)
    run_id = store.save(result, IOI, label="IOI heads")
    run = store.get(run_id)
    assert run.info.label == "IOI heads" and run.info.kind == "head_out" and run.info.n_pairs == 2
    assert run.info.clean_value == pytest.approx(result.clean_value)
    assert run.pairs == [tuple(p) for p in IOI]
    assert run.result.spec == result.spec and run.result.axes == result.axes
    assert torch.equal(run.result.per_pair, result.per_pair)
    assert run.result.str_tokens == result.str_tokens
    assert run.result.to_csv() == result.to_csv()


def test_list_newest_first_and_delete(tmp_path, result):
    store = RunStore(tmp_path)
    ids = [store.save(result, IOI) for _ in range(3)]
    assert [r.id for r in store.list()] == ids[::-1]
    assert store.delete(ids[1]) and not store.delete(ids[1])
    assert [r.id for r in store.list()] == [ids[2], ids[0]]
    with pytest.raises(ValueError, match=f"run {ids[1]} does not exist"):
        store.get(ids[1])
    assert "head_out" in store.list()[0].title


def test_history_survives_restart(tmp_path, result):
    run_id = RunStore(tmp_path).save(result, IOI)
    reopened = RunStore(tmp_path)
    assert [r.id for r in reopened.list()] == [run_id]
    assert reopened.get(run_id).result.values.shape == result.values.shape


def _writer(path, payload, n, put):
    """Save n runs from a fresh store (a fresh connection), reporting each id with put()."""
    from patching.core.results import PatchResult
    store = RunStore(path)
    result = PatchResult.from_json(payload)
    for _ in range(n):
        put(store.save(result, IOI))


def test_concurrent_writers_threads_and_processes(tmp_path, result):
    payload = result.to_json()
    RunStore(tmp_path)
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(tmp_path, payload, 5, q.put)) for _ in range(3)]
    thread_ids: list[int] = []
    threads = [threading.Thread(target=_writer, args=(tmp_path, payload, 5, thread_ids.append))
               for _ in range(2)]
    for w in procs + threads:
        w.start()
    for w in procs + threads:
        w.join(60)
    assert all(p.exitcode == 0 for p in procs)
    proc_ids = [q.get(timeout=10) for _ in range(15)]
    all_ids = proc_ids + thread_ids
    assert len(all_ids) == 25 and len(set(all_ids)) == 25
    store = RunStore(tmp_path)
    assert len(store) == 25
    assert all(store.get(i).result.values.shape == result.values.shape for i in all_ids[::6])
