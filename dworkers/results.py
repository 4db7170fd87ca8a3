"""What runs produce: each step's, run's and dataset row's result, their statuses and totals,
and the rows a dataset run takes. Pure data: no I/O.

The engine builds these; the view, the output writers and the history read them.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, Field

MOCK_MODEL = "mock"  # the model name offline (--mock) answers carry; never served to real runs


class StepStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    WAITING = "waiting"  # held at an approval gate (or downstream of one): not called yet
    REJECTED = "rejected"  # its gate (or one upstream) was rejected: never called


GATE_STATUSES = frozenset({StepStatus.WAITING, StepStatus.REJECTED})


def shown_counts(counts: Mapping[StepStatus, int]) -> dict[str, int]:
    """Counts by status, for files and ``--json``: a gate's statuses only when some step (or
    row) has one, so a plan without gates reads as it always has."""
    return {s.value: n for s, n in counts.items() if n or s not in GATE_STATUSES}


class RunStatus(StrEnum):
    """Where a run stands: ``running`` while its process lives, then how it ended."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    WAITING = "waiting for approval"  # stopped at a gate: `dworkers approve`, then --resume


class ToolCall(BaseModel):
    """One tool call a step made: what was asked and what came of it (never the result's text,
    which is untrusted and may be large: its size and digest)."""

    server: str
    tool: str
    arguments: dict[str, Any] | str  # as the model wrote them (text when not a JSON object)
    started_at: float | None = None  # wall-clock epoch seconds
    duration_ms: float = 0.0
    result_chars: int = 0
    result_digest: str | None = None
    error: str | None = None


class StepResult(BaseModel):
    """The outcome of one step. ``output`` is the worker's deliverable (empty unless succeeded)."""

    step_id: str
    status: StepStatus
    output: str = ""
    error: str | None = None
    attempts: int = 0
    duration_ms: float = 0.0
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0  # what is known of it: see cost_known
    cost_known: bool = True  # False: a call's cost could not be known (a model without a price)
    estimated: bool = False  # tokens (and cost) include estimates for attempts cut off
    truncated: bool = False  # the answer was cut off at the model's token limit
    started_at: float | None = None  # wall-clock epoch seconds
    finished_at: float | None = None
    cached: bool = False  # reused from an earlier run instead of calling the model
    cache_key: str | None = None
    fingerprint: str | None = None  # the step definition's digest, for resume
    tool_calls: list[ToolCall] = Field(default_factory=list)  # MCP tools it called (tools.py)
    # What the step was asked (``digest_messages``), whatever the model or endpoint: a resume
    # reuses the answer only while this stays the same.
    messages_digest: str | None = Field(default=None, exclude=True)
    # A typed step's answer, parsed and checked against its output_schema (``output`` keeps
    # the text); None for an untyped step.
    value: Any = None
    # Skipped because its ``when:`` was false (the reason is in ``error``): not a failure, and
    # the steps that depend on it still run.
    condition_false: bool = False

    @property
    def succeeded(self) -> bool:
        return self.status is StepStatus.SUCCEEDED

    @property
    def settled_well(self) -> bool:
        """Succeeded, or skipped by its own ``when:``: neither fails a run."""
        return self.succeeded or self.condition_false

    @property
    def answer(self) -> Any:
        """What later steps read: the parsed value of a typed step, else the text."""
        return self.value if self.value is not None else self.output

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def digest_messages(messages: Sequence[Mapping[str, str]]) -> str:
    """A digest of a step's rendered messages (what it was asked)."""
    import hashlib  # only runs need it: keep `dworkers list` from loading OpenSSL
    import json

    payload = json.dumps([dict(m) for m in messages], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


class StepTotals:
    """Totals over a result's ``outputs`` (its steps): what a run and a dataset row both report."""

    if TYPE_CHECKING:  # a field of each model that inherits these totals
        outputs: dict[str, StepResult]

    @property
    def prompt_tokens(self) -> int:
        return sum(r.prompt_tokens for r in self.outputs.values())

    @property
    def completion_tokens(self) -> int:
        return sum(r.completion_tokens for r in self.outputs.values())

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost_usd(self) -> float:
        return sum(r.cost_usd for r in self.outputs.values())

    @property
    def cost_known(self) -> bool:
        """False when some call's cost could not be known: ``cost_usd`` is then a lower bound."""
        return all(r.cost_known for r in self.outputs.values())

    @property
    def estimated(self) -> bool:
        return any(r.estimated for r in self.outputs.values())


class RunResult(StepTotals, BaseModel):
    """The outcome of a run: every step's result, in plan order, and the totals."""

    run_id: str
    plan: str
    tenant: str
    inputs: dict[str, str] = Field(default_factory=dict)
    success: bool = False
    interrupted: bool = False
    total_duration_ms: float = 0.0
    started_at: float = 0.0
    outputs: dict[str, StepResult] = Field(default_factory=dict)

    @property
    def status(self) -> RunStatus:
        """How the run ended."""
        if self.interrupted:
            return RunStatus.INTERRUPTED
        if self.waiting and not self.failed:  # a failure is reported first
            return RunStatus.WAITING
        return RunStatus.SUCCEEDED if self.success else RunStatus.FAILED

    def count(self, status: StepStatus) -> int:
        return sum(1 for r in self.outputs.values() if r.status is status)

    @property
    def waiting(self) -> bool:
        """Whether some step waits for approval (the run can be resumed once it is decided)."""
        return any(r.status is StepStatus.WAITING for r in self.outputs.values())

    @property
    def failed(self) -> bool:
        """Whether some step failed, or was cancelled or skipped other than by its own
        ``when:``: the run exits 1 even while another step waits for approval."""
        return any(not r.settled_well and r.status not in GATE_STATUSES
                   for r in self.outputs.values())

    def summary(self) -> dict[str, Any]:
        """Machine-readable result (``--json``, run.json): no prompts, no secrets."""
        data = self.model_dump(mode="json")
        data.update(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost_usd=round(self.cost_usd, 6),
            cost_known=self.cost_known,
            estimated=self.estimated,
            truncated=[r.step_id for r in self.outputs.values() if r.truncated],
            counts=shown_counts({s: self.count(s) for s in StepStatus}),
            status=self.status.value,  # "waiting for approval" while a gate holds it
        )
        return data


class RunSummary(Protocol):
    """What a list of runs shows about each (the history's run records have it)."""

    @property
    def run_id(self) -> str: ...
    @property
    def plan(self) -> str: ...
    @property
    def status(self) -> RunStatus: ...
    @property
    def started_at(self) -> float: ...
    @property
    def duration_ms(self) -> float | None: ...
    @property
    def cost_usd(self) -> float: ...
    @property
    def cost_known(self) -> bool: ...
    @property
    def inputs(self) -> dict[str, str]: ...
    @property
    def counts(self) -> dict[str, int]: ...


RowStatus = StepStatus  # a row ends as its steps do: succeeded, failed, skipped or cancelled

@dataclass(frozen=True, slots=True)
class Row:
    """One run of a plan in a dataset run: the plan's inputs, plus what identifies the row."""

    key: str  # unique within the dataset
    inputs: Mapping[str, str]
    extra: Mapping[str, str] = field(default_factory=dict)  # other columns: kept, not inputs
    line: int | None = None  # the row's line in its data file, 1-based
    # Resume: this row's earlier step results, reused where the step would be asked the same.
    reuse: Mapping[str, StepResult] = field(default_factory=dict)


# What a dataset run takes: rows, or plain mappings of inputs; sync or async, read lazily.
Rows = Iterable[Row | Mapping[str, object]] | AsyncIterable[Row | Mapping[str, object]]


async def each_row(rows: Rows) -> AsyncGenerator[Row, None]:
    """``rows`` as ``Row``s, one at a time; a plain mapping's key is its 1-based number."""
    number = 0
    if isinstance(rows, AsyncIterable):
        async for item in rows:
            number += 1
            yield _as_row(item, number)
    else:
        for item in rows:
            number += 1
            yield _as_row(item, number)


def _as_row(item: Row | Mapping[str, object], number: int) -> Row:
    if isinstance(item, Row):
        return item
    return Row(key=str(number), inputs={str(k): str(v) for k, v in item.items()})


class RowResult(StepTotals, BaseModel):
    """The outcome of one row: every step's result (none if the row never started)."""

    key: str
    status: RowStatus
    inputs: dict[str, str] = Field(default_factory=dict)
    extra: dict[str, str] = Field(default_factory=dict)
    line: int | None = None
    outputs: dict[str, StepResult] = Field(default_factory=dict)
    error: str | None = None
    started_at: float | None = None  # wall-clock epoch seconds
    finished_at: float | None = None
    duration_ms: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.status is RowStatus.SUCCEEDED

    def texts(self) -> dict[str, str]:
        """Each succeeded step's output text, in plan order."""
        return {sid: r.output for sid, r in self.outputs.items() if r.succeeded}

    def answers(self) -> dict[str, Any]:
        """Each succeeded step's answer in plan order: a typed step's parsed object, else
        its text."""
        return {sid: r.answer for sid, r in self.outputs.items() if r.succeeded}

    def record(self) -> dict[str, Any]:
        """The row as one line of ``results.jsonl``."""
        return {
            "key": self.key,
            "status": self.status.value,
            "inputs": self.inputs,
            "extra": self.extra,
            "line": self.line,
            "outputs": self.answers(),
            "tokens": self.total_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "error": self.error,
        }


class DatasetResult(BaseModel):
    """The totals of a dataset run (never its rows: memory stays flat)."""

    run_id: str
    plan: str
    tenant: str
    counts: dict[RowStatus, int] = Field(default_factory=lambda: dict.fromkeys(RowStatus, 0))
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0  # what is known of it: see cost_known
    cost_known: bool = True  # False once some row's cost could not be known (no price)
    calls: int = 0  # calls sent to a model (retries included)
    rate_limited: int = 0  # of those, answered 429
    interrupted: bool = False
    stop_reason: str | None = None  # why rows were left unstarted (max failures, budget)
    started_at: float = 0.0
    total_duration_ms: float = 0.0
    startup_ms: float | None = None  # a cluster's start-up until its first rows came back
    # …and where it went: seconds from its beginning until each part of it was done.
    startup_parts: dict[str, float] | None = None

    @property
    def rows(self) -> int:
        return sum(self.counts.values())

    @property
    def success(self) -> bool:
        done = self.counts[RowStatus.SUCCEEDED] + self.counts[RowStatus.REJECTED]
        return not self.interrupted and done == self.rows  # a rejection is a decision

    @property
    def waiting(self) -> bool:
        """Whether some row waits at an approval gate (the run exits 3 unless a row failed)."""
        return not self.interrupted and self.counts[RowStatus.WAITING] > 0

    @property
    def failed(self) -> bool:
        """Whether some row did not succeed and neither waits at a gate nor was rejected at
        one: the run exits 1 even while other rows wait for approval."""
        return sum(self.counts[s] for s in (RowStatus.SUCCEEDED, *GATE_STATUSES)) < self.rows

    def add(self, row: RowResult) -> None:
        self.counts[row.status] += 1
        self.prompt_tokens += row.prompt_tokens
        self.completion_tokens += row.completion_tokens
        self.cost_usd += row.cost_usd
        self.cost_known = self.cost_known and row.cost_known

    def summary(self) -> dict[str, Any]:
        """Machine-readable totals (``--json``, run.json)."""
        data = self.model_dump(mode="json")
        data.update(rows=self.rows, success=self.success, cost_usd=round(self.cost_usd, 6),
                    counts=shown_counts(self.counts))
        if self.waiting and not self.failed:
            data["status"] = "waiting for approval"
        return data
