"""What the history stores about a run, a step and a dataset row, and the table columns
derived from it.

``RunRecord``, ``StepRecord`` and ``RowRecord`` are the rows as Python sees them. Every table's
columns are derived from these dataclasses here, once: ``RUN_COLUMNS``/``STEP_COLUMNS``/
``ROW_COLUMNS`` name them, ``run_record``/``step_record``/``row_record`` read a row, and
``step_row``/``row_step_row`` turn an engine result into one. A step's outcome is one schema in
both places a step is kept: ``STEP_RESULT_COLUMNS`` (the fields a ``StepRecord`` shares with the
engine's ``StepResult``) are the columns of ``steps`` and of a dataset's ``row_steps`` alike;
``steps`` adds where the step sits in its plan and its rendered prompt, ``row_steps`` the row.
Adding a column means a migration in ``schema`` and a field here; nothing else spells them out.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from dworkers.approvals import REJECTED, WAITING_FOR_APPROVAL
from dworkers.events import StepInfo
from dworkers.history.schema import STORED_STATUS
from dworkers.results import RunStatus, StepResult, StepStatus, digest_messages


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run as recorded. ``status`` is ``running`` while its process lives; a run whose
    process died without finishing (kill -9, power loss) reads as ``interrupted``."""

    run_id: str
    plan: str
    tenant: str
    inputs: dict[str, str]
    status: RunStatus
    started_at: float
    finished_at: float | None
    duration_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    resumed_from: str | None
    cost_known: bool = True  # False: some call's cost could not be known (cost_usd is a floor)
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
        """JSON-ready; an unknown cost is ``null`` (with ``cost_known`` false), never 0."""
        data = _unknown_cost_is_null(asdict(self))
        data["tokens"] = self.tokens
        return data


def _unknown_cost_is_null(data: dict[str, Any]) -> dict[str, Any]:
    """A record's JSON with ``cost_usd`` null when some cost could not be known: what is known
    of it is not what was spent."""
    if not data.get("cost_known", True):
        data["cost_usd"] = None
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
    cost_known: bool = True
    estimated: bool = False
    truncated: bool = False
    # What the step was asked (``digest_messages``): a resume reuses the answer while the step
    # would be asked the same, whatever model or endpoint answered it.
    messages_digest: str | None = None

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
        shared = {name: getattr(self, name) for name in _SHARED_WITH_RESULT}
        asked = self.messages_digest or (digest_messages(self.messages) if self.messages
                                         else None)  # a step recorded before digests were
        return StepResult(**{**shared, "status": status, "error": error,
                             "messages_digest": asked})


@dataclass(frozen=True, slots=True)
class RowRecord:
    """One row of a recorded dataset run. ``status`` is a ``RowStatus`` value, or ``pending``
    for a row the run never finished (never started, or running when the process died).
    ``cost_known``, ``estimated`` and ``truncated`` sum up its steps as a run's do."""

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
    cost_known: bool = True
    estimated: bool = False
    truncated: bool = False

    @property
    def succeeded(self) -> bool:
        return self.status == StepStatus.SUCCEEDED.value

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; an unknown cost is ``null``, never 0."""
        return _unknown_cost_is_null(asdict(self))


# A run row also says which process owns it (to tell a live run from a dead one), and, for a
# dataset run, whether all its rows are on record (``rows_complete``: 0 until the last batch is
# in; a resume refuses a run whose rows were cut off); ``counts`` is computed, not stored.
RUN_COLUMNS: tuple[str, ...] = (
    *(f.name for f in fields(RunRecord) if f.name != "counts"), "pid", "host", "rows_complete")
STEP_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(StepRecord))
# A step's outcome: the fields a ``StepRecord`` shares with the engine's ``StepResult``, the
# columns of ``steps`` and ``row_steps`` alike.
STEP_RESULT_COLUMNS: tuple[str, ...] = tuple(name for name in STEP_COLUMNS
                                             if name in StepResult.model_fields)
# What a ``StepResult`` holds that is not a column of its own: the tool calls have their table
# (``history.tools``); a typed step's value is parsed again from its stored output; a step
# skipped by its ``when:`` is stored as skipped with the condition's reason.
NOT_STEP_COLUMNS = frozenset({"tool_calls", "value", "condition_false"})
# Where a step sits in its plan is written when the run starts; the rest as it runs.
STEP_PLACE = ("run_id", "step_id", "position", "name", "role", "depends_on")
# A dataset row's step: its row and place, then its outcome (the plan's shape and the rendered
# prompt are not repeated per row: at 10,000 rows they would dwarf the answers).
ROW_STEP_COLUMNS: tuple[str, ...] = ("run_id", "row", "position", *STEP_RESULT_COLUMNS)
ROW_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(RowRecord))
_JSON_COLUMNS: dict[str, Any] = {"inputs": {}, "extra": {}, "options": {}, "depends_on": [],
                                 "messages": None}
_FLAGS = ("cached", "cost_known", "estimated", "truncated")
# What a row-step leaves out of a ``StepRecord``.
_NOT_PER_ROW: dict[str, Any] = {"name": "", "role": "", "depends_on": [], "messages": None}
# The fields copied as they are between a step's row and a ``StepResult``.
_SHARED_WITH_RESULT = tuple(name for name in STEP_RESULT_COLUMNS
                            if name not in ("status", "error", "messages_digest"))


def decode(column: str, value: Any) -> Any:
    """A stored value as Python sees it: JSON columns parsed (unreadable JSON → the default)."""
    if column not in _JSON_COLUMNS:
        return value
    default = _JSON_COLUMNS[column]
    if value is None:
        return default
    try:
        return json.loads(value)
    except ValueError:
        return default


# A step's (or a row's) status as read: held and rejected ones are told apart by their reason
# (a step id has no spaces nor colons, so no other reason starts this way).
STATUS_AS_READ = (
    f"CASE WHEN status != 'skipped' THEN status WHEN error LIKE '{WAITING_FOR_APPROVAL}%' "
    f"THEN 'waiting' WHEN error LIKE '{REJECTED} by %' OR error LIKE '{REJECTED}:%' "
    "THEN 'rejected' ELSE status END")


def status_as_read(status: str, error: str | None) -> str:
    """A stored step (or row) status as dworkers names it (``STATUS_AS_READ`` in Python)."""
    reason = error or ""
    if status != "skipped":
        return status
    if reason.startswith(WAITING_FOR_APPROVAL):
        return StepStatus.WAITING.value
    if reason.startswith((f"{REJECTED} by ", f"{REJECTED}:")):
        return StepStatus.REJECTED.value
    return status


def stored_status(status: str) -> str:
    """How a status is stored: the tables' CHECKs predate gates (schema.STORED_STATUS)."""
    return STORED_STATUS.get(status, status)


def step_record(row: sqlite3.Row) -> StepRecord:
    """A ``steps`` row (selected with ``STEP_COLUMNS``) or a ``row_steps`` row (selected with
    ``ROW_STEP_COLUMNS``: no plan place nor prompt) as a record."""
    names = set(row.keys())
    values = {name: decode(name, row[name]) if name in names else _NOT_PER_ROW[name]
              for name in STEP_COLUMNS}
    for flag in _FLAGS:
        values[flag] = bool(values[flag])
    values["status"] = status_as_read(values["status"], values["error"])
    return StepRecord(**values)


def row_record(row: sqlite3.Row) -> RowRecord:
    """A ``rows`` row (selected with ``ROW_COLUMNS``) as a record."""
    values = {name: decode(name, row[name]) for name in ROW_COLUMNS}
    for flag in _FLAGS[1:]:
        values[flag] = bool(values[flag])
    values["status"] = status_as_read(values["status"], values["error"])
    return RowRecord(**values)


def run_record(row: sqlite3.Row, status: str, counts: dict[str, int]) -> RunRecord:
    """A ``runs`` row as a record, with its status as decided by the caller (a dead process's
    run reads as interrupted) and its step counts."""
    values = {f.name: decode(f.name, row[f.name]) for f in fields(RunRecord)
              if f.name not in ("status", "counts")}
    values["cost_known"] = bool(values["cost_known"])
    return RunRecord(**values, status=RunStatus(status), counts=counts)


def new_run_row(run_id: str, plan: str, tenant: str, *, inputs: Mapping[str, str],
                started_at: float | None, resumed_from: str | None,
                options: Mapping[str, Any] | None, rows_complete: bool = True) -> dict[str, Any]:
    """The row of a run that starts now in this process, keyed by ``RUN_COLUMNS``; a dataset
    run starts with ``rows_complete`` false, until every row is recorded."""
    return {
        "run_id": run_id, "plan": plan, "tenant": tenant, "inputs": json.dumps(dict(inputs)),
        "status": "running", "started_at": started_at if started_at is not None else time.time(),
        "finished_at": None, "duration_ms": None, "prompt_tokens": 0, "completion_tokens": 0,
        "cost_usd": 0.0, "cost_known": 1, "resumed_from": resumed_from,
        "options": json.dumps(dict(options or {})),
        "pid": os.getpid(), "host": socket.gethostname(), "rows_complete": int(rows_complete),
    }


def step_result_values(result: StepResult) -> dict[str, Any]:
    """A step's outcome as stored, keyed by ``STEP_RESULT_COLUMNS``."""
    values = {name: getattr(result, name) for name in STEP_RESULT_COLUMNS}
    values["status"] = stored_status(result.status.value)
    for flag in _FLAGS:
        values[flag] = int(values[flag])
    return values


def step_row(run_id: str, result: StepResult, *, position: int, info: StepInfo | None,
             messages: Sequence[Mapping[str, str]] | str | None) -> dict[str, Any]:
    """A step's row from its result, keyed by ``STEP_COLUMNS``. ``messages`` may already be
    JSON text (the original's prompt, copied for a reused step)."""
    if messages is not None and not isinstance(messages, str):
        messages = json.dumps([dict(m) for m in messages])
    return {
        **step_result_values(result),
        "run_id": run_id, "position": position,
        "name": info.name if info else "", "role": info.role if info else "",
        "depends_on": json.dumps(list(info.depends_on)) if info else "[]",
        "messages": messages,
    }


def row_step_row(run_id: str, row: str, position: int, result: StepResult) -> dict[str, Any]:
    """A dataset row's step from its result, keyed by ``ROW_STEP_COLUMNS``."""
    return {**step_result_values(result), "run_id": run_id, "row": row, "position": position}
