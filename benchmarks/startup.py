"""How long ``dworkers list`` takes to start, against the libraries it cannot do without.

Runs ``python -m dworkers.cli list`` (from a directory without ./plans, so only the built-in
library is read) and ``python -c "import typer, rich, yaml, pydantic"`` alternately, N times each,
and prints the median wall time of both and their ratio. The target is a ratio of at most 1.6:
the CLI must not import litellm or anything else heavy to list plans.

    python benchmarks/startup.py [--runs 21] [--command list|validate|show|help]

To see what is slow: python -X importtime -m dworkers.cli list 2> importtime.txt
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE = [sys.executable, "-c", "import typer, rich, yaml, pydantic"]
# For context: a bare Typer app running a command that takes one --json flag, the floor of any
# typer command on this machine before dworkers does anything. (Typer 0.29 builds a pydantic
# TypeAdapter per parameter, which alone costs ~1.5x the baseline: pyproject keeps typer < 0.29.)
TYPER_FLOOR = """
from typing import Annotated
import typer
app = typer.Typer(add_completion=False)
@app.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json")] = False) -> None: pass
@app.command()
def other() -> None: pass
app()
"""
BUILTIN_PLAN = Path(__file__).resolve().parent.parent / "plans" / "compliance-audit.yaml"
COMMANDS = {
    "list": ["list"],
    "list-json": ["list", "--json"],
    "validate": ["validate", str(BUILTIN_PLAN)],
    "show": ["show", "compliance-audit"],
    "help": ["--help"],
}


def _time(argv: list[str], cwd: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--command", choices=sorted(COMMANDS), default="list")
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items()
           if k not in ("DWORKERS_PLANS_PATH", "DWORKERS_TENANTS_PATH")}
    env["NO_COLOR"] = "1"
    command = [sys.executable, "-m", "dworkers.cli", *COMMANDS[args.command]]
    floor = [sys.executable, "-c", TYPER_FLOOR, "list"]
    cold: list[float] = []
    with tempfile.TemporaryDirectory() as cwd:
        env["DWORKERS_HOME"] = os.path.join(cwd, "home")  # `list` keeps its plan catalog here
        for argv in (BASELINE, command, floor):  # warm the OS caches and .pyc files first
            _time(argv, cwd, env)
        baseline: list[float] = []
        cli: list[float] = []
        bare: list[float] = []
        for i in range(args.runs):  # interleaved, so that load on the machine hits all alike
            baseline.append(_time(BASELINE, cwd, env))
            cli.append(_time(command, cwd, env))
            bare.append(_time(floor, cwd, env))
            # The first listing after a plan file changes reads and validates every file.
            cold.append(_time(command, cwd, {**env, "DWORKERS_HOME": os.path.join(cwd, f"c{i}")}))
    base, ours = statistics.median(baseline), statistics.median(cli)
    print(f"import typer, rich, yaml, pydantic: {base * 1000:7.1f} ms (median of {args.runs})")
    print(f"dworkers {' '.join(COMMANDS[args.command]):<28}{ours * 1000:7.1f} ms")
    print(f"ratio: {ours / base:.2f} (target: at most 1.6)")
    cold_median = statistics.median(cold)
    print(f"after a plan file changed (catalog rebuilt): {cold_median * 1000:.1f} ms, "
          f"ratio {cold_median / base:.2f}")
    print(f"for context, a bare typer command with one flag: {statistics.median(bare) * 1000:.1f} "
          f"ms, ratio {statistics.median(bare) / base:.2f}")


if __name__ == "__main__":
    main()
