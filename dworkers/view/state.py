"""What a run looks like right now, built from the engine's events (no rich, no I/O).

``RunState.apply(event)`` folds each event into a small model that any view can draw: one
``StepState`` per step (phase, attempt, timings, streamed tokens and preview, retry, result) and
the run's totals. ``line_for(state, event)`` is the same story told one line per state change,
for logs and terminals that cannot redraw. Time comes from an injectable monotonic clock so that
tests (and renders) are deterministic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from dworkers import dag
from dworkers.events import (
    Event,
    RunFinished,
    RunStarted,
    StepFinished,
    StepInfo,
    StepProgress,
    StepRetrying,
    StepStarted,
)
from dworkers.results import RunResult, StepResult, StepStatus
from dworkers.text import cells, crop, one_line

Clock = Callable[[], float]

LINE_WIDTH = 160  # ``line_for`` keeps every line at most this long


class Phase(StrEnum):
    WAITING = "waiting"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    CACHED = "cached"
    HELD = "waiting for approval"  # at an approval gate, or below one
    REJECTED = "rejected"

    @property
    def finished(self) -> bool:
        return self not in (Phase.WAITING, Phase.RUNNING, Phase.RETRYING)

    @property
    def ok(self) -> bool:
        """The step's output is available to the steps that depend on it."""
        return self in (Phase.SUCCEEDED, Phase.CACHED)


_FINAL_PHASE = {
    StepStatus.SUCCEEDED: Phase.SUCCEEDED,
    StepStatus.FAILED: Phase.FAILED,
    StepStatus.SKIPPED: Phase.SKIPPED,
    StepStatus.CANCELLED: Phase.CANCELLED,
    StepStatus.WAITING: Phase.HELD,
    StepStatus.REJECTED: Phase.REJECTED,
}


@dataclass
class StepState:
    """One step as it stands. Times are monotonic seconds from the run's clock."""

    step_id: str
    name: str = ""
    role: str = ""
    model: str = ""
    depends_on: tuple[str, ...] = ()
    phase: Phase = Phase.WAITING
    attempt: int = 0  # the current (or last) attempt, 1-based; 0 before the first
    started: float | None = None  # when the first attempt started
    attempt_started: float | None = None
    finished: float | None = None
    tokens: int = 0  # completion tokens streamed so far in the current attempt
    tail: str = ""  # the end of the text streamed so far in the current attempt
    retry_reason: str | None = None  # why the last attempt failed, while retrying
    retry_wait: float = 0.0
    retry_until: float | None = None
    result: StepResult | None = None

    @property
    def preview(self) -> str:
        """The last non-blank line of streamed text, on one line with whitespace collapsed."""
        for line in reversed(self.tail.splitlines()):
            text = one_line(line)
            if text:
                return text
        return ""

    @property
    def reason(self) -> str | None:
        """Why the step failed, was skipped or was cancelled (None otherwise)."""
        if self.result is not None and self.phase in (
            Phase.FAILED, Phase.SKIPPED, Phase.CANCELLED, Phase.HELD, Phase.REJECTED
        ):
            return one_line(self.result.error or "") or None
        return None

    @property
    def duration(self) -> float | None:
        """Seconds the step took, once finished (None if it never ran)."""
        if self.result is not None and self.result.duration_ms:
            return self.result.duration_ms / 1000
        if self.started is not None and self.finished is not None:
            return max(0.0, self.finished - self.started)
        return None

    @property
    def total_tokens(self) -> int:
        """Final prompt + completion tokens once finished, else completion tokens so far."""
        if self.result is not None:
            return self.result.total_tokens
        return self.tokens if self.phase is Phase.RUNNING else 0

    @property
    def cost_usd(self) -> float:
        return self.result.cost_usd if self.result is not None else 0.0

    @property
    def cost(self) -> str:
        """The finished step's cost as shown (unknown and estimated costs say so)."""
        result = self.result
        if result is None:
            return fmt_cost(0.0)
        return fmt_cost(result.cost_usd, result.cost_known, result.estimated)

    def elapsed(self, now: float) -> float | None:
        """Seconds since the first attempt started (the final duration once finished)."""
        if self.phase.finished:
            return self.duration
        if self.started is None:
            return None
        return max(0.0, now - self.started)

    def retry_in(self, now: float) -> float:
        """Seconds left before the next attempt, while retrying."""
        if self.retry_until is None:
            return 0.0
        return max(0.0, self.retry_until - now)


@dataclass
class RunState:
    """The whole run, updated in place by ``apply(event)``.

    ``apply`` is O(1) per event (totals and counts are kept incrementally), so it can be called
    for every streamed token of a 10,000-step plan. An event time (``at``) of 0.0 means "not
    given": the clock's ``now()`` is used instead.
    """

    now: Clock = time.monotonic
    run_id: str = ""
    plan: str = ""
    tenant: str = ""
    steps: dict[str, StepState] = field(default_factory=dict)
    started_at: float | None = None  # monotonic; set by RunStarted
    finished_at: float | None = None
    result: RunResult | None = None
    _counts: dict[Phase, int] = field(default_factory=dict, repr=False)
    _tokens: int = field(default=0, repr=False)  # finished steps' tokens + streaming tokens
    _cost: float = field(default=0.0, repr=False)
    _unknown_cost: int = field(default=0, repr=False)  # finished steps whose cost is unknown
    _order: tuple[dict[str, StepState], list[str]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._counts = dict.fromkeys(Phase, 0)
        for step in self.steps.values():
            self._counts[step.phase] += 1
            self._tokens += step.total_tokens
            self._cost += step.cost_usd

    # --- building ----------------------------------------------------------------------------

    def prepare(self, event: RunStarted) -> None:
        """Know the run's steps before it starts, so a view can draw them at once.

        Unlike ``apply(event)`` this does not start the clock: the engine's own ``RunStarted``
        does.
        """
        self.run_id, self.plan, self.tenant = event.run_id, event.plan, event.tenant
        self._reset(event.steps)

    def apply(self, event: Event) -> None:
        if isinstance(event, StepProgress):
            step = self.steps.get(event.step_id)
            if step is not None and not step.phase.finished:
                if step.phase is not Phase.RUNNING:
                    self._move(step, Phase.RUNNING)
                self._tokens += event.tokens - step.tokens
                step.tokens = event.tokens
                step.tail = event.text
        elif isinstance(event, StepStarted):
            step = self._step(event.step_id)
            at = event.at or self.now()
            self._move(step, Phase.RUNNING)
            step.attempt = event.attempt
            step.model = event.model or step.model
            if step.started is None:
                step.started = at
            step.attempt_started = at
            self._stream(step, 0, "")
            step.retry_until = None
        elif isinstance(event, StepRetrying):
            step = self._step(event.step_id)
            self._move(step, Phase.RETRYING)
            step.attempt = event.attempt
            step.retry_reason = one_line(event.reason)
            step.retry_wait = event.wait_seconds
            step.retry_until = self.now() + event.wait_seconds
            self._stream(step, 0, "")
        elif isinstance(event, StepFinished):
            self._finish(event.result, event.at or self.now())
        elif isinstance(event, RunStarted):
            # The same run announced again (``prepare``d, or applied by the caller before the
            # engine's own RunStarted) keeps its steps and its earliest start: no jump back.
            same = (event.run_id == self.run_id and self.result is None
                    and [info.step_id for info in event.steps] == list(self.steps))
            if not same:
                self.run_id, self.plan, self.tenant = event.run_id, event.plan, event.tenant
                self._reset(event.steps)
            if self.started_at is None:
                self.started_at = event.started_at
        elif isinstance(event, RunFinished):
            at = event.at or self.now()
            for result in event.result.outputs.values():
                step = self.steps.get(result.step_id)
                if step is None or not step.phase.finished:
                    self._finish(result, at)
            self.result = event.result
            self.finished_at = at
            if self.started_at is None:
                self.started_at = at - event.result.total_duration_ms / 1000

    def _reset(self, infos: Iterable[StepInfo]) -> None:
        self.steps = {info.step_id: _step_from(info) for info in infos}
        self._counts = dict.fromkeys(Phase, 0)
        self._counts[Phase.WAITING] = len(self.steps)
        self._tokens = 0
        self._cost = 0.0
        self.started_at = self.finished_at = None
        self.result = None

    def _step(self, step_id: str) -> StepState:
        step = self.steps.get(step_id)
        if step is None:  # an event for a step we were not told about: still show it
            step = StepState(step_id, name=step_id)
            self.steps = {**self.steps, step_id: step}  # never resize a dict being read
            self._counts = {**self._counts, Phase.WAITING: self._counts.get(Phase.WAITING, 0) + 1}
        return step

    def _move(self, step: StepState, phase: Phase) -> None:
        counts = self._counts
        counts[step.phase] = counts.get(step.phase, 0) - 1
        counts[phase] = counts.get(phase, 0) + 1
        step.phase = phase

    def _stream(self, step: StepState, tokens: int, tail: str) -> None:
        self._tokens += tokens - step.tokens
        step.tokens = tokens
        step.tail = tail

    def _finish(self, result: StepResult, at: float) -> None:
        step = self._step(result.step_id)
        if step.result is not None:  # already counted: take the newer result
            self._tokens -= step.result.total_tokens
            self._cost -= step.result.cost_usd
            self._unknown_cost -= not step.result.cost_known
        self._stream(step, 0, "")
        self._move(step, Phase.CACHED if result.cached else _FINAL_PHASE[result.status])
        step.result = result
        step.finished = at
        step.attempt = result.attempts or step.attempt
        step.model = step.model or result.model or ""  # keep the planned model name
        step.retry_until = None
        self._tokens += result.total_tokens
        self._cost += result.cost_usd
        self._unknown_cost += not result.cost_known

    # --- reading -----------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """Whether the run's clock is running (a ``RunStarted`` was applied)."""
        return self.started_at is not None

    @property
    def finished(self) -> bool:
        return self.result is not None

    def waiting_on(self, step_id: str) -> list[str]:
        """The step's dependencies that have not (yet) produced an output, in declared order."""
        step = self.steps.get(step_id)
        if step is None:
            return []
        out = []
        for dep in step.depends_on:
            other = self.steps.get(dep)
            if other is None or not other.phase.ok:
                out.append(dep)
        return out

    def counts(self) -> dict[Phase, int]:
        """How many steps are in each phase (every phase present, zeros included)."""
        return {phase: self._counts.get(phase, 0) for phase in Phase}

    def count(self, *phases: Phase) -> int:
        return sum(self._counts.get(phase, 0) for phase in phases)

    @property
    def total(self) -> int:
        return len(self.steps)

    @property
    def done(self) -> int:
        """Steps that have finished, whatever the outcome."""
        return self.total - self.count(Phase.WAITING, Phase.RUNNING, Phase.RETRYING)

    @property
    def tokens(self) -> int:
        """Tokens so far: finished steps' prompt + completion, plus what is streaming now."""
        return self._tokens

    @property
    def cost_usd(self) -> float:
        """Cost of the finished steps (streaming steps are priced when they finish)."""
        return self._cost

    @property
    def cost(self) -> str:
        """``cost_usd`` as shown: "cost unknown" rather than $0 when a step's cost is."""
        return fmt_cost(self._cost, self._unknown_cost == 0)

    @property
    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        end = self.finished_at if self.finished_at is not None else self.now()
        return max(0.0, end - self.started_at)

    def order(self) -> list[str]:
        """Step ids in dependency order (declared order among equals), as a view lists them."""
        if self._order is None or self._order[0] is not self.steps:
            graph = {sid: step.depends_on for sid, step in self.steps.items()}
            try:
                order = dag.topological_order(graph)
            except ValueError:  # a cycle (the plan was not validated): keep declared order
                order = list(graph)
            self._order = (self.steps, order)
        return self._order[1]

    @property
    def models(self) -> list[str]:
        """The distinct models of the steps, in step order."""
        return list(dict.fromkeys(step.model for step in self.steps.values() if step.model))


def _step_from(info: StepInfo) -> StepState:
    return StepState(info.step_id, info.name, info.role, info.model, tuple(info.depends_on))


# --- formatting shared by the views -----------------------------------------------------------

def fmt_duration(seconds: float) -> str:
    """2.1s, 59.9s, 1m05s, 2h03m."""
    if seconds < 59.95:
        return f"{max(seconds, 0.0):.1f}s"
    whole = int(seconds + 0.5)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def fmt_tokens(tokens: int) -> str:
    return f"{tokens:,} tok"


def fmt_cost(cost: float, known: bool = True, estimated: bool = False) -> str:
    """``$0.0123``; an unknown cost is never shown as $0: "cost unknown", or what is known of
    it "+ unknown"; a cost that includes estimates says so."""
    text = f"${cost:.4f}" if cost < 1 else f"${cost:,.2f}"
    if not known:
        return "cost unknown" if cost == 0 else f"{text} + unknown"
    return f"~{text} (estimate)" if estimated else text


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --- one line per state change -----------------------------------------------------------------


def line_for(state: RunState, event: Event) -> str | None:
    """The plain-text line for ``event``, or None when it changes nothing worth a line.

    Call it after ``state.apply(event)``. Finishing lines count steps done (``[3/5]``), the others
    show ``[-/5]``. There is no line for ``StepProgress`` nor for ``RunFinished`` (print
    ``view.summary`` for the end of the run). Lines are at most ``LINE_WIDTH`` characters.
    """
    total = state.total
    if isinstance(event, RunStarted):
        head = f"[-/{total}] {'RUN':<6} {event.plan} for {event.tenant}"
        return _cropped(head, f": {plural(total, 'step')}, run {event.run_id}")
    if isinstance(event, StepStarted):
        step = state.steps.get(event.step_id)
        role = step.role if step is not None else ""
        again = f" attempt {event.attempt}" if event.attempt > 1 else ""
        what = ", ".join(x for x in (role, event.model) if x)
        head = f"[-/{total}] {'START':<6} {event.step_id}{again}"
        return _cropped(head, f" ({what})" if what else "")
    if isinstance(event, StepRetrying):
        head = f"[-/{total}] {'RETRY':<6} {event.step_id} attempt {event.attempt} failed: "
        tail = f"; waiting {fmt_duration(event.wait_seconds)}"
        room = max(LINE_WIDTH - cells(head) - cells(tail), 20)
        return crop(head + crop(one_line(event.reason), room) + tail, LINE_WIDTH)
    if isinstance(event, StepFinished):
        result = event.result
        count = f"[{state.done}/{total}]"
        reason = one_line(result.error or "")
        if result.cached:
            return _cropped(f"{count} {'CACHED':<6} {result.step_id}",
                            " (reused an earlier result)")
        if result.status is StepStatus.SUCCEEDED:
            parts = [fmt_duration(result.duration_ms / 1000), fmt_tokens(result.total_tokens),
                     fmt_cost(result.cost_usd, result.cost_known, result.estimated)]
            if result.attempts > 1:
                parts.append(f"after {result.attempts} attempts")
            if result.truncated:
                parts.append("TRUNCATED at the token limit")
            return _cropped(f"{count} {'OK':<6} {result.step_id} ", " ".join(parts))
        if result.status is StepStatus.FAILED:
            after = f" after {plural(result.attempts, 'attempt')}" if result.attempts else ""
            return _cropped(f"{count} {'FAIL':<6} {result.step_id}{after}",
                            f": {reason or 'failed'}")
        if result.status is StepStatus.SKIPPED:
            return _cropped(f"{count} {'SKIP':<6} {result.step_id}",
                            f": {reason or 'skipped'}")
        if result.status is StepStatus.WAITING:
            return _cropped(f"{count} {'HOLD':<6} {result.step_id}",
                            f": {reason or 'waiting for approval'}")
        if result.status is StepStatus.REJECTED:
            return _cropped(f"{count} {'REJECT':<6} {result.step_id}",
                            f": {reason or 'rejected'}")
        return _cropped(f"{count} {'CANCEL':<6} {result.step_id}", f": {reason or 'cancelled'}")
    return None


def _cropped(head: str, tail: str) -> str:
    return crop(head + tail, LINE_WIDTH)
