"""Switching traces on and off, and sending them over OTLP/HTTP to a receiver on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra (in the test extra)")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from test_tracing import step_events

from dworkers.errors import PreflightError
from dworkers.tracing import RunTracer, trace_ids_of, tracer_for

ROOT = Path(__file__).resolve().parent.parent
OTEL_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                  "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                  "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
                  "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")


@pytest.fixture(autouse=True)
def _no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


class Receiver:
    """An OTLP/HTTP traces endpoint: keeps every export request's spans and headers."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], ExportTraceServiceRequest]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                message = ExportTraceServiceRequest()
                message.ParseFromString(body)
                receiver.requests.append(
                    ({k.lower(): v for k, v in self.headers.items()} | {"path": self.path},
                     message))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) of every span received."""
        found = []
        for _, message in self.requests:
            for resource_spans in message.resource_spans:
                resource = {a.key: a.value.string_value
                            for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    found += [(resource, span) for span in scope.spans]
        return found


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def send_one_run(tracer: RunTracer) -> None:
    for event in step_events(time.monotonic()):
        tracer(event)
    tracer.close()  # exports what the batch holds, before returning


def test_spans_reach_an_otlp_http_endpoint_with_its_headers(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Basic cGs6c2s=")
    tracer = tracer_for(None)
    assert tracer is not None
    send_one_run(tracer)
    assert tracer.error is None
    assert receiver.requests
    headers = receiver.requests[0][0]
    assert headers["path"] == "/v1/traces"
    assert headers["authorization"] == "Basic cGs6c2s="
    spans = receiver.spans()
    assert sorted(span.name for _, span in spans) == [
        "chat openai/x", "invoke_agent analyst", "invoke_workflow p"]
    resource, root = next((r, s) for r, s in spans if s.name.startswith("invoke_workflow"))
    assert resource["service.name"] == "dworkers"
    assert int.from_bytes(root.trace_id, "big") == trace_ids_of("run-1")[0]
    chat = next(s for _, s in spans if s.name.startswith("chat"))
    attributes = {a.key: a.value for a in chat.attributes}
    assert attributes["gen_ai.usage.input_tokens"].int_value == 12
    assert attributes["gen_ai.usage.output_tokens"].int_value == 5
    assert chat.parent_span_id  # under its step's span
    assert "gen_ai.input.messages" not in attributes  # content is opt-in


def test_the_traces_endpoint_and_service_name_variables_are_honoured(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{receiver.url}/custom/traces")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "audits-for-acme")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    tracer = tracer_for(None)
    assert tracer is not None and tracer.capture_content
    send_one_run(tracer)
    assert {headers["path"] for headers, _ in receiver.requests} == {"/custom/traces"}
    assert {resource["service.name"] for resource, _ in receiver.spans()} == {"audits-for-acme"}


def test_no_trace_and_no_endpoint_mean_no_tracer(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tracer_for(None) is None
    forced = tracer_for(True)  # --trace without an endpoint: the OTLP default one
    assert forced is not None
    forced.close()  # nothing was traced: nothing to send
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    assert tracer_for(False) is None
    assert tracer_for(None) is not None


@pytest.mark.parametrize("protocol", ["http/json", "carrier-pigeon"])
def test_an_unsupported_protocol_is_a_user_mistake(monkeypatch: pytest.MonkeyPatch,
                                                   protocol: str) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    with pytest.raises(PreflightError) as caught:
        tracer_for(None)
    assert "http/protobuf" in str(caught.value) and protocol in str(caught.value)


def run_python(code: str, **environment: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in OTEL_VARIABLES}
    env.update(environment, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=False)


@pytest.mark.slow
def test_without_an_endpoint_nothing_imports_opentelemetry() -> None:
    done = run_python(
        "import sys\n"
        "import dworkers.cli, dworkers.tracing\n"
        "from dworkers.tracing import tracer_for\n"
        "assert tracer_for(None) is None\n"
        "assert tracer_for(False) is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    done = run_python(  # --no-trace wins over the environment
        "import sys\n"
        "from dworkers.tracing import tracer_for\n"
        "assert tracer_for(False) is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_without_the_extra_trace_is_a_user_mistake_and_the_environment_is_ignored() -> None:
    done = run_python(
        "import sys\n"
        "sys.modules['opentelemetry.sdk'] = None  # as if the extra were not installed\n"
        "from dworkers.errors import PreflightError\n"
        "from dworkers.tracing import tracer_for\n"
        "assert tracer_for(None) is None\n"
        "try:\n"
        "    tracer_for(True)\n"
        "except PreflightError as exc:\n"
        "    print(exc)\n",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "--trace: tracing needs the OpenTelemetry SDK (the otel extra), which is not installed — "
        "pip install 'dworkers[otel]', or leave out --trace")


def test_an_unreachable_collector_is_reported_not_printed(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    tracer = tracer_for(None)
    assert tracer is not None
    send_one_run(tracer)  # gives up after EXPORT_TIMEOUT_SECONDS
    assert tracer.error is None
    assert tracer.export_problems
    assert any("export" in problem for problem in tracer.export_problems)
    out, err = capfd.readouterr()
    assert out == err == ""
