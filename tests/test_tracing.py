"""Traces: runs through the real engine against the local OpenAI-compatible server (litellm and
HTTP, as in production), spans read in-process from the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra (in the test extra)")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import (
    TEST_MODEL,
    FakeLLMServer,
    llm_server,
    make_plan,
    make_tenant,
    marker,
)

from dworkers.engine import PlanBuilder, RunOptions
from dworkers.events import (
    AttemptFinished,
    DatasetFinished,
    EventLog,
    RowFinished,
    RowStarted,
    RunFinished,
    RunStarted,
    StepFinished,
    StepInfo,
    StepRetrying,
    StepStarted,
)
from dworkers.results import (
    DatasetResult,
    Row,
    RowResult,
    RowStatus,
    RunResult,
    StepResult,
    StepStatus,
)
from dworkers.tracing import RunTracer, joined, trace_carrier, trace_ids_of
from dworkers.types import WorkerRole

__all__ = ["llm_server"]

DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
ROLES = {"a": WorkerRole.ANALYST, "b": WorkerRole.RESEARCHER, "c": WorkerRole.DATA_ANALYST,
         "d": WorkerRole.MANAGER}

class Traced:
    """A tracer exporting to memory, fed every event of a run (and kept in ``log``)."""

    def __init__(self, **options: Any) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer = RunTracer([SimpleSpanProcessor(self.exporter)], **options)
        self.log = EventLog()

    def __call__(self, event: object) -> None:
        self.log(event)  # type: ignore[arg-type]
        self.tracer(event)

    @property
    def spans(self) -> list[ReadableSpan]:
        assert self.tracer.error is None, self.tracer.error
        return list(self.exporter.get_finished_spans())

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name.startswith(prefix)]

    def agent(self, step_id: str, row: str | None = None) -> ReadableSpan:
        [span] = [s for s in self.named("invoke_agent")
                  if s.attributes["gen_ai.agent.name"] == step_id
                  and s.attributes.get("dworkers.row") == row]
        return span

    def children(self, parent: ReadableSpan, prefix: str = "") -> list[ReadableSpan]:
        return [s for s in self.spans if s.parent is not None
                and s.parent.span_id == parent.context.span_id and s.name.startswith(prefix)]


def engine_for(server: FakeLLMServer, traced: Traced, graph: Mapping[str, Sequence[str]],
               *, api_base: str | None = None, retry_max: int = 0, **builder: Any) -> Any:
    plan = make_plan(graph, roles=ROLES)
    return PlanBuilder(plan, make_tenant(retry_max=retry_max), api_base=api_base or server.url,
                       options=RunOptions(retry_base_delay=0.01, rate_limit_wait=5),
                       on_event=traced, **builder).build()


def traced_run(server: FakeLLMServer, graph: Mapping[str, Sequence[str]], **options: Any
               ) -> tuple[Traced, RunResult]:
    traced = Traced(**options.pop("tracer", {}))
    engine = engine_for(server, traced, graph, **options)
    result = asyncio.run(engine.run({"brief": "widgets"}))
    return traced, result


def all_text(span: ReadableSpan) -> str:
    """Every string a span carries: name, attributes, events, links, status, resource."""
    parts: list[object] = [span.name, span.status.description, dict(span.attributes or {}),
                           dict(span.resource.attributes)]
    parts += [(e.name, dict(e.attributes or {})) for e in span.events]
    parts += [dict(link.attributes or {}) for link in span.links]
    return repr(parts)


# --- the span tree -------------------------------------------------------------------------------


def test_a_run_is_one_trace_whose_steps_follow_the_plans_dag(llm_server: FakeLLMServer) -> None:
    traced, result = traced_run(llm_server, DIAMOND)
    assert result.success
    [root] = traced.named("invoke_workflow")
    assert root.name == "invoke_workflow test-plan" and root.parent is None
    assert root.attributes["gen_ai.operation.name"] == "invoke_workflow"
    assert root.attributes["dworkers.run_id"] == result.run_id
    assert root.attributes["dworkers.tenant"] == "test-tenant"
    assert root.context.trace_id == trace_ids_of(result.run_id)[0]
    assert {s.context.trace_id for s in traced.spans} == {root.context.trace_id}

    agents = traced.children(root)
    assert sorted(s.attributes["gen_ai.agent.name"] for s in agents) == sorted(DIAMOND)
    for step_id, deps in DIAMOND.items():
        span = traced.agent(step_id)
        assert span.name == f"invoke_agent {ROLES[step_id].value}"
        assert span.attributes["dworkers.step"] == step_id
        for dep in deps:  # a step starts once its dependencies have finished
            assert span.start_time >= traced.agent(dep).end_time
    assert root.start_time <= min(s.start_time for s in agents)
    assert root.end_time >= max(s.end_time for s in agents)


def test_one_chat_span_per_call_with_the_results_tokens(llm_server: FakeLLMServer) -> None:
    llm_server.add_rule(marker("b"), status=500, times=1)  # b: retried once
    traced, result = traced_run(llm_server, DIAMOND, retry_max=1)
    assert result.success
    assert len(traced.named("chat")) == len(llm_server.requests) == 5
    for step_id, step in result.outputs.items():
        agent = traced.agent(step_id)
        chats = traced.children(agent, "chat")
        assert len(chats) == step.attempts
        assert sorted(c.attributes["dworkers.attempt"] for c in chats) == list(
            range(1, step.attempts + 1))
        assert agent.attributes["gen_ai.usage.input_tokens"] == step.prompt_tokens > 0
        assert agent.attributes["gen_ai.usage.output_tokens"] == step.completion_tokens > 0
        assert sum(c.attributes["gen_ai.usage.input_tokens"] for c in chats) == step.prompt_tokens
        assert sum(c.attributes["gen_ai.usage.output_tokens"] for c in chats) == (
            step.completion_tokens)
        assert agent.attributes["dworkers.cost_usd"] == step.cost_usd
        assert agent.attributes["dworkers.cost_known"] is step.cost_known
        answered = [c for c in chats if "error.type" not in c.attributes]
        [chat] = answered
        assert chat.name == f"chat {TEST_MODEL}"
        assert chat.attributes["gen_ai.provider.name"] == "openai"
        assert chat.attributes["gen_ai.request.model"] == TEST_MODEL
        assert chat.attributes["gen_ai.response.model"] == step.model
        assert chat.attributes["gen_ai.response.finish_reasons"] == ("stop",)
        assert chat.attributes["server.address"] == "127.0.0.1"
        assert chat.attributes["server.port"] == llm_server.port
        assert chat.start_time >= agent.start_time and chat.end_time <= agent.end_time
    [failed] = [c for c in traced.children(traced.agent("b"), "chat") if "error.type" in
                c.attributes]
    assert failed.attributes["error.type"] == "ProviderUnavailableError"
    assert failed.status.status_code.name == "ERROR"
    [retry] = traced.agent("b").events
    assert retry.name == "dworkers.retry" and retry.attributes["dworkers.attempt"] == 1


def test_failures_and_rate_limits_are_on_their_spans(llm_server: FakeLLMServer) -> None:
    llm_server.add_rule(marker("a"), status=429, retry_after=0.05, times=1)
    llm_server.add_rule(marker("c"), status=400, error_message="unsupported parameter")
    traced, result = traced_run(llm_server, {"a": [], "c": [], "d": ["c"]})
    assert result.outputs["a"].succeeded and result.outputs["c"].status is StepStatus.FAILED
    [wait] = traced.agent("a").events
    assert wait.name == "dworkers.rate_limit_wait"
    assert wait.attributes["error.type"] == "RateLimitError"
    assert wait.attributes["dworkers.wait_seconds"] > 0
    assert [c.attributes.get("error.type") for c in traced.children(traced.agent("a"))] == [
        "RateLimitError", None]

    failed = traced.agent("c")
    [chat] = traced.children(failed, "chat")
    assert chat.attributes["error.type"] == failed.attributes["error.type"] == "BadRequestError"
    assert failed.status.status_code.name == "ERROR"
    assert "unsupported parameter" in (failed.status.description or "")
    skipped = traced.agent("d")
    assert skipped.attributes["dworkers.skipped"] is True
    assert skipped.attributes["dworkers.status"] == "skipped"
    assert "c failed" in skipped.attributes["dworkers.skip_reason"]
    assert traced.children(skipped) == []
    [root] = traced.named("invoke_workflow")
    assert root.attributes["dworkers.status"] == "failed"
    assert root.attributes["error.type"] == "failed"


def test_a_timed_out_attempt_is_a_failed_chat_span_with_what_it_consumed(
        llm_server: FakeLLMServer) -> None:
    llm_server.add_rule(marker("a"), hang=True, times=1)  # the first call never answers
    traced = Traced()
    plan = make_plan({"a": []}, roles=ROLES)
    engine = PlanBuilder(plan, make_tenant(retry_max=1, timeout=0.5), api_base=llm_server.url,
                         options=RunOptions(retry_base_delay=0.01), on_event=traced).build()
    result = asyncio.run(engine.run({"brief": "widgets"}))
    step = result.outputs["a"]
    assert step.succeeded and step.attempts == 2 == len(llm_server.requests)
    timed_out, answered = sorted(traced.children(traced.agent("a"), "chat"),
                                 key=lambda s: s.attributes["dworkers.attempt"])
    assert timed_out.attributes["error.type"] == "ProviderTimeoutError"
    assert timed_out.status.status_code.name == "ERROR"
    assert "timed out" in (timed_out.status.description or "")
    assert "error.type" not in answered.attributes
    for name, total in (("gen_ai.usage.input_tokens", step.prompt_tokens),
                        ("gen_ai.usage.output_tokens", step.completion_tokens)):
        assert timed_out.attributes[name] + answered.attributes[name] == total
    [retry] = traced.agent("a").events
    assert retry.name == "dworkers.retry"
    assert retry.attributes["error.type"] == "ProviderTimeoutError"


# --- resumed runs, cached steps, rows -------------------------------------------------------


def test_a_resumed_run_is_a_new_trace_linked_to_the_one_it_resumes(
        llm_server: FakeLLMServer) -> None:
    first, earlier = traced_run(llm_server, DIAMOND)
    llm_server.reset()
    reuse = {sid: r for sid, r in earlier.outputs.items() if sid in ("a", "b")}
    resumed, result = traced_run(llm_server, DIAMOND, reuse=reuse,
                                 tracer={"resumed_from": earlier.run_id})
    assert result.success
    [original] = first.named("invoke_workflow")
    [root] = resumed.named("invoke_workflow")
    assert root.context.trace_id != original.context.trace_id
    [link] = root.links
    assert (link.context.trace_id, link.context.span_id) == (
        original.context.trace_id, original.context.span_id)
    assert root.attributes["dworkers.resumed_from"] == earlier.run_id
    for sid in ("a", "b"):  # reused: a span marked cached, no call under it
        span = resumed.agent(sid)
        assert span.attributes["dworkers.cached"] is True
        assert resumed.children(span) == []
    assert len(resumed.named("chat")) == len(llm_server.requests) == 2
    assert resumed.agent("c").attributes["dworkers.cached"] is False


def test_a_cache_hit_is_a_cached_step_without_a_call(llm_server: FakeLLMServer) -> None:
    class Everything:
        def __init__(self) -> None:
            self.known: dict[str, StepResult] = {}

        def lookup(self, key: str) -> StepResult | None:
            return self.known.get(key)

    _, earlier = traced_run(llm_server, {"a": []})
    cache = Everything()
    cache.known[earlier.outputs["a"].cache_key or ""] = earlier.outputs["a"]
    traced, result = traced_run(llm_server, {"a": []}, cache=cache)
    assert result.outputs["a"].cached and len(llm_server.requests) == 1
    span = traced.agent("a")
    assert span.attributes["dworkers.cached"] is True
    assert traced.children(span) == []


def test_each_row_of_a_dataset_run_is_its_own_trace(llm_server: FakeLLMServer) -> None:
    llm_server.add_rule("broken-row", status=400)
    traced = Traced()
    engine = engine_for(llm_server, traced, {"a": [], "b": ["a"]})
    rows = [Row(key=k, inputs={"brief": f"{k}-row"}) for k in ("one", "two", "broken")]

    async def run() -> list[RowResult]:
        return [r async for r in engine.run_many(rows)]

    results = {r.key: r for r in asyncio.run(run())}
    assert results["broken"].status is RowStatus.FAILED
    run_id = engine.dataset_result.run_id
    roots = {s.attributes["dworkers.row"]: s for s in traced.named("invoke_workflow")}
    assert sorted(roots) == ["broken", "one", "two"]
    assert len({s.context.trace_id for s in roots.values()}) == 3
    for key, root in roots.items():
        assert root.parent is None
        assert root.context.trace_id == trace_ids_of(run_id, key)[0]
        assert root.attributes["dworkers.run_id"] == root.attributes[
            "gen_ai.conversation.id"] == run_id
        agents = traced.children(root, "invoke_agent")
        assert sorted(a.attributes["gen_ai.agent.name"] for a in agents) == ["a", "b"]
        for step_id, step in results[key].outputs.items():
            agent = traced.agent(step_id, key)
            assert agent.attributes["gen_ai.usage.input_tokens"] == step.prompt_tokens
            assert len(traced.children(agent, "chat")) == step.attempts
    assert roots["broken"].attributes["dworkers.status"] == "failed"
    assert traced.agent("a", "broken").attributes["error.type"] == "BadRequestError"


def test_a_row_trace_is_joined_from_elsewhere_through_its_carrier() -> None:
    carrier = trace_carrier("run-1", "row-7")  # sent with the row, before it starts
    traced = Traced()
    now = time.monotonic()
    traced(RunStarted("run-1", "p", "t", (StepInfo("a", "A", "analyst", "openai/x", ()),), now,
                      dataset=True))
    traced(RowStarted("row-7", 3, now))
    traced(RowFinished(RowResult(key="row-7", status=RowStatus.SUCCEEDED), now + 1))
    [row] = traced.named("invoke_workflow")

    worker = InMemorySpanExporter()  # a Ray worker's own tracer provider
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(worker))
    with joined(carrier):
        provider.get_tracer("worker").start_span("execute_tool regs").end()
    provider.get_tracer("worker").start_span("elsewhere").end()  # outside: its own trace
    remote, outside = worker.get_finished_spans()
    assert remote.context.trace_id == row.context.trace_id
    assert remote.parent is not None and remote.parent.span_id == row.context.span_id
    assert outside.context.trace_id != row.context.trace_id


# --- timing and content --------------------------------------------------------------------


def step_events(at: float, *, tokens: tuple[int, int] = (12, 5), retry: bool = False
                ) -> Iterator[object]:
    """The events of a one-step run as the engine emits them (times from ``at``)."""
    info = StepInfo("a", "A", "analyst", "openai/x", ())
    messages = ({"role": "system", "content": "You are an analyst."},
                {"role": "user", "content": "Summarise the widgets."})
    yield RunStarted("run-1", "p", "t", (info,), at)
    attempt = 1
    if retry:
        yield StepStarted("a", 1, "openai/x", at + 0.1, messages)
        yield AttemptFinished("a", 1, "openai/x", error_type="RateLimitError", error="429",
                              status_code=429, started_at=at + 0.15, at=at + 0.2)
        yield StepRetrying("a", 1, "429 rate limited", 0.5)
        attempt = 2
    yield StepStarted("a", attempt, "openai/x", at + 0.7, messages if attempt == 1 else ())
    yield AttemptFinished("a", attempt, "openai/x", "x-2024", *tokens, "stop", 0.001,
                          answer="The widgets sell.", started_at=at + 0.75, at=at + 1.25)
    result = StepResult(step_id="a", status=StepStatus.SUCCEEDED, output="The widgets sell.",
                        attempts=attempt, model="x-2024", prompt_tokens=tokens[0],
                        completion_tokens=tokens[1], cost_usd=0.001)
    yield StepFinished(result, at + 1.3)
    yield RunFinished(RunResult(run_id="run-1", plan="p", tenant="t", success=True,
                                outputs={"a": result}), at + 1.4)


def test_spans_take_their_times_from_the_events() -> None:
    traced = Traced()
    at = time.monotonic()
    for event in step_events(at, retry=True):
        traced(event)
    [root], agent = traced.named("invoke_workflow"), traced.agent("a")
    first, second = sorted(traced.children(agent, "chat"), key=lambda s: s.start_time)

    def ns(seconds: float) -> int:
        return round(seconds * 1e9)

    assert abs(second.end_time - second.start_time - ns(0.5)) <= 1000
    assert abs(second.start_time - first.start_time - ns(0.6)) <= 1000
    assert abs(agent.start_time - root.start_time - ns(0.1)) <= 1000
    assert abs(root.end_time - root.start_time - ns(1.4)) <= 1000
    assert abs(root.start_time / 1e9 - time.time() + (time.monotonic() - at)) < 5
    assert second.attributes["gen_ai.usage.input_tokens"] == 12
    [wait] = agent.events
    assert wait.name == "dworkers.rate_limit_wait"


def test_content_is_captured_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    for capture in (False, True):
        traced = Traced(capture_content=capture)
        for event in step_events(time.monotonic()):
            traced(event)
        [chat] = traced.named("chat")
        if not capture:
            assert not any(k.startswith("gen_ai.input") or k.startswith("gen_ai.output")
                           or k == "gen_ai.system_instructions" for k in chat.attributes)
            continue
        assert json.loads(chat.attributes["gen_ai.system_instructions"]) == [
            {"type": "text", "content": "You are an analyst."}]
        assert json.loads(chat.attributes["gen_ai.input.messages"]) == [
            {"role": "user", "parts": [{"type": "text", "content": "Summarise the widgets."}]}]
        [output] = json.loads(chat.attributes["gen_ai.output.messages"])
        assert output["parts"][0]["content"] == "The widgets sell."
        assert output["finish_reason"] == "stop"


def test_no_key_reaches_any_span(llm_server: FakeLLMServer,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    key = "sk-proj-TopSecretValue1234567890"
    token = "tok-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.setenv("DWORKERS_PROXY_TOKEN", token)
    traced = Traced(capture_content=True)
    llm_server.add_rule(marker("a"), content=f"Done with {key}, and {token}.")
    llm_server.add_rule(marker("b"), status=401, error_message=f"bad key {key}")
    engine = engine_for(llm_server, traced, {"a": [], "b": []})
    # The secrets are in the prompt, in an answer and in an error.
    result = asyncio.run(engine.run({"brief": f"use {key} and {token}"}))
    assert result.outputs["a"].succeeded and not result.outputs["b"].succeeded
    assert llm_server.requests[0].headers.get("authorization") == f"Bearer {key}"
    [chat] = traced.children(traced.agent("a"), "chat")
    assert "use [redacted]" in chat.attributes["gen_ai.input.messages"]
    assert "[redacted]" in chat.attributes["gen_ai.output.messages"]
    for span in traced.spans:
        text = all_text(span)
        assert key not in text and token not in text, span.name


def test_an_api_base_reaches_spans_as_host_and_port_only() -> None:
    # The engine refuses user:password in --api-base; a token in its path or query is
    # allowed, and a gateway may be reached through either.
    api_base = "https://admin:Hunter2Password99@gw.example.com:8443/t/Secret99Path/v1?key=Q9z8"
    traced = Traced(capture_content=True)
    for event in step_events(time.monotonic()):
        if isinstance(event, AttemptFinished):
            event = dataclasses.replace(event, endpoint=api_base)
        traced(event)
    [chat] = traced.named("chat")
    assert chat.attributes["server.address"] == "gw.example.com"
    assert chat.attributes["server.port"] == 8443
    for span in traced.spans:
        text = all_text(span)
        for secret in ("Hunter2Password99", "Secret99Path", "Q9z8", "admin"):
            assert secret not in text, (span.name, secret)


def test_a_tracer_never_fails_the_run() -> None:
    traced = Traced()
    traced.tracer._handlers[StepStarted] = lambda event: 1 / 0
    for event in step_events(time.monotonic()):
        traced.tracer(event)
    assert isinstance(traced.tracer.error, ZeroDivisionError)


def test_rows_that_never_started_are_still_traced() -> None:
    traced = Traced()
    now = time.monotonic()
    traced(RunStarted("run-2", "p", "t", (), now, dataset=True))
    traced(RowFinished(RowResult(key="late", status=RowStatus.SKIPPED,
                                 error="stopped after 1 failed row"), now + 1))
    traced(DatasetFinished(DatasetResult(run_id="run-2", plan="p", tenant="t"), now + 2))
    [root] = traced.named("invoke_workflow")
    assert root.attributes["dworkers.row"] == "late"
    assert root.attributes["dworkers.status"] == "skipped"
