"""when: conditions: parsing with positions, type checks against upstream schemas, evaluation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from dworkers import conditions
from dworkers.conditions import ConditionSyntaxError, Scope, check_condition, evaluate, explain
from dworkers.output_schema import fields, normalise_schema


def triage_fields() -> Any:
    schema, _ = normalise_schema({
        "severity": "low|medium|high", "in_scope": "bool", "risk": "int(1..5)",
        "findings": [{"control": "str"}], "summary": "str", "owner?": {"email": "str"},
        "extra?": {"type": "str"},
    })
    assert schema is not None
    return fields(schema)


SCOPE = Scope(inputs=["brief", "tone"], steps={"triage": triage_fields(), "research": None},
              others=["briefing"], may_skip=(), step_id="deep-dive")
SKIPPABLE = SCOPE._replace(may_skip=["triage"])


def problems(expr: str, scope: Scope = SCOPE) -> list[tuple[int, str, str, str]]:
    return [(i.column, i.code, i.message, i.hint) for i in check_condition(expr, scope)]


@pytest.mark.parametrize("expr", [
    "triage.in_scope and triage.severity == 'high'",
    "triage.in_scope and (triage.severity == 'high' or triage.risk >= 4)",
    "not triage.in_scope",
    "triage.severity in ['medium', 'high']",
    "triage.severity not in ['low']",
    "triage.risk > 2.5 and triage.risk != 5",
    "'urgent' in brief",
    "brief == 'x' or tone != \"formal\"",
    "'risk' in research",
    "triage.owner.email == 'a@b.c'",
    "triage.owner == null",
    "triage.in_scope == true",
    "triage.summary < 'm'",
])
def test_well_typed_conditions_pass(expr: str) -> None:
    assert problems(expr) == []


@pytest.mark.parametrize(("expr", "expected"), [
    ("triage.severty == 'high'",
     (1, "unknown-field", "step 'triage' has no field 'severty'",
      "did you mean triage.severity?")),
    ("triage.in_scope and triage.severity == 'critcal'",
     (40, "not-in-enum", '"critcal" is not a value of triage.severity (one of "low", "medium", '
      '"high")', "use one of the values its schema allows")),
    ("triage.severity in ['high', 'hihg']",
     (20, "not-in-enum", '"hihg" is not a value of triage.severity (one of "low", "medium", '
      '"high")', 'did you mean "high"?')),
    ("triage.in_scope == 'yes'",
     (17, "condition-type", 'triage.in_scope is true or false but "yes" is text: they are never '
      "equal", "write triage.in_scope == true (or false)")),
    ("triage.risk == 'high'",
     (13, "condition-type", 'triage.risk is a number but "high" is text: they are never equal',
      "compare values of the same kind")),
    ("briefing.tone == 'x'",
     (1, "not-upstream", "step 'briefing' is not upstream of step 'deep-dive', so "
      "briefing.tone has no value when it runs", "add 'briefing' to depends_on")),
    ("triag.severity == 'high'",
     (1, "unknown-reference", "'triag' is neither a declared input nor an upstream step",
      "did you mean triage.severity?")),
    ("brief.title == 'x'",
     (1, "input-has-no-fields", "'brief' is a run input (text); it has no field 'title'",
      "write brief alone")),
    ("research.verdict == 'x'",
     (1, "untyped-step", "step 'research' has no output_schema, so research.verdict names no "
      "field", "give 'research' an output_schema with a field 'verdict', or write research "
      "for its whole answer")),
    ("triage.findings.control == 'x'",
     (1, "unknown-field", "triage.findings is a list; a single item of it cannot be named",
      "name the whole list, triage.findings")),
    ("triage.severity",
     (1, "condition-type", 'when: must be true or false, but triage.severity is one of "low", '
      '"medium", "high"', "compare it, e.g. triage.severity == ...")),
    ("triage.summary and triage.in_scope",
     (1, "condition-type", "triage.summary is text, not true or false, so 'and' cannot use it",
      "compare it, e.g. triage.summary == ...")),
    ("triage.severity >= 'medium'",
     (17, "condition-type", "'>=' would order these values alphabetically",
      "list the values you mean: x in ['medium', 'high']")),
    ("triage.in_scope < 3",
     (17, "condition-type", "'<' orders two numbers or two texts, not true or false and one of "
      "3", "compare numbers, or use == and in")),
    ("triage.risk in 3",
     (13, "condition-type", "'in' needs a list or text on its right, not one of 3",
      "write e.g. x in ['a', 'b']")),
    ("True",
     (1, "unknown-reference", "'True' is neither a declared input nor an upstream step",
      "write true in lowercase")),
    ("triage.risk ?? 'none' > 2",
     (16, "condition-type", "the value used instead of triage.risk is text, but triage.risk is a "
      "number", "use a value of the same kind")),
])
def test_each_mistake_is_one_problem_at_its_column(
        expr: str, expected: tuple[int, str, str, str]) -> None:
    assert problems(expr) == [expected]


@pytest.mark.parametrize(("expr", "column", "message", "hint"), [
    ("triage.severity = 'high'", 17, "unexpected '=' in condition", "write '==' to compare"),
    ("a && b", 3, "unexpected '&&' in condition", "write 'and'"),
    ("a || b", 3, "unexpected '||' in condition", "write 'or'"),
    ("!a", 1, "unexpected '!' in condition", "write 'not'"),
    ("triage.severity == 'high", 20, "text starting here has no closing '", "end it with '"),
    ("(triage.in_scope", 1, "'(' is never closed", "add ')'"),
    ("triage.in_scope and", 20, "condition ends too early",
     "finish it, e.g. triage.severity == 'high'"),
    ("triage.risk < 2 < 3", 17, "comparisons cannot be chained",
     "join two comparisons with 'and': a < b and b < c"),
    ("triage.in_scope triage.risk", 17, "unexpected 'triage.risk' after a complete condition",
     "join conditions with 'and' or 'or'"),
    ("'a' ?? 'b'", 5, "'??' follows a reference such as triage.severity",
     "write step.field ?? 'value'"),
    ("x ?? y", 6, "after '??' comes the value to use instead: text, a number, true, false, "
     "null or a list", "write e.g. triage.severity ?? 'low'"),
    ("x in ['a', y]", 12, "a list holds plain values: text, numbers, true, false, null",
     "write e.g. ['high', 'critical']"),
    ("x in ['a' 'b']", 11, "expected ',' or ']' in the list", "write e.g. ['a', 'b']"),
    ("x == 1e999", 6, "number 1e999 is too large", "write a smaller number"),
    ("x == $", 6, "unexpected '$' in condition", "conditions use names, 'text', numbers, ==, "
     "!=, <, <=, >, >=, in, and, or, not, ?? and parentheses"),
])
def test_syntax_errors_point_at_their_column(expr: str, column: int, message: str,
                                             hint: str) -> None:
    assert problems(expr) == [(column, "condition-syntax", message, hint)]
    with pytest.raises(ConditionSyntaxError):
        evaluate(expr, {})


def test_hostile_conditions_are_bounded() -> None:
    (issue,) = check_condition("(" * 100_000, SCOPE)
    assert "over the limit of 2000" in issue.message
    (issue,) = check_condition("(" * 100 + "true" + ")" * 100, SCOPE)
    assert issue.message == "condition nested deeper than 32 levels"
    (issue,) = check_condition("not " * 400 + "true", SCOPE)
    assert issue.message == "condition nested deeper than 32 levels"
    (issue,) = check_condition("x in " + "[" * 600, SCOPE)
    assert issue.code == "condition-syntax"
    longest = " and ".join(["triage.in_scope"] * 100)  # as long as a condition may be
    assert check_condition(longest, SCOPE) == []
    assert evaluate(longest, VALUES) is True
    assert evaluate(" or ".join(["triage.risk < 0"] * 100), VALUES) is False


def test_a_step_that_may_be_skipped_must_say_what_to_use_instead() -> None:
    assert problems("triage.severity == 'high'", SKIPPABLE) == [(
        1, "may-be-skipped", "step 'triage' may be skipped (it has a when: condition), so "
        "triage.severity needs a value to use instead",
        "write triage.severity ?? ..., e.g. triage.severity ?? 'n/a'")]
    assert problems("triage.severity ?? 'low' == 'high'", SKIPPABLE) == []
    assert problems("(triage.in_scope ?? false) and brief == 'x'", SKIPPABLE) == []
    # the fallback may extend an enum: it is what the condition sees when the step is skipped
    assert problems("triage.severity ?? 'none' == 'none'", SKIPPABLE) == []
    assert problems("triage.severity ?? 'none' == 'nnoe'", SKIPPABLE)[0][1] == "not-in-enum"


@pytest.mark.parametrize("value", [True, None, 3, "", "  ", ["a"]])
def test_a_when_that_is_not_text_is_one_problem(value: object) -> None:
    (issue,) = check_condition(value, SCOPE)
    assert issue.message.startswith("when: must be a condition written as text, not ")


def test_several_problems_are_all_reported_in_order() -> None:
    found = problems("triage.sevrity == 'high' and briefing.x == 1 and triage.risk == 'a'")
    assert [(column, code) for column, code, _, _ in found] == [
        (1, "unknown-field"), (30, "not-upstream"), (62, "condition-type")]


def test_without_declared_inputs_any_other_name_is_an_input() -> None:
    open_scope = SCOPE._replace(inputs=None)
    assert problems("region == 'EU' and triage.in_scope", open_scope) == []
    assert problems("region.code == 'EU'", open_scope)[0][1] == "input-has-no-fields"


VALUES = {
    "brief": "An urgent audit of ACME",
    "triage": {"severity": "high", "in_scope": True, "risk": 4, "findings": [],
               "summary": "s", "owner": None},
    "research": "Risk of fines under GDPR",
}


@pytest.mark.parametrize(("expr", "expected"), [
    ("triage.in_scope and triage.severity == 'high'", True),
    ("triage.in_scope and triage.severity == 'low'", False),
    ("not triage.in_scope or triage.risk >= 4", True),
    ("triage.risk > 4", False),
    ("triage.risk == 4.0", True),
    ("triage.in_scope == 1", False),  # JSON: true is not 1
    ("triage.severity in ['medium', 'high']", True),
    ("triage.severity not in ['medium', 'high']", False),
    ("'urgent' in brief", True),
    ("'GDPR' in research and 'fines' in research", True),
    ("triage.owner == null", True),
    ("triage.owner.email ?? 'nobody' == 'nobody'", True),
    ("triage.owner.email == null", True),  # absent compares as null
    ("skipped.verdict ?? 'low' == 'low'", True),
    ("skipped.verdict == 'low'", False),
    ("triage.risk < 'x'", False),  # mixed kinds never order: false, not an exception
    ("(triage.risk >= 1 and triage.risk <= 5) and not (triage.severity == 'low')", True),
    ("triage.summary", False),  # only true is true
])
def test_evaluation(expr: str, expected: bool) -> None:
    assert evaluate(expr, VALUES) is expected


def test_explain_names_the_values_that_decided() -> None:
    assert explain("triage.in_scope and triage.severity == 'low'", VALUES) == (
        "when: triage.in_scope and triage.severity == 'low' is false "
        '(triage.in_scope = true, triage.severity = "high")')
    assert explain("gate.ok ?? false", VALUES) == "when: gate.ok ?? false is false " \
        "(gate.ok = (skipped))"


def test_references_lists_what_a_condition_reads() -> None:
    node = conditions.parse_condition("a.b == 1 or (c ?? 2) in [1, 2] and not d.e.f")
    assert [ref.text for ref in conditions.references(node)] == ["a.b", "c", "d.e.f"]


def test_step_ids_with_hyphens_and_digits_are_names() -> None:
    node = conditions.parse_condition("scope-audit.risk >= 2 and 1st-pass.ok")
    assert [ref.path for ref in conditions.references(node)] == [
        ("scope-audit", "risk"), ("1st-pass", "ok")]
    assert evaluate("x == -1.5e1", {"x": -15}) is True


ANSWERS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["severity", "in_scope", "risk", "owner", "email"]), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(triage=ANSWERS, brief=ANSWERS)
def test_evaluation_is_total_on_any_answer(triage: Any, brief: Any) -> None:
    """A model's answer can never make a condition raise: any value gives true or false."""
    for expr in ("triage.in_scope and triage.severity == 'high'",
                 "triage.risk >= 3 or triage.owner.email ?? 'x' in ['x']",
                 "'a' in brief and not (brief < 3)", "triage.severity in brief"):
        assert evaluate(expr, {"triage": triage, "brief": brief}) in (True, False)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab.()[]'\"=!<>?, -1notandorin", max_size=60))
def test_any_text_either_parses_or_is_one_located_syntax_problem(text: str) -> None:
    found = check_condition(text, SCOPE._replace(inputs=None))
    syntax = [i for i in found if i.code == "condition-syntax"]
    assert len(syntax) <= 1
    for issue in found:
        assert 0 <= issue.offset <= len(text)


def test_scope_for_a_step_holds_its_upstream_steps_and_which_may_be_skipped() -> None:
    graph = {"triage": [], "research": ["triage"], "deep-dive": ["research"],
             "briefing": ["deep-dive"], "side": []}
    scope = conditions.scope_for("deep-dive", graph, ["brief"],
                                 {"triage": triage_fields()}, conditional={"research", "side"})
    assert list(scope.steps) == ["triage", "research"]  # upstream, direct or not
    assert scope.steps["research"] is None  # untyped
    assert list(scope.others) == ["deep-dive", "briefing", "side"]
    assert list(scope.may_skip) == ["research"]
    assert problems("triage.in_scope and 'x' in research ?? ''", scope) == []
    assert [p[1] for p in problems("side == 'x' or briefing == 'y'", scope)] == [
        "not-upstream", "not-upstream"]


FIELD_NAMES = ["severity", "in_scope", "risk", "findings", "summary", "owner", "owner.email"]


def _edits(name: str, data: st.DataObject) -> str:
    """``name`` with one character inserted, deleted or replaced (a typo)."""
    i = data.draw(st.integers(0, len(name) - 1))
    letter = data.draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz_"))
    return data.draw(st.sampled_from([name[:i] + letter + name[i:], name[:i] + name[i + 1:],
                                      name[:i] + letter + name[i + 1:]]))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_every_misspelled_field_is_reported_at_its_column(data: st.DataObject) -> None:
    """The issue's measure: 100 % of mutated references reported, 0 false positives."""
    name = data.draw(st.sampled_from(FIELD_NAMES))
    typo = _edits(name, data)
    template = "brief != '' and ({} == {})"
    value = {"severity": "'high'", "in_scope": "true", "risk": "3", "findings": "[]",
             "summary": "'s'", "owner": "null", "owner.email": "'a'"}[name]
    assert check_condition(template.format(f"triage.{name}", value), SCOPE) == []
    found = check_condition(template.format(f"triage.{typo}", value), SCOPE)
    if typo in FIELD_NAMES:
        return  # the edit made another real field
    assert [(i.code, i.offset) for i in found] == [("unknown-field", 17)]


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_every_value_outside_an_enum_is_reported(data: st.DataObject) -> None:
    value = _edits(data.draw(st.sampled_from(["low", "medium", "high"])), data)
    op = data.draw(st.sampled_from(["==", "!="]))
    found = check_condition(f"triage.severity {op} '{value}'", SCOPE)
    if value in ("low", "medium", "high"):
        assert found == []
    else:
        assert [(i.code, i.offset) for i in found] == [("not-in-enum", 19)]
