"""The cluster's one rate gate and budget: the ``Coordinator`` actor and the workers' side of it.

A dataset run on Ray has one ``Coordinator``. It holds the run's rate gate and budget, so every
worker's calls wait their turn in one place: the cluster together stays within the provider's
limits and the tenant's money. Workers reach it through ``SharedRateGate`` and
``SharedBudget``, which implement the engine's ``RateGate`` and ``Budget`` protocols.

The coordinator is pinned to the driver's node (``start_coordinator``): it lives and dies
with the machine that runs the command, never with a worker node the cluster loses. It is not
restarted, because its state (calls booked, money reserved and spent) cannot be rebuilt
safely elsewhere. If it dies anyway (killed, out of memory), nobody's calls can be paced or
paid for any more: a worker that finds it gone stops at once and its calls in flight end
*cancelled*, never *failed*; the driver, which watches the coordinator (``Coordinator.watch``),
stops the run as interrupted, and ``--resume`` runs every row that did not finish.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


class Coordinator:
    """The cluster's one rate gate and budget (Ray actor). Holds the engine's own in-process
    ones, so pacing and budget rules are exactly those of a local run, and counts calls.

    Workers book calls and report answers in batches (``book``, ``observe_many``): one actor
    call serves every call a worker has waiting, which keeps this actor from being the limit.
    """

    def __init__(self, gate: Any, budget: Any) -> None:
        self.gate = gate
        self.budget = budget
        self.pacer = getattr(gate, "pacer", None)  # a LocalRateGate's: bookings without waiting
        self.calls = 0
        self.rate_limited = 0
        self.actor_calls = 0
        self.forever = asyncio.Event()  # never set: ``watch`` returns only by this actor's death

    async def book(self, model: str, tokens: list[int]) -> list[tuple[bool, float]]:
        """Book calls to ``model``: for each, whether it is booked and the seconds to wait
        before sending it (or, when not booked, before asking again)."""
        self.actor_calls += 1
        if self.pacer is None:  # another gate: it does its own waiting
            await asyncio.gather(*(self.gate.acquire(model, t) for t in tokens))
            self.calls += len(tokens)
            return [(True, 0.0)] * len(tokens)
        now = time.monotonic()
        slots = [self.pacer.schedule(model, t, now) for t in tokens]
        self.calls += sum(1 for slot in slots if slot.booked)
        return [(slot.booked, slot.delay) for slot in slots]

    async def observe_many(self, answers: list[tuple[str, int, dict[str, str], int, int]]
                           ) -> list[Any]:
        """Learn from answers (model, status, headers, tokens, estimated); the limits that
        changed."""
        self.actor_calls += 1
        changed = []
        for model, status, headers, tokens, estimated in answers:
            if status == 429:
                self.rate_limited += 1
            info = await self.gate.observe(model, status, headers, tokens, estimated)
            if info is not None:
                changed.append(info)
        return changed

    async def reserve(self, usd: float) -> str | None:
        self.actor_calls += 1
        refused: str | None = await self.budget.reserve(usd)
        return refused

    async def commit(self, reserved: float, spent: float) -> str | None:
        """The budget's ``commit``: why no more calls may start, once it is spent."""
        self.actor_calls += 1
        refused: str | None = await self.budget.commit(reserved, spent)
        return refused

    async def totals(self) -> tuple[int, int, int]:
        """Calls sent and answered 429 by every worker together, and actor calls served."""
        return self.calls, self.rate_limited, self.actor_calls

    async def watch(self) -> None:
        """Never returns: the driver awaits it to learn at once that this actor died."""
        await self.forever.wait()


def start_coordinator(gate: Any, budget: Any, *, name: str) -> Any:
    """A ``Coordinator`` actor on the driver's own node, never restarted (see the module's
    docstring); ``name`` makes it findable (``ray list actors``)."""
    here = ray.get_runtime_context().get_node_id()
    return ray.remote(Coordinator).options(
        name=name, num_cpus=0, max_concurrency=100_000, max_restarts=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
    ).remote(gate, budget)


class CoordinatorLink:
    """A worker's calls to the coordinator. When it is gone (``RayActorError``) the worker is
    told (``on_lost``) and the caller gets ``CancelledError``: the step it was for ends
    cancelled, like a step cut short by Ctrl-C, and a resume runs it again."""

    def __init__(self, coordinator: Any, on_lost: Callable[[], None] | None = None) -> None:
        self.coordinator = coordinator
        self.on_lost = on_lost
        self.lost = False

    def gone(self) -> asyncio.CancelledError:
        """Note that the coordinator is gone; the error to raise in the caller."""
        if not self.lost:
            self.lost = True
            if self.on_lost is not None:
                self.on_lost()
        return asyncio.CancelledError("the Ray coordinator is gone")

    async def ask(self, method: str, *args: Any) -> Any:
        """``coordinator.method(*args)``, its answer awaited."""
        if self.lost:
            raise self.gone()
        try:
            return await getattr(self.coordinator, method).remote(*args)
        except RayActorError:
            raise self.gone() from None


class SharedRateGate:
    """A worker's ``RateGate``: every call is booked at the coordinator. Calls waiting at the
    same moment share one booking; answers are reported in batches, at once when they teach
    something urgent (a 429, an error, a model's first answer)."""

    GATHER_SECONDS = 0.005  # calls this close together share one booking
    REPORT_SECONDS = 0.1  # ordinary answers are reported this often

    def __init__(self, coordinator: Any, on_lost: Callable[[], None] | None = None) -> None:
        self.link = CoordinatorLink(coordinator, on_lost)
        self.waiting: dict[str, list[tuple[int, asyncio.Future[tuple[bool, float]]]]] = {}
        self.booking: asyncio.Task[None] | None = None
        self.answers: list[tuple[str, int, dict[str, str], int, int]] = []
        self.reporting: asyncio.Task[None] | None = None
        self.answered: set[str] = set()
        self.changed: dict[str, Any] = {}

    async def acquire(self, model: str, tokens: int) -> None:
        while True:
            future: asyncio.Future[tuple[bool, float]] = \
                asyncio.get_running_loop().create_future()
            self.waiting.setdefault(model, []).append((tokens, future))
            if self.booking is None:
                self.booking = asyncio.create_task(self._book())
            booked, delay = await future
            if delay > 0:
                await asyncio.sleep(delay)
            if booked:
                return

    async def _book(self) -> None:
        await asyncio.sleep(self.GATHER_SECONDS)
        waiting, self.waiting = self.waiting, {}
        self.booking = None
        for model, calls in waiting.items():
            try:
                slots = await self.link.ask("book", model, [t for t, _ in calls])
            except BaseException as exc:  # every waiting call ends as this booking did
                for _, future in calls:
                    if not future.done():
                        if isinstance(exc, asyncio.CancelledError):
                            future.cancel()  # the coordinator is gone, or the worker stops
                        else:
                            future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError) and not self.link.lost:
                    raise  # this task itself was cancelled
                continue
            for (_, future), slot in zip(calls, slots, strict=True):
                if not future.done():
                    future.set_result(slot)

    async def observe(self, model: str, status: int, headers: dict[str, str], tokens: int,
                      estimated: int) -> Any:
        self.answers.append((model, status, dict(headers), tokens, estimated))
        urgent = not 200 <= status < 300 or model not in self.answered
        self.answered.add(model)
        if urgent:
            await self._report()
        elif self.reporting is None:
            self.reporting = asyncio.create_task(self._report_soon())
        return self.changed.pop(model, None)  # limits learned so far, reported once

    async def _report_soon(self) -> None:
        await asyncio.sleep(self.REPORT_SECONDS)
        self.reporting = None
        if not self.link.lost:
            try:
                await self._report()
            except asyncio.CancelledError:
                if not self.link.lost:
                    raise  # this task itself was cancelled; a lost coordinator is told already

    async def _report(self) -> None:
        answers, self.answers = self.answers, []
        if answers:
            for info in await self.link.ask("observe_many", answers):
                self.changed[info.model] = info

    def close(self) -> None:
        for task in (self.booking, self.reporting):
            if task is not None:
                task.cancel()


class SharedBudget:
    """A worker's ``Budget``: held at the coordinator. Without a budget no call asks it."""

    def __init__(self, coordinator: Any, *, unlimited: bool,
                 on_lost: Callable[[], None] | None = None) -> None:
        self.link = CoordinatorLink(coordinator, on_lost)
        self.unlimited = unlimited

    async def reserve(self, usd: float) -> str | None:
        if self.unlimited:
            return None
        refused: str | None = await self.link.ask("reserve", usd)
        return refused

    async def commit(self, reserved: float, spent: float) -> str | None:
        if self.unlimited:
            return None
        refused: str | None = await self.link.ask("commit", reserved, spent)
        return refused
