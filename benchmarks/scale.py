"""How a dataset run scales: up to 100,000 rows × 3 steps, offline (``--mock``, no latency),
through the CLI with history and files, in a fresh process per size.

Prints, per run, the wall time, the time per step, the CPU time and the peak RSS of the
``dworkers`` process, whether ``results.jsonl``, the row reports and the history (rows, and
each row's steps) hold every row, and how long ``dworkers runs`` and ``dworkers show RUN`` take
on the finished run; then, per size, the medians, and the peak RSS of the largest size against
a 10,000-row run (one is added when no size is 10,000). The goals (issue 17): 100,000 rows in at
most 150 s, peak RSS at most 150 MB and within 1.3× of a 10,000-row run, ``runs``/``show``
under a second.

On a shared, loaded machine, ``--repeat`` runs every size that many times, interleaved (10k,
100k, 10k, 100k, …), and the medians are what to compare.

    python benchmarks/scale.py [--rows 10000 100000] [--steps 3] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import chain_plan_yaml

WALL_GOAL_S = 150.0  # for 100,000 rows
RSS_GOAL_MB = 150.0
RSS_GROWTH_GOAL = 1.3
QUERY_GOAL_S = 1.0
REFERENCE_ROWS = 10_000  # the run the peak RSS is compared with


@dataclass(frozen=True)
class Measured:
    """One dataset run and what it left."""

    rows: int
    wall: float
    cpu: float
    peak_mb: float
    code: int
    results: int  # lines of results.jsonl
    reports: int  # files in rows/
    history_rows: int  # rows of the run in the history
    history_steps: int  # row-steps of the run in the history
    succeeded: int  # rows the history says succeeded
    runs_s: float
    show_s: float

    def complete(self, steps: int) -> bool:
        return (self.code == 0 and self.history_steps == self.rows * steps
                and all(n == self.rows for n in (self.results, self.reports,
                                                 self.history_rows, self.succeeded)))


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


def measure(rows: int, steps: int) -> Measured:
    """A run of ``rows`` rows in a fresh folder and history, and what it left: the lines of
    results.jsonl, the row reports, the run's rows and row-steps in the history, and the
    seconds ``dworkers runs`` and ``dworkers show RUN`` took on it."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        wall, cpu, peak, code = run_once(rows, steps, workdir)
        run_dir = next((workdir / "runs").iterdir())
        with (run_dir / "results.jsonl").open() as handle:
            results = sum(1 for _ in handle)
        reports = sum(1 for _ in (run_dir / "rows").iterdir())
        with sqlite3.connect(workdir / "home" / "history.db") as db:
            counted = [db.execute(sql, (run_dir.name,)).fetchone()[0] for sql in (
                "SELECT COUNT(*) FROM rows WHERE run_id = ?",
                "SELECT COUNT(*) FROM row_steps WHERE run_id = ?",
                "SELECT COUNT(*) FROM rows WHERE run_id = ? AND status = 'succeeded'")]
        env = {**os.environ, "DWORKERS_HOME": str(workdir / "home"), "NO_COLOR": "1"}
        timings = []
        for command in (["runs"], ["show", run_dir.name]):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "dworkers.cli", *command], env=env,
                                  capture_output=True, text=True, check=False)
            timings.append(time.perf_counter() - start)
            if done.returncode != 0:
                print(done.stderr[-1000:], file=sys.stderr)
    return Measured(rows, wall, cpu, peak, code, results, reports, *counted, *timings)


def describe(run: Measured, steps: int) -> str:
    per_step_ms = run.wall * 1000 / (run.rows * steps)
    return (f"{run.rows:>7,} rows × {steps} steps: wall {run.wall:7.1f} s "
            f"({per_step_ms:.2f} ms/step), CPU {run.cpu:7.1f} s, peak RSS {run.peak_mb:6.1f} MB,"
            f" exit {run.code}\n"
            f"        results.jsonl {run.results:,}, row reports {run.reports:,}, history "
            f"{run.history_rows:,} rows ({run.succeeded:,} succeeded) and "
            f"{run.history_steps:,} row-steps → "
            f"{'complete' if run.complete(steps) else 'INCOMPLETE'}; `runs` {run.runs_s:.2f} s,"
            f" `show` {run.show_s:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[REFERENCE_ROWS, 100_000])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of every size, interleaved; medians are reported")
    args = parser.parse_args()
    sizes = sorted(set(args.rows) | {REFERENCE_ROWS})
    runs: dict[int, list[Measured]] = {rows: [] for rows in sizes}
    for _ in range(max(1, args.repeat)):
        for rows in sizes:
            run = measure(rows, args.steps)
            runs[rows].append(run)
            print(describe(run, args.steps), flush=True)
    median = {rows: {field: statistics.median(getattr(r, field) for r in measured)
                     for field in ("wall", "cpu", "peak_mb", "runs_s", "show_s")}
              for rows, measured in runs.items()}
    if args.repeat > 1:
        for rows in sizes:
            m = median[rows]
            print(f"median of {args.repeat}, {rows:>7,} rows: wall {m['wall']:.1f} s, CPU "
                  f"{m['cpu']:.1f} s, peak RSS {m['peak_mb']:.1f} MB, `runs` "
                  f"{m['runs_s']:.2f} s, `show` {m['show_s']:.2f} s")
    big_rows = max(args.rows)
    big, small = median[big_rows], median[REFERENCE_ROWS]
    # Wall time is linear in rows: the goal for 100,000 rows, scaled to the size measured.
    wall_goal = WALL_GOAL_S * big_rows / 100_000
    growth = big["peak_mb"] / small["peak_mb"]
    slowest_query = max(big["runs_s"], big["show_s"])
    complete = all(run.complete(args.steps) for measured in runs.values() for run in measured)
    print(f"peak RSS {REFERENCE_ROWS:,} → {big_rows:,} rows: "
          f"{big['peak_mb'] - small['peak_mb']:+.1f} MB (×{growth:.2f}); "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"goals: wall ≤ {wall_goal:.0f} s → {'met' if big['wall'] <= wall_goal else 'MISSED'}"
          f"; peak RSS ≤ {RSS_GOAL_MB:.0f} MB → "
          f"{'met' if big['peak_mb'] <= RSS_GOAL_MB else 'MISSED'}; growth ≤ "
          f"×{RSS_GROWTH_GOAL} → {'met' if growth <= RSS_GROWTH_GOAL else 'MISSED'}; "
          f"runs/show ≤ {QUERY_GOAL_S:.0f} s → "
          f"{'met' if slowest_query <= QUERY_GOAL_S else 'MISSED'}; every run complete → "
          f"{'yes' if complete else 'NO'}")


if __name__ == "__main__":
    main()
