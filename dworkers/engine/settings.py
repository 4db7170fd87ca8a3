"""What a run will do: ``RunOptions`` and ``Policy``, each step's model, limits and prices.

``Policy`` resolves every per-step setting from the run's options, the plan and the tenant
(options win, then the step, then the tenant), and says what each step is asked. It calls
nothing: the engine (``Engine``) is a ``Policy`` that runs.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dworkers import dag, prompts
from dworkers.approvals import Gates
from dworkers.endpoints import endpoint_for
from dworkers.events import RunStarted, StepInfo
from dworkers.llm import LLMClient, Message, Price
from dworkers.plans.base import BasePlan, PlanStep
from dworkers.results import MOCK_MODEL
from dworkers.tenants.config import TenantConfig


@dataclass
class RunOptions:
    """Per-run settings; ``None`` means "use the tenant's"."""

    model: str | None = None
    api_base: str | None = None
    max_concurrency: int | None = None
    max_cost_usd: float | None = None
    # What the run spent before this process took it over (a resume continues its budget).
    spent_before_usd: float = 0.0
    fail_fast: bool = False
    run_id: str | None = None
    retry_base_delay: float = 1.0  # first backoff; doubles per failed attempt, with jitter
    max_retry_wait: float = 60.0  # upper bound on one backoff (not on a 429's asked wait)
    rate_limit_wait: float | None = None  # a step's total 429 waiting (the tenant's if None)
    # How the engine waits between attempts; tests pass one that records instead of sleeping.
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    # Stream answers token by token: only worth its CPU when someone watches them arrive (the
    # live tree). Dataset runs never stream.
    stream: bool = True
    row_window: int | None = None  # dataset runs: rows active at once (default 2 × slots + 8)
    # Decisions on approval gates; without them every gate holds the run (exit 3).
    gates: Gates | None = None


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def fmt_seconds(seconds: float) -> str:
    """``90`` → "1m 30s", ``99999`` → "27h 46m 39s", ``0.25`` → "0.25s"."""
    if seconds < 60:
        return f"{seconds:.3g}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return " ".join(parts)


class Policy:
    """A plan, a tenant, a client and the run's options: every setting a step runs with."""

    def __init__(self, plan: BasePlan, tenant: TenantConfig, client: LLMClient,
                 options: RunOptions | None = None) -> None:
        self.plan = plan
        self.tenant = tenant
        self.client = client
        self.options = options or RunOptions()

    def model_for(self, step: PlanStep) -> str:
        return self.options.model or self.tenant.model_for(step.worker_role)

    @property
    def offline(self) -> bool:
        return self.client.offline

    def shown_model(self, step: PlanStep) -> str:
        """The model a user is told answers the step: offline runs name the mock client rather
        than a model nobody calls."""
        return MOCK_MODEL if self.offline else self.model_for(step)

    @property
    def api_base(self) -> str | None:
        return self.options.api_base or self.tenant.api_base

    def endpoint_for(self, model: str) -> str | None:
        """Where calls to ``model`` go, however that was set (see ``dworkers.endpoints``)."""
        return endpoint_for(model, self.api_base)

    @property
    def max_concurrency(self) -> int:
        return self.options.max_concurrency or self.tenant.limits.max_concurrency

    @property
    def max_cost_usd(self) -> float | None:
        if self.options.max_cost_usd is not None:
            return self.options.max_cost_usd
        return self.tenant.limits.max_cost_usd

    def timeout_for(self, step: PlanStep) -> float:
        """The longest one attempt of ``step`` may take, from sending the request to the last
        byte of the answer, streamed or not: the step's ``timeout_seconds``, else the tenant's
        ``limits.timeout_seconds``."""
        return step.timeout_seconds or self.tenant.limits.timeout_seconds

    def tool_calls_for(self, step: PlanStep) -> int:
        """The most tool calls ``step`` may make: its own ``max_tool_calls``, else the
        tenant's ``limits.max_tool_calls``."""
        return step.max_tool_calls or self.tenant.limits.max_tool_calls

    def retries_for(self, step: PlanStep) -> int:
        """Retries after a retryable failure: the step's own ``retry_max`` if it sets one,
        else the tenant's ``limits.retry_max``."""
        if "retry_max" in step.model_fields_set:
            return step.retry_max
        return self.tenant.limits.retry_max

    @property
    def truncation_fails(self) -> bool:
        """Whether an answer cut off at the token limit fails its step: the plan's
        ``on_truncation`` if it sets one, else the tenant's ``limits.on_truncation``."""
        return (self.plan.on_truncation or self.tenant.limits.on_truncation) == "fail"

    @property
    def rate_limit_wait(self) -> float:
        """How long one step may wait in all for rate limits to lift."""
        if self.options.rate_limit_wait is not None:
            return self.options.rate_limit_wait
        return self.tenant.limits.rate_limit_wait_seconds

    def price_for(self, model: str) -> Price | None:
        """The price the tenant declares for ``model`` (sent with each call)."""
        declared = self.tenant.price_for(model)
        if declared is None:
            return None
        return Price(declared.input_per_million, declared.output_per_million)

    def known_price(self, model: str) -> Price | None:
        """What a call to ``model`` costs before it is made: the tenant's declared price, else
        the client's price list (``price_of``, when the client has one), else ``None`` (the
        endpoint's reports will tell)."""
        declared = self.price_for(model)
        if declared is not None:
            return declared
        listed = getattr(self.client, "price_of", None)
        price = listed(model) if callable(listed) else None
        return price if isinstance(price, Price) else None

    def stated_limits(self) -> dict[str, tuple[float | None, float | None]]:
        """Model → (rpm, tpm) the tenant states for the models this plan calls."""
        stated = {}
        for step in self.plan.steps:
            model = self.model_for(step)
            limits = self.tenant.rate_limits_for(model)
            if limits != (None, None):
                stated[model] = limits
        return stated

    def messages_for(
        self, step: PlanStep, inputs: Mapping[str, str], outputs: Mapping[str, Any],
        skipped: Mapping[str, str] | None = None,
    ) -> list[Message]:
        """What ``step`` is asked, given the run's inputs and its dependencies' answers (a
        typed step's parsed value, else its text); ``skipped``: why dependencies whose
        ``when:`` was false did not run."""
        deps = []
        for dep_id in step.depends_on:
            dep = self.plan.get_step(dep_id)
            if dep is not None:
                deps.append((dep, outputs.get(dep_id, "")))
        loose = {k: v for k, v in inputs.items() if k not in self.template_names}
        return prompts.messages(self.plan, step, self.tenant, {**inputs, **outputs}, deps,
                                loose, skipped)

    @functools.cached_property
    def template_names(self) -> frozenset[str]:
        """Every input a template names (the plan does not change while its engine exists)."""
        return frozenset(self.plan.placeholders())

    def describe(self, run_id: str, at: float | None = None) -> RunStarted:
        """The ``RunStarted`` event for this plan: a view can paint it before the run starts.
        """
        return RunStarted(
            run_id, self.plan.name, self.tenant.id,
            tuple(StepInfo(s.step_id, s.name, s.worker_role.value, self.shown_model(s),
                           tuple(s.depends_on)) for s in self.plan.steps),
            time.monotonic() if at is None else at,
        )

    def schedule(self) -> list[list[str]]:
        """Which steps start together when every step takes the same time."""
        return dag.levels(self.plan.graph)
