"""Dataset runs on a Ray cluster: rows on worker processes, one shared limit, no row lost.

One local cluster (2 CPUs) serves the whole module; every test talks to the suite's own
OpenAI-compatible server through litellm, as production does.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from support import TEST_MODEL, FakeLLMServer, make_plan, make_tenant
from typer.testing import CliRunner

from dworkers.budget import LocalBudget
from dworkers.cli import app
from dworkers.engine import PlanBuilder, RunOptions
from dworkers.events import DatasetFinished, EventLog, ExecutorNotice, RowFinished, RowStarted
from dworkers.executors.local import LocalExecutor
from dworkers.executors.ray import (
    RayExecutor,
    local_cluster,
    runtime_env_for,
    worker_environment,
)
from dworkers.executors.ray_coordinator import SharedBudget, start_coordinator
from dworkers.ratelimit import LocalRateGate
from dworkers.results import Row, RowResult, RowStatus
from dworkers.tenants.config import ModelsConfig
from dworkers.types import WorkerRole

pytestmark = pytest.mark.slow


# The key every node of the module's cluster has in its own environment (as `ray start` on a
# node with the key set would): workers use it when the driver sends none.
NODE_KEY = "sk-test-node-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", NODE_KEY)
        patch.delenv("DWORKERS_RAY_KEYS", raising=False)
        with local_cluster(num_cpus=2) as files:
            patch.undo()  # the cluster keeps the key; this process does not
            yield files


def engine_for(server: FakeLLMServer, graph: dict[str, list[str]], *,
               max_concurrency: int = 4) -> tuple[object, EventLog]:
    plan = make_plan(graph, name="ray-plan", prompt_template="Work on {brief}.")
    events = EventLog()
    engine = PlanBuilder(plan, make_tenant(max_concurrency=max_concurrency), TEST_MODEL,
                         api_base=server.url).build()
    engine.on_event = events
    return engine, events


def rows(count: int) -> list[Row]:
    return [Row(key=f"row-{i}", inputs={"brief": f"brief number {i}"}) for i in range(count)]


def asked(text: str) -> tuple[str, str]:
    """(row, step) a request was for: the row's brief is in the prompt, so is the step."""
    row = re.search(r"Work on brief number (\d+)\.", text)
    step = re.search(r"# Your step: \S+ \((\S+)\)", text)
    return (row.group(1) if row else "?", step.group(1) if step else "?")


async def collect(executor: RayExecutor, engine: object, data: list[Row]) -> list[RowResult]:
    return [result async for result in executor.run_many(engine, data)]


def test_workers_share_one_rate_limit(cluster: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two worker processes run the rows; together they stay under the provider's limit,
    which they learn from its headers (each pacing alone would send twice too fast)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    with FakeLLMServer(rpm=900, burst=1.0) as server:  # 15 calls a second, 15 at once
        engine, events = engine_for(server, {"a": [], "b": ["a"]})
        executor = RayExecutor()
        results = asyncio.run(collect(executor, engine, rows(40)))

    assert Counter(r.key for r in results) == Counter(r.key for r in rows(40))
    assert {r.status for r in results} == {RowStatus.SUCCEEDED}
    run = executor.run
    assert run is not None
    assert [slot.rows_done > 0 for slot in run.slots] == [True, True]  # both workers ran rows
    answered = [r for r in server.requests if r.status == 200]
    limited = [r for r in server.requests if r.status == 429]
    assert len(answered) == 80
    assert len(limited) <= 2, f"{len(limited)} of {len(server.requests)} calls answered 429"
    finished = [e for e in events.events if isinstance(e, DatasetFinished)]
    assert len(finished) == 1 and finished[0].result.calls == len(server.requests)
    assert finished[0].result.rate_limited == len(limited)
    # While Ray starts its workers the view has something to say, until the first row starts.
    seen = [e.text if isinstance(e, ExecutorNotice) else type(e).__name__
            for e in events.events if isinstance(e, ExecutorNotice | RowStarted)]
    assert seen[:3] == ["starting Ray: 2 workers…", "", "RowStarted"]



def test_a_ray_runs_trace_has_one_chat_span_per_attempt(cluster: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers send their events (each attempt's ``AttemptFinished`` among them) to the driver,
    whose tracer builds every span: each row's trace holds its steps and one ``chat`` span per
    call the server saw, retries included."""
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra (in the test extra)")
    from test_tracing import Traced

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    traced = Traced()
    with FakeLLMServer() as server:
        server.add_rule("Work on brief number 2.", status=500, times=1)  # row-2's a: retried
        plan = make_plan({"a": [], "b": ["a"]}, name="ray-plan", prompt_template="Work on {brief}.")
        engine = PlanBuilder(plan, make_tenant(retry_max=1), TEST_MODEL, api_base=server.url,
                             options=RunOptions(retry_base_delay=0.01), on_event=traced).build()
        results = asyncio.run(collect(RayExecutor(), engine, rows(4)))
        calls = len(server.requests)

    assert {r.status for r in results} == {RowStatus.SUCCEEDED}
    assert len(traced.named("chat")) == calls == 9
    roots = {s.attributes["dworkers.row"]: s for s in traced.named("invoke_workflow")}
    assert sorted(roots) == [r.key for r in rows(4)]
    for result in results:
        root = roots[result.key]
        for step_id, step in result.outputs.items():
            agent = traced.agent(step_id, result.key)
            assert agent.parent is not None and agent.parent.span_id == root.context.span_id
            assert agent.context.trace_id == root.context.trace_id
            chats = traced.children(agent, "chat")
            assert len(chats) == step.attempts == (2 if (result.key, step_id) == ("row-2", "a")
                                                   else 1)
            assert sum(c.attributes["gen_ai.usage.input_tokens"] for c in chats) == (
                step.prompt_tokens)
            for chat in chats:
                assert agent.start_time <= chat.start_time <= chat.end_time <= agent.end_time


PLAN = """\
name: ray-cli-plan
description: Three steps in a chain, one call each
inputs:
  brief:
    description: what to work on
steps:
"""


def write_dataset(folder: Path, count: int) -> tuple[Path, Path]:
    plan = folder / "plan.yaml"
    steps = "".join(f"  - step_id: {s}\n    name: {s.upper()}\n    worker_role: analyst\n"
                    f"    prompt_template: \"Work on {{brief}}.\"\n"
                    + (f"    depends_on: [{prev}]\n" if prev else "")
                    for s, prev in (("a", ""), ("b", "a"), ("c", "b")))
    plan.write_text(PLAN + steps, encoding="utf-8")
    data = folder / "rows.csv"
    data.write_text("id,brief\n" + "".join(f"row-{i},brief number {i}\n" for i in range(count)),
                    encoding="utf-8")
    return plan, data


def kill_after(server: FakeLLMServer, calls: int, name_part: str,
               kill: Callable[[Any], None]) -> None:
    """``kill`` the run's first actor whose name holds ``name_part`` once the server has seen
    ``calls`` calls."""
    if not server.wait_for_requests(calls, timeout=120):
        return
    for _ in range(200):  # bounded: the actors are named once the run starts them
        names = sorted(n for n in ray.util.list_named_actors() if name_part in n)
        if names:
            kill(ray.get_actor(names[0]))
            return
        time.sleep(0.05)


def sigkill(actor: Any) -> None:
    os.kill(ray.get(actor.pid.remote()), signal.SIGKILL)


def test_a_killed_worker_loses_no_row(cluster: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL a worker mid-run through the command line: its rows run again elsewhere, every
    row is in results.jsonl exactly once, only calls that were in flight are paid again
    (finished steps are reused), and Ray's own report of the death stays off stdout."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    monkeypatch.chdir(tmp_path)
    plan, data = write_dataset(tmp_path, 24)
    with FakeLLMServer(latency=0.2) as server:
        killer = threading.Thread(target=kill_after, args=(server, 12, "-worker-", sigkill),
                                  daemon=True)
        killer.start()
        result = CliRunner().invoke(app, [
            "run", str(plan), "--data", str(data), "--executor", "ray", "--model", TEST_MODEL,
            "--api-base", server.url, "--max-concurrency", "3", "--out", "out", "--json", "-q"])
        killer.join(timeout=130)

    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)  # nothing but the summary on stdout
    lines = [json.loads(line) for line in
             (Path(summary["out_dir"]) / "results.jsonl").read_text().splitlines()]
    assert sorted(line["key"] for line in lines) == sorted(f"row-{i}" for i in range(24))
    assert {line["status"] for line in lines} == {"succeeded"}
    calls = Counter(asked(r.text) for r in server.requests)
    assert set(calls) == {(str(i), s) for i in range(24) for s in "abc"}  # every row's steps
    repeated = len(server.requests) - 24 * 3
    # The dead worker had at most 3 calls in flight (its max concurrency), plus answers it had
    # not reported yet; re-running its rows from scratch would repeat many more.
    assert 1 <= repeated <= 6, f"{repeated} calls repeated"


def test_a_killed_coordinator_interrupts_the_run_and_fails_no_row(
        cluster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The coordinator killed mid-run: the run ends interrupted (exit 130) saying why, no row
    is failed for it (rows in flight end cancelled, rows not started are not reported), and
    --resume runs exactly the rows that did not succeed, reusing the rest."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    monkeypatch.chdir(tmp_path)
    plan, data = write_dataset(tmp_path, 40)
    common = ["--model", TEST_MODEL, "--max-concurrency", "3", "--out", "out", "--json", "-q"]
    with FakeLLMServer(latency=0.2) as server:
        killer = threading.Thread(target=kill_after,
                                  args=(server, 45, "-coordinator", ray.kill), daemon=True)
        killer.start()
        first = CliRunner().invoke(app, ["run", str(plan), "--data", str(data), "--executor",
                                         "ray", "--api-base", server.url, *common])
        killer.join(timeout=130)
        before = len(server.requests)
        resumed = CliRunner().invoke(app, ["run", "--resume", "last", "--api-base", server.url,
                                           *common])
        again = {asked(r.text)[0] for r in server.requests[before:]}

    assert first.exit_code == 130, first.stderr
    summary = json.loads(first.stdout)
    assert summary["interrupted"] and "coordinator died" in summary["stop_reason"]
    lines = [json.loads(line) for line in
             (Path(summary["out_dir"]) / "results.jsonl").read_text().splitlines()]
    assert {line["status"] for line in lines} <= {"succeeded", "cancelled"}
    assert "internal error" not in first.stderr + json.dumps(lines)
    done = {line["key"] for line in lines if line["status"] == "succeeded"}
    assert 0 < len(done) < 40 and len(lines) < 40  # rows not started are left for --resume
    assert resumed.exit_code == 0, resumed.stderr
    final = json.loads(resumed.stdout)
    assert final["counts"]["succeeded"] == 40
    assert again == {key.removeprefix("row-") for key in
                     {f"row-{i}" for i in range(40)} - done}  # finished rows are not paid again


def test_resume_on_the_cluster_runs_only_what_did_not_succeed(
        cluster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local run where two rows fail, resumed with --executor ray: only those rows' calls
    are made again, on the cluster."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    monkeypatch.chdir(tmp_path)
    plan, data = write_dataset(tmp_path, 8)
    common = ["--model", TEST_MODEL, "--out", "out", "--json", "-q"]
    with FakeLLMServer() as server:
        for row in (3, 7):
            server.add_rule(f"Work on brief number {row}.", status=400, times=1)
        first = CliRunner().invoke(app, ["run", str(plan), "--data", str(data),
                                         "--api-base", server.url, *common])
        assert first.exit_code == 1, first.stderr
        before = len(server.requests)
        resumed = CliRunner().invoke(app, ["run", "--resume", "last", "--executor", "ray",
                                           "--api-base", server.url, *common])
        again = [asked(r.text) for r in server.requests[before:]]

    assert resumed.exit_code == 0, resumed.stderr
    assert sorted(again) == sorted((row, step) for row in ("3", "7") for step in "abc")


def test_max_failures_stops_the_whole_cluster(cluster: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """--max-failures counts failed rows across every worker; once reached no row starts, and
    every row is still accounted for once (the unstarted ones skipped, for --resume)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    with FakeLLMServer(latency=0.1) as server:
        for row in range(0, 40, 2):  # every even row fails
            server.add_rule(f"Work on brief number {row}.", status=400)
        engine, _ = engine_for(server, {"a": []}, max_concurrency=2)

        async def run() -> list[RowResult]:
            return [r async for r in RayExecutor().run_many(engine, rows(40), max_failures=3)]

        results = asyncio.run(run())

    assert sorted(r.key for r in results) == sorted(r.key for r in rows(40))
    statuses = Counter(r.status for r in results)
    assert statuses[RowStatus.FAILED] >= 3
    assert statuses[RowStatus.SKIPPED] > 0
    assert set(statuses) <= {RowStatus.SUCCEEDED, RowStatus.FAILED, RowStatus.SKIPPED}
    skipped = {r.error for r in results if r.status is RowStatus.SKIPPED}
    assert skipped == {"stopped after 3 failed rows (--max-failures 3)"}
    assert len(server.requests) == 40 - statuses[RowStatus.SKIPPED]  # skipped rows never called


def test_the_budget_is_shared_by_every_worker(cluster: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The tenant's budget covers the whole cluster: two workers together stop at it (each
    with a budget of its own would spend about twice as much)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    with FakeLLMServer(latency=0.3) as server:  # slow enough that both workers are calling
        # gpt-4o-mini has a price in litellm's cost map: the local server's usage costs money.
        plan = make_plan({"a": []}, name="ray-plan", prompt_template="Work on {brief}.")
        probe = PlanBuilder(plan, make_tenant(model="openai/gpt-4o-mini"),
                            api_base=server.url).build()

        async def one() -> list[RowResult]:
            return [r async for r in LocalExecutor().run_many(probe, rows(1))]

        per_call = asyncio.run(one())[0].cost_usd
        assert per_call > 0
        budget = 16 * per_call
        tenant = make_tenant(model="openai/gpt-4o-mini", max_concurrency=2, max_cost_usd=budget)
        engine = PlanBuilder(plan, tenant, api_base=server.url).build()
        results = asyncio.run(collect(RayExecutor(), engine, rows(40)))

    assert sorted(r.key for r in results) == sorted(r.key for r in rows(40))
    spent = sum(r.cost_usd for r in results)
    # Calls start while spent + held back + expected ≤ budget; a worker's first calls do not
    # know their cost yet (2 workers × 2 at once): at most 4 more. A budget per worker would
    # let both spend it.
    assert budget - 2 * per_call <= spent <= budget + 4 * per_call
    skipped = [r for r in results if r.status is RowStatus.SKIPPED]
    assert skipped and all("budget of $" in (r.error or "") for r in skipped)


def test_the_shared_budget_says_when_a_commit_spends_it(cluster: Path) -> None:
    """A worker's budget answers ``commit`` as the Budget protocol says: once what was spent
    reaches the limit, why no more calls may start (the engine stops starting steps then)."""
    coordinator = start_coordinator(LocalRateGate(), LocalBudget(1.0), name="budget-probe")
    budget = SharedBudget(coordinator, unlimited=False)

    async def spend() -> list[str | None]:
        return [await budget.reserve(0.4), await budget.commit(0.4, 0.5),
                await budget.commit(0.0, 0.6)]

    try:
        assert asyncio.run(spend()) == [None, None, "budget of $1 reached ($1.1000 spent)"]
    finally:
        ray.kill(coordinator)


def test_secrets_reach_workers_but_not_rays_files(cluster: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The key is set after the cluster started: workers get it from their Ray environment,
    and no file Ray writes (logs included) contains it."""
    key = "sk-test-" + secrets.token_hex(12)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    with FakeLLMServer() as server:
        engine, _ = engine_for(server, {"a": []})
        results = asyncio.run(collect(RayExecutor(), engine, rows(4)))
    assert {r.status for r in results} == {RowStatus.SUCCEEDED}
    assert {r.headers.get("authorization") for r in server.requests} == {f"Bearer {key}"}
    leaks = []
    for path in cluster.rglob("*"):
        if path.is_file() and not path.is_socket():
            try:
                if key.encode() in path.read_bytes():
                    leaks.append(str(path.relative_to(cluster)))
            except OSError:
                continue
    assert leaks == []



def test_worker_env_keys_never_leave_the_driver(cluster: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """DWORKERS_RAY_KEYS=worker-env: the driver's key is in no worker's Ray environment (which
    the cluster's metadata shows to anyone who can read it) nor in any file Ray writes; the
    workers call with the key their node was started with."""
    driver_key = "sk-test-driver-" + secrets.token_hex(12)
    monkeypatch.setenv("OPENAI_API_KEY", driver_key)
    monkeypatch.setenv("DWORKERS_RAY_KEYS", "worker-env")
    with FakeLLMServer() as server:
        engine, _ = engine_for(server, {"a": []})
        executor = RayExecutor()
        results = asyncio.run(collect(executor, engine, rows(4)))
    assert {r.status for r in results} == {RowStatus.SUCCEEDED}
    assert {r.headers.get("authorization") for r in server.requests} == {f"Bearer {NODE_KEY}"}
    assert executor.run is not None
    assert driver_key in json.dumps(runtime_env_for(engine, "send"))  # what the default sends
    assert driver_key not in json.dumps(executor.run.runtime_env)
    leaks = [str(path) for path in cluster.rglob("*") if path.is_file()
             and not path.is_socket() and driver_key.encode() in path.read_bytes()]
    assert leaks == []


def test_an_unknown_keys_mode_is_a_usage_error(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DWORKERS_RAY_KEYS", "worker_env")
    write_dataset(tmp_path, 2)
    result = CliRunner().invoke(app, ["run", "plan.yaml", "--data", "rows.csv", "--mock",
                                      "--executor", "ray"])
    assert result.exit_code == 2, result.stderr
    assert "DWORKERS_RAY_KEYS='worker_env'" in result.stderr and "worker-env" in result.stderr
    assert "Traceback" not in result.stderr


def test_interrupting_cancels_cluster_work_and_keeps_finished_rows(
        cluster: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (the run's task cancelled): rows in flight end cancelled, finished rows stay
    reported, the run says it was interrupted, and the cluster sends nothing more."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    with FakeLLMServer(latency=0.5) as server:
        engine, events = engine_for(server, {"a": [], "b": ["a"]}, max_concurrency=2)
        executor = RayExecutor()
        seen: list[RowResult] = []

        async def consume() -> None:
            async for result in executor.run_many(engine, rows(40)):
                seen.append(result)

        async def run() -> None:
            task = asyncio.create_task(consume())
            while len(seen) < 2 and not task.done():  # bounded: 40 rows
                await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(run())
        sent = len(server.requests)
        server.wait_for_requests(sent + 1, timeout=1.0)  # nothing more may arrive
        assert len(server.requests) == sent

    finished = [e.result for e in events.events if isinstance(e, RowFinished)]
    assert len({r.key for r in finished}) == len(finished)  # each row at most once
    statuses = Counter(r.status for r in finished)
    assert statuses[RowStatus.SUCCEEDED] >= 2 and statuses[RowStatus.CANCELLED] >= 1
    assert set(statuses) <= {RowStatus.SUCCEEDED, RowStatus.CANCELLED}
    assert len(finished) < 40  # rows never started are left for --resume
    done = [e for e in events.events if isinstance(e, DatasetFinished)]
    assert len(done) == 1 and done[0].result.interrupted



def test_workers_get_the_providers_settings_and_nothing_else() -> None:
    plan = make_plan({"a": [], "b": ["a"]}, roles={"b": WorkerRole.RESEARCHER})
    tenant = make_tenant(model="openai/gpt-4o-mini").model_copy(update={
        "api_key_env": "ACME_LLM_SECRET",
        "models": ModelsConfig(default="openai/gpt-4o-mini",
                               researcher="anthropic/claude-3-5-sonnet-latest")})
    engine = PlanBuilder(plan, tenant).build()
    environ = {
        "OPENAI_API_KEY": "k1", "OPENAI_API_BASE": "http://gateway", "ANTHROPIC_API_KEY": "k2",
        "ACME_LLM_SECRET": "k3", "DWORKERS_MOCK_LATENCY": "0", "HTTPS_PROXY": "http://proxy",
        "DWORKERS_HOME": "/home/me/.local/share/dworkers", "GITHUB_TOKEN": "ghp_x",
        "AWS_SECRET_ACCESS_KEY": "aws", "GROQ_API_KEY": "k4", "PATH": "/usr/bin", "HOME": "/root",
    }
    assert worker_environment(engine, environ) == {
        "ACME_LLM_SECRET": "k3", "ANTHROPIC_API_KEY": "k2", "DWORKERS_MOCK_LATENCY": "0",
        "HTTPS_PROXY": "http://proxy", "OPENAI_API_BASE": "http://gateway",
        "OPENAI_API_KEY": "k1"}



@pytest.mark.parametrize(("args", "message"), [
    (["--executor", "ray"], "--executor need a dataset"),
    (["--data", "rows.csv", "--executor", "rya"], "unknown executor 'rya'"),
    (["--data", "rows.csv", "--ray-address", "10.0.0.1:6379"],
     "--ray-address only applies to --executor ray"),
], ids=["no data", "unknown executor", "address without ray"])
def test_executor_mistakes_are_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            args: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    write_dataset(tmp_path, 2)
    result = CliRunner().invoke(app, ["run", "plan.yaml", "--mock", *args])
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# --- nothing imports Ray unless asked -------------------------------------------------------

PROBE = """
import json, sys
sys.argv = ["dworkers", *json.loads(sys.argv[1])]
from dworkers.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
ray = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
sys.stderr.write("PROBE " + json.dumps({"code": code, "ray": ray[:3]}) + "\\n")
"""


@pytest.mark.parametrize("args", [
    ["--help"], ["list"], ["run", "--help"],
    ["run", "plan.yaml", "--data", "rows.csv", "--mock", "-q"],  # a local dataset run
], ids=lambda args: " ".join(args))
def test_ray_is_not_imported_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          args: list[str]) -> None:
    write_dataset(tmp_path, 3)
    monkeypatch.setenv("DWORKERS_MOCK_LATENCY", "0")
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True,
                            text=True, timeout=120, check=False, cwd=tmp_path)
    probe = next(line for line in result.stderr.splitlines() if line.startswith("PROBE "))
    assert json.loads(probe.removeprefix("PROBE ")) == {"code": 0, "ray": []}, result.stderr
