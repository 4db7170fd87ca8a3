"""The run directory: ``steps/<step_id>.md`` as each step finishes, ``run.json`` kept current,
and ``report.md`` assembling the deliverables in plan order when the run ends.

Every file is written atomically (temporary file + rename), so a crash or Ctrl-C leaves either
the previous or the new version of a file, never half of one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from dworkers import deliverables
from dworkers.events import Event, RunFinished, RunStarted, StepFinished
from dworkers.files import write_atomic
from dworkers.plans.base import BasePlan
from dworkers.results import RunResult, StepResult
from dworkers.text import clean, crop, one_line

# run.json is rewritten after every step, except in very large plans, where rewriting it per
# step would be quadratic: there it is rewritten at most every RUN_JSON_INTERVAL seconds.
LARGE_PLAN_STEPS = 200
RUN_JSON_INTERVAL = 0.5


class RunWriter:
    """An ``on_event`` callback that keeps a run directory up to date.

    A file that cannot be written (disk full, directory removed) does not stop the run: the
    calls already paid for go on being saved where they can (history, other files), every file
    that could not be written is kept in ``unsaved`` with the reason, and the caller reports it
    and fails the run's exit code.
    """

    def __init__(self, directory: Path, plan: BasePlan, inputs: dict[str, str]) -> None:
        self.directory = directory
        self.plan = plan
        self.inputs = inputs
        self.started: RunStarted | None = None
        self.results: dict[str, StepResult] = {}
        self.last_write = 0.0
        self.throttle = RUN_JSON_INTERVAL if len(plan.steps) > LARGE_PLAN_STEPS else 0.0
        self.unsaved: dict[str, str] = {}  # file, relative to the run directory -> why

    @property
    def error(self) -> str | None:
        """What is missing from the run directory, on one line (None when every file is there)."""
        if not self.unsaved:
            return None
        reasons = list(dict.fromkeys(self.unsaved.values()))
        names = list(self.unsaved)
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return f"{shown} ({'; '.join(reasons[:2])})"

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.started = event
            self.write("steps", None)
            self.write_run_json(status="running")
        elif isinstance(event, StepFinished):
            result = event.result
            self.results[result.step_id] = result
            # Written while other steps wait to start: no fsync (whole files even if killed;
            # the history has every result), or each step would hold up the next by ~20 ms.
            if result.succeeded:  # a model's escape codes must not reach a reader's terminal
                self.write(f"steps/{result.step_id}.md", clean(result.output), durable=False)
            if time.monotonic() - self.last_write >= self.throttle:
                self.write_run_json(status="running", durable=False)
        elif isinstance(event, RunFinished):
            self.results.update(event.result.outputs)
            self.write_run_json(result=event.result)
            self.write("report.md", report(self.plan, event.result))

    def write(self, name: str, text: str | None, *, durable: bool = True) -> None:
        """Write ``name`` (a directory when ``text`` is None), or note why it could not be."""
        path = self.directory / name
        try:
            if text is None:
                path.mkdir(parents=True, exist_ok=True)
            else:
                write_atomic(path, text, durable=durable)
        except OSError as exc:
            self.unsaved[name if text is not None else f"{name}/"] = exc.strerror or str(exc)
        else:
            self.unsaved.pop(name, None)  # a later version made it (run.json is rewritten)

    def write_run_json(self, *, status: str = "running", result: RunResult | None = None,
                       durable: bool = True) -> None:
        data: dict[str, Any]
        if result is not None:
            data = result.summary()
            data["status"] = run_status(result)
        else:
            started = self.started
            data = {
                "run_id": started.run_id if started else None,
                "plan": self.plan.name,
                "tenant": started.tenant if started else None,
                "inputs": self.inputs,
                "status": status,
                "outputs": {sid: r.model_dump(mode="json") for sid, r in self.results.items()},
            }
        if self.started is not None:
            data["models"] = {s.step_id: s.model for s in self.started.steps}
        for step in data.get("outputs", {}).values():  # outputs live in steps/*.md
            if isinstance(step, dict):
                step.pop("output", None)
        self.write("run.json", json.dumps(data, indent=2) + "\n", durable=durable)
        self.last_write = time.monotonic()


def run_status(result: RunResult) -> str:
    return result.status.value  # "waiting for approval" too


def report(plan: BasePlan, result: RunResult) -> str:
    """The deliverables of a run in plan order, as one Markdown document."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(result.started_at or time.time()))
    lines = [
        f"# {plan.name}",
        "",
        plan.description,
        "",
        f"- Run: `{result.run_id}` ({run_status(result)}), {when}",
        f"- Tenant: {result.tenant}",
    ]
    for name, value in result.inputs.items():
        lines.append(f"- {name}: {crop(one_line(value), 200)}")
    lines.append("")
    lines += deliverables.sections(plan, result.outputs)
    # Plan files and model answers are untrusted: no escape code reaches a terminal via cat.
    return clean("\n".join(lines)).rstrip() + "\n"
