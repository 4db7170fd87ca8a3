"""``History``: the run history's SQLite file — opening, upgrading, writing and querying it.

One file, ``history.db``, in the user data directory (``DWORKERS_HOME`` moves it). The database
runs in WAL mode with a busy timeout, so concurrent runs share it safely; every write is a short
``BEGIN IMMEDIATE`` transaction, so a killed process loses at most the steps in flight. A write
that finds the file locked for longer than the busy timeout can wait on, with back-off
(``write_patiently``: what ``writer.HistoryWriter`` does for a run's recording). The schema is
versioned with ``PRAGMA user_version`` and upgraded by ``schema.MIGRATIONS``, in order, in one
transaction.

A database that is corrupt, locked beyond the busy timeout or unwritable raises ``HistoryError``
(``HistoryLockedError`` when locked) naming the file and the fix. The user's file is never
deleted or rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dworkers.errors import DworkersError, HistoryError, NotFoundError
from dworkers.events import Event, RunFinished, RunStarted, StepFinished, StepInfo
from dworkers.files import data_dir
from dworkers.history import resume, schema
from dworkers.history.records import (
    RUN_COLUMNS,
    STATUS_AS_READ,
    STEP_COLUMNS,
    STEP_PLACE,
    RunRecord,
    StepRecord,
    new_run_row,
    run_record,
    step_record,
    step_row,
    stored_status,
)
from dworkers.history.tools import TOOL_CALLS_OF_RUN, record_tool_calls, tool_calls_by_step
from dworkers.plans.base import BasePlan
from dworkers.results import RunResult, RunStatus, StepResult

DEFAULT_TIMEOUT = 5.0  # seconds to wait for another process's write lock
LATEST = ("last", "latest")  # run references meaning "the most recent run"
FIRST_PAUSE, LONGEST_PAUSE = 0.05, 1.0  # seconds between patient write attempts (doubling)
RESUME_CHAIN = 1000  # the most runs ``resume_chain`` follows back through ``resumed_from``

# One piece of a write transaction (statements on the connection it is given; what it returns
# is ignored).
WriteJob = Callable[[sqlite3.Connection], object]


def history_path() -> Path:
    """``history.db`` in ``$DWORKERS_HOME``, else in the user data directory."""
    return data_dir() / "history.db"


class AmbiguousRunError(NotFoundError):
    """A run id prefix that matches more than one run."""

    def __init__(self, prefix: str, matches: Sequence[str]) -> None:
        self.kind, self.name, self.matches = "run", prefix, list(matches)
        shown = ", ".join(matches[:10]) + (", ..." if len(matches) > 10 else "")
        DworkersError.__init__(
            self, f"run id prefix {prefix!r} is ambiguous: it matches {shown} — "
            "type more of the run id")


class HistoryLockedError(HistoryError):
    """Another process held the history's write lock for longer than this one waited."""


@dataclass(frozen=True, slots=True)
class RunSpending:
    """What a run has spent, with every run it resumed and every other resume of those (for a
    resume's budget to count).

    ``cost_known`` is false when some call's cost could not be known (``cost_usd`` is then what
    is known of it); ``complete`` is false when a run of the chain died without finishing
    (kill -9, power loss): the calls in flight then are not on record."""

    cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    cost_known: bool
    complete: bool
    runs: tuple[str, ...]  # the run and those it resumed, newest first; then other resumes


class ResumeInProgressError(DworkersError):
    """Another command is resuming the same run: refused before anything is spent."""


class NoOutputError(DworkersError):
    """A step that has no output to show because it did not succeed."""

    exit_code = 1


_RUNS = ", ".join(RUN_COLUMNS)
_STEPS = ", ".join(STEP_COLUMNS)
_RUN_INSERT = f"INSERT INTO runs ({_RUNS}) VALUES ({', '.join(':' + c for c in RUN_COLUMNS)})"
# Where a step sits in its plan is written once; the rest is updated, and a prompt already
# recorded is kept when the update does not know it.
_STEP_UPSERT = (
    f"INSERT INTO steps ({_STEPS}) VALUES ({', '.join(':' + c for c in STEP_COLUMNS)}) "
    "ON CONFLICT (run_id, step_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in STEP_COLUMNS
                if c not in STEP_PLACE and c != "messages")
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

    def sibling(self) -> History:
        """Another ``History`` on the same file with a connection of its own: a write that
        waits for another process's lock there never holds up reads here."""
        return History(self.path, timeout=self.timeout)

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
        latest = len(schema.MIGRATIONS)
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
            for statements in schema.MIGRATIONS[version:]:
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
            f"understands ({len(schema.MIGRATIONS)}) — upgrade dworkers, or set DWORKERS_HOME "
            "to use another directory")

    def _locked(self, doing: str, waited: float) -> HistoryLockedError:
        return HistoryLockedError(
            f"run history {self.path} is locked by another process (waited {waited:.3g}s "
            f"while {doing}) — wait for the other dworkers command to finish and retry, "
            "or set DWORKERS_HOME to use a separate history")

    def _error(self, exc: sqlite3.Error, doing: str) -> HistoryError:
        """A clear, actionable ``HistoryError`` for an sqlite3 failure."""
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        detail = str(exc)
        path = self.path
        aside = (f"move it aside (mv '{path}' '{path}.broken') and dworkers starts a new history, "
                 "or set DWORKERS_HOME to use another directory; the file was left untouched")
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in detail:
            return self._locked(doing, self.timeout)
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

    def write_patiently(self, doing: str, jobs: Sequence[WriteJob], *, patience: float,
                        sleep: Callable[[float], object] = time.sleep) -> None:
        """Run ``jobs`` in one transaction; while another process holds the lock, try again
        with back-off for up to ``patience`` seconds in all. Raises ``HistoryLockedError``
        after that, ``HistoryError`` at once for anything else (a full disk, a corrupt file)."""
        started = time.monotonic()
        pause = FIRST_PAUSE
        while True:
            try:
                with self._write(doing) as conn:
                    for job in jobs:
                        job(conn)
                return
            except HistoryLockedError:
                waited = time.monotonic() - started
                if waited + pause > patience:
                    raise self._locked(doing, max(waited, self.timeout)) from None
            sleep(pause)
            pause = min(pause * 2, LONGEST_PAUSE)

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
    # Each write is a ``put_*`` method that runs its statements on a connection, so that a
    # ``HistoryWriter`` can group several in one transaction, and a public method that runs one
    # in a transaction of its own.

    def start_run(self, run_id: str, plan: str, tenant: str, *, inputs: Mapping[str, str],
                  steps: Sequence[StepInfo], started_at: float | None = None,
                  resumed_from: str | None = None,
                  options: Mapping[str, Any] | None = None) -> None:
        """Record a new run (status ``running``) and its steps (status ``pending``)."""
        with self._write("recording a new run") as conn:
            self.put_run(conn, run_id, plan, tenant, inputs=inputs, steps=steps,
                         started_at=started_at, resumed_from=resumed_from, options=options)

    def start_step(self, run_id: str, step_id: str, model: str,
                   messages: Sequence[Mapping[str, str]], started_at: float | None = None) -> None:
        """Mark a step ``running`` and keep its rendered prompt."""
        with self._write("recording a step start") as conn:
            self.put_step_start(conn, run_id, step_id, model, messages, started_at)

    def finish_step(self, run_id: str, result: StepResult,
                    messages: Sequence[Mapping[str, str]] | None = None,
                    info: StepInfo | None = None, position: int = 0) -> None:
        """Record a step's final result (and its prompt, when known)."""
        with self._write("recording a step result") as conn:
            self.put_step(conn, run_id, result, messages, info, position)

    def finish_run(self, result: RunResult) -> None:
        """Record a run's final status and totals."""
        with self._write("recording a run result") as conn:
            self.put_run_result(conn, result)

    def save_run(self, result: RunResult, *, steps: Sequence[StepInfo] = (),
                 messages: Mapping[str, Sequence[Mapping[str, str]]] | None = None,
                 resumed_from: str | None = None,
                 options: Mapping[str, Any] | None = None) -> None:
        """Record a whole finished run at once, in one transaction (idempotent)."""
        with self._write("recording a run") as conn:
            self.put_whole_run(conn, result, steps=steps, messages=messages,
                               resumed_from=resumed_from, options=options)

    @staticmethod
    def put_run(conn: sqlite3.Connection, run_id: str, plan: str, tenant: str, *,
                inputs: Mapping[str, str], steps: Sequence[StepInfo],
                started_at: float | None = None, resumed_from: str | None = None,
                options: Mapping[str, Any] | None = None, rows_complete: bool = True) -> None:
        """``start_run``'s statements; a dataset run starts with ``rows_complete`` false."""
        row = new_run_row(run_id, plan, tenant, inputs=inputs, started_at=started_at,
                          resumed_from=resumed_from, options=options,
                          rows_complete=rows_complete)
        conn.execute(
            _RUN_INSERT + " ON CONFLICT (run_id) DO UPDATE SET status = 'running', "
            "started_at = excluded.started_at, finished_at = NULL, pid = excluded.pid, "
            "host = excluded.host, rows_complete = excluded.rows_complete", row)
        if steps:
            conn.executemany(
                "INSERT INTO steps (run_id, step_id, position, name, role, depends_on, "
                "status, model) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?) ON CONFLICT DO NOTHING",
                [(run_id, s.step_id, i, s.name, s.role, json.dumps(list(s.depends_on)),
                  s.model) for i, s in enumerate(steps)])

    @staticmethod
    def put_step_start(conn: sqlite3.Connection, run_id: str, step_id: str, model: str,
                       messages: Sequence[Mapping[str, str]],
                       started_at: float | None = None) -> None:
        """``start_step``'s statements."""
        conn.execute(
            "UPDATE steps SET status = 'running', model = ?, messages = ?, started_at = ? "
            "WHERE run_id = ? AND step_id = ? AND status IN ('pending', 'running')",
            (model, json.dumps([dict(m) for m in messages]),
             started_at if started_at is not None else time.time(), run_id, step_id))

    @staticmethod
    def put_step(conn: sqlite3.Connection, run_id: str, result: StepResult,
                 messages: Sequence[Mapping[str, str]] | None, info: StepInfo | None,
                 position: int) -> None:
        """``finish_step``'s statements."""
        text: str | None = json.dumps([dict(m) for m in messages]) if messages else None
        if text is None and result.cache_key:  # reused or cached: the original's prompt
            found = conn.execute(
                "SELECT messages FROM steps WHERE cache_key = ? AND status = 'succeeded' "
                "AND messages IS NOT NULL ORDER BY finished_at DESC LIMIT 1",
                (result.cache_key,)).fetchone()
            text = found[0] if found else None
        conn.execute(_STEP_UPSERT, step_row(run_id, result, position=position, info=info,
                                            messages=text))
        record_tool_calls(conn, run_id, result)

    @staticmethod
    def put_run_result(conn: sqlite3.Connection, result: RunResult) -> None:
        """``finish_run``'s statements."""
        conn.execute(
            "UPDATE runs SET status = ?, finished_at = ?, duration_ms = ?, prompt_tokens = ?, "
            "completion_tokens = ?, cost_usd = ?, cost_known = ?, inputs = ? WHERE run_id = ?",
            (stored_status(result.status.value), time.time(), result.total_duration_ms,
             result.prompt_tokens, result.completion_tokens, result.cost_usd,
             int(result.cost_known),
             json.dumps(result.inputs), result.run_id))

    @classmethod
    def put_whole_run(cls, conn: sqlite3.Connection, result: RunResult, *,
                      steps: Sequence[StepInfo] = (),
                      messages: Mapping[str, Sequence[Mapping[str, str]]] | None = None,
                      resumed_from: str | None = None,
                      options: Mapping[str, Any] | None = None) -> None:
        """``save_run``'s statements."""
        messages = messages or {}
        infos = {s.step_id: (i, s) for i, s in enumerate(steps)}
        row = new_run_row(result.run_id, result.plan, result.tenant, inputs=result.inputs,
                          started_at=result.started_at or None, resumed_from=resumed_from,
                          options=options)
        conn.execute(_RUN_INSERT + " ON CONFLICT (run_id) DO NOTHING", row)
        for n, (sid, step) in enumerate(result.outputs.items()):
            position, info = infos.get(sid, (n, None))
            cls.put_step(conn, result.run_id, step, messages.get(sid), info, position)
        cls.put_run_result(conn, result)

    # --- queries ------------------------------------------------------------------------------

    def list_runs(self, plan: str | None = None, status: str | None = None,
                  limit: int | None = 20) -> list[RunRecord]:
        """Most recent first. ``status`` is one of ``schema.RUN_STATUSES``; a run whose process died
        counts as ``interrupted``, not ``running``."""
        if status is not None and status not in schema.RUN_STATUSES:
            raise DworkersError(f"unknown run status {status!r} — use one of "
                                f"{', '.join(schema.RUN_STATUSES)}")
        where, params = [], []
        if plan is not None:
            where.append("plan = ?")
            params.append(plan)
        if status in ("running", "interrupted"):  # decided per row: is the process alive?
            where.append("status IN ('running', 'interrupted')")
        elif status is not None:
            where.append("status = ?")
            params.append(stored_status(status))  # waiting for approval: decided per run
        sql = f"SELECT {_RUNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at DESC, run_id DESC"
        exact = status not in ("running", "interrupted", "failed", RunStatus.WAITING.value)
        if limit is not None and exact:
            sql += f" LIMIT {int(limit)}"
        records = [r for r in self._records(self._read(sql, params))
                   if status is None or r.status == status]
        return records[:limit] if limit is not None else records

    def get_run(self, run_ref: str) -> RunRecord:
        """A run by id, unique id prefix, or ``last``. Raises ``NotFoundError`` (unknown or
        ambiguous, with candidates)."""
        return self._records(self._read(
            f"SELECT {_RUNS} FROM runs WHERE run_id = ?", (self.resolve(run_ref),)))[0]

    def resolve(self, run_ref: str) -> str:
        """The full run id for an id, ``last``/``latest``, a unique prefix of an id, or its
        random suffix alone (``e34387`` of ``20261125-093012-e34387``)."""
        ref = run_ref.strip()
        if ref:
            rows = self._read("SELECT run_id FROM runs WHERE run_id = ?", (ref,))
            if rows:
                return str(rows[0][0])
        recent = [str(r[0]) for r in self._read(
            "SELECT run_id FROM runs ORDER BY started_at DESC, run_id DESC LIMIT 20")]
        if ref.lower() in LATEST and recent:
            return recent[0]
        if ref:
            for sql in (
                "SELECT run_id FROM runs WHERE substr(run_id, 1, ?) = ? "
                "ORDER BY started_at DESC LIMIT 11",
                # the part after the last '-', whole: a run id ends with its random suffix
                "SELECT run_id FROM runs WHERE length(run_id) > ?1 "
                "AND substr(run_id, -?1) = ?2 AND substr(run_id, -?1 - 1, 1) = '-' "
                "ORDER BY started_at DESC LIMIT 11",
            ):
                rows = self._read(sql, (len(ref), ref))
                if len(rows) == 1:
                    return str(rows[0][0])
                if len(rows) > 1:
                    raise AmbiguousRunError(ref, [str(r[0]) for r in rows])
        hint = ("`dworkers runs` lists recent runs" + (f" (latest: {recent[0]})" if recent
                                                        else "; none recorded yet")
                + f" in {self.path}")
        raise NotFoundError("run", ref, recent, hint)

    @contextmanager
    def resume_lock(self, run_id: str) -> Iterator[None]:
        """Hold the right to resume ``run_id`` for as long as the block runs: a second resume
        of the same run, from this process or another, is refused meanwhile (it would pay for
        the same steps again). The lock goes with the process if it dies."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on this platform: no lock to take
            yield
            return
        digest = hashlib.sha256(run_id.encode()).hexdigest()[:20]
        path = self.path.parent / "locks" / f"resume-{digest}.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = path.open("a")
        except OSError as exc:
            raise HistoryError(f"cannot create the resume lock {path}: "
                               f"{exc.strerror or exc} — set DWORKERS_HOME to a writable "
                               "directory") from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ResumeInProgressError(
                    f"run {run_id} is being resumed by another dworkers command right now — "
                    "wait for it to finish; if steps are still missing after it, resume the "
                    "run it makes (`dworkers runs` lists it)") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def steps(self, run_ref: str) -> list[StepRecord]:
        """The run's steps, in plan order."""
        run_id = self.resolve(run_ref)
        rows = self._read(f"SELECT {_STEPS} FROM steps WHERE run_id = ? "
                          "ORDER BY position, rowid", (run_id,))
        return [step_record(row) for row in rows]

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
               "skipped": "it was skipped", "cancelled": "it was cancelled",
               "waiting": "it waits for approval", "rejected": "it was rejected"}.get(
            record.status, f"it {record.status}")
        raise NoOutputError(f"step {step_id!r} of run {record.run_id} has no output: {why}"
                            + (f" ({record.error})" if record.error else ""))

    def to_run_result(self, run_ref: str) -> RunResult:
        """A recorded run as a ``RunResult`` (steps that never finished read as cancelled)."""
        run = self.get_run(run_ref)
        result = _run_result(run, self.steps(run.run_id))
        result.outputs = self._with_tool_calls(run.run_id, result.outputs)
        return result

    def replay(self, run_ref: str) -> list[Event]:
        """A recorded run as the events the engine emitted, for a view to draw: its start, each
        step that finished, and its end. The steps of a run whose process died read as
        cancelled; a run still going has no end yet, nor its unfinished steps."""
        run = self.get_run(run_ref)
        steps = self.steps(run.run_id)
        infos = tuple(StepInfo(s.step_id, s.name or s.step_id, s.role, s.model or "",
                               tuple(s.depends_on)) for s in steps)
        events: list[Event] = [RunStarted(run.run_id, run.plan, run.tenant, infos,
                                          run.started_at)]
        going = run.status is RunStatus.RUNNING
        events += [StepFinished(s.to_step_result(), run.started_at) for s in steps
                   if not going or s.status not in ("pending", "running")]
        if not going:
            ended = run.started_at + (run.duration_ms or 0) / 1000
            events.append(RunFinished(_run_result(run, steps), ended))
        return events

    # --- resume and cache ---------------------------------------------------------------------

    def resume_decisions(self, run_ref: str, plan: BasePlan) -> list[resume.ResumeDecision]:
        """For each step of ``plan``: reuse the earlier run's result, or run (see
        ``resume.decide``)."""
        return resume.decide(plan, self.steps(run_ref))

    def reuse_for(self, run_ref: str, plan: BasePlan) -> dict[str, StepResult]:
        """The results a resume of that run reuses: pass as ``PlanBuilder(..., reuse=...)``."""
        records = self.steps(run_ref)
        reused = resume.reusable(resume.decide(plan, records), records)
        return self._with_tool_calls(records[0].run_id, reused) if reused else reused

    def spent(self, run_ref: str) -> RunSpending:
        """What a run has spent so far in all, with every run it resumed (and they resumed)
        and every other resume of those: for a resume's budget, which covers the whole run,
        however often and from wherever it was resumed (resuming A again after B resumed it
        counts A and B). Reused and cached steps cost nothing, so nothing is counted twice; a
        run still going, or whose process died, counts what its steps on record spent
        (``complete`` is then false)."""
        chain = self.resume_family(run_ref)
        totals = self._step_totals(list(chain)).values()
        return RunSpending(cost_usd=sum(t[0] for t in totals),
                     prompt_tokens=sum(t[1] for t in totals),
                     completion_tokens=sum(t[2] for t in totals),
                     cost_known=all(t[3] for t in totals), complete=all(chain.values()),
                     runs=tuple(chain))

    def resume_family(self, run_ref: str) -> dict[str, bool]:
        """``resume_chain`` of the run, then every other run that resumed one of the runs
        found (each: whether it finished), at most ``RESUME_CHAIN`` runs in all."""
        family = self.resume_chain(run_ref)
        parents = list(family)
        while parents and len(family) < RESUME_CHAIN:
            found = self._read(
                "SELECT run_id, finished_at FROM runs WHERE resumed_from IN "
                f"({', '.join('?' * len(parents[:500]))}) ORDER BY started_at",
                parents[:500])
            parents = parents[500:]
            for row in found:
                if row["run_id"] not in family and len(family) < RESUME_CHAIN:
                    family[row["run_id"]] = row["finished_at"] is not None
                    parents.append(row["run_id"])
        return family

    def resume_chain(self, run_ref: str) -> dict[str, bool]:
        """The run and the runs it resumed, newest first (each: whether it finished); a run
        no longer on record ends the chain."""
        chain: dict[str, bool] = {}
        current: str | None = self.resolve(run_ref)
        while current is not None and current not in chain and len(chain) < RESUME_CHAIN:
            found = self._read("SELECT resumed_from, finished_at FROM runs WHERE run_id = ?",
                               (current,))
            if not found:
                break
            chain[current] = found[0]["finished_at"] is not None
            current = found[0]["resumed_from"]
        return chain

    def lookup(self, key: str, *, exclude_models: Sequence[str] = ()) -> StepResult | None:
        """The most recent succeeded step, of any run, with this cache key, unless the model
        that answered it is one of ``exclude_models``."""
        excluded = list(exclude_models)
        rows = self._read(
            f"SELECT {_STEPS} FROM steps WHERE cache_key = ? AND status = 'succeeded' "
            + (f"AND model NOT IN ({', '.join('?' * len(excluded))}) " if excluded else "")
            + "ORDER BY finished_at DESC LIMIT 1", (key, *excluded),
            doing="looking up the cache")
        return step_record(rows[0]).to_step_result() if rows else None

    # --- helpers ------------------------------------------------------------------------------

    def _with_tool_calls(self, run_id: str,
                         results: dict[str, StepResult]) -> dict[str, StepResult]:
        """``results`` with the tool calls each step made in run ``run_id``."""
        calls = tool_calls_by_step(self._read(TOOL_CALLS_OF_RUN, (run_id,)))
        return {step_id: result.model_copy(update={"tool_calls": calls[step_id]})
                if step_id in calls else result for step_id, result in results.items()}

    def _records(self, rows: Sequence[sqlite3.Row]) -> list[RunRecord]:
        if not rows:
            return []
        ids = [str(row["run_id"]) for row in rows]
        counts: dict[str, dict[str, int]] = {run_id: {} for run_id in ids}
        for chunk in range(0, len(ids), 500):
            part = ids[chunk:chunk + 500]
            for row in self._read(
                    f"SELECT run_id, {STATUS_AS_READ} AS read, count(*), sum(cached) "
                    f"FROM steps WHERE run_id IN ({', '.join('?' * len(part))}) "
                    "GROUP BY run_id, read",
                    part):
                mine = counts[str(row[0])]
                mine[str(row[1])] = int(row[2])
                if row[1] == "succeeded":
                    mine["cached"] = int(row[3] or 0)
            # A dataset run counts its rows (its steps live per row, in history.dataset).
            for row in self._read(
                    f"SELECT run_id, {STATUS_AS_READ} AS read, count(*) FROM rows "
                    f"WHERE run_id IN ({', '.join('?' * len(part))}) GROUP BY run_id, read",
                    part):
                mine = counts[str(row[0])]
                mine[str(row[1])] = int(row[2])
                mine["rows"] = mine.get("rows", 0) + int(row[2])  # says: these count rows
        # A run that has not finished (still going, or its process died) has no totals yet:
        # what its steps on record spent is what it has spent so far.
        so_far = self._step_totals([str(row["run_id"]) for row in rows
                                    if row["finished_at"] is None])
        host = socket.gethostname()
        records = []
        for row in rows:
            status = str(row["status"])
            if status == "running" and row["host"] == host and not _alive(row["pid"]):
                status = "interrupted"
            mine = counts[str(row["run_id"])]
            if status == "failed" and mine.get("waiting") and not (
                    mine.get("failed") or mine.get("cancelled")):  # stopped at a gate only
                status = RunStatus.WAITING.value
            total = sum(v for k, v in mine.items() if k not in ("cached", "rows"))
            record = run_record(row, status, {"total": total, **mine})
            if record.run_id in so_far:
                cost, prompt, completion, known = so_far[record.run_id]
                record = replace(record, cost_usd=cost, prompt_tokens=prompt,
                                 completion_tokens=completion, cost_known=known)
            records.append(record)
        return records

    def _step_totals(self, ids: Sequence[str]) -> dict[str, tuple[float, int, int, bool]]:
        """For each run: the cost and tokens of its steps on record (a single run's, or a
        dataset run's row-steps), and whether every one of those costs was known."""
        totals: dict[str, tuple[float, int, int, bool]] = dict.fromkeys(ids, (0.0, 0, 0, True))
        for chunk in range(0, len(ids), 500):
            part = list(ids[chunk:chunk + 500])
            marks = ", ".join("?" * len(part))
            for table in ("steps", "row_steps"):
                for row in self._read(
                        "SELECT run_id, total(cost_usd), total(prompt_tokens), "
                        f"total(completion_tokens), min(cost_known) FROM {table} "
                        f"WHERE run_id IN ({marks}) GROUP BY run_id", part,
                        doing="adding up what runs spent"):
                    cost, prompt, completion, known = totals[str(row[0])]
                    totals[str(row[0])] = (cost + float(row[1]), prompt + int(row[2]),
                                           completion + int(row[3]),
                                           known and row[4] != 0)
        return totals


def _run_result(run: RunRecord, steps: Sequence[StepRecord]) -> RunResult:
    return RunResult(
        run_id=run.run_id, plan=run.plan, tenant=run.tenant, inputs=run.inputs,
        success=run.status is RunStatus.SUCCEEDED,
        interrupted=run.status is RunStatus.INTERRUPTED,
        total_duration_ms=run.duration_ms or 0.0, started_at=run.started_at,
        outputs={s.step_id: s.to_step_result() for s in steps})


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
