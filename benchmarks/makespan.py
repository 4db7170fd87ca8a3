"""Makespan ÷ critical path through the real HTTP path (litellm → local server).

A ratio of 1.00 means every step started the instant its own dependencies finished.
Target: ≤ 1.02.
"""

from __future__ import annotations

import asyncio
import random

from _common import FakeLLMServer, layered_dag, plan_from_graph

from dworkers import dag
from dworkers.engine import RunOptions
from dworkers.plans.builder import PlanBuilder
from dworkers.tenants.config import LimitsConfig, ModelsConfig, TenantConfig


def diamond() -> dict[str, list[str]]:
    """root → two chains of four (one holds a 3 s step) → sink: 10 steps."""
    graph: dict[str, list[str]] = {"root": []}
    for branch in ("fast", "slow"):
        previous = "root"
        for i in range(4):
            graph[f"{branch}{i}"] = [previous]
            previous = f"{branch}{i}"
    graph["sink"] = ["fast3", "slow3"]
    return graph


def measure(server: FakeLLMServer, name: str, graph: dict[str, list[str]],
            latency: dict[str, float]) -> tuple[float, float]:
    server.reset()
    for sid, seconds in latency.items():
        server.add_rule(f"Your step: {sid.upper()} ({sid})", latency=seconds,
                        content=f"output of {sid}")
    tenant = TenantConfig(id="bench", models=ModelsConfig(default="openai/bench-model"),
                          limits=LimitsConfig(max_concurrency=1000, timeout_seconds=60))
    engine = PlanBuilder(plan_from_graph(name, graph), tenant, api_base=server.url,
                         options=RunOptions()).build()
    result = asyncio.run(engine.run())
    assert result.success, [r.error for r in result.outputs.values() if r.error]
    return result.total_duration_ms / 1000, dag.critical_path(graph, latency)


def main() -> None:
    import os

    os.environ.setdefault("OPENAI_API_KEY", "sk-benchmark")
    rng = random.Random(7)
    cases = []
    graph = diamond()
    latency = {sid: 0.1 for sid in graph} | {"slow1": 3.0}
    cases.append(("diamond-10 (one slow branch)", graph, latency))
    for steps in (20, 100):
        graph = layered_dag(steps, seed=steps)
        cases.append((f"layered-{steps}", graph,
                      {sid: round(rng.uniform(0.1, 3.0), 2) for sid in graph}))
    with FakeLLMServer() as server:
        measure(server, "warmup", {"w": []}, {"w": 0.0})  # litellm's import and first call
        print(f"{'DAG':32} {'makespan':>9} {'critical':>9} {'ratio':>6}")
        for name, graph, latency in cases:
            makespan, critical = measure(server, name.split()[0], graph, latency)
            print(f"{name:32} {makespan:8.2f}s {critical:8.2f}s {makespan / critical:6.3f}")


if __name__ == "__main__":
    main()
