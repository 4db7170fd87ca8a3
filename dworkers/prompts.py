"""The messages a worker receives: role instructions and company context, then the task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any

from dworkers import output_schema, templates
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


def task_text(step: PlanStep, inputs: Mapping[str, Any],
              loose: Mapping[str, str] | None = None) -> str:
    """The step's rendered prompt; without a template, its description, then each of the
    ``loose`` inputs (those no template names) as a labelled section, so that a plan without
    templates (the seed's ``engine.run(inputs={"brief": ...})``) still sees its inputs.
    ``inputs`` may also hold upstream answers by step id (``{triage.severity}``)."""
    if step.prompt_template.strip():
        return templates.render(step.prompt_template, inputs).strip()
    parts = [step.description.strip() or step.name]
    parts += [f"### Input: {name}\n\n{value.strip()}" for name, value in (loose or {}).items()]
    return "\n\n".join(parts)


def loose_inputs(plan: BasePlan, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs no template of ``plan`` names."""
    named = set(plan.placeholders())
    return {name: value for name, value in inputs.items() if name not in named}


def user_message(
    plan: BasePlan,
    step: PlanStep,
    inputs: Mapping[str, Any],
    dependency_outputs: Sequence[tuple[PlanStep, Any]],
    loose: Mapping[str, str] | None = None,
    skipped: Mapping[str, str] | None = None,
) -> str:
    """Plan and step, then each direct dependency's output as a labelled section (a typed
    answer rendered readably; a dependency skipped by its ``when:`` says so and why), then the
    task last, where models pay it the most attention, with the JSON Schema a typed step must
    answer in. ``loose``: the inputs no template names (see ``loose_inputs``; worked out from
    the plan when not given). ``inputs`` may also hold upstream answers by step id."""
    parts = [f"# Plan: {plan.name}"]
    if plan.description:
        parts.append(plan.description)
    parts.append(f"# Your step: {step.name} ({step.step_id})")
    if step.description:
        parts.append(step.description)
    for dep, output in dependency_outputs:
        shown = (f"(This step was skipped and has no output: {skipped[dep.step_id]})"
                 if skipped and dep.step_id in skipped else templates.render_value(output))
        parts.append(f"## Input from {dep.name} ({dep.step_id})\n\n{shown.strip()}")
    if loose is None and not step.prompt_template.strip():
        loose = {k: v for k, v in loose_inputs(plan, inputs).items()
                 if not plan.has_step(k)}
    parts.append(f"## Your task\n\n{task_text(step, inputs, loose)}")
    schema = step.answer_schema()
    if schema is not None:
        parts.append(output_schema.instructions(schema))
    return "\n\n".join(parts)


def messages(
    plan: BasePlan,
    step: PlanStep,
    tenant: TenantConfig,
    inputs: Mapping[str, Any],
    dependency_outputs: Sequence[tuple[PlanStep, Any]],
    loose: Mapping[str, str] | None = None,
    skipped: Mapping[str, str] | None = None,
) -> list[Message]:
    return [
        {"role": "system", "content": system_message(tenant, step.worker_role)},
        {"role": "user", "content": user_message(plan, step, inputs, dependency_outputs, loose,
                                                 skipped)},
    ]
