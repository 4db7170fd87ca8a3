"""The Python API of the seed guide (seeds/custom-plans.md), with firefly_dworkers → dworkers.

The example is reproduced as written, including the run itself (against the suite's own
OpenAI-compatible server, found through DWORKERS_API_BASE so the seed's lines stay verbatim).
"""

from __future__ import annotations

import asyncio

import pytest
from support import FakeLLMServer, llm_server, make_plan, make_tenant, request_for

from dworkers.errors import (
    InputError,
    NotFoundError,
    PlanError,
    PlanNotFoundError,
    PlanValidationError,
    ProblemsError,
)
from dworkers.plans.base import BasePlan, InputSpec, PlanStep
from dworkers.plans.builder import PlanBuilder
from dworkers.plans.registry import plan_registry
from dworkers.tenants.config import TenantConfig
from dworkers.tenants.registry import tenant_registry
from dworkers.types import WorkerRole

__all__ = ["llm_server"]


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
    # The seed's steps, after the typed triage that decides whether research is needed.
    assert [s.step_id for s in builtin.steps] == [
        "triage", *(s.step_id for s in compliance_audit_plan().steps)
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


def test_a_missing_dependency_is_a_plan_error_as_the_seed_project_raises_it() -> None:
    plan = compliance_audit_plan()
    plan.add_step(PlanStep(step_id="appendix", name="Appendix", depends_on=["nowhere"]))
    with pytest.raises(PlanError, match="depends on unknown step 'nowhere'") as caught:
        plan.validate()
    # ... and still our located kind: one problem per mistake, each with its fix.
    assert isinstance(caught.value, PlanValidationError)
    assert isinstance(caught.value, ProblemsError)
    [problem] = caught.value.problems
    assert problem.code == "unknown-dependency" and problem.hint
    # The builder refuses it the same way.
    with pytest.raises(PlanError, match="unknown step 'nowhere'"):
        PlanBuilder(plan, make_tenant()).build()


def test_step_fields_are_validated_in_python_too() -> None:
    with pytest.raises(ValueError, match="retry_max"):
        PlanStep(step_id="a", name="A", retry_max=-1)
    with pytest.raises(ValueError, match="worker_role"):
        PlanStep(step_id="a", name="A", worker_role="wizard")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="extra"):
        PlanStep(step_id="a", name="A", color="red")  # type: ignore[call-arg]


# --- the seed's example, run verbatim ------------------------------------------------------------


def test_the_seed_example_runs_verbatim_and_the_brief_reaches_the_first_step(
    llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DWORKERS_API_BASE", llm_server.url)
    plan_registry.register(compliance_audit_plan())

    async def seed() -> object:
        # Load plan and tenant config
        plan = plan_registry.get("compliance-audit")
        config = tenant_registry.get("acme-corp")

        # Build and execute
        builder = PlanBuilder(plan, config)
        engine = builder.build()
        result = await engine.run(inputs={"brief": "Audit SOX compliance for Q4"})
        return result

    result = asyncio.run(seed())
    assert result.success  # type: ignore[attr-defined]
    assert result.total_duration_ms > 0  # type: ignore[attr-defined]
    assert set(result.outputs) == {  # type: ignore[attr-defined]
        "scope-audit", "research-regulations", "analyze-gaps", "remediation-plan",
        "executive-briefing"}
    assert result.inputs == {"brief": "Audit SOX compliance for Q4"}  # type: ignore[attr-defined]
    # every step has no prompt_template: each is given the brief as a labelled section
    [scope] = llm_server.requests_containing("# Your step: Scope Audit (scope-audit)")
    task = scope.messages[-1]["content"].split("## Your task", 1)[1]
    assert "### Input: brief\n\nAudit SOX compliance for Q4" in task
    assert all("Audit SOX compliance for Q4" in r.messages[-1]["content"]
               for r in llm_server.requests)


def test_a_template_consumes_its_input_and_loose_inputs_go_to_template_less_steps(
    llm_server: FakeLLMServer,
) -> None:
    plan = make_plan({"a": [], "b": []})
    plan.get_step("a").prompt_template = "Study {topic}"
    engine = PlanBuilder(plan, make_tenant(), api_base=llm_server.url).build()
    result = asyncio.run(engine.run({"topic": "widgets", "audience": "the board"}))
    assert result.success and result.inputs == {"topic": "widgets", "audience": "the board"}
    [a] = request_for(llm_server, "a")
    [b] = request_for(llm_server, "b")
    assert a.messages[-1]["content"].endswith("Study widgets")  # its template says it all
    assert "### Input: audience\n\nthe board" in b.messages[-1]["content"]
    assert "widgets" not in b.messages[-1]["content"]  # {topic} is the template's


def test_a_plan_declaring_inputs_still_rejects_unknown_names() -> None:
    plan = make_plan({"a": []}, prompt_template="Audit {brief}")
    plan.inputs = {"brief": InputSpec(description="What to audit")}
    engine = PlanBuilder(plan, make_tenant(), mock=True).build()
    with pytest.raises(InputError) as caught:
        engine.resolve_inputs({"brief": "x", "breif": "y"})
    assert [p.render() for p in caught.value.problems] == [
        "--input: unknown input 'breif' — did you mean 'brief'?"]
    with pytest.raises(InputError) as caught:
        engine.resolve_inputs({})
    # the missing-input error says what the input is for
    assert caught.value.problems[0].message == "missing input: brief (What to audit)"


def test_a_plan_without_inputs_section_still_catches_a_typo_of_a_missing_input() -> None:
    plan = make_plan({"a": []}, prompt_template="Audit {brief}")
    engine = PlanBuilder(plan, make_tenant(), mock=True).build()
    assert engine.resolve_inputs({"brief": "x", "extra": "y"}) == {"brief": "x", "extra": "y"}
    with pytest.raises(InputError, match="did you mean 'brief'"):
        engine.resolve_inputs({"breif": "x"})


def test_get_step_of_an_unknown_id_raises_plan_not_found() -> None:
    plan = compliance_audit_plan()
    assert plan.get_step("scope-audit").name == "Scope Audit"
    with pytest.raises(PlanNotFoundError, match="'nope'") as caught:
        plan.get_step("nope")
    assert isinstance(caught.value, PlanError)
    with pytest.raises(PlanError, match="did you mean 'scope-audit'"):
        plan.get_step("scope-audti")


def test_a_plan_with_no_steps_validates_quietly_but_a_plan_file_without_steps_is_refused() -> None:
    BasePlan("x").validate()  # as in the seed project: nothing to run is not an error
    from dworkers import loader

    with pytest.raises(ProblemsError, match="plan has no steps"):
        loader.load_plan("p.yaml", "name: p\nsteps: []\n")
