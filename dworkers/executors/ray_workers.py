"""What runs inside a Ray cluster: row workers that run the engine, and one coordinator.

Every ``RowWorker`` runs the same engine (a copy of the driver's) over the rows the driver feeds
it and streams the engine's events back in small batches; it never writes a file. The single
``Coordinator`` holds the run's rate gate and budget, so every worker's calls wait their turn in
one place: the cluster together stays within the provider's limits and the tenant's money.
Imported only inside the optional Ray executor (by the driver and by Ray's worker processes).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from dworkers import __version__
from dworkers.errors import Problem, ProblemsError
from dworkers.events import DatasetFinished, Row, RunFinished, RunStarted, StepProgress

BATCH_SECONDS = 0.1  # events are gathered this long before a batch goes to the driver


@dataclass(frozen=True, slots=True)
class Batch:
    """Events from one worker, with its clock when sent (the driver's may differ)."""

    sent_at: float
    events: list[Any] = field(default_factory=list)
    problems: list[Problem] | None = None  # the worker's engine refused to start (preflight)


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

    async def commit(self, reserved: float, spent: float) -> None:
        self.actor_calls += 1
        await self.budget.commit(reserved, spent)

    async def totals(self) -> tuple[int, int, int]:
        """Calls sent and answered 429 by every worker together, and actor calls served."""
        return self.calls, self.rate_limited, self.actor_calls


class SharedRateGate:
    """A worker's ``RateGate``: every call is booked at the coordinator. Calls waiting at the
    same moment share one booking; answers are reported in batches, at once when they teach
    something urgent (a 429, an error, a model's first answer)."""

    GATHER_SECONDS = 0.005  # calls this close together share one booking
    REPORT_SECONDS = 0.1  # ordinary answers are reported this often

    def __init__(self, coordinator: Any) -> None:
        self.coordinator = coordinator
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
                slots = await self.coordinator.book.remote(model, [t for t, _ in calls])
            except BaseException as exc:  # the coordinator is gone: every waiting call fails
                for _, future in calls:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
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
            await self._report(wait=0.0)
        elif self.reporting is None:
            self.reporting = asyncio.create_task(self._report(wait=self.REPORT_SECONDS))
        return self.changed.pop(model, None)  # limits learned so far, reported once

    async def _report(self, wait: float) -> None:
        if wait:
            await asyncio.sleep(wait)
            self.reporting = None
        answers, self.answers = self.answers, []
        if answers:
            for info in await self.coordinator.observe_many.remote(answers):
                self.changed[info.model] = info

    def close(self) -> None:
        for task in (self.booking, self.reporting):
            if task is not None:
                task.cancel()


class SharedBudget:
    """A worker's ``Budget``: held at the coordinator. Without a budget no call asks it."""

    def __init__(self, coordinator: Any, *, unlimited: bool) -> None:
        self.coordinator = coordinator
        self.unlimited = unlimited

    async def reserve(self, usd: float) -> str | None:
        if self.unlimited:
            return None
        refused: str | None = await self.coordinator.reserve.remote(usd)
        return refused

    async def commit(self, reserved: float, spent: float) -> None:
        if not self.unlimited:
            await self.coordinator.commit.remote(reserved, spent)


# Events a worker does not send: the driver paints one RunStarted and one DatasetFinished for
# the whole cluster, and dataset runs do not show streamed text.
_LOCAL_ONLY = (RunStarted, RunFinished, DatasetFinished, StepProgress)


class RowWorker:
    """Runs rows the driver feeds it through one ``run_many`` (Ray actor, asyncio)."""

    def __init__(self, engine: Any, coordinator: Any, *, unlimited_budget: bool,
                 version: str) -> None:
        if version != __version__:
            raise RuntimeError(f"dworkers {__version__} is installed on this Ray node, "
                               f"{version} on the driver: install the same version everywhere")
        self.engine = engine
        engine.on_event = self._collect
        engine.cache = None  # the cache is the driver's history database, on the user's disk
        engine.rate_gate = SharedRateGate(coordinator)
        engine.budget = SharedBudget(coordinator, unlimited=unlimited_budget)
        self.rows: asyncio.Queue[Row | None] = asyncio.Queue()
        self.received = 0  # rows fed so far
        self.expected: int | None = None  # rows the driver says it fed, once it closes
        self.stopped = False
        self.cancelled = False
        self.events: list[Any] = []
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def _collect(self, event: Any) -> None:
        if not isinstance(event, _LOCAL_ONLY):
            self.events.append(event)
            self.wake.set()

    async def pid(self) -> int:
        return os.getpid()

    # An async actor may run calls out of order: ``close`` says how many rows were fed, and the
    # rows end only once that many arrived. Rows the driver fed that a worker never reports
    # (fed after ``stop``) are the driver's to account for when the worker's stream ends.

    async def feed(self, rows: list[Row]) -> None:
        self.received += len(rows)
        if not self.stopped:
            for row in rows:
                self.rows.put_nowait(row)
        self._maybe_end()

    async def close(self, fed: int) -> None:
        """No more rows after ``fed`` of them: ``run`` ends once those are done."""
        self.expected = fed
        self._maybe_end()

    def _maybe_end(self) -> None:
        if self.expected is not None and self.received >= self.expected:
            self.rows.put_nowait(None)
            self.expected = None

    async def stop(self) -> list[str]:
        """Start no more rows; the keys of rows fed but not handed to the engine yet."""
        self.stopped = True
        keys = []
        while not self.rows.empty():
            row = self.rows.get_nowait()
            if row is not None:
                keys.append(row.key)
        self.rows.put_nowait(None)
        return keys

    async def cancel(self) -> None:
        """Ctrl-C on the driver: calls in flight are cancelled, started rows end cancelled.
        Calls may arrive out of order: a worker cancelled before it ran starts nothing."""
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()

    async def _source(self) -> AsyncIterator[Row]:
        while (row := await self.rows.get()) is not None:
            yield row

    async def _drive(self) -> None:
        async for _ in self.engine.run_many(self._source()):
            pass  # each row's result reaches the driver in its RowFinished event

    async def run(self) -> AsyncIterator[Batch]:
        """Stream batches of events until the rows are done (or cancelled)."""
        if self.cancelled:
            return
        task = self.task = asyncio.create_task(self._drive())
        while True:
            if not self.events and not task.done():
                waiter = asyncio.create_task(self.wake.wait())
                await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
            if not task.done():
                await asyncio.sleep(BATCH_SECONDS)  # a batch per call would cost a round trip
            self.wake.clear()
            batch, self.events = self.events, []
            if batch:
                yield Batch(time.monotonic(), batch)
            if task.done() and not self.events:
                break
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, ProblemsError):
            # Problems travel as data: a remote machine may lack a key the driver has.
            yield Batch(time.monotonic(), [], list(error.problems))
        elif error is not None:
            raise error
