"""How plans, problems and runs look on a terminal. This package is the only place that
imports rich.

This module holds what every command needs and loads fast: consoles, problems, the plan list and
tree, the run list. The live run display (``LiveView``, ``LineView``, ``run_tree``, ...) lives in
``dworkers.view.live`` and is loaded on first use, so ``dworkers list`` does not pay for it.
"""

from __future__ import annotations

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

if TYPE_CHECKING:
    from dworkers.catalog import PlanSummary
    from dworkers.events import RunSummary
    from dworkers.plans.base import BasePlan
    from dworkers.view.live import (
        LineView as LineView,
        LiveView as LiveView,
        RunView as RunView,
        crop as crop,
        crop_left as crop_left,
        make_view as make_view,
        print_summary as print_summary,
        recorded_run as recorded_run,
        run_tree as run_tree,
        spinner_frame as spinner_frame,
        summary as summary,
    )

_LIVE = frozenset({"LineView", "LiveView", "RunView", "crop", "crop_left", "make_view",
                   "print_summary", "recorded_run", "run_tree", "spinner_frame", "summary"})


def __getattr__(name: str) -> Any:
    if name in _LIVE:
        return getattr(importlib.import_module("dworkers.view.live"), name)
    raise AttributeError(f"module 'dworkers.view' has no attribute {name!r}")


def console(*, stderr: bool = True, width: int | None = None) -> Console:
    """A console for human output (stderr by default); rich honours NO_COLOR and TERM=dumb."""
    return Console(stderr=stderr, width=width, highlight=False, soft_wrap=False)


def print_problems(out: Console, problems: Iterable[Problem]) -> None:
    for problem in problems:
        line = Text()
        line.append(problem.location, style="bold")
        line.append(": ")
        line.append(problem.message, style="red")
        if problem.hint:
            line.append(" — ")
            line.append(problem.hint, style="cyan")
        out.print(line, soft_wrap=True)


def print_error(out: Console, message: str) -> None:
    out.print(Text.assemble(("error", "bold red"), ": ", message), soft_wrap=True)


def print_ok(out: Console, message: str) -> None:
    out.print(Text.assemble(("✓ ", "green"), message), soft_wrap=True)


def plan_table(plans: Sequence[PlanSummary], width: int) -> Text:
    """One line per plan; the description takes what is left of the width and is cut with '…'."""
    rows = [
        (
            plan.name,
            str(plan.steps),
            ", ".join(plan.required_inputs) or "-",
            source_label(plan.origin, plan.path),
            plan.description,
        )
        for plan in plans
    ]
    header = ("PLAN", "STEPS", "INPUTS", "SOURCE", "DESCRIPTION")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    widths[2] = min(widths[2], 28)
    widths[3] = min(widths[3], 36)
    text = Text(no_wrap=True, overflow="ellipsis")
    for n, row in enumerate([header, *rows]):
        cells = [_fit(row[i], widths[i]) for i in range(4)]
        cells[1] = row[1].rjust(widths[1])
        line = "  ".join(cells) + "  "
        line += _fit(row[4], max(width - len(line), 10))
        text.append(line.rstrip() + "\n", style="bold" if n == 0 else "")
    text.rstrip()
    return text


def tenant_table(rows: Sequence[dict[str, Any]]) -> Text:
    header = {"id": "TENANT", "name": "NAME", "default_model": "DEFAULT MODEL", "source": "SOURCE"}
    keys = list(header)
    widths = {k: max(len(str(row[k])) for row in [header, *rows]) for k in keys}
    text = Text(no_wrap=True)
    for n, row in enumerate([header, *rows]):
        line = "  ".join(str(row[k]).ljust(widths[k]) for k in keys).rstrip()
        text.append(line + "\n", style="bold" if n == 0 else "")
    text.rstrip()
    return text


def _fit(value: str, width: int) -> str:
    return value.ljust(width) if len(value) <= width else value[: width - 1] + "…"


def source_label(origin: str, path: str | os.PathLike[str] | None) -> str:
    """Where a plan came from: "built-in", or its file relative to the current directory."""
    if path is None or origin == "built-in":
        return origin
    try:
        return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)
    except ValueError:  # another drive (Windows)
        return str(path)


def plan_tree(plan: BasePlan) -> Tree:
    """The plan as a tree: steps in dependency order with role and what each waits for."""
    from dworkers import dag

    required = plan.required_inputs()
    root = Tree(
        Text.assemble(
            (plan.name, "bold"),
            f" — {plan.description}" if plan.description else "",
            ("\ninputs: " + (", ".join(required) or "none"), "dim"),
        )
    )
    for step_id in dag.topological_order(plan.graph):
        step = plan.get_step(step_id)
        assert step is not None
        label = Text.assemble((step.step_id, "bold"), "  ", (step.worker_role.value, "magenta"))
        if step.depends_on:
            label.append("  ← " + ", ".join(step.depends_on), style="dim")
        root.add(label)
    return root


def mermaid(plan: BasePlan) -> str:
    """The DAG in Mermaid flowchart syntax (labels quoted so any name is safe)."""
    lines = ["flowchart TD"]
    for step in plan.steps:
        label = f"{step.name} ({step.worker_role.value})".replace('"', "'")
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
    rows = []
    for record in records:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.started_at))
        steps = f"{record.counts.get('succeeded', 0)}/{record.counts.get('total', 0)}"
        duration = f"{(record.duration_ms or 0) / 1000:.1f}s"
        inputs = " ".join(f"{k}={' '.join(v.split())}" for k, v in record.inputs.items())
        rows.append((record.run_id, record.plan, record.status.value, steps, when, duration,
                     f"${record.cost_usd:.4f}", inputs))
    header = ("RUN", "PLAN", "STATUS", "OK", "STARTED", "TIME", "COST", "INPUTS")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(7)]
    text = Text(no_wrap=True, overflow="ellipsis")
    for n, row in enumerate([header, *rows]):
        line = "  ".join(_fit(row[i], widths[i]) for i in range(7)) + "  "
        line += _fit(row[7], max(width - len(line), 10))
        style = "bold" if n == 0 else {"failed": "red", "interrupted": "yellow"}.get(row[2], "")
        text.append(line.rstrip() + "\n", style=style)
    text.rstrip()
    return text
