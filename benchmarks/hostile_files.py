"""How quickly hostile plan files are refused: alias bombs, huge lists, deep nesting, a file over
the size limit. The tests check *where* each is refused (the reader stops at the limit); this
prints how long that takes here. Each should take well under a second.

    python benchmarks/hostile_files.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from dworkers.errors import ProblemsError
from dworkers.loader import load_plan


def billion_laughs() -> str:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\n"


CASES = {
    "billion laughs": billion_laughs(),
    "2,000,000-value list": "steps: [" + "0," * 2_000_000 + "0]\n",
    "200-level block nesting": "".join("  " * i + f"k{i}:\n" for i in range(200)) + "v\n",
    "100,000-level flow nesting": "a: " + "[" * 100_000 + "]" * 100_000 + "\n",
    "9 MB file": "name: p\n" + ("# " + "x" * 97 + "\n") * 90_000,
}


def refuse(text: str, path: Path) -> float:
    path.write_text(text)
    start = time.perf_counter()
    try:
        load_plan(path)
    except ProblemsError:
        pass
    else:  # pragma: no cover - a benchmark of refusals
        raise SystemExit(f"{path} was not refused")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "hostile.yaml"
        for name, text in CASES.items():
            seconds = statistics.median(refuse(text, path) for _ in range(args.runs))
            print(f"{name:<28} refused in {seconds * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
