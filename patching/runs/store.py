"""Run history behind a URL: every run's spec, prompt pairs, baselines and result, and a status
record for every background job.

`RunStore(data_dir)` keeps an SQLite file under the data dir (the default, one machine);
`open_store(url)` takes `sqlite:///path/runs.sqlite` or `postgresql://user:pw@host/db` (several
hosts: one web server and GPU workers share the history). SQLAlchemy Core speaks both; a
PostgreSQL URL also needs a driver (`pip install psycopg`, not pinned: only multi-host
deployments want it).

One connection per operation (no pool: safe across the forked processes of background jobs),
every write in one transaction (`BEGIN IMMEDIATE` on SQLite, whose WAL journal and busy timeout
make concurrent writers wait rather than fail).

>>> store = RunStore(tmp_path)
>>> run_id = store.save(result, pairs, label="IOI, head_out")
>>> store.get(run_id).result.values.shape
torch.Size([4, 4])
>>> job = store.begin_job("sweep", "IOI, head_out", "default")
>>> store.finish_job(job, "done", run_id=run_id)
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from patching.methods.attribution import AttributionResult, EdgeScores
from patching.core.results import PatchResult
from patching.core.prompts import roles_text

from patching.runs.results import result_from_json
from patching.runs.sqlite_lock import held

DEFAULT_FILENAME = "runs.sqlite"
JOB_STATUSES = ("running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
URL_SCHEMES = ("sqlite", "postgresql")

META = sa.MetaData()
RUNS = sa.Table(
    "runs", META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created", sa.Float, nullable=False),          # unix seconds
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("direction", sa.Text, nullable=False),
    sa.Column("metric", sa.Text, nullable=False),
    sa.Column("n_pairs", sa.Integer, nullable=False),
    sa.Column("clean_value", sa.Float),
    sa.Column("corrupt_value", sa.Float),
    sa.Column("seconds", sa.Float),
    sa.Column("spec_json", sa.Text, nullable=False),         # PatchSpec.to_dict()
    sa.Column("pairs_json", sa.Text, nullable=False),        # [[clean, corrupt, answer, wrong], ...]
    sa.Column("result_json", sa.Text, nullable=False),       # PatchResult.to_json() (kind 'path': PathResult)
    sqlite_autoincrement=True)                               # a deleted run's id is never reused
ATTRIBUTIONS = sa.Table(
    "attributions", META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("method", sa.Text, nullable=False),            # plain / ig
    sa.Column("steps", sa.Integer, nullable=False),
    sa.Column("direction", sa.Text, nullable=False),
    sa.Column("metric", sa.Text, nullable=False),
    sa.Column("n_pairs", sa.Integer, nullable=False),
    sa.Column("pairs_json", sa.Text, nullable=False),
    sa.Column("results_json", sa.Text, nullable=False),      # [AttributionResult.to_json(), ...], one per kind
    sa.Column("edges_json", sa.Text),                        # EdgeScores.to_json() when edges were asked for
    sqlite_autoincrement=True)
JOBS = sa.Table(
    "jobs", META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.Text, nullable=False),              # sweep / path / attribution
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),            # running / done / failed / cancelled
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("run_id", sa.Integer),                         # the saved run (attribution: its own id)
    sa.Column("pid", sa.Integer),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("started", sa.Float, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),          # last heartbeat
    sa.Column("finished", sa.Float),
    sa.Index("jobs_status", "status"),
    sqlite_autoincrement=True)
JOB_TOKENS = sa.Table(            # a job's page-side name, so a Cancel click reaches it on any host
    "job_tokens", META,
    sa.Column("token", sa.Text, primary_key=True),           # "<page session>:<button>:<click>"
    sa.Column("job_id", sa.Integer),                         # set when the job starts
    sa.Column("cancel_requested", sa.Float),                 # set by Cancel, before or after it starts
    sa.Column("created", sa.Float, nullable=False))          # pruned after TOKEN_DAYS unless running
TOKEN_DAYS = 7
JOB_PROGRESS = sa.Table(          # where a running job is, so any page (a reload, a second tab) can show it
    "job_progress", META,
    sa.Column("job_id", sa.Integer, primary_key=True),
    sa.Column("done", sa.Integer, nullable=False),           # units done (a sweep: patched forwards)
    sa.Column("total", sa.Integer, nullable=False),          # units in all; 0 while not known (queued, starting)
    sa.Column("text", sa.Text, nullable=False),              # what the job's own page shows
    sa.Column("queued", sa.Boolean, nullable=False),         # still waiting for the run slot
    sa.Column("work_started", sa.Float),                     # when the counted work began (for an ETA)
    sa.Column("updated", sa.Float, nullable=False))


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


@dataclass(frozen=True)
class JobInfo:
    """One background job: what ran, where (pid, host), and how it ended.

    >>> JobInfo(1, "sweep", "IOI", "default", "failed", "worker process 7 exited", None, 7, "h",
    ...         0.0, 1.0, 1.0).status
    'failed'
    """
    id: int
    kind: str
    label: str
    model: str
    status: str
    reason: str
    run_id: int | None
    pid: int | None
    host: str
    started: float
    updated: float
    finished: float | None

    def __post_init__(self):
        if self.status not in JOB_STATUSES:
            raise ValueError(f"job status must be one of {', '.join(JOB_STATUSES)}, not {self.status!r}")

    @property
    def title(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"job {self.id} {self.label} · {self.status} · {when}"


@dataclass(frozen=True)
class JobProgress:
    """Where a running job is: `done` of `total` units (0 total: not counted yet), the text its
    own page shows, and when the counted work began.

    >>> JobProgress(1, 40, 160, "40 / 160 patched forwards", False, 100.0, 110.0).eta_seconds
    30.0
    """
    job_id: int
    done: int
    total: int
    text: str
    queued: bool
    work_started: float | None
    updated: float

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the rate so far (None before the first unit is done)."""
        if self.work_started is None or not 0 < self.done < self.total or self.updated <= self.work_started:
            return None
        return (self.updated - self.work_started) / self.done * (self.total - self.done)


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def _make_engine(url: str) -> sa.Engine:
    """An engine without a pool (each operation opens and closes its connection, so a forked job
    never shares a socket or file handle with its parent); SQLite gets WAL and BEGIN IMMEDIATE."""
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme not in URL_SCHEMES:
        raise ValueError(f"unsupported store URL {url!r}; use sqlite:///path/runs.sqlite, "
                         "postgresql://user:password@host/db or a directory")
    if scheme == "sqlite":
        engine = sa.create_engine(url, poolclass=NullPool,
                                  connect_args={"timeout": 30.0, "isolation_level": None})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn):
            # our own BEGIN (the driver's isolation is off): a write takes the lock up front, so a
            # read-then-write transaction waits for others instead of failing with 'database is locked'
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")
        return engine
    try:
        return sa.create_engine(url, poolclass=NullPool, pool_pre_ping=False)
    except ModuleNotFoundError as exc:
        raise ValueError(f"store URL {url!r} needs the database driver {exc.name!r}, which is not "
                         "installed; install it (e.g. pip install 'psycopg[binary]') or use an SQLite "
                         "store (sqlite:///path or a directory)") from None


MAX_ID = 2**63 - 1              # SQLite and PostgreSQL BIGINT; a larger id names no row
LIST_TEXT_CHARS = 1_000         # label / model as the history list reads them (the page clips further)


def record_id(value: object, what: str = "run") -> int:
    """A run / job id as the store takes it: an integer (or its digits) from 1 to MAX_ID;
    ValueError naming the value otherwise (never an OverflowError from the database).

    >>> record_id("12")
    12
    >>> record_id(10**20)
    Traceback (most recent call last):
    ...
    ValueError: run id 100000000000000000000 is out of range: ids are 1 to 9223372036854775807
    """
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 30:
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "…"
        raise ValueError(f"{what} id {shown} is not a number; ids are integers from 1 to {MAX_ID}")
    if not 1 <= value <= MAX_ID:
        shown = str(value) if len(str(value)) <= 40 else str(value)[:40] + "…"
        raise ValueError(f"{what} id {shown} is out of range: ids are 1 to {MAX_ID}")
    return value


def _make_dir(path: Path) -> None:
    """Create the data dir; ValueError when it is a file or cannot be made."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"data dir {str(path)!r} is a file, not a directory; choose a folder") from None
    except OSError as exc:
        raise ValueError(f"cannot use data dir {str(path)!r}: {exc.strerror}") from None


def _db_reason(exc: Exception) -> str:
    """The database's own words, short (SQLite: 'file is not a database')."""
    orig = getattr(exc, "orig", None) or exc
    return str(orig).splitlines()[0][:200] if str(orig) else type(orig).__name__


def _pid_alive(pid: int, since: float) -> bool:
    """Whether process `pid` on this host still runs and is the one that started at or before `since`
    (a reused pid belongs to a newer process)."""
    import psutil
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return proc.create_time() <= since + 1.0
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


STOPPED_AFTER_S = 30.0          # a stopped job's process with no heartbeat this long is failed and killed


def _pid_stopped(pid: int) -> bool:
    """Whether process `pid` is stopped (SIGSTOP / SIGTSTP, or held by a tracer).

    >>> _pid_stopped(os.getpid())
    False
    """
    import psutil
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False


def _ours(pid: int) -> bool:
    """Whether this process may end `pid`: another process of the same user (never itself)."""
    import psutil
    try:
        return pid != os.getpid() and psutil.Process(pid).uids().real == os.getuid()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False


def _kill(pid: int) -> None:
    """SIGKILL a stopped job's process (the kernel then frees its run-slot lock); gone already is fine."""
    import signal
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class RunStore:
    """The run history and job records: an SQLite file `<data_dir>/runs.sqlite` by default, or any
    SQLAlchemy URL (`url=`); survives restarts.

    `data_dir` also holds what is local to a host (the job cache, the run lock); `path` is the
    SQLite file, or None for a server database.
    """

    def __init__(self, data_dir: str | Path, filename: str = DEFAULT_FILENAME, *, url: str | None = None):
        self.data_dir = Path(data_dir)
        _make_dir(self.data_dir)
        if url is None:
            self.path: Path | None = self.data_dir / filename
            url = _sqlite_url(self.path)
        elif url.startswith("sqlite"):
            db = sa.engine.make_url(url).database
            if not db or db == ":memory:":
                raise ValueError(f"an SQLite store needs a file, not {url!r}; e.g. sqlite:////srv/patchboard/runs.sqlite")
            self.path = Path(db)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        else:
            self.path = None
        self.url = url
        self._engine = _make_engine(url)
        self._sqlite = self._engine.dialect.name == "sqlite"
        self._host = socket.gethostname()
        try:
            self._open()
        except (sqlite3.DatabaseError, sa.exc.DatabaseError) as exc:
            raise ValueError(f"{self.path or self.display_url} is not a usable Patchboard run store "
                             f"({_db_reason(exc)}); move it away or choose another --data-dir") from None

    def _open(self) -> None:
        """WAL on an SQLite file, then the tables (created when missing, upgraded when old)."""
        if self._sqlite:                  # WAL is a property of the file; set outside any transaction
            with held():
                raw = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
                try:
                    raw.execute("PRAGMA busy_timeout=30000")
                    raw.execute("PRAGMA journal_mode=WAL")
                finally:
                    raw.close()
        with self._transaction() as db:
            META.create_all(db, checkfirst=True)
            columns = {c["name"] for c in sa.inspect(db).get_columns("attributions")}
            if "edges_json" not in columns:          # a store made before edge scores were kept
                db.exec_driver_sql("ALTER TABLE attributions ADD COLUMN edges_json TEXT")

    def __repr__(self) -> str:
        return f"RunStore({self.display_url!r})"

    @property
    def display_url(self) -> str:
        """The URL without its password (for logs and the startup line)."""
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    @contextmanager
    def _read(self):
        with held(), self._engine.connect() as db:     # held: no fork mid-SQLite (patching/runs/sqlite_lock.py)
            yield db

    @contextmanager
    def _transaction(self):
        """One write transaction: committed on success, rolled back on any exception."""
        with held(), self._engine.connect() as db:
            db.info["write"] = True
            with db.begin():
                yield db

    @staticmethod
    def _pairs(pairs) -> list[list[str]]:
        """[clean, corrupt, answer, wrong] (+ the role positions' text when the pair names roles)."""
        return [list(p) if not hasattr(p, "clean") else [p.clean, p.corrupt, p.answer, p.wrong]
                + ([roles_text(p.positions)] if getattr(p, "positions", ()) else []) for p in pairs]

    def save(self, result: PatchResult, pairs, label: str = "") -> int:
        """Store one finished run; returns its id."""
        pairs = self._pairs(pairs)
        spec = result.spec
        label = label or f"{spec.kind}{' per position' if spec.per_position else ''}, {spec.direction}"
        row = dict(created=time.time(), label=label, model=result.model_name or spec.model, kind=spec.kind,
                   direction=spec.direction, metric=spec.metric, n_pairs=result.n_pairs,
                   clean_value=result.clean_value, corrupt_value=result.corrupt_value, seconds=result.seconds,
                   spec_json=json.dumps(spec.to_dict()), pairs_json=json.dumps(pairs),
                   result_json=json.dumps(result.to_json()))
        with self._transaction() as db:
            return int(db.execute(RUNS.insert().values(**row)).inserted_primary_key[0])

    _INFO = ("id", "created", "label", "model", "kind", "direction", "metric", "n_pairs", "clean_value",
             "corrupt_value", "seconds")

    def _info_cols(self):
        return [RUNS.c[name] for name in self._INFO]

    def list(self, limit: int = 200) -> list[RunInfo]:
        """Newest first."""
        cols = [sa.func.substr(c, 1, LIST_TEXT_CHARS).label(c.name) if c.name in ("label", "model") else c
                for c in self._info_cols()]           # a huge stored label never reaches the page whole
        with self._read() as db:
            rows = db.execute(sa.select(*cols).order_by(RUNS.c.id.desc()).limit(int(limit))).all()
        return [RunInfo(*r) for r in rows]

    def get(self, run_id: int) -> Run:
        """The run, or ValueError naming the id."""
        with self._read() as db:
            row = db.execute(sa.select(*self._info_cols(), RUNS.c.pairs_json, RUNS.c.result_json)
                             .where(RUNS.c.id == record_id(run_id))).first()
        if row is None:
            raise ValueError(f"run {run_id} does not exist (deleted?); pick one from the history")
        info = RunInfo(*row[:11])
        pairs = [tuple(p) for p in json.loads(row[11])]
        return Run(info, pairs, result_from_json(json.loads(row[12])))

    def info(self, run_id: int) -> RunInfo:
        with self._read() as db:
            row = db.execute(sa.select(*self._info_cols()).where(RUNS.c.id == record_id(run_id))).first()
        if row is None:
            raise ValueError(f"run {run_id} does not exist (deleted?); pick one from the history")
        return RunInfo(*row)

    def delete(self, run_id: int) -> bool:
        """True when a run was deleted."""
        with self._transaction() as db:
            return db.execute(RUNS.delete().where(RUNS.c.id == record_id(run_id))).rowcount > 0

    # -- attribution runs: every kind of one run_attribution call, kept together ---------------
    def save_attribution(self, results: list[AttributionResult], pairs, label: str = "",
                         edges: EdgeScores | None = None) -> int:
        """Store one attribution run (a result per kind); returns its id (its own numbering,
        separate from the patching runs' history)."""
        if not results:
            raise ValueError("an attribution run needs at least one kind")
        pairs = self._pairs(pairs)
        r = results[0]
        label = label or f"attribution ({r.method}) · {len(results)} kinds · {r.spec.direction}"
        row = dict(created=time.time(), label=label, model=r.model_name or r.spec.model, method=r.method,
                   steps=int(r.steps), direction=r.spec.direction, metric=r.spec.metric, n_pairs=r.n_pairs,
                   pairs_json=json.dumps(pairs), results_json=json.dumps([x.to_json() for x in results]),
                   edges_json=json.dumps(edges.to_json()) if edges is not None else None)
        with self._transaction() as db:
            return int(db.execute(ATTRIBUTIONS.insert().values(**row)).inserted_primary_key[0])

    def get_attribution(self, attribution_id: int) -> "AttributionRun":
        """The attribution run, or ValueError naming the id."""
        a = ATTRIBUTIONS.c
        with self._read() as db:
            row = db.execute(sa.select(a.id, a.created, a.label, a.pairs_json, a.results_json, a.edges_json)
                             .where(a.id == record_id(attribution_id, "attribution run"))).first()
        if row is None:
            raise ValueError(f"attribution run {attribution_id} does not exist; run attribution again")
        results = [AttributionResult.from_json(d) for d in json.loads(row[4])]
        edges = EdgeScores.from_json(json.loads(row[5])) if row[5] else None
        return AttributionRun(row[0], row[1], row[2], [tuple(p) for p in json.loads(row[3])], results, edges)

    def __len__(self) -> int:
        with self._read() as db:
            return int(db.execute(sa.select(sa.func.count()).select_from(RUNS)).scalar_one())

    # -- job status: one record per background run, so a killed or lost job shows up as failed -----
    def begin_job(self, kind: str, label: str, model: str, pid: int | None = None,
                  token: str | None = None) -> int:
        """Record a job as running in this process (or `pid`) on this host; returns its id.
        `token` names the job the way the page that started it does (see `request_cancel`).

        >>> job = store.begin_job("sweep", "IOI · head_out", "default")
        >>> store.jobs(1)[0].status
        'running'
        """
        if not kind:
            raise ValueError("a job needs a kind (sweep, path or attribution), not an empty string")
        now = time.time()
        row = dict(kind=kind, label=label or kind, model=model or "", status="running", reason="",
                   pid=int(pid) if pid is not None else os.getpid(), host=self._host, started=now, updated=now)
        with self._transaction() as db:
            job_id = int(db.execute(JOBS.insert().values(**row)).inserted_primary_key[0])
            if token:
                self._upsert_token(db, str(token), job_id=job_id)
            running = sa.select(JOBS.c.id).where(JOBS.c.status == "running")
            db.execute(JOB_TOKENS.delete().where(                # old tokens of jobs no longer running
                JOB_TOKENS.c.created < now - TOKEN_DAYS * 86400,
                sa.or_(JOB_TOKENS.c.job_id.is_(None), JOB_TOKENS.c.job_id.not_in(running))))
            return job_id

    def _upsert_token(self, db, token: str, **values) -> None:
        """Insert or update one token's row atomically (SQLite and PostgreSQL both have ON CONFLICT)."""
        if self._sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        stmt = insert(JOB_TOKENS).values(token=token, created=time.time(), **values)
        db.execute(stmt.on_conflict_do_update(index_elements=[JOB_TOKENS.c.token], set_=values))

    def request_cancel(self, token: str) -> int | None:
        """Record that the page asked to cancel the job named `token`, whether it has started, is
        still queued (a Celery job with no worker up: Celery's revoke is then lost) or never will.
        A job checks this when it starts and at each heartbeat; `fail_stale` reports a killed job
        with a request as cancelled. Returns the job's id when it has started.

        >>> store.request_cancel("5f0c…:run-button:3") is None     # not started yet
        True
        """
        if not token:
            raise ValueError("a cancel request needs the job's token, not an empty string")
        with self._transaction() as db:
            self._upsert_token(db, str(token), cancel_requested=time.time())
            return db.execute(sa.select(JOB_TOKENS.c.job_id).where(JOB_TOKENS.c.token == str(token))).scalar()

    def request_cancel_job(self, job_id: int) -> bool:
        """Ask the running job `job_id` to stop (any page may: the History list, a reloaded tab),
        through the token it was begun with; False when it is not running or has no token.

        >>> store.request_cancel_job(store.begin_job("sweep", "x", "default", token="t:1"))
        True
        """
        with self._transaction() as db:
            status = db.execute(sa.select(JOBS.c.status).where(JOBS.c.id == record_id(job_id, "job"))).scalar()
            if status is None:
                raise ValueError(f"job {job_id} does not exist")
            token = db.execute(sa.select(JOB_TOKENS.c.token).where(JOB_TOKENS.c.job_id == int(job_id))).scalar()
            if status != "running" or token is None:
                return False
            self._upsert_token(db, token, cancel_requested=time.time())
            return True

    def job_tokens(self, job_ids) -> dict[int, str]:
        """{job id: the token it was begun with} for those of `job_ids` that have one."""
        ids_ = [int(i) for i in job_ids]
        if not ids_:
            return {}
        with self._read() as db:
            rows = db.execute(sa.select(JOB_TOKENS.c.job_id, JOB_TOKENS.c.token)
                              .where(JOB_TOKENS.c.job_id.in_(ids_))).all()
        return {int(j): str(t) for j, t in rows}

    def set_job_progress(self, job_id: int, done: int, total: int, text: str = "", *, queued: bool = False,
                         work_started: float | None = None) -> None:
        """Record where a running job is (`JobProgress`); the last write wins."""
        values = dict(done=int(done), total=int(total), text=str(text), queued=bool(queued), work_started=work_started,
                      updated=time.time())
        if self._sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        with self._transaction() as db:
            db.execute(insert(JOB_PROGRESS).values(job_id=int(job_id), **values)
                       .on_conflict_do_update(index_elements=[JOB_PROGRESS.c.job_id], set_=values))

    def job_progress(self, job_ids) -> dict[int, JobProgress]:
        """{job id: its last recorded JobProgress} for those of `job_ids` that reported any."""
        ids_ = [int(i) for i in job_ids]
        if not ids_:
            return {}
        with self._read() as db:
            rows = db.execute(sa.select(*JOB_PROGRESS.c).where(JOB_PROGRESS.c.job_id.in_(ids_))).all()
        return {int(r[0]): JobProgress(*r) for r in rows}

    def cancel_requested(self, token: str | None) -> bool:
        """Whether Cancel was pressed for the job named `token` (False for no token)."""
        if not token:
            return False
        with self._read() as db:
            return db.execute(sa.select(JOB_TOKENS.c.cancel_requested)
                              .where(JOB_TOKENS.c.token == str(token))).scalar() is not None

    def heartbeat(self, job_id: int) -> bool:
        """Mark a running job as alive now; False when it is not running (already finished or failed)."""
        with self._transaction() as db:
            return db.execute(JOBS.update().where(JOBS.c.id == int(job_id), JOBS.c.status == "running")
                              .values(updated=time.time())).rowcount > 0

    def finish_job(self, job_id: int, status: str, reason: str = "", run_id: int | None = None) -> None:
        """End a job: status 'done' (with the saved run's id), 'failed' (with the reason) or 'cancelled'.

        ValueError for another status or an unknown job. A job that `fail_stale` gave up on but
        that did finish after all is set to what it says now.
        """
        if status not in FINISHED:
            raise ValueError(f"a job finishes as one of {', '.join(FINISHED)}, not {status!r}")
        now = time.time()
        with self._transaction() as db:
            n = db.execute(JOBS.update().where(JOBS.c.id == int(job_id)).values(
                status=status, reason=str(reason or ""), run_id=None if run_id is None else int(run_id),
                updated=now, finished=now)).rowcount
            db.execute(JOB_PROGRESS.delete().where(JOB_PROGRESS.c.job_id == int(job_id)))   # only running jobs have one
        if n == 0:
            raise ValueError(f"job {job_id} does not exist")

    def jobs(self, limit: int = 50, status: str | None = None) -> list[JobInfo]:
        """Newest first; only those with `status` when given."""
        q = sa.select(*JOBS.c).order_by(JOBS.c.id.desc()).limit(int(limit))
        if status is not None:
            if status not in JOB_STATUSES:
                raise ValueError(f"job status must be one of {', '.join(JOB_STATUSES)}, not {status!r}")
            q = q.where(JOBS.c.status == status)
        with self._read() as db:
            rows = db.execute(q).all()
        return [JobInfo(*r) for r in rows]

    def job(self, job_id: int) -> JobInfo:
        with self._read() as db:
            row = db.execute(sa.select(*JOBS.c).where(JOBS.c.id == record_id(job_id, "job"))).first()
        if row is None:
            raise ValueError(f"job {job_id} does not exist")
        return JobInfo(*row)

    def fail_stale(self, max_age_s: float = 120.0, stopped_after_s: float = STOPPED_AFTER_S) -> int:
        """Mark running jobs that can no longer finish as failed (or cancelled); returns how many.

        A job whose process (on this host) is gone: "worker process N exited" — or, when Cancel was
        pressed for it (`request_cancel`), cancelled: Dash kills a cancelled job's process, so
        nothing in it can say so. The watchdog: a job whose process on this host is stopped
        (SIGSTOP, a debugger) with no heartbeat for `stopped_after_s` seconds is failed and, when
        it is ours (same user, not this process), killed, which frees the run slot it holds. A job
        on another host, or whose process hangs, with no heartbeat for `max_age_s` seconds: failed
        ("worker stopped responding"), left running.
        """
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be positive, not {max_age_s!r}")
        if stopped_after_s <= 0:
            raise ValueError(f"stopped_after_s must be positive, not {stopped_after_s!r}")
        now = time.time()
        with self._read() as db:
            running = db.execute(
                sa.select(JOBS.c.id, JOBS.c.pid, JOBS.c.host, JOBS.c.started, JOBS.c.updated,
                          JOB_TOKENS.c.cancel_requested)
                .select_from(JOBS.outerjoin(JOB_TOKENS, JOB_TOKENS.c.job_id == JOBS.c.id))
                .where(JOBS.c.status == "running")).all()
        stale: list[tuple[int, str, str, int | None]] = []       # (job, status, reason, pid to kill)
        for job_id, pid, host, started, updated, cancel in running:
            local = host == self._host and pid is not None
            gone = local and not _pid_alive(pid, started)
            silent = now - updated
            if gone and cancel is not None:
                stale.append((job_id, "cancelled", f"cancelled: Cancel was pressed and its process {pid} stopped", None))
            elif gone:
                stale.append((job_id, "failed", f"worker process {pid} exited before the run finished "
                                                "(killed or crashed)", None))
            elif local and silent > stopped_after_s and _pid_stopped(pid):
                ours = _ours(pid)
                stale.append((job_id, "failed", f"no heartbeat for {silent:.0f} s: the job's process {pid} "
                                                f"stopped or hung (it is stopped{'; killed to free the run slot' if ours else ''})",
                              pid if ours else None))
            elif silent > max_age_s:
                stale.append((job_id, "failed", f"worker stopped responding: no heartbeat for {silent:.0f} s: "
                                                f"the job's process {pid} on {host} stopped or hung", None))
        if not stale:
            return 0
        n, kill = 0, []
        with self._transaction() as db:
            for job_id, status, reason, pid in stale:      # only if still running: a late finish_job wins
                changed = db.execute(JOBS.update().where(JOBS.c.id == job_id, JOBS.c.status == "running")
                                     .values(status=status, reason=reason, updated=now, finished=now)).rowcount
                n += changed
                if changed:
                    db.execute(JOB_PROGRESS.delete().where(JOB_PROGRESS.c.job_id == job_id))
                if changed and pid is not None:
                    kill.append(pid)
        for pid in kill:
            _kill(pid)
        return n


def open_store(target: str | Path, data_dir: str | Path | None = None) -> RunStore:
    """A run store from a URL (`sqlite:///file`, `postgresql://...`) or a directory (SQLite file in it).

    `data_dir` is where host-local files go (job cache, run lock): by default the directory itself,
    or the SQLite file's folder, or `.patchboard` for a server database.

    >>> open_store(f"sqlite:///{tmp_path}/runs.sqlite").path.name
    'runs.sqlite'
    """
    text = str(target)
    if "://" not in text:
        return RunStore(data_dir if data_dir is not None else text,
                        url=None if data_dir is None else _sqlite_url(Path(text) / DEFAULT_FILENAME))
    scheme = text.split(":", 1)[0].split("+", 1)[0]
    if scheme not in URL_SCHEMES:
        raise ValueError(f"unsupported store URL {text!r}; use sqlite:///path/runs.sqlite, "
                         "postgresql://user:password@host/db or a directory")
    if data_dir is None:
        if scheme == "sqlite":
            db = sa.engine.make_url(text).database
            data_dir = Path(db).parent if db and db != ":memory:" else ".patchboard"
        else:
            data_dir = ".patchboard"
    return RunStore(data_dir, url=text)


__all__ = ["RunStore", "open_store", "RunInfo", "Run", "AttributionRun", "JobInfo", "result_from_json",
           "JOB_STATUSES"]
