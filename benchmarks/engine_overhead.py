"""Engine overhead per step: a 1,000-step plan with a client that answers instantly.

Target: < 2 ms per step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

from _common import layered_dag, plan_from_graph

from dworkers.engine import PlanBuilder, RunOptions
from dworkers.errors import Problem
from dworkers.llm import Completion, DeltaCallback, LLMRequest
from dworkers.tenants.config import LimitsConfig, TenantConfig


class InstantClient:
    offline = False

    async def complete(self, request: LLMRequest, on_delta: DeltaCallback) -> Completion:
        on_delta("done")
        return Completion("done", request.model, 10, 1, 0.0)

    def preflight(self, models: Mapping[str, Sequence[str]], keyed: set[str]) -> list[Problem]:
        return []


def run(graph: dict[str, list[str]], concurrency: int) -> float:
    tenant = TenantConfig(id="bench", limits=LimitsConfig(max_concurrency=concurrency))
    engine = PlanBuilder(plan_from_graph("overhead", graph), tenant, client=InstantClient(),
                         options=RunOptions()).build()
    start = time.perf_counter()
    result = asyncio.run(engine.run())
    elapsed = time.perf_counter() - start
    assert result.success
    return elapsed


def main() -> None:
    steps = 1000
    shapes = {
        "layered DAG": layered_dag(steps, seed=1, width=20),
        "chain": {f"s{i}": ([f"s{i - 1}"] if i else []) for i in range(steps)},
        "independent": {f"s{i}": [] for i in range(steps)},
    }
    print(f"{'shape':14} {'concurrency':>11} {'total':>8} {'per step':>9}")
    for name, graph in shapes.items():
        for concurrency in (8, 1000):
            best = min(run(graph, concurrency) for _ in range(3))
            print(f"{name:14} {concurrency:11} {best:7.3f}s {best / steps * 1000:7.3f}ms")


if __name__ == "__main__":
    main()
