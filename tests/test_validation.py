"""Static validation: every problem in one pass, each located, each with a fix."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from support import LINEAR, growth

from dworkers import dag, templates
from dworkers.errors import PlanValidationError, Problem, ProblemsError
from dworkers.loader import load_plan
from dworkers.plans.base import BasePlan, InputSpec, PlanStep
from dworkers.types import WorkerRole

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from validate_large import generate


def problems(text: str) -> list[Problem]:
    with pytest.raises(PlanValidationError) as info:
        load_plan("plan.yaml", textwrap.dedent(text))
    return info.value.problems


def rendered(text: str) -> list[str]:
    return [p.render() for p in problems(text)]


def the(text: str) -> Problem:
    found = problems(text)
    assert len(found) == 1, [p.render() for p in found]
    return found[0]


# --- the graph ------------------------------------------------------------------------------


def test_duplicate_step_id_names_both_lines() -> None:
    assert rendered("""\
        name: p
        steps:
          - step_id: gather
            name: A
          - step_id: gather
            name: B
        """) == [
        "plan.yaml:5:14: duplicate step_id 'gather' (first defined at line 3) — give each step "
        "a unique step_id"
    ]


def test_unknown_dependency_suggests_the_closest_step() -> None:
    assert rendered("""\
        name: p
        steps:
          - step_id: gather-data
            name: A
          - step_id: report
            name: B
            depends_on: [gather-dta]
        """) == [
        "plan.yaml:7:18: step 'report' depends on unknown step 'gather-dta' — did you mean "
        "'gather-data'?"
    ]


def test_unknown_dependency_without_a_close_match() -> None:
    problem = the("""\
        name: p
        steps:
          - step_id: a
            name: A
            depends_on:
              - zzz
        """)
    assert (problem.code, problem.line, problem.column) == ("unknown-dependency", 6, 9)
    assert problem.hint == "depends_on must name step_ids defined in this plan"


def test_a_cycle_names_its_path_and_the_line_of_each_edge() -> None:
    assert rendered("""\
        name: p
        steps:
          - step_id: a
            name: A
            depends_on: [c]
          - step_id: b
            name: B
            depends_on:
              - a
          - step_id: c
            name: C
            depends_on: [b]
        """) == [
        "plan.yaml:5:18: dependency cycle a → c → b → a (→ means 'depends on': a → c at line 5, "
        "c → b at line 12, b → a at line 9) — remove one of these dependencies so the steps can "
        "run in order"
    ]


def test_each_separate_cycle_is_reported() -> None:
    found = problems("""\
        name: p
        steps:
          - {step_id: a, name: A, depends_on: [b]}
          - {step_id: b, name: B, depends_on: [a]}
          - {step_id: c, name: C, depends_on: [d]}
          - {step_id: d, name: D, depends_on: [c]}
        """)
    assert [(p.code, p.line, p.column) for p in found] == [
        ("dependency-cycle", 3, 40), ("dependency-cycle", 5, 40)]
    assert "a → b → a" in found[0].message
    assert "c → d → c" in found[1].message


def test_a_step_depending_on_itself() -> None:
    assert rendered("""\
        name: p
        steps:
          - step_id: a
            name: A
            depends_on: [a]
        """) == ["plan.yaml:5:18: step 'a' depends on itself — remove 'a' from its depends_on"]


def test_a_dependency_listed_twice() -> None:
    problem = the("""\
        name: p
        steps:
          - {step_id: a, name: A}
          - {step_id: b, name: B, depends_on: [a, a]}
        """)
    assert (problem.code, problem.line, problem.column) == ("duplicate-dependency", 4, 43)


def test_a_huge_cycle_is_named_briefly() -> None:
    n = 500
    text = "name: p\nsteps:\n" + "".join(
        f"  - {{step_id: s{i}, name: S, depends_on: [s{(i + 1) % n}]}}\n" for i in range(n)
    )
    (problem,) = problems(text)
    assert problem.code == "dependency-cycle"
    assert "(480 more)" in problem.message
    assert len(problem.message) < 1000


# --- steps ------------------------------------------------------------------------------------


def test_unknown_worker_role_lists_the_valid_ones() -> None:
    assert rendered("""\
        name: p
        steps:
          - step_id: a
            name: A
            worker_role: analist
        """) == [
        "plan.yaml:5:18: unknown worker role 'analist' in step 'a' — did you mean 'analyst'? "
        "valid roles: analyst, researcher, data_analyst, manager, designer"
    ]


@pytest.mark.parametrize(
    ("step_id", "column", "suggestion"),
    [
        ("Gather Data", 14, "e.g. 'gather-data'"),
        ("../etc/passwd", 14, "e.g. 'etc-passwd'"),
        ("-leading", 14, "e.g. 'leading'"),
        ("ünïcode", 14, "e.g. 'n-code'"),
    ],
)
def test_step_ids_must_be_slugs(step_id: str, column: int, suggestion: str) -> None:
    problem = the(f"""\
        name: p
        steps:
          - step_id: "{step_id}"
            name: A
        """)
    assert (problem.code, problem.line, problem.column) == ("invalid-step-id", 3, column)
    assert problem.hint.startswith("use lowercase letters, digits, '-' and '_'")
    assert problem.hint.endswith(suggestion)


def test_a_slug_over_the_limit_names_the_limit() -> None:
    problem = the(f"name: p\nsteps:\n  - step_id: {'x' * 101}\n    name: A\n")
    assert (problem.code, problem.line, problem.column) == ("invalid-step-id", 3, 14)
    assert "is 101 characters long, over the limit of 100" in problem.message
    assert problem.hint == "shorten it (step ids name output files)"
    problem = the(f"name: {'p' * 101}\nsteps:\n  - {{step_id: a, name: A}}\n")
    assert "is 101 characters long, over the limit of 100" in problem.message


def test_a_lookalike_character_is_named_in_did_you_mean() -> None:
    problem = the("name: p\nsteps:\n  - {step_id: scope, name: S}\n"
                  "  - {step_id: b, name: B, depends_on: [\u0441cope]}\n")
    assert problem.hint == ("did you mean 'scope'? (they only look alike: 'с' is U+0441 "
                            "CYRILLIC SMALL LETTER ES)")


def test_plan_name_must_be_a_slug() -> None:
    problem = the("name: My Plan\nsteps:\n  - {step_id: a, name: A}\n")
    assert (problem.code, problem.line, problem.column) == ("invalid-plan-name", 1, 7)
    assert problem.hint.endswith("e.g. 'my-plan'")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("retry_max: -1", ("out-of-range", 5, 16, "retry_max must be ≥ 0 (got -1)")),
        ("timeout_seconds: -5", ("out-of-range", 5, 22, "timeout_seconds must be ≥ 0 (got -5)")),
        ("timeout_seconds: -0.5", ("out-of-range", 5, 22,
                                   "timeout_seconds must be ≥ 0 (got -0.5)")),
        ("retry_max: 101", ("out-of-range", 5, 16, "retry_max must be ≤ 100 (got 101)")),
        ("retry_max: two", ("invalid-type", 5, 16,
                            "retry_max must be a whole number (got 'two')")),
        ("retry_max: yes", ("invalid-type", 5, 16, "retry_max must be a whole number (got true)")),
        ("retry_max: 1.5", ("invalid-type", 5, 16, "retry_max must be a whole number (got 1.5)")),
        ("timeout_seconds: .nan", ("invalid-type", 5, 22,
                                   "timeout_seconds must be a finite number (got nan)")),
        ("timeout_seconds: .inf", ("invalid-type", 5, 22,
                                   "timeout_seconds must be a finite number (got inf)")),
        ("description: [x]", ("invalid-type", 5, 18, "description must be text (got a list)")),
    ],
)
def test_step_values_are_checked(line: str, expected: tuple[str, int, int, str]) -> None:
    problem = the(f"""\
        name: p
        steps:
          - step_id: a
            name: A
            {line}
        """)
    assert (problem.code, problem.line, problem.column, problem.message) == expected


# --- templates --------------------------------------------------------------------------------


TEMPLATE_PLAN = """\
name: p
inputs:
  brief:
    description: what to do
  audience: {}
steps:
  - step_id: a
    name: A
    prompt_template: TEMPLATE
"""


NOT_A_NAME = ("placeholder {x.y} in step 'a': 'x' is neither a declared input nor an upstream "
              "step")


def template_problems(template: str) -> list[tuple[str, int | None, int | None, str]]:
    text = TEMPLATE_PLAN.replace("TEMPLATE", template)
    try:
        load_plan("plan.yaml", text)
    except PlanValidationError as exc:
        return [(p.code, p.line, p.column, p.message) for p in exc.problems]
    return []


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Write {brief} for {audience}; literal {{braces}}", []),
        ("Write {brief", [("template-syntax", 9, 28, "unclosed '{' in prompt_template")]),
        ("Write brief}", [("template-syntax", 9, 33, "single '}' in prompt_template")]),
        # {x.y} names a typed field (issue 18): an input, being text, has none.
        ("Write {brief.title}", [("input-has-no-fields", 9, 28, "placeholder {brief.title} in "
                                  "step 'a': 'brief' is a run input (text); it has no field "
                                  "'title'")]),
        ("Write {brief[0]}", [("template-syntax", 9, 28, "placeholder {brief[0]} uses index "
                               "access, which templates do not support")]),
        ("Write {brief!r}", [("template-syntax", 9, 28, "placeholder {brief!r} has a "
                              "conversion, which templates do not support")]),
        ("Write {brief:>10}", [("template-syntax", 9, 28, "placeholder {brief:>10} has a "
                                "format spec, which templates do not support")]),
        ("Write {}", [("template-syntax", 9, 28, "empty placeholder '{}' in prompt_template")]),
        ("Write {0}", [("template-syntax", 9, 28, "placeholder {0}: a placeholder holds one "
                        "reference, optionally with '?? value'")]),
        ("Write {breif}", [("undeclared-input", 9, 28, "placeholder {breif} in step 'a' is not "
                            "a declared input")]),
        ('"Say {brief} {x.y} {zz}"', [
            ("unknown-reference", 9, 35, NOT_A_NAME),
            ("undeclared-input", 9, 41, "placeholder {zz} in step 'a' is not a declared input"),
        ]),
        ("'it''s {x.y}'", [("unknown-reference", 9, 22, NOT_A_NAME)]),  # escaped: the scalar
        ('"tab\\t{x.y}"', [("unknown-reference", 9, 22, NOT_A_NAME)]),
    ],
)
def test_template_problems_point_into_the_template(
    template: str, expected: list[tuple[str, int, int, str]]
) -> None:
    assert template_problems(template) == expected


def test_template_problems_in_a_literal_block_point_at_their_line_and_column() -> None:
    found = problems("""\
        name: p
        steps:
          - step_id: a
            name: A
            prompt_template: |

              first line {ok}
                indented {x.y}
              last }
        """)
    assert [(p.line, p.column) for p in found] == [(8, 18), (9, 12)]


def test_template_problems_in_a_folded_block_point_at_the_block() -> None:
    problem = the("""\
        name: p
        steps:
          - step_id: a
            name: A
            prompt_template: >
              folded text
              and {x.y}
        """)
    assert (problem.line, problem.column) == (5, 22)


def test_undeclared_input_lists_the_declared_ones() -> None:
    problem = the("""\
        name: p
        inputs:
          brief: {}
        steps:
          - {step_id: a, name: A, prompt_template: "{zzzz}"}
        """)
    assert problem.hint == "declare it under 'inputs:' (declared: brief)"


def test_without_inputs_every_placeholder_is_required() -> None:
    plan = load_plan("p.yaml", textwrap.dedent("""\
        name: p
        steps:
          - {step_id: a, name: A, prompt_template: "{topic} in {geo}"}
          - {step_id: b, name: B, prompt_template: "{geo} and {focus}"}
        """))
    assert plan.required_inputs() == ["topic", "geo", "focus"]


def test_declared_inputs_with_defaults_are_optional() -> None:
    plan = load_plan("p.yaml", textwrap.dedent("""\
        name: p
        inputs:
          brief: {}
          tone:
            default: plain
          extra:
        steps:
          - {step_id: a, name: A, prompt_template: "{brief} {tone}"}
        """))
    assert plan.required_inputs() == ["brief", "extra"]
    assert plan.optional_inputs() == {"tone": "plain"}


def test_invalid_input_names() -> None:
    problem = the("""\
        name: p
        inputs:
          my-input: {}
        steps:
          - {step_id: a, name: A}
        """)
    assert (problem.code, problem.line, problem.column) == ("invalid-input-name", 3, 3)


def test_a_hostile_template_is_cheap_and_reports_a_bounded_number_of_problems() -> None:
    for hostile in ("{a" * 500_000, "x{" * 500_000):
        parsed = templates.parse(hostile)
        assert len(parsed.issues) == templates.MAX_ISSUES + 1
        assert "only the first 20 are shown" in parsed.issues[-1].message
        assert parsed.issues[-1].offset < 100  # it stopped there: the rest is never scanned


@pytest.mark.parametrize("piece", ["{", "}", "{{x}}"])
def test_template_parsing_is_linear(piece: str) -> None:
    texts = {n: piece * n + "}" for n in (50_000, 200_000)}  # every brace is read
    assert growth(lambda n: lambda: templates.parse(texts[n]), 50_000) < LINEAR


def test_render_fills_placeholders_and_keeps_literal_braces() -> None:
    assert templates.render("{a} {{b}} {a}", {"a": "x"}) == "x {b} x"
    with pytest.raises(ValueError, match="format spec"):
        templates.render("{a:>999999999}", {"a": "x"})


# --- all in one pass ---------------------------------------------------------------------------


def test_every_problem_is_reported_in_one_pass_sorted_by_position() -> None:
    found = problems("""\
        name: Bad Name
        colour: blue
        inputs:
          brief: {}
        steps:
          - step_id: Scope
            name: Scope
            worker_role: wizard
            prompt_template: "{brief} {x.y}"
          - step_id: research
            name: Research
            depends_on: [scpe, research]
            retry_max: -2
          - step_id: research
            name: Again
            timeout_seconds: -1
          - step_id: loop-a
            name: A
            depends_on: [loop-b]
          - step_id: loop-b
            name: B
            depends_on: [loop-a]
            prompt_template: "{undeclared}"
        """)
    assert [(p.code, p.line, p.column) for p in found] == [
        ("invalid-plan-name", 1, 7),
        ("unknown-key", 2, 1),
        ("invalid-step-id", 6, 14),
        ("unknown-role", 8, 18),
        ("unknown-reference", 9, 31),
        ("unknown-dependency", 12, 18),
        ("self-dependency", 12, 24),
        ("out-of-range", 13, 16),
        ("duplicate-step-id", 14, 14),
        ("out-of-range", 16, 22),
        ("dependency-cycle", 19, 18),
        ("undeclared-input", 23, 23),
    ]


def test_problems_of_a_plan_built_in_python_are_named_after_the_plan() -> None:
    plan = BasePlan("demo")
    plan.add_step(PlanStep(step_id="a", name="A", depends_on=["b"]))
    plan.add_step(PlanStep(step_id="b", name="B", depends_on=["a"]))
    (problem,) = plan.check()
    assert problem.render().startswith("<plan demo>: dependency cycle a → b → a")
    with pytest.raises(PlanValidationError):
        plan.validate()


def test_python_plans_get_the_same_checks() -> None:
    plan = BasePlan("demo", inputs={"brief": InputSpec()})
    plan.add_step(PlanStep(step_id="a", name="A", prompt_template="{brief} {typo}"))
    plan.add_step(PlanStep(step_id="a", name="A2", worker_role=WorkerRole.MANAGER))
    codes = [p.code for p in plan.check()]
    assert sorted(codes) == ["duplicate-step-id", "undeclared-input"]


# --- scale ----------------------------------------------------------------------------------


def test_a_10000_step_plan_validates_in_linear_time(tmp_path: Path) -> None:
    plans = {}
    for n in (2_500, 10_000):
        path = tmp_path / f"large-{n}.yaml"
        path.write_text(generate(n))
        plans[n] = load_plan(path)
    assert len(plans[10_000].steps) == 10_000
    assert plans[10_000].check() == []
    assert growth(lambda n: plans[n].check, 2_500) < LINEAR  # figures: benchmarks/


def test_thousands_of_mistakes_do_not_make_validation_quadratic() -> None:
    def mistaken(n: int) -> BasePlan:
        plan = BasePlan("big", inputs={f"in{i}": InputSpec() for i in range(n)})
        for i in range(n):
            plan.add_step(PlanStep(step_id=f"s{i}", name="S", depends_on=[f"t{i}", f"s{i}"],
                                   prompt_template=f"{{typo{i}}}"))
        plan.add_step(PlanStep(step_id="fan-in", name="F",
                               depends_on=[f"s{i}" for i in range(n)]))
        return plan

    assert len(mistaken(10_000).check()) == 3 * 10_000
    plans = {n: mistaken(n) for n in (2_500, 10_000)}
    assert growth(lambda n: plans[n].check, 2_500, tries=3) < LINEAR


def test_dag_helpers() -> None:
    graph = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    assert dag.topological_order(graph) == ["a", "b", "c", "d"]
    assert dag.levels(graph) == [["a"], ["b", "c"], ["d"]]
    assert dag.find_cycles(graph) == []
    assert dag.find_cycles({"a": ["b"], "b": ["a"], "c": ["c"]}) == [["a", "b", "a"]]
    chain = {f"n{i}": [f"n{i - 1}"] if i else [] for i in range(100_000)}
    assert dag.topological_order(chain)[-1] == "n99999"
    chain["n0"] = ["n99999"]
    assert len(dag.find_cycles(chain)[0]) == 100_001  # iterative: no recursion limit


def test_problems_error_renders_one_line_per_problem() -> None:
    with pytest.raises(ProblemsError) as caught:  # and it must be raised at all
        load_plan("p.yaml", "name: p\nsteps:\n  - {step_id: a, name: A, depends_on: [a, b]}\n")
    assert str(caught.value).splitlines() == [p.render() for p in caught.value.problems]
    assert len(caught.value.problems) == 2


@pytest.mark.parametrize("field", ["a\nb", "a:\n", "a!\n", "a[\n]", "a\x1b[31m"])
def test_a_placeholder_with_a_newline_or_escape_is_shown_on_one_line(field: str) -> None:
    (issue,) = templates.parse("{" + field + "}").issues
    assert "\n" not in issue.message and "\x1b" not in issue.message
    assert "\\n" in issue.message or "\\x1b" in issue.message
