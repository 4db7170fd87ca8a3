"""Each step's deliverable in plan order, as Markdown sections: the body shared by a run's
``report.md`` and a dataset row's report."""

from __future__ import annotations

from collections.abc import Mapping

from dworkers import templates
from dworkers.plans.base import BasePlan
from dworkers.results import StepResult, StepStatus


def sections(plan: BasePlan, outputs: Mapping[str, StepResult]) -> list[str]:
    """One ``## step name`` section per step: its output, or why there is none."""
    lines: list[str] = []
    for step in plan.steps:
        result = outputs.get(step.step_id)
        lines += [f"## {step.name}", ""]
        if result is None or result.status is not StepStatus.SUCCEEDED:
            status = result.status.value if result else "not run"
            reason = result.error if result and result.error else ""
            lines += [f"> Not available: {status}{' — ' + reason if reason else ''}.", ""]
            continue
        if result.truncated:
            lines += ["> Truncated: the answer was cut off at the model's token limit.", ""]
        # A typed answer reads as key: value lines and bullets, not as raw JSON.
        shown = result.output if result.value is None else templates.render_value(result.value)
        lines += [shown.strip(), ""]
    return lines
