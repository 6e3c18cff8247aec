"""Run history in SQLite: every run's spec, prompt pairs, baselines and result, under the data dir.

One connection per operation (safe across the forked processes of background callbacks), WAL
journal and a busy timeout so concurrent writers wait rather than fail, and every write in one
transaction.

>>> store = RunStore(tmp_path)                                  # doctest: +SKIP
>>> run_id = store.save(result, pairs, label="IOI, head_out")    # doctest: +SKIP
>>> store.get(run_id).result.values.shape                        # doctest: +SKIP
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from patching.attribution import AttributionResult, EdgeScores
from patching.path import PathResult
from patching.results import PatchResult

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    created       REAL    NOT NULL,          -- unix seconds
    label         TEXT    NOT NULL,
    model         TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    direction     TEXT    NOT NULL,
    metric        TEXT    NOT NULL,
    n_pairs       INTEGER NOT NULL,
    clean_value   REAL,
    corrupt_value REAL,
    seconds       REAL,
    spec_json     TEXT    NOT NULL,          -- PatchSpec.to_dict()
    pairs_json    TEXT    NOT NULL,          -- [[clean, corrupt, answer, wrong], ...]
    result_json   TEXT    NOT NULL           -- PatchResult.to_json() (kind 'path': PathResult)
);
CREATE TABLE IF NOT EXISTS attributions (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    created       REAL    NOT NULL,
    label         TEXT    NOT NULL,
    model         TEXT    NOT NULL,
    method        TEXT    NOT NULL,          -- plain / ig
    steps         INTEGER NOT NULL,
    direction     TEXT    NOT NULL,
    metric        TEXT    NOT NULL,
    n_pairs       INTEGER NOT NULL,
    pairs_json    TEXT    NOT NULL,
    results_json  TEXT    NOT NULL,          -- [AttributionResult.to_json(), ...], one per kind
    edges_json    TEXT                       -- EdgeScores.to_json() when edges were asked for
);
"""


def result_from_json(d: dict) -> PatchResult:
    """The right result class for a stored result: PathResult for kind 'path', AttributionResult
    when it carries a method, else PatchResult."""
    if d.get("spec", {}).get("kind") == "path":
        return PathResult.from_json(d)
    if "method" in d:
        return AttributionResult.from_json(d)
    return PatchResult.from_json(d)


@dataclass(frozen=True)
class RunInfo:
    """One row of the history list (no result tensor)."""
    id: int
    created: float
    label: str
    model: str
    kind: str
    direction: str
    metric: str
    n_pairs: int
    clean_value: float | None
    corrupt_value: float | None
    seconds: float | None

    @property
    def title(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.created))
        return f"#{self.id} {self.label} · {when}"


@dataclass(frozen=True)
class Run:
    info: RunInfo
    pairs: list[tuple[str, str, str, str]]
    result: PatchResult


@dataclass(frozen=True)
class AttributionRun:
    id: int
    created: float
    label: str
    pairs: list[tuple[str, str, str, str]]
    results: list[AttributionResult]        # one per kind, in the order they were asked for
    edges: EdgeScores | None = None         # EAP / EAP-IG edge scores, when asked for

    def result(self, kind: str) -> AttributionResult:
        for r in self.results:
            if r.spec.kind == kind:
                return r
        raise ValueError(f"attribution run {self.id} has no kind {kind!r}; it has "
                         f"{', '.join(r.spec.kind for r in self.results)}")


class RunStore:
    """SQLite run history at `<data_dir>/runs.sqlite`; survives restarts."""

    def __init__(self, data_dir: str | Path, filename: str = "runs.sqlite"):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / filename
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            columns = {r[1] for r in db.execute("PRAGMA table_info(attributions)")}
            if "edges_json" not in columns:          # a store made before edge scores were kept
                db.execute("ALTER TABLE attributions ADD COLUMN edges_json TEXT")

    @contextmanager
    def _connect(self):
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=30000")
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self):
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def save(self, result: PatchResult, pairs, label: str = "") -> int:
        """Store one finished run; returns its id."""
        pairs = [list(p) if not hasattr(p, "clean") else [p.clean, p.corrupt, p.answer, p.wrong]
                 for p in pairs]
        spec = result.spec
        label = label or f"{spec.kind}{' per position' if spec.per_position else ''}, {spec.direction}"
        row = (time.time(), label, result.model_name or spec.model, spec.kind, spec.direction,
               spec.metric, result.n_pairs, result.clean_value, result.corrupt_value, result.seconds,
               json.dumps(spec.to_dict()), json.dumps(pairs), json.dumps(result.to_json()))
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO runs (created, label, model, kind, direction, metric, n_pairs, "
                "clean_value, corrupt_value, seconds, spec_json, pairs_json, result_json) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            return int(cur.lastrowid)

    _INFO = ("id, created, label, model, kind, direction, metric, n_pairs, clean_value, "
             "corrupt_value, seconds")

    def list(self, limit: int = 200) -> list[RunInfo]:
        """Newest first."""
        with self._connect() as db:
            rows = db.execute(f"SELECT {self._INFO} FROM runs ORDER BY id DESC LIMIT ?",
                              (int(limit),)).fetchall()
        return [RunInfo(*r) for r in rows]

    def get(self, run_id: int) -> Run:
        """The run, or ValueError naming the id."""
        with self._connect() as db:
            row = db.execute(f"SELECT {self._INFO}, pairs_json, result_json FROM runs WHERE id = ?",
                             (int(run_id),)).fetchone()
        if row is None:
            raise ValueError(f"run {run_id} does not exist (deleted?); pick one from the history")
        info = RunInfo(*row[:11])
        pairs = [tuple(p) for p in json.loads(row[11])]
        return Run(info, pairs, result_from_json(json.loads(row[12])))

    def info(self, run_id: int) -> RunInfo:
        with self._connect() as db:
            row = db.execute(f"SELECT {self._INFO} FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        if row is None:
            raise ValueError(f"run {run_id} does not exist (deleted?); pick one from the history")
        return RunInfo(*row)

    def delete(self, run_id: int) -> bool:
        """True when a run was deleted."""
        with self._transaction() as db:
            return db.execute("DELETE FROM runs WHERE id = ?", (int(run_id),)).rowcount > 0

    # -- attribution runs: every kind of one run_attribution call, kept together ---------------
    def save_attribution(self, results: list[AttributionResult], pairs, label: str = "",
                         edges: EdgeScores | None = None) -> int:
        """Store one attribution run (a result per kind); returns its id (its own numbering,
        separate from the patching runs' history)."""
        if not results:
            raise ValueError("an attribution run needs at least one kind")
        pairs = [list(p) if not hasattr(p, "clean") else [p.clean, p.corrupt, p.answer, p.wrong]
                 for p in pairs]
        r = results[0]
        label = label or f"attribution ({r.method}) · {len(results)} kinds · {r.spec.direction}"
        row = (time.time(), label, r.model_name or r.spec.model, r.method, int(r.steps), r.spec.direction,
               r.spec.metric, r.n_pairs, json.dumps(pairs), json.dumps([x.to_json() for x in results]),
               json.dumps(edges.to_json()) if edges is not None else None)
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO attributions (created, label, model, method, steps, direction, metric, n_pairs, "
                "pairs_json, results_json, edges_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            return int(cur.lastrowid)

    def get_attribution(self, attribution_id: int) -> "AttributionRun":
        """The attribution run, or ValueError naming the id."""
        with self._connect() as db:
            row = db.execute("SELECT id, created, label, pairs_json, results_json, edges_json FROM attributions "
                             "WHERE id = ?", (int(attribution_id),)).fetchone()
        if row is None:
            raise ValueError(f"attribution run {attribution_id} does not exist; run attribution again")
        results = [AttributionResult.from_json(d) for d in json.loads(row[4])]
        edges = EdgeScores.from_json(json.loads(row[5])) if row[5] else None
        return AttributionRun(row[0], row[1], row[2], [tuple(p) for p in json.loads(row[3])], results, edges)

    def __len__(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
