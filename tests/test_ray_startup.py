"""A private Ray cluster's start-up: its workers start with it and are the ones that run the
rows, keys reach them without a Ray environment of their own when they have them already, and
the run says where its start-up went.

Each test starts (and stops) its own private cluster, as the command line does, so no cluster
may be running in this process: the tests of ``test_ray`` share one that ends with its module.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest
import ray
from support import TEST_MODEL, FakeLLMServer, make_plan, make_tenant

from dworkers.engine import PlanBuilder
from dworkers.events import EventLog
from dworkers.executors.ray import RayExecutor, runtime_env_for
from dworkers.results import Row, RowResult, RowStatus

pytestmark = pytest.mark.slow

ROWS = [Row(key=f"row-{i}", inputs={"brief": f"brief number {i}"}) for i in range(6)]


def engine_for(server: FakeLLMServer) -> object:
    plan = make_plan({"a": [], "b": ["a"]}, name="ray-startup-plan",
                     prompt_template="Work on {brief}.")
    engine = PlanBuilder(plan, make_tenant(max_concurrency=4), TEST_MODEL,
                         api_base=server.url).build()
    engine.on_event = EventLog()
    return engine


async def collect(executor: RayExecutor, engine: object) -> list[RowResult]:
    return [result async for result in executor.run_many(engine, ROWS)]


@pytest.fixture(autouse=True)
def no_cluster_running() -> None:
    if ray.is_initialized():
        ray.shutdown()


def test_a_private_clusters_workers_start_with_it_and_run_the_rows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers start with the cluster, before the run is known, import litellm then, and
    run the rows; the key they call with is the one they inherited from this process (no Ray
    environment of their own, which would need new worker processes). The run's start-up is
    counted from Ray's own start and told part by part."""
    key = "sk-test-" + secrets.token_hex(12)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.delenv("DWORKERS_RAY_KEYS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    executor = RayExecutor(connect=True)
    standby = list(executor.standby)
    assert len(standby) == 2  # one per CPU of this machine's private cluster
    with FakeLLMServer() as server:
        engine = engine_for(server)
        results = asyncio.run(collect(executor, engine))

    assert sorted(r.key for r in results) == sorted(r.key for r in ROWS)
    assert {r.status for r in results} == {RowStatus.SUCCEEDED}
    assert {r.headers.get("authorization") for r in server.requests} == {f"Bearer {key}"}
    run = executor.run
    assert run is not None and run.runtime_env == {}
    assert [slot.handle for slot in run.slots] == standby
    assert not ray.is_initialized()  # the private cluster ended with the run
    result = run.result
    parts = result.startup_parts or {}
    assert {"ray.init", "run prepared", "workers built", "litellm ready in workers",
            "first rows back"} <= set(parts)
    assert parts["command started"] < 0 < parts["ray.init"]  # Ray began after the command
    assert result.startup_ms == pytest.approx(parts["first rows back"] * 1000, abs=1.0)


def test_a_key_changed_after_the_cluster_started_is_sent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A key set after the private cluster started is not the one its workers inherited: it
    is sent in their Ray environment, alone, and the workers started with the cluster give
    way to workers that have it."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-before-" + secrets.token_hex(12))
    monkeypatch.delenv("DWORKERS_RAY_KEYS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    executor = RayExecutor(connect=True)
    standby = list(executor.standby)
    key = "sk-test-after-" + secrets.token_hex(12)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    with FakeLLMServer() as server:
        engine = engine_for(server)
        results = asyncio.run(collect(executor, engine))

    assert {r.status for r in results} == {RowStatus.SUCCEEDED}
    assert {r.headers.get("authorization") for r in server.requests} == {f"Bearer {key}"}
    run = executor.run
    assert run is not None
    assert run.runtime_env == {"env_vars": {"OPENAI_API_KEY": key}}
    assert not {slot.handle for slot in run.slots} & set(standby)


def test_workers_are_sent_only_the_variables_they_lack() -> None:
    plan = make_plan({"a": []})
    engine = PlanBuilder(plan, make_tenant(model="openai/gpt-4o-mini")).build()
    environ = {"OPENAI_API_KEY": "k1", "OPENAI_API_BASE": "http://gateway", "PATH": "/usr/bin"}
    assert runtime_env_for(engine, "send", environ, inherited=dict(environ)) == {}
    assert runtime_env_for(engine, "send", environ, inherited={"OPENAI_API_KEY": "k0"}) == {
        "env_vars": {"OPENAI_API_KEY": "k1", "OPENAI_API_BASE": "http://gateway"}}
    assert runtime_env_for(engine, "send", environ) == {
        "env_vars": {"OPENAI_API_KEY": "k1", "OPENAI_API_BASE": "http://gateway"}}
    assert runtime_env_for(engine, "worker-env", environ, inherited={}) == {}
