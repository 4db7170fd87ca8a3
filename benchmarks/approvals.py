"""Approval gates never make a step be paid for twice: random plans with gates, run through
the command line against the local test server until no gate waits, approving or rejecting
each gate at random, then count each step's calls in the server's request log.

Prints, over all plans: calls repeated after approve + resume (must be 0), calls made for a
rejected gate or a step downstream of one (must be 0), and steps never called that should have
been (must be 0).

    python benchmarks/approvals.py [--plans 10] [--steps 30] [--gates 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from pathlib import Path

from _common import FakeLLMServer, layered_dag
from support import invoke, marker

from dworkers import dag


def plan_yaml(graph: dict[str, list[str]], gates: set[str]) -> str:
    lines = ["name: gated-bench", "description: Random plan with approval gates", "steps:"]
    for sid, deps in graph.items():
        lines += [f"  - step_id: {sid}", f"    name: {sid.upper()}",
                  f"    depends_on: [{', '.join(deps)}]", f"    description: Do {sid}"]
        if sid in gates:
            lines.append(f'    approve: "Go on with {sid}?"')
    return "\n".join(lines) + "\n"


def below(graph: dict[str, list[str]], roots: set[str]) -> set[str]:
    """``roots`` and every step that depends on one of them, directly or not."""
    found = set(roots)
    for sid in dag.topological_order(graph):
        if any(dep in found for dep in graph[sid]):
            found.add(sid)
    return found


def one_plan(server: FakeLLMServer, work: Path, seed: int, steps: int,
             gates: int) -> tuple[int, int, int, int]:
    """(rounds, repeated calls, calls below a rejection, steps missing a call)."""
    rng = random.Random(seed)
    graph = layered_dag(steps, seed)
    gated = set(rng.sample(sorted(graph), gates))
    path = work / f"plan-{seed}.yaml"
    path.write_text(plan_yaml(graph, gated))
    first = len(server.requests)
    args = ("--model", "openai/test-model", "--api-base", server.url, "--out",
            str(work / "runs"), "--json", "-q", "--no-cache")  # other plans share prompts
    code, stdout, _ = invoke("run", str(path), *args)
    rejected: set[str] = set()
    rounds = 1
    while code == 3 and rounds <= gates + 1:
        run_id = json.loads(stdout)["run_id"]
        waiting = [sid for sid, r in json.loads(stdout)["outputs"].items()
                   if r["status"] == "waiting" and sid in gated
                   and r["error"].startswith("waiting for approval:")]
        for sid in waiting:
            verdict = "reject" if rng.random() < 0.3 else "approve"
            assert invoke(verdict, run_id, sid, "--note", "bench")[0] == 0
            if verdict == "reject":
                rejected.add(sid)
        code, stdout, _ = invoke("run", "--resume", run_id, *args)
        rounds += 1
    assert code == 0, (seed, code)
    called = {sid: sum(1 for r in server.requests[first:] if marker(sid) in r.text)
              for sid in graph}
    skipped = below(graph, rejected)
    repeated = sum(max(n - 1, 0) for n in called.values())
    wasted = sum(called[sid] for sid in skipped)
    missing = sum(1 for sid, n in called.items() if sid not in skipped and n == 0)
    return rounds, repeated, wasted, missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plans", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--gates", type=int, default=3)
    options = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-real-key")
    os.environ["DWORKERS_USER"] = "bench"
    with tempfile.TemporaryDirectory() as tmp, FakeLLMServer() as server:
        os.environ["DWORKERS_HOME"] = str(Path(tmp) / "home")
        totals = [0, 0, 0, 0]
        for seed in range(options.plans):
            for i, value in enumerate(one_plan(server, Path(tmp), seed, options.steps,
                                               options.gates)):
                totals[i] += value
        print(f"{options.plans} plans × {options.steps} steps, {options.gates} gates each, "
              f"{totals[0]} runs in all, {len(server.requests)} calls")
        print(f"repeated calls after approve + resume: {totals[1]}")
        print(f"calls for rejected gates and their dependents: {totals[2]}")
        print(f"steps that should have run and were never called: {totals[3]}")


if __name__ == "__main__":
    main()
