"""Plans: DAGs of steps, each done by a worker with a role."""

from dworkers.plans.base import BasePlan, InputSpec, PlanStep

__all__ = ["BasePlan", "InputSpec", "PlanStep"]
