"""Budgets that hold: every call reserves its estimated cost before it starts.

Runs talk HTTP to the local server through litellm; overlap is read from the server's own
timestamps. Prices are declared in the tenant (``prices:``) so a reservation's size is known:
prompt tokens free, $0.001 a completion token, so a step's first call reserves
256 × $0.001 = $0.256 (the answer length assumed before one was seen).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from support import FakeLLMServer, invoke, llm_server, make_plan, make_tenant, marker

from dworkers.budget import LocalBudget, Reservations
from dworkers.engine import Engine, PlanBuilder, RunOptions
from dworkers.estimates import DEFAULT_OUTPUT_TOKENS, TokenEstimator
from dworkers.llm import Completion, LLMRequest
from dworkers.results import RowResult, RowStatus, RunResult, StepStatus
from dworkers.tenants.config import ModelPrice, TenantConfig

__all__ = ["llm_server"]

FIRST_CALL = DEFAULT_OUTPUT_TOKENS / 1000  # $0.256: what a step's first call reserves


def priced_tenant(budget: float | None, *, max_concurrency: int = 2) -> TenantConfig:
    tenant = make_tenant(max_cost_usd=budget, max_concurrency=max_concurrency)
    tenant.prices = {"openai/test-model": ModelPrice(input_per_million=0,
                                                     output_per_million=1000)}
    return tenant


def run(server: FakeLLMServer, graph: dict[str, list[str]], tenant: TenantConfig,
        options: RunOptions | None = None) -> RunResult:
    engine = PlanBuilder(make_plan(graph), tenant, api_base=server.url,
                         options=options or RunOptions()).build()
    return asyncio.run(engine.run())


def overlapped(server: FakeLLMServer) -> bool:
    first, second = sorted(server.requests, key=lambda r: r.started)
    assert first.finished is not None
    return second.started < first.finished


def test_two_steps_starting_together_never_hold_more_than_the_budget(
    llm_server: FakeLLMServer,
) -> None:
    # $0.4 holds one first call ($0.256), not two: the second waits for the first to be paid
    # (it cost $0.012 or so), then fits.
    llm_server.latency = 0.3
    result = run(llm_server, {"a": [], "b": []}, priced_tenant(0.4))

    assert result.success and len(llm_server.requests) == 2
    assert not overlapped(llm_server)
    assert result.cost_usd <= 0.4


def test_the_budget_stops_new_calls_once_what_is_spent_leaves_no_room(
    llm_server: FakeLLMServer,
) -> None:
    llm_server.add_rule(usage_cost=0.3)  # the gateway's word on each call's cost
    result = run(llm_server, {"a": [], "b": []}, priced_tenant(0.4))

    statuses = sorted(step.status for step in result.outputs.values())
    assert statuses == [StepStatus.SKIPPED, StepStatus.SUCCEEDED]
    [skipped] = [s for s in result.outputs.values() if s.status is StepStatus.SKIPPED]
    error = skipped.error or ""
    # The gateway's word ($0.30 for a short answer) prices the next call above the tenant's.
    assert error.startswith("budget of $0.4 would be passed: the next call may cost $0.")
    assert "and $0.1000 is left ($0.3000 spent) — raise it to at least $0." in error
    assert len(llm_server.requests) == 1 and result.cost_usd == pytest.approx(0.3)


def test_a_dataset_makes_only_the_calls_its_budget_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every answer is 250 tokens: $0.25 a call. $0.8 holds three calls, and three are made,
    # however many rows could start at once.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    with FakeLLMServer(reply_tokens=250, latency=0.2) as server:
        plan = make_plan({"a": []}, prompt_template="Handle {item}")
        engine = PlanBuilder(plan, priced_tenant(0.8, max_concurrency=6),
                             api_base=server.url).build()

        async def collect() -> list[RowResult]:
            rows = [{"item": f"item-{i}"} for i in range(10)]
            return [result async for result in engine.run_many(rows)]

        results = asyncio.run(collect())
        requests = server.requests

    assert len(requests) == 3
    assert sum(r.succeeded for r in results) == 3
    assert sum(r.cost_usd for r in results) == pytest.approx(0.75)
    skipped = [r for r in results if r.status is RowStatus.SKIPPED]
    assert len(skipped) == 7 and all("budget of $0.8 would be passed" in (r.error or "")
                                     for r in skipped)


def test_a_call_whose_estimate_alone_passes_the_budget_never_starts(
    llm_server: FakeLLMServer,
) -> None:
    # Prompt tokens are free here: only the expected answer makes the estimate pass $0.2.
    result = run(llm_server, {"a": []}, priced_tenant(0.2))

    assert result.outputs["a"].status is StepStatus.SKIPPED
    # Nothing was spent: the message says the budget is too small, not that it was reached.
    assert result.outputs["a"].error == (
        "budget of $0.2 is too small: the next call may cost $0.2560 and nothing is spent yet "
        "— raise it to at least $0.2560 (--max-cost, limits.max_cost_usd)")
    assert llm_server.requests == []


@pytest.mark.parametrize(("before", "error"), [
    (0.3, "budget of $0.4 would be passed: the next call may cost $0.2560 and $0.1000 is left "
          "($0.3000 spent) — raise it to at least $0.5560 (--max-cost, limits.max_cost_usd)"),
    (0.5, "budget of $0.4 reached ($0.5000 spent)"),
])
def test_a_resumed_run_counts_what_it_spent_before(
    llm_server: FakeLLMServer, before: float, error: str,
) -> None:
    result = run(llm_server, {"a": []}, priced_tenant(0.4),
                 RunOptions(spent_before_usd=before))

    assert result.outputs["a"].status is StepStatus.SKIPPED
    assert result.outputs["a"].error == error
    assert llm_server.requests == []


def test_a_model_priced_only_by_its_endpoint_goes_alone_once_then_in_parallel(
    llm_server: FakeLLMServer,
) -> None:
    # litellm has no price for openai/test-model and the tenant declares none: the gateway's
    # reported cost prices the calls after the first.
    llm_server.latency = 0.5
    llm_server.add_rule(usage_cost=0.001)
    tenant = make_tenant(max_cost_usd=1.0, max_concurrency=3)
    result = run(llm_server, {"a": [], "b": [], "c": []}, tenant)

    assert result.success and result.cost_known
    assert result.cost_usd == pytest.approx(0.003)
    first, second, third = sorted(llm_server.requests, key=lambda r: r.started)
    assert first.finished is not None and second.finished is not None
    assert second.started >= first.finished and third.started >= first.finished
    assert third.started < second.finished  # the rest ran side by side


def test_resuming_a_run_again_counts_what_its_other_resumes_spent(
    llm_server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every answer is 200 words: $0.2 a call; a step's first call reserves $0.256. $0.6 holds
    # the first run's a ($0.2) and the second run's b ($0.2), not a third call after them.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plan.yaml").write_text(
        "name: two\ndescription: two steps\nsteps:\n"
        "  - {step_id: a, name: A, prompt_template: 'Start'}\n"
        "  - {step_id: b, name: B, depends_on: [a], prompt_template: 'Go on'}\n")
    (tmp_path / "priced.yaml").write_text(
        "id: priced\nprices:\n  openai/test-model: {input_per_million: 0, "
        "output_per_million: 1000}\n")
    llm_server.reply_tokens = 200
    llm_server.add_rule(marker("b"), status=400, error_message="refused once", times=1)
    common = ("--model", "openai/test-model", "--api-base", llm_server.url, "--tenant",
              "priced.yaml", "--out", "runs", "--json")
    code, stdout, stderr = invoke("run", "plan.yaml", "--max-cost", "0.6", *common)
    assert code == 1, stderr
    original = json.loads(stdout)["run_id"]
    code, _, stderr = invoke("run", "--resume", original, *common)  # b succeeds: $0.4 in all
    assert code == 0 and len(llm_server.requests) == 3, stderr

    # Resumed again from the original run, whose b failed (not from the cache, which holds the
    # second run's b): what the other resume spent counts.
    code, stdout, stderr = invoke("run", "--resume", original, "--no-cache", *common)
    assert code == 1 and len(llm_server.requests) == 3, stderr
    error = json.loads(stdout)["outputs"]["b"]["error"]
    assert error.startswith("budget of $0.6 would be passed: the next call may cost $0.2560 "
                            "and $0.2000 is left ($0.4000 spent)"), error


def test_a_model_nobody_can_price_stops_a_budgeted_run_after_one_call(
    llm_server: FakeLLMServer,
) -> None:
    tenant = make_tenant(max_cost_usd=1.0, max_concurrency=2)
    result = run(llm_server, {"a": [], "b": []}, tenant)

    assert len(llm_server.requests) == 1
    ran, refused = sorted(result.outputs.values(), key=lambda s: s.status != "succeeded")
    assert ran.succeeded and not ran.cost_known
    assert refused.status is StepStatus.SKIPPED
    error = refused.error or ""
    assert error.startswith("model 'openai/test-model' has no known price and its endpoint "
                            "reports no cost, so the budget of $1 cannot be kept")
    # The shape of a prices: entry, with placeholders no one could take for a real price.
    assert ("prices: {'openai/test-model': {input_per_million: X.XX, output_per_million: "
            "Y.YY}}") in error
    assert "--max-cost" in error


class _Broken:
    """A client whose call raises something other than a provider error, or never ends; it
    notes what the budget held while the call was out."""

    offline = False

    def __init__(self, budget: LocalBudget, *, hang: bool) -> None:
        self.budget = budget
        self.hang = hang
        self.held_during_call: float | None = None
        self.called = asyncio.Event()

    async def complete(self, request: LLMRequest, on_delta: object) -> Completion:
        self.held_during_call = self.budget.reserved
        self.called.set()
        if self.hang:
            await asyncio.Event().wait()
        raise RuntimeError("a bug in the client")

    def preflight(self, models: object, keyed: object) -> list[object]:
        return []


def broken_engine(*, hang: bool) -> tuple[Engine, _Broken, LocalBudget]:
    budget = LocalBudget(0.4)
    client = _Broken(budget, hang=hang)
    engine = PlanBuilder(make_plan({"a": []}), priced_tenant(0.4), client=client).build()
    engine.budget = budget
    return engine, client, budget


def test_a_reservation_is_released_when_the_call_raises_something_unexpected() -> None:
    engine, client, budget = broken_engine(hang=False)
    result = asyncio.run(engine.run())

    assert result.outputs["a"].status is StepStatus.FAILED
    assert "internal error" in (result.outputs["a"].error or "")
    assert client.held_during_call == pytest.approx(FIRST_CALL)
    assert budget.reserved == 0


def test_a_reservation_is_released_when_the_call_is_cancelled() -> None:
    engine, client, budget = broken_engine(hang=True)

    async def scenario() -> None:
        task = asyncio.create_task(engine.run())
        await client.called.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert engine.result is not None and engine.result.interrupted
    assert client.held_during_call == pytest.approx(FIRST_CALL)
    assert budget.reserved == 0


def test_the_budget_refuses_calls_once_spent_or_held_by_calls_in_flight() -> None:
    async def scenario() -> list[str | None]:
        budget = LocalBudget(1.0)
        seen = [await budget.reserve(0.4), await budget.reserve(0.4)]
        seen.append(await budget.reserve(0.4))  # 0.8 held: a third would overrun
        seen.append(await budget.commit(0.4, 0.45))
        seen.append(await budget.commit(0.4, 0.6))  # spent 1.05
        seen.append(await budget.reserve(0.0))
        return seen

    first, second, third, under, over, after = asyncio.run(scenario())
    assert first is None and second is None and under is None
    assert third == ("budget of $1 would be passed: the next call may cost $0.4000 and $0.2000 "
                     "is left ($0.0000 spent, $0.8000 held by calls under way) — raise it to "
                     "at least $1.2000 (--max-cost, limits.max_cost_usd)")
    assert over == after == "budget of $1 reached ($1.0500 spent)"
    assert asyncio.run(LocalBudget(0).reserve(0)) == "budget of $0 allows no calls"
    assert asyncio.run(LocalBudget(None).reserve(1e9)) is None


def test_a_budget_of_exactly_n_calls_allows_the_nth() -> None:
    # $0.15 at $0.05 a call is three calls, though 0.1 + 0.05 > 0.15 in floating point.
    async def scenario() -> list[str | None]:
        budget = LocalBudget(0.15)
        seen = []
        for _ in range(4):
            refused = await budget.reserve(0.05)
            seen.append(refused)
            if refused is None:
                await budget.commit(0.05, 0.05)
        return seen

    assert asyncio.run(scenario())[:3] == [None, None, None]
    assert asyncio.run(scenario())[3] == "budget of $0.15 reached ($0.1500 spent)"


def test_a_call_that_does_not_fit_waits_for_the_calls_under_way_to_be_paid() -> None:
    async def scenario() -> list[object]:
        reservations = Reservations(LocalBudget(1.0), 1.0)
        first = await reservations.hold("m", lambda: 0.6)
        waiting = asyncio.create_task(reservations.hold("m", lambda: 0.6))
        await asyncio.sleep(0)
        assert not waiting.done()  # 1.2 would be held: it waits, it is not refused
        assert not isinstance(first, str)
        await reservations.pay(first, 0.1, answered=True)
        second = await waiting  # 0.1 spent + 0.6 fits
        assert not isinstance(second, str)
        await reservations.pay(second, 0.5, answered=True)
        # Spent 0.6, nothing under way: a call that does not fit is refused at once.
        return [await reservations.hold("m", lambda: 0.6), reservations.holding]

    refused, holding = asyncio.run(scenario())
    assert isinstance(refused, str) and refused.startswith("budget of $1 would be passed")
    assert holding == 0


def test_token_estimates_learn_prompt_density_and_each_steps_answer_length() -> None:
    estimator = TokenEstimator()
    assert estimator.split("m", "scope", 400) == (100, DEFAULT_OUTPUT_TOKENS)
    assert estimator.estimate("m", "scope", 400) == 100 + DEFAULT_OUTPUT_TOKENS
    estimator.learn("m", "scope", 400, prompt_tokens=200, completion_tokens=900, cost_usd=0.011)
    assert estimator.split("m", "scope", 400) == (200, 900)
    assert estimator.split("m", "other", 400) == (200, DEFAULT_OUTPUT_TOKENS)  # per step
    estimator.learn("m", "scope", 400, prompt_tokens=200, completion_tokens=100, cost_usd=0.003)
    assert estimator.estimate("m", "scope", 400) > 200 + 100  # a long answer is not forgotten
    # The dearest rate lately: 0.011 / 1100 tokens, barely moved by a cheaper answer.
    rate = estimator.usd_per_token("m")
    assert rate is not None and 0.00001 * 0.95 < rate <= 0.00001
    assert estimator.usd_per_token("other-model") is None


def test_a_tiny_budget_reads_as_written_not_in_exponent_form() -> None:
    budget = LocalBudget(0.00001)
    refusal = asyncio.run(budget.reserve(0.0002)) or ""
    assert refusal.startswith("budget of $0.00001 is too small"), refusal
    assert "e-05" not in refusal
