"""``PlanBuilder``: a validated plan and tenant → a ready-to-run ``Engine``."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from dworkers.engine.calls import EventCallback
from dworkers.engine.engine import Engine
from dworkers.engine.reuse import StepCache
from dworkers.engine.settings import RunOptions
from dworkers.llm import LiteLLMClient, LLMClient, MockClient
from dworkers.plans.base import BasePlan
from dworkers.results import StepResult
from dworkers.tenants.config import TenantConfig


class PlanBuilder:
    """Validate a plan for a tenant and build its engine.

    ``model`` overrides every step's model (else ``DWORKERS_MODEL``, else the tenant's per-role
    model, else its default); ``api_base`` likewise (else ``DWORKERS_API_BASE``, else the
    tenant's). ``mock=True`` answers offline; ``client`` plugs in any ``LLMClient``.
    """

    def __init__(
        self,
        plan: BasePlan,
        tenant_config: TenantConfig | None = None,
        model: str | None = None,
        *,
        api_base: str | None = None,
        client: LLMClient | None = None,
        mock: bool = False,
        options: RunOptions | None = None,
        on_event: EventCallback | None = None,
        reuse: Mapping[str, StepResult] | None = None,
        cache: StepCache | None = None,
    ) -> None:
        self.plan = plan
        self.tenant = tenant_config
        given = options or RunOptions()
        # A copy: the caller's options may be shared with another builder, which must not
        # silently use this one's model or endpoint.
        self.options = dataclasses.replace(
            given,
            model=model or given.model or os.environ.get("DWORKERS_MODEL") or None,
            api_base=api_base or given.api_base or os.environ.get("DWORKERS_API_BASE") or None,
        )
        self.client = client or (MockClient() if mock else None)
        self.on_event = on_event
        self.reuse = reuse
        self.cache = cache

    def build(self) -> Engine:
        """Raise ``PlanValidationError``/``TenantValidationError`` with every problem, or
        return the engine."""
        tenant = self.tenant
        if tenant is None:
            from dworkers.tenants.registry import tenant_registry

            tenant = tenant_registry.get("default")
        self.plan.validate()
        tenant.validate_config()
        return Engine(
            self.plan,
            tenant,
            self.client or LiteLLMClient(),
            self.options,
            on_event=self.on_event,
            reuse=self.reuse,
            cache=self.cache,
        )
