"""The seed API's path to ``PlanBuilder`` (``from dworkers.plans.builder import PlanBuilder``).

The builder lives beside the engine it builds, in ``dworkers.engine.builder``; this module only
keeps the documented import working. Nothing inside dworkers imports it.
"""

from dworkers.engine.builder import PlanBuilder

__all__ = ["PlanBuilder"]
