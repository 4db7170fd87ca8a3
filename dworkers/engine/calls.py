"""The calls of one step: attempts, retries, waits for rate limits, and what each one cost.

An attempt holds its estimated cost against the budget before it starts (``dworkers.budget``),
waits its turn at the rate gate, then has ``timeout_seconds`` for the whole answer, streamed or
not. Timeouts, connection errors, 5xx and empty answers are retried with exponential backoff
and jitter; 429s wait as long as the endpoint asks, within the step's ``rate_limit_wait``.
Every attempt's tokens and cost count, failed ones included; the reservation is released
however the attempt ends, by an answer, an error, a cancellation or a bug.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dworkers import output_schema
from dworkers.budget import Hold
from dworkers.engine.pool import Pool
from dworkers.engine.settings import Policy, fmt_seconds
from dworkers.engine.toolloop import cacheable, converse
from dworkers.errors import LLMError, ProviderTimeoutError, RateLimitError, Usage
from dworkers.events import AttemptFinished, Event, StepProgress, StepRetrying, StepStarted
from dworkers.llm import Completion, LLMRequest, endpoint_of, estimate_tokens
from dworkers.plans.base import BasePlan, PlanStep
from dworkers.ratelimit import RateGate
from dworkers.results import StepResult, StepStatus, ToolCall

EventCallback = Callable[[Event], None]
Attempt = StepResult | LLMError
"""What one attempt at a step came to: its result when the model answered, else the error that
ended the attempt (with what it consumed); the retry loop decides whether another follows."""
PREVIEW_CHARS = 300
MAX_RATE_LIMITED_ATTEMPTS = 1000  # a bound on the loop even if every 429 asks for no wait


@dataclass
class FailedAttempts:
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


class StepRecords:
    """When each step of one plan instance started and how many attempts it made: what its
    ``StepResult`` reports however it ends."""

    def __init__(self, plan: BasePlan, policy: Policy) -> None:
        self.plan = plan
        self.policy = policy
        self.started: dict[str, tuple[float, float]] = {}  # monotonic, wall clock
        self.attempts: dict[str, int] = {}
        self.tool_calls: dict[str, list[ToolCall]] = {}  # every attempt's, failed ones too

    def ended(self, step: PlanStep, status: StepStatus, error: str | None,
              model: str | None = None) -> StepResult:
        return self.ended_id(step.step_id, status, error, model or self.policy.model_for(step))

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
            tool_calls=self.tool_calls.get(sid, []),
        )

    def skipped(self, sid: str, reason: str) -> StepResult:
        return self.ended_id(sid, StepStatus.SKIPPED, reason)


@dataclass
class _Progress:
    """What one attempt has sent and received so far: what it is billed if it ends early."""

    sent: bool = False
    pieces: list[str] = field(default_factory=list)

    def billed(self, request: LLMRequest,
               cost_of: Callable[[str, int, int], float | None]) -> Usage:
        """Estimated from the characters sent and received (nobody counted them)."""
        if not self.sent:
            return Usage()
        prompt = estimate_tokens("".join(m.get("content", "") for m in request.messages))
        answer = estimate_tokens("".join(self.pieces))
        return Usage(prompt, answer, cost_of(request.model, prompt, answer), True)


class StepCalls:
    """Calls the model for the steps of one plan instance (see the module docstring)."""

    def __init__(self, policy: Policy, pool: Pool, records: StepRecords, emit: EventCallback,
                 row_key: str | None, stop_reason: Callable[[], str | None]) -> None:
        self.policy = policy
        self.pool = pool
        self.records = records
        self.emit = emit
        self.row_key = row_key
        self.stop_reason = stop_reason  # why no new attempt starts (budget, fail-fast)

    def cost_of(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """What these tokens of ``model`` cost: by its known price or by what its endpoint
        reported a token costs lately, whichever is dearer (a gateway's word on the cost wins
        over a declared price), else ``None`` (not known yet)."""
        price = self.policy.known_price(model)
        rate = self.pool.estimator.usd_per_token(model)
        costs = [price.cost(prompt_tokens, completion_tokens)] if price is not None else []
        if rate is not None:
            costs.append(rate * (prompt_tokens + completion_tokens))
        return max(costs) if costs else None

    def expected_cost(self, step: PlanStep, model: str, prompt_chars: int) -> float | None:
        """What the next call of ``step`` is expected to cost: its estimated prompt and
        completion tokens, priced (``cost_of``)."""
        return self.cost_of(model, *self.pool.estimator.split(model, step.step_id, prompt_chars))

    async def attempts_of(self, step: PlanStep, request: LLMRequest, key: str) -> StepResult:
        """Attempt ``step`` until it succeeds or may not try again. Retryable failures (time-
        outs, 5xx, empty answers) are retried ``retries_for(step)`` times with backoff; 429s
        are waited out as the endpoint asks, within ``rate_limit_wait`` seconds per step.
        Every attempt's tokens and cost count, failed ones included."""
        policy, records, model = self.policy, self.records, request.model
        failures = rate_limits = 0
        waited_for_limits = 0.0
        spent = FailedAttempts()
        last_error: LLMError | None = None
        prompt_chars = sum(len(m.get("content", "")) for m in request.messages)
        while True:
            hold = await self.hold_for_attempt(step, model, prompt_chars)
            if isinstance(hold, str):
                if last_error is None:
                    return records.skipped(step.step_id, hold)
                return spent.add_to(records.ended(step, StepStatus.FAILED,
                                                  f"{last_error} (not retried: {hold})",
                                                  model=model))
            attempt = records.attempts[step.step_id] = records.attempts.get(step.step_id, 0) + 1
            self.emit(StepStarted(step.step_id, attempt, policy.shown_model(step),
                                  time.monotonic(),
                                  tuple(request.messages) if attempt == 1 else (),
                                  self.row_key))
            outcome = await self.paid_attempt(
                step, request, key, hold, max(0.0, policy.rate_limit_wait - waited_for_limits))
            if isinstance(outcome, StepResult):
                result = spent.add_to(outcome)
                if result.truncated and policy.truncation_fails:
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
            if isinstance(error, RateLimitError):
                rate_limits += 1
                allowed = max(0.0, policy.rate_limit_wait - waited_for_limits)
                asked = error.retry_after if error.retry_after and error.retry_after > 0 else None
                if allowed <= 0 or rate_limits > MAX_RATE_LIMITED_ATTEMPTS:
                    return spent.add_to(records.ended(step, StepStatus.FAILED, (
                        f"{error} — still rate limited after waiting "
                        f"{fmt_seconds(waited_for_limits)} "
                        "(limits.rate_limit_wait_seconds)"), model=model))
                if asked is not None and asked > allowed:
                    # Sitting out what is left would end in the same refusal: say so now.
                    return spent.add_to(records.ended(step, StepStatus.FAILED, (
                        f"{error} — asked to wait {fmt_seconds(asked)}, more than the "
                        f"{fmt_seconds(allowed)} limits.rate_limit_wait_seconds leaves this "
                        "step"), model=model))
                wait = asked if asked is not None else min(self.backoff(rate_limits), allowed)
                waited_for_limits += wait
            elif error.retryable and failures < policy.retries_for(step):
                failures += 1
                wait = min(self.backoff(failures), policy.options.max_retry_wait)
            else:
                return spent.add_to(records.ended(step, StepStatus.FAILED, str(error),
                                                  model=model))
            stop = self.stop_reason()
            if stop:  # the budget ran out or another step failed meanwhile
                return spent.add_to(records.ended(step, StepStatus.FAILED,
                                                  f"{error} (not retried: {stop})",
                                                  model=model))
            self.emit(StepRetrying(step.step_id, attempt, str(error), wait, self.row_key))
            await policy.options.sleep(wait)

    async def typed_attempts(self, step: PlanStep, request: LLMRequest,
                             key: str) -> StepResult:
        """``attempts_of``, then the answer checked against the step's ``output_schema``
        (``request.output_schema``). An answer that does not fit is shown back to the model
        with the exact errors, up to ``output_retries`` times; every re-ask counts in the
        attempts, tokens and cost. Then the step fails with the errors, and the answer is
        neither kept nor cached."""
        schema = request.output_schema
        result = await self.attempts_of(step, request, key)
        if schema is None:
            return result
        spent = FailedAttempts()  # answers that did not fit: paid for all the same
        reasks = 0
        while result.succeeded:
            value, errors = output_schema.validate_answer(result.output, schema)
            if not errors:
                return spent.add_to(result.model_copy(update={"value": value}))
            listed = "; ".join(error.render() for error in errors)
            if reasks >= step.output_retries:
                tried = f" after {reasks} re-ask{'s' * (reasks != 1)}" if reasks else ""
                return spent.add_to(result.model_copy(update={
                    "status": StepStatus.FAILED, "output": "", "value": None,
                    "cache_key": None,
                    "error": f"the answer does not match output_schema{tried}: {listed}"}))
            reasks += 1
            spent.count(Usage(result.prompt_tokens, result.completion_tokens,
                              result.cost_usd if result.cost_known else None, result.estimated))
            self.emit(StepRetrying(step.step_id, result.attempts,
                                   f"the answer does not match output_schema: {listed}", 0.0,
                                   self.row_key))
            request = dataclasses.replace(request, messages=[
                *request.messages, {"role": "assistant", "content": result.output},
                {"role": "user", "content": output_schema.reask_message(result.output, errors)}])
            result = await self.attempts_of(step, request, key)
        return spent.add_to(result)

    async def hold_for_attempt(self, step: PlanStep, model: str,
                               prompt_chars: int) -> Hold | str:
        """A hold on the budget for the next attempt, or why it may not start: the budget is
        spent (by this row or any other), or the run stopped while it waited for room."""
        pool = self.pool
        hold = await pool.reservations.hold(
            model, lambda: self.expected_cost(step, model, prompt_chars))
        if isinstance(hold, str):
            pool.stop_reason = pool.stop_reason or hold
            return hold
        stop = self.stop_reason()
        if stop:
            await pool.reservations.pay(hold, 0.0, answered=False)
            return stop
        return hold

    async def paid_attempt(self, step: PlanStep, request: LLMRequest, key: str, hold: Hold,
                           longest_pause: float) -> Attempt:
        """``one_attempt``, paid for: its cost counts against the budget and ``hold`` is
        released however the attempt ends (an answer, an error, a cancellation, a bug)."""
        pool = self.pool
        progress = _Progress()
        try:
            outcome = await self.one_attempt(step, request, key, longest_pause, progress)
        except BaseException:
            await pool.reservations.pay(
                hold, progress.billed(request, self.cost_of).cost_usd, answered=False)
            raise
        if isinstance(outcome, StepResult):
            cost = outcome.cost_usd if outcome.cost_known else None
        else:
            cost = outcome.usage.cost_usd if outcome.usage is not None else 0.0
        # Counted before the slot is released to a waiting step:
        refused = await pool.reservations.pay(hold, cost,
                                              answered=isinstance(outcome, StepResult))
        if refused and not pool.stop_reason:
            pool.stop_reason = refused
        return outcome

    async def one_attempt(self, step: PlanStep, request: LLMRequest, key: str,
                          longest_pause: float = math.inf,
                          progress: _Progress | None = None) -> Attempt:
        """One call. The rate gate is told how it went; after a 429 it holds the model's next
        calls for as long as asked, but never longer than this step will wait
        (``longest_pause``: what is left of the step's ``rate_limit_wait``)."""
        progress = progress or _Progress()
        tokens = 0
        tail = ""

        def on_delta(piece: str) -> None:
            nonlocal tokens, tail
            if not piece:
                return
            progress.pieces.append(piece)
            tokens += 1
            tail = (tail + piece)[-PREVIEW_CHARS:]
            self.emit(StepProgress(step.step_id, tokens, tail, self.row_key))

        pool, model = self.pool, request.model
        gate = None if self.policy.offline else pool.rate_gate
        prompt_chars = sum(len(m.get("content", "")) for m in request.messages)
        estimate = pool.estimator.estimate(model, step.step_id, prompt_chars)
        if gate is not None:
            await gate.acquire(model, estimate)
        pool.calls += 1
        progress.sent = True
        # One bound, on the whole attempt, streamed or not, starting when the call is sent
        # (not while it waited its turn at the gate): ``timeout_seconds`` means the same in a
        # terminal and in cron. No separate bound on silence: shorter than the step's limit it
        # would need a setting of its own, and as long it could never fire first.
        bound = asyncio.timeout(request.timeout)
        tool_calls = self.records.tool_calls.setdefault(step.step_id, [])

        def calling(what: str) -> None:
            self.emit(StepProgress(step.step_id, tokens, what, self.row_key))
        sent_at = time.monotonic()
        try:
            async with bound:
                completion = await converse(self.policy, pool, step, request, on_delta,
                                            calling, tool_calls)
        except TimeoutError:
            if progress.pieces:
                message = (f"timed out: the answer took longer than {request.timeout:g}s "
                           "(timeout_seconds)")
            else:
                message = f"timed out: no answer within {request.timeout:g}s"
            timed_out = ProviderTimeoutError(message,
                                             usage=progress.billed(request, self.cost_of))
            self.report_attempt(step, request, sent_at, timed_out)
            return timed_out
        except LLMError as exc:
            self.report_attempt(step, request, sent_at, exc)
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
        self.report_attempt(step, request, sent_at, completion)
        result = await self.answered(step, model, completion, key, gate, prompt_chars, estimate)
        return result if cacheable(self.policy, step) else result.model_copy(
            update={"cache_key": None})

    def report_attempt(self, step: PlanStep, request: LLMRequest, sent_at: float,
                       outcome: Completion | LLMError) -> None:
        """How one call went (``AttemptFinished``: a trace's ``chat`` span), answered or not.
        Tokens and cost are this attempt's own; the endpoint only as scheme, host and port."""
        call = AttemptFinished(
            step.step_id, self.records.attempts.get(step.step_id, 0), request.model,
            endpoint=endpoint_of(request.api_base) or None, started_at=sent_at,
            at=time.monotonic(), row=self.row_key)
        if isinstance(outcome, Completion):
            self.emit(dataclasses.replace(
                call, response_model=outcome.model, input_tokens=outcome.prompt_tokens,
                output_tokens=outcome.completion_tokens, finish_reason=outcome.finish_reason,
                cost_usd=outcome.cost_usd, status_code=200, answer=outcome.text))
            return
        usage = outcome.usage or Usage()
        self.emit(dataclasses.replace(
            call, input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
            cost_usd=usage.cost_usd, estimated=usage.estimated,
            error_type=type(outcome).__name__, error=str(outcome), status_code=outcome.status))

    async def answered(self, step: PlanStep, model: str, completion: Completion, key: str,
                       gate: RateGate | None, prompt_chars: int, estimate: int) -> StepResult:
        """The step's result from an answer to a call to ``model``; the gate and the estimates
        learn from it."""
        used = completion.prompt_tokens + completion.completion_tokens
        if gate is not None:
            await self.observe(gate, model, 200, completion.headers, used, estimate)
        self.pool.estimator.learn(model, step.step_id, prompt_chars, completion.prompt_tokens,
                                  completion.completion_tokens, completion.cost_usd)
        result = self.records.ended(step, StepStatus.SUCCEEDED, None, model=completion.model)
        return result.model_copy(update={
            "output": completion.text,
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "cost_usd": completion.cost_usd or 0.0,
            "cost_known": completion.cost_usd is not None,
            "truncated": completion.truncated,
            "cache_key": key,
        })

    async def observe(self, gate: RateGate, model: str, status: int,
                      headers: Mapping[str, str], tokens: int, estimate: int) -> None:
        """Tell the rate gate how a call went; the view hears when a model's limits change."""
        changed = await gate.observe(model, status, dict(headers), tokens, estimate)
        if changed is not None:
            self.emit(dataclasses.replace(changed, at=time.monotonic()))

    def backoff(self, failures: int) -> float:
        base = self.policy.options.retry_base_delay * 2.0 ** (failures - 1)
        return min(base, 30.0) * random.uniform(0.5, 1.0)
