"""Dataset runs in the history: a run's rows, and each row's steps, in the ``History`` file.

``DatasetRecorder`` records a dataset run as it goes: every row up front (``pending``), a paid
step the moment it succeeds, a row with all its steps when it finishes, the totals at the end —
all but the rows up front on a ``HistoryWriter``'s thread. ``DatasetHistory`` answers the queries
(``show RUN [KEY]``, the counts ``runs`` shows); ``resume_rows`` streams the rows back with the
step results a resume may reuse; ``DatasetStepCache`` answers identical row-steps from any earlier
dataset or single run.

A row's steps are stored with the same step-result columns as a single run's steps
(``records.ROW_STEP_COLUMNS``), the messages digest included, so a resume reuses an answer
whatever endpoint or model gave it, as a single run's does. Rendered prompts are not kept per
row-step (at 10,000 rows they would dwarf the answers): the digest says what was asked.

The rows go in before the first call, in batches; the run says ``rows_complete`` only once the
last one is in, so a run killed while its rows were recorded is refused on resume rather than
finished over some of its rows.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import suppress
from functools import partial
from typing import Any

from dworkers.errors import DworkersError, HistoryError, NotFoundError
from dworkers.events import DatasetFinished, Event, RowFinished, RunStarted, StepFinished
from dworkers.history import resume
from dworkers.history.cache import HistoryCache
from dworkers.history.records import (
    ROW_COLUMNS,
    ROW_STEP_COLUMNS,
    STATUS_AS_READ,
    STEP_RESULT_COLUMNS,
    RowRecord,
    StepRecord,
    row_record,
    row_step_row,
    step_record,
    stored_status,
)
from dworkers.history.storage import History, WriteJob
from dworkers.history.writer import PATIENCE, HistoryWriter, Statement
from dworkers.plans.base import BasePlan
from dworkers.results import (
    GATE_STATUSES,
    MOCK_MODEL,
    DatasetResult,
    Row,
    RowResult,
    RowStatus,
    StepResult,
)

ROW_STATUSES = ("pending", "running", *(s.value for s in RowStatus))
BATCH = 500  # rows read or written per statement

_ROWS = ", ".join(ROW_COLUMNS)
_ROW_STEPS = ", ".join(ROW_STEP_COLUMNS)
_ROW_STEP_UPSERT = (
    f"INSERT INTO row_steps ({_ROW_STEPS}) "
    f"VALUES ({', '.join(':' + c for c in ROW_STEP_COLUMNS)}) "
    "ON CONFLICT (run_id, row, step_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in ("position", *STEP_RESULT_COLUMNS)
                if c != "step_id"))


class IncompleteRowsError(DworkersError):
    """A dataset run whose rows on record are not every row of its data file: the recording
    was cut off (the process was killed), or a key came twice."""


def _put_rows(conn: sqlite3.Connection, run_id: str, batch: Sequence[tuple[Any, ...]]) -> None:
    """Insert a batch of ``pending`` rows; a key the run already has is refused by name (a row
    dropped here would never run, nor be missed)."""
    inserted = conn.executemany(
        "INSERT INTO rows (run_id, key, number, line, status, inputs, extra) "
        "VALUES (?, ?, ?, ?, 'pending', ?, ?) ON CONFLICT DO NOTHING", batch).rowcount
    if inserted == len(batch):
        return
    for _, key, number, line, *_ in batch:
        first = conn.execute("SELECT number, line FROM rows WHERE run_id = ? AND key = ?",
                             (run_id, key)).fetchone()
        if first is not None and first[0] != number:
            where = f"line {line}" if line is not None else f"row {number}"
            raise IncompleteRowsError(
                f"{where} repeats the key {key!r} of an earlier row (line {first[1]}) — "
                "every row needs a key of its own: fix the data file, or pick another "
                "--key column")


def _row_step(run_id: str, row: str, position: int, result: StepResult, *,
              lazily: bool = False) -> Statement:
    """The statement that records a row's step; ``lazily``: its parameters are made when it
    is written (a step whose row finishes meanwhile is written with the row, and never made)."""
    params = partial(row_step_row, run_id, row, position, result)
    return Statement(_ROW_STEP_UPSERT, params if lazily else params())


def _finished_row(run_id: str, result: RowResult,
                  positions: Mapping[str, int]) -> list[Statement]:
    """A finished row and all its steps."""
    return [
        *(_row_step(run_id, result.key, positions.get(sid, n), step)
          for n, (sid, step) in enumerate(result.outputs.items())),
        Statement(
            "UPDATE rows SET status = ?, error = ?, duration_ms = ?, prompt_tokens = ?, "
            "completion_tokens = ?, cost_usd = ?, cost_known = ?, estimated = ?, "
            "truncated = ?, started_at = ?, finished_at = ?, inputs = ? "
            "WHERE run_id = ? AND key = ?",
            (stored_status(result.status.value), result.error, result.duration_ms,
             result.prompt_tokens,
             result.completion_tokens, result.cost_usd, int(result.cost_known),
             int(result.estimated), int(any(s.truncated for s in result.outputs.values())),
             result.started_at, result.finished_at or time.time(),
             json.dumps(result.inputs), run_id, result.key)),
    ]


def _dataset_result(result: DatasetResult, cost_known: bool) -> Statement:
    status = ("interrupted" if result.interrupted  # waiting: "failed", read back as waiting
              else "succeeded" if result.success else "failed")
    return Statement(
        "UPDATE runs SET status = ?, finished_at = ?, duration_ms = ?, prompt_tokens = ?,"
        " completion_tokens = ?, cost_usd = ?, cost_known = ? WHERE run_id = ?",
        (status, time.time(), result.total_duration_ms, result.prompt_tokens,
         result.completion_tokens, result.cost_usd, int(cost_known), result.run_id))


class DatasetHistory:
    """The rows of dataset runs, in ``history``'s database (its connection and lock)."""

    def __init__(self, history: History) -> None:
        self.history = history

    # --- writes -----------------------------------------------------------------------------

    def start_run(self, event: RunStarted, *, inputs: Mapping[str, str],
                  resumed_from: str | None, options: Mapping[str, Any],
                  rows: Iterable[Row], expected: int | None = None,
                  patience: float = PATIENCE) -> int:
        """Record a new dataset run and every one of its rows (``pending``), in batches, each
        waiting as long as ``patience`` for another process's lock; returns the number of
        rows. The run says its rows are complete only once the last is in. ``expected``: how
        many rows were checked (the data file changing in between is refused). The steps of
        the plan are not rows of ``steps``: a dataset run's steps live per row. Raises
        ``HistoryError`` or ``IncompleteRowsError`` (nothing has been spent)."""
        run_id = event.run_id
        write = partial(self.history.write_patiently, patience=patience)
        write("recording a new dataset run", [partial(
            History.put_run, run_id=run_id, plan=event.plan, tenant=event.tenant,
            inputs=inputs, steps=(), started_at=time.time(), resumed_from=resumed_from,
            options=options, rows_complete=False)])
        count = 0
        batch: list[tuple[Any, ...]] = []
        try:
            for row in rows:
                count += 1
                batch.append((run_id, row.key, count, row.line,
                              json.dumps(dict(row.inputs)), json.dumps(dict(row.extra))))
                if len(batch) >= BATCH:
                    write("recording the dataset's rows", [partial(_put_rows, run_id=run_id,
                                                                   batch=batch)])
                    batch = []
            if expected is not None and count != expected:
                raise IncompleteRowsError(
                    f"the data file changed while its rows were recorded: {expected:,} rows "
                    f"were checked, {count:,} read afterwards — run it again once the file "
                    "stays put")
            jobs: list[WriteJob] = ([partial(_put_rows, run_id=run_id, batch=batch)]
                                    if batch else [])
            jobs.append(lambda conn: conn.execute(
                "UPDATE runs SET rows_complete = 1 WHERE run_id = ?", (run_id,)))
            write("recording the dataset's rows", jobs)
        except IncompleteRowsError:
            # Refused before anything ran: the run is not kept (its rows go with it).
            with suppress(HistoryError):
                write("forgetting a refused run", [lambda conn: conn.execute(
                    "DELETE FROM runs WHERE run_id = ?", (run_id,))])
            raise
        return count

    # --- queries ----------------------------------------------------------------------------

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        return self.history._read(sql, params)

    def is_dataset(self, run_id: str) -> bool:
        return bool(self._read("SELECT 1 FROM rows WHERE run_id = ? LIMIT 1", (run_id,)))

    def counts(self, run_id: str) -> dict[str, int]:
        """Rows by status (``pending`` rows never finished), in a fixed order."""
        found = {str(r[0]): int(r[1]) for r in self._read(
            f"SELECT {STATUS_AS_READ} AS read, count(*) FROM rows WHERE run_id = ? "
            "GROUP BY read", (run_id,))}
        gates = {s.value for s in GATE_STATUSES}  # shown only when some row has one
        return {status: found.get(status, 0) for status in ROW_STATUSES
                if status != "running" and (status not in gates or found.get(status))}

    def not_succeeded(self, run_id: str, limit: int = 50) -> list[RowRecord]:
        """The first rows (in dataset order) that did not succeed."""
        return [row_record(r) for r in self._read(
            f"SELECT {_ROWS} FROM rows WHERE run_id = ? AND status != 'succeeded' "
            "ORDER BY number LIMIT ?", (run_id, limit))]

    def row(self, run_id: str, key: str) -> RowRecord:
        """One row by key. Raises ``NotFoundError`` with the closest keys."""
        found = self._read(f"SELECT {_ROWS} FROM rows WHERE run_id = ? AND key = ?",
                           (run_id, key))
        if found:
            return row_record(found[0])
        near = [str(r[0]) for r in self._read(
            "SELECT key FROM rows WHERE run_id = ? AND key >= ? ORDER BY key LIMIT 20",
            (run_id, key[:1]))]
        raise NotFoundError("row", key, near, f"'dworkers show {run_id}' lists the rows that "
                            "did not succeed; results.jsonl in the run's folder has every key")

    def steps(self, run_id: str, key: str) -> list[StepRecord]:
        return [step_record(r) for r in self._read(
            f"SELECT {_ROW_STEPS} FROM row_steps WHERE run_id = ? AND row = ? "
            "ORDER BY position", (run_id, key))]

    def rows(self, run_id: str) -> Iterator[tuple[RowRecord, list[StepRecord]]]:
        """Every row in dataset order with its steps, read ``BATCH`` rows at a time. A step
        this run has no record of is the latest record of it in the runs it resumed (a resume
        killed before a row ran still holds what the run before it answered)."""
        rank = {run: n for n, run in enumerate(self.history.resume_chain(run_id))}
        runs = ", ".join("?" * len(rank))
        after = 0
        while True:
            batch = [row_record(r) for r in self._read(
                f"SELECT {_ROWS} FROM rows WHERE run_id = ? AND number > ? ORDER BY number "
                "LIMIT ?", (run_id, after, BATCH))]
            if not batch:
                return
            latest: dict[tuple[str, str], sqlite3.Row] = {}
            for r in self._read(
                    f"SELECT {_ROW_STEPS} FROM row_steps WHERE run_id IN ({runs}) AND "
                    "row IN (SELECT key FROM rows WHERE run_id = ? AND number > ? "
                    "AND number <= ?)", (*rank, run_id, after, batch[-1].number)):
                known = latest.get((r["row"], r["step_id"]))
                if known is None or rank[r["run_id"]] < rank[known["run_id"]]:
                    latest[r["row"], r["step_id"]] = r
            steps: dict[str, list[StepRecord]] = {}
            for r in sorted(latest.values(), key=lambda r: r["position"]):
                steps.setdefault(r["row"], []).append(step_record(r))
            for record in batch:
                yield record, steps.get(record.key, [])
            after = batch[-1].number

    def check_complete(self, run_id: str) -> None:
        """Raise ``IncompleteRowsError`` if the run was stopped while its rows were recorded
        (a resume would finish it over fewer rows than its file held). Nothing of it had run:
        it is to be started again (or, for a resume's run, the run it resumed resumed)."""
        found = self._read("SELECT rows_complete, resumed_from, plan, options FROM runs "
                           "WHERE run_id = ?", (run_id,))
        if not found or found[0]["rows_complete"]:
            return
        recorded = sum(self.counts(run_id).values())
        resumed_from, plan = found[0]["resumed_from"], found[0]["plan"]
        if resumed_from:
            again = f"resume the run it resumed instead: dworkers run --resume {resumed_from}"
        else:
            try:
                data = json.loads(found[0]["options"] or "{}").get("data") or {}
            except (ValueError, AttributeError):
                data = {}
            source = data.get("file") if isinstance(data, dict) else None
            again = (f"start it again: dworkers run {plan} --data {source or 'FILE'}")
        raise IncompleteRowsError(
            f"run {run_id} was stopped while its rows were being recorded ({recorded:,} on "
            f"record, none of them run) — resuming it would skip the rest; {again}")

    def resume_rows(self, run_id: str, plan: BasePlan) -> Iterator[Row]:
        """The rows of an earlier dataset run, each with the step results a resume reuses
        (succeeded, unchanged and upstream of nothing that changed: ``resume.decide``).
        Raises ``IncompleteRowsError`` (before the first row) for a run whose rows were not
        all recorded."""
        self.check_complete(run_id)
        for record, steps in self.rows(run_id):
            reuse = resume.reusable(resume.decide(plan, steps), steps) if steps else {}
            yield Row(record.key, record.inputs, record.extra, record.line, reuse)

    def lookup(self, key: str, *, exclude_models: Sequence[str] = ()) -> StepResult | None:
        """The most recent succeeded row-step with this cache key (see ``History.lookup``)."""
        excluded = list(exclude_models)
        found = self._read(
            f"SELECT {_ROW_STEPS} FROM row_steps WHERE cache_key = ? AND "
            "status = 'succeeded' "
            + (f"AND model NOT IN ({', '.join('?' * len(excluded))}) " if excluded else "")
            + "ORDER BY finished_at DESC LIMIT 1", (key, *excluded))
        return step_record(found[0]).to_step_result() if found else None


class DatasetStepCache(HistoryCache):
    """The engine's step cache for dataset runs: an identical step of a single run or of any
    dataset row on record answers without a call."""

    def __init__(self, history: History, *,
                 exclude_models: Sequence[str] = (MOCK_MODEL,)) -> None:
        super().__init__(history, exclude_models=exclude_models)
        self.rows = DatasetHistory(history)

    def lookup(self, key: str) -> StepResult | None:
        hit = super().lookup(key)
        if hit is not None or self.error is not None:
            return hit
        try:
            hit = self.rows.lookup(key, exclude_models=self.exclude_models)
        except HistoryError as exc:
            self.error = exc
            return None
        self.hits += hit is not None
        return hit


class DatasetRecorder:
    """An ``on_event`` callback that records a dataset run as it goes.

    Call ``start`` before the run (it records every row as ``pending``). Then a step that was
    paid for is written the moment it succeeds; a row, with all its steps, when it finishes;
    the run's totals at the end — on a ``HistoryWriter``'s thread, off the event loop, waiting
    on patiently while another process holds the lock. ``DatasetFinished`` waits for the
    writes; ``error`` then says what could not be saved (``lost``: how many writes), for the
    caller to report and fail the run's exit code on.
    """

    def __init__(self, history: History, *, inputs: Mapping[str, str],
                 resumed_from: str | None, options: Mapping[str, Any],
                 patience: float = PATIENCE) -> None:
        self.rows = DatasetHistory(history)
        self.inputs = dict(inputs)
        self.resumed_from = resumed_from
        self.options = dict(options)
        self.patience = patience
        self.run_id: str | None = None
        self.positions: dict[str, int] = {}
        self.cost_known = True  # every finished row's cost was known
        self._writer: HistoryWriter | None = None
        self._final_error: HistoryError | None = None
        self._lost = 0

    @property
    def error(self) -> HistoryError | None:
        """Why some of the run is not in the history; ``None`` when it all is, or so far."""
        return self._writer.error if self._writer is not None else self._final_error

    @property
    def lost(self) -> int:
        """How many writes were given up (rows and steps the history does not have)."""
        return self._writer.lost if self._writer is not None else self._lost

    def start(self, event: RunStarted, rows: Iterable[Row], *,
              expected: int | None = None) -> int:
        """Record the run and its rows; raises ``HistoryError`` or ``IncompleteRowsError``
        (nothing has been spent). ``expected``: how many rows were checked (by default the
        ``rows`` of the options' ``data``)."""
        self.close()
        self.run_id = event.run_id
        self.positions = {s.step_id: i for i, s in enumerate(event.steps)}
        self.cost_known, self._final_error, self._lost = True, None, 0
        if expected is None:
            data = self.options.get("data")
            counted = data.get("rows") if isinstance(data, dict) else None
            expected = counted if isinstance(counted, int) else None
        count = self.rows.start_run(event, inputs=self.inputs, resumed_from=self.resumed_from,
                                    options=self.options, rows=rows, expected=expected,
                                    patience=self.patience)
        self._writer = HistoryWriter(self.rows.history, patience=self.patience)
        return count

    def __call__(self, event: Event) -> None:
        run_id, writer = self.run_id, self._writer
        if run_id is None or writer is None:
            return
        if isinstance(event, StepFinished) and event.row is not None:
            result = event.result
            if result.succeeded and not result.cached:  # paid for: keep it now
                writer.submit("recording a row's step", [_row_step(
                    run_id, event.row, self.positions.get(result.step_id, 0), result,
                    lazily=True)], about=event.row)
        elif isinstance(event, RowFinished):
            self.cost_known = self.cost_known and event.result.cost_known
            writer.submit("recording a row",
                          _finished_row(run_id, event.result, self.positions),
                          about=event.result.key, whole=True)
        elif isinstance(event, DatasetFinished):
            writer.submit("recording a dataset run's result",
                          [_dataset_result(event.result, self.cost_known)])
            self.close()

    def flush(self) -> HistoryError | None:
        """Wait until every event so far is written (or given up); returns ``error``."""
        return self._writer.flush() if self._writer is not None else self._final_error

    def close(self) -> None:
        """Wait for the run's writes and end the writer's thread (``DatasetFinished`` does
        it; a caller whose run ended otherwise may call it; idempotent)."""
        if self._writer is not None:
            self._final_error = self._writer.close()
            self._lost = self._writer.lost
            self._writer = None


__all__ = [
    "DatasetHistory", "DatasetRecorder", "DatasetStepCache", "IncompleteRowsError", "RowRecord",
]
