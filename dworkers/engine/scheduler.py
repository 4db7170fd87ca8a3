"""The eager async DAG scheduler: ``Engine`` runs one plan for one tenant.

Every step starts the moment its own dependencies have succeeded (no level barriers), capped by
the run's concurrency and each role's ``max_concurrent_tasks``, on one event loop. An attempt
ends when the endpoint stays silent for the step's timeout or the whole answer takes longer than
the tenant's bound; timeouts, connection errors, 5xx and empty answers are retried with
exponential backoff and jitter; 429s wait as long as the endpoint asks, within a time limit per
step. A step that fails for good skips its descendants and leaves every independent branch
running. The engine never prints: it reports through events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import random
import secrets
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from dworkers import dag, prompts
from dworkers.endpoints import endpoint_for
from dworkers.engine.pool import Pool
from dworkers.errors import (
    InputError,
    LLMError,
    PreflightError,
    Problem,
    ProviderTimeoutError,
    RateLimitError,
    Usage,
    did_you_mean,
    suggestion,
)
from dworkers.events import (
    MOCK_MODEL,
    DatasetResult,
    Event,
    Row,
    RowResult,
    RunFinished,
    RunResult,
    RunStarted,
    StepFinished,
    StepInfo,
    StepProgress,
    StepResult,
    StepRetrying,
    StepStarted,
    StepStatus,
    digest_messages,
)
from dworkers.llm import (
    LLMClient,
    LLMRequest,
    Message,
    Price,
    estimate_tokens,
    knows_price,
)
from dworkers.plans.base import BasePlan, PlanStep
from dworkers.ratelimit import Budget, RateGate
from dworkers.tenants.config import TenantConfig, check_api_base, check_model_name
from dworkers.text import crop, one_line

EventCallback = Callable[[Event], None]
Attempt = StepResult | LLMError
"""What one attempt at a step came to: its result when the model answered, else the error that
ended the attempt (with what it consumed); the retry loop decides whether another follows."""
PREVIEW_CHARS = 300


class StepCache(Protocol):
    """Earlier successful results by cache key (see ``cache_key``)."""

    def lookup(self, key: str) -> StepResult | None: ...


@dataclass
class RunOptions:
    """Per-run settings; ``None`` means "use the tenant's"."""

    model: str | None = None
    api_base: str | None = None
    max_concurrency: int | None = None
    max_cost_usd: float | None = None
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


def cache_key(model: str, messages: list[Message], api_base: str | None = None) -> str:
    """What identifies an answer: the same model at the same endpoint asked the same thing."""
    payload = json.dumps({"model": model, "messages": messages, "api_base": api_base},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def as_reused(result: StepResult, **update: Any) -> StepResult:
    """An earlier answer given again without a call (resumed or cached): nothing is spent, and
    the result says so."""
    return result.model_copy(update={
        "cached": True, "cost_usd": 0.0, "cost_known": True, "estimated": False,
        "prompt_tokens": 0, "completion_tokens": 0, "attempts": 0, "duration_ms": 0.0,
        **update})


MAX_RATE_LIMITED_ATTEMPTS = 1000  # a bound on the loop even if every 429 asks for no wait


def fmt_seconds(seconds: float) -> str:
    """``90`` → "1m 30s", ``99999`` → "27h 46m 39s", ``0.25`` → "0.25s"."""
    if seconds < 60:
        return f"{seconds:.3g}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return " ".join(parts)


@dataclass
class _Spent:
    """What a step's failed attempts consumed, added to its final result."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cost_known: bool = True
    estimated: bool = False

    def count(self, usage: Usage) -> None:
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cost_usd += usage.cost_usd or 0.0
        used = usage.prompt_tokens + usage.completion_tokens
        self.cost_known = self.cost_known and (usage.cost_usd is not None or used == 0)
        self.estimated = self.estimated or usage.estimated

    def add_to(self, result: StepResult) -> StepResult:
        if not (self.prompt_tokens or self.completion_tokens or self.cost_usd
                or not self.cost_known):
            return result
        return result.model_copy(update={
            "prompt_tokens": result.prompt_tokens + self.prompt_tokens,
            "completion_tokens": result.completion_tokens + self.completion_tokens,
            "cost_usd": result.cost_usd + self.cost_usd,
            "cost_known": result.cost_known and self.cost_known,
            "estimated": result.estimated or self.estimated,
        })


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class Engine:
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
        self.plan = plan
        self.tenant = tenant
        self.client = client
        self.options = options or RunOptions()
        self.on_event = on_event
        self.reuse = dict(reuse or {})
        self.cache = cache
        self.rate_gate = rate_gate
        self.budget = budget
        self.result: RunResult | None = None  # the latest run's result, even if interrupted
        self.dataset_result: DatasetResult | None = None  # the latest dataset run's totals

    # --- what a run will do ------------------------------------------------------------------

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
        """How long the endpoint may stay silent during one attempt of ``step``."""
        return step.timeout_seconds or self.tenant.limits.timeout_seconds

    def answer_timeout_for(self, step: PlanStep) -> float:
        """The longest one whole answer to ``step`` may take (never less than its silence)."""
        return max(self.tenant.limits.answer_timeout_seconds, self.timeout_for(step))

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
        declared = self.tenant.price_for(model)
        if declared is None:
            return None
        return Price(declared.input_per_million, declared.output_per_million)

    def resolve_inputs(self, inputs: Mapping[str, object] | None) -> dict[str, str]:
        """Inputs with defaults applied; every missing or unknown name reported at once."""
        given = {str(k): str(v) for k, v in (inputs or {}).items()}
        required = self.plan.required_inputs()
        optional = self.plan.optional_inputs()
        known = [*required, *optional]
        problems = []
        missing = [name for name in required if name not in given]
        if missing:
            flags = " ".join(f'--input {name}="..."' for name in missing)
            described = []  # what each input is for, when the plan says
            for name in missing:
                spec = (self.plan.inputs or {}).get(name)
                about = crop(one_line(spec.description), 80) if spec is not None else ""
                described.append(f"{name} ({about})" if about else name)
            problems.append(Problem(f"missing input{'s' if len(missing) > 1 else ''}: "
                                    f"{', '.join(described)}", f"pass {flags}", "missing-input",
                                    file="--input"))
        # A plan that declares no inputs takes any: steps without a template are given them
        # all (the seed's ``engine.run(inputs={"brief": ...})``). Only a name that looks like a
        # typo of a missing one is reported there.
        declared = self.plan.inputs is not None
        for name in given:
            if name not in known and (declared or did_you_mean(name, missing)):
                guess = did_you_mean(name, known)
                hint = (suggestion(name, guess) if guess
                        else f"this plan takes: {', '.join(known) or 'no inputs'}")
                problems.append(Problem(f"unknown input {name!r}", hint, "unknown-input",
                                        file="--input"))
        if problems:
            raise InputError(problems)
        return {**optional, **given}

    def preflight(self) -> None:
        """Fail before any call if a model is not allowed or its key is not set."""
        # Every step, reused or not: a reused result applies only if the step would be asked
        # the same thing, and a changed model or input makes it call after all.
        models: dict[str, list[str]] = {}
        for step in self.plan.steps:
            models.setdefault(self.model_for(step), []).append(step.step_id)
        problems = []
        budget = self.max_cost_usd
        if budget is not None and not (math.isfinite(budget) and budget >= 0):
            problems.append(Problem(f"budget {budget!r} is not a number of dollars",
                                    "pass --max-cost 2.50, or leave it out for no budget",
                                    "invalid-budget", file="--max-cost"))
        allowed = ", ".join(self.tenant.security.allowed_models)
        for model, steps in models.items():
            if not self.tenant.allows(model):
                problems.append(Problem(
                    f"model {model!r} is not allowed for tenant {self.tenant.id!r} "
                    f"(allowed: {allowed}; used by: {', '.join(steps)})",
                    "choose an allowed model with --model, or extend security.allowed_models",
                    "model-not-allowed", file="tenant"))
        keyed = {model for model in models if self.tenant.api_key_env_for(model)}
        key_env = self.tenant.api_key_env
        if keyed and key_env and not os.environ.get(key_env):
            problems.append(Problem(
                f"tenant {self.tenant.id!r} reads its key from {key_env}, which is not set "
                f"(used by: {', '.join(sorted(keyed))})", f"export {key_env}=...",
                "missing-api-key", file="environment"))
        for name, value, check in (("--model", self.options.model, check_model_name),
                                   ("--api-base", self.options.api_base, check_api_base)):
            error = check(value) if value else None
            if error:
                problems.append(Problem(error, f"fix {name} (or its environment variable)",
                                        "invalid-option", file=name))
        problems += self.client.preflight(models, keyed)
        if budget is not None and budget > 0 and not self.offline:
            problems += self._unpriced(models, budget)
        if problems:
            raise PreflightError(problems)

    def _unpriced(self, models: Mapping[str, list[str]], budget: float) -> list[Problem]:
        """A budget cannot hold if a model's cost cannot be known: refuse rather than let it
        spend without counting."""
        problems = []
        for model, steps in models.items():
            if self.tenant.price_for(model) is not None or knows_price(self.client, model):
                continue
            problems.append(Problem(
                f"model {model!r} has no known price, so the budget of ${budget:g} cannot be "
                f"kept (used by: {', '.join(steps)})",
                f"declare its price in the tenant (prices: {{{model!r}: {{input_per_million: "
                "0.15, output_per_million: 0.6}}), or run without a budget (--max-cost, "
                "limits.max_cost_usd)", "unknown-price", file="tenant"))
        return problems

    def messages_for(
        self, step: PlanStep, inputs: Mapping[str, str], outputs: Mapping[str, str]
    ) -> list[Message]:
        deps = []
        for dep_id in step.depends_on:
            dep = self.plan.get_step(dep_id)
            if dep is not None:
                deps.append((dep, outputs.get(dep_id, "")))
        loose = {k: v for k, v in inputs.items() if k not in self.template_names}
        return prompts.messages(self.plan, step, self.tenant, inputs, deps, loose)

    @functools.cached_property
    def template_names(self) -> frozenset[str]:
        """Every input a template names (the plan does not change while its engine exists)."""
        return frozenset(self.plan.placeholders())

    def still_applies(self, step: PlanStep, reused: StepResult, inputs: Mapping[str, str],
                      outputs: Mapping[str, str]) -> bool:
        """Whether an earlier run's result answers ``step`` now: it succeeded and the step
        would be asked exactly the same thing (other inputs or upstream outputs run it again),
        whatever model or endpoint answered it. Made-up ``--mock`` answers only do offline."""
        if not reused.succeeded or (reused.model == MOCK_MODEL and not self.offline):
            return False
        asked = self.messages_for(step, inputs, outputs)
        if reused.messages_digest is None:  # an answer from before digests: the same call
            model = self.model_for(step)
            return reused.cache_key == cache_key(model, asked, self.endpoint_for(model))
        return reused.messages_digest == digest_messages(asked)

    def reused_steps(self, inputs: Mapping[str, str]) -> dict[str, bool]:
        """For each step, in plan order: whether a run would take it from ``reuse`` (True)
        or call for it. A step below one that is called counts as called (its answer could
        only be reused if the new upstream answer came out the same)."""
        graph = self.plan.graph
        outputs: dict[str, str] = {}
        for sid in dag.topological_order(graph):
            step, earlier = self.plan.get_step(sid), self.reuse.get(sid)
            if (step is not None and earlier is not None
                    and all(dep in outputs for dep in graph[sid])
                    and self.still_applies(step, earlier, inputs, outputs)):
                outputs[sid] = earlier.output
        return {sid: sid in outputs for sid in graph}

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

    # --- running ----------------------------------------------------------------------------

    async def run(self, inputs: Mapping[str, object] | None = None) -> RunResult:
        """Run the plan. On cancellation every step is accounted for in ``self.result`` and a
        ``RunFinished`` event before ``CancelledError`` propagates."""
        values = self.resolve_inputs(inputs)
        self.preflight()
        return await _Run(self, values, self.pool(stream=self.options.stream, probe=False)
                          ).execute()

    def run_many(
        self,
        rows: Iterable[Row | Mapping[str, object]] | AsyncIterable[Row | Mapping[str, object]],
        *,
        max_failures: int | None = None,
    ) -> AsyncIterator[RowResult]:
        """Run the plan once per row, all rows sharing the run's slots, rate limits and
        budget; yields each row's result as it finishes. See ``dworkers.engine.rows``."""
        from dworkers.engine.rows import run_rows

        return run_rows(self, rows, max_failures=max_failures)

    def pool(self, *, stream: bool, probe: bool) -> Pool:
        """The capacity one run (all its rows) shares."""
        return Pool(
            self.tenant, self.max_concurrency,
            rate_gate=self.rate_gate, budget=self.budget, max_cost_usd=self.max_cost_usd,
            stated_limits=self.stated_limits(), probe=probe, stream=stream,
        )

    def stated_limits(self) -> dict[str, tuple[float | None, float | None]]:
        """Model → (rpm, tpm) the tenant states for the models this plan calls."""
        stated = {}
        for step in self.plan.steps:
            model = self.model_for(step)
            limits = self.tenant.rate_limits_for(model)
            if limits != (None, None):
                stated[model] = limits
        return stated


class _Run:
    """The mutable state of one run, kept out of ``Engine`` so an engine can run again."""

    def __init__(self, engine: Engine, inputs: dict[str, str], pool: Pool,
                 row: Row | None = None, priority: int = 0) -> None:
        self.engine = engine
        self.plan = engine.plan
        self.options = engine.options
        self.inputs = inputs
        self.pool = pool
        self.row = row
        self.row_key = row.key if row is not None else None
        self.priority = priority  # lower is served first: rows in the order they started
        self.reuse = row.reuse if row is not None else engine.reuse
        self.emit: EventCallback = engine.on_event or (lambda event: None)
        self.graph = self.plan.graph
        self.dependents: dict[str, list[str]] = {sid: [] for sid in self.graph}
        for sid, deps in self.graph.items():
            for dep in deps:
                self.dependents[dep].append(sid)
        self.waiting_on = {sid: set(deps) for sid, deps in self.graph.items()}
        self.decided: dict[str, StepResult] = {}
        self.outputs: dict[str, str] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.started: dict[str, tuple[float, float]] = {}  # monotonic, wall clock
        self.attempts: dict[str, int] = {}
        self.asked: dict[str, str] = {}  # step → digest of the messages it was sent
        self.finished: asyncio.Queue[StepResult] = asyncio.Queue()
        self._stop_reason: str | None = None
        self.failed_fast = False
        self.interrupted = False
        self.work: deque[tuple[Callable[[Any], None], Any]] = deque()
        self.draining = False
        if engine.max_cost_usd is not None and engine.max_cost_usd == 0:
            pool.stop_reason = "budget of $0 allows no calls"
        self.result = RunResult(
            run_id=self.options.run_id or new_run_id(),
            plan=self.plan.name,
            tenant=engine.tenant.id,
            inputs=inputs,
            started_at=time.time(),
        )
        if row is None:
            engine.result = self.result

    @property
    def stop_reason(self) -> str | None:
        """Why no new step starts: this run's fail-fast, or the budget every row shares."""
        return self._stop_reason or self.pool.stop_reason

    async def execute(self) -> RunResult:
        t0 = time.monotonic()
        if self.row is None:
            self.emit(self.engine.describe(self.result.run_id, t0))
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
        assert step is not None
        reused = self.reuse.get(sid)
        if reused is not None and self.engine.still_applies(step, reused, self.inputs,
                                                            self.outputs):
            self.work.append((self._settle, as_reused(reused)))
            return
        if self.stop_reason or self.interrupted:
            self.work.append((self._settle, self.not_started(step)))
            return
        task = asyncio.create_task(self.guarded(step), name=f"step:{sid}")
        self.pool.step_started()
        task.add_done_callback(lambda done: self.never_started(done, step))
        self.tasks[sid] = task

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
            return self.ended(step, StepStatus.CANCELLED,
                              "cancelled before it started (run interrupted)")
        return self.skipped(step.step_id, self.stop_reason)

    async def guarded(self, step: PlanStep) -> None:
        try:
            result = await self.attempt_all(step)
        except asyncio.CancelledError:
            if self.attempts.get(step.step_id, 0) == 0:  # still waiting for a slot
                result = self.not_started(step)
            else:
                result = self.ended(step, StepStatus.CANCELLED, self.cancel_reason)
        except Exception as exc:  # a bug must not hang the run: fail this step visibly
            result = self.ended(step, StepStatus.FAILED, f"internal error: {exc!r}")
        self.finished.put_nowait(result)

    cancel_reason = "cancelled while running"

    def _settle(self, result: StepResult) -> None:
        sid = result.step_id
        self.tasks.pop(sid, None)
        if sid in self.decided:
            return
        if sid in self.asked and result.messages_digest is None:
            result = result.model_copy(update={"messages_digest": self.asked[sid]})
        self.decided[sid] = result
        self.emit(StepFinished(result, time.monotonic(), self.row_key))
        if result.succeeded:
            self.outputs[sid] = result.output
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
        verb = {StepStatus.FAILED: "failed", StepStatus.SKIPPED: "was skipped",
                StepStatus.CANCELLED: "was cancelled"}[result.status]
        reason = result.error if result.status is StepStatus.SKIPPED else f"{sid} {verb}"
        for child in self.dependents[sid]:
            if child not in self.decided and child not in self.tasks:
                self.work.append((self._settle, self.skipped(child, reason or f"{sid} {verb}")))

    async def cancel_all(self, reason: str) -> None:
        self.cancel_reason = reason
        for task in self.tasks.values():
            task.cancel()
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(10):
                while self.tasks:
                    self.settle(await self.finished.get())

    def finish(self, t0: float, *, interrupted: bool) -> None:
        for sid in self.graph:  # anything left was interrupted or blocked by a stop
            if sid in self.decided:
                continue
            if sid in self.tasks:
                self.tasks[sid].cancel()
                result = self.ended_id(sid, StepStatus.CANCELLED, self.cancel_reason)
            elif interrupted:
                result = self.ended_id(sid, StepStatus.CANCELLED,
                                       "cancelled before it started (run interrupted)")
            else:
                result = self.skipped(sid, self.stop_reason or "not reached")
            self.settle(result)
        ordered = {step.step_id: self.decided[step.step_id] for step in self.plan.steps
                   if step.step_id in self.decided}
        self.result.outputs = ordered
        self.result.interrupted = interrupted
        self.result.success = not interrupted and all(r.succeeded for r in ordered.values())
        self.result.total_duration_ms = (time.monotonic() - t0) * 1000
        if self.row is None:
            self.emit(RunFinished(self.result, time.monotonic()))

    # --- one step -----------------------------------------------------------------------------

    async def attempt_all(self, step: PlanStep) -> StepResult:
        async with self.pool.slots(step.worker_role, self.priority):
            if self.stop_reason:
                return self.skipped(step.step_id, self.stop_reason)
            engine = self.engine
            model = engine.model_for(step)
            messages = engine.messages_for(step, self.inputs, self.outputs)
            self.asked[step.step_id] = digest_messages(messages)
            key = cache_key(model, messages, engine.endpoint_for(model))
            if engine.cache is not None:
                hit = engine.cache.lookup(key)
                if hit is not None:
                    now = time.time()
                    return as_reused(hit, step_id=step.step_id, cache_key=key,
                                     fingerprint=step.fingerprint(), started_at=now,
                                     finished_at=now)
            self.started[step.step_id] = (time.monotonic(), time.time())
            api_key_env = engine.tenant.api_key_env_for(model)
            api_key = (os.environ.get(api_key_env) or None) if api_key_env else None
            request = LLMRequest(model, messages, engine.timeout_for(step), step.step_id,
                                 step.worker_role.value, engine.api_base, api_key,
                                 total_timeout=engine.answer_timeout_for(step),
                                 price=engine.price_for(model), stream=self.pool.stream)
            return await self.attempts_of(step, request, key)

    async def attempts_of(self, step: PlanStep, request: LLMRequest, key: str) -> StepResult:
        """Attempt ``step`` until it succeeds or may not try again. Retryable failures (time-
        outs, 5xx, empty answers) are retried ``retries_for(step)`` times with backoff; 429s
        are waited out as the endpoint asks, within ``rate_limit_wait`` seconds per step.
        Every attempt's tokens and cost count, failed ones included."""
        engine, model = self.engine, request.model
        failures = rate_limits = 0
        waited_for_limits = 0.0
        spent = _Spent()
        last_error: LLMError | None = None
        while True:
            expected_cost = self.pool.estimator.cost(model, step.step_id)
            refused = await self.pool.budget.reserve(expected_cost)
            if refused:  # the budget is spent (by this row or any other)
                self.pool.stop_reason = self.pool.stop_reason or refused
                if last_error is None:
                    return self.skipped(step.step_id, refused)
                return spent.add_to(self.ended(step, StepStatus.FAILED,
                                               f"{last_error} (not retried: {refused})",
                                               model=model))
            attempt = self.attempts[step.step_id] = self.attempts.get(step.step_id, 0) + 1
            self.emit(StepStarted(step.step_id, attempt, engine.shown_model(step),
                                  time.monotonic(),
                                  tuple(request.messages) if attempt == 1 else (),
                                  self.row_key))
            outcome = await self.one_attempt(
                step, request, key, max(0.0, engine.rate_limit_wait - waited_for_limits))
            # Counted before the slot is released to a waiting step:
            cost = (outcome.cost_usd if isinstance(outcome, StepResult)
                    else (outcome.usage.cost_usd or 0.0) if outcome.usage is not None else 0.0)
            await self.spend(cost, reserved=expected_cost)
            if isinstance(outcome, StepResult):
                result = spent.add_to(outcome)
                if result.truncated and engine.truncation_fails:
                    return result.model_copy(update={
                        "status": StepStatus.FAILED, "output": "", "cache_key": None,
                        "error": "the answer was cut off at the model's token limit "
                                 "(finish_reason 'length') — shorten the task, or set "
                                 "on_truncation: keep (plan) or limits.on_truncation: keep "
                                 "(tenant)"})
                return result
            error = last_error = outcome
            if error.usage is not None:
                spent.count(error.usage)
            note = ""
            if isinstance(error, RateLimitError):
                rate_limits += 1
                allowed = max(0.0, engine.rate_limit_wait - waited_for_limits)
                if allowed <= 0 or rate_limits > MAX_RATE_LIMITED_ATTEMPTS:
                    return spent.add_to(self.ended(step, StepStatus.FAILED, (
                        f"{error} — still rate limited after waiting "
                        f"{fmt_seconds(waited_for_limits)} "
                        "(limits.rate_limit_wait_seconds)"), model=model))
                asked = error.retry_after
                wait = asked if asked is not None and asked > 0 else self.backoff(rate_limits)
                if wait > allowed:
                    if asked is not None and asked > 0:
                        note = (f" (asked to wait {fmt_seconds(asked)}; waiting "
                                f"{fmt_seconds(allowed)}, all that is left of "
                                "limits.rate_limit_wait_seconds)")
                    wait = allowed
                waited_for_limits += wait
            elif error.retryable and failures < engine.retries_for(step):
                failures += 1
                wait = min(self.backoff(failures), self.options.max_retry_wait)
            else:
                return spent.add_to(self.ended(step, StepStatus.FAILED, str(error),
                                               model=model))
            if self.stop_reason:  # the budget ran out or another step failed meanwhile
                return spent.add_to(self.ended(step, StepStatus.FAILED,
                                               f"{error} (not retried: {self.stop_reason})",
                                               model=model))
            self.emit(StepRetrying(step.step_id, attempt, f"{error}{note}", wait, self.row_key))
            await self.options.sleep(wait)

    async def one_attempt(
        self, step: PlanStep, request: LLMRequest, key: str, longest_pause: float = math.inf
    ) -> Attempt:
        """One call. The rate gate is told how it went; after a 429 it holds the model's next
        calls for as long as asked, but never longer than this step will wait
        (``longest_pause``: what is left of the step's ``rate_limit_wait``)."""
        tokens = 0
        tail = ""
        received: list[str] = []
        loop = asyncio.get_running_loop()
        # Clients time out by themselves (and say what the attempt consumed); these bounds,
        # a little later, hold for clients that do not.
        silence = request.timeout * 1.1 + 0.05
        total = (request.total_timeout or request.timeout) * 1.1 + 0.05

        def on_delta(piece: str) -> None:
            nonlocal tokens, tail
            quiet.reschedule(loop.time() + silence)
            if not piece:
                return
            received.append(piece)
            tokens += 1
            tail = (tail + piece)[-PREVIEW_CHARS:]
            self.emit(StepProgress(step.step_id, tokens, tail, self.row_key))

        pool, model = self.pool, request.model
        gate = None if self.engine.offline else pool.rate_gate
        prompt_chars = sum(len(m.get("content", "")) for m in request.messages)
        estimate = pool.estimator.estimate(model, step.step_id, prompt_chars)
        if gate is not None:
            await gate.acquire(model, estimate)
        pool.calls += 1
        # The bounds start when the call is sent, not while it waited its turn at the gate.
        whole = asyncio.timeout(total)
        quiet = asyncio.timeout(silence)
        try:
            async with whole, quiet:
                completion = await self.engine.client.complete(request, on_delta)
        except TimeoutError:
            text = "".join(received)
            sent = "".join(m.get("content", "") for m in request.messages)
            prompt, answer = estimate_tokens(sent), estimate_tokens(text)
            price = request.price
            cost = price.cost(prompt, answer) if price is not None else None
            if whole.expired():
                message = ("timed out: the answer took longer than "
                           f"{request.total_timeout or 0:g}s in all")
            elif received:
                message = f"timed out: the answer stalled, nothing for {request.timeout:g}s"
            else:
                message = f"timed out: no answer within {request.timeout:g}s"
            return ProviderTimeoutError(message, usage=Usage(prompt, answer, cost, True))
        except LLMError as exc:
            status = 429 if isinstance(exc, RateLimitError) else exc.status or 0
            pool.rate_limited += status == 429
            if gate is not None:
                headers = dict(exc.headers)
                if status == 429:
                    asked = exc.retry_after
                    for name in ("retry-after", "retry-after-ms"):
                        headers.pop(name, None)
                    if asked is not None:
                        pause = min(asked, longest_pause)
                        headers["retry-after-ms"] = f"{pause * 1000:.0f}"
                await self.observe(gate, model, status, headers, 0, estimate)
            return exc
        used = completion.prompt_tokens + completion.completion_tokens
        if gate is not None:
            await self.observe(gate, model, 200, completion.headers, used, estimate)
        pool.estimator.learn(model, step.step_id, prompt_chars, completion.prompt_tokens,
                             completion.completion_tokens, completion.cost_usd or 0.0)
        result = self.ended(step, StepStatus.SUCCEEDED, None, model=completion.model)
        return result.model_copy(update={
            "output": completion.text,
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "cost_usd": completion.cost_usd or 0.0,
            "cost_known": completion.cost_usd is not None,
            "truncated": completion.truncated,
            "cache_key": key,
        })

    async def spend(self, cost: float, *, reserved: float) -> None:
        """Count an attempt's cost against the budget every row shares; once it is spent, no
        new step starts anywhere in the run."""
        refused = await self.pool.budget.commit(reserved, cost)
        if refused and not self.pool.stop_reason:
            self.pool.stop_reason = refused

    async def observe(self, gate: RateGate, model: str, status: int,
                      headers: Mapping[str, str], tokens: int, estimate: int) -> None:
        """Tell the rate gate how a call went; the view hears when a model's limits change."""
        changed = await gate.observe(model, status, dict(headers), tokens, estimate)
        if changed is not None:
            self.emit(dataclasses.replace(changed, at=time.monotonic()))

    def backoff(self, failures: int) -> float:
        base = self.options.retry_base_delay * 2.0 ** (failures - 1)
        return min(base, 30.0) * random.uniform(0.5, 1.0)

    def ended(self, step: PlanStep, status: StepStatus, error: str | None,
              model: str | None = None) -> StepResult:
        return self.ended_id(step.step_id, status, error, model or self.engine.model_for(step))

    def ended_id(self, sid: str, status: StepStatus, error: str | None,
                 model: str | None = None) -> StepResult:
        mono, wall = self.started.get(sid, (None, None))
        step = self.plan.get_step(sid)
        return StepResult(
            step_id=sid,
            status=status,
            error=error,
            attempts=self.attempts.get(sid, 0),
            duration_ms=(time.monotonic() - mono) * 1000 if mono is not None else 0.0,
            model=model,
            started_at=wall,
            finished_at=time.time() if wall is not None else None,
            fingerprint=step.fingerprint() if step else None,
        )

    def skipped(self, sid: str, reason: str) -> StepResult:
        return self.ended_id(sid, StepStatus.SKIPPED, reason)
