"""How long static validation of a 10,000-step plan takes.

Generates a layered random DAG (every step depends on up to three steps of earlier layers, and
uses a declared input in its template), then times

(a) ``BasePlan.check()`` on the loaded plan (the graph, id and template checks), and
(b) ``load_plan()`` from the YAML file (read, parse, build the models and check).

Prints the figures (median of a few runs); the target for (a) is well under one second.

    python benchmarks/validate_large.py [--steps 10000] [--runs 5] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

ROLES = ("analyst", "researcher", "data_analyst", "manager", "designer")


def generate(steps: int, seed: int = 1, layer_width: int = 50) -> str:
    """YAML text of a valid plan: ``steps`` steps in layers of ``layer_width``."""
    rng = random.Random(seed)
    lines = [
        "name: large-plan",
        f"description: A generated plan with {steps} steps",
        "inputs:",
        "  brief:",
        "    description: What the plan is about",
        "  audience:",
        "    description: Who reads the result",
        "    default: executives",
        "steps:",
    ]
    earlier: list[str] = []
    layer: list[str] = []
    for i in range(steps):
        if i and i % layer_width == 0:
            earlier += layer
            layer = []
        step_id = f"step-{i:05d}"
        deps = rng.sample(earlier, k=min(len(earlier), rng.randint(0, 3)))
        lines += [
            f"  - step_id: {step_id}",
            f"    name: Step {i}",
            f"    description: Generated step number {i}",
            f"    worker_role: {rng.choice(ROLES)}",
            f"    depends_on: [{', '.join(deps)}]",
            f"    prompt_template: \"Do part {i} of {{brief}} for {{audience}}; "
            "literal {{braces}} too.\"",
        ]
        if rng.random() < 0.2:
            lines.append(f"    retry_max: {rng.randint(0, 3)}")
        layer.append(step_id)
    return "\n".join(lines) + "\n"


def _median_seconds(action: object, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    from dworkers.loader import load_plan

    text = generate(args.steps, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "large-plan.yaml"
        path.write_text(text, encoding="utf-8")
        plan = load_plan(path)
        assert len(plan.steps) == args.steps
        check = _median_seconds(plan.check, args.runs)
        load = _median_seconds(lambda: load_plan(path), args.runs)
    print(f"plan: {args.steps:,} steps, {len(text) / 1e6:.1f} MB of YAML")
    print(f"(a) BasePlan.check():   {check * 1000:8.1f} ms  (target: well under 1000 ms)")
    print(f"(b) load_plan(file):    {load * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
