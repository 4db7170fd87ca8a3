"""``plan_registry``: every plan by name, from Python registration and discovered files."""

from __future__ import annotations

from pathlib import Path

from dworkers.discovery import FileRegistry
from dworkers.plans.base import BasePlan


class PlanRegistry(FileRegistry[BasePlan]):
    kind = "plans"
    noun = "plan"

    def _name_of(self, item: BasePlan) -> str:
        return item.name

    def _load(self, path: Path) -> BasePlan:
        from dworkers import loader  # YAML is only needed once plans are asked for

        return loader.load_plan(path)

    def list_plans(self) -> list[str]:
        return self.names()


plan_registry = PlanRegistry()
