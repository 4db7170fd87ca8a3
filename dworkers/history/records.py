"""What the history stores about a run and a step, and the table columns derived from it.

``RunRecord`` and ``StepRecord`` are the rows as Python sees them. The ``runs`` and ``steps``
columns are derived from these dataclasses here, once: ``RUN_COLUMNS``/``STEP_COLUMNS`` name
them, ``run_record``/``step_record`` read a row, and ``step_row`` turns an engine result into one.
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

from dworkers.events import StepInfo
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
    cost_known: bool = True
    estimated: bool = False
    truncated: bool = False

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
        asked = digest_messages(self.messages) if self.messages else None
        return StepResult(**{**shared, "status": status, "error": error,
                             "messages_digest": asked})



# A run row also says which process owns it (to tell a live run from a dead one); ``counts`` is
# computed from the steps, not stored.
RUN_COLUMNS: tuple[str, ...] = (
    *(f.name for f in fields(RunRecord) if f.name != "counts"), "pid", "host")
STEP_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(StepRecord))
# Where a step sits in its plan is written when the run starts; the rest as it runs.
STEP_PLACE = ("run_id", "step_id", "position", "name", "role", "depends_on")
_JSON_COLUMNS: dict[str, Any] = {"inputs": {}, "options": {}, "depends_on": [], "messages": None}
# The fields a step's row shares with the engine's ``StepResult`` (all but status and error are
# copied as they are).
_SHARED_WITH_RESULT = tuple(name for name in StepResult.model_fields
                            if name in STEP_COLUMNS and name not in ("status", "error"))


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


def step_record(row: sqlite3.Row) -> StepRecord:
    """A ``steps`` row (selected with ``STEP_COLUMNS``) as a record."""
    values = {name: decode(name, row[name]) for name in STEP_COLUMNS}
    for flag in ("cached", "cost_known", "estimated", "truncated"):
        values[flag] = bool(values[flag])
    return StepRecord(**values)


def run_record(row: sqlite3.Row, status: str, counts: dict[str, int]) -> RunRecord:
    """A ``runs`` row as a record, with its status as decided by the caller (a dead process's
    run reads as interrupted) and its step counts."""
    values = {f.name: decode(f.name, row[f.name]) for f in fields(RunRecord)
              if f.name not in ("status", "counts")}
    values["cost_known"] = bool(values["cost_known"])
    return RunRecord(**values, status=RunStatus(status), counts=counts)


def new_run_row(run_id: str, plan: str, tenant: str, *, inputs: Mapping[str, str],
                started_at: float | None, resumed_from: str | None,
                options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The row of a run that starts now in this process, keyed by ``RUN_COLUMNS``."""
    return {
        "run_id": run_id, "plan": plan, "tenant": tenant, "inputs": json.dumps(dict(inputs)),
        "status": "running", "started_at": started_at if started_at is not None else time.time(),
        "finished_at": None, "duration_ms": None, "prompt_tokens": 0, "completion_tokens": 0,
        "cost_usd": 0.0, "cost_known": 1, "resumed_from": resumed_from,
        "options": json.dumps(dict(options or {})),
        "pid": os.getpid(), "host": socket.gethostname(),
    }


def step_row(run_id: str, result: StepResult, *, position: int, info: StepInfo | None,
             messages: Sequence[Mapping[str, str]] | str | None) -> dict[str, Any]:
    """A step's row from its result, keyed by ``STEP_COLUMNS``. ``messages`` may already be
    JSON text (the original's prompt, copied for a reused step)."""
    shared = {name: getattr(result, name) for name in _SHARED_WITH_RESULT}
    if messages is not None and not isinstance(messages, str):
        messages = json.dumps([dict(m) for m in messages])
    return {
        **shared,
        "run_id": run_id, "step_id": result.step_id, "position": position,
        "name": info.name if info else "", "role": info.role if info else "",
        "depends_on": json.dumps(list(info.depends_on)) if info else "[]",
        "status": result.status.value, "error": result.error, "messages": messages,
        "cached": int(result.cached), "cost_known": int(result.cost_known),
        "estimated": int(result.estimated), "truncated": int(result.truncated),
    }
