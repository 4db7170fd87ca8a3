"""Shared pieces of the benchmark scripts: DAG generators and the local test server."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_llm_server import FakeLLMServer  # noqa: E402

from dworkers.plans.base import BasePlan, PlanStep  # noqa: E402

__all__ = ["ROOT", "FakeLLMServer", "chain_plan_yaml", "layered_dag", "local_server",
           "plan_from_graph"]

SERVER = ROOT / "tests" / "fake_llm_server.py"


@contextlib.contextmanager
def local_server(*args: str) -> Iterator[str]:
    """The local test server in its own process, as a provider would be (in this process it
    would compete with the engine for the GIL and add its own delays to the figures), started
    with ``args`` (see ``tests/fake_llm_server.py --help``); yields its base URL."""
    proc = subprocess.Popen([sys.executable, str(SERVER), *args], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()  # SIGTERM: the server writes its --log before it exits
        proc.wait(timeout=60)


def layered_dag(steps: int, seed: int, width: int = 5) -> dict[str, list[str]]:
    """A random layered DAG: each step depends on 1-3 steps of earlier layers."""
    rng = random.Random(seed)
    graph: dict[str, list[str]] = {}
    layers: list[list[str]] = []
    while len(graph) < steps:
        size = min(rng.randint(1, width), steps - len(graph))
        layer = [f"s{len(graph) + i}" for i in range(size)]
        for sid in layer:
            earlier = [s for previous in layers[-3:] for s in previous]
            count = min(len(earlier), rng.randint(1, 3))
            graph[sid] = rng.sample(earlier, k=count) if earlier else []
        layers.append(layer)
    return graph


def plan_from_graph(name: str, graph: dict[str, list[str]]) -> BasePlan:
    plan = BasePlan(name, description="benchmark")
    for sid, deps in graph.items():
        plan.add_step(PlanStep(step_id=sid, name=sid.upper(), description=f"Do {sid}",
                               depends_on=deps))
    return plan


def chain_plan_yaml(name: str, description: str, steps: int, prompt: str) -> str:
    """A plan file: ``steps`` analyst steps in a chain (s0 → s1 → …), one input ``topic``;
    ``prompt`` is each step's template, ``{n}`` its number."""
    lines = [f"name: {name}", f"description: {description}", "inputs:",
             "  topic:", "    description: what to write about", "steps:"]
    for n in range(steps):
        lines += [f"  - step_id: s{n}", f"    name: Step {n}", "    worker_role: analyst",
                  f'    prompt_template: "{prompt.replace("{n}", str(n))}"']
        if n:
            lines.append(f"    depends_on: [s{n - 1}]")
    return "\n".join(lines) + "\n"
