"""What every row of a run shares: call slots served in row order, rate gate, budget, estimates.

A single run is a dataset of one row. In a dataset run the global and per-role slots count
calls across all rows, and a row started earlier is served first: its next steps take freed
slots before any later row's, so started rows finish before new ones pile up.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Callable

from dworkers.budget import Budget, LocalBudget, Reservations
from dworkers.estimates import TokenEstimator
from dworkers.ratelimit import LocalRateGate, RateGate
from dworkers.tenants.config import TenantConfig
from dworkers.tools import Toolbox
from dworkers.types import WorkerRole


class PrioritySlots:
    """A semaphore whose waiters are served lowest priority first (FIFO among equals)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.free = limit
        self.waiting = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    async def acquire(self, priority: int) -> None:
        if self.free > 0 and not self.waiting:
            self.free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), future))
        self.waiting += 1
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted, then cancelled: pass it on
                self.release()
            else:
                self.waiting -= 1
                future.cancel()  # popped and skipped by release
            raise

    def release(self) -> None:
        while self._waiters:
            *_, future = heapq.heappop(self._waiters)
            if not future.done():
                self.waiting -= 1
                future.set_result(None)
                return
        self.free += 1

    @contextlib.asynccontextmanager
    async def hold(self, priority: int) -> AsyncIterator[None]:
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()


class Pool:
    """The capacity a run's rows share. ``demand`` counts step tasks started and not yet
    finished (calling, or waiting for a slot or the rate gate): a dataset run starts a new row
    only while it is below ``max_concurrency``, i.e. while a slot would otherwise idle."""

    def __init__(
        self,
        tenant: TenantConfig,
        max_concurrency: int,
        *,
        rate_gate: RateGate | None,
        budget: Budget | None,
        max_cost_usd: float | None,
        spent_before_usd: float = 0.0,
        stated_limits: dict[str, tuple[float | None, float | None]],
        probe: bool,
        stream: bool,
    ) -> None:
        self.max_concurrency = max_concurrency
        self.global_slots = PrioritySlots(max_concurrency)
        self.role_slots: dict[WorkerRole, PrioritySlots] = {}
        for role in WorkerRole:
            limit = tenant.worker(role).max_concurrent_tasks
            if limit:
                self.role_slots[role] = PrioritySlots(limit)
        self.rate_gate: RateGate = rate_gate or LocalRateGate(stated_limits, probe=probe)
        local = LocalBudget(max_cost_usd, spent=spent_before_usd)
        self.budget: Budget = budget or local
        self.reservations = Reservations(self.budget, max_cost_usd)
        self.estimator = TokenEstimator()
        self.stream = stream
        # Set once the budget allows no more calls: at once when it is $0, or was spent before.
        self.stop_reason: str | None = local.refusal()
        self.demand = 0
        self.on_idle: Callable[[], None] | None = None
        self.calls = 0
        self.rate_limited = 0
        self.toolbox: Toolbox | None = None  # the run's MCP servers (engine/toolloop.py)

    @property
    def idle(self) -> bool:
        return self.demand < self.max_concurrency

    def step_started(self) -> None:
        self.demand += 1

    def step_ended(self) -> None:
        self.demand -= 1
        if self.on_idle is not None and self.idle:
            self.on_idle()

    @contextlib.asynccontextmanager
    async def slots(self, role: WorkerRole, priority: int) -> AsyncIterator[None]:
        role_slots = self.role_slots.get(role)
        async with (role_slots.hold(priority) if role_slots else contextlib.nullcontext(),
                    self.global_slots.hold(priority)):
            yield
