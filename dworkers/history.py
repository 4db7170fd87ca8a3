"""Run history in SQLite: every run and step, for ``runs``/``show``, ``--resume`` and the cache.

One file, ``history.db``, in the user data directory (``DWORKERS_HOME`` moves it). The database
runs in WAL mode with a busy timeout, so concurrent runs share it safely; every write is its own
short ``BEGIN IMMEDIATE`` transaction, so a killed process loses at most the step in flight. The
schema is versioned with ``PRAGMA user_version`` and upgraded by ``MIGRATIONS``, in order, in one
transaction.

``HistoryRecorder`` is an ``on_event`` callback that records a run as the engine reports it;
``History.reuse_for`` says which steps of an earlier run a resume may reuse; ``HistoryCache``
answers the engine's cache lookups from every succeeded step on record.

A database that is corrupt, locked beyond the busy timeout or unwritable raises ``HistoryError``
naming the file and the fix. The user's file is never deleted or rewritten.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dworkers import dag
from dworkers.errors import DworkersError, HistoryError, NotFoundError
from dworkers.events import (
    Event,
    RunFinished,
    RunResult,
    RunStarted,
    StepFinished,
    StepInfo,
    StepResult,
    StepStarted,
    StepStatus,
)
from dworkers.files import data_dir
from dworkers.llm import MockClient
from dworkers.plans.base import BasePlan

DEFAULT_TIMEOUT = 5.0  # seconds to wait for another process's write lock
RUN_STATUSES = ("running", "succeeded", "failed", "interrupted")
# A step row is 'pending' until it starts and 'running' until it finishes; then a StepStatus.
STEP_STATUSES = ("pending", "running", *(s.value for s in StepStatus))
LATEST = ("last", "latest")  # run references meaning "the most recent run"

# Each migration is a list of statements, applied in order inside one transaction; the schema
# version (PRAGMA user_version) is the number of migrations applied. Never edit a released
# migration: append a new one.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """
        CREATE TABLE runs (
            run_id            TEXT PRIMARY KEY,
            plan              TEXT NOT NULL,
            tenant            TEXT NOT NULL,
            inputs            TEXT NOT NULL DEFAULT '{}',
            status            TEXT NOT NULL
                              CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted')),
            started_at        REAL NOT NULL,
            finished_at       REAL,
            duration_ms       REAL,
            prompt_tokens     INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd          REAL NOT NULL DEFAULT 0,
            resumed_from      TEXT,
            options           TEXT NOT NULL DEFAULT '{}',
            pid               INTEGER,
            host              TEXT
        )
        """,
        "CREATE INDEX runs_started ON runs (started_at)",
        "CREATE INDEX runs_plan ON runs (plan, started_at)",
        """
        CREATE TABLE steps (
            run_id            TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            step_id           TEXT NOT NULL,
            position          INTEGER NOT NULL DEFAULT 0,
            name              TEXT NOT NULL DEFAULT '',
            role              TEXT NOT NULL DEFAULT '',
            depends_on        TEXT NOT NULL DEFAULT '[]',
            status            TEXT NOT NULL
                              CHECK (status IN ('pending', 'running', 'succeeded', 'failed',
                                                'skipped', 'cancelled')),
            model             TEXT,
            messages          TEXT,
            output            TEXT NOT NULL DEFAULT '',
            error             TEXT,
            attempts          INTEGER NOT NULL DEFAULT 0,
            duration_ms       REAL NOT NULL DEFAULT 0,
            prompt_tokens     INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd          REAL NOT NULL DEFAULT 0,
            cached            INTEGER NOT NULL DEFAULT 0,
            cache_key         TEXT,
            fingerprint       TEXT,
            started_at        REAL,
            finished_at       REAL,
            PRIMARY KEY (run_id, step_id)
        )
        """,
        """
        CREATE INDEX steps_cache ON steps (cache_key, finished_at)
        WHERE status = 'succeeded' AND cache_key IS NOT NULL
        """,
    ),
]


def schema_version() -> int:
    """The schema version this dworkers writes."""
    return len(MIGRATIONS)


def history_path() -> Path:
    """``history.db`` in ``$DWORKERS_HOME``, else in the user data directory."""
    return data_dir() / "history.db"


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run as recorded. ``status`` is ``running`` while its process lives; a run whose
    process died without finishing (kill -9, power loss) reads as ``interrupted``."""

    run_id: str
    plan: str
    tenant: str
    inputs: dict[str, str]
    status: str
    started_at: float
    finished_at: float | None
    duration_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    resumed_from: str | None
    options: dict[str, Any] = field(default_factory=dict)  # what the CLI ran it with
    counts: dict[str, int] = field(default_factory=dict)  # step status → number of steps

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cached(self) -> int:
        """How many steps were reused instead of called (included in ``counts['succeeded']``)."""
        return self.counts.get("cached", 0)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tokens"] = self.tokens
        return data


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One step of a recorded run. ``status`` is a ``StepStatus`` value, or ``pending`` (never
    started) / ``running`` (started, never finished) for a run that stopped or is still going.
    ``messages`` is the rendered prompt (for a reused or cached step, the original's)."""

    run_id: str
    step_id: str
    position: int
    name: str
    role: str
    depends_on: list[str]
    status: str
    model: str | None
    messages: list[dict[str, str]] | None
    output: str
    error: str | None
    attempts: int
    duration_ms: float
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    cached: bool
    cache_key: str | None
    fingerprint: str | None
    started_at: float | None
    finished_at: float | None

    @property
    def succeeded(self) -> bool:
        return self.status == StepStatus.SUCCEEDED.value

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self, *, messages: bool = False) -> dict[str, Any]:
        """JSON-ready; the rendered prompt only when ``messages`` is true (it can be large)."""
        data = asdict(self)
        data["tokens"] = self.tokens
        if not messages:
            del data["messages"]
        return data

    def to_step_result(self) -> StepResult:
        """As the engine reports it; a step that never finished reads as cancelled."""
        error: str | None
        if self.status in ("pending", "running"):
            status = StepStatus.CANCELLED
            error = self.error or ("never started: the run stopped first" if self.status ==
                                   "pending" else "did not finish: the run stopped while it ran")
        else:
            status, error = StepStatus(self.status), self.error
        return StepResult(
            step_id=self.step_id, status=status, output=self.output, error=error,
            attempts=self.attempts, duration_ms=self.duration_ms, model=self.model,
            prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
            cost_usd=self.cost_usd, started_at=self.started_at, finished_at=self.finished_at,
            cached=self.cached, cache_key=self.cache_key, fingerprint=self.fingerprint,
        )


@dataclass(frozen=True, slots=True)
class ResumeDecision:
    """Whether a resume reuses a step of the earlier run, and why (for the CLI to show)."""

    step_id: str
    reuse: bool
    reason: str


class AmbiguousRunError(NotFoundError):
    """A run id prefix that matches more than one run."""

    def __init__(self, prefix: str, matches: Sequence[str]) -> None:
        self.kind, self.name, self.matches = "run", prefix, list(matches)
        shown = ", ".join(matches[:10]) + (", ..." if len(matches) > 10 else "")
        DworkersError.__init__(
            self, f"run id prefix {prefix!r} is ambiguous: it matches {shown} — "
            "type more of the run id")


class NoOutputError(DworkersError):
    """A step that has no output to show because it did not succeed."""

    exit_code = 1


# --- the database -------------------------------------------------------------------------------

_RUN_COLUMNS = ("run_id, plan, tenant, inputs, status, started_at, finished_at, duration_ms, "
                "prompt_tokens, completion_tokens, cost_usd, resumed_from, options, pid, host")
_STEP_COLUMNS = ("run_id, step_id, position, name, role, depends_on, status, model, messages, "
                 "output, error, attempts, duration_ms, prompt_tokens, completion_tokens, "
                 "cost_usd, cached, cache_key, fingerprint, started_at, finished_at")
# Where/what a step is (position, name, role, depends_on) is written once; the rest is updated.
_STEP_UPSERT = (
    f"INSERT INTO steps ({_STEP_COLUMNS}) VALUES ({', '.join('?' * 21)}) "
    "ON CONFLICT (run_id, step_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _STEP_COLUMNS.split(", ")[6:] if c != "messages")
    + ", messages = COALESCE(excluded.messages, steps.messages)"
)


class History:
    """The run history database. Opens (and creates or upgrades) the file on first use.

    ``timeout`` is how long a write waits for another process's lock before ``HistoryError``.
    One instance may be shared between threads; each process should have its own.
    """

    def __init__(self, path: Path | str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = Path(path) if path is not None else history_path()
        self.timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"History({str(self.path)!r})"

    def __enter__(self) -> History:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> History:
        """Open now (rather than on first use), so a broken database is reported before a run
        spends anything. Raises ``HistoryError``."""
        with self._lock:
            self._connection()
        return self

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- connection, errors, transactions ---------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HistoryError(
                f"cannot create the run history directory {self.path.parent}: "
                f"{exc.strerror or exc} — set DWORKERS_HOME to a writable directory"
            ) from None
        if self.path.is_dir():
            raise HistoryError(f"run history {self.path} is a directory, not a database file — "
                               "move it aside, or set DWORKERS_HOME to another directory")
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {max(0, int(self.timeout * 1000))}")
            conn.execute("PRAGMA foreign_keys = ON")
            self._check_ours(conn)  # before anything writes to the file
            # WAL: readers never block the writer; NORMAL sync survives a killed process.
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate(conn)
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise self._error(exc, "opening it") from None
        except HistoryError:
            if conn is not None:
                conn.close()
            raise
        self._conn = conn
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        latest = len(MIGRATIONS)
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > latest:
            raise self._newer(version)
        if version == latest:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])  # another process?
            if version > latest:
                raise self._newer(version)
            if version == 0:
                self._check_ours(conn)
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {latest}")
            conn.execute("COMMIT")
        except BaseException:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _check_ours(self, conn: sqlite3.Connection) -> None:
        """Refuse a database that some other program made (version 0 with tables of its own)."""
        # One statement, so the version and the tables come from the same snapshot even while
        # another process is creating the schema.
        version, names = conn.execute(
            "SELECT (SELECT user_version FROM pragma_user_version), "
            "(SELECT group_concat(name, char(31)) FROM sqlite_master "
            "WHERE name NOT LIKE 'sqlite_%')").fetchone()
        if int(version) != 0:
            return
        foreign = names.split("\x1f") if names else []
        if foreign:
            raise HistoryError(
                f"{self.path} is an SQLite database, but not a dworkers run history "
                f"(it has tables: {', '.join(foreign[:5])}) — set DWORKERS_HOME to "
                "another directory; the file was left untouched")

    def _newer(self, version: int) -> HistoryError:
        return HistoryError(
            f"run history {self.path} has schema version {version}, newer than this dworkers "
            f"understands ({len(MIGRATIONS)}) — upgrade dworkers, or set DWORKERS_HOME to use "
            "another directory")

    def _error(self, exc: sqlite3.Error, doing: str) -> HistoryError:
        """A clear, actionable ``HistoryError`` for an sqlite3 failure."""
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        detail = str(exc)
        path = self.path
        aside = (f"move it aside (mv '{path}' '{path}.broken') and dworkers starts a new history, "
                 "or set DWORKERS_HOME to use another directory; the file was left untouched")
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in detail:
            return HistoryError(
                f"run history {path} is locked by another process (waited {self.timeout:g}s "
                f"while {doing}) — wait for the other dworkers command to finish and retry, "
                "or set DWORKERS_HOME to use a separate history")
        corrupt = "not a database" in detail or "malformed" in detail
        if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT) or corrupt:
            return HistoryError(f"run history {path} is corrupt or not a database ({detail}) "
                                f"— {aside}")
        if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM,
                    sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_AUTH):
            return HistoryError(
                f"cannot use run history {path} ({detail}) — check the permissions and free "
                f"space of {path.parent}, or set DWORKERS_HOME to a writable directory")
        return HistoryError(f"run history {path} failed while {doing} ({detail}) — {aside}")

    @contextmanager
    def _write(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One short write transaction, taking the write lock up front (no upgrade deadlock)."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error(exc, doing) from None
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._error(exc, doing) from None
                raise

    def _read(self, sql: str, params: Sequence[object] = (), *,
              doing: str = "reading it") -> list[sqlite3.Row]:
        with self._lock:
            conn = self._connection()
            try:
                cursor = conn.execute(sql, tuple(params))
                cursor.row_factory = sqlite3.Row
                return list(cursor.fetchall())
            except sqlite3.Error as exc:
                raise self._error(exc, doing) from None

    # --- writes (used by HistoryRecorder) ----------------------------------------------------

    def start_run(self, run_id: str, plan: str, tenant: str, *, inputs: Mapping[str, str],
                  steps: Sequence[StepInfo], started_at: float | None = None,
                  resumed_from: str | None = None,
                  options: Mapping[str, Any] | None = None) -> None:
        """Record a new run (status ``running``) and its steps (status ``pending``)."""
        with self._write("recording a new run") as conn:
            conn.execute(
                f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES ({', '.join('?' * 15)}) "
                "ON CONFLICT (run_id) DO UPDATE SET status = 'running', "
                "started_at = excluded.started_at, finished_at = NULL, pid = excluded.pid, "
                "host = excluded.host",
                (run_id, plan, tenant, json.dumps(dict(inputs)), "running",
                 started_at if started_at is not None else time.time(), None, None, 0, 0, 0.0,
                 resumed_from, json.dumps(dict(options or {})), os.getpid(),
                 socket.gethostname()))
            conn.executemany(
                "INSERT INTO steps (run_id, step_id, position, name, role, depends_on, status, "
                "model) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?) ON CONFLICT DO NOTHING",
                [(run_id, s.step_id, i, s.name, s.role, json.dumps(list(s.depends_on)), s.model)
                 for i, s in enumerate(steps)])

    def start_step(self, run_id: str, step_id: str, model: str,
                   messages: Sequence[Mapping[str, str]], started_at: float | None = None) -> None:
        """Mark a step ``running`` and keep its rendered prompt."""
        with self._write("recording a step start") as conn:
            conn.execute(
                "UPDATE steps SET status = 'running', model = ?, messages = ?, started_at = ? "
                "WHERE run_id = ? AND step_id = ? AND status IN ('pending', 'running')",
                (model, json.dumps([dict(m) for m in messages]),
                 started_at if started_at is not None else time.time(), run_id, step_id))

    def finish_step(self, run_id: str, result: StepResult,
                    messages: Sequence[Mapping[str, str]] | None = None,
                    info: StepInfo | None = None, position: int = 0) -> None:
        """Record a step's final result (and its prompt, when known)."""
        with self._write("recording a step result") as conn:
            self._upsert_step(conn, run_id, result, messages, info, position)

    def finish_run(self, result: RunResult) -> None:
        """Record a run's final status and totals."""
        with self._write("recording a run result") as conn:
            self._update_run(conn, result)

    def save_run(self, result: RunResult, *, steps: Sequence[StepInfo] = (),
                 messages: Mapping[str, Sequence[Mapping[str, str]]] | None = None,
                 resumed_from: str | None = None,
                 options: Mapping[str, Any] | None = None) -> None:
        """Record a whole finished run at once, in one transaction (idempotent)."""
        messages = messages or {}
        infos = {s.step_id: (i, s) for i, s in enumerate(steps)}
        with self._write("recording a run") as conn:
            conn.execute(
                f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES ({', '.join('?' * 15)}) "
                "ON CONFLICT (run_id) DO NOTHING",
                (result.run_id, result.plan, result.tenant, json.dumps(result.inputs),
                 "running", result.started_at or time.time(), None, None, 0, 0, 0.0,
                 resumed_from, json.dumps(dict(options or {})), os.getpid(),
                 socket.gethostname()))
            for n, (sid, step) in enumerate(result.outputs.items()):
                position, info = infos.get(sid, (n, None))
                self._upsert_step(conn, result.run_id, step, messages.get(sid), info, position)
            self._update_run(conn, result)

    def _upsert_step(self, conn: sqlite3.Connection, run_id: str, result: StepResult,
                     messages: Sequence[Mapping[str, str]] | None, info: StepInfo | None,
                     position: int) -> None:
        text: str | None = json.dumps([dict(m) for m in messages]) if messages else None
        if text is None and result.cache_key:  # reused or cached: the original's prompt
            row = conn.execute(
                "SELECT messages FROM steps WHERE cache_key = ? AND status = 'succeeded' "
                "AND messages IS NOT NULL ORDER BY finished_at DESC LIMIT 1",
                (result.cache_key,)).fetchone()
            text = row[0] if row else None
        name = info.name if info else ""
        role = info.role if info else ""
        depends = json.dumps(list(info.depends_on)) if info else "[]"
        conn.execute(
            _STEP_UPSERT,
            (run_id, result.step_id, position, name, role, depends, result.status.value,
             result.model, text, result.output, result.error, result.attempts,
             result.duration_ms, result.prompt_tokens, result.completion_tokens,
             result.cost_usd, int(result.cached), result.cache_key, result.fingerprint,
             result.started_at, result.finished_at))

    @staticmethod
    def _update_run(conn: sqlite3.Connection, result: RunResult) -> None:
        status = ("interrupted" if result.interrupted
                  else "succeeded" if result.success else "failed")
        conn.execute(
            "UPDATE runs SET status = ?, finished_at = ?, duration_ms = ?, prompt_tokens = ?, "
            "completion_tokens = ?, cost_usd = ?, inputs = ? WHERE run_id = ?",
            (status, time.time(), result.total_duration_ms, result.prompt_tokens,
             result.completion_tokens, result.cost_usd, json.dumps(result.inputs),
             result.run_id))

    # --- queries ------------------------------------------------------------------------------

    def list_runs(self, plan: str | None = None, status: str | None = None,
                  limit: int | None = 20) -> list[RunRecord]:
        """Most recent first. ``status`` is one of ``RUN_STATUSES``; a run whose process died
        counts as ``interrupted``, not ``running``."""
        if status is not None and status not in RUN_STATUSES:
            raise DworkersError(f"unknown run status {status!r} — use one of "
                                f"{', '.join(RUN_STATUSES)}")
        where, params = [], []
        if plan is not None:
            where.append("plan = ?")
            params.append(plan)
        if status in ("running", "interrupted"):  # decided per row: is the process alive?
            where.append("status IN ('running', 'interrupted')")
        elif status is not None:
            where.append("status = ?")
            params.append(status)
        sql = f"SELECT {_RUN_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at DESC, run_id DESC"
        exact = status not in ("running", "interrupted")
        if limit is not None and exact:
            sql += f" LIMIT {int(limit)}"
        records = [r for r in self._records(self._read(sql, params))
                   if status is None or r.status == status]
        return records[:limit] if limit is not None else records

    def get_run(self, run_ref: str) -> RunRecord:
        """A run by id, unique id prefix, or ``last``. Raises ``NotFoundError`` (unknown or
        ambiguous, with candidates)."""
        return self._records(self._read(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (self.resolve(run_ref),)))[0]

    def resolve(self, run_ref: str) -> str:
        """The full run id for an id, a unique prefix of one, or ``last``/``latest``."""
        ref = run_ref.strip()
        if ref:
            rows = self._read("SELECT run_id FROM runs WHERE run_id = ?", (ref,))
            if rows:
                return str(rows[0][0])
            rows = self._read("SELECT run_id FROM runs WHERE substr(run_id, 1, ?) = ? "
                              "ORDER BY started_at DESC LIMIT 11", (len(ref), ref))
            if len(rows) == 1:
                return str(rows[0][0])
            if len(rows) > 1:
                raise AmbiguousRunError(ref, [str(r[0]) for r in rows])
        recent = [str(r[0]) for r in self._read(
            "SELECT run_id FROM runs ORDER BY started_at DESC, run_id DESC LIMIT 20")]
        if ref.lower() in LATEST and recent:
            return recent[0]
        hint = ("`dworkers runs` lists recent runs" + (f" (latest: {recent[0]})" if recent
                                                        else "; none recorded yet")
                + f" in {self.path}")
        raise NotFoundError("run", ref, recent, hint)

    def steps(self, run_ref: str) -> list[StepRecord]:
        """The run's steps, in plan order."""
        run_id = self.resolve(run_ref)
        rows = self._read(f"SELECT {_STEP_COLUMNS} FROM steps WHERE run_id = ? "
                          "ORDER BY position, rowid", (run_id,))
        return [_step_record(row) for row in rows]

    def step(self, run_ref: str, step_id: str) -> StepRecord:
        """One step of a run. Raises ``NotFoundError`` for a step the run does not have."""
        steps = self.steps(run_ref)
        for record in steps:
            if record.step_id == step_id:
                return record
        run_id = self.resolve(run_ref)
        raise NotFoundError("step", step_id, [s.step_id for s in steps],
                            f"run {run_id} has steps: {', '.join(s.step_id for s in steps)}")

    def step_output(self, run_ref: str, step_id: str) -> str:
        """A succeeded step's output. Raises ``NoOutputError`` when the step did not succeed."""
        record = self.step(run_ref, step_id)
        if record.succeeded:
            return record.output
        why = {"pending": "it never started", "running": "it did not finish",
               "skipped": "it was skipped", "cancelled": "it was cancelled"}.get(
            record.status, f"it {record.status}")
        raise NoOutputError(f"step {step_id!r} of run {record.run_id} has no output: {why}"
                            + (f" ({record.error})" if record.error else ""))

    def to_run_result(self, run_ref: str) -> RunResult:
        """A recorded run as a ``RunResult`` (steps that never finished read as cancelled)."""
        run = self.get_run(run_ref)
        outputs = {s.step_id: s.to_step_result() for s in self.steps(run.run_id)}
        return RunResult(
            run_id=run.run_id, plan=run.plan, tenant=run.tenant, inputs=run.inputs,
            success=run.status == "succeeded", interrupted=run.status == "interrupted",
            total_duration_ms=run.duration_ms or 0.0, started_at=run.started_at,
            outputs=outputs)

    # --- resume and cache ---------------------------------------------------------------------

    def resume_decisions(self, run_ref: str, plan: BasePlan) -> list[ResumeDecision]:
        """For each step of ``plan`` (in plan order): reuse the earlier run's result, or run.

        A step is reused only if it succeeded in that run, its definition (``fingerprint()``)
        is unchanged, and no step it depends on, directly or not, changed or is new. Steps that
        failed, were skipped or cancelled, never started, or were running when the process died
        run again, and so does everything downstream of them (the engine does that by itself).
        """
        records = {s.step_id: s for s in self.steps(run_ref)}
        graph = plan.graph
        changed: dict[str, str] = {}
        for sid in graph:
            step = plan.get_step(sid)
            record = records.get(sid)
            if record is None:
                changed[sid] = "new step"
            elif (record.succeeded and step is not None
                  and record.fingerprint != step.fingerprint()):
                # (a step that did not succeed runs again anyway, and so does all below it)
                changed[sid] = "definition changed"
        downstream = dag.descendants(graph, changed)
        decisions = []
        for sid in graph:
            record = records.get(sid)
            if sid in changed:
                decision = ResumeDecision(sid, False, changed[sid])
            elif sid in downstream:
                ups = [c for c in changed if sid in dag.descendants(graph, [c])]
                decision = ResumeDecision(sid, False, f"depends on changed {', '.join(ups)}")
            elif record is not None and record.succeeded:
                decision = ResumeDecision(sid, True, "succeeded")
            else:
                status = record.status if record else "pending"
                reason = {"pending": "never started", "running": "did not finish"}.get(
                    status, status)
                decision = ResumeDecision(sid, False, reason)
            decisions.append(decision)
        return decisions

    def reuse_for(self, run_ref: str, plan: BasePlan) -> dict[str, StepResult]:
        """The results a resume of that run reuses: pass as ``PlanBuilder(..., reuse=...)``."""
        decisions = self.resume_decisions(run_ref, plan)
        keep = {d.step_id for d in decisions if d.reuse}
        return {s.step_id: s.to_step_result() for s in self.steps(run_ref) if s.step_id in keep}

    def lookup(self, key: str, *, exclude_models: Sequence[str] = ()) -> StepResult | None:
        """The most recent succeeded step, of any run, with this cache key, unless the model
        that answered it is one of ``exclude_models``."""
        excluded = list(exclude_models)
        rows = self._read(
            f"SELECT {_STEP_COLUMNS} FROM steps WHERE cache_key = ? AND status = 'succeeded' "
            + (f"AND model NOT IN ({', '.join('?' * len(excluded))}) " if excluded else "")
            + "ORDER BY finished_at DESC LIMIT 1", (key, *excluded),
            doing="looking up the cache")
        return _step_record(rows[0]).to_step_result() if rows else None

    # --- helpers ------------------------------------------------------------------------------

    def _records(self, rows: Sequence[sqlite3.Row]) -> list[RunRecord]:
        if not rows:
            return []
        ids = [str(row["run_id"]) for row in rows]
        counts: dict[str, dict[str, int]] = {run_id: {} for run_id in ids}
        for chunk in range(0, len(ids), 500):
            part = ids[chunk:chunk + 500]
            for row in self._read(
                    "SELECT run_id, status, count(*), sum(cached) FROM steps "
                    f"WHERE run_id IN ({', '.join('?' * len(part))}) GROUP BY run_id, status",
                    part):
                mine = counts[str(row[0])]
                mine[str(row[1])] = int(row[2])
                if row[1] == "succeeded":
                    mine["cached"] = int(row[3] or 0)
        host = socket.gethostname()
        records = []
        for row in rows:
            status = str(row["status"])
            if status == "running" and row["host"] == host and not _alive(row["pid"]):
                status = "interrupted"
            run_id = str(row["run_id"])
            records.append(RunRecord(
                run_id=run_id, plan=row["plan"], tenant=row["tenant"],
                inputs=_json(row["inputs"], {}), status=status, started_at=row["started_at"],
                finished_at=row["finished_at"], duration_ms=row["duration_ms"],
                prompt_tokens=row["prompt_tokens"], completion_tokens=row["completion_tokens"],
                cost_usd=row["cost_usd"], resumed_from=row["resumed_from"],
                options=_json(row["options"], {}),
                counts={"total": sum(v for k, v in counts[run_id].items() if k != "cached"),
                        **counts[run_id]}))
        return records


class HistoryCache:
    """The engine's ``StepCache`` over the history: a step whose model and rendered messages
    match a succeeded step on record is reused without a call. A history that cannot be read
    is a cache miss (the error is kept in ``error``), never a failed step.

    Answers made up offline by ``--mock`` (model ``mock``) are never served to a real run: the
    cache key holds the model the step asked for, not the client that answered. A ``--mock``
    run may pass ``exclude_models=()``.
    """

    def __init__(self, history: History, *,
                 exclude_models: Sequence[str] = (MockClient.model_name,)) -> None:
        self.history = history
        self.exclude_models = tuple(exclude_models)
        self.error: HistoryError | None = None
        self.hits = 0

    def lookup(self, key: str) -> StepResult | None:
        try:
            hit = self.history.lookup(key, exclude_models=self.exclude_models)
        except HistoryError as exc:
            self.error = exc
            return None
        self.hits += hit is not None
        return hit


class HistoryRecorder:
    """An ``on_event`` callback that records a run into ``history`` as it goes.

    Writes happen at run start, step start (attempt 1: the rendered prompt), step finish and
    run finish — never per streamed token. A write that fails (say, the database is locked for
    longer than the busy timeout) does not stop the run: the recorder stops writing per event,
    keeps ``error``, and saves the whole run in one transaction when it finishes; if that works
    too, ``error`` is cleared. Check ``error`` after the run to warn that history was not saved.
    """

    def __init__(self, history: History, *, inputs: Mapping[str, object] | None = None,
                 resumed_from: str | None = None,
                 options: Mapping[str, Any] | None = None) -> None:
        self.history = history
        self.inputs = {str(k): str(v) for k, v in (inputs or {}).items()}
        self.resumed_from = resumed_from
        self.options = dict(options or {})
        self.run_id: str | None = None
        self.error: HistoryError | None = None
        self._steps: tuple[StepInfo, ...] = ()
        self._positions: dict[str, int] = {}
        self._messages: dict[str, tuple[dict[str, str], ...]] = {}

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.run_id, self.error = event.run_id, None
            self._steps = event.steps
            self._positions = {s.step_id: i for i, s in enumerate(event.steps)}
            self._messages = {}
            self._try(lambda: self.history.start_run(
                event.run_id, event.plan, event.tenant, inputs=self.inputs, steps=event.steps,
                started_at=time.time(), resumed_from=self.resumed_from,
                options=self.options))
        elif self.run_id is None:
            return
        elif isinstance(event, StepStarted):
            if event.attempt == 1 and event.messages:
                self._messages[event.step_id] = event.messages
                run_id = self.run_id
                self._try(lambda: self.history.start_step(
                    run_id, event.step_id, event.model, event.messages, time.time()))
        elif isinstance(event, StepFinished):
            sid = event.result.step_id
            run_id = self.run_id
            position = self._positions.get(sid, len(self._positions))
            info = self._steps[position] if position < len(self._steps) else None
            self._try(lambda: self.history.finish_step(
                run_id, event.result, self._messages.get(sid), info, position))
        elif isinstance(event, RunFinished):
            self._finish(event.result)

    def _try(self, write: Any) -> None:
        if self.error is not None:
            return  # saved in one go at the end
        try:
            write()
        except HistoryError as exc:
            self.error = exc

    def _finish(self, result: RunResult) -> None:
        result = result.model_copy(update={"inputs": result.inputs or self.inputs})
        try:
            if self.error is None:
                self.history.finish_run(result)
            else:
                self.history.save_run(result, steps=self._steps, messages=self._messages,
                                      resumed_from=self.resumed_from,
                                      options=self.options)
            self.error = None
        except HistoryError as exc:
            self.error = exc
        self._messages = {}


def _step_record(row: sqlite3.Row) -> StepRecord:
    return StepRecord(
        run_id=row["run_id"], step_id=row["step_id"], position=row["position"],
        name=row["name"], role=row["role"], depends_on=_json(row["depends_on"], []),
        status=row["status"], model=row["model"], messages=_json(row["messages"], None),
        output=row["output"], error=row["error"], attempts=row["attempts"],
        duration_ms=row["duration_ms"], prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"], cost_usd=row["cost_usd"],
        cached=bool(row["cached"]), cache_key=row["cache_key"],
        fingerprint=row["fingerprint"], started_at=row["started_at"],
        finished_at=row["finished_at"])


def _json(text: str | None, default: Any) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def _alive(pid: object) -> bool:
    """Whether a process with this id exists (on this host). Unknown → assume alive."""
    if not isinstance(pid, int) or pid <= 0 or os.name == "nt":
        return True  # on Windows, os.kill would terminate it
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists but belongs to someone else
    return True
