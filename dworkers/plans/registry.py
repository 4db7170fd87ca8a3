"""``plan_registry``: every plan by name, from Python registration and discovered files."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dworkers.discovery import FileRegistry
from dworkers.plans.base import BasePlan

if TYPE_CHECKING:
    from dworkers.types import SourceMap


class PlanRegistry(FileRegistry[BasePlan]):
    kind = "plans"
    noun = "plan"

    def _name_of(self, item: BasePlan) -> str:
        return item.name

    def _from_data(self, data: Any, source: SourceMap) -> BasePlan:
        from dworkers import loader  # YAML is only needed once plans are asked for

        return loader.plan_from_data(data, source)

    def list_plans(self) -> list[str]:
        return self.names()


plan_registry = PlanRegistry()
