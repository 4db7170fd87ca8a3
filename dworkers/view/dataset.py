"""How a dataset run looks: a progress display on a terminal (not a tree of every row), one line
per finished row elsewhere, the summary at the end, and recorded dataset runs for ``show``.

Views are the engine's ``on_event`` callbacks; they draw a ``DatasetState`` and schedule nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Protocol

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from dworkers.events import Event, ExecutorNotice, RowFinished, RunStarted
from dworkers.results import DatasetResult, RowResult, RowStatus
from dworkers.text import crop, one_line
from dworkers.view import console, print_error
from dworkers.view.dataset_state import DatasetState
from dworkers.view.state import Clock, fmt_cost, fmt_duration


class RecordedRow(Protocol):
    """What ``show`` draws of a recorded row (the history's row records have it)."""

    @property
    def key(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def line(self) -> int | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def cost_usd(self) -> float: ...
    @property
    def cost_known(self) -> bool: ...
    @property
    def estimated(self) -> bool: ...
    @property
    def inputs(self) -> dict[str, str]: ...


class RecordedStep(Protocol):
    @property
    def step_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def cached(self) -> bool: ...
    @property
    def truncated(self) -> bool: ...
    @property
    def error(self) -> str | None: ...

ICONS: dict[RowStatus, tuple[str, str]] = {
    RowStatus.SUCCEEDED: ("✓", "green"),
    RowStatus.FAILED: ("✗", "bold red"),
    RowStatus.SKIPPED: ("–", "dim"),
    RowStatus.CANCELLED: ("⊘", "yellow"),
    RowStatus.WAITING: ("⏸", "magenta"),
    RowStatus.REJECTED: ("⊗", "dim"),
}
LINE_WIDTH = 160


def _qty(n: float) -> str:
    return f"{n:,.0f}"


def _parts_line(*parts: str | tuple[str, str], width: int) -> Text:
    text = Text.assemble(*parts, no_wrap=True, overflow="ellipsis")
    text.truncate(width, overflow="ellipsis")
    return text


def progress(state: DatasetState, width: int) -> RenderableType:
    """The progress display: bar, row counts, pace against the limits, cost, ETA, failures."""
    lines: list[RenderableType] = []
    total = state.total
    head = f"{state.plan} for {state.tenant}" if state.plan else "dataset run"
    rows = f"{_qty(total)} rows" if total is not None else "rows"
    lines.append(_parts_line((head, "bold"), f" · {rows}",
                       (f" · run {state.run_id}" if state.run_id else "", "dim"), width=width))
    if state.notice:  # Ray starting its workers: seconds pass before the first row moves
        waited = state.now() - state.notice_at if state.notice_at is not None else 0.0
        lines.append(_parts_line((f"{state.notice} {fmt_duration(waited)}", "dim"), width=width))
    done = state.done
    tail = (f" {_qty(done)}/{_qty(total)} rows {done * 100 // max(total, 1):>3}%"
            if total is not None else f" {_qty(done)} rows")
    timing = f" · {fmt_duration(state.elapsed())}"
    eta = state.eta()
    if eta is not None:
        timing += f" · ETA {fmt_duration(eta)}"
    if total is not None:
        bar_width = max(min(width - len(tail) - len(timing) - 1, 60), 10)
        bar = ProgressBar(total=max(total, 1), completed=done, width=bar_width)
        grid = Table.grid(padding=0)
        grid.add_row(bar, _parts_line(tail + timing, width=max(width - bar_width, 0)))
        lines.append(grid)
    else:
        lines.append(_parts_line(tail.strip() + timing, width=width))
    counts: list[str | tuple[str, str]] = []
    for status in (RowStatus.SUCCEEDED, RowStatus.FAILED):
        icon, style = ICONS[status]
        counts += [(f"{icon} {_qty(state.count(status))} {status.value}", style), "  "]
    counts += [(f"⠿ {_qty(len(state.running))} running", "cyan"), "  "]
    left = state.left
    if left is not None:
        counts += [(f"○ {_qty(left)} left", "dim"), "  "]
    for status in (RowStatus.WAITING, RowStatus.SKIPPED, RowStatus.REJECTED,
                   RowStatus.CANCELLED):
        if state.count(status):
            icon, style = ICONS[status]
            counts += [(f"{icon} {_qty(state.count(status))} {status.value}", style), "  "]
    lines.append(_parts_line(*counts[:-1], width=width))
    pace, cost = _pace_parts(state)
    if len("".join(p if isinstance(p, str) else p[0] for p in [*pace, *cost])) <= width:
        lines.append(_parts_line(*pace, *cost, width=width))
    else:  # a narrow terminal: cost on a line of its own rather than cut off
        lines.append(_parts_line(*pace, width=width))
        lines.append(_parts_line(*cost[1:], width=width))
    if state.failures:
        lines.append(_parts_line(("last failures:", "bold red"), width=width))
        for failure in state.failures:
            lines.append(_parts_line("  ", (one_line(failure.key), "bold"), " — ", failure.error,
                               width=width))
    return Group(*lines)


def _pace_parts(
    state: DatasetState,
) -> tuple[list[str | tuple[str, str]], list[str | tuple[str, str]]]:
    calls, tokens = state.per_minute()
    rpm, tpm = state.limits()
    parts: list[str | tuple[str, str]] = [f"calls {_qty(calls)}/min"]
    if rpm or not state.offline:
        parts.append((f" of {_qty(rpm)}" if rpm else " (limit not known yet)", "dim"))
    parts.append(f" · tokens {_qty(tokens)}/min")
    parts.append((f" of {_qty(tpm)}" if tpm else "", "dim"))
    binding = state.binding()
    if binding:
        parts.append((f" · held to {binding}", "yellow"))
    if state.cached:
        parts.append((f" · {_qty(state.cached)} cached", "blue"))
    shown_cost = fmt_cost(state.cost_usd, state.cost_known)
    cost: list[str | tuple[str, str]] = [" · ", shown_cost if shown_cost == "cost unknown"
                                         else f"cost {shown_cost}"]
    if state.budget_usd is not None:
        cost.append((f" of {fmt_cost(state.budget_usd)} budget", "dim"))
    return parts, cost


def row_line(row: RowResult, done: int, total: int | None) -> Text:
    """One line for a finished row: ``[12/100] ✓ acme  3 steps, 1.2s, $0.0012``."""
    icon, style = ICONS[row.status]
    count = f"[{done}/{total if total is not None else '?'}]"
    text = Text.assemble((count, "dim"), " ", (f"{icon} {row.status.value:<9}", style), " ",
                         (one_line(row.key), "bold"))
    if row.status is RowStatus.SUCCEEDED:
        cached = sum(1 for step in row.outputs.values() if step.cached)
        details = [f"{len(row.outputs)} steps", fmt_duration(row.duration_ms / 1000),
                   fmt_cost(row.cost_usd, row.cost_known)]
        if cached:
            details.append(f"{cached} cached")
        text.append("  " + ", ".join(details), style="dim")
    elif row.error:
        text.append(": " + one_line(row.error))
    text.truncate(LINE_WIDTH, overflow="ellipsis")
    return text


def dataset_run_summary(result: DatasetResult, out_dir: str | None = None,
                        gates: Sequence[str] = ()) -> Text:
    """The end of a dataset run: rows by status, tokens, cost (never $0 for one that could not
    be known), time, where the files are; with rows waiting at one of ``gates`` (the plan's
    gated steps), how to decide them — even when other rows failed."""
    counts = result.counts
    held = result.waiting and not result.failed  # a failure is reported first
    status = ("interrupted" if result.interrupted else "succeeded" if result.success
              else "is waiting for approval" if held else "finished with failures")
    style = ("yellow" if result.interrupted else "green" if result.success
             else "magenta" if held else "bold red")
    text = Text.assemble((f"Dataset run {status}", style), f": {result.rows:,} rows — ")
    text.append(", ".join(f"{counts.get(s, 0):,} {s.value}" for s in RowStatus
                          if counts.get(s, 0) or s is RowStatus.SUCCEEDED))
    calls, tokens = result.calls, result.prompt_tokens + result.completion_tokens
    text.append(f" · {calls:,} call{'s' * (calls != 1)} · {tokens:,}"
                f" tokens · {fmt_cost(result.cost_usd, result.cost_known)} · "
                f"{fmt_duration(result.total_duration_ms / 1000)}")
    if result.rate_limited:
        text.append(f" · {result.rate_limited:,} answered 429", style="yellow")
    if result.startup_ms is not None:
        text.append(f" · cluster start-up {fmt_duration(result.startup_ms / 1000)}", style="dim")
    if result.stop_reason:
        text.append(f"\nstopped: {result.stop_reason}", style="yellow")
    if out_dir:
        text.append(f"\noutputs: {out_dir}", style="dim")
    waiting = counts.get(RowStatus.WAITING, 0)
    if result.waiting and gates:
        more = f"; gates: {', '.join(gates)}" if len(gates) > 1 else ""
        verb = "row waits" if waiting == 1 else "rows wait"
        text.append(f"\n{waiting:,} {verb} for approval — decide: ",
                    style="magenta")
        text.append(f"dworkers approve {result.run_id} {gates[0]} --all-rows", style="bold")
        text.append(f"  (or --rows KEY,...; or reject{more}; see them: dworkers show "
                    f"{result.run_id})", style="dim")
    return text


def print_dataset_summary(out: Console, result: DatasetResult, out_dir: str,
                          unsaved: Sequence[str], gates: Sequence[str] = ()) -> None:
    """Print ``dataset_run_summary``, then what could not be saved (the run is not done
    without it)."""
    out.print(dataset_run_summary(result, out_dir, gates), soft_wrap=True)
    for problem in unsaved:
        print_error(out, f"not saved: {problem}")


# --- views: the engine's on_event callbacks ----------------------------------------------------


class DatasetView:
    """A context manager and ``on_event`` callback that shows a dataset run as it goes."""

    def __init__(self, out: Console | None = None, *, total: int | None = None,
                 budget_usd: float | None = None, now: Clock = time.monotonic) -> None:
        self.console = out if out is not None else console()
        self.state = DatasetState(total=total, budget_usd=budget_usd, now=now)

    def prepare(self, event: RunStarted) -> None:
        self.state.prepare(event)

    def __call__(self, event: Event) -> None:
        self.state.apply(event)

    def __enter__(self) -> DatasetView:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None


class DatasetLiveView(DatasetView):
    """The progress display on a terminal (stderr): events update the state under a lock;
    rich's refresh thread redraws a few times a second, and once more on exit."""

    def __init__(self, out: Console | None = None, *, total: int | None = None,
                 budget_usd: float | None = None, now: Clock = time.monotonic,
                 refresh_per_second: float = 4) -> None:
        super().__init__(out, total=total, budget_usd=budget_usd, now=now)
        self._lock = threading.Lock()
        self.live = Live(console=self.console, get_renderable=self.render, auto_refresh=True,
                         refresh_per_second=refresh_per_second, transient=False,
                         redirect_stdout=False, redirect_stderr=True)

    def render(self) -> RenderableType:
        with self._lock:
            return progress(self.state, self.console.width)

    def prepare(self, event: RunStarted) -> None:
        with self._lock:
            self.state.prepare(event)

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.state.apply(event)

    def __enter__(self) -> DatasetLiveView:
        self.live.start(refresh=True)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.state.started_at is None:
            self.live.transient = True  # nothing ran (preflight failed): leave no display
        self.live.stop()


class DatasetLineView(DatasetView):
    """One line per finished row, for pipes and logs; ``quiet`` keeps only rows that did not
    succeed. Either way the caller prints ``dataset_run_summary`` at the end."""

    def __init__(self, out: Console | None = None, *, total: int | None = None,
                 budget_usd: float | None = None, quiet: bool = False,
                 now: Clock = time.monotonic) -> None:
        super().__init__(out, total=total, budget_usd=budget_usd, now=now)
        self.quiet = quiet

    def __call__(self, event: Event) -> None:
        self.state.apply(event)
        if isinstance(event, ExecutorNotice) and event.text and not self.quiet:
            self.console.print(Text(one_line(event.text), style="dim"), soft_wrap=True)
        if isinstance(event, RowFinished):
            row = event.result
            if self.quiet and row.status is RowStatus.SUCCEEDED:
                return
            self.console.print(row_line(row, self.state.done, self.state.total), soft_wrap=True)


def make_dataset_view(*, interactive: bool, quiet: bool, out: Console | None = None,
                      total: int | None = None, budget_usd: float | None = None) -> DatasetView:
    """The progress display on a terminal, else one line per row (``quiet``: failures only)."""
    if interactive and not quiet:
        return DatasetLiveView(out, total=total, budget_usd=budget_usd)
    return DatasetLineView(out, total=total, budget_usd=budget_usd, quiet=quiet)


# --- recorded dataset runs (``show``) ------------------------------------------------------------


def recorded_rows(counts: Mapping[str, int], failures: Sequence[RecordedRow],
                  width: int) -> Text:
    """A recorded dataset run's rows: counts by status and the rows that did not succeed."""
    total = sum(counts.values())
    text = Text(f"rows: {total:,} — ", no_wrap=True)
    text.append(", ".join(f"{n:,} {status}" for status, n in counts.items() if n))
    if failures:
        text.append("\nrows that did not succeed:", style="bold")
        for row in failures:
            error = one_line(row.error or row.status)
            line = f"\n  {one_line(row.key)}  {row.status}: "
            text.append(line + crop(error, max(width - len(line), 20)))
    return text


def row_details(row: RecordedRow, steps: Sequence[RecordedStep]) -> Text:
    """One recorded row: its status, inputs and each step's status (outputs printed after)."""
    known = {status.value: status for status in RowStatus}
    icon, style = ICONS[known[row.status]] if row.status in known else ("○", "dim")
    text = Text.assemble((f"{icon} row {one_line(row.key)}", style), f" ({row.status})")
    if row.line is not None:
        text.append(f" · line {row.line}", style="dim")
    text.append(f" · {fmt_cost(row.cost_usd, row.cost_known, row.estimated)}", style="dim")
    if row.error:
        text.append(f"\nerror: {one_line(row.error)}", style="red")
    for name, value in row.inputs.items():
        text.append(f"\n{one_line(name)}: {crop(one_line(value), 200)}", style="dim")
    for step in steps:
        mark = "↺ cached" if step.cached else step.status
        text.append(f"\n  {step.step_id}: {mark}")
        if step.truncated:
            text.append(" (truncated)", style="yellow")
        if step.error:
            text.append(f" — {one_line(step.error)}", style="red")
    return text


__all__ = [
    "DatasetLineView",
    "DatasetLiveView",
    "DatasetView",
    "dataset_run_summary",
    "make_dataset_view",
    "print_dataset_summary",
    "progress",
    "row_line",
]
