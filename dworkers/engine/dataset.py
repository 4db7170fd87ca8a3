"""Dataset runs: one plan over many rows, on one scheduler, yielding each row as it finishes.

Every row is a run of the plan (a ``PlanInstance``) and all rows share one ``Pool``: the global and
per-role slots, the rate gate and the budget. A new row starts only while a slot would
otherwise idle, and at most ``window`` rows are active, so memory stays flat however long the
dataset; the steps of rows started earlier take freed slots first, so started rows finish
before new ones pile up and results flow from the first minute. A failed row never stops the
others; ``max_failures`` stops starting rows, the budget stops starting calls, and every row
is accounted for in the results (rows left unstarted are ``skipped``, with the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping

from dworkers import approvals
from dworkers.engine.calls import EventCallback
from dworkers.engine.instance import PlanInstance
from dworkers.engine.pool import Pool
from dworkers.engine.preflight import check_before_calls, inputs_with_defaults
from dworkers.engine.reuse import StepCache
from dworkers.engine.settings import Policy
from dworkers.errors import DworkersError
from dworkers.events import DatasetFinished, RowFinished, RowStarted
from dworkers.results import (
    DatasetResult,
    Row,
    RowResult,
    Rows,
    RowStatus,
    RunResult,
    StepResult,
    StepStatus,
    each_row,
)

CANCEL_WAIT = 15.0  # seconds rows get to wind down after an interruption


def gate_reason(result: StepResult) -> str:
    """A held or rejected row's error: it begins as its steps' do (the history tells held and
    rejected rows apart by it), and names the gate."""
    reason = result.error or result.status.value
    if reason.startswith((approvals.WAITING_FOR_APPROVAL + ":", approvals.REJECTED + " by ")):
        return approvals.held_below(result.step_id, reason)  # the gate itself
    return reason


def row_result(row: Row, inputs: Mapping[str, str], run: RunResult) -> RowResult:
    """A finished run as a row: failed if a step failed, else cancelled or skipped if a step
    was, else succeeded; the error names the first step that did not succeed."""
    statuses = {r.status for r in run.outputs.values() if not r.condition_false}
    if run.interrupted:
        status = RowStatus.CANCELLED
    elif StepStatus.FAILED in statuses:
        status = RowStatus.FAILED
    elif StepStatus.CANCELLED in statuses:
        status = RowStatus.CANCELLED
    elif StepStatus.WAITING in statuses:  # held at a gate: resumed once decided
        status = RowStatus.WAITING
    elif StepStatus.SKIPPED in statuses:
        status = RowStatus.SKIPPED
    elif StepStatus.REJECTED in statuses:
        status = RowStatus.REJECTED
    else:
        status = RowStatus.SUCCEEDED
    error = None
    if status is not RowStatus.SUCCEEDED:
        first = next((r for r in run.outputs.values()
                      if r.status is status and not r.condition_false), None)
        first = first or next((r for r in run.outputs.values() if not r.settled_well), None)
        if first is not None and first.status in (StepStatus.WAITING, StepStatus.REJECTED):
            error = gate_reason(first)
        elif first is not None:
            error = f"{first.step_id}: {first.error or first.status.value}"
        else:
            error = "cancelled (run interrupted)"
    return RowResult(
        key=row.key, status=status, inputs=dict(inputs), extra=dict(row.extra), line=row.line,
        outputs=run.outputs, error=error, started_at=run.started_at,
        finished_at=time.time(), duration_ms=run.total_duration_ms,
    )


def unstarted(row: Row, status: RowStatus, reason: str) -> RowResult:
    return RowResult(key=row.key, status=status, inputs=dict(row.inputs), extra=dict(row.extra),
                     line=row.line, error=reason)


class DatasetRun:
    """The state of one dataset run: active rows, finished rows not yet yielded, totals."""

    def __init__(self, policy: Policy, pool: Pool, result: DatasetResult, *,
                 emit: EventCallback | None, cache: StepCache | None,
                 max_failures: int | None) -> None:
        self.policy = policy
        self.emit: EventCallback = emit or (lambda event: None)
        self.cache = cache
        self.max_failures = max_failures
        self.pool = pool
        self.pool.on_idle = self.wake
        slots = policy.max_concurrency
        self.window = max(1, policy.options.row_window or 2 * slots + 8)
        self.result = result
        self.active: dict[asyncio.Task[RowResult], PlanInstance] = {}
        self.done: deque[RowResult] = deque()
        self.woken = asyncio.Event()
        self.started = 0
        self.failed = 0
        self.stop_reason: str | None = None  # why no new row starts

    def wake(self) -> None:
        self.woken.set()

    @property
    def may_start(self) -> bool:
        return (self.stop_reason is None and self.pool.stop_reason is None
                and len(self.active) < self.window and self.pool.idle)

    def start(self, row: Row) -> None:
        """Start ``row``, or account for it at once when its inputs are wrong."""
        try:
            inputs = inputs_with_defaults(self.policy.plan, row.inputs)
        except DworkersError as exc:
            self.finished(unstarted(row, RowStatus.FAILED, f"bad inputs: {exc}"))
            return
        run = PlanInstance(self.policy, inputs, self.pool, emit=self.emit, cache=self.cache,
                           row=row, priority=self.started)
        run.result.run_id = self.result.run_id
        self.started += 1
        self.emit(RowStarted(row.key, row.line, time.monotonic()))
        self.pool.step_started()  # the row's first steps, until its run launches them
        task = asyncio.create_task(self.run_row(run, row, inputs), name=f"row:{row.key}")
        self.active[task] = run
        task.add_done_callback(self.row_done)

    async def run_row(self, run: PlanInstance, row: Row, inputs: Mapping[str, str]) -> RowResult:
        self.pool.step_ended()  # ``execute`` launches the first steps before it waits
        return row_result(row, inputs, await run.execute())

    def row_done(self, task: asyncio.Task[RowResult]) -> None:
        run = self.active.pop(task)
        if task.cancelled() or task.exception() is not None:
            # Cancelled (an interruption) or broken: account for the row from what its run
            # recorded; a broken row must not take the dataset down with it.
            result = row_result(run.row or Row("?", {}), run.inputs, run.result)
            if not task.cancelled():
                result = result.model_copy(update={
                    "status": RowStatus.FAILED,
                    "error": f"internal error: {task.exception()!r}"})
            elif result.status is RowStatus.SUCCEEDED:  # cancelled before it began
                result = result.model_copy(update={
                    "status": RowStatus.CANCELLED,
                    "error": "cancelled before it started (run interrupted)"})
        else:
            result = task.result()
        self.finished(result)

    def finished(self, result: RowResult) -> None:
        self.result.add(result)
        if result.status is RowStatus.FAILED:
            self.failed += 1
            limit = self.max_failures
            if limit is not None and self.failed >= limit and self.stop_reason is None:
                self.stop_reason = (f"stopped after {self.failed} failed row"
                                    f"{'s' if self.failed != 1 else ''} (--max-failures {limit})")
        self.emit(RowFinished(result, time.monotonic()))
        self.done.append(result)
        self.wake()

    def totals(self, t0: float, *, interrupted: bool) -> DatasetResult:
        result = self.result
        result.calls = self.pool.calls
        result.rate_limited = self.pool.rate_limited
        result.interrupted = interrupted
        result.stop_reason = self.stop_reason or self.pool.stop_reason
        result.total_duration_ms = (time.monotonic() - t0) * 1000
        return result

    async def cancel_active(self) -> None:
        for task in list(self.active):
            task.cancel()
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(CANCEL_WAIT):
                while self.active:
                    await asyncio.wait(list(self.active))


async def schedule_rows(policy: Policy, rows: Rows, pool: Pool, result: DatasetResult, *,
                   emit: EventCallback | None = None, cache: StepCache | None = None,
                   max_failures: int | None = None) -> AsyncIterator[RowResult]:
    """``Engine.run_many``: see the module's docstring and ``Engine.run_many``. ``result``
    gathers the totals as rows finish (the engine keeps it, even if interrupted)."""
    if max_failures is not None and max_failures < 1:
        raise ValueError("max_failures must be at least 1")
    check_before_calls(policy)
    state = DatasetRun(policy, pool, result, emit=emit, cache=cache, max_failures=max_failures)
    t0 = time.monotonic()
    emit = state.emit
    emit(dataclasses.replace(policy.describe(state.result.run_id, t0), dataset=True))
    source = each_row(rows)
    exhausted = False
    try:
        while True:
            while state.may_start and not exhausted:
                try:
                    row = await anext(source)
                except StopAsyncIteration:
                    exhausted = True
                    break
                state.start(row)
            while state.done:
                yield state.done.popleft()
            stop = state.stop_reason or state.pool.stop_reason
            if stop is not None and not state.active and not exhausted:
                # Nothing more will start: account for every row left, so resume finds them.
                async for row in source:
                    state.finished(unstarted(row, RowStatus.SKIPPED, stop))
                    yield state.done.popleft()
                exhausted = True
            if exhausted and not state.active and not state.done:
                break
            if not state.done:
                state.woken.clear()
                if not (state.may_start and not exhausted):
                    await state.woken.wait()
    except BaseException:  # interrupted (CancelledError), or the consumer stopped early
        await state.cancel_active()
        emit(DatasetFinished(state.totals(t0, interrupted=True), time.monotonic()))
        raise
    finally:
        with contextlib.suppress(Exception):
            await source.aclose()
    emit(DatasetFinished(state.totals(t0, interrupted=False), time.monotonic()))
