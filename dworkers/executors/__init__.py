"""Where a dataset's rows run: in this process (``local``), or on a Ray cluster (``ray``).

Both take the engine the runner built and give back the same thing ``Engine.run_many`` does:
per-row results in completion order, with the same events sent to ``engine.on_event``. Ray is
an optional extra (``pip install 'dworkers[ray]'``) and is imported only when it is asked for.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from typing import Any, Protocol

from dworkers.errors import InputError, Problem
from dworkers.results import RowResult, Rows

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    """Runs a dataset's rows with a built engine."""

    name: str

    def run_many(self, engine: Any, rows: Rows, *,
                 max_failures: int | None = None) -> AsyncIterator[RowResult]:
        """Per-row results in completion order; events go to ``engine.on_event``."""
        ...


def executor_for(name: str, *, ray_address: str | None = None,
                 offline: bool = False) -> Executor:
    """The executor called ``name``; ``ray_address`` joins an existing Ray cluster. The Ray
    executor joins (or starts) its cluster at once, so Ray starts while the run is prepared;
    ``offline``: the run calls no model (``--mock``)."""
    if name == "local":
        if ray_address:
            raise InputError([Problem("--ray-address only applies to --executor ray",
                                      "add --executor ray, or leave out --ray-address",
                                      "invalid-option", file="--ray-address")])
        from dworkers.executors.local import LocalExecutor

        return LocalExecutor()
    if name == "ray":
        if importlib.util.find_spec("ray") is None:
            raise InputError([Problem("--executor ray needs Ray, which is not installed",
                                      "pip install 'dworkers[ray]'", "missing-extra",
                                      file="--executor")])
        from dworkers.executors.ray import RayExecutor

        return RayExecutor(address=ray_address, connect=True, offline=offline)
    raise InputError([Problem(f"unknown executor {name!r}",
                              f"choose one of: {', '.join(EXECUTORS)}", "invalid-option",
                              file="--executor")])


__all__ = ["EXECUTORS", "Executor", "Rows", "executor_for"]
