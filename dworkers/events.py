"""What the engine reports as a run goes: the events it sends to its ``on_event`` callback.

The engine emits events and never prints; the view, the output writers, the history and the
tracer each consume the same events. What runs produce (step, run and row results) lives in
``dworkers.results``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dworkers.results import DatasetResult, RowResult, RunResult, StepResult


@dataclass(frozen=True, slots=True)
class StepInfo:
    step_id: str
    name: str
    role: str
    model: str
    depends_on: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RunStarted:
    run_id: str
    plan: str
    tenant: str
    steps: tuple[StepInfo, ...]
    started_at: float  # monotonic
    dataset: bool = False  # a dataset run: row events follow, and DatasetFinished ends it


@dataclass(frozen=True, slots=True)
class StepStarted:
    step_id: str
    attempt: int
    model: str
    at: float = 0.0  # monotonic
    messages: tuple[dict[str, str], ...] = ()  # the rendered prompt (first attempt only)
    row: str | None = None  # the row's key in a dataset run


@dataclass(frozen=True, slots=True)
class StepProgress:
    step_id: str
    tokens: int  # completion tokens received so far in this attempt
    text: str  # the streamed text so far (tail only, for previews)
    row: str | None = None


@dataclass(frozen=True, slots=True)
class StepRetrying:
    step_id: str
    attempt: int  # the attempt that failed
    reason: str
    wait_seconds: float
    row: str | None = None


@dataclass(frozen=True, slots=True)
class StepFinished:
    result: StepResult
    at: float = 0.0  # monotonic
    row: str | None = None


@dataclass(frozen=True, slots=True)
class RunFinished:
    result: RunResult
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class RowStarted:
    row: str  # the row's key
    line: int | None = None
    at: float = 0.0  # monotonic


@dataclass(frozen=True, slots=True)
class RowFinished:
    """Every row ends with one, including rows that never started (skipped, cancelled)."""

    result: RowResult
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class RateLimits:
    """The limits a model's calls are now paced to (per minute; ``None``: not known)."""

    model: str
    rpm: float | None
    tpm: float | None
    source: str  # "tenant", "headers" or "429"
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class DatasetFinished:
    result: DatasetResult
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class ExecutorNotice:
    """What the executor is doing that no row shows (Ray starting its workers, its coordinator
    lost). A progress view shows ``text`` until the next notice; an empty ``text`` clears it."""

    text: str
    at: float = 0.0  # monotonic


@dataclass(frozen=True, slots=True)
class AttemptFinished:
    """One call to a model came back (answered or failed): what a trace's ``chat`` span shows.

    ``started_at`` is when the call was sent (after any wait at the rate gate), ``at`` when it
    ended, both monotonic. Tokens and cost are the attempt's own (a step's result adds up all
    its attempts); ``cost_usd`` is ``None`` when it cannot be known. ``error_type`` is the
    failure's class name (``RateLimitError``, ``ProviderTimeoutError``...) and ``error`` its
    message, already redacted like every provider error; both ``None`` for an answer.
    ``endpoint`` is ``scheme://host:port`` of where the call went, never a path or password.
    ``answer`` is the text received (empty for a failure)."""

    step_id: str
    attempt: int
    request_model: str
    response_model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None
    cost_usd: float | None = 0.0
    estimated: bool = False
    error_type: str | None = None
    error: str | None = None
    status_code: int | None = None
    endpoint: str | None = None
    answer: str = ""
    started_at: float = 0.0  # monotonic
    at: float = 0.0  # monotonic
    row: str | None = None


Event = (RunStarted | StepStarted | StepProgress | StepRetrying | StepFinished | RunFinished
         | RowStarted | RowFinished | RateLimits | DatasetFinished | ExecutorNotice
         | AttemptFinished)


@dataclass
class EventLog:
    """An ``on_event`` callback that keeps every event (handy in tests and scripts)."""

    events: list[Event] = field(default_factory=list)

    def __call__(self, event: Event) -> None:
        self.events.append(event)
