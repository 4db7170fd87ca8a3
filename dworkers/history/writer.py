"""``HistoryWriter``: a run's history writes, on a thread of their own, patient with locks.

A run records as it goes, and its events arrive on the event loop: a write there would hold up
every step while another process holds the history's lock. The writer takes each write as a
job, in order, and writes on its own thread with its own connection, grouping what has queued
up into one transaction. While another process holds the lock, it waits on with back-off (up to
``patience`` seconds for a transaction) — the run goes on meanwhile and nothing is switched
off. If the history really cannot be written (locked beyond that, full, corrupt), ``error``
says why and ``lost`` how many writes were given up; later writes are still tried, once each,
so that what can be saved is.

When the run outpaces the file (thousands of offline rows a second), the queue stays short: a
write that rewrites everything about something (a finished row and all its steps) makes the
writes about it queued in the same transaction unnecessary, and they are dropped; writes given
as ``Statement``s run as one ``executemany`` per statement for the whole transaction (each
call into SQLite hands the interpreter to the busy event loop, and waits to get it back); and
past ``MOST_QUEUED`` writes, ``submit`` waits for the thread to catch up, so memory stays flat.
The thread is woken only when it has nothing to do, and then lets the writes of the next
``GATHER_SECONDS`` join the first one (less, when someone waits for them): waking it for every
write would hand the interpreter back and forth thousands of times a second.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from dworkers.errors import HistoryError
from dworkers.history.storage import History, WriteJob

PATIENCE = 120.0  # seconds a transaction waits for another process's lock, in all
MOST_PER_TRANSACTION = 2000  # queued writes grouped into one transaction at most
MOST_QUEUED = 1000  # writes waiting at most before ``submit`` waits for the thread
GATHER_SECONDS = 0.05  # how long a write waits for others to share its transaction


Params = Mapping[str, Any] | Sequence[Any]


@dataclass(frozen=True, slots=True)
class Statement:
    """One SQL statement and its parameters, as a write: the queued statements of a
    transaction that share their SQL run as one ``executemany``. ``params`` may be a function
    that makes them, called on the writer's thread when the statement is written: a write a
    later one covers (see ``submit``) is dropped without its parameters ever being made."""

    sql: str
    params: Params | Callable[[], Params]


Write = WriteJob | Sequence[Statement]  # what ``submit`` takes


@dataclass(frozen=True, slots=True)
class _Queued:
    doing: str
    job: Write
    about: Hashable | None  # what the write is about (a row), if a later one may cover it
    whole: bool  # it rewrites everything about ``about``: earlier queued ones are not needed


class HistoryWriter:
    """Writes jobs (``WriteJob``: statements on a connection) to ``history``'s file in the
    order they are submitted, on a daemon thread started by the first one. ``flush`` waits
    until everything submitted is written or given up; ``close`` also ends the thread."""

    def __init__(self, history: History, *, patience: float = PATIENCE) -> None:
        self.history = history.sibling()  # its own connection: readers never wait on it
        self.patience = patience
        self.error: HistoryError | None = None  # the first write given up, if any
        self.lost = 0  # how many writes were given up
        self._jobs: deque[_Queued] = deque()
        self._changed = threading.Condition()
        self._writing = False
        self._idle = False  # the thread waits for a write: ``submit`` must wake it
        self._flushing = 0  # callers waiting in ``flush``: the thread does not gather for them
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, doing: str, job: Write, *, about: Hashable | None = None,
               whole: bool = False) -> None:
        """Queue a write (statements on a connection, or ``Statement``s); ``doing`` names it
        in an error ("recording a row"). ``about``: what it is about; ``whole``: it rewrites
        all of that, so writes about it still queued when it is written are dropped. Waits
        while ``MOST_QUEUED`` writes are queued."""
        with self._changed:
            if self._closed:
                raise RuntimeError("HistoryWriter.submit after close")
            self._changed.wait_for(lambda: len(self._jobs) < MOST_QUEUED)
            self._jobs.append(_Queued(doing, job, about, whole))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="dworkers-history",
                                                daemon=True)
                self._thread.start()
            elif self._idle or len(self._jobs) >= MOST_QUEUED:
                self._changed.notify_all()

    def write_now(self, doing: str, jobs: Sequence[WriteJob]) -> None:
        """Write ``jobs`` in one transaction in the calling thread, after everything queued
        (as patiently as the queue would). Raises ``HistoryError``."""
        self.flush()
        with self._changed:
            patience = self._patience()
        self.history.write_patiently(doing, jobs, patience=patience)

    def flush(self) -> HistoryError | None:
        """Wait until every write submitted so far is written or given up; returns ``error``.
        Bounded: each transaction waits at most ``patience`` seconds for a lock."""
        with self._changed:
            self._flushing += 1
            self._changed.notify_all()  # the thread stops gathering
            try:
                self._changed.wait_for(lambda: not self._jobs and not self._writing)
            finally:
                self._flushing -= 1
            return self.error

    def close(self) -> HistoryError | None:
        """``flush``, then end the thread and close the connection; returns ``error``."""
        error = self.flush()
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        self.history.close()
        return error

    def _patience(self) -> float:
        # Once the history could not be written for that long, each later write is tried
        # once (one busy timeout): the run must not wait that long again at every write.
        return self.patience if self.error is None else 0.0

    def _work(self) -> None:
        while True:
            with self._changed:
                self._idle = True
                self._changed.wait_for(lambda: self._jobs or self._closed)
                self._idle = False
                if not self._jobs:
                    return
                self._changed.wait_for(lambda: self._closed or self._flushing > 0
                                       or len(self._jobs) >= MOST_QUEUED,
                                       timeout=GATHER_SECONDS)
                batch = [self._jobs.popleft()
                         for _ in range(min(len(self._jobs), MOST_PER_TRANSACTION))]
                self._writing = True
                patience = self._patience()
                self._changed.notify_all()  # room in the queue
            covered = {queued.about for queued in batch if queued.whole}
            jobs = _grouped([queued.job for queued in batch
                             if queued.whole or queued.about is None
                             or queued.about not in covered])
            doing = batch[0].doing + (f" (and {len(batch) - 1:,} more writes)"
                                      if len(batch) > 1 else "")
            failure: HistoryError | None = None
            try:
                self.history.write_patiently(doing, jobs, patience=patience)
            except HistoryError as exc:
                failure = exc
            except Exception as exc:  # a bug in a job must not kill the thread silently
                failure = HistoryError(f"run history {self.history.path} could not record "
                                       f"what happened ({doing}): {exc!r}")
            with self._changed:
                if failure is not None:
                    self.error = self.error or failure
                    self.lost += len(batch)
                self._writing = False
                self._changed.notify_all()


def _grouped(writes: Sequence[Write]) -> list[WriteJob]:
    """The writes of a transaction as jobs, in order, each run of ``Statement``s between two
    other jobs turned into one ``executemany`` per SQL (in the order each SQL first came)."""
    jobs: list[WriteJob] = []
    statements: dict[str, list[Params]] = {}

    def run_statements() -> None:
        for sql, params in statements.items():
            jobs.append(partial(_execute_many, sql=sql, params=params))
        statements.clear()

    for write in writes:
        if callable(write):
            run_statements()
            jobs.append(write)
            continue
        for statement in write:
            params = statement.params
            statements.setdefault(statement.sql, []).append(
                params() if callable(params) else params)
    run_statements()
    return jobs


def _execute_many(conn: sqlite3.Connection, sql: str,
                  params: list[Params]) -> None:
    conn.executemany(sql, params)


__all__ = ["MOST_QUEUED", "PATIENCE", "HistoryWriter", "Statement"]
