"""The engine: runs a plan's steps as early as their dependencies allow, and reports events.

- ``builder``: ``PlanBuilder``, a validated plan and tenant → a ready-to-run ``Engine``.
- ``scheduler``: ``Engine``, the eager async scheduler with its retries, budget and cache.

The engine never prints: everything it does reaches the view, the run files and the history
as events.
"""

from dworkers.engine.builder import PlanBuilder
from dworkers.engine.scheduler import (
    Engine,
    EventCallback,
    RunOptions,
    StepCache,
    cache_key,
    new_run_id,
)

__all__ = [
    "Engine",
    "EventCallback",
    "PlanBuilder",
    "RunOptions",
    "StepCache",
    "cache_key",
    "new_run_id",
]
