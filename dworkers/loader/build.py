"""Building plans and tenants from loaded YAML values, every problem found in one pass."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dworkers.errors import LoadError, PlanValidationError, Problem, TenantValidationError, shown
from dworkers.loader.problems import (
    control_characters,
    describe,
    from_validation_error,
    in_order,
    located,
    not_a_mapping,
)
from dworkers.loader.reader import read_yaml
from dworkers.names import (
    IDENTIFIER,
    MAX_SLUG_LENGTH,
    SLUG,
    json_schema_pattern,
    slug_suggestion,
)
from dworkers.output_schema import is_schema_file
from dworkers.plans.base import BasePlan, InputSpec, PlanStep, unnamed_step_id
from dworkers.types import SourceMap, SourcePath

if TYPE_CHECKING:
    from dworkers.tenants.config import TenantConfig


class _PlanDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The plan's name, a lowercase slug: 'dworkers run NAME'.",
                      json_schema_extra={**json_schema_pattern(SLUG), "maxLength": MAX_SLUG_LENGTH})
    description: str = Field(default="", description="What the plan does, one line for "
                             "'dworkers list'.")
    inputs: dict[str, InputSpec | None] | None = Field(
        default=None, description="The run's inputs by name (letters, digits, '_'). When "
        "absent, every {placeholder} a template uses is a required input.",
        json_schema_extra={"propertyNames": json_schema_pattern(IDENTIFIER)})
    steps: list[Any] = Field(description="The steps; depends_on makes them a DAG, and each "
                             "starts as soon as its dependencies have succeeded.")
    on_truncation: Literal["keep", "fail"] | None = Field(
        default=None, description="An answer cut off at the model's token limit: 'keep' it "
        "(marked truncated) or 'fail' the step (default: the tenant's limits.on_truncation).")
    formats: list[Literal["md", "docx", "pdf"]] | None = Field(
        default=None, description="The deliverables a run writes when --format is not given "
        "(default: the tenant's formats, else md): any of md, docx, pdf.")


FileKind = Literal["plan", "tenant"]


def detect_kind(data: Any) -> FileKind:
    """Plans have ``steps``; anything else with ``id`` or ``models`` is a tenant."""
    if isinstance(data, dict) and "steps" not in data and ("id" in data or "models" in data):
        return "tenant"
    return "plan"


def load_plan(path: Path | str, text: str | None = None) -> BasePlan:
    """Load and fully validate a plan file; raise with every problem found."""
    data, source = read_yaml(path, text)
    return plan_from_data(data, source)


def plan_from_data(data: Any, source: SourceMap) -> BasePlan:
    """A validated plan from loaded values; raise with every problem found, in one pass."""
    problems: list[Problem] = []
    if not isinstance(data, dict):
        raise LoadError([not_a_mapping(source, "plan", "name, description, inputs and steps")])
    problems += control_characters(data, source)
    top = {key: value for key, value in data.items() if key != "steps"}
    raw_steps = data.get("steps")
    try:
        document = _PlanDocument.model_validate({**top, "steps": []})
    except ValidationError as exc:
        problems += from_validation_error(exc, source, (), _PlanDocument, "the plan")
        document = _partial_document(top, exc, source)
    if "steps" not in data:
        problems.append(located(source, (), "plan has no 'steps' list",
                                 "add 'steps:' with at least one step", "missing-key"))
        raw_steps = []
    elif not isinstance(raw_steps, list):
        problems.append(located(source, ("steps",), "'steps' must be a list of steps",
                                 "write each step on its own line as '- step_id: ...'",
                                 "invalid-type"))
        raw_steps = []
    inputs = None
    if document.inputs is not None:
        inputs = {name: spec or InputSpec() for name, spec in document.inputs.items()}
    plan = BasePlan(document.name, document.description, inputs=inputs, source=source,
                    on_truncation=document.on_truncation, formats=document.formats)
    for i, raw in enumerate(raw_steps):
        raw = _with_schema_file(raw, i, source, plan, problems)
        plan.add_step(_step(raw, i, source, problems))
    checked = plan.check()
    if problems:  # "no steps" is already said when 'steps' is missing or not a list
        checked = [p for p in checked if p.code != "no-steps" or raw_steps == data.get("steps")]
    problems += checked
    if problems:
        raise PlanValidationError(in_order(problems))
    return plan


def _partial_document(top: dict[str, Any], exc: ValidationError, source: SourceMap) -> Any:
    """What is usable of a plan's top-level keys, so the step checks still run in this pass."""
    bad = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
    kept = {k: v for k, v in top.items() if k not in bad and k in _PlanDocument.model_fields}
    name = kept.get("name")
    if not isinstance(name, str):
        name = slug_suggestion(Path(source.file).stem) or "plan"
    try:
        return _PlanDocument.model_validate({**kept, "name": name, "steps": []})
    except ValidationError:  # pragma: no cover - every remaining key validated on its own
        return _PlanDocument.model_construct(name=name, description="", inputs=None, steps=[])


def _with_schema_file(raw: Any, index: int, source: SourceMap, plan: BasePlan,
                      problems: list[Problem]) -> Any:
    """A step whose ``output_schema`` names a .json/.yaml file, with the file's contents in
    its place (read relative to the plan with the same bounded reader; its own positions kept
    in ``plan.schema_sources`` so problems inside it point into it)."""
    if not isinstance(raw, dict) or not is_schema_file(raw.get("output_schema")):
        return raw
    name = str(raw["output_schema"])
    file = Path(source.file).parent / name
    try:
        data, schema_source = read_yaml(file)
    except LoadError as exc:
        if exc.problems and exc.problems[0].code == "not-found":
            problems.append(located(source, ("steps", index, "output_schema"),
                                    f"schema file {shown(name)} not found (looked for {file})",
                                    "write the path relative to the plan file",
                                    "missing-file"))
        else:
            problems += exc.problems
        return {**raw, "output_schema": None}
    plan.schema_sources[index] = schema_source
    return {**raw, "output_schema": data if data is not None else {}}


def _step(raw: Any, index: int, source: SourceMap, problems: list[Problem]) -> PlanStep:
    path: SourcePath = ("steps", index)
    if not isinstance(raw, dict):
        problems.append(located(source, path, f"step {index + 1} must be a mapping "
                                 f"(got {describe(raw)})",
                                 "write it as '- step_id: ...' with name, worker_role, ... "
                                 "indented below", "invalid-type"))
        return PlanStep.model_construct(step_id=unnamed_step_id(index), name="", depends_on=[])
    try:
        return PlanStep.model_validate(raw)
    except ValidationError as exc:
        step_id = raw.get("step_id")
        label = f"step {shown(step_id)}" if isinstance(step_id, str) else f"step {index + 1}"
        problems += from_validation_error(exc, source, path, PlanStep, label)
    # Keep what is usable so the graph checks still run and report the rest in the same pass.
    depends_on = raw.get("depends_on")
    if not isinstance(depends_on, list) or not all(isinstance(d, str) for d in depends_on):
        depends_on = []
    template = raw.get("prompt_template")
    when = raw.get("when")
    return PlanStep.model_construct(
        step_id=step_id if isinstance(step_id, str) else unnamed_step_id(index),
        name=str(raw.get("name", "")),
        depends_on=depends_on,
        prompt_template=template if isinstance(template, str) else "",
        # Kept so that later steps' typed references are checked against it, not refused.
        output_schema=raw.get("output_schema"),
        when=when if isinstance(when, str) else None,
    )


def load_tenant(path: Path | str, text: str | None = None) -> TenantConfig:
    """Load and fully validate a tenant file; raise with every problem found."""
    data, source = read_yaml(path, text)
    return tenant_from_data(data, source)


def tenant_from_data(data: Any, source: SourceMap) -> TenantConfig:
    """A validated tenant from loaded values; raise with every problem found, in one pass."""
    from dworkers.tenants.config import TenantConfig  # listing plans never needs tenants

    if not isinstance(data, dict):
        raise LoadError([not_a_mapping(source, "tenant", "id, name, context and models")])
    problems: list[Problem] = control_characters(data, source)
    try:
        tenant = TenantConfig.model_validate(data)
    except ValidationError as exc:
        problems += from_validation_error(exc, source, (), TenantConfig, "the tenant")
        # Check what is left too (model names, allowed models), so one pass finds everything.
        try:
            tenant = TenantConfig.model_validate(_without_errors(data, exc))
        except ValidationError:
            raise TenantValidationError(in_order(problems)) from None
    tenant._source = source
    problems += tenant.check()
    if problems:
        raise TenantValidationError(in_order(problems))
    return tenant


def _without_errors(data: dict[str, Any], exc: ValidationError) -> dict[str, Any]:
    """``data`` minus every value pydantic rejected (copied along the way; ``id`` kept valid),
    so the rest can still be validated and checked."""
    result = dict(data)
    for error in exc.errors():
        loc = [part for part in error["loc"] if part != "[key]"]
        if error["type"] == "missing" or not loc:
            continue
        parent: Any = result
        for part in loc[:-1]:
            child = parent.get(part) if isinstance(parent, dict) else None
            if not isinstance(child, dict):
                parent = None
                break
            parent[part] = parent = dict(child)
        if isinstance(parent, dict):
            parent.pop(loc[-1], None)
    if not isinstance(result.get("id"), str):
        result["id"] = "tenant"
    return result


def load_any(path: Path | str) -> BasePlan | TenantConfig:
    data, source = read_yaml(path)
    if detect_kind(data) == "tenant":
        return tenant_from_data(data, source)
    return plan_from_data(data, source)


