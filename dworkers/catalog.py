"""What ``dworkers list`` shows, cached, so that listing plans parses no YAML and builds no models
while nothing has changed.

The cache is keyed on the dworkers version, the search path, and the path, size and
modification time of every plan file found; any difference and the catalog is rebuilt from the
registry (which validates every file). The cache is an optimisation only: if it cannot be read
or written, the catalog is simply built.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dworkers import __version__
from dworkers.discovery import scan, search_path
from dworkers.errors import Problem
from dworkers.files import data_dir, write_atomic

CACHE_NAME = "plan-catalog.json"


@dataclass(frozen=True, slots=True)
class PlanSummary:
    name: str
    steps: int
    required_inputs: list[str]
    description: str
    origin: str  # "built-in", "./plans" or "DWORKERS_PLANS_PATH"
    path: str | None


def plan_catalog() -> tuple[list[PlanSummary], list[Problem]]:
    """Every plan that can be run by name (sorted by name) and the problems of files that failed
    to load. Like the registry, it leaves out a plan hidden by a broken file of equal or higher
    precedence (a broken ``./plans/compliance-audit.yaml`` hides the built-in one): that file's
    problems are listed instead."""
    signature = _signature()
    cache = data_dir() / CACHE_NAME
    cached = _read(cache, signature)
    if cached is not None:
        return cached
    summaries, problems = _build()
    # A read-only home only costs the shortcut.
    with contextlib.suppress(OSError):
        write_atomic(cache, json.dumps({
            "signature": signature,
            "plans": [asdict(s) for s in summaries],
            "problems": [asdict(p) for p in problems],
        }))
    return summaries, problems


def _signature() -> list[Any]:
    files: list[Any] = []
    origins = search_path("plans")
    for origin in origins:
        found, skipped = scan(origin)
        files += [problem.render() for problem in skipped]  # a new stray file is news too
        for path in found:
            try:
                stat = path.stat()
            except OSError:
                continue
            # ctime and inode too: cp -p, tar and rsync -t keep an edited file's mtime.
            files.append([str(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns,
                          stat.st_ino])
    return [__version__, [[o.label, str(o.directory)] for o in origins], files]


def _read(cache: Path, signature: list[Any]) -> tuple[list[PlanSummary], list[Problem]] | None:
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
        if data.get("signature") != signature:
            return None
        return ([PlanSummary(**item) for item in data["plans"]],
                [Problem(**item) for item in data["problems"]])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # missing, stale or damaged: rebuild it


def _build() -> tuple[list[PlanSummary], list[Problem]]:
    from dworkers.plans.registry import plan_registry

    plan_registry.refresh()
    summaries = [
        PlanSummary(
            name=entry.item.name,
            steps=len(entry.item.steps),
            required_inputs=entry.item.required_inputs(),
            description=entry.item.description,
            origin=entry.origin,
            path=os.fspath(entry.path) if entry.path else None,
        )
        for entry in plan_registry.entries()
        if entry.origin != "python"
    ]
    return summaries, plan_registry.problems
