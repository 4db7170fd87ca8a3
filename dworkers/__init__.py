"""dworkers: run plans, DAGs of LLM workers written in YAML, for many tenants.

The public surface is re-exported here lazily, so ``import dworkers`` stays cheap::

    from dworkers import PlanBuilder, plan_registry, tenant_registry
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "BasePlan": "dworkers.plans.base",
    "PlanStep": "dworkers.plans.base",
    "InputSpec": "dworkers.plans.base",
    "WorkerRole": "dworkers.types",
    "PlanBuilder": "dworkers.engine",
    "Engine": "dworkers.engine",
    "RunOptions": "dworkers.engine",
    "RunResult": "dworkers.events",
    "StepResult": "dworkers.events",
    "StepStatus": "dworkers.events",
    "TenantConfig": "dworkers.tenants.config",
    "plan_registry": "dworkers.plans.registry",
    "tenant_registry": "dworkers.tenants.registry",
    "load_plan": "dworkers.loader",
    "load_tenant": "dworkers.loader",
    "DworkersError": "dworkers.errors",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dworkers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
