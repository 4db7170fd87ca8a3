"""RunState: the run model the views draw, folded from engine events (no rendering here)."""

from __future__ import annotations

import asyncio

import pytest

from dworkers.events import (
    Event,
    EventLog,
    RunFinished,
    RunStarted,
    StepFinished,
    StepInfo,
    StepProgress,
    StepRetrying,
    StepStarted,
)
from dworkers.results import RunResult, StepResult, StepStatus
from dworkers.view.state import (
    LINE_WIDTH,
    Phase,
    RunState,
    fmt_cost,
    fmt_duration,
    fmt_tokens,
    line_for,
)


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


STEPS = (
    StepInfo("scope", "Scope", "analyst", "openai/gpt-4o-mini", ()),
    StepInfo("research", "Research", "researcher", "openai/gpt-4o", ("scope",)),
    StepInfo("gaps", "Gaps", "data_analyst", "openai/gpt-4o-mini", ("scope",)),
    StepInfo("plan", "Plan", "analyst", "openai/gpt-4o-mini", ("research", "gaps")),
    StepInfo("brief", "Brief", "manager", "openai/gpt-4o-mini", ("plan",)),
)


def started(clock: FakeClock | None = None) -> tuple[RunState, FakeClock]:
    clock = clock or FakeClock()
    state = RunState(now=clock)
    state.apply(RunStarted("run-1", "audit", "acme", STEPS, clock.t))
    return state, clock


def ok(step_id: str, *, prompt: int = 100, completion: int = 50, cost: float = 0.001,
       ms: float = 2000, attempts: int = 1, cached: bool = False) -> StepResult:
    return StepResult(step_id=step_id, status=StepStatus.SUCCEEDED, output="x", attempts=attempts,
                      duration_ms=ms, prompt_tokens=prompt, completion_tokens=completion,
                      cost_usd=cost, cached=cached, model="gpt-4o-mini-2024-07-18")


def ended(step_id: str, status: StepStatus, error: str, attempts: int = 0,
          ms: float = 0.0) -> StepResult:
    return StepResult(step_id=step_id, status=status, error=error, attempts=attempts,
                      duration_ms=ms)


def test_run_started_lists_every_step_waiting() -> None:
    state, clock = started()
    assert list(state.steps) == ["scope", "research", "gaps", "plan", "brief"]
    assert all(step.phase is Phase.WAITING for step in state.steps.values())
    assert (state.plan, state.tenant, state.run_id) == ("audit", "acme", "run-1")
    assert state.steps["research"].role == "researcher"
    assert state.steps["research"].model == "openai/gpt-4o"
    assert state.total == 5 and state.done == 0
    assert state.counts()[Phase.WAITING] == 5
    assert state.waiting_on("scope") == []
    assert state.waiting_on("plan") == ["research", "gaps"]
    assert state.models == ["openai/gpt-4o-mini", "openai/gpt-4o"]
    clock.t += 3.5
    assert state.elapsed == 3.5
    assert state.started and not state.finished


def test_start_progress_finish() -> None:
    state, clock = started()
    state.apply(StepStarted("scope", 1, "openai/gpt-4o-mini", 101.0))
    step = state.steps["scope"]
    assert step.phase is Phase.RUNNING and step.attempt == 1 and step.started == 101.0
    clock.t = 103.0
    assert step.elapsed(clock.t) == 2.0
    state.apply(StepProgress("scope", 12, "## Scope\n\nThe   audit\tcovers SOX"))
    assert step.tokens == 12
    assert step.preview == "The audit covers SOX"
    assert state.tokens == 12
    state.apply(StepProgress("scope", 13, "## Scope\n\nThe audit covers SOX.\n\n"))
    assert step.preview == "The audit covers SOX."  # the last line that has text
    assert state.tokens == 13
    state.apply(StepFinished(ok("scope", prompt=300, completion=13, cost=0.0021), 104.0))
    assert step.phase is Phase.SUCCEEDED
    assert step.finished == 104.0
    assert step.duration == 2.0  # the engine's own measure (duration_ms)
    assert step.elapsed(999.0) == 2.0
    assert step.model == "openai/gpt-4o-mini"  # the planned name, not the provider's echo
    assert state.tokens == 313 and state.cost_usd == pytest.approx(0.0021)
    assert state.done == 1
    assert state.waiting_on("research") == []
    assert state.waiting_on("plan") == ["research", "gaps"]


def test_tokens_so_far_add_streaming_steps_to_finished_ones() -> None:
    state, _ = started()
    state.apply(StepFinished(ok("scope", prompt=100, completion=50, cost=0.5)))
    state.apply(StepStarted("research", 1, "m", 1.0))
    state.apply(StepStarted("gaps", 1, "m", 1.0))
    state.apply(StepProgress("research", 7, "a"))
    state.apply(StepProgress("gaps", 5, "b"))
    assert state.tokens == 150 + 7 + 5
    assert state.cost_usd == 0.5  # streaming steps are priced when they finish
    state.apply(StepFinished(ok("gaps", prompt=10, completion=6, cost=0.25)))
    assert state.tokens == 150 + 7 + 16
    assert state.cost_usd == 0.75


def test_retry_then_success() -> None:
    state, clock = started()
    state.apply(StepStarted("scope", 1, "m", 100.0))
    state.apply(StepProgress("scope", 40, "partial answer"))
    clock.t = 101.0
    state.apply(StepRetrying("scope", 1, "rate limited (429):\n  slow   down", 2.5))
    step = state.steps["scope"]
    assert step.phase is Phase.RETRYING
    assert step.attempt == 1
    assert step.retry_reason == "rate limited (429): slow down"
    assert step.retry_wait == 2.5 and step.retry_until == 103.5
    assert step.retry_in(102.0) == 1.5
    assert step.retry_in(110.0) == 0.0
    assert step.tokens == 0 and step.preview == "" and state.tokens == 0  # that attempt is gone
    assert state.counts()[Phase.RETRYING] == 1
    state.apply(StepStarted("scope", 2, "m", 103.5))
    assert step.phase is Phase.RUNNING and step.attempt == 2
    assert step.started == 100.0 and step.attempt_started == 103.5  # elapsed counts from the 1st
    assert step.retry_until is None
    state.apply(StepFinished(ok("scope", attempts=2)))
    assert step.phase is Phase.SUCCEEDED and step.attempt == 2
    assert state.counts()[Phase.RETRYING] == 0


def test_cached_step_counts_as_done_and_satisfies_dependents() -> None:
    state, _ = started()
    state.apply(StepFinished(ok("scope", prompt=0, completion=0, cost=0.0, ms=0, attempts=0,
                                cached=True)))
    step = state.steps["scope"]
    assert step.phase is Phase.CACHED
    assert step.phase.ok and step.phase.finished
    assert step.duration is None and step.elapsed(500.0) is None
    assert state.waiting_on("research") == []
    assert state.done == 1
    assert state.counts()[Phase.CACHED] == 1


def test_failure_skips_and_reasons() -> None:
    state, _ = started()
    state.apply(StepFinished(ok("scope")))
    state.apply(StepStarted("research", 1, "m", 1.0))
    state.apply(StepFinished(ended("research", StepStatus.FAILED,
                                   "provider error (500):\nboom", 3, 4200)))
    state.apply(StepFinished(ended("plan", StepStatus.SKIPPED, "research failed")))
    research, plan = state.steps["research"], state.steps["plan"]
    assert research.phase is Phase.FAILED
    assert research.reason == "provider error (500): boom"
    assert research.attempt == 3 and research.duration == 4.2
    assert plan.phase is Phase.SKIPPED and plan.reason == "research failed"
    assert plan.duration is None
    assert state.steps["scope"].reason is None
    assert state.waiting_on("plan") == ["research", "gaps"]
    counts = state.counts()
    assert (counts[Phase.SUCCEEDED], counts[Phase.FAILED], counts[Phase.SKIPPED]) == (1, 1, 1)
    assert sum(counts.values()) == state.total
    assert state.done == 3


def test_cancel_and_interrupted_run_finish() -> None:
    state, clock = started()
    state.apply(StepFinished(ok("scope")))
    state.apply(StepStarted("research", 1, "m", 100.0))
    state.apply(StepProgress("research", 9, "going"))
    state.apply(StepFinished(ended("research", StepStatus.CANCELLED,
                                   "cancelled while running (run interrupted)", 1, 800)))
    assert state.steps["research"].phase is Phase.CANCELLED
    assert state.steps["research"].reason == "cancelled while running (run interrupted)"
    assert state.tokens == 150  # the cancelled attempt's tokens are not counted
    # the rest arrive only in RunFinished's result: they are applied from it
    research = state.steps["research"].result
    assert research is not None
    outputs = {"scope": ok("scope"), "research": research}
    for info in STEPS[2:]:
        outputs[info.step_id] = ended(info.step_id, StepStatus.CANCELLED,
                                      "cancelled before it started")
    result = RunResult(run_id="run-1", plan="audit", tenant="acme", interrupted=True,
                       total_duration_ms=5000, outputs=outputs)
    clock.t = 105.0
    state.apply(RunFinished(result, 105.0))
    assert state.finished and state.result is result
    assert state.counts()[Phase.CANCELLED] == 4
    assert state.done == 5
    clock.t = 200.0
    assert state.elapsed == 5.0  # frozen at the end


def test_prepare_shows_steps_without_starting_the_clock() -> None:
    clock = FakeClock(50.0)
    state = RunState(now=clock)
    announce = RunStarted("run-1", "audit", "acme", STEPS, 50.0)
    state.prepare(announce)
    assert list(state.steps) == [s.step_id for s in STEPS]
    assert not state.started and state.elapsed == 0.0
    state.apply(RunStarted("run-1", "audit", "acme", STEPS, 52.0))
    assert state.started_at == 52.0


def test_the_same_run_announced_twice_keeps_its_progress_and_first_start() -> None:
    state, _ = started(FakeClock(10.0))
    state.apply(StepStarted("scope", 1, "m", 11.0))
    state.apply(RunStarted("run-1", "audit", "acme", STEPS, 12.0))
    assert state.started_at == 10.0
    assert state.steps["scope"].phase is Phase.RUNNING
    state.apply(RunStarted("run-2", "audit", "acme", STEPS, 20.0))  # a new run starts afresh
    assert state.started_at == 20.0
    assert state.steps["scope"].phase is Phase.WAITING
    assert state.counts()[Phase.RUNNING] == 0


def test_events_for_unknown_steps_still_show() -> None:
    state = RunState(now=FakeClock())
    state.apply(StepStarted("ghost", 1, "m", 1.0))
    state.apply(StepProgress("nobody", 3, "ignored"))
    assert list(state.steps) == ["ghost"]
    assert state.steps["ghost"].phase is Phase.RUNNING
    assert state.total == 1 and state.counts()[Phase.RUNNING] == 1
    assert state.waiting_on("nobody") == []


def test_a_real_mock_run_keeps_totals_consistent() -> None:
    from dworkers.engine import PlanBuilder
    from dworkers.llm import MockClient
    from dworkers.plans.registry import plan_registry

    log = EventLog()
    state = RunState()
    checks: list[tuple[int, int]] = []

    def on_event(event: Event) -> None:
        log(event)
        state.apply(event)
        recount = sum(1 for s in state.steps.values() if s.phase.finished)
        checks.append((state.done, recount))

    plan = plan_registry.get("compliance-audit")
    engine = PlanBuilder(plan, client=MockClient(latency=0), on_event=on_event).build()
    result = asyncio.run(engine.run({"brief": "SOX for Q4"}))
    assert all(done == recount for done, recount in checks)
    assert state.finished and state.done == state.total == len(plan.steps)
    # Every step succeeded, or was skipped by its own when: (the triage decides).
    skipped = [r for r in result.outputs.values() if r.condition_false]
    assert state.counts()[Phase.SUCCEEDED] == len(plan.steps) - len(skipped)
    assert result.success
    assert state.tokens == result.total_tokens
    assert state.cost_usd == pytest.approx(result.cost_usd)
    assert any(isinstance(e, StepProgress) for e in log.events)


# --- formatting and line_for ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0.0s"), (2.14, "2.1s"), (59.94, "59.9s"), (59.96, "1m00s"), (65, "1m05s"),
     (3599.4, "59m59s"), (3600, "1h00m"), (7384, "2h03m"), (-1, "0.0s")],
)
def test_fmt_duration(seconds: float, text: str) -> None:
    assert fmt_duration(seconds) == text


def test_small_formatters() -> None:
    assert fmt_tokens(812) == "812 tok"
    assert fmt_tokens(12345) == "12,345 tok"
    assert fmt_cost(0.0012) == "$0.0012"
    assert fmt_cost(0) == "$0.0000"
    assert fmt_cost(1234.5) == "$1,234.50"


def lines_of(state: RunState, events: list[Event]) -> list[str]:
    out = []
    for event in events:
        state.apply(event)
        line = line_for(state, event)
        if line is not None:
            out.append(line)
    return out


def test_line_for_every_kind_of_change() -> None:
    clock = FakeClock(0.0)
    state = RunState(now=clock)
    events: list[Event] = [
        RunStarted("20250101-120000-abc123", "audit", "acme", STEPS, 0.0),
        StepStarted("scope", 1, "openai/gpt-4o-mini", 0.0),
        StepProgress("scope", 5, "hello"),
        StepFinished(ok("scope", prompt=700, completion=112, cost=0.0012, ms=2100)),
        StepStarted("research", 1, "openai/gpt-4o", 2.1),
        StepRetrying("research", 1, "rate limited (429): slow down", 2.0),
        StepStarted("research", 2, "openai/gpt-4o", 4.1),
        StepFinished(ok("gaps", prompt=0, completion=0, cost=0, ms=0, attempts=0, cached=True)),
        StepFinished(ended("research", StepStatus.FAILED, "provider error (500): boom", 3)),
        StepFinished(ended("plan", StepStatus.SKIPPED, "research failed")),
        StepFinished(ended("brief", StepStatus.CANCELLED, "cancelled before it started")),
        StepFinished(ok("scope", attempts=3, prompt=1000, completion=234, cost=1.5, ms=65000)),
    ]
    assert lines_of(state, events) == [
        "[-/5] RUN    audit for acme: 5 steps, run 20250101-120000-abc123",
        "[-/5] START  scope (analyst, openai/gpt-4o-mini)",
        "[1/5] OK     scope 2.1s 812 tok $0.0012",
        "[-/5] START  research (researcher, openai/gpt-4o)",
        "[-/5] RETRY  research attempt 1 failed: rate limited (429): slow down; waiting 2.0s",
        "[-/5] START  research attempt 2 (researcher, openai/gpt-4o)",
        "[2/5] CACHED gaps (reused an earlier result)",
        "[3/5] FAIL   research after 3 attempts: provider error (500): boom",
        "[4/5] SKIP   plan: research failed",
        "[5/5] CANCEL brief: cancelled before it started",
        "[5/5] OK     scope 1m05s 1,234 tok $1.50 after 3 attempts",
    ]


def test_line_for_progress_and_run_finished_give_no_line() -> None:
    state, _ = started()
    result = RunResult(run_id="run-1", plan="audit", tenant="acme")
    assert line_for(state, StepProgress("scope", 1, "x")) is None
    assert line_for(state, RunFinished(result)) is None


def test_line_for_failure_without_attempts_and_defaults() -> None:
    state, _ = started()
    assert lines_of(state, [
        StepFinished(ended("scope", StepStatus.FAILED, "")),
        StepStarted("ghost", 1, ""),
    ]) == ["[1/5] FAIL   scope: failed", "[-/6] START  ghost"]


def test_lines_stay_short_and_single() -> None:
    state, _ = started()
    reason = "provider error (500): " + "very long\nmultiline reason " * 40
    lines = lines_of(state, [
        StepRetrying("research", 1, reason, 30.0),
        StepFinished(ended("research", StepStatus.FAILED, reason, 2)),
        StepFinished(ended("plan", StepStatus.SKIPPED, reason)),
    ])
    assert len(lines) == 3
    for line in lines:
        assert len(line) <= LINE_WIDTH
        assert "\n" not in line
    assert lines[0].endswith("…; waiting 30.0s")
    assert lines[0].startswith("[-/5] RETRY  research attempt 1 failed: provider error (500): ")
    assert lines[1].startswith("[1/5] FAIL   research after 2 attempts: provider error (500): ")
    assert lines[1].endswith("…") and lines[2].endswith("…")
