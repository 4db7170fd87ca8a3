"""Resume planning (``dworkers.history.resume``): which steps a resume reuses, and why the
others run — pure, and linear in the plan's size."""

from __future__ import annotations

from collections.abc import Callable

from support import LINEAR, growth, make_plan

from dworkers.history.records import StepRecord
from dworkers.history.resume import decide, reusable
from dworkers.plans.base import BasePlan


def records(plan: BasePlan, statuses: dict[str, str] | None = None) -> list[StepRecord]:
    """The steps of an earlier run of ``plan``: succeeded unless ``statuses`` says otherwise."""
    return [StepRecord("r", s.step_id, i, s.name, "analyst", list(s.depends_on),
                       (statuses or {}).get(s.step_id, "succeeded"), "m", None,
                       f"out {s.step_id}", None, 1, 0.0, 0, 0, 0.0, False, None,
                       s.fingerprint(), None, None)
            for i, s in enumerate(plan.steps)]


def reasons(plan: BasePlan, steps: list[StepRecord]) -> dict[str, str]:
    return {d.step_id: ("reuse: " if d.reuse else "") + d.reason for d in decide(plan, steps)}


def test_reuses_what_succeeded_and_says_why_the_rest_runs() -> None:
    plan = make_plan({"a": [], "b": ["a"], "c": ["b"], "d": [], "e": ["d"], "f": []})
    steps = records(plan, {"b": "failed", "c": "skipped", "d": "running", "e": "pending"})
    assert reasons(plan, steps) == {
        "a": "reuse: succeeded", "b": "failed", "c": "skipped", "d": "did not finish",
        "e": "never started", "f": "reuse: succeeded"}
    assert set(reusable(decide(plan, steps), steps)) == {"a", "f"}


def test_a_changed_step_reruns_with_everything_below_it_naming_the_change() -> None:
    plan = make_plan({"a": [], "b": ["a"], "c": ["b"], "x": [], "y": ["c", "x"]})
    steps = records(plan)
    plan.get_step("a").description = "Do a, differently"  # type: ignore[union-attr]
    plan.get_step("x").description = "Do x, differently"  # type: ignore[union-attr]
    assert reasons(plan, steps) == {
        "a": "definition changed", "b": "depends on changed a", "c": "depends on changed a",
        "x": "definition changed", "y": "depends on changed a, x"}


def test_a_reason_names_at_most_three_changed_steps() -> None:
    graph: dict[str, list[str]] = {f"s{i}": [] for i in range(5)}
    graph["join"] = list(graph)
    plan = make_plan(graph)
    steps = records(plan)
    for i in range(5):
        plan.get_step(f"s{i}").description = "changed"  # type: ignore[union-attr]
    assert reasons(plan, steps)["join"] == "depends on changed s0, s1, s2, ..."


def test_a_step_the_earlier_run_did_not_have_is_new() -> None:
    plan = make_plan({"a": [], "b": ["a"]})
    steps = records(make_plan({"a": []}))
    assert reasons(plan, steps) == {"a": "reuse: succeeded", "b": "new step"}


def test_planning_a_chain_whose_first_step_changed_is_linear() -> None:
    """The case that was quadratic: every step below the change asked which changed steps it
    descends from (benchmarks/resume_planning.py has the figures)."""
    def planning(n: int) -> Callable[[], object]:
        plan = make_plan({f"s{i}": ([f"s{i - 1}"] if i else []) for i in range(n)})
        steps = records(plan)
        plan.get_step("s0").description = "changed"  # type: ignore[union-attr]
        decisions = decide(plan, steps)
        assert decisions[-1].reason == "depends on changed s0"
        return lambda: decide(plan, steps)

    assert growth(planning, 1_000) < LINEAR


def test_fields_added_later_leave_recorded_steps_unchanged_until_set() -> None:
    # Steps recorded before a field existed were digested without it: a resume after an
    # upgrade must still reuse them, and setting the field must still count as a change.
    import hashlib
    import json

    from dworkers.plans.base import ADDED_FIELDS, PlanStep

    step = PlanStep(step_id="a", name="A", description="d", prompt_template="Do {x}")
    before = {k: v for k, v in step.model_dump(mode="json").items()
              if k not in (*ADDED_FIELDS, "approve")}  # a gate never changes what is asked
    recorded = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert step.fingerprint() == recorded
    set_to = {"tools": ["regs"], "max_tool_calls": 4, "output_schema": {"severity": "low|high"},
              "when": "x == 'y'", "output_retries": 3}
    assert set(set_to) == set(ADDED_FIELDS)
    for name, value in set_to.items():
        changed = step.model_copy(update={name: value})
        assert changed.fingerprint() != recorded, name
