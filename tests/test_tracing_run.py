"""``dworkers run`` traced end to end: the command line, the real engine and litellm against the
suite's server, spans sent over OTLP/HTTP to a receiver on 127.0.0.1 and checked against the
run's own ``run.json``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra (in the test extra)")

from support import TEST_MODEL, FakeLLMServer, invoke, llm_server, marker
from test_run_cli import PLAN
from test_tracing_export import OTEL_VARIABLES, Receiver, receiver

from dworkers.tracing import trace_ids_of

__all__ = ["llm_server", "receiver"]


@pytest.fixture(autouse=True)
def _run_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DWORKERS_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(PLAN)


def run(server: FakeLLMServer, *args: str) -> tuple[int, dict[str, Any], str]:
    """``dworkers run tiny.yaml`` against the server: (exit code, its JSON document, stderr)."""
    code, stdout, stderr = invoke("run", "tiny.yaml", "-i", "topic=tea", "--model", TEST_MODEL,
                                  "--api-base", server.url, "--out", "runs", "--json", *args)
    return code, json.loads(stdout), stderr


def run_json(document: dict[str, Any]) -> dict[str, Any]:
    [folder] = Path("runs").glob(f"{document['run_id']}*")
    data: dict[str, Any] = json.loads((folder / "run.json").read_text())
    return data


class Spans:
    """The spans the receiver got, by name and parent, with plain attribute values."""

    def __init__(self, receiver: Receiver) -> None:
        self.all = [span for _, span in receiver.spans()]

    @staticmethod
    def attributes(span: Any) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for attribute in span.attributes:
            value = attribute.value
            kind = value.WhichOneof("value")
            found[attribute.key] = (tuple(v.string_value for v in value.array_value.values)
                                    if kind == "array_value" else getattr(value, kind))
        return found

    def named(self, prefix: str) -> list[Any]:
        return [s for s in self.all if s.name.startswith(prefix)]

    def agent(self, step_id: str) -> Any:
        [span] = [s for s in self.named("invoke_agent")
                  if self.attributes(s)["gen_ai.agent.name"] == step_id]
        return span

    def children(self, parent: Any) -> list[Any]:
        return [s for s in self.all if s.parent_span_id == parent.span_id]


def test_a_traced_run_has_run_jsons_tokens_and_costs(
        llm_server: FakeLLMServer, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    llm_server.add_rule(marker("left"), status=500, times=1)  # retried (the tenant's retry_max)
    llm_server.add_rule(marker("right"), status=429, retry_after=0.05, times=1)
    llm_server.add_rule(usage_cost=0.00125)  # the cost a gateway reports with each answer
    code, document, stderr = run(llm_server)
    assert code == 0, stderr
    assert "warning" not in stderr
    recorded = run_json(document)
    spans = Spans(receiver)
    [root] = spans.named("invoke_workflow")
    assert int.from_bytes(root.trace_id, "big") == trace_ids_of(document["run_id"])[0]
    assert len(spans.named("chat")) == len(llm_server.requests) == 6
    for step_id, step in recorded["outputs"].items():
        agent = spans.agent(step_id)
        shown = spans.attributes(agent)
        assert shown["gen_ai.usage.input_tokens"] == step["prompt_tokens"] > 0
        assert shown["gen_ai.usage.output_tokens"] == step["completion_tokens"] > 0
        assert shown["dworkers.cost_usd"] == step["cost_usd"] > 0
        assert shown["dworkers.cost_known"] is step["cost_known"] is True
        assert shown["dworkers.cached"] is False
        chats = [spans.attributes(c) for c in spans.children(agent)]
        assert len(chats) == step["attempts"]
        assert sum(c["gen_ai.usage.input_tokens"] for c in chats) == step["prompt_tokens"]
        assert sum(c["gen_ai.usage.output_tokens"] for c in chats) == step["completion_tokens"]
        assert sum(c["dworkers.cost_usd"] for c in chats) == pytest.approx(step["cost_usd"])
    assert [c.get("error.type") for c in map(spans.attributes, spans.children(
        spans.agent("right")))].count("RateLimitError") == 1
    assert [e.name for e in spans.agent("right").events] == ["dworkers.rate_limit_wait"]
    assert [e.name for e in spans.agent("left").events] == ["dworkers.retry"]
    totals = spans.attributes(root)
    assert totals["gen_ai.usage.input_tokens"] == sum(
        s["prompt_tokens"] for s in recorded["outputs"].values())


def test_cached_steps_are_spans_without_calls(
        llm_server: FakeLLMServer, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(llm_server)[0] == 0  # not traced: fills the cache
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    code, document, _ = run(llm_server)
    assert code == 0 and len(llm_server.requests) == 4
    spans = Spans(receiver)
    assert spans.named("chat") == []
    for step_id, step in run_json(document)["outputs"].items():
        agent = spans.agent(step_id)
        assert step["cached"] is True
        assert spans.attributes(agent)["dworkers.cached"] is True
        assert spans.children(agent) == []


def test_a_resumed_run_links_to_the_trace_it_resumes(
        llm_server: FakeLLMServer, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    llm_server.add_rule(marker("left"), status=400, error_message="boom", times=1)
    code, first, _ = run(llm_server)
    assert code == 1
    spans = Spans(receiver)
    skipped = spans.attributes(spans.agent("final"))  # after a failed dependency
    assert skipped["dworkers.skipped"] is True and skipped["dworkers.status"] == "skipped"
    assert spans.children(spans.agent("final")) == []
    [original] = spans.named("invoke_workflow")
    receiver.requests.clear()

    code, resumed, stderr = run(llm_server, "--resume", "last")
    assert code == 0, stderr
    spans = Spans(receiver)
    [root] = spans.named("invoke_workflow")
    assert root.trace_id != original.trace_id
    [link] = root.links
    assert (link.trace_id, link.span_id) == (original.trace_id, original.span_id)
    assert spans.attributes(root)["dworkers.resumed_from"] == first["run_id"]
    assert spans.attributes(root)["dworkers.run_id"] == resumed["run_id"]
    for step_id in ("scope", "right"):  # reused from the resumed run
        assert spans.attributes(spans.agent(step_id))["dworkers.cached"] is True
    assert len(spans.named("chat")) == 2  # left and final


def test_no_trace_sends_nothing(llm_server: FakeLLMServer, receiver: Receiver,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    code, _, _ = run(llm_server, "--no-trace")
    assert code == 0 and len(llm_server.requests) == 4
    assert receiver.requests == []


def test_an_unreachable_collector_is_one_warning_and_the_run_succeeds(
        llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    code, document, stderr = run(llm_server)
    assert code == 0 and document["success"]
    warnings = [line for line in stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, stderr
    assert "trace was not fully exported" in warnings[0]
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_an_interrupted_run_still_sends_its_trace(
        llm_server: FakeLLMServer, receiver: Receiver, tmp_path: Path) -> None:
    llm_server.add_rule(marker("right"), hang=True)  # in flight when Ctrl-C comes
    env = {name: value for name, value in os.environ.items() if name not in OTEL_VARIABLES}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parent.parent),
               OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, DWORKERS_HOME=str(tmp_path / "home"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dworkers", "run", "tiny.yaml", "-i", "topic=tea", "--model",
         TEST_MODEL, "--api-base", llm_server.url, "--out", "runs", "--json"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    got_going = llm_server.wait_for_requests(3, timeout=120)  # scope, left, right
    assert proc.poll() is None and got_going, "the run never got going"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert json.loads(stdout)["interrupted"] is True
    spans = Spans(receiver)
    [root] = spans.named("invoke_workflow")
    assert spans.attributes(root)["dworkers.status"] == "interrupted"
    assert [spans.attributes(c)["error.type"] for c in spans.children(spans.agent("right"))] == [
        "cancelled"]
    assert spans.attributes(spans.agent("right"))["dworkers.status"] == "cancelled"
    [answered] = spans.children(spans.agent("scope"))
    assert "error.type" not in spans.attributes(answered)
