"""Each step's deliverable in plan order, as (heading, Markdown) sections: the one body shared
by a run's ``report.md``, a dataset row's report, and their .docx and .pdf deliverables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dworkers.plans.base import BasePlan
from dworkers.results import StepResult, StepStatus


def named_sections(steps: Iterable[tuple[str, StepResult | None]]) -> list[tuple[str, str]]:
    """One (step name, Markdown body) pair per step: its output, or why there is none."""
    pairs: list[tuple[str, str]] = []
    for name, result in steps:
        if result is None or result.status is not StepStatus.SUCCEEDED:
            status = result.status.value if result else "not run"
            reason = result.error if result and result.error else ""
            pairs.append((name, f"> Not available: {status}{' — ' + reason if reason else ''}."))
            continue
        body = result.output.strip()
        if result.truncated:
            body = f"> Truncated: the answer was cut off at the model's token limit.\n\n{body}"
        pairs.append((name, body))
    return pairs


def plan_sections(plan: BasePlan, outputs: Mapping[str, StepResult]) -> list[tuple[str, str]]:
    """The sections of ``plan``'s steps, in plan order."""
    return named_sections((step.name, outputs.get(step.step_id)) for step in plan.steps)


def sections(plan: BasePlan, outputs: Mapping[str, StepResult]) -> list[str]:
    """The Markdown lines of ``plan_sections``: one ``## step name`` section per step."""
    return markdown_lines(plan_sections(plan, outputs))


def markdown_lines(pairs: Iterable[tuple[str, str]]) -> list[str]:
    lines: list[str] = []
    for heading, body in pairs:
        lines += [f"## {heading}", "", body, ""]
    return lines
