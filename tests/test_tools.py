"""Tools through MCP: an MCP server the suite starts itself (tests/mcp_tool_server.py, over
stdio, and once over streamable HTTP) and the local model server answering with tool calls.

Concurrency is proven with the tool server's own timestamps; every wait is bounded by count or
by an event the servers report, never by the wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import FakeLLMServer, llm_server, make_plan, make_tenant, marker

from dworkers.engine import PlanBuilder, RunOptions
from dworkers.events import EventLog, StepProgress
from dworkers.results import RunResult, StepStatus
from dworkers.tenants.config import McpServerConfig, TenantConfig
from dworkers.tools import _child_pids

pytest.importorskip("mcp")

__all__ = ["llm_server"]

TOOL_SERVER = Path(__file__).parent / "mcp_tool_server.py"


def tool_tenant(log: Path, *, url: str | None = None, **server: Any) -> TenantConfig:
    if url is None:
        config = McpServerConfig(command=sys.executable,
                                 args=[str(TOOL_SERVER), "--log", str(log)], **server)
    else:
        config = McpServerConfig(url=url, **server)
    tenant = make_tenant()
    return tenant.model_copy(update={"mcp_servers": {"regs": config}})


def run_with_tools(server: FakeLLMServer, tenant: TenantConfig, tools: list[str],
                   log: EventLog | None = None, **step_options: Any) -> RunResult:
    plan = make_plan({"a": []}, tools=tools, **step_options)
    engine = PlanBuilder(plan, tenant, api_base=server.url,
                         options=RunOptions(retry_base_delay=0.05), on_event=log).build()
    return asyncio.run(engine.run({}))


def calls_logged(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_a_tool_call_is_run_and_its_result_sent_back(llm_server: FakeLLMServer,
                                                     tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    llm_server.add_rule(marker("a"), tool_calls=[
        {"name": "regs__lookup", "arguments": {"query": "ADR-7"}}])
    events = EventLog()
    result = run_with_tools(llm_server, tool_tenant(log), ["regs"], events)

    step = result.outputs["a"]
    assert step.status is StepStatus.SUCCEEDED, step.error
    assert step.output == "Tool results: regulation ADR-7: applies to all shipments"
    [call] = step.tool_calls
    assert (call.server, call.tool, call.arguments, call.error) == (
        "regs", "lookup", {"query": "ADR-7"}, None)
    assert call.result_chars == len("regulation ADR-7: applies to all shipments")
    assert call.result_digest
    first, second = llm_server.requests
    assert [t["function"]["name"] for t in first.body["tools"]] == [
        "regs__lookup", "regs__slow", "regs__hang", "regs__big", "regs__die"]
    assert second.messages[-1]["role"] == "tool"
    assert "calling regs.lookup (1/10)" in [
        e.text for e in events.events if isinstance(e, StepProgress)]
    assert [c["tool"] for c in calls_logged(log)] == ["lookup"]
    assert step.cache_key is None  # a tool's answer may change: never cached unless pure


def test_tools_asked_together_run_at_the_same_time(llm_server: FakeLLMServer,
                                                   tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    llm_server.add_rule(marker("a"), tool_calls=[
        {"name": "regs__slow", "arguments": {"seconds": 1, "label": str(n)}} for n in range(3)])
    result = run_with_tools(llm_server, tool_tenant(log), ["regs.slow"])

    assert result.success, result.outputs["a"].error
    calls = calls_logged(log)
    assert len(calls) == 3
    # Each started before any other ended: the three overlapped on the server's own clock.
    assert max(c["start"] for c in calls) < min(c["end"] for c in calls)
    assert len(result.outputs["a"].tool_calls) == 3
    assert [t["function"]["name"] for t in llm_server.requests[0].body["tools"]] == [
        "regs__slow"]


def test_more_tool_calls_than_allowed_fail_the_step_clearly(llm_server: FakeLLMServer,
                                                            tmp_path: Path) -> None:
    llm_server.add_rule(marker("a"), tool_calls=[
        {"name": "regs__lookup", "arguments": {"query": "x"}}] * 2, tool_rounds=100)
    tenant = tool_tenant(tmp_path / "calls.jsonl")
    tenant = tenant.model_copy(update={"limits": tenant.limits.model_copy(
        update={"max_tool_calls": 3})})
    result = run_with_tools(llm_server, tenant, ["regs"])

    step = result.outputs["a"]
    assert step.status is StepStatus.FAILED
    assert "more than 3 tool calls" in (step.error or "")
    assert "limits.max_tool_calls" in (step.error or "")
    assert len(llm_server.requests) == 2  # 2 calls, then 2 more would pass 3: no third turn
    assert [c.tool for c in step.tool_calls] == ["lookup", "lookup"]  # recorded all the same
    assert len(calls_logged(tmp_path / "calls.jsonl")) == 2


def test_a_steps_own_max_tool_calls_overrides_the_tenants(llm_server: FakeLLMServer,
                                                         tmp_path: Path) -> None:
    llm_server.add_rule(marker("a"), tool_calls=[
        {"name": "regs__lookup", "arguments": {"query": "x"}}] * 2, tool_rounds=100)
    result = run_with_tools(llm_server, tool_tenant(tmp_path / "calls.jsonl"), ["regs"],
                            max_tool_calls=5)  # the tenant allows 10

    step = result.outputs["a"]
    assert step.status is StepStatus.FAILED
    assert "more than 5 tool calls" in (step.error or "")
    assert "the step's max_tool_calls" in (step.error or "")
    assert len(llm_server.requests) == 3  # 2 + 2 calls made, 2 more would pass 5
    assert len(step.tool_calls) == 4


def test_a_hung_tool_times_out_and_the_model_is_told(llm_server: FakeLLMServer,
                                                     tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    llm_server.add_rule(marker("a"), tool_calls=[{"name": "regs__hang", "arguments": {}}])
    result = run_with_tools(llm_server, tool_tenant(log, timeout_seconds=0.5), ["regs"])

    step = result.outputs["a"]
    assert step.status is StepStatus.SUCCEEDED
    [call] = step.tool_calls
    assert "no answer within 0.5s" in (call.error or "")
    told = llm_server.requests[1].messages[-1]
    assert told["role"] == "tool" and "no answer within 0.5s" in told["content"]


def test_a_dead_server_fails_the_call_not_the_run(llm_server: FakeLLMServer,
                                                  tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    llm_server.add_rule(marker("a"), tool_calls=[{"name": "regs__die", "arguments": {}}])
    result = run_with_tools(llm_server, tool_tenant(log, timeout_seconds=30), ["regs"])

    [call] = result.outputs["a"].tool_calls
    assert call.error
    assert result.outputs["a"].status is StepStatus.SUCCEEDED  # the model answered anyway


def test_a_large_result_is_capped_head_and_tail_and_escape_codes_stripped(
        llm_server: FakeLLMServer, tmp_path: Path) -> None:
    llm_server.add_rule(marker("a"), tool_calls=[
        {"name": "regs__big", "arguments": {"size": 50_000}}])
    result = run_with_tools(llm_server, tool_tenant(tmp_path / "c.jsonl",
                                                    max_result_chars=1000), ["regs"])

    sent = llm_server.requests[1].messages[-1]["content"]
    assert sent.startswith("HEADxxx") and sent.endswith("xxxTAIL")
    assert "\x1b" not in sent and "[31m" not in sent
    assert "characters cut" in sent
    assert len(sent) < 1100
    assert result.outputs["a"].tool_calls[0].result_chars == len(sent)


def test_no_server_process_is_left_after_a_run(llm_server: FakeLLMServer,
                                               tmp_path: Path) -> None:
    llm_server.add_rule(marker("a"), tool_calls=[{"name": "regs__lookup",
                                                  "arguments": {"query": "q"}}])
    before = _child_pids()
    run_with_tools(llm_server, tool_tenant(tmp_path / "c.jsonl"), ["regs"])
    pids = {c["pid"] for c in calls_logged(tmp_path / "c.jsonl")}
    assert pids and all(not _alive(pid) for pid in pids)
    assert _child_pids() <= before


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; it is only waiting to be reaped.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def test_tools_through_streamable_http(llm_server: FakeLLMServer, tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    with subprocess.Popen([sys.executable, str(TOOL_SERVER), "--http", "--log", str(log)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            _wait_for_port(url)
            llm_server.add_rule(marker("a"), tool_calls=[
                {"name": "regs__lookup", "arguments": {"query": "HTTP-1"}}])
            result = run_with_tools(llm_server, tool_tenant(log, url=url), ["regs.lookup"])
            assert result.success, result.outputs["a"].error
            assert result.outputs["a"].output.endswith("regulation HTTP-1: applies to all "
                                                       "shipments")
        finally:
            proc.terminate()


def _wait_for_port(url: str) -> None:
    """Until the server accepts connections: it prints its URL before it binds."""
    import socket
    import time
    from urllib.parse import urlsplit

    address = urlsplit(url)
    for _ in range(500):  # bounded by count
        with socket.socket() as probe:
            if probe.connect_ex((address.hostname or "", address.port or 0)) == 0:
                return
        time.sleep(0.02)


# --- the command line ------------------------------------------------------------------------

TOOLED_PLAN = """\
name: tooled
description: One step that looks things up
steps:
  - step_id: look
    name: LOOK
    worker_role: researcher
    tools: [{tools}]
"""


def tooled_files(tmp_path: Path, tools: str = "regs.lookup") -> tuple[Path, Path, Path]:
    log = tmp_path / "calls.jsonl"
    tenant = tmp_path / "tooled.yaml"
    tenant.write_text(
        "id: tooled\nmcp_servers:\n  regs:\n"
        f"    command: {json.dumps(sys.executable)}\n"
        f"    args: [{json.dumps(str(TOOL_SERVER))}, --log, {json.dumps(str(log))}]\n"
        "    timeout_seconds: 600\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text(TOOLED_PLAN.format(tools=tools))
    return plan, tenant, log


def test_validate_and_dry_run_locate_a_server_the_tenant_does_not_declare(
        tmp_path: Path) -> None:
    from support import invoke

    plan, tenant, _ = tooled_files(tmp_path, "regs.lookup, nowhere.lookup")
    code, _, stderr = invoke("validate", str(plan), "--tenant", str(tenant))
    assert code == 2
    assert f"{plan}:7:26:" in stderr and "'nowhere'" in stderr and "use one of: regs" in stderr
    code, _, stderr = invoke("run", str(plan), "--tenant", str(tenant), "--dry-run")
    assert code == 2 and f"{plan}:7:26:" in stderr and "Traceback" not in stderr
    code, _, _ = invoke("validate", str(plan))  # without a tenant: nothing to check against
    assert code == 0


def test_the_tools_command_lists_each_servers_tools_and_parameters(tmp_path: Path) -> None:
    from support import invoke

    _, tenant, _ = tooled_files(tmp_path)
    code, stdout, _ = invoke("tools", "--tenant", str(tenant))
    assert code == 0, stdout
    assert "regs (5 tools)" in stdout
    assert "regs.lookup(query: string) — Look up a regulation by its name." in stdout
    assert "regs.slow(seconds?: number, label?: string)" in stdout


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_a_long_tool_call_ends_the_run_and_its_server(
        llm_server: FakeLLMServer, tmp_path: Path, sig: int) -> None:
    plan, tenant, log = tooled_files(tmp_path, "regs.hang")
    llm_server.add_rule(marker("look"), tool_calls=[{"name": "regs__hang", "arguments": {}}])
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key",
           "DWORKERS_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dworkers.cli", "run", str(plan), "--tenant", str(tenant),
         "--model", "openai/test-model", "--api-base", llm_server.url,
         "--out", str(tmp_path / "runs")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(3000):  # bounded by count: until the tool server says the call began
            if calls_logged(log):
                break
            proc_done = proc.poll() is not None
            assert not proc_done, proc.communicate()
            import time

            time.sleep(0.02)
        [started] = calls_logged(log)
        assert started["tool"] == "hang-started"
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    assert proc.returncode == 130, stderr
    assert not _alive(started["pid"])  # the server did not outlive the run


RESUMABLE_PLAN = """\
name: tooled
description: A step that looks things up, then one that writes
steps:
  - step_id: look
    name: LOOK
    worker_role: researcher
    tools: [regs.lookup]
  - step_id: write
    name: WRITE
    depends_on: [look]
"""


def test_a_resumed_run_reuses_a_step_without_calling_its_tools_again(
        llm_server: FakeLLMServer, tmp_path: Path) -> None:
    from support import invoke

    plan, tenant, log = tooled_files(tmp_path)
    plan.write_text(RESUMABLE_PLAN)
    llm_server.add_rule(marker("look"), tool_calls=[
        {"name": "regs__lookup", "arguments": {"query": "R-9"}}])
    refusal = llm_server.add_rule(marker("write"), status=400, error_message="boom")
    common = ("--tenant", str(tenant), "--model", "openai/test-model", "--api-base",
              llm_server.url, "--out", str(tmp_path / "runs"))
    code, _, stderr = invoke("run", str(plan), *common)
    assert code == 1, stderr
    assert [c["tool"] for c in calls_logged(log)] == ["lookup"]
    [run_dir] = (tmp_path / "runs").iterdir()
    recorded = json.loads((run_dir / "run.json").read_text())
    [call] = recorded["outputs"]["look"]["tool_calls"]
    assert (call["server"], call["tool"], call["arguments"]) == ("regs", "lookup",
                                                                 {"query": "R-9"})
    llm_server.clear_rules()
    assert refusal.matched == 1
    import sqlite3

    from dworkers.history.storage import history_path

    with contextlib.closing(sqlite3.connect(history_path())) as db:
        rows = db.execute("SELECT step_id, server, tool, arguments, error "
                          "FROM tool_calls").fetchall()
    assert rows == [("look", "regs", "lookup", '{"query": "R-9"}', None)]

    code, stdout, stderr = invoke("run", str(plan), "--resume", "last", "--json", *common)
    assert code == 0, stderr
    assert [c["tool"] for c in calls_logged(log)] == ["lookup"]  # not called again
    data = json.loads(stdout)
    assert data["outputs"]["look"]["cached"] is True
    # The reused step's calls stay on the resume's record: its summary, run.json and history.
    assert [c["tool"] for c in data["outputs"]["look"]["tool_calls"]] == ["lookup"]
    resumed_dir = tmp_path / "runs" / data["run_id"]
    resumed = json.loads((resumed_dir / "run.json").read_text())
    assert [c["arguments"] for c in resumed["outputs"]["look"]["tool_calls"]] == [
        {"query": "R-9"}]
    with contextlib.closing(sqlite3.connect(history_path())) as db:
        assert db.execute("SELECT step_id, tool FROM tool_calls WHERE run_id = ?",
                          (data["run_id"],)).fetchall() == [("look", "lookup")]
    appendix = (run_dir / "report.md").read_text().split("## Appendix: tool calls")[1]
    assert '| look | regs.lookup | {"query": "R-9"} |' in appendix


# --- the tenant's servers, and sharing them --------------------------------------------------


def test_tenant_server_mistakes_are_located(tmp_path: Path) -> None:
    from dworkers import loader
    from dworkers.errors import ProblemsError

    tenant = tmp_path / "t.yaml"
    tenant.write_text("id: t\nmcp_servers:\n  both:\n    command: x\n    url: http://h/mcp\n"
                      "  regs:\n    command: x\n    colour: red\nworkers:\n  analyst:\n"
                      "    tools: [nowhere]\n")
    with pytest.raises(ProblemsError) as raised:
        loader.load_tenant(tenant)
    text = str(raised.value)
    assert f"{tenant}:8:5:" in text and "colour" in text  # extra="forbid", located
    tenant.write_text("id: t\nmcp_servers:\n  both:\n    command: x\n    url: http://h/mcp\n"
                      "workers:\n  analyst:\n    tools: [nowhere]\n")
    with pytest.raises(ProblemsError) as raised:
        loader.load_tenant(tenant)
    text = str(raised.value)
    assert f"{tenant}:4:" in text and "needs either command (stdio) or url" in text
    assert f"{tenant}:8:13:" in text and "'nowhere'" in text


def test_a_missing_variable_fails_the_step_naming_it_never_a_value(
        llm_server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dworkers.tools import expand_variables

    monkeypatch.setenv("REGS_TOKEN", "s3cret-value")
    assert expand_variables("Bearer ${REGS_TOKEN}", "x") == "Bearer s3cret-value"
    monkeypatch.delenv("REGS_TOKEN")
    llm_server.add_rule(marker("a"), tool_calls=[{"name": "regs__lookup", "arguments": {}}])
    tenant = tool_tenant(tmp_path / "c.jsonl", env={"REGS_TOKEN": "${REGS_TOKEN}"})
    result = run_with_tools(llm_server, tenant, ["regs"])
    step = result.outputs["a"]
    assert step.status is StepStatus.FAILED
    assert "mcp_servers.regs.env.REGS_TOKEN uses ${REGS_TOKEN}, which is not set" in (
        step.error or "")
    assert not llm_server.requests  # no call is paid for a step whose tools cannot start


def test_a_dataset_runs_rows_share_one_server(llm_server: FakeLLMServer,
                                              tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    llm_server.add_rule(marker("a"), tool_calls=[{"name": "regs__lookup",
                                                  "arguments": {"query": "q"}}])
    plan = make_plan({"a": []}, tools=["regs"])
    engine = PlanBuilder(plan, tool_tenant(log), api_base=llm_server.url,
                         options=RunOptions(retry_base_delay=0.05)).build()

    async def rows() -> list[Any]:
        return [r async for r in engine.run_many([{"n": str(n)} for n in range(4)])]

    results = asyncio.run(rows())
    assert len(results) == 4 and all(r.succeeded for r in results)
    calls = calls_logged(log)
    assert len(calls) == 4 and len({c["pid"] for c in calls}) == 1
    assert not _alive(calls[0]["pid"])  # stopped when the rows were done


def test_each_tool_call_is_an_execute_tool_span_of_its_step(llm_server: FakeLLMServer,
                                                            tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from dworkers.tracing import RunTracer

    exporter = InMemorySpanExporter()
    tracer = RunTracer([SimpleSpanProcessor(exporter)])
    llm_server.add_rule(marker("a"), tool_calls=[
        {"name": "regs__lookup", "arguments": {"query": "T"}},
        {"name": "regs__hang", "arguments": {}}])
    run_with_tools(llm_server, tool_tenant(tmp_path / "c.jsonl", timeout_seconds=0.5),
                   ["regs"], log=tracer)  # type: ignore[arg-type]
    tracer.close()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    lookup, hang = spans["execute_tool lookup"], spans["execute_tool hang"]
    agent = next(s for name, s in spans.items() if name.startswith("invoke_agent"))
    assert lookup.parent is not None and lookup.parent.span_id == agent.context.span_id
    assert lookup.attributes is not None and hang.attributes is not None
    assert lookup.attributes["gen_ai.operation.name"] == "execute_tool"
    assert lookup.attributes["dworkers.tool.server"] == "regs"
    assert hang.attributes["error.type"] == "tool_error"
    assert lookup.start_time is not None and lookup.end_time is not None
    assert agent.start_time is not None and agent.start_time <= lookup.start_time


def test_a_server_that_cannot_be_reached_is_an_error_without_its_secrets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from dworkers.tools import Toolbox, ToolServerError

    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("CRM_TOKEN", "tok-3f9a1c77e2b54d0a")
    box = Toolbox({"crm": McpServerConfig(url=f"http://127.0.0.1:{port}/mcp",
                                          headers={"Authorization": "Bearer ${CRM_TOKEN}"})})

    async def listing() -> str:
        async with box.running():
            try:
                await box.tools_for(["crm"])
            except ToolServerError as exc:
                return str(exc)
        return ""

    message = asyncio.run(listing())
    assert message.startswith("MCP server 'crm' stopped:")
    assert "tok-3f9a1c77e2b54d0a" not in message


@pytest.mark.parametrize("pure", [False, True])
def test_a_step_with_tools_comes_from_the_cache_only_when_its_servers_are_pure(
        llm_server: FakeLLMServer, tmp_path: Path, pure: bool) -> None:
    from support import invoke

    plan, tenant, log = tooled_files(tmp_path)
    if pure:
        tenant.write_text(tenant.read_text() + "    pure: true\n")
    llm_server.add_rule(marker("look"), tool_calls=[
        {"name": "regs__lookup", "arguments": {"query": "C"}}])
    common = ("--tenant", str(tenant), "--model", "openai/test-model", "--api-base",
              llm_server.url, "--out", str(tmp_path / "runs"), "--json")
    for _ in range(2):
        code, stdout, stderr = invoke("run", str(plan), *common)
        assert code == 0, stderr
    assert json.loads(stdout)["outputs"]["look"]["cached"] is pure
    assert len(calls_logged(log)) == (1 if pure else 2)
