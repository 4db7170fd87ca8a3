"""``tenant_registry``: tenant configurations by id, from Python and discovered files."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dworkers.discovery import FileRegistry
from dworkers.tenants.config import TenantConfig

if TYPE_CHECKING:
    from dworkers.types import SourceMap


class TenantRegistry(FileRegistry[TenantConfig]):
    kind = "tenants"
    noun = "tenant"

    def _name_of(self, item: TenantConfig) -> str:
        return item.id

    def _from_data(self, data: Any, source: SourceMap) -> TenantConfig:
        from dworkers import loader

        return loader.tenant_from_data(data, source)

    def list_tenants(self) -> list[str]:
        return self.names()


tenant_registry = TenantRegistry()
