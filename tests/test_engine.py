"""The engine against a real OpenAI-compatible HTTP server, through litellm.

Ordering and parallelism are proven with the server's own timestamps.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from support import (
    TEST_MODEL,
    FakeLLMServer,
    llm_server,
    make_plan,
    make_tenant,
    marker,
    request_for,
)

from dworkers.engine import PlanBuilder, RunOptions
from dworkers.errors import InputError, PlanValidationError, PreflightError
from dworkers.events import EventLog, RunStarted, StepFinished, StepRetrying, StepStarted
from dworkers.plans.base import InputSpec
from dworkers.results import MOCK_MODEL, RunResult, StepStatus
from dworkers.tenants.config import TenantConfig
from dworkers.types import WorkerRole

__all__ = ["llm_server"]

DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


def run_plan(
    server: FakeLLMServer,
    graph: dict[str, list[str]],
    *,
    tenant: TenantConfig | None = None,
    inputs: dict[str, str] | None = None,
    options: RunOptions | None = None,
    log: EventLog | None = None,
    **step_options: object,
) -> RunResult:
    plan = make_plan(graph, **step_options)
    engine = PlanBuilder(
        plan, tenant or make_tenant(), api_base=server.url,
        options=options or RunOptions(retry_base_delay=0.05), on_event=log,
    ).build()
    return asyncio.run(engine.run(inputs or {}))


def test_runs_every_step_and_returns_outputs_usage_and_totals(llm_server: FakeLLMServer) -> None:
    for step_id in DIAMOND:
        llm_server.add_rule(marker(step_id), content=f"deliverable of {step_id}")
    result = run_plan(llm_server, DIAMOND)

    assert result.success
    assert list(result.outputs) == ["a", "b", "c", "d"]
    for step_id, step in result.outputs.items():
        assert step.status is StepStatus.SUCCEEDED
        assert step.output == f"deliverable of {step_id}"
        assert step.attempts == 1
        assert step.model == TEST_MODEL
        assert step.completion_tokens == 3  # the server counts words
        assert step.prompt_tokens > 0
    assert result.total_tokens == sum(s.total_tokens for s in result.outputs.values())
    assert len(llm_server.requests) == 4
    assert all(r.stream and r.model == "test-model" for r in llm_server.requests)


def test_each_worker_receives_its_direct_dependencies_outputs(llm_server: FakeLLMServer) -> None:
    for step_id in DIAMOND:
        llm_server.add_rule(marker(step_id), content=f"OUTPUT-OF-{step_id.upper()}")
    run_plan(llm_server, DIAMOND)

    [d] = request_for(llm_server, "d")
    user = d.messages[-1]["content"]
    assert "OUTPUT-OF-B" in user and "OUTPUT-OF-C" in user
    assert "OUTPUT-OF-A" not in user  # only direct dependencies
    assert user.rstrip().endswith("Do d")  # the task comes last
    assert d.messages[0]["role"] == "system"
    assert "Test Tenant makes test widgets." in d.messages[0]["content"]
    [b] = request_for(llm_server, "b")
    assert "OUTPUT-OF-A" in b.messages[-1]["content"]


def test_a_step_starts_as_soon_as_its_own_dependencies_finish(llm_server: FakeLLMServer) -> None:
    # slow and fast branches off one root; "after-fast" depends only on the fast branch.
    llm_server.add_rule(marker("slow"), latency=1.5)
    graph = {"root": [], "slow": ["root"], "fast": ["root"], "after-fast": ["fast"]}
    result = run_plan(llm_server, graph)

    assert result.success
    [slow] = request_for(llm_server, "slow")
    [after_fast] = request_for(llm_server, "after-fast")
    assert slow.finished is not None
    assert after_fast.started < slow.finished  # no level barrier waiting for the slow sibling
    [fast] = request_for(llm_server, "fast")
    assert fast.started < slow.finished  # the siblings ran side by side


def test_independent_steps_run_concurrently_up_to_the_cap(llm_server: FakeLLMServer) -> None:
    llm_server.add_rule(latency=0.4)
    graph: dict[str, list[str]] = {f"s{i}": [] for i in range(6)}
    result = run_plan(llm_server, graph, tenant=make_tenant(max_concurrency=3))

    assert result.success
    assert llm_server.max_in_flight == 3


def test_the_run_option_overrides_the_tenant_concurrency(llm_server: FakeLLMServer) -> None:
    llm_server.add_rule(latency=0.3)
    graph: dict[str, list[str]] = {f"s{i}": [] for i in range(4)}
    run_plan(llm_server, graph, tenant=make_tenant(max_concurrency=1),
             options=RunOptions(max_concurrency=4))
    assert llm_server.max_in_flight == 4


def test_role_concurrency_limits_only_that_role(llm_server: FakeLLMServer) -> None:
    llm_server.add_rule(latency=0.4)
    graph: dict[str, list[str]] = {"a1": [], "a2": [], "a3": [], "r1": [], "r2": []}
    roles = {"r1": WorkerRole.RESEARCHER, "r2": WorkerRole.RESEARCHER}
    plan = make_plan(graph, roles=roles)
    tenant = make_tenant(role_limits={WorkerRole.ANALYST: 1})
    engine = PlanBuilder(plan, tenant, api_base=llm_server.url).build()
    assert asyncio.run(engine.run()).success

    analysts = sorted((r.started, r.finished or 0) for r in llm_server.requests
                      if "(a" in r.messages[-1]["content"])
    assert len(analysts) == 3
    for (_, end), (start, _) in itertools.pairwise(analysts):
        assert start >= end - 0.05  # one analyst at a time
    assert llm_server.max_in_flight >= 3  # researchers ran beside the analyst


def test_server_errors_are_retried_with_backoff(llm_server: FakeLLMServer) -> None:
    llm_server.add_rule(marker("a"), status=500, times=2, error_message="upstream exploded")
    log = EventLog()
    result = run_plan(llm_server, {"a": []}, retry_max=2, log=log)

    assert result.success
    assert result.outputs["a"].attempts == 3
    assert [r.status for r in llm_server.requests] == [500, 500, 200]
    retries = [e for e in log.events if isinstance(e, StepRetrying)]
    assert [e.attempt for e in retries] == [1, 2]
    assert all("500" in e.reason and e.wait_seconds > 0 for e in retries)


def test_a_step_that_keeps_failing_fails_and_only_its_descendants_are_skipped(
    llm_server: FakeLLMServer,
) -> None:
    llm_server.add_rule(marker("b"), status=500, error_message="upstream exploded")
    graph = {"a": [], "b": ["a"], "c": ["a"], "d": ["b"], "e": ["d"], "f": ["c"]}
    result = run_plan(llm_server, graph, retry_max=1)

    assert not result.success
    statuses = {sid: r.status for sid, r in result.outputs.items()}
    assert statuses == {
        "a": StepStatus.SUCCEEDED, "b": StepStatus.FAILED, "c": StepStatus.SUCCEEDED,
        "d": StepStatus.SKIPPED, "e": StepStatus.SKIPPED, "f": StepStatus.SUCCEEDED,
    }
    assert result.outputs["b"].attempts == 2
    assert "500" in (result.outputs["b"].error or "")
    assert "upstream exploded" in (result.outputs["b"].error or "")
    assert result.outputs["d"].error == "b failed"
    assert result.outputs["e"].error == "b failed"
    assert result.outputs["c"].output  # the independent branch kept its output
    assert not request_for(llm_server, "d") and not request_for(llm_server, "e")


def test_rate_limits_wait_for_retry_after_even_without_retries(llm_server: FakeLLMServer) -> None:
    llm_server.add_rule(marker("a"), status=429, retry_after=1, times=1)
    log = EventLog()
    result = run_plan(llm_server, {"a": []}, log=log)  # retry_max=0

    assert result.success and result.outputs["a"].attempts == 2
    first, second = llm_server.requests
    assert first.status == 429 and first.finished is not None
    assert second.started - first.finished >= 0.9  # waited as told
    [retry] = [e for e in log.events if isinstance(e, StepRetrying)]
    assert retry.wait_seconds == pytest.approx(1.0) and "429" in retry.reason


def test_a_retry_after_longer_than_the_steps_wait_fails_at_once(
    llm_server: FakeLLMServer,
) -> None:
    llm_server.add_rule(marker("a"), status=429, retry_after=3600, times=1)
    log = EventLog()
    result = run_plan(llm_server, {"a": []}, log=log,
                      options=RunOptions(rate_limit_wait=600))

    step = result.outputs["a"]
    assert step.status is StepStatus.FAILED and step.attempts == 1
    assert step.error is not None and step.error.endswith(
        "— asked to wait 1h, more than the 10m limits.rate_limit_wait_seconds leaves this step")
    assert not [e for e in log.events if isinstance(e, StepRetrying)]  # no wait sat out
    assert len(llm_server.requests) == 1


def test_a_wait_without_retry_after_is_bounded_by_the_steps_wait(
    llm_server: FakeLLMServer,
) -> None:
    llm_server.add_rule(marker("a"), status=429, times=1)  # no Retry-After: backoff
    log = EventLog()
    result = run_plan(llm_server, {"a": []}, log=log,
                      options=RunOptions(rate_limit_wait=0.2, retry_base_delay=30))
    assert result.success
    [retry] = [e for e in log.events if isinstance(e, StepRetrying)]
    assert retry.wait_seconds == 0.2  # the backoff would be 15-30 s: capped


def test_a_hung_call_times_out_and_is_retried(llm_server: FakeLLMServer) -> None:
    llm_server.add_rule(marker("a"), hang=True, times=1)
    result = run_plan(llm_server, {"a": []}, retry_max=1, timeout_seconds=0.5)

    assert result.success
    assert result.outputs["a"].attempts == 2
    assert len(llm_server.requests) == 2


def test_a_call_that_always_hangs_fails_within_its_attempts(llm_server: FakeLLMServer) -> None:
    llm_server.add_rule(marker("a"), hang=True)
    result = run_plan(llm_server, {"a": [], "b": []}, retry_max=1, timeout_seconds=0.3)

    step = result.outputs["a"]
    assert step.status is StepStatus.FAILED and step.attempts == 2
    assert "timed out" in (step.error or "")
    assert result.outputs["b"].status is StepStatus.SUCCEEDED


@pytest.mark.parametrize("status", [400, 401, 403])
def test_client_errors_fail_at_once_with_the_provider_message(
    llm_server: FakeLLMServer, status: int
) -> None:
    llm_server.add_rule(status=status, error_message="Incorrect API key provided: sk-te***")
    result = run_plan(llm_server, {"a": []}, retry_max=3)

    step = result.outputs["a"]
    assert step.status is StepStatus.FAILED and step.attempts == 1
    assert str(status) in (step.error or "")
    assert "Incorrect API key provided" in (step.error or "")
    assert len(llm_server.requests) == 1


def test_fail_fast_cancels_running_steps(llm_server: FakeLLMServer) -> None:
    llm_server.add_rule(marker("bad"), status=400)
    llm_server.add_rule(marker("slow"), latency=30)
    graph: dict[str, list[str]] = {"slow": [], "bad": [], "later": ["slow"]}
    result = run_plan(llm_server, graph, options=RunOptions(fail_fast=True))

    assert result.outputs["bad"].status is StepStatus.FAILED
    assert result.outputs["slow"].status is StepStatus.CANCELLED
    assert "fail-fast" in (result.outputs["slow"].error or "")
    assert result.outputs["later"].status is StepStatus.SKIPPED
    # The slow call was dropped, not waited for: the server saw its client go away.
    llm_server.wait_idle(timeout=None)  # the server sees the client go away
    (slow,) = llm_server.requests_containing(marker("slow"))
    assert slow.abandoned and slow.status is None


def test_cancelling_a_run_stops_in_flight_calls_and_reports_them(
    llm_server: FakeLLMServer,
) -> None:
    llm_server.add_rule(marker("hang"), hang=True)
    plan = make_plan({"quick": [], "hang": [], "after": ["hang"]})
    quick_done = asyncio.Event()

    def on_event(event: object) -> None:
        if isinstance(event, StepFinished) and event.result.step_id == "quick":
            quick_done.set()

    engine = PlanBuilder(plan, make_tenant(), api_base=llm_server.url,
                         on_event=on_event).build()

    async def scenario() -> None:
        task = asyncio.create_task(engine.run())
        # The hung request reached the server, and the quick step has finished.
        await asyncio.to_thread(llm_server.wait_for_requests, 2, None)
        await quick_done.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    result = engine.result
    assert result is not None and result.interrupted and not result.success
    assert result.outputs["quick"].status is StepStatus.SUCCEEDED
    assert result.outputs["hang"].status is StepStatus.CANCELLED
    assert result.outputs["after"].status is StepStatus.SKIPPED
    assert result.outputs["after"].error == "hang was cancelled"
    llm_server.wait_idle(timeout=None)  # the server sees the connection go away
    [hung] = request_for(llm_server, "hang")
    assert hung.abandoned


def test_inputs_are_checked_before_any_call(llm_server: FakeLLMServer) -> None:
    plan = make_plan({"a": []}, prompt_template="Audit {brief} for {client}")
    plan.inputs = {"brief": InputSpec(), "client": InputSpec(), "tone": InputSpec(default="x")}
    engine = PlanBuilder(plan, make_tenant(), api_base=llm_server.url).build()
    with pytest.raises(InputError) as caught:
        asyncio.run(engine.run({"breif": "x"}))
    messages = [p.render() for p in caught.value.problems]
    assert messages == [
        '--input: missing inputs: brief, client — pass --input brief="..." --input client="..."',
        "--input: unknown input 'breif' — did you mean 'brief'?",
    ]
    assert llm_server.requests == []


def test_rendered_template_reaches_the_model(llm_server: FakeLLMServer) -> None:
    plan = make_plan({"a": []}, prompt_template="Audit {brief} {{literally}}")
    engine = PlanBuilder(plan, make_tenant(), api_base=llm_server.url).build()
    asyncio.run(engine.run({"brief": "SOX for Q4"}))
    [request] = llm_server.requests
    assert request.messages[-1]["content"].endswith("Audit SOX for Q4 {literally}")


def test_missing_key_fails_before_any_call(
    llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    engine = PlanBuilder(make_plan(DIAMOND), make_tenant(), api_base=llm_server.url).build()
    with pytest.raises(PreflightError) as caught:
        asyncio.run(engine.run())
    [problem] = caught.value.problems
    assert "OPENAI_API_KEY" in problem.message and "a, b, c, d" in problem.message
    assert llm_server.requests == []


def test_a_model_outside_the_tenant_allow_list_is_refused(llm_server: FakeLLMServer) -> None:
    tenant = make_tenant(allowed=["anthropic/*"], model="anthropic/claude-3-5-sonnet-latest")
    engine = PlanBuilder(make_plan({"a": []}), tenant, model=TEST_MODEL,
                         api_base=llm_server.url).build()
    with pytest.raises(PreflightError, match="not allowed for tenant 'test-tenant'"):
        asyncio.run(engine.run())
    assert llm_server.requests == []


def test_the_builder_refuses_an_invalid_plan() -> None:
    plan = make_plan({"a": ["b"], "b": ["a"]})
    with pytest.raises(PlanValidationError, match="dependency cycle a → b → a"):
        PlanBuilder(plan, make_tenant()).build()


def test_model_and_api_base_come_from_the_environment(
    llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DWORKERS_MODEL", "openai/from-env")
    monkeypatch.setenv("DWORKERS_API_BASE", llm_server.url)
    engine = PlanBuilder(make_plan({"a": []}), make_tenant()).build()
    result = asyncio.run(engine.run())
    assert result.outputs["a"].model == "openai/from-env"
    assert [r.model for r in llm_server.requests] == ["from-env"]


class _FailFirst:
    """A client that fails one step and answers every other at once: for plans too large to
    run through HTTP in a unit test."""

    offline = False

    def __init__(self, failing: str) -> None:
        self.failing = failing

    async def complete(self, request, on_delta):  # type: ignore[no-untyped-def]
        from dworkers.errors import BadRequestError
        from dworkers.llm import Completion

        if request.step_id == self.failing:
            raise BadRequestError("refused")
        return Completion(f"output of {request.step_id}", request.model)

    def preflight(self, models, keyed):  # type: ignore[no-untyped-def]
        return []


def test_a_failure_at_the_head_of_a_very_long_chain_skips_the_rest_without_recursion() -> None:
    steps = 3000
    graph = {f"s{i}": ([f"s{i - 1}"] if i else []) for i in range(steps)}
    engine = PlanBuilder(make_plan(graph), make_tenant(), client=_FailFirst("s0")).build()
    result = asyncio.run(engine.run())
    assert result.outputs["s0"].status is StepStatus.FAILED
    assert result.outputs[f"s{steps - 1}"].status is StepStatus.SKIPPED
    assert result.count(StepStatus.SKIPPED) == steps - 1


def test_reusing_a_very_long_chain_works_without_recursion() -> None:
    steps = 3000
    graph = {f"s{i}": ([f"s{i - 1}"] if i else []) for i in range(steps)}
    plan = make_plan(graph)
    first = asyncio.run(PlanBuilder(plan, make_tenant(), client=_FailFirst("none")).build().run())
    engine = PlanBuilder(plan, make_tenant(), client=_FailFirst("s0"),
                         reuse=first.outputs).build()
    result = asyncio.run(engine.run())
    assert result.success and all(step.cached for step in result.outputs.values())


def test_the_tenants_key_variable_is_sent_to_its_own_provider(
    llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_OPENAI_KEY", "sk-acme-key-0123456789")
    tenant = make_tenant().model_copy(update={"api_key_env": "ACME_OPENAI_KEY"})
    run_plan(llm_server, {"a": []}, tenant=tenant)
    [request] = llm_server.requests
    assert request.headers["authorization"] == "Bearer sk-acme-key-0123456789"


class _Scripted:
    """Answers at once, except that ``actions[step_id](request)`` runs first (it may raise)."""

    offline = False

    def __init__(self, actions: dict[str, object] | None = None) -> None:
        self.actions = actions or {}
        self.calls: list[str] = []

    async def complete(self, request, on_delta):  # type: ignore[no-untyped-def]
        from dworkers.llm import Completion

        self.calls.append(request.step_id)
        action = self.actions.get(request.step_id)
        if callable(action):
            action()
        return Completion(f"output of {request.step_id}", request.model)

    def preflight(self, models, keyed):  # type: ignore[no-untyped-def]
        return []


def _refuse() -> None:
    from dworkers.errors import BadRequestError

    raise BadRequestError("refused")


def test_fail_fast_finishes_when_it_cancels_steps_that_never_started() -> None:
    # a's success launches b in the same tick as d's failure cancels everything: b's task is
    # cancelled before it ever runs, and the run must still account for it.
    client = _Scripted({"d": _refuse})
    engine = PlanBuilder(make_plan({"a": [], "d": [], "b": ["a"]}), make_tenant(),
                         client=client, options=RunOptions(fail_fast=True)).build()

    result = asyncio.run(engine.run())  # finishes: nothing waits for the cancelled task
    assert result.outputs["d"].status is StepStatus.FAILED
    assert result.outputs["b"].status is StepStatus.SKIPPED
    assert result.outputs["b"].error == "stopped because d failed (--fail-fast)"


def test_an_interrupted_run_starts_nothing_new() -> None:
    plan = make_plan({"a": [], "b": ["a"], "c": ["b"]})
    holder: dict[str, asyncio.Task[RunResult]] = {}
    # The interruption lands just as a's answer arrives, before the engine has read it.
    client = _Scripted({"a": lambda: asyncio.get_running_loop().call_soon(holder["run"].cancel)})
    engine = PlanBuilder(plan, make_tenant(), client=client).build()

    async def scenario() -> None:
        holder["run"] = asyncio.create_task(engine.run())
        with pytest.raises(asyncio.CancelledError):
            await holder["run"]

    asyncio.run(scenario())
    assert client.calls == ["a"]
    assert engine.result is not None and engine.result.interrupted
    assert engine.result.outputs["b"].status is StepStatus.CANCELLED


def test_a_resume_with_another_model_is_checked_against_the_allow_list() -> None:
    plan = make_plan({"a": [], "b": ["a"]})
    tenant = make_tenant(allowed=["openai/*"])
    first = asyncio.run(PlanBuilder(plan, tenant, client=_Scripted()).build().run())
    engine = PlanBuilder(plan, tenant, "evil/other-model", client=_Scripted(),
                         reuse=first.outputs).build()
    with pytest.raises(PreflightError, match="'evil/other-model' is not allowed"):
        asyncio.run(engine.run())


def test_mock_answers_are_never_reused_by_a_real_client() -> None:
    from dworkers.llm import MockClient

    plan = make_plan({"a": [], "b": ["a"]})
    mocked = asyncio.run(PlanBuilder(plan, make_tenant(), client=MockClient(latency=0))
                         .build().run())
    real = _Scripted()
    result = asyncio.run(PlanBuilder(plan, make_tenant(), client=real,
                                     reuse=mocked.outputs).build().run())
    assert real.calls == ["a", "b"]
    assert not any(step.cached for step in result.outputs.values())


class _Offline(_Scripted):
    """Any client that says it is offline, not only the built-in mock client."""

    offline = True


def test_a_client_that_says_it_is_offline_is_named_instead_of_a_model() -> None:
    log = EventLog()
    engine = PlanBuilder(make_plan({"a": []}), make_tenant(), client=_Offline(),
                         on_event=log).build()
    assert engine.offline
    asyncio.run(engine.run())
    [started] = [e for e in log.events if isinstance(e, RunStarted)]
    assert [info.model for info in started.steps] == [MOCK_MODEL]
    assert {e.model for e in log.events if isinstance(e, StepStarted)} == {MOCK_MODEL}
    # and a client that does not say so is named by its model
    online = PlanBuilder(make_plan({"a": []}), make_tenant(), client=_Scripted()).build()
    assert not online.offline and online.describe("x").steps[0].model == TEST_MODEL
