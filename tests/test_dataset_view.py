"""The dataset progress display and line mode, drawn from events with a controlled clock."""

from __future__ import annotations

from rich.console import Console

from dworkers.events import (
    DatasetFinished,
    ExecutorNotice,
    RateLimits,
    RowFinished,
    RowStarted,
    RunStarted,
    StepFinished,
    StepInfo,
)
from dworkers.results import DatasetResult, RowResult, RowStatus, StepResult, StepStatus
from dworkers.view.dataset import (
    DatasetLineView,
    dataset_run_summary,
    make_dataset_view,
    progress,
)
from dworkers.view.dataset_state import DatasetState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


STEPS = (StepInfo("scope", "Scope", "analyst", "openai/m", ()),
         StepInfo("write", "Write", "manager", "openai/m", ("scope",)))


def started(at: float = 1000.0) -> RunStarted:
    return RunStarted("20261202-0000-abc", "audit", "acme", STEPS, at, dataset=True)


def step(sid: str, tokens: int = 100, cost: float = 0.01, cached: bool = False) -> StepResult:
    return StepResult(step_id=sid, status=StepStatus.SUCCEEDED, output="ok", attempts=0
                      if cached else 1, prompt_tokens=tokens // 2,
                      completion_tokens=tokens - tokens // 2, cost_usd=0.0 if cached else cost,
                      cached=cached)


def row(key: str, status: RowStatus = RowStatus.SUCCEEDED, error: str | None = None,
        cached: bool = False) -> RowResult:
    outputs = {} if status is not RowStatus.SUCCEEDED else {
        "scope": step("scope", cached=cached), "write": step("write", cached=cached)}
    return RowResult(key=key, status=status, error=error, outputs=outputs, duration_ms=1500)


def render(state: DatasetState, width: int = 100) -> str:
    out = Console(width=width, record=True, color_system=None, force_terminal=False)
    out.print(progress(state, width))
    return out.export_text()


def play(state: DatasetState, clock: Clock) -> None:
    state.apply(started())
    for n in range(1, 9):
        key = f"row-{n}"
        state.apply(RowStarted(key, n + 1, clock.now))
        clock.now += 1.5
        if n in (3, 7):
            state.apply(RowFinished(row(key, RowStatus.FAILED, f"write: boom {n}\nmore"),
                                    clock.now))
            continue
        state.apply(StepFinished(step("scope"), clock.now, row=key))
        state.apply(StepFinished(step("write"), clock.now, row=key))
        state.apply(RowFinished(row(key), clock.now))
    state.apply(RowStarted("row-9", 10, clock.now))
    state.apply(RateLimits("openai/m", 60.0, 40_000.0, "headers", clock.now))


def test_progress_shows_counts_pace_limits_cost_eta_and_last_failures() -> None:
    clock = Clock()
    state = DatasetState(total=20, budget_usd=5.0, now=clock)
    play(state, clock)
    text = render(state)
    assert "audit for acme · 20 rows · run 20261202-0000-abc" in text
    assert "8/20 rows  40%" in text
    assert "12.0s · ETA 18.0s" in text  # 8 rows in 12 s: 12 left take 18 s
    assert "✓ 6 succeeded  ✗ 2 failed  ⠿ 1 running  ○ 11 left" in text
    # 12 calls and 1,200 tokens in 12 s, against what the headers allow
    # and which limit holds the run back, and where it is from
    assert ("calls 60/min of 60 · tokens 6,000/min of 40,000 · held to calls/min, stated by "
            "the provider") in " ".join(text.split())
    assert "cost $0.1200 of $5.00 budget" in text
    assert "last failures:" in text
    assert "row-3 — write: boom 3 more" in text and "row-7 — write: boom 7 more" in text


def test_progress_fits_a_narrow_terminal_and_says_when_limits_are_unknown() -> None:
    clock = Clock()
    state = DatasetState(total=3, now=clock)
    state.apply(started())
    text = render(state, width=40)
    assert all(len(line) <= 40 for line in text.splitlines())
    assert "cost $0.0000" in text  # on its own line rather than cut off
    wide = render(state, width=120)
    assert "(limit not known yet)" in wide and "budget" not in wide


def test_progress_says_a_limit_learned_from_429s_binds_and_not_one_far_from_use() -> None:
    clock = Clock()
    state = DatasetState(total=100, now=clock)
    state.apply(started())
    for _ in range(30):  # 30 calls in 30 s: 60 a minute, 6,000 tokens a minute
        clock.now += 1.0
        state.apply(StepFinished(step("scope", tokens=100), clock.now, row="k"))
    state.apply(RateLimits("openai/m", 62.0, None, "429", clock.now))
    assert state.binding() == "calls/min, learned from 429s"
    assert "held to calls/min, learned from 429s" in render(state, width=160)
    state.apply(RateLimits("openai/m", 600.0, 6_500.0, "tenant", clock.now))
    assert state.binding() == "tokens/min, stated by the tenant"
    state.apply(RateLimits("openai/m", 600.0, 60_000.0, "tenant", clock.now))
    assert state.binding() is None and "held to" not in render(state, width=160)


def test_throughput_counts_only_the_last_minute() -> None:
    clock = Clock()
    state = DatasetState(total=100, now=clock)
    state.apply(started())
    for _ in range(30):
        state.apply(StepFinished(step("scope", tokens=10), clock.now, row="k"))
    clock.now += 90  # a minute and a half later, nothing new: the pace has dropped to zero
    state.apply(StepFinished(step("scope", tokens=10), clock.now, row="k"))
    calls, tokens = state.per_minute()
    assert (calls, tokens) == (1, 10)


def test_cached_steps_are_shown_apart_and_not_counted_as_calls() -> None:
    clock = Clock()
    state = DatasetState(total=1, now=clock)
    state.apply(started())
    state.apply(StepFinished(step("scope", cached=True), clock.now, row="a"))
    assert (state.calls, state.cached) == (0, 1)
    assert "1 cached" in render(state)


def test_memory_of_the_state_stays_flat_over_many_rows() -> None:
    clock = Clock()
    state = DatasetState(total=5000, now=clock)
    state.apply(started())
    for n in range(5000):
        key = str(n)
        state.apply(RowStarted(key, n, clock.now))
        state.apply(StepFinished(step("scope"), clock.now, row=key))
        state.apply(RowFinished(row(key, RowStatus.FAILED, "x") if n % 2 else row(key),
                                clock.now))
        clock.now += 0.1
    assert state.done == 5000 and not state.running
    assert len(state.failures) == 5 and len(state._buckets) <= 61


def test_line_mode_prints_one_line_per_finished_row_and_quiet_only_failures() -> None:
    for quiet, expected in ((False, 3), (True, 1)):
        out = Console(width=200, record=True, color_system=None)
        view = DatasetLineView(out, total=3, quiet=quiet)
        view(started())
        view(RowStarted("acme", 2))
        view(StepFinished(step("scope"), row="acme"))
        view(RowFinished(row("acme")))
        view(RowFinished(row("globex", RowStatus.FAILED, "scope: timed out after 10s")))
        view(RowFinished(row("initech", cached=True)))
        lines = out.export_text().splitlines()
        assert len(lines) == expected
        if not quiet:
            assert lines[0] == "[1/3] ✓ succeeded acme  2 steps, 1.5s, $0.0200"
            assert lines[2].endswith("initech  2 steps, 1.5s, $0.0000, 2 cached")
        assert "[2/3] ✗ failed    globex: scope: timed out after 10s" in lines


def test_ray_starting_its_workers_is_shown_until_the_first_worker_reports() -> None:
    # Starting a cluster takes seconds before any row moves: the display says what it waits
    # for and for how long, instead of standing still; an empty notice clears it.
    clock = Clock()
    state = DatasetState(total=4, now=clock)
    state.apply(ExecutorNotice("starting Ray: 2 workers…", clock.now))
    state.apply(started())
    clock.now += 7
    assert "starting Ray: 2 workers… 7.0s" in render(state)
    state.apply(ExecutorNotice("", clock.now))
    assert "starting Ray" not in render(state)

    out = Console(width=200, record=True, color_system=None)
    for quiet in (False, True):
        view = DatasetLineView(out, total=4, quiet=quiet)
        view(ExecutorNotice("starting Ray: 2 workers…", clock.now))
        view(ExecutorNotice("", clock.now))
    assert out.export_text().splitlines() == ["starting Ray: 2 workers…"]


def test_off_a_terminal_the_line_view_is_chosen_and_quiet_wins() -> None:
    out = Console(width=80, record=True)
    assert isinstance(make_dataset_view(interactive=False, quiet=False, out=out),
                      DatasetLineView)
    assert isinstance(make_dataset_view(interactive=True, quiet=True, out=out), DatasetLineView)


def test_summary_names_every_status_and_where_the_files_are() -> None:
    result = DatasetResult(run_id="r", plan="audit", tenant="acme", calls=12, rate_limited=1,
                           prompt_tokens=600, completion_tokens=600, cost_usd=0.12,
                           total_duration_ms=12_000, stop_reason="2 rows failed (--max-failures 2)")
    result.counts.update({RowStatus.SUCCEEDED: 6, RowStatus.FAILED: 2, RowStatus.SKIPPED: 12})
    out = Console(width=200, record=True, color_system=None)
    out.print(dataset_run_summary(result, "runs/r"))
    text = out.export_text()
    assert ("Dataset run finished with failures: 20 rows — 6 succeeded, 2 failed, 12 skipped · "
            "12 calls · 1,200 tokens · $0.1200 · 12.0s · 1 answered 429") in text
    assert "stopped: 2 rows failed (--max-failures 2)" in text
    assert "outputs: runs/r" in text
    assert "start-up" not in text  # no cluster to start


def test_summary_says_how_long_a_cluster_took_to_start() -> None:
    result = DatasetResult(run_id="r", plan="audit", tenant="acme", calls=3,
                           total_duration_ms=20_000, startup_ms=12_300)
    result.counts[RowStatus.SUCCEEDED] = 1
    out = Console(width=200, record=True, color_system=None)
    out.print(dataset_run_summary(result))
    assert "20.0s · cluster start-up 12.3s" in out.export_text()


def test_the_finished_state_freezes_the_clock() -> None:
    clock = Clock()
    state = DatasetState(total=1, now=clock)
    state.apply(started())
    state.apply(RowFinished(row("a")))
    clock.now += 5
    state.apply(DatasetFinished(DatasetResult(run_id="r", plan="p", tenant="t"), clock.now))
    clock.now += 100
    assert state.elapsed() == 5 and state.eta() is None


def test_an_offline_run_has_no_limits_to_learn() -> None:
    clock = Clock()
    state = DatasetState(total=1, now=clock)
    state.apply(RunStarted("r", "audit", "acme", tuple(
        StepInfo(s.step_id, s.name, s.role, "mock", s.depends_on) for s in STEPS), clock.now))
    assert "limit" not in render(state, width=120)


def test_a_model_without_a_price_is_cost_unknown_in_progress_rows_and_summary() -> None:
    unpriced = step("scope", cost=0.0).model_copy(update={"cost_known": False})
    clock = Clock()
    state = DatasetState(total=2, now=clock)
    state.apply(started())
    state.apply(RowStarted("acme", 2, clock.now))
    state.apply(StepFinished(unpriced, clock.now, row="acme"))
    text = render(state)
    assert "cost unknown" in text and "$0.0000" not in text
    out = Console(width=200, record=True, color_system=None)
    view = DatasetLineView(out, total=2)
    row = RowResult(key="acme", status=RowStatus.SUCCEEDED, outputs={"scope": unpriced},
                    duration_ms=1500)
    view(RowFinished(row))
    result = DatasetResult(run_id="r", plan="audit", tenant="acme")
    result.add(row)
    out.print(dataset_run_summary(result, "runs/r"))
    lines = out.export_text().splitlines()
    assert lines[0] == "[1/2] ✓ succeeded acme  1 steps, 1.5s, cost unknown"
    assert "· cost unknown ·" in lines[1] and "$0" not in out.export_text()
