"""``PlanInstance``: one plan over one set of inputs, its steps scheduled as early as possible.

Every step starts the moment its own dependencies have succeeded (no level barriers), capped
by the pool's slots (the run's concurrency, each role's ``max_concurrent_tasks``), on one event
loop. A step that fails for good skips its descendants and leaves every independent branch
running; a step whose earlier answer still applies (a resume, the cache) is not called. A
single run is one instance; a dataset run is one instance per row, all sharing one pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from dworkers import approvals, conditions
from dworkers.engine.calls import EventCallback, StepCalls, StepRecords
from dworkers.engine.pool import Pool
from dworkers.engine.reuse import StepCache, applies_again, as_reused, cache_key, typed_again
from dworkers.engine.settings import Policy, new_run_id
from dworkers.engine.toolloop import cacheable
from dworkers.events import RunFinished, StepFinished
from dworkers.llm import LLMRequest
from dworkers.plans.base import PlanStep
from dworkers.ratelimit import serving_order
from dworkers.results import Row, RunResult, StepResult, StepStatus, digest_messages

STEP_CANCEL_WAIT = 10.0  # seconds in-flight calls get to wind down after an interruption


class PlanInstance:
    """The mutable state of one run of a plan (one row of a dataset), kept apart from the
    engine so an engine can run again. ``execute`` runs it; ``result`` holds what it came to,
    even when interrupted."""

    def __init__(self, policy: Policy, inputs: dict[str, str], pool: Pool, *,
                 emit: EventCallback | None = None,
                 reuse: Mapping[str, StepResult] | None = None,
                 cache: StepCache | None = None,
                 row: Row | None = None, priority: int = 0) -> None:
        self.policy = policy
        self.plan = policy.plan
        self.options = policy.options
        self.inputs = inputs
        self.pool = pool
        self.row = row
        self.row_key = row.key if row is not None else None
        self.priority = priority  # lower is served first: rows in the order they started
        self.reuse = row.reuse if row is not None else (reuse or {})
        self.cache = cache
        self.emit: EventCallback = emit or (lambda event: None)
        self.graph = self.plan.graph
        self.place = {sid: n for n, sid in enumerate(self.graph)}  # plan order, for the gate
        self.dependents: dict[str, list[str]] = {sid: [] for sid in self.graph}
        for sid, deps in self.graph.items():
            for dep in deps:
                self.dependents[dep].append(sid)
        self.waiting_on = {sid: set(deps) for sid, deps in self.graph.items()}
        self.decided: dict[str, StepResult] = {}
        self.outputs: dict[str, Any] = {}  # answers by step: a typed step's value, else text
        self.skipped_why: dict[str, str] = {}  # steps whose when: was false, and why
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.records = StepRecords(self.plan, policy)
        self.calls = StepCalls(policy, pool, self.records, self.emit, self.row_key,
                               lambda: self.stop_reason)
        self.asked: dict[str, str] = {}  # step → digest of the messages it was sent
        self.finished: asyncio.Queue[StepResult] = asyncio.Queue()
        self._stop_reason: str | None = None
        self.failed_fast = False
        self.interrupted = False
        self.work: deque[tuple[Callable[[Any], None], Any]] = deque()
        self.draining = False
        self.cancel_reason = "cancelled while running"
        self.result = RunResult(
            run_id=self.options.run_id or new_run_id(),
            plan=self.plan.name,
            tenant=policy.tenant.id,
            inputs=inputs,
            started_at=time.time(),
        )

    @property
    def stop_reason(self) -> str | None:
        """Why no new step starts: this run's fail-fast, or the budget every row shares."""
        return self._stop_reason or self.pool.stop_reason

    async def execute(self) -> RunResult:
        """Run every step. On cancellation every step is accounted for in ``result`` (and a
        ``RunFinished`` event, outside dataset runs) before ``CancelledError`` propagates."""
        t0 = time.monotonic()
        if self.row is None:
            self.emit(self.policy.describe(self.result.run_id, t0))
        try:
            for sid in self.graph:
                if not self.waiting_on[sid]:
                    self.launch(sid)
            while self.tasks:
                self.settle(await self.finished.get())
        except asyncio.CancelledError:
            # Nothing new starts while in-flight calls wind down: a success settled now must
            # not launch its dependents.
            self.interrupted = True
            try:
                await self.cancel_all("cancelled while running (run interrupted)")
            finally:  # even if a second Ctrl-C cuts the wait short, account for every step
                self.finish(t0, interrupted=True)
            raise
        except BaseException:  # an event consumer failed: leave no call running behind
            for task in self.tasks.values():
                task.cancel()
            raise
        self.finish(t0, interrupted=False)
        return self.result

    # Settling a result may start or skip its dependents, which settle in turn: the work goes
    # through a queue rather than recursion, so a 100,000-step chain cannot overflow the stack.

    def launch(self, sid: str) -> None:
        self.work.append((self._launch, sid))
        self._drain()

    def settle(self, result: StepResult) -> None:
        """Record a final result, then start or skip what depended on it."""
        self.work.append((self._settle, result))
        self._drain()

    def _drain(self) -> None:
        if self.draining:
            return
        self.draining = True
        try:
            while self.work:
                handle, item = self.work.popleft()
                handle(item)
        finally:
            self.draining = False

    def _launch(self, sid: str) -> None:
        if sid in self.decided or sid in self.tasks:
            return
        step = self.plan.get_step(sid)
        if step.when is not None and not self.interrupted:
            holds, why = self.condition_of(step)
            if not holds:
                skip = self.records.skipped(sid, why)
                self.work.append((self._settle, skip.model_copy(update={"condition_false": True})))
                return
        reused = typed_again(step, self.reuse.get(sid))
        if reused is not None and applies_again(self.policy, step, reused, self.inputs,
                                                self.outputs, self.skipped_why):
            self.work.append((self._settle, as_reused(reused)))
            return
        if self.stop_reason or self.interrupted:
            self.work.append((self._settle, self.not_started(step)))
            return
        held = self.held_at_gate(step)
        if held is not None:
            self.work.append((self._settle, held))
            return
        task = asyncio.create_task(self.guarded(step), name=f"step:{sid}")
        self.pool.step_started()
        task.add_done_callback(lambda done: self.never_started(done, step))
        self.tasks[sid] = task

    def condition_of(self, step: PlanStep) -> tuple[bool, str]:
        """Whether the step's ``when:`` holds over the inputs and the upstream answers (a
        skipped step absent), and the reason shown when it does not."""
        condition = step.when or ""
        values = {**self.inputs, **self.outputs}
        try:
            return conditions.evaluate(condition, values), conditions.explain(condition, values)
        except conditions.ConditionSyntaxError as exc:  # validated before the run; be safe
            return False, f"when: {condition!r} cannot be read: {exc}"

    def held_at_gate(self, step: PlanStep) -> StepResult | None:
        """A gate not approved: waiting for its decision, or rejected (never called)."""
        if step.approve is False:
            return None
        gates = self.options.gates or approvals.Gates()
        decision = gates.decision(self.row_key, step.step_id)
        if decision is None:
            question = approvals.question_of(step.approve, step.name)
            return self.records.ended(step, StepStatus.WAITING,
                                      approvals.waiting_reason(question))
        if decision.approved:
            return None
        return self.records.ended(step, StepStatus.REJECTED, decision.reason(step.step_id))

    def never_started(self, task: asyncio.Task[None], step: PlanStep) -> None:
        """A task cancelled before its first step ran never reaches ``guarded``'s handler:
        report it here, or the run would wait for it forever."""
        self.pool.step_ended()
        if task.cancelled():
            self.finished.put_nowait(self.not_started(step))

    def not_started(self, step: PlanStep) -> StepResult:
        """A step the run will not start: cancelled by an interruption, or skipped by a stop
        (budget spent, fail-fast)."""
        if self.interrupted or not self.stop_reason:
            return self.records.ended(step, StepStatus.CANCELLED,
                                      "cancelled before it started (run interrupted)")
        return self.records.skipped(step.step_id, self.stop_reason)

    async def guarded(self, step: PlanStep) -> None:
        try:
            result = await self.attempt_all(step)
        except asyncio.CancelledError:
            if self.records.attempts.get(step.step_id, 0) == 0:  # still waiting for a slot
                result = self.not_started(step)
            else:
                result = self.records.ended(step, StepStatus.CANCELLED, self.cancel_reason)
        except Exception as exc:  # a bug must not hang the run: fail this step visibly
            result = self.records.ended(step, StepStatus.FAILED, f"internal error: {exc!r}")
        self.finished.put_nowait(result)

    def _settle(self, result: StepResult) -> None:
        sid = result.step_id
        self.tasks.pop(sid, None)
        if sid in self.decided:
            return
        if sid in self.asked and result.messages_digest is None:
            result = result.model_copy(update={"messages_digest": self.asked[sid]})
        self.decided[sid] = result
        self.emit(StepFinished(result, time.monotonic(), self.row_key))
        if result.condition_false:
            self.skipped_why[sid] = result.error or "its when: condition was false"
        if result.settled_well:
            if result.succeeded:
                self.outputs[sid] = result.answer
            for child in self.dependents[sid]:
                self.waiting_on[child].discard(sid)
                if not self.waiting_on[child]:
                    self.work.append((self._launch, child))
            return
        if result.status is StepStatus.FAILED and self.options.fail_fast and not self.failed_fast:
            self.failed_fast = True
            self._stop_reason = f"stopped because {sid} failed (--fail-fast)"
            self.cancel_reason = self._stop_reason
            for task in self.tasks.values():
                task.cancel()
        status, reason = self.fate_below(result)
        for child in self.dependents[sid]:
            if child not in self.decided and child not in self.tasks:
                self.work.append((self._settle, self.records.ended_id(child, status, reason)))

    def fate_below(self, result: StepResult) -> tuple[StepStatus, str]:
        """What becomes of the steps below one that did not succeed, and why."""
        sid, status = result.step_id, result.status
        if status in (StepStatus.WAITING, StepStatus.REJECTED):
            # Held or rejected at a gate: its descendants share its fate, and say whose.
            if self.plan.get_step(sid).approve is False:  # itself below a gate
                return status, result.error or status.value
            return status, approvals.held_below(sid, result.error or "")
        if status is StepStatus.SKIPPED and result.error:
            return StepStatus.SKIPPED, result.error
        verb = {StepStatus.FAILED: "failed", StepStatus.SKIPPED: "was skipped",
                StepStatus.CANCELLED: "was cancelled"}[status]
        return StepStatus.SKIPPED, f"{sid} {verb}"

    async def cancel_all(self, reason: str) -> None:
        self.cancel_reason = reason
        for task in self.tasks.values():
            task.cancel()
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(STEP_CANCEL_WAIT):
                while self.tasks:
                    self.settle(await self.finished.get())

    def finish(self, t0: float, *, interrupted: bool) -> None:
        for sid in self.graph:  # anything left was interrupted or blocked by a stop
            if sid in self.decided:
                continue
            if sid in self.tasks:
                self.tasks[sid].cancel()
                result = self.records.ended_id(sid, StepStatus.CANCELLED, self.cancel_reason)
            elif interrupted:
                result = self.records.ended_id(sid, StepStatus.CANCELLED,
                                               "cancelled before it started (run interrupted)")
            else:
                result = self.records.skipped(sid, self.stop_reason or "not reached")
            self.settle(result)
        ordered = {step.step_id: self.decided[step.step_id] for step in self.plan.steps
                   if step.step_id in self.decided}
        self.result.outputs = ordered
        self.result.interrupted = interrupted
        self.result.success = not interrupted and all(  # a rejection is a decision
            r.settled_well or r.status is StepStatus.REJECTED for r in ordered.values())
        self.result.total_duration_ms = (time.monotonic() - t0) * 1000
        if self.row is None:
            self.emit(RunFinished(self.result, time.monotonic()))

    # --- one step -----------------------------------------------------------------------------

    async def attempt_all(self, step: PlanStep) -> StepResult:
        """Wait for a slot, then take the step from the cache or call for it."""
        async with self.pool.slots(step.worker_role, self.priority):
            if self.stop_reason:
                return self.records.skipped(step.step_id, self.stop_reason)
            policy = self.policy
            model = policy.model_for(step)
            messages = policy.messages_for(step, self.inputs, self.outputs, self.skipped_why)
            self.asked[step.step_id] = digest_messages(messages)
            key = cache_key(model, messages, policy.endpoint_for(model))
            if self.cache is not None and cacheable(policy, step):
                hit = typed_again(step, self.cache.lookup(key))
                if hit is not None:
                    now = time.time()
                    return as_reused(hit, step_id=step.step_id, cache_key=key,
                                     fingerprint=step.fingerprint(), started_at=now,
                                     finished_at=now)
            self.records.started[step.step_id] = (time.monotonic(), time.time())
            api_key_env = policy.tenant.api_key_env_for(model)
            api_key = (os.environ.get(api_key_env) or None) if api_key_env else None
            limit = policy.timeout_for(step)
            request = LLMRequest(model, messages, limit, step.step_id, step.worker_role.value,
                                 policy.api_base, api_key, total_timeout=limit,
                                 price=policy.price_for(model), stream=self.pool.stream,
                                 output_schema=step.answer_schema(),
                                 structured_mode=policy.tenant.structured_output_for(model))
            # The rate gate serves rows in the order they started, a row's steps in plan order.
            serving_order.set((self.priority, self.place[step.step_id]))
            return await self.calls.typed_attempts(step, request, key)
