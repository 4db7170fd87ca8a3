"""The engine's modules: one job each, found by file name, and no import circle among them.

Every import counts, at the top or inside a function or a ``TYPE_CHECKING`` block: an import
moved out of sight still makes a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dworkers"
# The engine, and the modules that left it or ratelimit.py for their own files.
CHECKED = ("engine", "budget", "estimates", "ratelimit")


def _module_paths() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(("dworkers", *parts))] = path
    return found


def _imported(path: Path, known: dict[str, Path]) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name in known}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import one another, directly or not (Tarjan's algorithm,
    iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def test_the_circle_finder_finds_an_indirect_circle() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_the_engine_has_no_import_circle() -> None:
    known = _module_paths()
    checked = {name: path for name, path in known.items()
               if name.removeprefix("dworkers.").split(".")[0] in CHECKED}
    graph = {name: _imported(path, known) & set(checked) - {name}
             for name, path in checked.items()}
    assert _circles(graph) == []


def test_each_job_of_the_engine_has_its_own_module() -> None:
    engine = {path.stem for path in (PACKAGE / "engine").glob("*.py")}
    assert engine == {"__init__", "settings", "preflight", "reuse", "instance", "calls",
                      "engine", "dataset", "pool", "builder", "toolloop"}
    from dworkers.engine import Engine, PlanInstance, RunOptions, new_run_id
    from dworkers.engine.dataset import DatasetRun

    assert {Engine.__module__, PlanInstance.__module__, RunOptions.__module__,
            new_run_id.__module__, DatasetRun.__module__} == {
        "dworkers.engine.engine", "dworkers.engine.instance", "dworkers.engine.settings",
        "dworkers.engine.dataset"}
