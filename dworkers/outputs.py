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

from dworkers.events import (
    Event,
    RunFinished,
    RunResult,
    RunStarted,
    StepFinished,
    StepResult,
    StepStatus,
)
from dworkers.files import write_atomic
from dworkers.plans.base import BasePlan

# run.json is rewritten after every step, except in very large plans, where rewriting it per
# step would be quadratic: there it is rewritten at most every RUN_JSON_INTERVAL seconds.
LARGE_PLAN_STEPS = 200
RUN_JSON_INTERVAL = 0.5


class RunWriter:
    """An ``on_event`` callback that keeps a run directory up to date.

    A file that cannot be written (disk full, directory removed) does not stop the run: the
    first error is kept in ``error`` for the caller to report, and later files are still tried.
    """

    def __init__(self, directory: Path, plan: BasePlan, inputs: dict[str, str]) -> None:
        self.directory = directory
        self.plan = plan
        self.inputs = inputs
        self.started: RunStarted | None = None
        self.results: dict[str, StepResult] = {}
        self.last_write = 0.0
        self.throttle = RUN_JSON_INTERVAL if len(plan.steps) > LARGE_PLAN_STEPS else 0.0
        self.error: str | None = None

    def __call__(self, event: Event) -> None:
        try:
            self.handle(event)
        except OSError as exc:
            if self.error is None:
                self.error = f"{exc.filename or self.directory}: {exc.strerror or exc}"

    def handle(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.started = event
            (self.directory / "steps").mkdir(parents=True, exist_ok=True)
            self.write_run_json(status="running")
        elif isinstance(event, StepFinished):
            result = event.result
            self.results[result.step_id] = result
            if result.succeeded:
                write_atomic(self.directory / "steps" / f"{result.step_id}.md", result.output)
            if time.monotonic() - self.last_write >= self.throttle:
                self.write_run_json(status="running")
        elif isinstance(event, RunFinished):
            self.results.update(event.result.outputs)
            self.write_run_json(result=event.result)
            write_atomic(self.directory / "report.md", report(self.plan, event.result))

    def write_run_json(self, *, status: str = "running", result: RunResult | None = None) -> None:
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
        write_atomic(self.directory / "run.json", json.dumps(data, indent=2) + "\n")
        self.last_write = time.monotonic()


def run_status(result: RunResult) -> str:
    if result.interrupted:
        return "interrupted"
    return "succeeded" if result.success else "failed"


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
        shown = " ".join(value.split())
        lines.append(f"- {name}: {shown[:200] + '…' if len(shown) > 200 else shown}")
    lines.append("")
    for step in plan.steps:
        step_result = result.outputs.get(step.step_id)
        lines += [f"## {step.name}", ""]
        if step_result is None or step_result.status is not StepStatus.SUCCEEDED:
            status = step_result.status.value if step_result else "not run"
            reason = step_result.error if step_result and step_result.error else ""
            lines += [f"> Not available: {status}{' — ' + reason if reason else ''}.", ""]
        else:
            lines += [step_result.output.strip(), ""]
    return "\n".join(lines).rstrip() + "\n"
