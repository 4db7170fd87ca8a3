"""output_schema: the accepted forms, their problems, answer validation, re-asks and mock answers.

The property tests compare our small runtime validator with the ``jsonschema`` package over
generated schemas: every answer we accept must be valid JSON Schema-wise (and we accept exactly
what it accepts), and every mock answer must fit its schema."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pydantic
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from dworkers import output_schema
from dworkers.output_schema import (
    AnswerError,
    FieldInfo,
    check_schema,
    fields,
    mock_value,
    normalise_schema,
    reask_message,
    validate_answer,
)

TRIAGE = {
    "severity": "low|medium|high",
    "in_scope": "bool",
    "risk": "int(1..5)",
    "findings": [{"control": "str", "score": "number"}],
    "tags": ["str"],
    "owner?": {"name": "str", "email?": "str"},
}


def triage_schema() -> dict[str, Any]:
    schema, problems = normalise_schema(TRIAGE)
    assert problems == [] and schema is not None
    return schema


# --- the accepted forms -------------------------------------------------------------------------


def test_the_concise_form_becomes_a_strict_json_schema() -> None:
    assert triage_schema() == {
        "type": "object",
        "properties": {
            "severity": {"type": "string", "enum": ["low", "medium", "high"]},
            "in_scope": {"type": "boolean"},
            "risk": {"type": "integer", "minimum": 1, "maximum": 5},
            "findings": {"type": "array", "items": {
                "type": "object",
                "properties": {"control": {"type": "string"}, "score": {"type": "number"}},
                "additionalProperties": False, "required": ["control", "score"]}},
            "tags": {"type": "array", "items": {"type": "string"}},
            "owner": {"type": "object",
                      "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
                      "additionalProperties": False, "required": ["name"]},
        },
        "additionalProperties": False,
        "required": ["severity", "in_scope", "risk", "findings", "tags"],
    }
    jsonschema.Draft202012Validator.check_schema(triage_schema())


@pytest.mark.parametrize(("spec", "path", "message", "fix"), [
    ({"severity": "low||high"}, ("severity",), "empty value in enum 'low||high'", "single '|'"),
    ({"x": "strng"}, ("x",), "unknown field type 'strng'", "did you mean 'string'?"),
    ({"x": 5}, ("x",), "5 is not a field type", "an enum (low|medium|high)"),
    ({"x": ["str", "int"]}, ("x",), "a list is written with one item type, not 2", "[str]"),
    ({"x": "int(5..1)"}, ("x",), "range 5..1 is empty", "smaller bound first"),
    ({"x": "int(a..3)"}, ("x",), "range bound 'a' is not a whole number", "int(1..5)"),
    ({"my-field": "str"}, ("my-field",), "field name 'my-field' is not valid", "{step.field}"),
    ({"x": {}}, ("x",), "an object needs at least one field", "{summary: str}"),
    ({"items": [{"risk": "integr"}]}, ("items", 0, "risk"), "unknown field type 'integr'",
     "did you mean 'integer'?"),
])
def test_concise_form_problems_are_located(spec: dict[str, Any], path: tuple[Any, ...],
                                           message: str, fix: str) -> None:
    schema, problems = normalise_schema(spec)
    assert schema is None
    (problem,) = problems
    assert problem.path == path and problem.message == message and fix in problem.fix


def test_json_schema_is_recognised_and_checked_as_written() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 3}},
              "required": ["a"]}
    assert normalise_schema(schema) == (schema, [])
    # a field of the concise form may be called 'type' when its type is not a JSON type name
    assert normalise_schema({"type": "str"})[0] == {
        "type": "object", "properties": {"type": {"type": "string"}},
        "additionalProperties": False, "required": ["type"]}


@pytest.mark.parametrize(("schema", "path", "message", "fix"), [
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "^a+$"}}},
     ("properties", "a", "pattern"), "keyword 'pattern' is not supported in output_schema",
     "describe the format"),
    ({"type": "object", "propertes": {}}, ("propertes",),
     "keyword 'propertes' is not supported in output_schema", "did you mean 'properties'?"),
    ({"type": "object", "properties": {"a": {"type": "int"}}}, ("properties", "a", "type"),
     "type 'int' is not a JSON Schema type", "did you mean 'integer'?"),
    ({"type": "object", "properties": {"sev": {}}, "required": ["seve"]}, ("required", 0),
     "required field 'seve' is not under 'properties'", "did you mean 'sev'?"),
    ({"type": "object", "properties": {"n": {"type": "integer", "minimum": 5, "maximum": 1}}},
     ("properties", "n"), "no number satisfies its minimum and maximum together", "widen"),
    ({"type": "object", "properties": {"n": {"type": "integer", "exclusiveMinimum": 1,
                                             "exclusiveMaximum": 2}}},
     ("properties", "n"), "no number satisfies its minimum and maximum together", "widen"),
    ({"type": "object", "properties": {"s": {"type": "string", "minLength": 4,
                                             "maxLength": 2}}},
     ("properties", "s", "minLength"), "'minLength' 4 is above 'maxLength' 2", "swap"),
    ({"type": "object", "properties": {"s": {"type": "integer", "enum": ["a", "b"]}}},
     ("properties", "s", "enum"), "no enum value has the declared type and limits",
     "match 'type'"),
    ({"type": "object", "properties": {"l": {"type": "array", "minItems": 1000}}},
     ("properties", "l", "minItems"), "'minItems' 1000 is over the limit of 100", "ask for less"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}},
     ("properties", "a", "$ref"), "$ref '#/$defs/Missing' names no schema under $defs",
     "'#/$defs/Name'"),
    ({"type": "object", "properties": {"n": {"$ref": "#/$defs/Node"}},
      "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}}},
     ("properties", "n", "$ref"), "$ref '#/$defs/Node' is recursive, which output_schema does "
     "not support", "fixed depth"),
    ({"type": "array", "items": {"type": "string"}}, (),
     "the top level of output_schema must be an object", "wrap the value in a field"),
    ({"type": "object", "properties": {"a": {"type": "string", "anyOf": [{"maxLength": 3}]}}},
     ("properties", "a", "type"), "'type' beside 'anyOf' is not supported", "each option"),
])
def test_json_schema_problems_are_located(schema: dict[str, Any], path: tuple[Any, ...],
                                          message: str, fix: str) -> None:
    problems = check_schema(schema)
    assert [(p.path, p.message) for p in problems][:1] == [(path, message)]
    assert fix in problems[0].fix
    assert normalise_schema(schema)[0] is None


def test_a_deep_or_huge_schema_is_one_problem_not_a_crash() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(5_000):
        deep = {"type": "object", "properties": {"a": deep}}
    (problem,) = check_schema(deep)
    assert "nested deeper than 16 levels" in problem.message
    concise: Any = "str"
    for _ in range(5_000):
        concise = {"a": concise}
    schema, problems = normalise_schema(concise)
    assert schema is None and len(problems) == 1


def test_refs_that_expand_exponentially_are_refused() -> None:
    defs: dict[str, Any] = {"D0": {"type": "string"}}
    for i in range(1, 40):
        defs[f"D{i}"] = {"type": "object", "properties": {
            "a": {"$ref": f"#/$defs/D{i - 1}"}, "b": {"$ref": f"#/$defs/D{i - 1}"}}}
    schema = {"type": "object", "properties": {"x": {"$ref": "#/$defs/D39"}}, "$defs": defs}
    (problem,) = check_schema(schema)
    assert problem.message == "output_schema expands to more than 2000 parts through its $refs"


def test_nested_choices_cannot_make_checking_an_answer_exponential() -> None:
    node: dict[str, Any] = {"type": "integer"}
    for _ in range(7):  # each level: a list of this, or a list of this
        node = {"anyOf": [{"type": "array", "items": node}, {"type": "array", "items": node,
                                                               "minItems": 0}]}
    schema = {"type": "object", "properties": {"v": node}}
    assert check_schema(schema) == []
    value: Any = "x"
    for _ in range(7):
        value = [value] * 5
    _, errors = validate_answer(json.dumps({"v": value}), schema)
    assert errors == [AnswerError("$", "an answer simple enough to check",
                                  "more than 1000000 checks")]


def test_strings_and_other_values_are_not_schemas() -> None:
    assert output_schema.is_schema_file("schemas/triage.yaml")
    assert output_schema.is_schema_file("t.JSON")
    assert not output_schema.is_schema_file("severity: low|high")
    _, (problem,) = normalise_schema("severity")
    assert "neither a schema nor a schema file" in problem.message
    _, (problem,) = normalise_schema([1, 2])
    assert problem.message == "output_schema must be a mapping"


class Owner(pydantic.BaseModel):
    name: str
    email: str | None = None


class Triage(pydantic.BaseModel):
    severity: str = pydantic.Field(json_schema_extra={"enum": ["low", "medium", "high"]})
    risk: int = pydantic.Field(ge=1, le=5)
    owner: Owner | None = None
    findings: list[Owner]


def test_a_pydantic_model_is_normalised_with_its_refs_resolved() -> None:
    schema, problems = normalise_schema(Triage)
    assert problems == [] and schema is not None
    assert "$defs" not in json.dumps(schema) and "$ref" not in json.dumps(schema)
    assert schema["properties"]["findings"]["items"]["properties"]["name"]["type"] == "string"
    assert fields(schema)["owner.email"].optional
    assert fields(schema)["risk"] == FieldInfo(frozenset({"integer", "number"}), None, False)
    answer = {"severity": "high", "risk": 2, "findings": [{"name": "a"}], "owner": None}
    value, errors = validate_answer(json.dumps(answer), schema)
    assert errors == [] and Triage.model_validate(value).risk == 2
    assert Triage.model_validate(mock_value(schema, "run-1/triage"))


def test_a_pydantic_model_with_an_unsupported_constraint_is_refused() -> None:
    class Code(pydantic.BaseModel):
        code: str = pydantic.Field(pattern="^[A-Z]+$")

    schema, (problem,) = normalise_schema(Code)
    assert schema is None and problem.path == ("properties", "code", "pattern")


# --- fields -------------------------------------------------------------------------------------


def test_fields_lists_the_dotted_paths_later_steps_may_name() -> None:
    found = fields(triage_schema())
    assert list(found) == ["severity", "in_scope", "risk", "findings", "tags", "owner",
                           "owner.name", "owner.email"]
    assert found["severity"] == FieldInfo(frozenset({"string"}), ("low", "medium", "high"),
                                          False)
    assert found["in_scope"].types == {"boolean"}
    assert found["findings"].types == {"array"}
    assert found["owner.name"].optional  # its object may be left out


# --- answers ------------------------------------------------------------------------------------

GOOD = {"severity": "high", "in_scope": True, "risk": 4, "findings": [], "tags": ["a"]}


@pytest.mark.parametrize("text", [
    json.dumps(GOOD),
    "```json\n" + json.dumps(GOOD, indent=2) + "\n```",
    "Here is the triage:\n\n```\n" + json.dumps(GOOD) + "\n```\nThat is all.",
    "Sure. Here is the JSON: " + json.dumps(GOOD),
    "\n  " + json.dumps(GOOD) + "\n",
    json.dumps(GOOD) + " Hope this helps!",  # what gateways' chattier models add
    "Sure! " + json.dumps(GOOD, indent=1) + "\n\nLet me know if you need anything else.",
])
def test_an_answer_is_found_in_a_fence_or_among_prose(text: str) -> None:
    assert validate_answer(text, triage_schema()) == (GOOD, [])


@pytest.mark.parametrize(("text", "got"), [
    ("", "an empty answer"),
    ("I cannot do that.", "text that is not JSON (Expecting value at line 1 column 1)"),
    ('{"severity": "high",', "text that is not JSON (Expecting property name enclosed in double "
     "quotes at line 1 column 21)"),
    (json.dumps(GOOD) + ' {"severity": "low"}', "text that is not JSON (text after the JSON "
     f"value at character {len(json.dumps(GOOD)) + 1})"),  # two answers: which one?
    (json.dumps(GOOD) + ', "risk": 2}', "text that is not JSON (text after the JSON value at "
     f"character {len(json.dumps(GOOD)) + 1})"),  # a stray brace: not the object meant
    (json.dumps(GOOD) + "\nOr, if in doubt: [\"x\"]", "text that is not JSON (text after the "
     f"JSON value at character {len(json.dumps(GOOD)) + 1})"),
    ('{"risk": NaN}', "text that is not JSON (NaN is not JSON)"),
    ('{"risk": 1e999}', "text that is not JSON (number 1e999 is too large)"),
    ("[" * 100_000 + "]" * 100_000, "text that is not JSON (nested too deeply)"),
])
def test_an_answer_that_is_not_json_is_one_error_at_the_root(text: str, got: str) -> None:
    value, errors = validate_answer(text, triage_schema())
    assert value is None and errors == [AnswerError("$", "a JSON object", got)]


def test_each_misfit_is_reported_with_its_path_what_was_expected_and_what_came() -> None:
    answer = {"severity": "critical", "in_scope": "yes", "risk": 9.0,
              "findings": [{"control": "AC-1", "score": "high"}], "tags": "a", "extra": 1}
    value, errors = validate_answer(json.dumps(answer), triage_schema())
    assert value is None
    rendered = {e.path: (e.expected, e.got) for e in errors}
    assert rendered == {
        "$.severity": ('one of "low", "medium", "high"', '"critical"'),
        "$.in_scope": ("true or false", '"yes"'),
        "$.risk": ("integer ≥ 1 and ≤ 5", "9"),
        "$.findings[0].score": ("number", '"high"'),
        "$.tags": ("list of text", '"a"'),
        "$.extra": ("no field 'extra' (allowed: severity, in_scope, risk, findings, tags, "
                    "owner)", "1"),
    }
    _, errors = validate_answer("{}", triage_schema())
    assert [(e.path, e.got) for e in errors] == [
        (f"$.{name}", "nothing (the field is missing)")
        for name in ("severity", "in_scope", "risk", "findings", "tags")]


def test_an_integral_number_for_an_integer_field_becomes_an_int() -> None:
    value, errors = validate_answer(json.dumps({**GOOD, "risk": 3.0}), triage_schema())
    assert errors == [] and value["risk"] == 3 and isinstance(value["risk"], int)


def test_true_is_not_a_number_and_one_is_not_true() -> None:
    _, errors = validate_answer(json.dumps({**GOOD, "risk": True}), triage_schema())
    assert [e.path for e in errors] == ["$.risk"]
    _, errors = validate_answer(json.dumps({**GOOD, "in_scope": 1}), triage_schema())
    assert [e.path for e in errors] == ["$.in_scope"]


def test_errors_per_answer_are_capped_and_huge_answers_refused() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "array",
                                                     "items": {"type": "integer"}}}}
    _, errors = validate_answer(json.dumps({"a": ["x"] * 10_000}), schema)
    assert len(errors) == output_schema.MAX_ERRORS
    _, (error,) = validate_answer(" " * (output_schema.MAX_ANSWER_CHARS + 1), schema)
    assert error.got == f"{output_schema.MAX_ANSWER_CHARS + 1} characters"


def test_the_reask_shows_the_answer_and_every_error() -> None:
    answer = 'Here: {"severity": "critical"}'
    _, errors = validate_answer(answer, triage_schema())
    message = reask_message(answer, errors)
    assert answer in message
    for error in errors:
        assert f"- {error.path}: expected {error.expected}, got {error.got}" in message
    assert message.rstrip().endswith("with no text before or after it.")
    long = reask_message("x" * 50_000, errors)
    assert len(long) < 10_000 and "(44000 more characters)" in long


def test_the_schema_is_asked_for_natively_or_in_the_instructions() -> None:
    schema = triage_schema()
    assert output_schema.response_format(schema, "deep dive/1") == {
        "type": "json_schema",
        "json_schema": {"name": "deep_dive_1", "schema": schema, "strict": False}}
    text = output_schema.instructions(schema)
    body = text.split("```json\n", 1)[1].rsplit("\n```", 1)[0]
    assert json.loads(body) == schema and text.startswith("Answer with one JSON object")


# --- mock answers -------------------------------------------------------------------------------


def test_mock_values_are_deterministic_valid_and_vary_by_seed() -> None:
    schema = triage_schema()
    first = mock_value(schema, "run/triage")
    assert first == mock_value(schema, "run/triage")
    assert validate_answer(json.dumps(first), schema) == (first, [])
    assert len({json.dumps(mock_value(schema, seed)) for seed in range(10)}) > 1
    jsonschema.validate(first, schema)


# --- properties over generated schemas -----------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "c", "severity", "x_1"])
SMALL = st.integers(-5, 5)
HALVES = st.integers(-10, 10).map(lambda n: n / 2)
SCALARS = st.one_of(st.none(), st.booleans(), SMALL, HALVES, st.text("abxyz", max_size=4))


def _optional(key: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(st.just({}), values.map(lambda v: {key: v}))


def _merge(*parts: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.tuples(*parts).map(lambda ds: {k: v for d in ds for k, v in d.items()})


LEAF_SCHEMAS = st.one_of(
    _merge(st.just({"type": "string"}), _optional("minLength", st.integers(0, 3)),
           _optional("maxLength", st.integers(0, 6))),
    _merge(st.just({"type": "integer"}), _optional("minimum", HALVES),
           _optional("maximum", HALVES), _optional("exclusiveMinimum", SMALL),
           _optional("exclusiveMaximum", SMALL)),
    _merge(st.just({"type": "number"}), _optional("minimum", HALVES),
           _optional("exclusiveMaximum", HALVES)),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.lists(SCALARS, min_size=1, max_size=4).map(lambda v: {"enum": v}),
    _merge(st.just({"type": "string"}),
           st.lists(st.text("abc", max_size=3), min_size=1, max_size=3).map(
               lambda v: {"enum": v})),
    SCALARS.map(lambda v: {"const": v}),
    st.lists(st.sampled_from(["string", "integer", "number", "boolean", "null"]), min_size=1,
             max_size=3, unique=True).map(lambda t: {"type": t}),
    st.just({}),
)


def _containers(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    objects = st.dictionaries(NAMES, children, max_size=4).flatmap(
        lambda props: _merge(
            st.just({"type": "object", "properties": props}),
            st.lists(st.sampled_from(sorted(props)), unique=True).map(
                lambda r: {"required": r}) if props else st.just({}),
            _optional("additionalProperties", st.one_of(st.booleans(), children))))
    arrays = _merge(st.just({"type": "array"}), _optional("items", children),
                    _optional("minItems", st.integers(0, 2)),
                    _optional("maxItems", st.integers(0, 3)))
    unions = st.lists(children, min_size=1, max_size=3).map(lambda o: {"anyOf": o})
    return st.one_of(objects, arrays, unions)


SCHEMAS = st.recursive(LEAF_SCHEMAS, _containers, max_leaves=8).map(
    lambda s: {"type": "object", "properties": {"value": s, "other": {"type": "string"}},
               "required": ["value"]}).filter(lambda s: check_schema(s) == [])

JSON_VALUES = st.recursive(
    SCALARS | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NAMES, inner, max_size=3),
    max_leaves=10)


def _jsonschema_accepts(value: Any, schema: dict[str, Any]) -> bool:
    return bool(jsonschema.Draft202012Validator(schema).is_valid(value))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.filter_too_much])
@given(schema=SCHEMAS, seed=st.integers(0, 1_000), stranger=JSON_VALUES,
       replacement=JSON_VALUES)
def test_we_accept_exactly_what_json_schema_accepts(schema: dict[str, Any], seed: int,
                                                    stranger: Any, replacement: Any) -> None:
    mock = mock_value(schema, seed)  # never raises for a schema check_schema passed
    assert _jsonschema_accepts(mock, schema)
    mutated = {**mock, "value": replacement}
    for value in (mock, mutated, {"value": stranger}, stranger):
        accepted, errors = validate_answer(json.dumps(value), schema)
        event("accepted" if not errors else "refused")
        assert (errors == []) == _jsonschema_accepts(value, schema), (value, errors)
        if not errors:
            assert _jsonschema_accepts(accepted, schema)
