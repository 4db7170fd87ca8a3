"""How runs look: the live tree, the summary, the one-line-per-change view (exact text)."""

from __future__ import annotations

import io

import pytest
from rich.cells import cell_len
from rich.console import Console, RenderableType

from dworkers import view
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
from dworkers.view import live as live_view
from dworkers.view.state import Phase, RunState


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


MINI = "openai/gpt-4o-mini"
STEPS = (
    StepInfo("scope", "Scope", "analyst", MINI, ()),
    StepInfo("context", "Context", "analyst", MINI, ()),
    StepInfo("research", "Research", "researcher", "openai/gpt-4o", ("scope",)),
    StepInfo("gaps", "Gaps", "data_analyst", MINI, ("scope",)),
    StepInfo("benchmarks", "Benchmarks", "data_analyst", MINI, ("scope",)),
    StepInfo("remediation-plan", "Plan", "analyst", MINI, ("research", "gaps")),
    StepInfo("peer-review", "Review", "manager", MINI, ("benchmarks",)),
    StepInfo("slides", "Slides", "designer", MINI, ("context",)),
    StepInfo("briefing", "Briefing", "manager", MINI, ("remediation-plan",)),
)


def result(step_id: str, status: StepStatus = StepStatus.SUCCEEDED, **kw: object) -> StepResult:
    return StepResult(step_id=step_id, status=status, **kw)  # type: ignore[arg-type]


def every_state() -> tuple[RunState, FakeClock]:
    """One run with a step in each phase, at t=100.9 (90.0 is the run's start)."""
    clock = FakeClock(90.0)
    state = RunState(now=clock)
    events: list[Event] = [
        RunStarted("r1", "compliance-audit", "acme-corp", STEPS, 90.0),
        StepStarted("scope", 1, MINI, 90.0),
        StepFinished(result("scope", attempts=1, duration_ms=2100, prompt_tokens=700,
                            completion_tokens=112, cost_usd=0.0012), 92.1),
        StepFinished(result("context", cached=True), 90.0),
        StepStarted("research", 1, "openai/gpt-4o", 92.1),
        StepProgress("research", 210, "## Findings\n\n| Regulation | Requirement |\n"
                                      "Recent   enforcement actions include the SEC's"),
        StepStarted("gaps", 1, MINI, 92.1),
        StepStarted("benchmarks", 1, MINI, 92.1),
    ]
    for event in events:
        state.apply(event)
    clock.t = 99.4
    later: list[Event] = [
        StepRetrying("gaps", 1, "rate limited (429): Rate limit reached for gpt-4o-mini on "
                                "tokens per min", 2.0),
        StepFinished(result("benchmarks", StepStatus.FAILED, attempts=3, duration_ms=7300,
                            error="provider error (500): The server had an error while "
                                  "processing your request"), 99.4),
        StepFinished(result("peer-review", StepStatus.SKIPPED, error="benchmarks failed"), 99.4),
        StepFinished(result("slides", StepStatus.CANCELLED,
                            error="cancelled before it started (run interrupted)"), 99.4),
    ]
    for event in later:
        state.apply(event)
    clock.t = 100.9
    return state, clock


def render(renderable: RenderableType, width: int = 80) -> str:
    out = Console(width=width, record=True, color_system=None, file=io.StringIO())
    out.print(renderable)
    return out.export_text()


def assert_fits(text: str, width: int) -> None:
    for line in text.splitlines():
        assert cell_len(line) <= width, f"{cell_len(line)} > {width}: {line!r}"


# --- run_tree --------------------------------------------------------------------------------

EVERY_STATE_80 = """\
compliance-audit · acme-corp              5/9 done · 10.9s · 1,022 tok · $0.0012
models openai/gpt-4o-mini, openai/gpt-4o
├── ✓ scope             analyst         2.1s     812 tok  $0.0012
├── ↺ context           analyst       cached (reused earlier result)
├── ⠏ research          researcher      8.8s     210 tok
│     Recent enforcement actions include the SEC's
├── ↻ gaps              data_analyst    8.8s  retry 2 in 0.5s
│     attempt 1 failed: rate limited (429): Rate limit reached for gpt-4o-mini…
├── ✗ benchmarks        data_analyst    7.3s  failed after 3 attempts
│     provider error (500): The server had an error while processing your reque…
├── ○ remediation-plan  analyst       waits on research, gaps
├── – peer-review       manager       skipped: benchmarks failed
├── ⊘ slides            designer      cancelled
│     cancelled before it started (run interrupted)
└── ○ briefing          manager       waits on remediation-plan
"""


def test_run_tree_shows_every_state() -> None:
    state, _ = every_state()
    assert render(view.run_tree(state, 80)) == EVERY_STATE_80


def test_run_tree_is_deterministic_and_the_spinner_follows_the_clock() -> None:
    state, clock = every_state()
    first = render(view.run_tree(state, 80))
    assert render(view.run_tree(state, 80)) == first
    clock.t = 101.0
    later = render(view.run_tree(state, 80))
    assert "├── ⠋ research" in later and "⠏" not in later
    assert "retry 2 in 0.4s" in later
    assert render(view.run_tree(state, 80, now=100.9)) == first


def test_run_tree_before_the_run_starts() -> None:
    state = RunState(now=FakeClock(5.0))
    state.prepare(RunStarted("r1", "compliance-audit", "acme-corp", STEPS[:4], 0.0))
    assert render(view.run_tree(state, 80)) == """\
compliance-audit · acme-corp                                           starting…
models openai/gpt-4o-mini, openai/gpt-4o
├── ○ scope     analyst       queued
├── ○ context   analyst       queued
├── ○ research  researcher    waits on scope
└── ○ gaps      data_analyst  waits on scope
"""


def test_run_tree_at_the_end() -> None:
    clock = FakeClock(0.0)
    state = RunState(now=clock)
    steps = STEPS[:1] + STEPS[2:4]
    state.apply(RunStarted("r1", "compliance-audit", "acme-corp", steps, 0.0))
    for sid, ms, tokens in [("scope", 2100, 812), ("research", 5400, 2310), ("gaps", 3000, 1204)]:
        state.apply(StepStarted(sid, 1, state.steps[sid].model, 0.0))
        state.apply(StepFinished(result(sid, attempts=1, duration_ms=ms, prompt_tokens=tokens,
                                        cost_usd=tokens / 1e6), ms / 1000))
    outputs = {sid: step.result for sid, step in state.steps.items() if step.result}
    state.apply(RunFinished(RunResult(run_id="r1", plan="compliance-audit", tenant="acme-corp",
                                      success=True, total_duration_ms=8400,
                                      outputs=outputs), 8.4))
    clock.t = 60.0  # the clock no longer matters
    assert render(view.run_tree(state, 80)) == """\
compliance-audit · acme-corp               3/3 done · 8.4s · 4,326 tok · $0.0043
models openai/gpt-4o-mini, openai/gpt-4o
├── ✓ scope     analyst         2.1s     812 tok  $0.0008
├── ✓ research  researcher      5.4s   2,310 tok  $0.0023
└── ✓ gaps      data_analyst    3.0s   1,204 tok  $0.0012
"""


def test_steps_are_drawn_in_dependency_order() -> None:
    steps = (
        StepInfo("report", "Report", "manager", MINI, ("draft",)),
        StepInfo("draft", "Draft", "analyst", MINI, ("facts",)),
        StepInfo("facts", "Facts", "researcher", MINI, ()),
    )
    state = RunState(now=FakeClock())
    state.apply(RunStarted("r1", "p", "t", steps, 100.0))
    lines = render(view.run_tree(state, 80)).splitlines()
    assert [line.split()[2] for line in lines[2:]] == ["facts", "draft", "report"]


def test_succeeded_after_retries_and_running_again_say_so() -> None:
    state = RunState(now=FakeClock(10.0))
    state.apply(RunStarted("r1", "p", "t", STEPS[:1] + STEPS[2:3], 0.0))
    state.apply(StepFinished(result("scope", attempts=2, duration_ms=1000, prompt_tokens=5), 1))
    state.apply(StepStarted("research", 2, MINI, 2.0))
    text = render(view.run_tree(state, 80))
    assert "├── ✓ scope     analyst       1.0s       5 tok  $0.0000  2 tries\n" in text
    assert "└── ⠋ research  researcher    8.0s       0 tok  attempt 2\n" in text


def test_a_cut_off_answer_is_marked_in_the_tree() -> None:
    state = RunState(now=FakeClock(10.0))
    state.apply(RunStarted("r1", "p", "t", STEPS[:2], 0.0))
    state.apply(StepFinished(result("scope", attempts=1, duration_ms=1000, prompt_tokens=5,
                                    truncated=True), 1))
    state.apply(StepFinished(result("context", attempts=1, duration_ms=1000, prompt_tokens=5),
                             1))
    text = render(view.run_tree(state, 80))
    assert text.endswith("├── ✓ scope     analyst    1.0s       5 tok  $0.0000  truncated\n"
                         "│     cut off at the model's token limit\n"
                         "└── ✓ context   analyst    1.0s       5 tok  $0.0000\n")


LONG = "a-very-long-step-identifier-that-goes-on-and-on-" * 3


def long_state() -> RunState:
    deps = tuple(f"{LONG}{i}" for i in range(4))
    steps = (
        *(StepInfo(d, d, "data_analyst", "openai/" + "m" * 90, ()) for d in deps),
        StepInfo("waiter-" + LONG, "W", "analyst", MINI, deps),
        StepInfo("runner", "R", "researcher", MINI, ()),
        StepInfo("retrier", "R", "researcher", MINI, ()),
        StepInfo("failer", "F", "researcher", MINI, ()),
        StepInfo("skipper", "S", "manager", MINI, ()),
        StepInfo("canceller", "C", "manager", MINI, ()),
        StepInfo("wide", "W", "manager", MINI, ()),
    )
    state = RunState(now=FakeClock(5000.0))
    state.apply(RunStarted("r1", "plan-" + "x" * 100, "tenant-" + "y" * 80, steps, 0.0))
    reason = "provider error (500): " + "something went badly wrong " * 20
    state.apply(StepStarted(deps[0], 1, MINI, 0.0))
    state.apply(StepFinished(result(deps[0], attempts=1, duration_ms=4e6,
                                    prompt_tokens=123_456_789, cost_usd=123456.0)))
    state.apply(StepStarted("runner", 1, MINI, 4990.0))
    state.apply(StepProgress("runner", 99_999_999, "word " * 200))
    state.apply(StepStarted("retrier", 7, MINI, 0.0))
    state.apply(StepRetrying("retrier", 7, reason, 30.0))
    state.apply(StepFinished(result("failer", StepStatus.FAILED, error=reason, attempts=12)))
    state.apply(StepFinished(result("skipper", StepStatus.SKIPPED, error=reason)))
    state.apply(StepFinished(result("canceller", StepStatus.CANCELLED, error=reason)))
    state.apply(StepStarted("wide", 1, MINI, 0.0))
    state.apply(StepProgress("wide", 3, "表" * 300))
    return state


@pytest.mark.parametrize("width", [80, 100, 60, 40])
def test_every_line_fits_the_width(width: int) -> None:
    text = render(view.run_tree(long_state(), width), width)
    assert_fits(text, width)
    assert len(text.splitlines()) == 2 + 11 + 6  # nothing wrapped: a line per row + 2nd lines
    assert "…" in text


def test_long_lines_are_cropped_with_an_ellipsis_at_80() -> None:
    lines = render(view.run_tree(long_state(), 80)).splitlines()
    assert lines[0].startswith("plan-xxx") and "… · " not in lines[0]
    assert lines[0].endswith("  4/11 done · 1h23m · 223,456,791 tok · $123,456.00")
    assert lines[1].startswith("models openai/gpt-4o-mini, openai/mmmm") and lines[1].endswith("…")
    runner = lines.index(next(x for x in lines if " runner " in x))
    assert lines[runner].endswith("researcher     10.0s  99,999,999 tok")
    assert lines[runner + 1].startswith("│     …word word")  # the newest text is kept
    wide = lines.index(next(x for x in lines if " wide " in x))
    assert lines[wide + 1].startswith("      …表表")  # the last step: no guide below it
    waiter = next(x for x in lines if "waiter-" in x)
    assert waiter.endswith("…") and "waits on" in waiter


def test_a_tall_run_folds_into_the_height_it_is_given() -> None:
    clock = FakeClock(50.0)
    state = RunState(now=clock)
    steps = tuple(StepInfo(f"step-{i:02d}", "", "analyst", MINI,
                           (f"step-{i - 1:02d}",) if i % 10 else ()) for i in range(40))
    state.apply(RunStarted("r1", "big", "acme", steps, 0.0))
    for i in range(12):  # step-00..11 succeed, except 10 (running) and 11 (waits on it)
        if i in (10, 11):
            continue
        state.apply(StepFinished(result(f"step-{i:02d}", attempts=1, duration_ms=1000)))
    state.apply(StepStarted("step-10", 1, MINI, 40.0))
    state.apply(StepProgress("step-10", 9, "streaming"))
    state.apply(StepFinished(result("step-20", StepStatus.FAILED, error="boom", attempts=1)))
    state.apply(StepFinished(result("step-21", StepStatus.SKIPPED, error="step-20 failed")))
    full = render(view.run_tree(state, 80))
    assert len(full.splitlines()) == 2 + 40 + 2  # + the running preview and the failure

    one_second = render(view.run_tree(state, 80, height=43))  # room for one second line:
    assert len(one_second.splitlines()) == 43  # the failure's reason beats the preview
    assert "│     boom\n" in one_second and "streaming" not in one_second
    no_second = render(view.run_tree(state, 80, height=42))
    assert len(no_second.splitlines()) == 42 and "boom" not in no_second

    folded = render(view.run_tree(state, 80, height=12))
    assert folded == """\
big · acme                                  12/40 done · 50.0s · 9 tok · $0.0000
model openai/gpt-4o-mini
├── ✓ 10 succeeded
├── ⠋ step-10   analyst   10.0s       9 tok
├── ○ step-11   analyst  waits on step-10
├── ○ step-12   analyst  waits on step-11
├── ○ step-13   analyst  waits on step-12
├── ○ step-14   analyst  waits on step-13
├── ✗ step-20   analyst  failed
├── ○ step-30   analyst  queued
├── ○ 22 more waiting
└── – 1 skipped or cancelled
"""
    tiny = render(view.run_tree(state, 80, height=6))
    assert tiny.splitlines()[2:] == [
        "└── ○ 10 succeeded · 1 running · 1 failed · 1 queued · 26 waiting · 1 skipped"]
    assert_fits(folded, 80)


def test_fold_keeps_only_counts_when_there_is_almost_no_room() -> None:
    state = RunState(now=FakeClock(1.0))
    steps = tuple(StepInfo(f"s{i}", "", "analyst", MINI, ()) for i in range(30))
    state.apply(RunStarted("r1", "big", "acme", steps, 0.0))
    for i in range(20):
        state.apply(StepStarted(f"s{i}", 1, MINI, 0.0))
    text = render(view.run_tree(state, 80, height=4))
    lines = text.splitlines()
    assert len(lines) <= 4 + 1
    assert lines[2:] == ["├── ⠋ 20 running", "└── ○ 10 queued"]


# --- summary ---------------------------------------------------------------------------------


def run_result(**kw: object) -> RunResult:
    outputs = {
        "scope": result("scope", prompt_tokens=1000, completion_tokens=234, cost_usd=0.0123),
        "context": result("context", cached=True),
    }
    return RunResult(run_id="r1", plan="compliance-audit", tenant="acme-corp",
                     total_duration_ms=12_300, outputs=outputs, **kw)  # type: ignore[arg-type]


def test_summary_of_a_successful_run() -> None:
    text = render(view.summary(run_result(success=True), "dworkers-runs/20250101-abc"))
    assert text == (
        "✓ compliance-audit finished: 2 succeeded (1 cached)\n"
        "  12.3s · 1,234 tokens · $0.0123\n"
        "  outputs: dworkers-runs/20250101-abc\n"
    )


def test_summary_of_a_failed_run_lists_each_failure_in_full() -> None:
    res = run_result()
    res.outputs["plan"] = result("plan", StepStatus.FAILED, error="provider error (500): " +
                                 "the upstream said no " * 5)
    res.outputs["brief"] = result("brief", StepStatus.SKIPPED, error="plan failed")
    text = render(view.summary(res, None))
    assert text == """\
✗ compliance-audit failed: 2 succeeded, 1 failed, 1 skipped (1 cached)
  12.3s · 1,234 tokens · $0.0123
  ✗ plan: provider error (500): the upstream said no the upstream said no the
          upstream said no the upstream said no the upstream said no
  finish it: dworkers run --resume r1
"""


def test_summary_of_an_interrupted_run() -> None:
    res = run_result(interrupted=True)
    res.outputs["plan"] = result("plan", StepStatus.CANCELLED, error="cancelled")
    text = render(view.summary(res, "out"))
    assert text == (
        "⊘ compliance-audit interrupted: 2 succeeded, 1 cancelled (1 cached)\n"
        "  12.3s · 1,234 tokens · $0.0123\n"
        "  outputs: out\n"
        "  finish it: dworkers run --resume r1\n"  # the command that finishes it comes last
    )


def test_print_summary_never_breaks_the_outputs_path() -> None:
    path = "/tmp/" + "very-long-directory-name/" * 6 + "20250101-120000-abc123"
    res = run_result()
    res.outputs["plan"] = result("plan", StepStatus.FAILED, error="the upstream said no " * 5)
    out = Console(width=60, file=io.StringIO())
    view.print_summary(out, res, path)
    assert isinstance(out.file, io.StringIO)
    assert out.file.getvalue() == f"""\
✗ compliance-audit failed: 2 succeeded, 1 failed (1 cached)
  12.3s · 1,234 tokens · $0.0123
  ✗ plan: the upstream said no the upstream said no the
          upstream said no the upstream said no the upstream
          said no
  outputs: {path}
  finish it: dworkers run --resume r1
"""


# --- LineView ----------------------------------------------------------------------------------


def script() -> list[Event]:
    steps = STEPS[:1] + STEPS[2:4] + STEPS[5:6]
    return [
        RunStarted("r1", "audit", "acme", steps, 0.0),
        RunStarted("r1", "audit", "acme", steps, 0.5),  # announced, then started by the engine
        StepStarted("scope", 1, MINI, 0.5),
        StepProgress("scope", 3, "abc"),
        StepFinished(result("scope", attempts=1, duration_ms=2100, prompt_tokens=700,
                            completion_tokens=112, cost_usd=0.0012, truncated=True)),
        StepStarted("research", 1, "openai/gpt-4o", 2.6),
        StepStarted("gaps", 1, MINI, 2.6),
        StepRetrying("research", 1, "rate limited (429)", 2.0),
        StepFinished(result("gaps", StepStatus.FAILED, attempts=1, error="bad request")),
        StepStarted("research", 2, "openai/gpt-4o", 4.6),
        StepFinished(result("research", attempts=2, duration_ms=4000, prompt_tokens=10)),
        StepFinished(result("remediation-plan", StepStatus.SKIPPED, error="gaps failed")),
        RunFinished(RunResult(run_id="r1", plan="audit", tenant="acme")),
    ]


def line_view_output(quiet: bool) -> str:
    out = Console(file=io.StringIO(), width=60)
    lines = view.LineView(out, quiet=quiet, now=FakeClock(0.0))
    with lines:
        for event in script():
            lines(event)
    assert isinstance(out.file, io.StringIO)
    return out.file.getvalue()


def test_line_view_prints_one_plain_line_per_change() -> None:
    assert line_view_output(quiet=False) == """\
[-/4] RUN    audit for acme: 4 steps, run r1
[-/4] START  scope (analyst, openai/gpt-4o-mini)
[1/4] OK     scope 2.1s 812 tok $0.0012 TRUNCATED at the token limit
[-/4] START  research (researcher, openai/gpt-4o)
[-/4] START  gaps (data_analyst, openai/gpt-4o-mini)
[-/4] RETRY  research attempt 1 failed: rate limited (429); waiting 2.0s
[2/4] FAIL   gaps after 1 attempt: bad request
[-/4] START  research attempt 2 (researcher, openai/gpt-4o)
[3/4] OK     research 4.0s 10 tok $0.0000 after 2 attempts
[4/4] SKIP   remediation-plan: gaps failed
"""


def test_quiet_line_view_prints_only_what_went_wrong() -> None:
    assert line_view_output(quiet=True) == """\
[2/4] FAIL   gaps after 1 attempt: bad request
[4/4] SKIP   remediation-plan: gaps failed
"""


def test_line_view_colours_only_a_terminal_and_respects_no_color(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    event = StepFinished(result("scope", attempts=1, duration_ms=10))

    def printed(out: Console) -> str:
        lines = view.LineView(out)
        lines(RunStarted("r1", "p", "t", STEPS[:1], 0.0))
        lines(event)
        assert isinstance(out.file, io.StringIO)
        return out.file.getvalue()

    assert "\x1b[" not in printed(Console(file=io.StringIO()))  # not a terminal: plain
    assert "\x1b[32m" in printed(Console(file=io.StringIO(), force_terminal=True))
    monkeypatch.setenv("NO_COLOR", "1")
    assert view.console().no_color
    assert "\x1b[32m" not in printed(Console(file=io.StringIO(), force_terminal=True))


def test_line_view_lines_are_not_wrapped_at_the_console_width() -> None:
    out = Console(file=io.StringIO(), width=40)
    lines = view.LineView(out)
    lines(RunStarted("r1", "p", "t", STEPS[:1], 0.0))
    lines(StepFinished(result("scope", StepStatus.FAILED, error="x" * 100, attempts=1)))
    assert isinstance(out.file, io.StringIO)
    assert out.file.getvalue().splitlines()[1] == "[1/1] FAIL   scope after 1 attempt: " + "x" * 100


# --- LiveView and make_view ----------------------------------------------------------------------


def test_make_view_picks_the_view() -> None:
    out = Console(file=io.StringIO())
    assert isinstance(view.make_view(True, False, out), view.LiveView)
    assert isinstance(view.make_view(False, False, out), view.LineView)
    quiet = view.make_view(True, True, out)
    assert isinstance(quiet, view.LineView) and quiet.quiet
    assert view.make_view(False, False).console.stderr


def test_live_view_callback_only_updates_state(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = view.run_tree

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(live_view, "run_tree", counting)
    live = view.LiveView(Console(file=io.StringIO(), force_terminal=True), now=FakeClock())
    for event in script():
        live(event)
    assert calls == []
    assert live.state.counts()[Phase.SKIPPED] == 1
    live.render()
    assert calls == [1]


def live_console() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=80, height=40,
                   color_system=None, _environ={})


def test_live_view_paints_on_enter_and_once_more_on_exit() -> None:
    out = live_console()
    clock = FakeClock(0.0)
    live = view.LiveView(out, now=clock, refresh_per_second=1)
    first = script()[0]
    assert isinstance(first, RunStarted)
    live.prepare(first)
    assert isinstance(out.file, io.StringIO)
    with live:
        painted = out.file.getvalue()
        assert "├── ○ scope" in painted and "starting…" in painted
        for event in script():
            live(event)
        clock.t = 9.0
    final = out.file.getvalue()[len(painted):]
    assert "4/4 done" in final and "– remediation-plan" in final
    assert not live.live.transient


def test_live_view_folds_to_the_screen_but_leaves_the_whole_tree_at_the_end() -> None:
    out = Console(file=io.StringIO(), force_terminal=True, width=80, height=10,
                  color_system=None, _environ={})
    clock = FakeClock(1.0)
    live = view.LiveView(out, now=clock, refresh_per_second=1)
    steps = tuple(StepInfo(f"s{i:02d}", "", "analyst", MINI, ()) for i in range(20))
    with live:
        live(RunStarted("r1", "p", "t", steps, 0.5))
        assert isinstance(out.file, io.StringIO)
        first = out.file.getvalue()
        assert "s05" in first and "s19" not in first and "more queued" in first
        for info in steps:
            live(StepFinished(result(info.step_id, attempts=1, duration_ms=100)))
        live(RunFinished(RunResult(run_id="r1", plan="p", tenant="t", success=True)))
    last = out.file.getvalue()[len(first):]
    assert all(f"✓ s{i:02d}" in last for i in range(20))


def test_live_view_leaves_no_tree_when_nothing_ran() -> None:
    live = view.LiveView(live_console(), now=FakeClock(), refresh_per_second=1)
    with pytest.raises(RuntimeError), live:
        live(script()[0])
        raise RuntimeError("missing API key")
    assert live.live.transient


# --- the plan views that were here before --------------------------------------------------------


def test_plan_views_still_work() -> None:
    from dworkers.plans.registry import plan_registry

    plan = plan_registry.get("compliance-audit")
    text = render(view.plan_tree(plan))
    assert text.splitlines()[0].startswith("compliance-audit — ")
    assert "├── scope-audit  analyst" in text
    chart = view.mermaid(plan)
    assert chart.startswith("flowchart TD\n") and "s_scope_audit --> s_analyze_gaps" in chart
