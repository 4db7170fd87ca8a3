"""Resume planning: which steps of an earlier run a resume reuses, and why the others run.

Pure and linear in the plan's size: one pass in dependency order, no I/O. ``History`` feeds it
the earlier run's step records.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dworkers import dag
from dworkers.history.records import StepRecord
from dworkers.plans.base import BasePlan
from dworkers.results import StepResult

NAMED_CAUSES = 3  # a reason names at most this many changed upstream steps


@dataclass(frozen=True, slots=True)
class ResumeDecision:
    """Whether a resume reuses a step of the earlier run, and why (for the CLI to show)."""

    step_id: str
    reuse: bool
    reason: str


def decide(plan: BasePlan, records: Iterable[StepRecord]) -> list[ResumeDecision]:
    """For each step of ``plan`` (in plan order): reuse the earlier run's result, or run.

    A step is reused only if it succeeded in that run, its definition (``fingerprint()``) is
    unchanged, and no step it depends on, directly or not, changed or is new. Steps that
    failed, were skipped or cancelled, never started, or were running when the process died
    run again, and so does everything downstream of them (the engine does that by itself: their
    new outputs change what their dependents are asked).
    """
    by_id = {record.step_id: record for record in records}
    graph = plan.graph
    position = {sid: i for i, sid in enumerate(graph)}
    # The changed steps each step depends on (itself included), first ones in plan order, at
    # most NAMED_CAUSES of them, and whether there were more.
    causes: dict[str, tuple[list[str], bool]] = {}
    changed: dict[str, str] = {}
    try:
        order = dag.topological_order(graph)
    except ValueError:  # a cycle: the engine refuses to run it, so any order will do here
        order = list(graph)
    for sid in order:
        step, record = plan.get_step(sid), by_id.get(sid)
        if record is None:
            changed[sid] = "new step"
        elif record.succeeded and step is not None and record.fingerprint != step.fingerprint():
            # (a step that did not succeed runs again anyway, and so does all below it)
            changed[sid] = "definition changed"
        upstream: dict[str, None] = {}
        more = False
        for dep in graph[sid]:
            named, more_of_dep = causes.get(dep, ([], False))
            upstream.update(dict.fromkeys(named))
            more = more or more_of_dep
        if sid in changed:
            upstream[sid] = None
        named = sorted(upstream, key=position.__getitem__)
        causes[sid] = (named[:NAMED_CAUSES], more or len(named) > NAMED_CAUSES)
    decisions = []
    for sid in graph:
        record = by_id.get(sid)
        named, more = causes[sid]
        named = [name for name in named if name != sid]
        if sid in changed:
            decision = ResumeDecision(sid, False, changed[sid])
        elif named:
            listed = ", ".join(named) + (", ..." if more else "")
            decision = ResumeDecision(sid, False, f"depends on changed {listed}")
        elif record is not None and record.succeeded:
            decision = ResumeDecision(sid, True, "succeeded")
        else:
            status = record.status if record else "pending"
            reason = {"pending": "never started", "running": "did not finish"}.get(status, status)
            decision = ResumeDecision(sid, False, reason)
        decisions.append(decision)
    return decisions


def reusable(decisions: Iterable[ResumeDecision],
             records: Iterable[StepRecord]) -> dict[str, StepResult]:
    """The earlier results a resume reuses: pass as ``PlanBuilder(..., reuse=...)``."""
    keep = {d.step_id for d in decisions if d.reuse}
    return {r.step_id: r.to_step_result() for r in records if r.step_id in keep}

