"""How a dataset run scales: 10,000 rows × 3 steps, offline (``--mock``, no latency), through the
CLI with history and files, in a fresh process per size.

Prints, per size, the wall time, the time per step and the peak RSS of the ``dworkers``
process, and the RSS growth from the smallest to the largest size. The goals: 10,000 rows in at
most 120 s (≤ 4 ms a step), peak RSS at most 400 MB and flat from 1,000 to 10,000 rows.

    python benchmarks/scale.py [--rows 1000 10000] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import chain_plan_yaml

WALL_GOAL_S = 120.0
RSS_GOAL_MB = 400.0


def run_once(rows: int, steps: int, workdir: Path) -> tuple[float, float, int]:
    """Wall seconds, peak RSS in MB, exit code of one dataset run of ``rows`` rows."""
    data = workdir / f"rows-{rows}.csv"
    with data.open("w") as handle:
        handle.write("id,topic,note\n")
        for n in range(rows):
            handle.write(f"row-{n:06d},topic number {n},kept but not an input\n")
    plan = workdir / "scale.yaml"
    plan.write_text(chain_plan_yaml("scale", "A chain of steps run once per row", steps,
                                    "Step {n} on {topic}"))
    env = {**os.environ, "DWORKERS_MOCK_LATENCY": "0", "DWORKERS_HOME": str(workdir / "home"),
           "NO_COLOR": "1"}
    command = [sys.executable, "-m", "dworkers.cli", "run", str(plan), "--data", str(data),
               "--mock", "-q", "--out", str(workdir / "runs"), "--max-concurrency", "16"]
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        print(stderr[-2000:], file=sys.stderr)
    peak_mb = usage.ru_maxrss / 1024  # kilobytes on Linux
    return wall, peak_mb, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    results = []
    for rows in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            wall, peak, code = run_once(rows, args.steps, Path(tmp))
        per_step_ms = wall * 1000 / (rows * args.steps)
        results.append((rows, wall, peak))
        print(f"{rows:>7,} rows × {args.steps} steps: wall {wall:7.1f} s "
              f"({per_step_ms:.2f} ms/step), peak RSS {peak:6.1f} MB, exit {code}")
    (small_rows, _, small_peak), (big_rows, big_wall, big_peak) = results[0], results[-1]
    print(f"RSS growth {small_rows:,} → {big_rows:,} rows: {big_peak - small_peak:+.1f} MB "
          f"(×{big_peak / small_peak:.2f})")
    print(f"goals: wall ≤ {WALL_GOAL_S:.0f} s → {'met' if big_wall <= WALL_GOAL_S else 'MISSED'}"
          f"; peak RSS ≤ {RSS_GOAL_MB:.0f} MB → "
          f"{'met' if big_peak <= RSS_GOAL_MB else 'MISSED'}")


if __name__ == "__main__":
    main()
