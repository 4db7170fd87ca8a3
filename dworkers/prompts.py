"""The messages a worker receives: role instructions and company context, then the task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources

from dworkers import templates
from dworkers.plans.base import BasePlan, PlanStep
from dworkers.tenants.config import TenantConfig
from dworkers.types import WorkerRole

Message = dict[str, str]


@cache
def role_instructions(role: WorkerRole) -> str:
    return resources.files("dworkers").joinpath(f"roles/{role.value}.md").read_text("utf-8")


def system_message(tenant: TenantConfig, role: WorkerRole) -> str:
    parts = [role_instructions(role).strip()]
    if tenant.context.strip():
        parts.append(f"## Company context: {tenant.display_name}\n\n{tenant.context.strip()}")
    custom = tenant.worker(role).custom_instructions.strip()
    if custom:
        parts.append(f"## Instructions from {tenant.display_name}\n\n{custom}")
    return "\n\n".join(parts)


def task_text(step: PlanStep, inputs: Mapping[str, str]) -> str:
    """The step's rendered prompt, or its description when it has no template."""
    if step.prompt_template.strip():
        return templates.render(step.prompt_template, inputs).strip()
    return step.description.strip() or step.name


def user_message(
    plan: BasePlan,
    step: PlanStep,
    inputs: Mapping[str, str],
    dependency_outputs: Sequence[tuple[PlanStep, str]],
) -> str:
    """Plan and step, then each direct dependency's output as a labelled section, then the
    task last, where models pay it the most attention."""
    parts = [f"# Plan: {plan.name}"]
    if plan.description:
        parts.append(plan.description)
    parts.append(f"# Your step: {step.name} ({step.step_id})")
    if step.description:
        parts.append(step.description)
    for dep, output in dependency_outputs:
        parts.append(f"## Input from {dep.name} ({dep.step_id})\n\n{output.strip()}")
    parts.append(f"## Your task\n\n{task_text(step, inputs)}")
    return "\n\n".join(parts)


def messages(
    plan: BasePlan,
    step: PlanStep,
    tenant: TenantConfig,
    inputs: Mapping[str, str],
    dependency_outputs: Sequence[tuple[PlanStep, str]],
) -> list[Message]:
    return [
        {"role": "system", "content": system_message(tenant, step.worker_role)},
        {"role": "user", "content": user_message(plan, step, inputs, dependency_outputs)},
    ]
