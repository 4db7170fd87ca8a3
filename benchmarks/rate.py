"""A dataset run against a provider-style rate limit it is not told: how much of it is used.

The local test server runs in its own process and enforces a requests-per-minute token bucket
(one second's worth deep), sends OpenAI's ``x-ratelimit-*`` headers on every answer and 429 +
Retry-After when a request comes too early; replies are a few hundred tokens. The engine runs
``rows`` rows of a three-step plan through ``Engine.run_many`` with 64 slots and no rate
configured. Goals: ≥ 90 % of the limit sustained, ≤ 3 % of calls answered 429, no row failed.

Two harder shapes (issue 17):

- ``--tpm 200000 --prompt-words 1500``: long prompts under a tokens-per-minute limit (the
  request limit does not bind). Goals: ≥ 95 % of the token limit, ≤ 2 % 429s.
- ``--silent``: the server sends no ``x-ratelimit-*`` header, only 429 + Retry-After.
  Goals: ≥ 92 % of the limit, ≤ 5 % 429s, every row succeeded.

Both print the row times (median and worst): with a binding limit, rows are served first come,
first served, so the worst row stays within a few times the median.

    python benchmarks/rate.py [--rpm 1500] [--tpm N] [--prompt-words N] [--silent]
                              [--rows 1000] [--latency 0.4] [--cli]

``--cli`` runs the same through ``dworkers run PLAN --data rows.csv --json`` in a subprocess
(history, results.jsonl and row reports included) instead of the library.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import local_server

from dworkers.engine import PlanBuilder, RunOptions
from dworkers.events import EventLog, RateLimits
from dworkers.llm import load_litellm
from dworkers.plans.base import BasePlan, PlanStep
from dworkers.results import RowStatus
from dworkers.tenants.config import LimitsConfig, ModelsConfig, TenantConfig


def plan() -> BasePlan:
    """Scope one item, then two analyses of it: three calls a row, two of them side by side."""
    result = BasePlan("rate-bench", description="benchmark")
    result.add_step(PlanStep(step_id="scope", name="Scope", prompt_template="Scope {item}"))
    for sid in ("risks", "costs"):
        result.add_step(PlanStep(step_id=sid, name=sid.title(), depends_on=["scope"],
                                 prompt_template=f"List the {sid} of {{item}}"))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--rpm", type=float, default=1500)
    parser.add_argument("--tpm", type=float, default=None, help="a tokens-per-minute limit too")
    parser.add_argument("--prompt-words", type=int, default=0, help="words added to each prompt")
    parser.add_argument("--silent", action="store_true", help="no x-ratelimit-* headers")
    parser.add_argument("--timeline", action="store_true",
                        help="print calls answered and refused per 5 seconds")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.4, help="server seconds per answer")
    parser.add_argument("--reply-tokens", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--cli", action="store_true", help="through `dworkers run --data`")
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-benchmark")
    tenant = TenantConfig(id="bench", models=ModelsConfig(default="openai/bench-model"),
                          limits=LimitsConfig(max_concurrency=args.concurrency,
                                              timeout_seconds=60))
    padding = " ".join(["word"] * args.prompt_words)
    rows = [{"item": f"product {i} {padding}".strip()} for i in range(1, args.rows + 1)]
    log = EventLog()
    with tempfile.TemporaryDirectory() as tmp:
        requests_log = Path(tmp) / "requests.jsonl"
        server_args = ["--rpm", str(args.rpm), "--latency", str(args.latency),
                       "--reply-tokens", str(args.reply_tokens)]
        if args.tpm:
            server_args += ["--tpm", str(args.tpm)]
        if args.silent:
            server_args.append("--silent-limits")
        with local_server(*server_args, "--log", str(requests_log)) as url:
            row_seconds: list[float] = []
            if args.cli:
                statuses, wall, rpm_seen = run_cli(Path(tmp), url, args.concurrency, rows)
                t0 = loaded = 0.0
            else:
                engine = PlanBuilder(plan(), tenant, api_base=url, options=RunOptions(),
                                     on_event=log).build()

                async def run() -> list[RowStatus]:
                    done = [r async for r in engine.run_many(rows)]
                    row_seconds.extend(r.duration_ms / 1000 for r in done)
                    return [r.status for r in done]

                t0 = time.monotonic()
                load_litellm()  # its import is the same for one call or ten thousand
                loaded = time.monotonic()
                statuses = asyncio.run(run())
                wall = time.monotonic() - t0
                learned = [e for e in log.events if isinstance(e, RateLimits)]
                rpm_seen = (f"{learned[-1].rpm} RPM, {learned[-1].tpm} TPM "
                            f"(from {learned[-1].source})" if learned else "none")
        requests = [json.loads(line) for line in requests_log.read_text().splitlines()]
    answered = sorted((r for r in requests if not r["rate_limited"]), key=lambda r: r["started"])
    accepted = [r["started"] for r in answered]
    refused = sum(1 for r in requests if r["rate_limited"])
    calls = len(accepted)
    span = accepted[-1] - accepted[0]
    sustained = (calls - 1) / span * 60
    # Tokens: the last call's are not counted, as its request is the end of the span.
    tokens_per_min = sum(r["tokens"] for r in answered[:-1]) / span * 60
    ideal = max(calls / (args.rpm / 60),
                sum(r["tokens"] for r in answered) / (args.tpm / 60) if args.tpm else 0.0)
    failed = sum(1 for s in statuses if s is not RowStatus.SUCCEEDED)
    print(f"limit {args.rpm:g} RPM" + (f" and {args.tpm:g} TPM" if args.tpm else "")
          + (" (no x-ratelimit headers, 429s only)" if args.silent else "")
          + f" (not told; bucket of 1 s), {args.rows} rows × 3 steps, "
          f"prompts + {args.prompt_words} words, "
          f"{args.concurrency} slots, answers of {args.reply_tokens} tokens after "
          f"{args.latency:g}s, {'command line' if args.cli else 'Engine.run_many'}")
    print(f"learned limit:       {rpm_seen}")
    print(f"calls answered:      {calls} (+ {refused} answered 429)")
    print(f"share of limit:      {sustained / args.rpm:.1%} sustained "
          f"({sustained:.0f} calls/min, first to last accepted call)")
    if args.tpm:
        print(f"share of token limit: {tokens_per_min / args.tpm:.1%} sustained "
              f"({tokens_per_min:.0f} tokens/min)")
    if row_seconds:
        median = statistics.median(row_seconds)
        print(f"row time:            median {median:.2f}s, worst {max(row_seconds):.2f}s "
              f"({max(row_seconds) / median:.1f}× the median)")
    if args.timeline:
        start = min(r["started"] for r in requests)
        for first in range(0, int(max(r["started"] for r in requests) - start) + 1, 5):
            window = [r for r in requests if first <= r["started"] - start < first + 5]
            refused_here = sum(1 for r in window if r["rate_limited"])
            print(f"  {first:4d}s  {(len(window) - refused_here) * 12:5d}/min "
                  f"accepted, {refused_here} refused")
    print(f"load average:        {os.getloadavg()[0]:.2f}")
    print(f"429 share:           {refused / len(requests):.2%} of {len(requests)} requests")
    opening = min(r["started"] for r in requests) + 10.0
    later = [r for r in requests if r["started"] >= opening]
    if later:
        print(f"  after the first 10s: {sum(r['rate_limited'] for r in later) / len(later):.2%} "
              f"of {len(later)} (the opening burst, before any limit is known, excluded)")
    print(f"rows failed:         {failed} of {len(statuses)}")
    print(f"wall vs ideal:       {wall - (loaded - t0):.1f}s vs {ideal:.1f}s  "
          f"({(wall - (loaded - t0)) / ideal:.3f}×"
          + ("; the run's own duration)" if args.cli else
             f"; litellm's import, {loaded - t0:.1f}s, not counted)"))


PLAN_YAML = """\
name: rate-bench
description: benchmark
inputs:
  item: {}
steps:
  - {step_id: scope, name: Scope, prompt_template: "Scope {item}"}
  - {step_id: risks, name: Risks, depends_on: [scope], prompt_template: "List the risks of {item}"}
  - {step_id: costs, name: Costs, depends_on: [scope], prompt_template: "List the costs of {item}"}
"""


def run_cli(tmp: Path, url: str, concurrency: int,
            rows: list[dict[str, str]]) -> tuple[list[RowStatus], float, str]:
    """``dworkers run --data``: row statuses (from results.jsonl) and the run's duration."""
    (tmp / "plan.yaml").write_text(PLAN_YAML)
    (tmp / "bench.yaml").write_text("id: bench\nmodels: {default: openai/bench-model}\n"
                                    f"limits: {{max_concurrency: {concurrency}, "
                                    "timeout_seconds: 60}\n")
    with (tmp / "rows.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item"])
        writer.writerows([row["item"]] for row in rows)
    env = {**os.environ, "DWORKERS_HOME": str(tmp / "home")}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dworkers"), "run", str(tmp / "plan.yaml"), "--data",
         str(tmp / "rows.csv"), "--tenant", str(tmp / "bench.yaml"), "--api-base", url,
         "--json", "-q", "--out", str(tmp / "out")],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, check=False)
    if done.returncode not in (0, 1):
        raise SystemExit(f"dworkers run failed ({done.returncode}): {done.stderr[-2000:]}")
    summary = json.loads(done.stdout)
    results = next((tmp / "out").glob("*/results.jsonl"))
    statuses = [RowStatus(json.loads(line)["status"])
                for line in results.read_text().splitlines()]
    return statuses, float(summary["total_duration_ms"]) / 1000, "shown by the progress view"


if __name__ == "__main__":
    main()
