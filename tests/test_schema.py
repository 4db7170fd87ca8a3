"""``dworkers schema plan|tenant``: the JSON Schema editors use agrees with the loader."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from support import invoke

from dworkers import loader
from dworkers.errors import ProblemsError
from dworkers.names import SLUG
from dworkers.schema import json_schema
from dworkers.types import ROLE_NAMES, SourceMap

REPO = Path(__file__).resolve().parent.parent
BUILTIN_PLANS = sorted((REPO / "plans").glob("*.yaml"))
BUILTIN_TENANTS = sorted((REPO / "tenants").glob("*.yaml"))


def validator(kind: str) -> Draft202012Validator:
    schema = json_schema(kind)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def errors(kind: str, document: Any) -> list[str]:
    return [error.message for error in validator(kind).iter_errors(document)]


def read(path: Path) -> Any:
    """A file's values exactly as dworkers reads them."""
    return loader.read_yaml(path)[0]


def loader_accepts(kind: str, document: Any) -> bool:
    build = loader.plan_from_data if kind == "plan" else loader.tenant_from_data
    try:
        build(copy.deepcopy(document), SourceMap("<test>"))
    except ProblemsError:
        return False
    return True


# --- the schema is a valid draft 2020-12 schema with an identity -------------------------------


@pytest.mark.parametrize("kind", ["plan", "tenant"])
def test_schema_is_draft_2020_12_with_an_id_and_a_title(kind: str) -> None:
    schema = json_schema(kind)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"urn:dworkers:schema:{kind}"
    assert kind in schema["title"]
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("kind", ["plan", "tenant"])
def test_every_field_has_a_description_and_unknown_keys_are_refused_everywhere(kind: str) -> None:
    schema = json_schema(kind)
    objects = [schema, *(d for d in schema["$defs"].values() if d.get("type") == "object")]
    assert len(objects) >= 3
    for definition in objects:
        assert definition["additionalProperties"] is False, definition.get("title")
        for name, prop in definition["properties"].items():
            assert prop.get("description", "").strip(), f"{definition.get('title')}.{name}"


# --- every file we ship validates ------------------------------------------------------------


@pytest.mark.parametrize("path", BUILTIN_PLANS, ids=lambda p: p.name)
def test_builtin_plans_validate(path: Path) -> None:
    assert errors("plan", read(path)) == []


@pytest.mark.parametrize("path", BUILTIN_TENANTS, ids=lambda p: p.name)
def test_builtin_tenants_validate(path: Path) -> None:
    assert errors("tenant", read(path)) == []


def test_the_readme_examples_validate() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"),
                        re.DOTALL)
    kinds = []
    for text in blocks:
        data = loader.read_yaml("README.md", text)[0]
        kind = loader.detect_kind(data)
        kinds.append(kind)
        assert errors(kind, data) == [], text
    assert {"plan", "tenant"} <= set(kinds)


# --- what the schema refuses, the loader refuses -----------------------------------------------

PLAN = read(REPO / "plans" / "compliance-audit.yaml")
TENANT = read(REPO / "tenants" / "acme-corp.yaml")


def changed(document: Any, change: Any) -> Any:
    result = copy.deepcopy(document)
    change(result)
    return result


PLAN_MISTAKES = {
    "unknown top-level key": lambda d: d.update(descripton="typo"),
    "misspelt step key": lambda d: d["steps"][1].update(depend_on=["scope-audit"]),
    "unknown worker_role": lambda d: d["steps"][0].update(worker_role="analist"),
    "worker_role in capitals": lambda d: d["steps"][0].update(worker_role="Analyst"),
    "step_id with a space": lambda d: d["steps"][0].update(step_id="scope audit"),
    "step_id in capitals": lambda d: d["steps"][0].update(step_id="Scope-Audit"),
    "step_id starting with '-'": lambda d: d["steps"][0].update(step_id="-scope"),
    "step_id longer than 100": lambda d: d["steps"][0].update(step_id="s" * 101),
    "step without a name": lambda d: d["steps"][0].pop("name"),
    "retry_max as a word": lambda d: d["steps"][1].update(retry_max="yes"),
    "negative timeout": lambda d: d["steps"][1].update(timeout_seconds=-1),
    "plan name with a space": lambda d: d.update(name="compliance audit"),
    "input name with a dash": lambda d: d["inputs"].update({"the-brief": None}),
    "unknown key of an input": lambda d: d["inputs"]["brief"].update(required=True),
    "dependency listed twice": lambda d: d["steps"][1].update(
        depends_on=["scope-audit", "scope-audit"]),
}


@pytest.mark.parametrize("mistake", sorted(PLAN_MISTAKES))
def test_a_plan_mistake_is_refused_by_the_schema_and_the_loader(mistake: str) -> None:
    document = changed(PLAN, PLAN_MISTAKES[mistake])
    assert errors("plan", document), mistake
    assert not loader_accepts("plan", document), mistake


TENANT_MISTAKES = {
    "unknown top-level key": lambda d: d.update(contxt="typo"),
    "misspelt limit": lambda d: d["limits"].update(max_cost=5),
    "unknown role under workers": lambda d: d["workers"].update(analist={}),
    "unknown role under models": lambda d: d["models"].update(writer="openai/gpt-4o"),
    "malformed model name": lambda d: d["models"].update(default="openai gpt"),
    "id with a space": lambda d: d.update(id="acme corp"),
    "api_key_env that is not a variable name": lambda d: d.update(api_key_env="sk-123"),
    "api_base that is not a URL": lambda d: d.update(api_base="localhost:4000"),
    "zero concurrency": lambda d: d["limits"].update(max_concurrency=0),
}


@pytest.mark.parametrize("mistake", sorted(TENANT_MISTAKES))
def test_a_tenant_mistake_is_refused_by_the_schema_and_the_loader(mistake: str) -> None:
    document = changed(TENANT, TENANT_MISTAKES[mistake])
    assert errors("tenant", document), mistake
    assert not loader_accepts("tenant", document), mistake


def test_the_unmodified_documents_pass_both() -> None:
    assert loader_accepts("plan", PLAN) and errors("plan", PLAN) == []
    assert loader_accepts("tenant", TENANT) and errors("tenant", TENANT) == []


def test_an_unknown_key_is_named_in_the_error() -> None:
    found = errors("plan", changed(PLAN, lambda d: d["steps"][0].update(worker_rol="analyst")))
    assert any("worker_rol" in message for message in found), found


@pytest.mark.parametrize("step_id", ["a", "0", "scope-audit", "step_2", "a-b_c-9", "-a", "_a",
                                     "A", "a b", "a.b", "a/b", "é", "", "a" * 100, "a" * 101,
                                     "ab\u00a0", "scope-audit "])
def test_the_step_id_pattern_is_the_validation_rule(step_id: str) -> None:
    schema_ok = not errors("plan", changed(PLAN, lambda d: d["steps"][0].update(step_id=step_id)))
    code_ok = bool(SLUG.match(step_id)) and len(step_id) <= 100
    assert schema_ok == code_ok


def test_worker_role_offers_exactly_the_roles() -> None:
    schema = json_schema("plan")
    role = schema["$defs"]["PlanStep"]["properties"]["worker_role"]
    assert role["default"] == "analyst"
    assert schema["$defs"]["WorkerRole"]["enum"] == list(ROLE_NAMES)
    tenant = json_schema("tenant")
    assert tenant["properties"]["workers"]["propertyNames"] == {"$ref": "#/$defs/WorkerRole"}


def test_defaults_are_shown_including_those_built_by_a_factory() -> None:
    step = json_schema("plan")["$defs"]["PlanStep"]["properties"]
    assert (step["depends_on"]["default"], step["retry_max"]["default"],
            step["timeout_seconds"]["default"]) == ([], 0, 0)
    tenant = json_schema("tenant")
    assert tenant["$defs"]["SecurityConfig"]["properties"]["allowed_models"]["default"] == ["*"]
    assert tenant["properties"]["limits"]["default"] == {
        "max_concurrency": 8, "max_cost_usd": None, "timeout_seconds": 120,
        "retry_max": 2, "rate_limit_wait_seconds": 600,
        "on_truncation": "keep", "max_tool_calls": 10, "rate_limits": {}}
    assert tenant["properties"]["models"]["default"]["default"] == "openai/gpt-4o-mini"


def test_inputs_may_be_written_without_a_body() -> None:
    # `inputs: {brief: }` (a name with nothing below it) is how a required input is declared.
    document = changed(PLAN, lambda d: d.update(inputs={"brief": None}))
    assert errors("plan", document) == [] and loader_accepts("plan", document)


# --- the command ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["plan", "tenant"])
def test_schema_command_prints_the_schema(kind: str) -> None:
    code, out, err = invoke("schema", kind)
    assert (code, err) == (0, "")
    assert json.loads(out) == json_schema(kind)


def test_schema_out_writes_the_file(tmp_path: Path) -> None:
    target = tmp_path / "schemas" / "plan.schema.json"
    code, out, err = invoke("schema", "plan", "--out", str(target))
    assert (code, out) == (0, "")
    assert str(target) in err
    assert json.loads(target.read_text(encoding="utf-8")) == json_schema("plan")


def test_schema_out_to_an_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    code, out, err = invoke("schema", "tenant", "--out", str(blocker / "tenant.json"))
    assert (code, out) == (2, "")
    assert f"cannot write {blocker / 'tenant.json'}" in err and "Traceback" not in err


def test_schema_of_an_unknown_kind_is_a_usage_error() -> None:
    code, out, err = invoke("schema", "plans")
    assert (code, out) == (2, "")
    assert "plan" in err and "tenant" in err
