"""Shared fixtures. Kept minimal: only what every test needs to stay isolated."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dworkers.plans.registry import plan_registry
from dworkers.tenants.registry import tenant_registry


@pytest.fixture(autouse=True)
def _fresh_discovery(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test discovers plans and tenants afresh, without the developer's search paths.

    Discovery is lazy, so a test can ``monkeypatch.chdir``/``setenv`` first and the registries
    read the files on first use. Plans or tenants registered from Python are undone afterwards.
    """
    monkeypatch.delenv("DWORKERS_PLANS_PATH", raising=False)
    monkeypatch.delenv("DWORKERS_TENANTS_PATH", raising=False)
    registries = (plan_registry, tenant_registry)
    saved = [dict(registry._registered) for registry in registries]
    for registry in registries:
        registry.refresh()
    yield
    for registry, registered in zip(registries, saved, strict=True):
        registry._registered.clear()
        registry._registered.update(registered)
        registry.refresh()
