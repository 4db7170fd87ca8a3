"""How a dataset run scales: up to 100,000 rows × 3 steps, offline (``--mock``, no latency),
through the CLI with history and files, in a fresh process per size.

Prints, per size, the wall time, the time per step and the peak RSS of the ``dworkers``
process, whether ``results.jsonl``, the row reports and the history hold every row, and how
long ``dworkers runs`` and ``dworkers show RUN`` take on the finished run; then the RSS growth
from the smallest to the largest size. The goals (issue 17): 100,000 rows in at most 150 s,
peak RSS at most 150 MB and within 1.3× of a 10,000-row run, ``runs``/``show`` under a second.

    python benchmarks/scale.py [--rows 10000 100000] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import chain_plan_yaml

WALL_GOAL_S = 150.0  # for 100,000 rows
RSS_GOAL_MB = 150.0
RSS_GROWTH_GOAL = 1.3
QUERY_GOAL_S = 1.0


def run_once(rows: int, steps: int, workdir: Path) -> tuple[float, float, float, int]:
    """Wall seconds, CPU seconds, peak RSS in MB, exit code of one dataset run of ``rows`` rows
    (its files and history stay in ``workdir``). On a shared, loaded machine the CPU time is
    the steadier figure: the wall time of an unloaded one is close to it."""
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
    return wall, usage.ru_utime + usage.ru_stime, peak_mb, proc.returncode


def completeness(rows: int, workdir: Path) -> tuple[str, float, float]:
    """What the run left (rows in results.jsonl, row reports, history rows) and the seconds
    ``dworkers runs`` and ``dworkers show RUN`` took on it."""
    run_dir = next((workdir / "runs").iterdir())
    with (run_dir / "results.jsonl").open() as handle:
        results = sum(1 for _ in handle)
    reports = sum(1 for _ in (run_dir / "rows").iterdir())
    with sqlite3.connect(workdir / "home" / "history.db") as db:
        history = db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
    env = {**os.environ, "DWORKERS_HOME": str(workdir / "home"), "NO_COLOR": "1"}
    timings = []
    for command in (["runs"], ["show", run_dir.name]):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "dworkers.cli", *command], env=env,
                              capture_output=True, text=True, check=False)
        timings.append(time.perf_counter() - start)
        if done.returncode != 0:
            print(done.stderr[-1000:], file=sys.stderr)
    complete = all(count == rows for count in (results, reports, history))
    summary = (f"results.jsonl {results:,}, row reports {reports:,}, history {history:,} rows"
               f" → {'complete' if complete else 'INCOMPLETE'}")
    return summary, timings[0], timings[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    results = []
    for rows in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            wall, cpu, peak, code = run_once(rows, args.steps, Path(tmp))
            left, runs_s, show_s = completeness(rows, Path(tmp))
        per_step_ms = wall * 1000 / (rows * args.steps)
        results.append((rows, wall, peak, max(runs_s, show_s)))
        print(f"{rows:>7,} rows × {args.steps} steps: wall {wall:7.1f} s "
              f"({per_step_ms:.2f} ms/step), CPU {cpu:7.1f} s, peak RSS {peak:6.1f} MB, "
              f"exit {code}")
        print(f"        {left}; `runs` {runs_s:.2f} s, `show` {show_s:.2f} s")
    small_rows, _, small_peak, _ = results[0]
    big_rows, big_wall, big_peak, slowest_query = results[-1]
    # Wall time is linear in rows: the goal for 100,000 rows, scaled to the size measured.
    wall_goal = WALL_GOAL_S * big_rows / 100_000
    print(f"RSS growth {small_rows:,} → {big_rows:,} rows: {big_peak - small_peak:+.1f} MB "
          f"(×{big_peak / small_peak:.2f}); load average {os.getloadavg()[0]:.2f}")
    print(f"goals: wall ≤ {wall_goal:.0f} s → {'met' if big_wall <= wall_goal else 'MISSED'}"
          f"; peak RSS ≤ {RSS_GOAL_MB:.0f} MB → "
          f"{'met' if big_peak <= RSS_GOAL_MB else 'MISSED'}; growth ≤ ×{RSS_GROWTH_GOAL} → "
          f"{'met' if big_peak <= RSS_GROWTH_GOAL * small_peak else 'MISSED'}; "
          f"runs/show ≤ {QUERY_GOAL_S:.0f} s → "
          f"{'met' if slowest_query <= QUERY_GOAL_S else 'MISSED'}")


if __name__ == "__main__":
    main()
