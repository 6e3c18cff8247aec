"""A minimal Dash client over HTTP (stdlib only), speaking what dash-renderer speaks, for the load
and safety tests against a real `python -m dashboard` on 127.0.0.1.

One `Page` is one page load: it reads the signed `end_id` from the page's `_dash-config`, finds
callbacks in `/_dash-dependencies` by their trigger, and posts `/_dash-update-component`.
Background callbacks follow Dash 4's protocol: the first post answers `{cacheKey, job}` (signed,
bound to this page load); later posts carry them as query arguments and answer progress until
the result (200) or nothing (204, e.g. after a cancel); a cancel is a post of the cancel button's
callback with `cancelJob=<job>`.

>>> page = Page("http://127.0.0.1:8050/")                                   # doctest: +SKIP
>>> job = page.start("run-button", states={"clean-prompt.value": "..."})    # doctest: +SKIP
>>> page.poll(job)                                                          # doctest: +SKIP
"""
from __future__ import annotations

import http.client
import json
import re
import time
import urllib.parse
from dataclasses import dataclass, field


class HTTPError(RuntimeError):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status, self.body = status, body


def request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
            timeout: float = 60) -> tuple[int, bytes]:
    """(status, body) of one request; a fresh connection each time (as concurrent browsers)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        path = u.path + (f"?{u.query}" if u.query else "")
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def split_outputs(output: str) -> list[dict]:
    """Dash's output string ('..a.b...c.d..' or 'a.b') -> [{'id': 'a', 'property': 'b'}, ...]."""
    parts = output[2:-2].split("...") if output.startswith("..") else [output]
    out = []
    for p in parts:
        cid, _, prop = p.rpartition(".")
        out.append({"id": json.loads(cid) if cid.startswith("{") else cid, "property": prop})
    return out


@dataclass
class Job:
    callback: dict
    payload: dict
    cache_key: str
    job: str
    polls: int = 0
    progress: list = field(default_factory=list)


class Page:
    """One page load of the dashboard."""

    def __init__(self, url: str, timeout: float = 60):
        self.url, self.timeout = url.rstrip("/") + "/", timeout
        status, html = request(self.url, timeout=timeout)
        if status != 200:
            raise HTTPError(status, html.decode(errors="replace"))
        config = re.search(rb'<script id="_dash-config" type="application/json">(.*?)</script>', html, re.S)
        self.end_id = json.loads(config.group(1))["end_id"]
        status, deps = request(self.url + "_dash-dependencies", timeout=timeout)
        self.deps = json.loads(deps)

    def callback(self, trigger: str, output: str | None = None) -> dict:
        """The callback triggered by 'component.property' (and writing `output`, when given)."""
        cid, _, prop = trigger.rpartition(".")
        for d in self.deps:
            if any(i["id"] == cid and i["property"] == prop for i in d["inputs"]) and (
                    output is None or output in d["output"]):
                return d
        raise KeyError(f"no callback triggered by {trigger} writing {output}")

    def payload(self, cb: dict, values: dict) -> dict:
        """The renderer's request body: every input and state with a value from `values`
        ('component.property' -> value; missing ones are None)."""
        def vals(items):
            return [{"id": i["id"], "property": i["property"], "value": values.get(f"{i['id']}.{i['property']}")}
                    for i in items]
        outputs = split_outputs(cb["output"])
        changed = [k for k in values if any(f"{i['id']}.{i['property']}" == k for i in cb["inputs"])]
        return {"output": cb["output"], "outputs": outputs if len(outputs) > 1 else outputs[0],
                "inputs": vals(cb["inputs"]), "state": vals(cb.get("state", [])), "changedPropIds": changed}

    def post(self, payload: dict, **args) -> tuple[int, dict | None]:
        query = urllib.parse.urlencode([("endId", self.end_id)] + [(k, v) for k, v in args.items() if v is not None],
                                       doseq=True)
        status, body = request(self.url + "_dash-update-component?" + query, "POST",
                               json.dumps(payload).encode(), {"Content-Type": "application/json"}, self.timeout)
        if status not in (200, 204):
            raise HTTPError(status, body.decode(errors="replace"))
        return status, (json.loads(body) if status == 200 and body else None)

    def call(self, trigger: str, values: dict, output: str | None = None) -> tuple[int, dict | None]:
        """A plain (not background) callback."""
        return self.post(self.payload(self.callback(trigger, output), values))

    def start(self, trigger: str, values: dict, output: str | None = None) -> Job:
        """Start a background callback; its signed handles come back."""
        cb = self.callback(trigger, output)
        payload = self.payload(cb, values)
        status, data = self.post(payload)
        assert status == 200 and "cacheKey" in data and "job" in data, data
        return Job(cb, payload, data["cacheKey"], data["job"])

    def poll(self, job: Job) -> tuple[int, dict | None]:
        """One poll: (200, {'progress': ...}) while running, (200, {'response': ...}) when done,
        (204, None) when there is nothing (cancelled)."""
        job.polls += 1
        status, data = self.post(job.payload, cacheKey=job.cache_key, job=job.job)
        if data and "progress" in data:
            job.progress.append(data["progress"])
        return status, data

    def wait(self, job: Job, timeout: float = 120, interval: float = 0.3) -> tuple[int, dict | None]:
        deadline = time.monotonic() + timeout
        while True:
            status, data = self.poll(job)
            if status == 204 or (data and "response" in data):
                return status, data
            if time.monotonic() > deadline:
                raise TimeoutError(f"job still running after {timeout} s ({job.polls} polls)")
            time.sleep(interval)

    def cancel(self, job: Job, cancel_trigger: str) -> int:
        """Press the cancel button: Dash's own cancel callback kills the job."""
        cb = next(d for d in self.deps if d["output"] == f"{cancel_trigger.rpartition('.')[0]}.id")
        status, _ = self.post(self.payload(cb, {cancel_trigger: 1}), cancelJob=job.job)
        return status
