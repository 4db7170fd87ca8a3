"""How plans, problems and runs look on a terminal. This package is the only place that
imports rich.

This module holds what every command needs and loads fast: consoles, problems, the plan list and
tree, the run list. The live run display (``LiveView``, ``LineView``, ``run_tree``, ...) lives in
``dworkers.view.live`` and is loaded on first use, so ``dworkers list`` does not pay for it.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from dworkers.errors import Problem
from dworkers.text import cells, clean, fit, fit_right, one_line

if TYPE_CHECKING:
    from dworkers.catalog import PlanSummary
    from dworkers.plans.base import BasePlan, PlanStep
    from dworkers.results import RunSummary
    from dworkers.view.live import (
        LineView as LineView,
        LiveView as LiveView,
        RunView as RunView,
        make_view as make_view,
        print_summary as print_summary,
        recorded_run as recorded_run,
        run_tree as run_tree,
        spinner_frame as spinner_frame,
        summary as summary,
    )

_LIVE = frozenset({"LineView", "LiveView", "RunView", "make_view",
                   "print_summary", "recorded_run", "run_tree", "spinner_frame", "summary"})


def __getattr__(name: str) -> Any:
    if name in _LIVE:
        return getattr(importlib.import_module("dworkers.view.live"), name)
    raise AttributeError(f"module 'dworkers.view' has no attribute {name!r}")


def console(*, stderr: bool = True, width: int | None = None) -> Console:
    """A console for human output (stderr by default); rich honours NO_COLOR and TERM=dumb.

    Output asked for on a closed standard output is an error, not silence."""
    if not stderr and sys.stdout is None:
        raise OSError(errno.EBADF, "standard output is closed")
    return Console(stderr=stderr, width=width, highlight=False, soft_wrap=False)


def write_stdout(text: str, err: Console | None = None) -> bool:
    """Write ``text`` to standard output; when that is closed or full, say so on ``err`` rather
    than raise, and return False."""
    try:
        if sys.stdout is None:
            raise OSError(errno.EBADF, "standard output is closed")
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as exc:
        print_error(err or console(), f"cannot write to standard output: {exc.strerror or exc}")
        discard_stdout()
        return False
    return True


def discard_stdout() -> None:
    """Point standard output at the null device, so that the interpreter's own flush at exit
    cannot fail again with a traceback."""
    with contextlib.suppress(OSError, ValueError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    with contextlib.suppress(OSError, ValueError):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives until the process ends


def print_problems(out: Console, problems: Iterable[Problem]) -> None:
    for problem in problems:
        line = Text()
        line.append(clean(problem.location), style="bold")
        line.append(": ")
        line.append(clean(problem.message), style="red")
        if problem.hint:
            line.append(" — ")
            line.append(clean(problem.hint), style="cyan")
        out.print(line, soft_wrap=True)


def print_error(out: Console, message: str) -> None:
    out.print(Text.assemble(("error", "bold red"), ": ", clean(message)), soft_wrap=True)


def print_note(out: Console, message: str) -> None:
    out.print(Text.assemble(("note", "bold yellow"), ": ", clean(message)), soft_wrap=True)


def print_ok(out: Console, message: str) -> None:
    out.print(Text.assemble(("✓ ", "green"), clean(message)), soft_wrap=True)


def plan_table(plans: Sequence[PlanSummary], width: int) -> Text:
    """One line per plan; the description takes what is left of the width and is cut with '…'."""
    rows = [
        tuple(one_line(cell) for cell in (
            plan.name,
            str(plan.steps),
            ", ".join(plan.required_inputs) or "-",
            source_label(plan.origin, plan.path),
            plan.description,
        ))
        for plan in plans
    ]
    header = ("PLAN", "STEPS", "INPUTS", "SOURCE", "DESCRIPTION")
    widths = [max(cells(row[i]) for row in [header, *rows]) for i in range(4)]
    widths[2] = min(widths[2], 28)
    widths[3] = min(widths[3], 36)
    text = Text(no_wrap=True, overflow="ellipsis")
    for n, row in enumerate([header, *rows]):
        columns = [fit(row[i], widths[i]) for i in range(4)]
        columns[1] = fit_right(row[1], widths[1])
        line = "  ".join(columns) + "  "
        line += fit(row[4], max(width - cells(line), 10))
        text.append(line.rstrip() + "\n", style="bold" if n == 0 else "")
    text.rstrip()
    return text


def tenant_table(rows: Sequence[dict[str, Any]]) -> Text:
    header = {"id": "TENANT", "name": "NAME", "default_model": "DEFAULT MODEL", "source": "SOURCE"}
    keys = list(header)
    shown = [{k: one_line(str(row[k])) for k in keys} for row in [header, *rows]]
    widths = {k: max(cells(row[k]) for row in shown) for k in keys}
    text = Text(no_wrap=True)
    for n, row in enumerate(shown):
        line = "  ".join(fit(row[k], widths[k]) for k in keys).rstrip()
        text.append(line + "\n", style="bold" if n == 0 else "")
    text.rstrip()
    return text


def source_label(origin: str, path: str | os.PathLike[str] | None) -> str:
    """Where a plan came from: "built-in", or its file relative to the current directory."""
    if path is None or origin == "built-in":
        return origin
    try:
        return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)
    except ValueError:  # another drive (Windows)
        return str(path)


def plan_tree(plan: BasePlan) -> Tree:
    """The plan as a tree: its inputs (with their descriptions; files marked), then the steps
    in dependency order with role and what each waits for, and below a step what sets it
    apart: the fields of a typed answer, its ``when:``, its approval gate."""
    from dworkers import dag

    head = Text.assemble((one_line(plan.name), "bold"))
    if plan.description:
        head.append(f" — {one_line(plan.description)}")
    inputs = input_lines(plan)
    if len(inputs) <= 1 or all(" " not in line for line in inputs):  # one line says it all
        head.append("\ninputs: " + (", ".join(inputs) or "none"), style="dim")
    else:
        head.append("\ninputs:" + "".join(f"\n  {line}" for line in inputs), style="dim")
    root = Tree(head)
    for step_id in dag.topological_order(plan.graph):
        step = plan.get_step(step_id)
        label = Text.assemble((one_line(step.step_id), "bold"), "  ",
                              (step.worker_role.value, "magenta"))
        if step.depends_on:
            label.append("  ← " + ", ".join(map(one_line, step.depends_on)), style="dim")
        for line, style in step_notes(step):
            label.append("\n" + line, style=style)
        root.add(label)
    return root


def step_notes(step: PlanStep) -> list[tuple[str, str]]:
    """What ``show PLAN`` says below a step, each with its style: a typed answer's fields,
    its ``when:`` condition, its approval gate and question."""
    from dworkers.approvals import question_of

    notes = []
    schema = step.answer_schema()
    if schema is not None:
        fields = ", ".join(one_line(name) for name in schema.get("properties") or {})
        notes.append((f"answers: {fit(fields, 60).rstrip()}", "cyan"))
    if step.when:
        notes.append((f"when: {one_line(step.when)}", "yellow"))
    if step.approve is not False:
        notes.append((f"⏸ gate: {one_line(question_of(step.approve, step.name))}", "magenta"))
    return notes


def input_lines(plan: BasePlan) -> list[str]:
    """One line per input a run of ``plan`` takes: its name, whether it is optional, and its
    description when the plan gives one."""
    lines = []
    for name in plan.required_inputs():
        spec = (plan.inputs or {}).get(name)
        about = one_line(spec.description) if spec is not None else ""
        shown = one_line(name) + (" (file)" if spec is not None and spec.type == "file" else "")
        lines.append(f"{shown} — {about}" if about else shown)
    for name, default in plan.optional_inputs().items():
        spec = (plan.inputs or {})[name]
        about = one_line(spec.description)
        kind = "file, " if spec.type == "file" else ""
        optional = f"({kind}optional, default {one_line(default)!r})"
        lines.append(f"{one_line(name)} {optional}" + (f" — {about}" if about else ""))
    return lines


def mermaid(plan: BasePlan) -> str:
    """The DAG in Mermaid flowchart syntax (labels quoted so any name is safe)."""
    lines = ["flowchart TD"]
    for step in plan.steps:
        label = one_line(f"{step.name} ({step.worker_role.value})").replace('"', "'")
        lines.append(f'    {_mermaid_id(step.step_id)}["{label}"]')
    for step in plan.steps:
        for dep in step.depends_on:
            lines.append(f"    {_mermaid_id(dep)} --> {_mermaid_id(step.step_id)}")
    return "\n".join(lines)


def _mermaid_id(step_id: str) -> str:
    return "s_" + step_id.replace("-", "_")


def is_interactive(out: Console) -> bool:
    return out.is_terminal and not out.is_dumb_terminal and sys.stderr.isatty()


def runs_table(records: Sequence[RunSummary], width: int) -> Text:
    """Recent runs, newest first, one line each; the inputs column takes what is left."""
    from dworkers.view.state import fmt_cost

    rows = []
    for record in records:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.started_at))
        steps = f"{record.counts.get('succeeded', 0)}/{record.counts.get('total', 0)}"
        if record.counts.get("rows"):  # a dataset run: its rows, not steps
            steps += " rows"
        duration = f"{(record.duration_ms or 0) / 1000:.1f}s"
        inputs = " ".join(f"{k}={v}" for k, v in record.inputs.items())
        rows.append(tuple(one_line(cell) for cell in (
            record.run_id, record.plan, record.status.value, steps, when, duration,
            fmt_cost(record.cost_usd, record.cost_known), inputs)))
    header = ("RUN", "PLAN", "STATUS", "OK", "STARTED", "TIME", "COST", "INPUTS")
    widths = [max(cells(row[i]) for row in [header, *rows]) for i in range(7)]
    text = Text(no_wrap=True, overflow="ellipsis")
    for n, row in enumerate([header, *rows]):
        line = "  ".join(fit(row[i], widths[i]) for i in range(7)) + "  "
        line += fit(row[7], max(width - cells(line), 10))
        style = "bold" if n == 0 else {"failed": "red", "interrupted": "yellow"}.get(row[2], "")
        text.append(line.rstrip() + "\n", style=style)
    text.rstrip()
    return text
