"""Dataset runs through ``Engine.run_many`` against the local server, through litellm.

Parallelism, pacing and the order rows run in are read from the server's own request log.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path

import pytest
from support import FakeLLMServer, llm_server, make_plan, make_tenant

from dworkers.engine import Engine, PlanBuilder, RunOptions
from dworkers.errors import PreflightError
from dworkers.events import (
    DatasetFinished,
    EventLog,
    RateLimits,
    RowFinished,
    RowStarted,
    RunFinished,
    RunStarted,
    StepFinished,
    StepStarted,
)
from dworkers.results import Row, RowResult, RowStatus, StepStatus
from dworkers.tenants.config import RateLimitConfig, TenantConfig

__all__ = ["llm_server"]

CHAIN = {"a": [], "b": ["a"], "c": ["b"]}
FORK = {"a": [], "b": ["a"], "c": ["a"]}


def engine_for(
    server: FakeLLMServer,
    graph: Mapping[str, list[str]],
    *,
    tenant: TenantConfig | None = None,
    log: EventLog | None = None,
    options: RunOptions | None = None,
    template: str = "Handle {item}",
) -> Engine:
    plan = make_plan(graph, prompt_template=template)
    return PlanBuilder(plan, tenant or make_tenant(), api_base=server.url,
                       options=options or RunOptions(retry_base_delay=0.05),
                       on_event=log).build()


def items(count: int) -> list[dict[str, str]]:
    return [{"item": f"item-{i:03d}"} for i in range(1, count + 1)]


def run_all(engine: Engine, rows: Iterable[Row | Mapping[str, object]] |
            AsyncIterator[Row | Mapping[str, object]], **options: int) -> list[RowResult]:
    async def collect() -> list[RowResult]:
        return [result async for result in engine.run_many(rows, **options)]

    return asyncio.run(collect())


def row_of(text: str) -> str:
    """The item a request was made for (every prompt names its row's item)."""
    start = text.index("item-")
    return text[start:start + 8]


def test_every_row_runs_every_step_and_comes_back_once(llm_server: FakeLLMServer) -> None:
    log = EventLog()
    engine = engine_for(llm_server, FORK, log=log, tenant=make_tenant(max_concurrency=6))
    results = run_all(engine, items(12))

    assert sorted(int(r.key) for r in results) == list(range(1, 13))
    assert all(r.status is RowStatus.SUCCEEDED for r in results)
    by_key = {r.key: r for r in results}
    assert by_key["3"].inputs == {"item": "item-003"}
    assert list(by_key["3"].outputs) == ["a", "b", "c"]
    assert by_key["3"].texts()["a"].startswith("Reply to:")
    assert by_key["3"].total_tokens > 0
    # The server saw each row's three steps exactly once, and never more than 6 at a time.
    requests = llm_server.requests
    assert len(requests) == 36
    assert sorted({row_of(r.text) for r in requests}) == [f"item-{i:03d}" for i in range(1, 13)]
    assert llm_server.max_in_flight <= 6
    total = engine.dataset_result
    assert total is not None and total.success
    assert total.counts[RowStatus.SUCCEEDED] == 12 and total.calls == 36


def test_rows_run_side_by_side_on_the_shared_slots(llm_server: FakeLLMServer) -> None:
    llm_server.latency = 0.1
    engine = engine_for(llm_server, CHAIN, tenant=make_tenant(max_concurrency=4))
    run_all(engine, items(8))

    # A chain runs one call at a time, so 4 calls at once means several rows ran together.
    assert llm_server.max_in_flight == 4
    spans = {}
    for request in llm_server.requests:
        assert request.finished is not None
        first, last = spans.get(row_of(request.text), (request.started, request.finished))
        spans[row_of(request.text)] = (min(first, request.started), max(last, request.finished))
    overlapping = sum(1 for a, b in spans.values() for c, d in spans.values()
                      if (a, b) != (c, d) and a < d and c < b)
    assert overlapping > 0


def most_rows_at_once(log: EventLog) -> int:
    """The most rows that were started and not yet finished at one time."""
    active = most = 0
    for event in log.events:
        if isinstance(event, RowStarted):
            active += 1
            most = max(most, active)
        elif isinstance(event, RowFinished):
            active -= 1
    return most

def test_started_rows_finish_before_new_rows_pile_up(llm_server: FakeLLMServer) -> None:
    # Two slots, chains of three: a row's next step takes a freed slot before any new row's
    # first step, so only about two rows are ever active, whatever the window allows.
    llm_server.latency = 0.02
    log = EventLog()
    engine = engine_for(llm_server, CHAIN, log=log, tenant=make_tenant(max_concurrency=2),
                        options=RunOptions(row_window=50))
    run_all(engine, items(10))

    assert most_rows_at_once(log) <= 3
    # Results flowed from the start: the first row finished before the last one started.
    kinds = [(type(e).__name__, getattr(e, "row", None) or getattr(getattr(e, "result", None),
                                                                      "key", None))
             for e in log.events if isinstance(e, RowStarted | RowFinished)]
    assert kinds.index(("RowFinished", "1")) < kinds.index(("RowStarted", "10"))


def test_the_active_row_window_bounds_memory(llm_server: FakeLLMServer) -> None:
    log = EventLog()
    pulled = 0

    async def rows() -> AsyncIterator[Row]:
        nonlocal pulled
        for i in range(1, 41):
            pulled += 1
            yield Row(key=f"k{i}", inputs={"item": f"item-{i:03d}"}, extra={"n": str(i)})

    engine = engine_for(llm_server, {"a": []}, log=log, tenant=make_tenant(max_concurrency=8),
                        options=RunOptions(row_window=3))
    seen_pulled: list[int] = []

    async def collect() -> list[RowResult]:
        out = []
        async for result in engine.run_many(rows()):
            seen_pulled.append(pulled)
            out.append(result)
        return out

    results = asyncio.run(collect())
    assert len(results) == 40
    assert results[0].extra == {"n": results[0].key[1:]}
    assert most_rows_at_once(log) <= 3
    assert llm_server.max_in_flight <= 3
    assert seen_pulled[0] <= 4  # rows are read as they are needed, never all at once


def test_a_rate_limited_server_is_paced_without_being_told_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    log = EventLog()
    with FakeLLMServer(rpm=1200, reply_tokens=50) as server:  # 20 a second, a bucket of 20
        engine = engine_for(server, {"a": []}, log=log, tenant=make_tenant(max_concurrency=32))
        results = run_all(engine, items(60))
        requests = server.requests

    assert all(r.status is RowStatus.SUCCEEDED for r in results) and len(results) == 60
    refused = sum(1 for r in requests if r.rate_limited)
    assert refused / len(requests) <= 0.03
    accepted = sorted(r.started for r in requests if not r.rate_limited)
    rate = (len(accepted) - 1) / (accepted[-1] - accepted[0]) * 60
    assert rate <= 1200 * 1.05  # never faster than the limit (the first call went alone)
    limits = [e for e in log.events if isinstance(e, RateLimits)]
    assert limits and (limits[0].rpm, limits[0].source) == (1200, "headers")
    total = engine.dataset_result
    assert total is not None and total.rate_limited == refused


def test_a_tenant_stated_rate_holds_from_the_first_call(llm_server: FakeLLMServer) -> None:
    tenant = make_tenant(max_concurrency=16)
    tenant.limits.rate_limits = {"openai/*": RateLimitConfig(rpm=600)}
    engine = engine_for(llm_server, {"a": []}, tenant=tenant)
    run_all(engine, items(12))

    started = sorted(r.started for r in llm_server.requests)
    rate = (len(started) - 1) / (started[-1] - started[0]) * 60
    assert rate <= 600 * 1.1  # the server states no limit: only the tenant's paces the calls


def test_a_failed_row_never_stops_the_others(llm_server: FakeLLMServer) -> None:
    llm_server.add_rule("item-004", status=400, error_message="no such thing")
    results = run_all(engine_for(llm_server, FORK), items(8))

    by_key = {r.key: r for r in results}
    assert by_key["4"].status is RowStatus.FAILED
    assert by_key["4"].error is not None and by_key["4"].error.startswith("a: ")
    assert by_key["4"].outputs["b"].status is StepStatus.SKIPPED
    assert [k for k, r in by_key.items() if r.succeeded] == [k for k in by_key if k != "4"]


def test_max_failures_stops_starting_rows_and_accounts_for_the_rest(
    llm_server: FakeLLMServer,
) -> None:
    for item in ("item-002", "item-003"):
        llm_server.add_rule(item, status=400)
    engine = engine_for(llm_server, {"a": []}, tenant=make_tenant(max_concurrency=1))
    results = run_all(engine, items(10), max_failures=2)

    assert [r.key for r in results] == [str(i) for i in range(1, 11)]
    statuses = [r.status for r in results]
    assert statuses[:3] == [RowStatus.SUCCEEDED, RowStatus.FAILED, RowStatus.FAILED]
    assert set(statuses[3:]) == {RowStatus.SKIPPED}
    assert results[-1].error == "stopped after 2 failed rows (--max-failures 2)"
    assert len(llm_server.requests) == 3  # no call for a row that did not start
    total = engine.dataset_result
    assert total is not None and not total.success
    assert total.stop_reason == results[-1].error


def test_the_budget_covers_the_whole_dataset(llm_server: FakeLLMServer) -> None:
    # gpt-4o-mini has a price in litellm's cost map ($0.15/$0.60 per million), so the local
    # server's usage costs money: a row about $0.00002, the first call's estimate (256
    # completion tokens, before an answer is seen) about $0.0002. $0.0005 covers some rows
    # of sixty, never all, and never more than the budget.
    budget = 0.0005
    tenant = make_tenant(model="openai/gpt-4o-mini", max_cost_usd=budget, max_concurrency=1)
    engine = engine_for(llm_server, {"a": []}, tenant=tenant)
    results = run_all(engine, items(60))

    succeeded = [r for r in results if r.succeeded]
    skipped = [r for r in results if r.status is RowStatus.SKIPPED]
    assert succeeded and skipped and len(succeeded) + len(skipped) == 60
    assert all(r.cost_usd > 0 for r in succeeded)
    assert all("budget of $0.0005 would be passed" in (r.error or "") for r in skipped)
    assert sum(r.cost_usd for r in results) <= budget  # every call reserved before it started
    assert len(llm_server.requests) == len(succeeded)


def test_a_row_with_wrong_inputs_fails_alone(llm_server: FakeLLMServer) -> None:
    rows = [{"item": "item-001"}, {"thing": "x"}, {"item": "item-003"}]
    results = run_all(engine_for(llm_server, {"a": []}), rows)

    by_key = {r.key: r for r in results}
    assert by_key["2"].status is RowStatus.FAILED
    assert "missing input: item" in (by_key["2"].error or "")
    assert by_key["1"].succeeded and by_key["3"].succeeded


def test_preflight_fails_before_any_row(llm_server: FakeLLMServer) -> None:
    tenant = make_tenant()
    tenant.api_key_env = "DWORKERS_TEST_KEY_NOBODY_SET"
    engine = engine_for(llm_server, {"a": []}, tenant=tenant)
    with pytest.raises(PreflightError):
        run_all(engine, items(3))
    assert llm_server.requests == []


def test_events_name_their_row_and_dataset_calls_are_not_streamed(
    llm_server: FakeLLMServer,
) -> None:
    log = EventLog()
    run_all(engine_for(llm_server, FORK, log=log), items(3))

    first, last = log.events[0], log.events[-1]
    assert isinstance(first, RunStarted) and first.dataset
    assert isinstance(last, DatasetFinished) and last.result.counts[RowStatus.SUCCEEDED] == 3
    assert not any(isinstance(e, RunFinished) for e in log.events)
    step_events = [e for e in log.events if isinstance(e, StepStarted | StepFinished)]
    assert len(step_events) == 18 and all(e.row in {"1", "2", "3"} for e in step_events)
    for event in step_events:
        if isinstance(event, StepStarted) and event.messages:
            item = row_of(event.messages[-1]["content"])
            assert item == f"item-{int(event.row or 0):03d}"
    assert [r.stream for r in llm_server.requests] == [False] * 9


def test_single_runs_stream_only_when_asked(llm_server: FakeLLMServer) -> None:
    for stream in (True, False):
        engine = engine_for(llm_server, {"a": []}, options=RunOptions(stream=stream))
        result = asyncio.run(engine.run({"item": "item-001"}))
        assert result.success and result.outputs["a"].output.startswith("Reply to:")
    assert [r.stream for r in llm_server.requests] == [True, False]


def test_an_interrupted_dataset_accounts_for_every_started_row(
    llm_server: FakeLLMServer,
) -> None:
    llm_server.add_rule("item-", hang=True)
    log = EventLog()
    engine = engine_for(llm_server, CHAIN, log=log, tenant=make_tenant(max_concurrency=3))

    async def interrupt() -> None:
        task = asyncio.create_task(_drain(engine.run_many(items(20))))
        while llm_server.in_flight < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(interrupt(), 30))
    started = [e.row for e in log.events if isinstance(e, RowStarted)]
    finished = [e.result for e in log.events if isinstance(e, RowFinished)]
    assert sorted(r.key for r in finished) == sorted(started) and len(started) >= 3
    assert {r.status for r in finished} == {RowStatus.CANCELLED}
    last = log.events[-1]
    assert isinstance(last, DatasetFinished) and last.result.interrupted


async def _drain(results: AsyncIterator[RowResult]) -> None:
    async for _ in results:
        pass


def test_the_command_line_streams_only_to_a_live_tree(
    llm_server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Off a terminal (as here) nobody watches tokens arrive: the run pays for no stream.
    from typer.testing import CliRunner

    from dworkers.cli import app

    monkeypatch.chdir(tmp_path)
    plan = tmp_path / "plan.yaml"
    plan.write_text("name: two\nsteps:\n  - {step_id: a, name: A, prompt_template: 'Do {x}'}\n"
                    "  - {step_id: b, name: B, depends_on: [a]}\n")
    result = CliRunner().invoke(app, ["run", str(plan), "-i", "x=it", "--model", "openai/m",
                                      "--api-base", llm_server.url])
    assert result.exit_code == 0, result.stderr
    assert [r.stream for r in llm_server.requests] == [False, False]
