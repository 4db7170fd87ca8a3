"""Typed steps against a server that answers 30 % of first structured answers invalidly
(broken JSON, a missing required field, a value outside an enum, by turns), through litellm
to the local test server in its own process.

Prints, per model: which path the schema took (native ``json_schema`` or JSON mode), the
share of typed steps that succeeded (target ≥ 99.9 %), and the extra calls per invalid answer
(target exactly 1.00), checked against the attempts and tokens the run itself reports.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

from _common import local_server

from dworkers.engine import PlanBuilder, RunOptions
from dworkers.plans.base import BasePlan, InputSpec, PlanStep
from dworkers.tenants.config import LimitsConfig, ModelsConfig, TenantConfig

SCHEMA = {"severity": "low|medium|high", "in_scope": "bool", "areas": ["str"],
          "owner": {"name": "str", "team?": "str"}, "risk": "int(1..5)"}


def typed_plan(steps: int) -> BasePlan:
    """``steps`` independent typed steps."""
    plan = BasePlan("typed-bench", "benchmark", inputs={"brief": InputSpec()})
    for n in range(steps):
        plan.add_step(PlanStep(step_id=f"t{n}", name=f"T{n}", output_schema=SCHEMA,
                               prompt_template=f"Triage part {n} of {{brief}}"))
    return plan


def measure(model: str, steps: int, runs: int) -> dict[str, object]:
    tenant = TenantConfig(id="bench", models=ModelsConfig(default=model),
                          limits=LimitsConfig(max_concurrency=50, timeout_seconds=60))
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "requests.jsonl"
        with local_server("--invalid-first-structured", "0.3", "--log", str(log)) as url:
            results = []
            for run in range(runs):
                engine = PlanBuilder(typed_plan(steps), tenant, api_base=url,
                                     options=RunOptions(stream=run % 2 == 0)).build()
                results.append(asyncio.run(engine.run({"brief": f"brief {run}"})))
        requests = [json.loads(line) for line in log.read_text().splitlines()]
    outcomes = [step for result in results for step in result.outputs.values()]
    succeeded = sum(step.succeeded and step.value is not None for step in outcomes)
    invalid = sum(r["invalid"] for r in requests)
    attempts = sum(step.attempts for step in outcomes)
    paths = collections.Counter(r["structured"] for r in requests)
    return {"model": model, "steps": len(outcomes), "succeeded": succeeded,
            "calls": len(requests), "invalid": invalid, "attempts": attempts,
            "paths": dict(paths)}


def main() -> None:
    os.environ.setdefault("OPENAI_API_KEY", "sk-benchmark")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    steps, runs = (int(a) for a in (sys.argv[1:3] if len(sys.argv) > 2 else (100, 10)))
    print(f"{'model':22} {'path':12} {'typed steps':>11} {'succeeded':>10} {'calls':>6} "
          f"{'invalid':>8} {'extra/invalid':>13} {'attempts=calls':>15}")
    for model in ("openai/bench-model", "openai/gpt-4o"):
        row = measure(model, steps, runs)
        total, ok = int(row["steps"]), int(row["succeeded"])  # type: ignore[call-overload]
        calls, invalid = int(row["calls"]), int(row["invalid"])  # type: ignore[call-overload]
        extra = (calls - total) / invalid if invalid else float("nan")
        path = ", ".join(str(p) for p in row["paths"])  # type: ignore[union-attr]
        print(f"{model:22} {path:12} {total:>11} {ok / total:>9.2%} {calls:>6} {invalid:>8} "
              f"{extra:>13.2f} {row['attempts'] == calls!s:>15}")


if __name__ == "__main__":
    main()
