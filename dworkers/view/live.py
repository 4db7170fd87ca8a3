"""The live run display: the tree redrawn while a plan runs, one line per change elsewhere, the
summary at the end. Views are the engine's ``on_event`` callbacks: ``LiveView`` (the live tree,
on a terminal) or ``LineView`` (pipes, logs and ``--quiet``); ``make_view`` picks one, and
``print_summary`` ends the run. They draw ``RunState``; none of them schedules anything.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from types import TracebackType

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.text import Text
from rich.tree import Tree

from dworkers.approvals import WAITING_FOR_APPROVAL
from dworkers.events import Event, RunFinished, RunStarted, StepFinished
from dworkers.results import RunResult, StepStatus
from dworkers.text import cells, clean, crop, crop_left, fit, one_line
from dworkers.view import console
from dworkers.view.state import (
    Clock,
    Phase,
    RunState,
    StepState,
    fmt_cost,
    fmt_duration,
    fmt_tokens,
    line_for,
    plural,
)

# --- the live run tree -----------------------------------------------------------------------

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
SPINNER_FPS = 10
GUIDE = 4  # cells taken by the tree guide ("├── ") in front of each step
ROOT_LINES = 2

ICONS: dict[Phase, tuple[str, str]] = {
    Phase.WAITING: ("○", "dim"),
    Phase.RUNNING: (SPINNER[0], "cyan"),
    Phase.RETRYING: ("↻", "yellow"),
    Phase.SUCCEEDED: ("✓", "green"),
    Phase.FAILED: ("✗", "bold red"),
    Phase.SKIPPED: ("–", "dim"),
    Phase.CANCELLED: ("⊘", "yellow"),
    Phase.CACHED: ("↺", "blue"),
    Phase.HELD: ("⏸", "magenta"),
    Phase.REJECTED: ("⊗", "dim"),
}
_ID_STYLE = {
    Phase.WAITING: "dim",
    Phase.RUNNING: "bold",
    Phase.RETRYING: "bold",
    Phase.FAILED: "bold red",
    Phase.SKIPPED: "dim",
    Phase.CANCELLED: "dim",
    Phase.REJECTED: "dim",
}


def spinner_frame(now: float) -> str:
    return SPINNER[int(now * SPINNER_FPS) % len(SPINNER)]


class _Layout:
    """Column widths for one render: icon, id, role, elapsed, then the detail column."""

    def __init__(self, state: RunState, width: int) -> None:
        self.width = max(width - GUIDE, 20)
        ids = max(map(cells, state.steps), default=4)
        roles = max((cells(step.role) for step in state.steps.values()), default=0)
        self.role = roles if self.width >= 60 else 0
        self.elapsed = 6
        self.id = max(min(ids, self.width // 3), 8)
        fixed = 2 + self.id + 2 + (self.role + 2 if self.role else 0) + self.elapsed + 2
        self.detail = max(self.width - fixed, 0)
        self.second = self.width - 2  # a step's second line, indented under its id


def run_tree(
    state: RunState, width: int, height: int | None = None, *, now: float | None = None
) -> Tree:
    """The run as a tree: plan, tenant, models and totals at the root; one node per step in
    dependency order with its status, role, time and what it is doing.

    Every line fits ``width`` cells (cropped with '…', never wrapped). When ``height`` is given
    and the steps would not fit, secondary lines go first, then finished and far-off steps fold
    into counted lines, so a live display never scrolls. ``now`` defaults to the state's clock.
    """
    now = state.now() if now is None else now
    layout = _Layout(state, width)
    tree = Tree(_root_label(state, width, now), guide_style="dim")
    order = state.order()
    budget = None if height is None else max(height - ROOT_LINES, 1)
    if budget is None or len(order) <= budget:
        nodes = [_step_lines(state, state.steps[sid], layout, now) for sid in order]
        keep = set(range(len(nodes)))
        if budget is not None:  # second lines while they fit: failures first, previews last
            room = budget - len(nodes)
            seconds = sorted((i for i, lines in enumerate(nodes) if len(lines) > 1),
                             key=lambda i: (_SECOND_RANK[state.steps[order[i]].phase], i))
            keep = set(seconds[:room])
        for i, lines in enumerate(nodes):
            tree.add(_label(lines if i in keep else lines[:1]))
        return tree
    # too many steps for the height: only the steps that get a line are drawn at all
    shown, folds = _fold(state, order, budget)
    counted = dict.fromkeys(_FOLD_RANK, 0)
    for sid in shown:
        counted[_fold_group(state, state.steps[sid])] += 1
    labels = {"ok": (Phase.SUCCEEDED, "succeeded"), "active": (Phase.RUNNING, "running"),
              "failed": (Phase.FAILED, "failed"), "queued": (Phase.WAITING, "queued"),
              "waiting": (Phase.WAITING, "waiting"),
              "skipped": (Phase.SKIPPED, "skipped or cancelled")}

    def add_fold(group: str) -> None:
        if folds.get(group):
            phase, what = labels[group]
            more = "more " if counted[group] else ""
            tree.add(_fold_label(phase, f"{folds[group]:,} {more}{what}", layout, now))

    if len(folds) > budget:  # not even a line per group: one line of counts
        everything = " · ".join(f"{folds[g]:,} {labels[g][1].split()[0]}"
                                for g in _FOLD_ORDER if folds.get(g))
        tree.add(_fold_label(Phase.WAITING, everything, layout, now))
        return tree
    add_fold("ok")
    for sid in order:
        if sid in shown:
            tree.add(_label(_step_lines(state, state.steps[sid], layout, now)[:1]))
    for group in _FOLD_ORDER[1:]:
        add_fold(group)
    return tree


_SECOND_RANK = {Phase.FAILED: 0, Phase.RETRYING: 1, Phase.CANCELLED: 2, Phase.SKIPPED: 3,
                Phase.RUNNING: 4, Phase.WAITING: 5, Phase.SUCCEEDED: 5, Phase.CACHED: 5,
                Phase.HELD: 1, Phase.REJECTED: 3}
_FOLD_ORDER = ("ok", "active", "failed", "queued", "waiting", "skipped")  # top to bottom
_FOLD_RANK = {"active": 0, "failed": 1, "queued": 2, "waiting": 3, "skipped": 4, "ok": 5}
_FOLD_GROUP = {
    Phase.RUNNING: "active", Phase.RETRYING: "active", Phase.FAILED: "failed",
    Phase.WAITING: "waiting", Phase.SUCCEEDED: "ok", Phase.CACHED: "ok",
    Phase.SKIPPED: "skipped", Phase.CANCELLED: "skipped",
    Phase.HELD: "failed", Phase.REJECTED: "skipped",
}


def _fold_group(state: RunState, step: StepState) -> str:
    group = _FOLD_GROUP[step.phase]
    if group == "waiting" and not state.waiting_on(step.step_id):
        return "queued"
    return group


def _fold(state: RunState, order: list[str], budget: int) -> tuple[set[str], dict[str, int]]:
    """Which steps get a line of their own (running, failed, next up first, in that order),
    and how many of each group fold into a counted line."""
    groups = [_fold_group(state, state.steps[sid]) for sid in order]
    ranked = sorted(range(len(order)), key=lambda i: (_FOLD_RANK[groups[i]], i))
    for folded_groups in range(len(_FOLD_RANK) + 1):
        keep = max(budget - folded_groups, 0)
        hidden: dict[str, int] = {}
        for i in ranked[keep:]:
            hidden[groups[i]] = hidden.get(groups[i], 0) + 1
        if len(hidden) <= folded_groups:
            break
    return {order[i] for i in ranked[:keep]}, hidden


def _fold_label(phase: Phase, text: str, layout: _Layout, now: float) -> Text:
    icon, style = ICONS[phase]
    if phase is Phase.RUNNING:
        icon = spinner_frame(now)
    label = Text(no_wrap=True, overflow="ellipsis")
    label.append(icon + " ", style=style)
    label.append(crop(text, layout.width - 2), style="dim")
    return label


def _label(lines: list[Text]) -> Text:
    label = Text("\n", no_wrap=True, overflow="ellipsis").join(lines)
    label.no_wrap = True
    label.overflow = "ellipsis"
    return label


def _root_label(state: RunState, width: int, now: float) -> Text:
    if state.started_at is not None:
        end = state.finished_at if state.finished_at is not None else now
        elapsed = max(0.0, end - state.started_at)
        stats = " · ".join([f"{state.done}/{state.total} done", fmt_duration(elapsed),
                            fmt_tokens(state.tokens), state.cost])
    else:
        stats = "starting…"
    name = one_line(state.plan) or "run"
    left = Text(no_wrap=True, overflow="ellipsis")
    room = max(width - cells(stats) - 2, 1)
    left.append(crop(name, room), style="bold")
    if state.tenant and cells(name) + 3 < room:
        left.append(crop(f" · {one_line(state.tenant)}", room - cells(name)), style="dim")
    gap = max(width - left.cell_len - cells(stats), 1)
    line = Text.assemble(left, " " * gap, (stats, ""), no_wrap=True, overflow="ellipsis")
    line.truncate(width, overflow="ellipsis")
    models = state.models
    what = one_line(f"model {models[0]}" if len(models) == 1
                    else f"models {', '.join(models)}" if models else "")
    if not what:
        return line
    line.append("\n")
    line.append(crop(what, width), style="dim")
    return line


def _step_lines(state: RunState, step: StepState, layout: _Layout, now: float) -> list[Text]:
    """One or two lines: the step's row, then (when there is one) its preview or reason."""
    phase = step.phase
    icon, icon_style = ICONS[phase]
    if phase is Phase.RUNNING:
        icon = spinner_frame(now)
    row = Text(no_wrap=True, overflow="ellipsis")
    row.append(icon + " ", style=icon_style)
    row.append(fit(one_line(step.step_id), layout.id), style=_ID_STYLE.get(phase, ""))
    if layout.role:
        row.append("  ")
        row.append(fit(one_line(step.role), layout.role), style="magenta")
    elapsed = step.elapsed(now)
    row.append("  ")
    row.append((fmt_duration(elapsed) if elapsed is not None else "").rjust(layout.elapsed))
    row.append("  ")
    room = layout.detail
    if elapsed is None:  # nothing in the time column: the detail may start there
        row.right_crop(layout.elapsed + 2)
        room += layout.elapsed + 2
    second: tuple[str, str] | None = None
    detail = Text()

    def reason_inline_or_below(label: str, reason: str, style: str) -> None:
        nonlocal second
        inline = reason if reason.lower().startswith(label) else f"{label}: {reason}"
        if cells(inline) <= room:
            detail.append(inline, style=style)
        else:
            detail.append(label, style=style)
            second = (reason, style)

    if phase is Phase.WAITING:
        detail.append(_waits_on(state.waiting_on(step.step_id), room), style="dim")
    elif phase is Phase.RUNNING:
        detail.append(fmt_tokens(step.tokens).rjust(10), style="dim")
        if step.attempt > 1:
            detail.append(f"  attempt {step.attempt}", style="yellow")
        if step.preview:
            second = (step.preview, "dim italic")
    elif phase is Phase.RETRYING:
        detail.append(f"retry {step.attempt + 1} in {fmt_duration(step.retry_in(now))}",
                      style="yellow")
        second = (f"attempt {step.attempt} failed: {step.retry_reason or 'unknown error'}",
                  "yellow")
    elif phase is Phase.SUCCEEDED:
        detail.append(fmt_tokens(step.total_tokens).rjust(10), style="dim")
        detail.append("  ")
        detail.append(step.cost, style="dim")
        if step.attempt > 1:
            detail.append(f"  {step.attempt} tries", style="yellow")
        if step.result is not None and step.result.truncated:
            detail.append("  truncated", style="yellow")
            second = ("cut off at the model's token limit", "yellow")
    elif phase is Phase.CACHED:
        detail.append("cached", style="blue")
        detail.append(" (reused earlier result)", style="dim")
    elif phase is Phase.FAILED:
        attempts = step.result.attempts if step.result else step.attempt
        detail.append(f"failed after {plural(attempts, 'attempt')}" if attempts > 1
                      else "failed", style="red")
        second = (step.reason or "no reason given", "red")
    elif phase is Phase.SKIPPED:
        reason_inline_or_below("skipped", step.reason or "no reason given", "dim")
    elif phase is Phase.CANCELLED:
        reason_inline_or_below("cancelled", step.reason or "no reason given", "yellow")
    elif phase is Phase.HELD:
        reason_inline_or_below("waiting", step.reason or "waiting for approval", "magenta")
    elif phase is Phase.REJECTED:
        reason_inline_or_below("rejected", step.reason or "rejected", "dim")
    detail.truncate(room, overflow="ellipsis")
    row.append_text(detail)
    row.rstrip()
    lines = [row]
    if second is not None:
        text, style = second
        fitted = crop_left(text, layout.second) if phase is Phase.RUNNING else crop(
            text, layout.second)
        lines.append(Text.assemble("  ", (fitted, style), no_wrap=True, overflow="ellipsis"))
    return lines


def _waits_on(deps: list[str], room: int) -> str:
    """'waits on a, b'; when that is too long, 'waits on a +2'; 'queued' when nothing is left."""
    if not deps:
        return "queued"
    for shown in range(len(deps), 0, -1):
        text = "waits on " + ", ".join(deps[:shown])
        if shown < len(deps):
            text += f" +{len(deps) - shown}"
        if cells(text) <= room:
            return text
    return crop(f"waits on {deps[0]}" + (f" +{len(deps) - 1}" if len(deps) > 1 else ""), room)


# --- the end of a run -------------------------------------------------------------------------


def summary(
    result: RunResult, out_dir: str | None = None, unsaved: Sequence[str] = ()
) -> RenderableType:
    """How the run ended: outcome, counts per status, time, tokens and cost, each failed step's
    full reason (the tree crops it), what could not be saved, and where the outputs are. Print
    it with ``print_summary`` so that a long outputs path stays one copyable line.

    A run whose files or history could not all be written is not reported as finished."""
    cached = sum(1 for r in result.outputs.values() if r.cached)
    if result.interrupted:
        icon, style, verb = "⊘", "yellow", "interrupted"
    elif result.waiting and not result.failed:  # a failure is reported first
        icon, style, verb = "⏸", "magenta", "is waiting for approval"
    elif result.success and unsaved:
        icon, style, verb = "✗", "red", "ran, but not everything was saved"
    elif result.success:
        icon, style, verb = "✓", "green", "finished"
    else:
        icon, style, verb = "✗", "red", "failed"
    counts = ", ".join(f"{n} {status.value}" for status in StepStatus
                       if (n := result.count(status))) or "no steps"
    if cached:
        counts += f" ({cached} cached)"
    head = Text()
    head.append(icon + " ", style=style)
    head.append(one_line(result.plan), style="bold")
    head.append(f" {verb}", style=style)
    head.append(f": {counts}")
    tokens = f"{result.total_tokens:,} tokens" + (" (some estimated)" if result.estimated
                                                   else "")
    facts = [fmt_duration(result.total_duration_ms / 1000), tokens,
             fmt_cost(result.cost_usd, result.cost_known, result.estimated)]
    parts: list[RenderableType] = [head, Text("  " + " · ".join(facts), style="dim")]
    for step in result.outputs.values():
        if step.status is StepStatus.FAILED:
            parts.append(_Hanging(
                Text.assemble("  ", ("✗ ", "red"), (one_line(step.step_id) + ": ", "bold")),
                Text(one_line(step.error or "failed")),
            ))
        elif step.truncated:
            parts.append(_Hanging(
                Text.assemble("  ", ("⚠ ", "yellow"), (one_line(step.step_id) + ": ", "bold")),
                Text("truncated: the answer was cut off at the model's token limit"),
            ))
    for what in unsaved:
        parts.append(_Hanging(Text.assemble("  ", ("✗ ", "red"), ("not saved: ", "bold red")),
                              Text(one_line(what))))
    if out_dir:
        label = "  outputs (incomplete): " if unsaved else "  outputs: "
        parts.append(_Whole(Text.assemble((label, "dim"), (clean(out_dir), "bold"))))
    gates = [r.step_id for r in result.outputs.values() if r.status is StepStatus.WAITING
             and (r.error or "").startswith(WAITING_FOR_APPROVAL + ":")]
    if gates and not result.interrupted:
        parts.append(_Whole(Text.assemble(("  decide: ", "dim"), (
            f"dworkers approve {result.run_id} {gates[0]}", "bold"), (
            f"  (or reject; waiting: {', '.join(gates)})", "dim"))))
    if result.interrupted or not result.success:
        parts.append(_Whole(Text.assemble(("  finish it: ", "dim"),
                                          (f"dworkers run --resume {result.run_id}", "bold"))))
    return Group(*parts)


def print_summary(
    out: Console, result: RunResult, out_dir: str | None = None, unsaved: Sequence[str] = ()
) -> None:
    """Print ``summary``: long lines (the outputs path) are left whole for the terminal to wrap,
    so the path stays one line when copied."""
    out.print(summary(result, out_dir, unsaved), soft_wrap=True)


class _Whole:
    """A line that is never cropped: one unbroken line when printed with ``soft_wrap`` (see
    ``print_summary``), else folded onto as many lines as it takes."""

    def __init__(self, text: Text) -> None:
        self.text = text

    def __rich_console__(self, out: Console, options: ConsoleOptions) -> RenderResult:
        text = self.text.copy()
        text.overflow = "ignore" if options.no_wrap else "fold"
        yield text


class _Hanging:
    """``head`` then ``body``, the body wrapped with a hanging indent (and no padding)."""

    def __init__(self, head: Text, body: Text) -> None:
        self.head = head
        self.body = body

    def __rich_console__(self, out: Console, options: ConsoleOptions) -> RenderResult:
        indent = self.head.cell_len
        if indent > options.max_width // 2:
            yield Text.assemble(self.head, self.body)
            return
        lines = self.body.wrap(out, options.max_width - indent, overflow="fold")
        for n, line in enumerate(lines):
            line.rstrip()
            yield Text.assemble(self.head if n == 0 else " " * indent, line)


# --- views: the engine's on_event callbacks ----------------------------------------------------


class RunView:
    """A context manager and ``on_event`` callback that shows a run as it goes."""

    def __init__(self, out: Console | None = None, *, now: Clock = time.monotonic) -> None:
        self.console = out if out is not None else console()
        self.state = RunState(now=now)

    def prepare(self, event: RunStarted) -> None:
        """Show the run's steps before the engine starts (without starting the clock)."""
        self.state.prepare(event)

    def __call__(self, event: Event) -> None:
        self.state.apply(event)

    def __enter__(self) -> RunView:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class LiveView(RunView):
    """The live tree on a terminal (stderr). Events only update the state; rich's refresh
    thread redraws about eight times a second, and once more on exit."""

    FINAL_FULL_TREE_MAX = 200  # up to this many steps, the last paint (left on screen) has all

    def __init__(
        self,
        out: Console | None = None,
        *,
        now: Clock = time.monotonic,
        refresh_per_second: float = 8,
    ) -> None:
        super().__init__(out, now=now)
        self._lock = threading.Lock()
        self._final = False
        self.live = Live(
            console=self.console,
            get_renderable=self.render,
            auto_refresh=True,
            refresh_per_second=refresh_per_second,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=True,
        )

    def render(self) -> RenderableType:
        width, height = self.console.size
        with self._lock:
            if not self.state.steps:
                return Group()
            if self._final and self.state.total <= self.FINAL_FULL_TREE_MAX:
                return run_tree(self.state, width)
            return run_tree(self.state, width, max(height - 1, ROOT_LINES + 1))

    def prepare(self, event: RunStarted) -> None:
        with self._lock:
            self.state.prepare(event)
        if self.live.is_started:
            self.live.refresh()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.state.apply(event)
        if isinstance(event, RunStarted) and self.live.is_started:
            self.live.refresh()  # once per run: the steps appear without waiting for a tick

    def __enter__(self) -> LiveView:
        self.live.start(refresh=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.state.finished and not any(
            step.phase is not Phase.WAITING for step in self.state.steps.values()
        ):
            # nothing ran (e.g. a missing API key found before the first call): leave no tree
            self.live.transient = True
        self._final = True
        self.live.stop()


_VERB_STYLE = {
    "RUN": "bold", "START": "cyan", "RETRY": "yellow", "OK": "green", "CACHED": "blue",
    "FAIL": "bold red", "SKIP": "dim", "CANCEL": "yellow",
}


class LineView(RunView):
    """One line per state change (see ``state.line_for``), for logs, pipes and dumb terminals.

    ``quiet`` keeps only failures, skips and cancellations; either way the caller prints
    ``summary(result)`` at the end.
    """

    def __init__(
        self, out: Console | None = None, *, quiet: bool = False, now: Clock = time.monotonic
    ) -> None:
        super().__init__(out, now=now)
        self.quiet = quiet
        self._announced: set[str] = set()

    def __call__(self, event: Event) -> None:
        self.state.apply(event)
        if isinstance(event, RunStarted):
            if event.run_id in self._announced:
                return  # the same run announced twice (by the caller, then the engine)
            self._announced.add(event.run_id)
        if self.quiet and not (
            isinstance(event, StepFinished)
            and not event.result.succeeded
            and not event.result.cached
        ):
            return
        line = line_for(self.state, event)
        if line is not None:
            self.console.print(_styled_line(line), soft_wrap=True)


def _styled_line(line: str) -> Text:
    line = clean(line).replace("\n", " ").replace("\t", " ")
    text = Text(line)
    count_end = line.find("] ") + 1
    if count_end > 0:
        text.stylize("dim", 0, count_end)
        verb = line[count_end + 1:].split(" ", 1)[0]
        text.stylize(_VERB_STYLE.get(verb, ""), count_end + 1, count_end + 1 + len(verb))
    return text


def make_view(interactive: bool, quiet: bool, console: Console | None = None) -> RunView:
    """The live tree for a terminal, else one line per state change; ``quiet`` wins and keeps
    only failures, skips and cancellations."""
    if quiet:
        return LineView(console, quiet=True)
    if interactive:
        return LiveView(console)
    return LineView(console)


def recorded_run(events: Sequence[Event], width: int) -> Tree:
    """A recorded run (its events replayed, see ``History.replay``), drawn like the live tree
    at its end."""
    end = 0.0
    state = RunState(now=lambda: end)  # the recorded end, not the present
    for event in events:
        if isinstance(event, RunStarted):
            end = event.started_at
        elif isinstance(event, RunFinished):
            end = event.at
        state.apply(event)
    return run_tree(state, width, now=end)
