"""Makespan ÷ critical path through the real HTTP path (litellm → local server in its own
process), in-process through ``Engine.run`` and through the command line.

A ratio of 1.00 means every step started the instant its own dependencies finished.
Target: ≤ 1.02 through the command line. "with floor" divides by the critical path with each
step's measured per-call floor added, which isolates what the scheduler itself adds.
"command line" runs ``dworkers run PLAN.yaml --json`` in a subprocess, off a terminal (so its
calls are not streamed, as nobody watches them), with history and run files as a user gets
them; its makespan is the run's own ``total_duration_ms``.

``--profile`` instead runs a zero-latency chain of 30 steps through the command line under
cProfile and prints where the client's time per step goes (dworkers' own functions, cumulative,
per step): what sits between one step's answer and the next step's request.

    python benchmarks/makespan.py [--profile]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pstats
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from _common import layered_dag, local_server, plan_from_graph

from dworkers import dag
from dworkers.engine import PlanBuilder, RunOptions
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


@contextlib.contextmanager
def server_process(latency: dict[str, float]) -> Iterator[str]:
    """The local test server (in its own process) answering each step after its latency."""
    rules = [{"contains": f"\n# Your step: {sid.upper()} ({sid})", "latency": seconds,
              "content": f"output of {sid}"} for sid, seconds in latency.items()]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(rules, handle)
    try:
        with local_server("--rules", handle.name) as url:
            yield url
    finally:
        os.unlink(handle.name)


def measure(
    name: str, graph: dict[str, list[str]], latency: dict[str, float], *, stream: bool = True
) -> tuple[float, float]:
    tenant = TenantConfig(id="bench", models=ModelsConfig(default="openai/bench-model"),
                          limits=LimitsConfig(max_concurrency=1000, timeout_seconds=60))
    with server_process(latency) as url:
        engine = PlanBuilder(plan_from_graph(name, graph), tenant, api_base=url,
                             options=RunOptions(stream=stream)).build()
        result = asyncio.run(engine.run())
    assert result.success, [r.error for r in result.outputs.values() if r.error]
    return result.total_duration_ms / 1000, dag.critical_path(graph, latency)


def plan_yaml(name: str, graph: dict[str, list[str]]) -> str:
    lines = [f"name: {name}", "description: benchmark", "steps:"]
    for sid, deps in graph.items():
        lines += [f"  - step_id: {sid}", f"    name: {sid.upper()}", f"    description: Do {sid}",
                  f"    depends_on: [{', '.join(deps)}]"]
    return "\n".join(lines) + "\n"


def measure_cli(name: str, graph: dict[str, list[str]], latency: dict[str, float]) -> float:
    """The run's makespan through ``dworkers run --json`` in a subprocess, off a terminal."""
    with tempfile.TemporaryDirectory() as tmp, server_process(latency) as url:
        plan = Path(tmp) / f"{name}.yaml"
        plan.write_text(plan_yaml(name, graph))
        # The same tenant as in-process: no per-role caps (the built-in default has some).
        tenant = Path(tmp) / "bench.yaml"
        tenant.write_text("id: bench\nmodels: {default: openai/bench-model}\n"
                          "limits: {max_concurrency: 1000, timeout_seconds: 60}\n")
        env = {**os.environ, "DWORKERS_HOME": str(Path(tmp) / "home")}
        done = subprocess.run(
            [str(Path(sys.executable).parent / "dworkers"), "run", str(plan), "--tenant",
             str(tenant), "--api-base", url, "--json", "--out", str(Path(tmp) / "out")],
            capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise SystemExit(f"dworkers run failed ({done.returncode}): {done.stderr[-2000:]}")
        summary = json.loads(done.stdout)
    return float(summary["total_duration_ms"]) / 1000


def profile_cli(steps: int = 30) -> None:
    """Where the command line's time per step goes, on a chain whose calls answer at once."""
    chain = {f"c{i}": ([f"c{i - 1}"] if i else []) for i in range(steps)}
    with tempfile.TemporaryDirectory() as tmp, server_process(dict.fromkeys(chain, 0.0)) as url:
        work = Path(tmp)
        (work / "chain.yaml").write_text(plan_yaml("chain", chain))
        (work / "bench.yaml").write_text("id: bench\nmodels: {default: openai/bench-model}\n"
                                         "limits: {max_concurrency: 1000, timeout_seconds: 60}\n")
        env = {**os.environ, "DWORKERS_HOME": str(work / "home")}
        done = subprocess.run(
            [sys.executable, "-m", "cProfile", "-o", str(work / "cli.prof"), "-m", "dworkers.cli",
             "run", str(work / "chain.yaml"), "--tenant", str(work / "bench.yaml"),
             "--api-base", url, "--json", "--out", str(work / "out")],
            capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise SystemExit(f"dworkers run failed ({done.returncode}): {done.stderr[-2000:]}")
        per_step = float(json.loads(done.stdout)["total_duration_ms"]) / steps
        stats = pstats.Stats(str(work / "cli.prof")).stats  # type: ignore[attr-defined]
    print(f"zero-latency chain of {steps} through the command line, profiled: "
          f"{per_step:.1f} ms a step; dworkers' functions called about once a step or more:")
    rows = [(cumulative, calls, f"{path.split('/dworkers/')[1]}:{line} {name}")
            for (path, line, name), (_, calls, _, cumulative, _) in stats.items()
            if "/dworkers/" in path and steps <= calls <= 4 * steps]
    for cumulative, calls, where in sorted(rows, reverse=True)[:15]:
        print(f"  {cumulative * 1000 / steps:6.2f} ms a step  ({calls:4d} calls)  {where}")


def main() -> None:
    os.environ.setdefault("OPENAI_API_KEY", "sk-benchmark")
    if "--profile" in sys.argv[1:]:
        profile_cli()
        return
    rng = random.Random(7)
    cases = []
    graph = diamond()
    latency = {sid: 0.1 for sid in graph} | {"slow1": 3.0}
    cases.append(("diamond-10 (one slow branch)", graph, latency))
    for steps in (20, 100):
        graph = layered_dag(steps, seed=steps)
        cases.append((f"layered-{steps}", graph,
                      {sid: round(rng.uniform(0.1, 3.0), 2) for sid in graph}))
    measure("warmup", {"w": []}, {"w": 0.0})  # litellm's import and first call
    # The floor of one call through litellm to a server that answers at once: litellm's own
    # processing, not the scheduler's. A zero-latency chain of 20 measures it.
    chain = {f"c{i}": ([f"c{i - 1}"] if i else []) for i in range(20)}
    floor = measure("floor", chain, dict.fromkeys(chain, 0.0))[0] / len(chain)
    print(f"per-call floor (litellm + HTTP, zero-latency chain of 20): {floor * 1000:.1f} ms")
    print(f"{'DAG':30} {'path':>14} {'makespan':>9} {'critical':>9} {'ratio':>6}  "
          f"{'with floor':>10}")
    for name, graph, latency in cases:
        critical = dag.critical_path(graph, latency)
        floored = dag.critical_path(graph, {sid: t + floor for sid, t in latency.items()})
        for path in ("streamed", "not streamed", "command line"):
            if path == "command line":
                makespan = measure_cli(name.split()[0], graph, latency)
            else:
                makespan = measure(name.split()[0], graph, latency,
                                   stream=path == "streamed")[0]
            print(f"{name:30} {path:>14} {makespan:8.2f}s {critical:8.2f}s "
                  f"{makespan / critical:6.3f}  {makespan / floored:10.3f}")

if __name__ == "__main__":
    main()
