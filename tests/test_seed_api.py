"""The Python API of the seed guide (seeds/custom-plans.md), with firefly_dworkers → dworkers.

The example is reproduced as written, up to (not including) the PlanBuilder line.
"""

from __future__ import annotations

import pytest

from dworkers.errors import NotFoundError, PlanValidationError
from dworkers.plans.base import BasePlan, PlanStep
from dworkers.plans.registry import plan_registry
from dworkers.tenants.config import TenantConfig
from dworkers.tenants.registry import tenant_registry
from dworkers.types import WorkerRole


def compliance_audit_plan() -> BasePlan:
    plan = BasePlan(
        "compliance-audit",
        description="Audit regulatory compliance and generate remediation plan",
    )

    plan.add_step(
        PlanStep(
            step_id="scope-audit",
            name="Scope Audit",
            description="Define audit scope, regulations, and assessment criteria",
            worker_role=WorkerRole.ANALYST,
        )
    )
    plan.add_step(
        PlanStep(
            step_id="research-regulations",
            name="Research Regulations",
            description="Research applicable regulations and recent enforcement actions",
            worker_role=WorkerRole.RESEARCHER,
            depends_on=["scope-audit"],
        )
    )
    plan.add_step(
        PlanStep(
            step_id="analyze-gaps",
            name="Analyze Compliance Gaps",
            description="Analyze current compliance posture against regulatory requirements",
            worker_role=WorkerRole.DATA_ANALYST,
            depends_on=["scope-audit"],
        )
    )
    plan.add_step(
        PlanStep(
            step_id="remediation-plan",
            name="Remediation Plan",
            description="Build prioritized remediation roadmap from gap analysis",
            worker_role=WorkerRole.ANALYST,
            depends_on=["research-regulations", "analyze-gaps"],
        )
    )
    plan.add_step(
        PlanStep(
            step_id="executive-briefing",
            name="Executive Briefing",
            description="Present audit findings and remediation plan to leadership",
            worker_role=WorkerRole.MANAGER,
            depends_on=["remediation-plan"],
        )
    )

    return plan


def test_the_seed_plan_is_built_and_valid() -> None:
    plan = compliance_audit_plan()
    assert plan.name == "compliance-audit"
    assert plan.description == "Audit regulatory compliance and generate remediation plan"
    assert [s.step_id for s in plan.steps] == [
        "scope-audit", "research-regulations", "analyze-gaps", "remediation-plan",
        "executive-briefing",
    ]
    assert plan.graph["remediation-plan"] == ["research-regulations", "analyze-gaps"]
    assert plan.check() == []
    plan.validate()  # does not raise


def test_registering_and_retrieving_the_seed_plan() -> None:
    plan = compliance_audit_plan()
    plan_registry.register(plan)

    # Now retrievable by name
    assert plan_registry.get("compliance-audit") is plan
    assert plan_registry.has("compliance-audit")
    assert "compliance-audit" in plan_registry.list_plans()  # ["compliance-audit", ...]
    # the Python plan takes the place of the built-in one of the same name
    assert plan_registry.entry("compliance-audit").origin == "python"
    assert set(plan_registry.list_plans()) >= {"market-analysis", "process-improvement"}


def test_the_registry_without_registration_holds_the_builtin_library() -> None:
    assert plan_registry.list_plans() == [
        "compliance-audit", "customer-segmentation", "market-analysis", "process-improvement",
        "technology-assessment",
    ]
    builtin = plan_registry.get("compliance-audit")
    assert [s.step_id for s in builtin.steps] == [
        s.step_id for s in compliance_audit_plan().steps
    ]
    assert not plan_registry.has("no-such-plan")
    with pytest.raises(NotFoundError, match="did you mean 'compliance-audit'"):
        plan_registry.get("complaince-audit")


def test_tenant_registry_get() -> None:
    # Load plan and tenant config (the lines before the PlanBuilder in the seed)
    plan = plan_registry.get("compliance-audit")
    config = tenant_registry.get("acme-corp")
    assert isinstance(plan, BasePlan)
    assert isinstance(config, TenantConfig)
    assert config.id == "acme-corp"
    assert config.model_for(WorkerRole.RESEARCHER) == "openai/gpt-4o"
    assert config.model_for(WorkerRole.MANAGER) == "openai/gpt-4o-mini"
    assert tenant_registry.get("default").id == "default"
    with pytest.raises(NotFoundError):
        tenant_registry.get("initech")


def test_worker_roles() -> None:
    assert [role.value for role in WorkerRole] == [
        "analyst", "researcher", "data_analyst", "manager", "designer"]
    assert WorkerRole("data_analyst") is WorkerRole.DATA_ANALYST


def test_step_options_and_prompt_templates() -> None:
    step = PlanStep(
        step_id="research",
        name="Research Phase",
        worker_role=WorkerRole.RESEARCHER,
        prompt_template="Research {topic} with focus on {focus_area}",
        retry_max=2,
        timeout_seconds=300.0,
    )
    plan = BasePlan("research-plan", steps=[step])
    assert plan.check() == []
    assert plan.required_inputs() == ["topic", "focus_area"]
    assert (step.retry_max, step.timeout_seconds) == (2, 300.0)


def test_design_rules_are_enforced() -> None:
    # 1. each step needs a unique step_id
    plan = compliance_audit_plan()
    plan.add_step(PlanStep(step_id="scope-audit", name="Again"))
    with pytest.raises(PlanValidationError, match="duplicate step_id 'scope-audit'"):
        plan.validate()
    # 2. depends_on must point to existing step ids
    plan = compliance_audit_plan()
    plan.add_step(PlanStep(step_id="appendix", name="Appendix", depends_on=["exec-briefing"]))
    with pytest.raises(PlanValidationError, match="did you mean 'executive-briefing'"):
        plan.validate()
    # 3. the DAG must be acyclic
    plan = BasePlan("cyclic")
    plan.add_step(PlanStep(step_id="a", name="A", depends_on=["b"]))
    plan.add_step(PlanStep(step_id="b", name="B", depends_on=["a"]))
    with pytest.raises(PlanValidationError, match="dependency cycle a → b → a"):
        plan.validate()


def test_step_fields_are_validated_in_python_too() -> None:
    with pytest.raises(ValueError, match="retry_max"):
        PlanStep(step_id="a", name="A", retry_max=-1)
    with pytest.raises(ValueError, match="worker_role"):
        PlanStep(step_id="a", name="A", worker_role="wizard")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="extra"):
        PlanStep(step_id="a", name="A", color="red")  # type: ignore[call-arg]
