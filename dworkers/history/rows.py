"""Dataset runs in the history: a run's rows and each row's steps, recorded as they finish.

A dataset run is one run (``runs``, with ``options["data"]`` saying where its rows came from).
Its rows are all recorded ``pending`` before the first call (``RowHistory.add_rows``), so a
resume needs nothing but the history; ``DatasetRecorder`` then records each paid step the moment
it succeeds (a ``kill -9`` loses at most the calls in flight) and each row when it finishes.
``RowHistory.resume_rows`` streams the rows back with the step results a resume may reuse, and
``RowStepCache`` answers identical row-steps from any earlier dataset or single run.

Rendered prompts are not kept per row-step (at 10,000 rows they would dwarf the answers); the
cache key identifies what was asked.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from dworkers.errors import HistoryError, NotFoundError
from dworkers.events import DatasetFinished, Event, RowFinished, RunStarted, StepFinished
from dworkers.history import resume
from dworkers.history.cache import HistoryCache
from dworkers.history.records import StepRecord
from dworkers.history.storage import History
from dworkers.plans.base import BasePlan
from dworkers.results import MOCK_MODEL, DatasetResult, Row, RowResult, RowStatus, StepResult

ROW_STATUSES = ("pending", "running", *(s.value for s in RowStatus))
BATCH = 500  # rows read or written per statement

_ROW_COLUMNS = ("run_id", "key", "number", "line", "status", "inputs", "extra", "error",
                "duration_ms", "prompt_tokens", "completion_tokens", "cost_usd", "started_at",
                "finished_at")
_STEP_RESULT_COLUMNS = ("step_id", "status", "model", "output", "error", "attempts",
                        "duration_ms", "prompt_tokens", "completion_tokens", "cost_usd",
                        "cached", "cache_key", "fingerprint", "started_at", "finished_at")
_ROW_STEP_COLUMNS = ("run_id", "row", "position", *_STEP_RESULT_COLUMNS)
_ROW_STEP_UPSERT = (
    f"INSERT INTO row_steps ({', '.join(_ROW_STEP_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _ROW_STEP_COLUMNS)}) "
    "ON CONFLICT (run_id, row, step_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _STEP_RESULT_COLUMNS[1:]))


@dataclass(frozen=True, slots=True)
class RowRecord:
    """One row of a recorded dataset run. ``status`` is a ``RowStatus`` value, or ``pending``
    for a row the run never finished (never started, or running when the process died)."""

    run_id: str
    key: str
    number: int
    line: int | None
    status: str
    inputs: dict[str, str] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    duration_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == RowStatus.SUCCEEDED.value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _row_record(row: sqlite3.Row) -> RowRecord:
    values = {name: row[name] for name in _ROW_COLUMNS}
    for name in ("inputs", "extra"):
        try:
            values[name] = json.loads(values[name] or "{}")
        except ValueError:
            values[name] = {}
    return RowRecord(**values)


def _step_record(row: sqlite3.Row) -> StepRecord:
    """A row-step as a ``StepRecord`` (what resume planning and ``show`` read)."""
    return StepRecord(
        run_id=row["run_id"], step_id=row["step_id"], position=row["position"], name="",
        role="", depends_on=[], status=row["status"], model=row["model"], messages=None,
        output=row["output"], error=row["error"], attempts=row["attempts"],
        duration_ms=row["duration_ms"], prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"], cost_usd=row["cost_usd"],
        cached=bool(row["cached"]), cache_key=row["cache_key"], fingerprint=row["fingerprint"],
        started_at=row["started_at"], finished_at=row["finished_at"])


def _step_values(run_id: str, row: str, position: int, result: StepResult) -> dict[str, Any]:
    values = {name: getattr(result, name) for name in _STEP_RESULT_COLUMNS}
    values.update(run_id=run_id, row=row, position=position, status=result.status.value,
                  cached=int(result.cached))
    return values


class RowHistory:
    """The rows of dataset runs, in ``history``'s database (its connection and lock)."""

    def __init__(self, history: History) -> None:
        self.history = history

    # --- writes -----------------------------------------------------------------------------

    def start_run(self, event: RunStarted, *, inputs: Mapping[str, str],
                  resumed_from: str | None, options: Mapping[str, Any],
                  rows: Iterable[Row]) -> int:
        """Record a new dataset run and every one of its rows (``pending``), in batches;
        returns the number of rows. The steps of the plan are not rows of ``steps``: a dataset
        run's steps live per row."""
        self.history.start_run(event.run_id, event.plan, event.tenant, inputs=inputs, steps=(),
                               started_at=time.time(), resumed_from=resumed_from,
                               options=options)
        count = 0
        batch: list[tuple[Any, ...]] = []
        for row in rows:
            count += 1
            batch.append((event.run_id, row.key, count, row.line,
                          json.dumps(dict(row.inputs)), json.dumps(dict(row.extra))))
            if len(batch) >= BATCH:
                self._add(batch)
                batch = []
        if batch:
            self._add(batch)
        return count

    def _add(self, batch: list[tuple[Any, ...]]) -> None:
        with self.history._write("recording the dataset's rows") as conn:
            conn.executemany(
                "INSERT INTO rows (run_id, key, number, line, status, inputs, extra) "
                "VALUES (?, ?, ?, ?, 'pending', ?, ?) ON CONFLICT DO NOTHING", batch)

    def finish_step(self, run_id: str, row: str, position: int, result: StepResult) -> None:
        with self.history._write("recording a row's step") as conn:
            conn.execute(_ROW_STEP_UPSERT, _step_values(run_id, row, position, result))

    def finish_row(self, run_id: str, result: RowResult, positions: Mapping[str, int]) -> None:
        """Record a finished row and all its steps, in one transaction."""
        with self.history._write("recording a row") as conn:
            conn.executemany(_ROW_STEP_UPSERT, [
                _step_values(run_id, result.key, positions.get(sid, n), step)
                for n, (sid, step) in enumerate(result.outputs.items())])
            conn.execute(
                "UPDATE rows SET status = ?, error = ?, duration_ms = ?, prompt_tokens = ?, "
                "completion_tokens = ?, cost_usd = ?, started_at = ?, finished_at = ?, "
                "inputs = ? WHERE run_id = ? AND key = ?",
                (result.status.value, result.error, result.duration_ms, result.prompt_tokens,
                 result.completion_tokens, result.cost_usd, result.started_at,
                 result.finished_at or time.time(), json.dumps(result.inputs), run_id,
                 result.key))

    def finish_run(self, result: DatasetResult) -> None:
        status = ("interrupted" if result.interrupted
                  else "succeeded" if result.success else "failed")
        with self.history._write("recording a dataset run's result") as conn:
            conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, duration_ms = ?, prompt_tokens = ?,"
                " completion_tokens = ?, cost_usd = ? WHERE run_id = ?",
                (status, time.time(), result.total_duration_ms, result.prompt_tokens,
                 result.completion_tokens, result.cost_usd, result.run_id))

    # --- queries ----------------------------------------------------------------------------

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        return self.history._read(sql, params)

    def is_dataset(self, run_id: str) -> bool:
        return bool(self._read("SELECT 1 FROM rows WHERE run_id = ? LIMIT 1", (run_id,)))

    def counts(self, run_id: str) -> dict[str, int]:
        """Rows by status (``pending`` rows never finished), in a fixed order."""
        found = {str(r[0]): int(r[1]) for r in self._read(
            "SELECT status, count(*) FROM rows WHERE run_id = ? GROUP BY status", (run_id,))}
        return {status: found.get(status, 0) for status in ROW_STATUSES if status != "running"}

    def not_succeeded(self, run_id: str, limit: int = 50) -> list[RowRecord]:
        """The first rows (in dataset order) that did not succeed."""
        columns = ", ".join(_ROW_COLUMNS)
        return [_row_record(r) for r in self._read(
            f"SELECT {columns} FROM rows WHERE run_id = ? AND status != 'succeeded' "
            "ORDER BY number LIMIT ?", (run_id, limit))]

    def row(self, run_id: str, key: str) -> RowRecord:
        """One row by key. Raises ``NotFoundError`` with the closest keys."""
        columns = ", ".join(_ROW_COLUMNS)
        found = self._read(f"SELECT {columns} FROM rows WHERE run_id = ? AND key = ?",
                           (run_id, key))
        if found:
            return _row_record(found[0])
        near = [str(r[0]) for r in self._read(
            "SELECT key FROM rows WHERE run_id = ? AND key >= ? ORDER BY key LIMIT 20",
            (run_id, key[:1]))]
        raise NotFoundError("row", key, near, f"'dworkers show {run_id}' lists the rows that "
                            "did not succeed; results.jsonl in the run's folder has every key")

    def steps(self, run_id: str, key: str) -> list[StepRecord]:
        return [_step_record(r) for r in self._read(
            f"SELECT {', '.join(_ROW_STEP_COLUMNS)} FROM row_steps WHERE run_id = ? AND row = ? "
            "ORDER BY position", (run_id, key))]

    def rows(self, run_id: str) -> Iterator[tuple[RowRecord, list[StepRecord]]]:
        """Every row in dataset order with its steps, read ``BATCH`` rows at a time."""
        columns = ", ".join(_ROW_COLUMNS)
        after = 0
        while True:
            batch = [_row_record(r) for r in self._read(
                f"SELECT {columns} FROM rows WHERE run_id = ? AND number > ? ORDER BY number "
                "LIMIT ?", (run_id, after, BATCH))]
            if not batch:
                return
            steps: dict[str, list[StepRecord]] = {}
            for r in self._read(
                    f"SELECT {', '.join(_ROW_STEP_COLUMNS)} FROM row_steps WHERE run_id = ? AND "
                    "row IN (SELECT key FROM rows WHERE run_id = ? AND number > ? "
                    "AND number <= ?) ORDER BY position",
                    (run_id, run_id, after, batch[-1].number)):
                steps.setdefault(r["row"], []).append(_step_record(r))
            for record in batch:
                yield record, steps.get(record.key, [])
            after = batch[-1].number

    def resume_rows(self, run_id: str, plan: BasePlan) -> Iterator[Row]:
        """The rows of an earlier dataset run, each with the step results a resume reuses
        (succeeded, unchanged and upstream of nothing that changed: ``resume.decide``)."""
        for record, steps in self.rows(run_id):
            reuse = resume.reusable(resume.decide(plan, steps), steps) if steps else {}
            yield Row(record.key, record.inputs, record.extra, record.line, reuse)

    def lookup(self, key: str, *, exclude_models: Sequence[str] = ()) -> StepResult | None:
        """The most recent succeeded row-step with this cache key (see ``History.lookup``)."""
        excluded = list(exclude_models)
        found = self._read(
            f"SELECT {', '.join(_ROW_STEP_COLUMNS)} FROM row_steps WHERE cache_key = ? AND "
            "status = 'succeeded' "
            + (f"AND model NOT IN ({', '.join('?' * len(excluded))}) " if excluded else "")
            + "ORDER BY finished_at DESC LIMIT 1", (key, *excluded))
        return _step_record(found[0]).to_step_result() if found else None


class RowStepCache(HistoryCache):
    """The engine's step cache for dataset runs: an identical step of a single run or of any
    dataset row on record answers without a call."""

    def __init__(self, history: History, *,
                 exclude_models: Sequence[str] = (MOCK_MODEL,)) -> None:
        super().__init__(history, exclude_models=exclude_models)
        self.rows = RowHistory(history)

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
    the run's totals at the end. A write that fails stops the recording (the run goes on):
    ``error`` says what happened, for the caller to report.
    """

    def __init__(self, history: History, *, inputs: Mapping[str, str],
                 resumed_from: str | None, options: Mapping[str, Any]) -> None:
        self.rows = RowHistory(history)
        self.inputs = dict(inputs)
        self.resumed_from = resumed_from
        self.options = dict(options)
        self.run_id: str | None = None
        self.positions: dict[str, int] = {}
        self.error: HistoryError | None = None

    def start(self, event: RunStarted, rows: Iterable[Row]) -> int:
        """Record the run and its rows; raises ``HistoryError`` (nothing has been spent)."""
        self.run_id = event.run_id
        self.positions = {s.step_id: i for i, s in enumerate(event.steps)}
        return self.rows.start_run(event, inputs=self.inputs, resumed_from=self.resumed_from,
                                   options=self.options, rows=rows)

    def __call__(self, event: Event) -> None:
        run_id = self.run_id
        if run_id is None or self.error is not None:
            return
        try:
            if isinstance(event, StepFinished) and event.row is not None:
                result = event.result
                if result.succeeded and not result.cached:  # paid for: keep it now
                    self.rows.finish_step(run_id, event.row,
                                          self.positions.get(result.step_id, 0), result)
            elif isinstance(event, RowFinished):
                self.rows.finish_row(run_id, event.result, self.positions)
            elif isinstance(event, DatasetFinished):
                self.rows.finish_run(event.result)
        except HistoryError as exc:
            self.error = exc


__all__ = ["DatasetRecorder", "RowHistory", "RowRecord", "RowStepCache"]
