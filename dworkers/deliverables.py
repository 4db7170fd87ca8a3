"""Each step's deliverable in plan order, as (heading, Markdown) sections: the one body shared
by a run's ``report.md``, a dataset row's report, and their .docx and .pdf deliverables."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from dworkers import templates
from dworkers.plans.base import BasePlan
from dworkers.results import StepResult, StepStatus
from dworkers.text import crop, one_line


def named_sections(steps: Iterable[tuple[str, StepResult | None]]) -> list[tuple[str, str]]:
    """One (step name, Markdown body) pair per step: its output, or why there is none."""
    pairs: list[tuple[str, str]] = []
    for name, result in steps:
        if result is None or result.status is not StepStatus.SUCCEEDED:
            status = result.status.value if result else "not run"
            reason = result.error if result and result.error else ""
            pairs.append((name, f"> Not available: {status}{' — ' + reason if reason else ''}."))
            continue
        # A typed answer reads as key: value lines and bullets, not as raw JSON.
        shown = result.output if result.value is None else templates.render_value(result.value)
        body = shown.strip()
        if result.truncated:
            body = f"> Truncated: the answer was cut off at the model's token limit.\n\n{body}"
        pairs.append((name, body))
    return pairs


def plan_sections(plan: BasePlan, outputs: Mapping[str, StepResult]) -> list[tuple[str, str]]:
    """The sections of ``plan``'s steps, in plan order."""
    return named_sections((step.name, outputs.get(step.step_id)) for step in plan.steps)


def sections(plan: BasePlan, outputs: Mapping[str, StepResult]) -> list[str]:
    """The Markdown lines of ``plan_sections``: one ``## step name`` section per step, then
    the tool calls' appendix."""
    return markdown_lines(plan_sections(plan, outputs)) + tool_appendix(plan, outputs)


def markdown_lines(pairs: Iterable[tuple[str, str]]) -> list[str]:
    lines: list[str] = []
    for heading, body in pairs:
        lines += [f"## {heading}", "", body, ""]
    return lines


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
