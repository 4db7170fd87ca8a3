"""Shared fixtures. Kept minimal: only what every test needs to stay isolated."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dworkers.plans.registry import plan_registry
from dworkers.tenants.registry import tenant_registry


@pytest.fixture(autouse=True)
def _fresh_discovery(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Each test discovers plans and tenants afresh, without the developer's search paths.

    Discovery is lazy, so a test can ``monkeypatch.chdir``/``setenv`` first and the registries
    read the files on first use. Plans or tenants registered from Python are undone afterwards.
    """
    for name in ("DWORKERS_PLANS_PATH", "DWORKERS_TENANTS_PATH", "DWORKERS_MODEL",
                 "DWORKERS_API_BASE", "DWORKERS_MOCK_LATENCY"):
        monkeypatch.delenv(name, raising=False)
    # Run history goes to a private directory, never the developer's own.
    monkeypatch.setenv("DWORKERS_HOME", str(tmp_path_factory.mktemp("dworkers-home")))
    registries = (plan_registry, tenant_registry)
    saved = [dict(registry._registered) for registry in registries]
    for registry in registries:
        registry.refresh()
    yield
    for registry, registered in zip(registries, saved, strict=True):
        registry._registered.clear()
        registry._registered.update(registered)
        registry.refresh()
