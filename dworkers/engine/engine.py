"""``Engine``: runs one plan for one tenant, once (``run``) or once per row (``run_many``).

A thin facade over the engine's modules: ``settings`` (what each step runs with),
``preflight`` (checks before any call), ``reuse`` (earlier answers), ``instance`` (one plan
instance's DAG scheduling), ``calls`` (a step's attempts and costs) and ``dataset`` (many rows
on one pool). The engine never prints: it reports through events.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping

from dworkers.budget import Budget
from dworkers.engine.calls import EventCallback
from dworkers.engine.dataset import schedule_rows
from dworkers.engine.instance import PlanInstance
from dworkers.engine.pool import Pool
from dworkers.engine.preflight import check_before_calls, inputs_with_defaults
from dworkers.engine.reuse import StepCache, applies_again, reusable_steps
from dworkers.engine.settings import Policy, RunOptions, new_run_id
from dworkers.engine.toolloop import close_tools, tools_closed
from dworkers.llm import LLMClient
from dworkers.plans.base import BasePlan, PlanStep
from dworkers.ratelimit import RateGate
from dworkers.results import DatasetResult, Row, RowResult, RunResult, StepResult
from dworkers.tenants.config import TenantConfig


class Engine(Policy):
    """Runs one plan for one tenant. Build it with ``PlanBuilder(plan, tenant).build()``."""

    def __init__(
        self,
        plan: BasePlan,
        tenant: TenantConfig,
        client: LLMClient,
        options: RunOptions | None = None,
        *,
        on_event: EventCallback | None = None,
        reuse: Mapping[str, StepResult] | None = None,
        cache: StepCache | None = None,
        rate_gate: RateGate | None = None,
        budget: Budget | None = None,
    ) -> None:
        """``rate_gate`` and ``budget`` replace the in-process ones (a cluster shares them)."""
        super().__init__(plan, tenant, client, options)
        self.on_event = on_event
        self.reuse = dict(reuse or {})
        self.cache = cache
        self.rate_gate = rate_gate
        self.budget = budget
        self.result: RunResult | None = None  # the latest run's result, even if interrupted
        self.dataset_result: DatasetResult | None = None  # the latest dataset run's totals

    def resolve_inputs(self, inputs: Mapping[str, object] | None) -> dict[str, str]:
        """Inputs with defaults applied; every missing or unknown name reported at once."""
        return inputs_with_defaults(self.plan, inputs)

    def preflight(self) -> None:
        """Fail before any call if a model is not allowed or its key is not set (see
        ``dworkers.engine.preflight``)."""
        check_before_calls(self)

    def still_applies(self, step: PlanStep, reused: StepResult, inputs: Mapping[str, str],
                      outputs: Mapping[str, str]) -> bool:
        """Whether an earlier result answers ``step`` now (see ``dworkers.engine.reuse``)."""
        return applies_again(self, step, reused, inputs, outputs)

    def reused_steps(self, inputs: Mapping[str, str]) -> dict[str, bool]:
        """For each step: whether a run would take it from ``reuse`` rather than call."""
        return reusable_steps(self, self.reuse, inputs)

    async def run(self, inputs: Mapping[str, object] | None = None) -> RunResult:
        """Run the plan. On cancellation every step is accounted for in ``self.result`` and a
        ``RunFinished`` event before ``CancelledError`` propagates."""
        values = self.resolve_inputs(inputs)
        self.preflight()
        pool = self.pool(stream=self.options.stream, probe=False)
        instance = PlanInstance(self, values, pool, emit=self.on_event, reuse=self.reuse,
                                cache=self.cache)
        self.result = instance.result
        try:
            return await instance.execute()
        finally:
            await close_tools(pool)  # however the run ended: no server outlives it

    def run_many(
        self,
        rows: Iterable[Row | Mapping[str, object]] | AsyncIterable[Row | Mapping[str, object]],
        *,
        max_failures: int | None = None,
    ) -> AsyncIterator[RowResult]:
        """Run the plan once per row, all rows sharing the run's slots, rate limits and
        budget; yields each row's result as it finishes. See ``dworkers.engine.dataset``."""
        self.dataset_result = DatasetResult(
            run_id=self.options.run_id or new_run_id(), plan=self.plan.name,
            tenant=self.tenant.id, started_at=time.time())
        pool = self.pool(stream=False, probe=True)
        return tools_closed(schedule_rows(self, rows, pool, self.dataset_result,
                                          emit=self.on_event, cache=self.cache,
                                          max_failures=max_failures), pool)

    def pool(self, *, stream: bool, probe: bool) -> Pool:
        """The capacity one run (all its rows) shares."""
        return Pool(
            self.tenant, self.max_concurrency,
            rate_gate=self.rate_gate, budget=self.budget, max_cost_usd=self.max_cost_usd,
            spent_before_usd=self.options.spent_before_usd,
            stated_limits=self.stated_limits(), probe=probe, stream=stream,
        )
