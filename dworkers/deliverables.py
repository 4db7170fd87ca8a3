"""Each step's deliverable in plan order, as Markdown sections: the body shared by a run's
``report.md`` and a dataset row's report."""

from __future__ import annotations

import json
from collections.abc import Mapping

from dworkers.plans.base import BasePlan
from dworkers.results import StepResult, StepStatus
from dworkers.text import crop, one_line


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
        lines += [result.output.strip(), ""]
    return lines + tool_appendix(plan, outputs)


def tool_appendix(plan: BasePlan, outputs: Mapping[str, StepResult]) -> list[str]:
    """``## Appendix: tool calls``: each MCP tool call of each step (arguments, time, result
    size and digest, error), so a reader can see what the deliverables were looked up from;
    nothing when no step called a tool."""
    rows = []
    for step in plan.steps:
        result = outputs.get(step.step_id)
        for call in result.tool_calls if result is not None else ():
            arguments = call.arguments if isinstance(call.arguments, str) else json.dumps(
                call.arguments, ensure_ascii=False, sort_keys=True)
            outcome = (f"error: {call.error}" if call.error
                       else f"{call.result_chars:,} chars, sha256 {call.result_digest}")
            cells = [step.step_id, f"{call.server}.{call.tool}", crop(one_line(arguments), 120),
                     f"{call.duration_ms / 1000:.2f}s", crop(one_line(outcome), 160)]
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if not rows:
        return []
    return ["## Appendix: tool calls", "", "| step | tool | arguments | time | result |",
            "|---|---|---|---|---|", *rows, ""]
