"""``tenant_registry``: tenant configurations by id, from Python and discovered files."""

from __future__ import annotations

from pathlib import Path

from dworkers.discovery import FileRegistry
from dworkers.tenants.config import TenantConfig


class TenantRegistry(FileRegistry[TenantConfig]):
    kind = "tenants"
    noun = "tenant"

    def _name_of(self, item: TenantConfig) -> str:
        return item.id

    def _load(self, path: Path) -> TenantConfig:
        from dworkers import loader

        return loader.load_tenant(path)

    def list_tenants(self) -> list[str]:
        return self.names()


tenant_registry = TenantRegistry()
