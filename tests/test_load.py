"""Load and faults over HTTP: a real `python -m dashboard` on 127.0.0.1 (default model, CPU),
driven the way dash-renderer drives it (`tests/dash_http.py`).

- 20 concurrent clients, each its own page load, start a sweep of their own prompt pair and
  kind, poll it, and a quarter of them cancel: no HTTP errors, every finished run holds exactly
  its client's pair and kind, cancelled runs leave nothing, memory (server + job processes) stays
  bounded and is reported, no job process outlives its job.
- Bad input posted to the page's callbacks: the message comes back inline, nothing is saved, the
  server keeps serving.
- A 200 MB request: 413 with a JSON message naming the cap, and the server keeps serving.

Bounded: 127.0.0.1 only, one server, 20 clients, a time limit per wait. Slow (~30-60 s).
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.dash_http import Page, request
from tests.e2e.support import start_dashboard, stop_dashboard

KINDS = ("resid_pre", "attn_out", "mlp_out", "head_out")
N_CLIENTS = 20
PEAK_PSS_LIMIT_MB = 4000          # server + every job process, proportional set size

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, process, data dir) of a dashboard on a free 127.0.0.1 port."""
    data = tmp_path_factory.mktemp("load-data")
    url, proc = start_dashboard(data)
    yield url, proc, data
    stop_dashboard(proc)


def form_values(pair, kind: str) -> dict:
    return {"run-button.n_clicks": 1, "model-select.value": "default", "clean-prompt.value": pair.clean,
            "corrupt-prompt.value": pair.corrupt, "answer-token.value": pair.answer,
            "wrong-token.value": pair.wrong, "prepend-bos.value": ["bos"], "kind-select.value": kind,
            "metric-select.value": "logit_diff", "direction-select.value": "denoise"}


class MemoryMonitor(threading.Thread):
    """Samples the server and all its descendants: peak summed RSS and PSS, peak process count."""

    def __init__(self, pid: int, interval: float = 0.25):
        super().__init__(daemon=True)
        self.root, self.interval = psutil.Process(pid), interval
        self.peak_rss = self.peak_pss = 0
        self.peak_procs = 0
        self.samples = 0
        self.stop = threading.Event()

    def sample(self) -> None:
        rss = pss = 0
        procs = [self.root] + self.root.children(recursive=True)
        for p in procs:
            try:
                info = p.memory_full_info()
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, len(procs))
        self.samples += 1

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            time.sleep(self.interval)


def client(url: str, i: int, pair, kind: str, cancel: bool, out: dict) -> None:
    """One user: load the page, start a sweep, poll it (and maybe cancel it)."""
    record = {"i": i, "kind": kind, "pair": (pair.clean, pair.corrupt, pair.answer, pair.wrong),
              "cancel": cancel}
    try:
        page = Page(url)
        start = time.monotonic()
        job = page.start("run-button.n_clicks", form_values(pair, kind))
        if cancel:
            page.poll(job)
            assert page.cancel(job, "cancel-button.n_clicks") in (200, 204)
        status, data = page.wait(job, timeout=150)
        record.update(status=status, seconds=time.monotonic() - start, polls=job.polls)
        if data:
            resp = data["response"]
            record["run_id"] = resp["current-run"]["data"]
            record["error"] = resp["error-message"]["children"]
    except Exception as exc:  # noqa: BLE001 - reported by the test
        record["exception"] = f"{type(exc).__name__}: {exc}"
    out[i] = record


def test_twenty_clients_start_poll_and_cancel(server, capsys):
    from patching.runs.store import RunStore
    from patching.tasks import families as tasks
    url, proc, data = server
    store = RunStore(data)
    before = {r.id for r in store.list()}
    pairs = tasks.make_pairs("ioi", N_CLIENTS, split="eval", seed=7)
    monitor = MemoryMonitor(proc.pid)
    monitor.sample()
    idle_pss = monitor.peak_pss
    monitor.start()
    results: dict = {}
    threads = [threading.Thread(target=client, args=(url, i, pairs[i], KINDS[i % 4], i % 4 == 3, results))
               for i in range(N_CLIENTS)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(200)
    wall = time.monotonic() - start
    monitor.stop.set()
    monitor.join()

    errors = {i: r["exception"] for i, r in results.items() if "exception" in r}
    log = (data / "server.log").read_text()
    assert len(results) == N_CLIENTS and not errors, (errors, log[log.find("Traceback"):][:3000])
    finished = [r for r in results.values() if r.get("run_id")]
    cancelled = [r for r in results.values() if r["status"] == 204]
    assert all(r["error"] == "" for r in finished), [r["error"] for r in finished]
    assert all(r["cancel"] for r in cancelled), "only cancelled jobs may end without a result"
    assert len(finished) + len(cancelled) == N_CLIENTS
    # every run holds its own client's pair and kind: no mixing between sessions
    ids = [r["run_id"] for r in finished]
    assert len(set(ids)) == len(ids)
    for r in finished:
        run = store.get(r["run_id"])
        assert run.pairs == [r["pair"]], (r["i"], run.pairs)
        assert run.result.spec.kind == r["kind"]
        assert run.result.values.isfinite().all()
    # a cancelled job saved nothing, unless the cancel came after its run was saved (the last
    # instant of the job: then the run is its own pair and kind, in the history)
    extra = {r.id for r in store.list()} - before - set(ids)
    by_pair = {tuple(r["pair"]): r for r in cancelled}
    late = []
    for run_id in extra:
        run = store.get(run_id)
        owner = by_pair.get(tuple(run.pairs[0]))
        assert owner is not None and len(run.pairs) == 1, (run_id, run.pairs)
        assert run.result.spec.kind == owner["kind"]
        late.append(owner["i"])
    assert set(ids) <= {r.id for r in store.list()}
    assert len(cancelled) - len(late) >= 1, "no cancel took effect"
    # no job process outlives its job
    deadline = time.time() + 15
    while psutil.Process(proc.pid).children(recursive=True) and time.time() < deadline:
        time.sleep(0.5)
    leftover = psutil.Process(proc.pid).children(recursive=True)
    assert not leftover, [p.cmdline()[:3] for p in leftover]
    assert proc.poll() is None

    mb = 2**20
    report = {"clients": N_CLIENTS, "finished": len(finished), "cancelled": len(cancelled),
              "cancelled_after_saving": len(late),
              "wall_s": round(wall, 1), "max_client_s": round(max(r["seconds"] for r in results.values()), 1),
              "polls": sum(r["polls"] for r in results.values()),
              "idle_pss_mb": round(idle_pss / mb), "peak_rss_sum_mb": round(monitor.peak_rss / mb),
              "peak_pss_sum_mb": round(monitor.peak_pss / mb), "peak_processes": monitor.peak_procs,
              "samples": monitor.samples}
    (data / "load-report.json").write_text(json.dumps(report, indent=2))
    with capsys.disabled():
        print(f"\nload: {json.dumps(report)}")
    assert monitor.peak_pss / mb < PEAK_PSS_LIMIT_MB, report


# -- bad input through HTTP; the server keeps serving ------------------------------------------------------
BAD_OVER_HTTP = ("mismatched_token_lengths", "answer_equals_wrong", "prompt_100kB", "unknown_kind",
                 "layer_out_of_range", "user_metric_raises", "unknown_model_name")


def test_bad_input_over_http_inline_and_server_keeps_serving(server):
    from patching.runs.store import RunStore
    from tests.bad_inputs.cases import CASES
    url, proc, data = server
    store = RunStore(data)
    before = [r.id for r in store.list()]
    page = Page(url)
    for name in BAD_OVER_HTTP:
        case = next(c for c in CASES if c.name == name)
        metric = "pb_metrics:boom" if case.metric.startswith("@") else case.metric
        values = {"run-button.n_clicks": 1, "model-select.value": case.model, "clean-prompt.value": case.clean,
                  "corrupt-prompt.value": case.corrupt, "answer-token.value": case.answer,
                  "wrong-token.value": case.wrong, "prepend-bos.value": ["bos"], "kind-select.value": case.kind,
                  "metric-select.value": metric, "direction-select.value": case.direction,
                  "layers-filter.value": case.layers or None, "heads-filter.value": case.heads or None}
        # live validation, as typing triggers it
        status, resp = page.call("clean-prompt.value", values, output="error-message.children")
        live = resp["response"]["error-message"]["children"]
        assert re.search(case.expect_for("dashboard"), live), (name, live)
        assert "Traceback" not in live
        # the Run button: the same inline message, nothing saved
        job = page.start("run-button.n_clicks", values)
        status, result = page.wait(job, timeout=60)
        assert result["response"]["error-message"]["children"] == live, name
        assert "current-run" not in result["response"], name
    # an over-size upload through the callback (under the HTTP cap, over the file cap is the
    # clientside check; this one is a bad file of normal size)
    csv_case = next(c for c in CASES if c.name == "csv_latin1_bytes")
    import base64
    contents = "data:text/csv;base64," + base64.b64encode(csv_case.csv_bytes()).decode()
    status, resp = page.call("pairs-upload.contents", {"pairs-upload.contents": contents,
                                                       "pairs-upload.filename": "latin1.csv"},
                             output="pairs-store.data")
    assert "not UTF-8" in resp["response"]["error-message"]["children"]
    assert [r.id for r in store.list()] == before
    assert request(url)[0] == 200 and proc.poll() is None


def test_200mb_request_is_refused_with_413_and_server_keeps_serving(server):
    """200 MB to the callback endpoint: 413 before the body is read, a JSON message naming the
    cap, then the same server still runs a sweep."""
    import http.client
    from patching.tasks import families as tasks
    url, proc, data = server
    conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1].strip("/")), timeout=60)
    size = 200 * 2**20
    start = time.monotonic()
    conn.putrequest("POST", "/_dash-update-component")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    sent = 0
    chunk = b" " * 2**20
    try:
        while sent < size:
            conn.send(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass                                     # the server answered and closed early: expected
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 413
    message = json.loads(body)["message"]
    assert "larger than this server's 16 MB limit (--max-upload-mb)" in message
    assert time.monotonic() - start < 30
    assert proc.poll() is None and request(url)[0] == 200
    page = Page(url)
    pair = tasks.make_pairs("ioi", 1, split="eval", seed=99)[0]
    status, result = page.wait(page.start("run-button.n_clicks", form_values(pair, "resid_pre")), timeout=90)
    assert result["response"]["error-message"]["children"] == ""
    assert result["response"]["current-run"]["data"]


# -- faults: a job process killed mid-sweep, then the whole server killed and restarted ---------------------
def _history_text(page: Page) -> str:
    """The History tab as the page gets it (runs, and failed / cancelled jobs with their reason)."""
    status, data = page.call("history-version.data", {"history-version.data": time.time()},
                             output="run-history.children")
    return json.dumps(data["response"]["run-history"]["children"])


def _integrity(db: Path) -> str:
    import sqlite3
    con = sqlite3.connect(db)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def _start_slow_sweep(page: Page, pair, timeout: float = 60):
    """A neuron sweep of 64 copies of the pair (layers x neurons x positions x 64: seconds even on
    a quiet machine) polled until it is under way; returns the job."""
    values = {**form_values(pair, "neuron"), "pairs-store.data": [
        {"clean": pair.clean, "corrupt": pair.corrupt, "answer": pair.answer, "wrong": pair.wrong}] * 64}
    job = page.start("run-button.n_clicks", values)
    deadline = time.monotonic() + timeout
    while True:
        status, data = page.poll(job)
        progress = (data or {}).get("progress", {})
        if progress.get("progress.max", 1) > 1:          # the sweep has counted its patches
            return job
        assert status == 200 and "response" not in (data or {}), f"the sweep ended before it could be killed: {data}"
        assert time.monotonic() < deadline, "the sweep never got under way"
        time.sleep(0.2)


def test_killed_job_then_killed_server_history_intact(tmp_path):
    from patching.runs.store import RunStore
    from patching.tasks import families as tasks
    pairs = tasks.make_pairs("ioi", 4, split="eval", seed=3)
    url, proc = start_dashboard(tmp_path)
    try:
        page = Page(url)
        ok = page.wait(page.start("run-button.n_clicks", form_values(pairs[0], "resid_pre")), timeout=90)[1]
        first = ok["response"]["current-run"]["data"]
        # 1. the job process dies mid-sweep (OOM killer, kill -9): the page gets no result, the
        #    history says why, nothing half-saved, the next run works
        job = _start_slow_sweep(page, pairs[1])
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert workers, "no job process to kill"
        for w in workers:
            w.kill()
        status, data = page.wait(job, timeout=30)
        assert status == 204 and data is None
        history = _history_text(page)
        assert "failed" in history and "exited before the run finished" in history, history[:2000]
        store = RunStore(tmp_path)
        assert [r.id for r in store.list()] == [first]
        assert _integrity(store.path) == "ok"
        ok = page.wait(page.start("run-button.n_clicks", form_values(pairs[2], "attn_out")), timeout=90)[1]
        second = ok["response"]["current-run"]["data"]
        assert ok["response"]["error-message"]["children"] == "" and second != first
        # 2. the whole server (and its job) is killed mid-sweep, then started again on the same data
        _start_slow_sweep(page, pairs[3])
        for p in [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]:
            os.kill(p, 9)
        proc.wait(10)
    finally:
        stop_dashboard(proc)
    assert _integrity(RunStore(tmp_path).path) == "ok"
    url, proc = start_dashboard(tmp_path, log_name="server-2.log")
    try:
        page = Page(url)
        store = RunStore(tmp_path)
        assert [r.id for r in store.list()] == [second, first]            # history intact
        assert store.get(first).pairs == [(pairs[0].clean, pairs[0].corrupt, pairs[0].answer, pairs[0].wrong)]
        history = _history_text(page)                                     # the interrupted job: failed
        jobs = store.jobs()
        assert [j.status for j in jobs].count("failed") == 2, [(j.status, j.reason) for j in jobs]
        assert "running" not in [j.status for j in jobs]
        assert history.count("exited before the run finished") == 2
        ok = page.wait(page.start("run-button.n_clicks", form_values(pairs[0], "mlp_out")), timeout=90)[1]
        assert ok["response"]["error-message"]["children"] == ""
        assert [r.id for r in store.list()][1:] == [second, first]
    finally:
        stop_dashboard(proc)
