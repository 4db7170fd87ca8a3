"""The engine: runs a plan's steps as early as their dependencies allow, and reports events.

- ``settings``: ``RunOptions`` and ``Policy``, what each step runs with (model, timeout,
  retries, prices).
- ``preflight``: the checks before any call (inputs, models, keys, options).
- ``reuse``: earlier answers given again (resume, cache).
- ``instance``: ``PlanInstance``, the DAG scheduling of one plan over one set of inputs.
- ``calls``: one step's attempts, retries, rate-limit waits and costs.
- ``dataset``: one plan over many rows, on one shared ``pool``.
- ``engine``: ``Engine``, the facade; ``builder``: ``PlanBuilder``, plan + tenant → engine.

The engine never prints: everything it does reaches the view, the run files and the history
as events.
"""

from dworkers.engine.builder import PlanBuilder
from dworkers.engine.calls import EventCallback
from dworkers.engine.engine import Engine
from dworkers.engine.instance import PlanInstance
from dworkers.engine.reuse import StepCache, cache_key
from dworkers.engine.settings import Policy, RunOptions, new_run_id

__all__ = [
    "Engine",
    "EventCallback",
    "PlanBuilder",
    "PlanInstance",
    "Policy",
    "RunOptions",
    "StepCache",
    "cache_key",
    "new_run_id",
]
