"""Resume planning on long chains whose first step changed: linear, up to 10,000 steps.

For a chain s0 → s1 → ... whose every step succeeded, with s0's definition changed since,
times (median of a few runs):

(a) ``resume.decide``: which steps a resume reuses, and why the others run (pure);
(b) ``History.reuse_for``: the same, reading the run's step records from SQLite;
(c) the planning this replaced (every downstream step asked which changed steps it descends
    from), on the smaller sizes only, for comparison.

Prints each figure and the growth time(2n)/time(n): about 2 is linear, 4 quadratic.

    python benchmarks/resume_planning.py [--runs 3]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import plan_from_graph

from dworkers import dag
from dworkers.events import StepInfo
from dworkers.history import History
from dworkers.history.records import StepRecord
from dworkers.history.resume import ResumeDecision, decide
from dworkers.plans.base import BasePlan
from dworkers.results import RunResult, StepResult, StepStatus

SIZES = (2_500, 5_000, 10_000)
OLD_SIZES = (500, 1_000, 2_000)


def chain(n: int) -> BasePlan:
    return plan_from_graph("chain", {f"s{i}": ([f"s{i - 1}"] if i else []) for i in range(n)})


def succeeded_run(plan: BasePlan) -> RunResult:
    """A recorded run of ``plan`` whose every step succeeded, as it was before s0 changed."""
    outputs = {s.step_id: StepResult(step_id=s.step_id, status=StepStatus.SUCCEEDED,
                                     output=f"out {s.step_id}", fingerprint=s.fingerprint(),
                                     attempts=1) for s in plan.steps}
    return RunResult(run_id=f"chain-{len(outputs)}", plan=plan.name, tenant="t", success=True,
                     outputs=outputs)


def changed_first_step(plan: BasePlan) -> BasePlan:
    first = plan.steps[0]
    first.description = "Do s0, differently"
    return plan


def records(plan: BasePlan, run: RunResult) -> list[StepRecord]:
    return [StepRecord(run.run_id, s.step_id, i, s.name, "analyst", list(s.depends_on),
                       "succeeded", "m", None, f"out {s.step_id}", None, 1, 0.0, 0, 0, 0.0,
                       False, None, run.outputs[s.step_id].fingerprint, None, None)
            for i, s in enumerate(plan.steps)]


def old_decide(plan: BasePlan, steps: list[StepRecord]) -> list[ResumeDecision]:
    """The planning ``decide`` replaced (quadratic on a chain whose first step changed)."""
    by_id = {s.step_id: s for s in steps}
    graph = plan.graph
    changed: dict[str, str] = {}
    for sid in graph:
        step, record = plan.get_step(sid), by_id.get(sid)
        if record is None:
            changed[sid] = "new step"
        elif record.succeeded and step is not None and record.fingerprint != step.fingerprint():
            changed[sid] = "definition changed"
    downstream = dag.descendants(graph, changed)
    decisions = []
    for sid in graph:
        if sid in changed:
            decisions.append(ResumeDecision(sid, False, changed[sid]))
        elif sid in downstream:
            ups = [c for c in changed if sid in dag.descendants(graph, [c])]
            decisions.append(ResumeDecision(sid, False, f"depends on changed {', '.join(ups)}"))
        else:
            decisions.append(ResumeDecision(sid, True, "succeeded"))
    return decisions


def median_seconds(work: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(label: str, sizes: tuple[int, ...], seconds: list[float]) -> None:
    figures = ", ".join(f"{n:,} steps {t * 1000:.1f} ms" for n, t in zip(sizes, seconds,
                                                                             strict=True))
    growth = ", ".join(f"{b / a:.2f}" for a, b in itertools.pairwise(seconds))
    print(f"{label}: {figures}; growth per doubling: {growth}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    pure, stored = [], []
    with tempfile.TemporaryDirectory() as tmp:
        history = History(Path(tmp) / "history.db").open()
        for n in SIZES:
            plan = chain(n)
            run = succeeded_run(plan)
            history.save_run(run, steps=[StepInfo(s.step_id, s.name, "analyst", "m",
                                                  tuple(s.depends_on)) for s in plan.steps])
            steps = records(plan, run)
            plan = changed_first_step(plan)
            decisions = decide(plan, steps)
            assert not any(d.reuse for d in decisions)
            assert decisions[-1].reason == "depends on changed s0"
            pure.append(median_seconds(lambda p=plan, s=steps: decide(p, s), args.runs))
            stored.append(median_seconds(
                lambda p=plan, r=run.run_id: history.reuse_for(r, p), args.runs))
        history.close()
    report("resume.decide (pure)", SIZES, pure)
    report("History.reuse_for (with SQLite)", SIZES, stored)

    old = []
    for n in OLD_SIZES:
        plan = chain(n)
        steps = records(plan, succeeded_run(plan))
        plan = changed_first_step(plan)
        assert old_decide(plan, steps) == decide(plan, steps)
        old.append(median_seconds(lambda p=plan, s=steps: old_decide(p, s), 1))
    report("replaced planning (for comparison)", OLD_SIZES, old)


if __name__ == "__main__":
    main()
