"""The row workers of a dataset run on Ray: each runs the engine over the rows it is fed.

Every ``RowWorker`` runs the same engine (a copy of the driver's) over the rows the driver feeds
it and streams the engine's events back in small batches; it never writes a file. Its calls
wait their turn and are paid for at the run's one coordinator (``ray_coordinator``); if that is
gone the worker stops, its calls in flight end cancelled, and its last batch says why
(``Batch.coordinator_lost``). Imported only inside the optional Ray executor (by the driver and
by Ray's worker processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dworkers import __version__
from dworkers.errors import Problem, ProblemsError
from dworkers.events import DatasetFinished, RunFinished, RunStarted, StepProgress
from dworkers.executors.ray_coordinator import SharedBudget, SharedRateGate
from dworkers.results import Row

BATCH_SECONDS = 0.1  # events are gathered this long before a batch goes to the driver


@dataclass(frozen=True, slots=True)
class Batch:
    """Events from one worker, with its clock when sent (the driver's may differ)."""

    sent_at: float
    events: list[Any] = field(default_factory=list)
    problems: list[Problem] | None = None  # the worker's engine refused to start (preflight)
    coordinator_lost: bool = False  # the worker stopped: the run's coordinator is gone
    startup: dict[str, float] | None = None  # new start-up marks: see ``RowWorker``


def process_started() -> float | None:
    """When this process started, on this machine's monotonic clock (Linux; else None)."""
    with contextlib.suppress(OSError, ValueError, IndexError, AttributeError):
        # Field 22 of /proc/self/stat: the process's start, in clock ticks after boot.
        fields = Path("/proc/self/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.monotonic() - (time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    return None


# Events a worker does not send: the driver paints one RunStarted and one DatasetFinished for
# the whole cluster, and dataset runs do not show streamed text.
_LOCAL_ONLY = (RunStarted, RunFinished, DatasetFinished, StepProgress)


class RowWorker:
    """Runs rows the driver feeds it through one ``run_many`` (Ray actor, asyncio).

    It may be started before the run is known (a private cluster's workers start with Ray,
    while the driver prepares the run): the engine and the coordinator come with ``run``.
    ``warm_litellm``: import litellm and set it up (seconds of CPU) in the background at once,
    rather than when the first row's first call needs it."""

    def __init__(self, *, version: str, warm_litellm: bool) -> None:
        if version != __version__:
            raise RuntimeError(f"dworkers {__version__} is installed on this Ray node, "
                               f"{version} on the driver: install the same version everywhere")
        # This machine's monotonic times of the worker's start-up, sent to the driver with the
        # batches that follow each new one (``Batch.startup``).
        self.startup: dict[str, float] = {"constructed": time.monotonic()}
        if (started := process_started()) is not None:
            self.startup["process_started"] = started
        self.startup_sent = 0
        if warm_litellm and "litellm" not in sys.modules:
            threading.Thread(target=self._warm_litellm, name="dworkers-warm-litellm",
                             daemon=True).start()
        self.engine: Any = None
        self.lost = False  # the coordinator is gone: no call may be paced or paid any more
        self.rows: asyncio.Queue[Row | None] = asyncio.Queue()
        self.received = 0  # rows fed so far
        self.expected: int | None = None  # rows the driver says it fed, once it closes
        self.stopped = False
        self.cancelled = False
        self.events: list[Any] = []
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def _warm_litellm(self) -> None:
        from dworkers.llm import load_litellm, prefetch_litellm

        load_litellm()
        self.startup["litellm_ready"] = time.monotonic()
        prefetch_litellm().join()  # and its first call's set-up, offline

    def _attach(self, engine: Any, coordinator: Any, unlimited_budget: bool) -> None:
        """Take the run's engine; its calls wait their turn and are paid at ``coordinator``."""
        self.engine = engine
        engine.on_event = self._collect
        engine.cache = None  # the cache is the driver's history database, on the user's disk
        engine.rate_gate = SharedRateGate(coordinator, on_lost=self._coordinator_lost)
        engine.budget = SharedBudget(coordinator, unlimited=unlimited_budget,
                                     on_lost=self._coordinator_lost)
        self.startup["attached"] = time.monotonic()

    def _new_startup(self) -> dict[str, float] | None:
        """The start-up marks, when some were not sent yet."""
        if len(self.startup) == self.startup_sent:
            return None
        self.startup_sent = len(self.startup)
        return dict(self.startup)

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

    def _coordinator_lost(self) -> None:
        """Stop as Ctrl-C would: rows in flight end cancelled, no row starts."""
        self.lost = True
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()

    async def _source(self) -> AsyncIterator[Row]:
        while (row := await self.rows.get()) is not None:
            yield row

    async def _drive(self) -> None:
        async for _ in self.engine.run_many(self._source()):
            pass  # each row's result reaches the driver in its RowFinished event

    async def run(self, engine: Any, coordinator: Any, *,
                  unlimited_budget: bool) -> AsyncIterator[Batch]:
        """Run the rows fed with ``engine`` (calls paced and paid at ``coordinator``; without
        a budget none asks it for money); stream batches of events until the rows are done
        (or cancelled)."""
        if self.cancelled:
            return
        self._attach(engine, coordinator, unlimited_budget)
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
                yield Batch(time.monotonic(), batch, startup=self._new_startup())
            if task.done() and not self.events:
                break
        if self.lost:  # the driver must not take the rows it fed for finished, nor refeed them
            yield Batch(time.monotonic(), [], coordinator_lost=True)
            return
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, ProblemsError):
            # Problems travel as data: a remote machine may lack a key the driver has.
            yield Batch(time.monotonic(), [], list(error.problems))
        elif error is not None:
            raise error
