"""Runs as OpenTelemetry traces, for Langfuse, Phoenix, Jaeger or any OTLP collector.

The only module that imports ``opentelemetry`` (the ``otel`` extra), and only once tracing is
on: ``tracer_for`` decides from ``--trace/--no-trace`` and the standard variables
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; protocol, headers,
timeouts, ``OTEL_SERVICE_NAME`` and the rest are read by the SDK and its exporter as usual).

``RunTracer`` is an event consumer: it turns the events a run emits into spans named and
attributed by the OpenTelemetry GenAI semantic conventions of semantic-conventions v1.41.0 (the
last release that holds them; the Python SDK's 1.44 incubating constants have the same names):

    invoke_workflow {plan}   a run, or one row of a dataset run (each row its own trace)
    └── invoke_agent {role}  a step (gen_ai.agent.name: the step id), also when cached, skipped
        │                    or cancelled; retries and 429 waits are its span events
        └── chat {model}     one call to a model (``AttemptFinished``), one per attempt

Span times are the events' own (monotonic ``at``, turned into epoch nanoseconds through one
offset taken when the tracer starts), so a trace shows when things happened, not when the
tracer heard of them. Trace ids derive from the run id (and row key), so a resumed run's trace
links to the run it resumes without anything being stored. Prompts and answers go into spans
only when asked (``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``), redacted as
errors are; an ``--api-base`` reaches a span only as its host and port.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from dworkers.errors import PreflightError, Problem
from dworkers.events import (
    AttemptFinished,
    DatasetFinished,
    RateLimits,
    RowFinished,
    RowStarted,
    RunFinished,
    RunStarted,
    StepFinished,
    StepInfo,
    StepRetrying,
    StepStarted,
)
from dworkers.job_queue import JobQueue
from dworkers.redact import redact
from dworkers.results import MOCK_MODEL, StepResult, StepStatus, ToolCall
from dworkers.text import crop, one_line

if TYPE_CHECKING:
    from opentelemetry.context import Context  # type: ignore[import-not-found, unused-ignore]
    from opentelemetry.sdk.trace import SpanProcessor  # type: ignore[import-not-found, unused-ignore]
    from opentelemetry.trace import Span  # type: ignore[import-not-found, unused-ignore]

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
CAPTURE_CONTENT_VARIABLE = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
TIMEOUT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
# How long one export may take, retries included, unless a timeout variable says: a collector
# that is down then delays the end of a run by this much, not by the SDK's default 10 s.
EXPORT_TIMEOUT_SECONDS = 3.0
# Spans are exported this often while the run goes (unless OTEL_BSP_SCHEDULE_DELAY says), on
# the batch processor's thread while the event loop waits for answers: the SDK's 5 s would
# leave a short run's every span to be encoded and sent at its end.
EXPORT_EVERY_MILLIS = 250
# How often the tracer's thread turns the events that came meanwhile into spans, in one go.
SPAN_PACE_SECONDS = 0.1
KEPT_EXPORT_PROBLEMS = 20
SEMCONV_SCHEMA = "https://opentelemetry.io/schemas/1.41.0"
SERVICE_NAME = "dworkers"
ERROR_TEXT_CHARS = 500  # a span's status description: the error's gist, not a whole body

# litellm's provider prefix → the GenAI conventions' gen_ai.provider.name (others: the prefix).
PROVIDER_NAMES = {
    "openai": "openai", "text-completion-openai": "openai", "azure": "azure.ai.openai",
    "azure_ai": "azure.ai.inference", "anthropic": "anthropic", "bedrock": "aws.bedrock",
    "vertex_ai": "gcp.vertex_ai", "gemini": "gcp.gemini", "cohere": "cohere",
    "cohere_chat": "cohere", "mistral": "mistral_ai", "groq": "groq", "deepseek": "deepseek",
    "perplexity": "perplexity", "xai": "x_ai", "watsonx": "ibm.watsonx.ai",
}
RATE_LIMITED = "RateLimitError"  # AttemptFinished.error_type of a 429
AWAITING_APPROVAL = "awaiting_approval"  # the step status approval gates report


# --- switching it on ---------------------------------------------------------------------------


def tracing_requested() -> bool:
    """Whether the environment names a collector (no import of OpenTelemetry)."""
    return any(os.environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def content_requested() -> bool:
    """``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``: prompts and answers in spans."""
    return os.environ.get(CAPTURE_CONTENT_VARIABLE, "").strip().lower() in ("true", "1")


def tracer_for(
    flag: bool | None,
    *,
    capture_content: bool | None = None,
    resumed_from: str | None = None,
    resumed_trace_id: str | None = None,
) -> RunTracer | None:
    """The run's tracer, or ``None`` when tracing is off.

    ``flag`` is ``--trace`` (True), ``--no-trace`` (False) or neither (None): then tracing is
    on when an OTLP endpoint variable is set and the ``otel`` extra is installed (without the
    extra it stays off, so a shell that exports an endpoint for other programs still runs).
    ``--trace`` without the extra is a user mistake (``PreflightError``); without an endpoint
    it exports to the OTLP default, ``http://localhost:4318``. ``capture_content`` overrides
    the content variable; ``resumed_from`` is the run id being resumed (its trace is linked),
    ``resumed_trace_id`` that run's trace id when it was not derived from its run id."""
    if flag is False or (flag is None and not tracing_requested()):
        return None
    try:
        processor = _otlp_processor()
    except ImportError:
        if flag is None:
            return None
        raise PreflightError([Problem(
            "tracing needs the OpenTelemetry SDK (the otel extra), which is not installed",
            "pip install 'dworkers[otel]', or leave out --trace", "missing-extra",
            file="--trace")]) from None
    capture = content_requested() if capture_content is None else capture_content
    tracer = RunTracer([processor], capture_content=capture, resumed_from=resumed_from,
                       resumed_trace_id=resumed_trace_id, background=True)
    _keep_sdk_logs(tracer.export_problems)
    return tracer


class _ExportProblems(logging.Handler):
    """Keeps what the SDK and its exporter report (a collector that cannot be reached), so it
    never lands on the terminal over the live view: the run says it once, at the end."""

    def __init__(self, kept: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.kept = kept

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.kept) < KEPT_EXPORT_PROBLEMS:
            self.kept.append(redact(crop(one_line(record.getMessage()), ERROR_TEXT_CHARS)))


def _keep_sdk_logs(kept: list[str]) -> None:
    sdk_logger = logging.getLogger("opentelemetry")
    for handler in [h for h in sdk_logger.handlers if isinstance(h, _ExportProblems)]:
        sdk_logger.removeHandler(handler)  # an earlier run's, in the same process
    sdk_logger.addHandler(_ExportProblems(kept))
    sdk_logger.propagate = False


def _otlp_processor() -> SpanProcessor:
    """A batching processor exporting over OTLP as the ``OTEL_*`` variables say."""
    protocol = next((os.environ[name].strip() for name in PROTOCOL_VARIABLES
                     if os.environ.get(name, "").strip()), "http/protobuf")
    from opentelemetry.sdk.trace.export import (  # type: ignore[import-not-found, unused-ignore]
        BatchSpanProcessor,
    )

    exporter: Any
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found, unused-ignore]
            OTLPSpanExporter,
        )

        timeout = None if any(os.environ.get(name) for name in TIMEOUT_VARIABLES) else \
            EXPORT_TIMEOUT_SECONDS
        exporter = OTLPSpanExporter(timeout=timeout)
    elif protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found, unused-ignore]
                OTLPSpanExporter as GrpcSpanExporter,
            )
        except ImportError:
            raise PreflightError([Problem(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the OTLP gRPC exporter",
                "pip install opentelemetry-exporter-otlp-proto-grpc, or use http/protobuf",
                "missing-extra", file="environment")]) from None
        exporter = GrpcSpanExporter()
    else:
        raise PreflightError([Problem(
            f"OTLP protocol {protocol!r} is not supported",
            "set OTEL_EXPORTER_OTLP_PROTOCOL to http/protobuf (or grpc)", "invalid-option",
            file="environment")])
    delay = None if os.environ.get("OTEL_BSP_SCHEDULE_DELAY", "").strip() else EXPORT_EVERY_MILLIS
    return BatchSpanProcessor(exporter, schedule_delay_millis=delay)


# --- ids ---------------------------------------------------------------------------------------


def trace_ids_of(run_id: str, row: str | None = None) -> tuple[int, int]:
    """The trace id and root span id of a run's trace (or of one row's, in a dataset run):
    derived from the ids, so a later run can link to it knowing only the run id."""
    digest = hashlib.sha256(f"dworkers\0{run_id}\0{row or ''}".encode()).digest()
    return (int.from_bytes(digest[:16], "big") or 1), (int.from_bytes(digest[16:24], "big") or 1)


def trace_carrier(run_id: str, row: str | None = None) -> dict[str, str]:
    """The W3C trace context (``traceparent``) of a run's workflow span, or a row's: a dict to
    send with the row to a Ray worker, where ``joined`` makes spans join the row's trace.
    Known from the ids alone, before the row has started anywhere."""
    trace_id, span_id = trace_ids_of(run_id, row)
    return {"traceparent": f"00-{trace_id:032x}-{span_id:016x}-01"}


def _id_generator() -> Any:
    """The SDK's random ids, except for a root span whose ids were set just before."""
    from opentelemetry.sdk.trace.id_generator import (  # type: ignore[import-not-found, unused-ignore]
        RandomIdGenerator,
    )

    class DerivedRootIds(RandomIdGenerator):  # type: ignore[misc, unused-ignore]
        def __init__(self) -> None:
            self.root: tuple[int, int] | None = None  # set just before starting a root span
            self.root_span_id: int | None = None

        def generate_trace_id(self) -> int:
            if self.root is not None:  # the SDK asks for a root's trace id, then its span id
                (trace_id, self.root_span_id), self.root = self.root, None
                return trace_id
            return int(super().generate_trace_id())

        def generate_span_id(self) -> int:
            if self.root_span_id is not None:
                span_id, self.root_span_id = self.root_span_id, None
                return span_id
            return int(super().generate_span_id())

        def is_trace_id_random(self) -> bool:
            return self.root_span_id is None

    return DerivedRootIds()


# --- the consumer ------------------------------------------------------------------------------


@dataclass
class _StepSpans:
    """What the tracer keeps of one step while it runs."""

    agent: Span | None = None
    messages: tuple[dict[str, str], ...] = ()
    input_content: tuple[str, str] | None = None  # (system instructions, messages) as JSON
    started: dict[int, float] = field(default_factory=dict)  # attempts without an answer yet
    last_error_type: str | None = None


class RunTracer:
    """Turns a run's events into spans (see the module's docstring). Call it with every event;
    ``close()`` at the end of the run exports what is left (the SDK also does at exit).

    A tracer never fails a run: an error while tracing is kept in ``error`` and tracing stops.

    ``background``: spans are built on a thread of the tracer's own, from the events that came
    in the last ``SPAN_PACE_SECONDS``, not on the event loop as each event comes (which held up
    each step's dependents, and each step's request); ``close`` builds what is left.
    """

    def __init__(
        self,
        processors: Sequence[SpanProcessor],
        *,
        capture_content: bool = False,
        resumed_from: str | None = None,
        resumed_trace_id: str | None = None,
        background: bool = False,
    ) -> None:
        from opentelemetry import trace  # type: ignore[import-not-found, unused-ignore]
        from opentelemetry.sdk.resources import Resource  # type: ignore[import-not-found, unused-ignore]
        from opentelemetry.sdk.trace import TracerProvider  # type: ignore[import-not-found, unused-ignore]

        from dworkers import __version__

        attributes = {"service.version": __version__}
        named = os.environ.get("OTEL_SERVICE_NAME", "").strip() or "service.name=" in \
            os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
        if not named:
            attributes["service.name"] = SERVICE_NAME
        self._ids = _id_generator()
        self.provider = TracerProvider(resource=Resource.create(attributes),
                                       id_generator=self._ids)
        for processor in processors:
            self.provider.add_span_processor(processor)
        self._tracer = self.provider.get_tracer("dworkers", __version__,
                                                schema_url=SEMCONV_SCHEMA)
        self._trace = trace
        self.capture_content = capture_content
        self.resumed_from = resumed_from
        self.resumed_trace_id = resumed_trace_id
        self.error: BaseException | None = None
        self.export_problems: list[str] = []  # what the exporter reported (``tracer_for``'s)
        self.closed = False
        self._jobs = JobQueue("dworkers-trace", pace=SPAN_PACE_SECONDS) if background else None
        self._now = 0.0  # when the event being handled came: the time of one that has none
        # One offset for every event: monotonic seconds → epoch nanoseconds.
        self._epoch_offset_ns = time.time_ns() - time.monotonic_ns()
        self._run_id = self._plan = self._tenant = ""
        self._infos: dict[str, StepInfo] = {}
        self._workflows: dict[str | None, Span] = {}  # row key (None: a single run) → span
        self._steps: dict[tuple[str | None, str], _StepSpans] = {}
        self._handlers: dict[type, Callable[[Any], None]] = {
            RunStarted: self._run_started, RowStarted: self._row_started,
            StepStarted: self._step_started, AttemptFinished: self._attempt_finished,
            StepRetrying: self._step_retrying, StepFinished: self._step_finished,
            RowFinished: self._row_finished, RunFinished: self._run_finished,
            DatasetFinished: self._dataset_finished, RateLimits: self._rate_limits,
        }

    def __call__(self, event: object) -> None:
        handler = self._handlers.get(type(event))
        if handler is None or self.error is not None:
            return
        if self._jobs is not None:
            self._jobs.submit(partial(self._handle, handler, event, time.monotonic()))
        else:
            self._handle(handler, event, time.monotonic())

    def _handle(self, handler: Callable[[Any], None], event: object, now: float) -> None:
        if self.error is not None:
            return
        self._now = now
        try:
            handler(event)
        except Exception as exc:  # tracing is an observer: it must never fail the run
            self.error = exc

    def close(self) -> None:
        """Build the spans of the events still queued, export every span still buffered, and
        stop (once; later calls do nothing)."""
        if not self.closed:
            self.closed = True
            if self._jobs is not None:
                self._jobs.close()
            self.provider.shutdown()

    # --- handlers ------------------------------------------------------------------------------

    def _ns(self, at: float) -> int:
        return int((at or self._now) * 1e9) + self._epoch_offset_ns

    def _run_started(self, event: RunStarted) -> None:
        self._run_id, self._plan, self._tenant = event.run_id, event.plan, event.tenant
        self._infos = {info.step_id: info for info in event.steps}
        if not event.dataset:
            self._open_workflow(None, event.started_at)

    def _row_started(self, event: RowStarted) -> None:
        self._open_workflow(event.row, event.at, event.line)

    def _open_workflow(self, row: str | None, at: float, line: int | None = None) -> Span:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_workflow",
            "gen_ai.workflow.name": self._plan,
            "gen_ai.conversation.id": self._run_id,  # groups a dataset run's row traces
            "dworkers.run_id": self._run_id,
            "dworkers.plan": self._plan,
            "dworkers.tenant": self._tenant,
        }
        if row is not None:
            attributes["dworkers.row"] = row
            if line is not None:
                attributes["dworkers.row_line"] = line
        links = []
        if self.resumed_from is not None or self.resumed_trace_id is not None:
            attributes["dworkers.resumed_from"] = self.resumed_from or ""
            links.append(self._trace.Link(self._resumed_context(row),
                                          {"dworkers.link": "resumes"}))
        self._ids.root = trace_ids_of(self._run_id, row)
        span = self._tracer.start_span(
            f"invoke_workflow {self._plan}", context=self._empty_context(),
            kind=self._trace.SpanKind.INTERNAL, attributes=attributes, links=links,
            start_time=self._ns(at))
        self._ids.root = None
        self._workflows[row] = span
        return span

    def _resumed_context(self, row: str | None) -> Any:
        """The root span the resumed run's trace links to: derived from its run id, unless
        its trace id is given."""
        trace_id, span_id = trace_ids_of(self.resumed_from or "", row)
        if self.resumed_trace_id is not None:
            with contextlib.suppress(ValueError):
                trace_id = int(self.resumed_trace_id, 16) or trace_id
        return self._trace.SpanContext(trace_id, span_id, is_remote=True,
                                       trace_flags=self._trace.TraceFlags(1))

    def _empty_context(self) -> Context:
        from opentelemetry.context import Context  # type: ignore[import-not-found, unused-ignore]

        return Context()  # a root: not under whatever span happens to be current

    def _workflow(self, row: str | None, at: float) -> Span:
        span = self._workflows.get(row)
        return span if span is not None else self._open_workflow(row, at)

    def _step(self, row: str | None, step_id: str, at: float) -> _StepSpans:
        """The step's state, its ``invoke_agent`` span opened at ``at`` if not yet."""
        state = self._steps.get((row, step_id))
        if state is None:
            state = self._steps[(row, step_id)] = _StepSpans()
        if state.agent is None:
            info = self._infos.get(step_id)
            role = info.role if info is not None else "worker"
            attributes: dict[str, Any] = {
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": step_id,
                "dworkers.run_id": self._run_id,
                "dworkers.step": step_id,
                "dworkers.role": role,
            }
            if info is not None:
                attributes["gen_ai.agent.description"] = info.name
                attributes["gen_ai.request.model"] = info.model
                attributes["gen_ai.provider.name"] = provider_name(info.model)
            if row is not None:
                attributes["dworkers.row"] = row
            parent = self._trace.set_span_in_context(self._workflow(row, at))
            state.agent = self._tracer.start_span(
                f"invoke_agent {role}", context=parent, kind=self._trace.SpanKind.INTERNAL,
                attributes=attributes, start_time=self._ns(at))
        return state

    def _step_started(self, event: StepStarted) -> None:
        state = self._step(event.row, event.step_id, event.at)
        if event.messages:
            state.messages = event.messages
        state.started[event.attempt] = event.at or self._now

    def _attempt_finished(self, event: AttemptFinished) -> None:
        state = self._step(event.row, event.step_id, event.started_at or event.at)
        started = state.started.pop(event.attempt, None)
        state.last_error_type = event.error_type
        used = event.input_tokens + event.output_tokens
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider_name(event.request_model),
            "gen_ai.request.model": event.request_model,
            "gen_ai.usage.input_tokens": event.input_tokens,
            "gen_ai.usage.output_tokens": event.output_tokens,
            "dworkers.run_id": self._run_id,
            "dworkers.step": event.step_id,
            "dworkers.attempt": event.attempt,
            "dworkers.cost_usd": event.cost_usd or 0.0,
            "dworkers.cost_known": event.cost_usd is not None or used == 0,
            "dworkers.estimated": event.estimated,
        }
        if event.row is not None:
            attributes["dworkers.row"] = event.row
        if event.response_model:
            attributes["gen_ai.response.model"] = event.response_model
        if event.finish_reason:
            attributes["gen_ai.response.finish_reasons"] = (event.finish_reason,)
        if event.status_code is not None:
            attributes["http.response.status_code"] = event.status_code
        attributes.update(server_attributes(event.endpoint))
        if event.error_type is not None:
            attributes["error.type"] = event.error_type
        if self.capture_content:
            attributes.update(self._input_content(state))
            if event.answer:
                attributes["gen_ai.output.messages"] = json.dumps([{
                    "role": "assistant", "parts": [{"type": "text",
                                                    "content": redact(event.answer)}],
                    "finish_reason": event.finish_reason or "stop"}])
        start = event.started_at or started or event.at
        assert state.agent is not None
        self._chat_span(state.agent, event.request_model, attributes, start, event.at,
                        event.error)

    def _chat_span(self, agent: Span, model: str, attributes: dict[str, Any],
                   start: float, end: float, error: str | None) -> None:
        parent = self._trace.set_span_in_context(agent)
        span = self._tracer.start_span(f"chat {model}", context=parent,
                                       kind=self._trace.SpanKind.CLIENT,
                                       attributes=attributes, start_time=self._ns(start))
        if "error.type" in attributes:
            span.set_status(self._trace.StatusCode.ERROR, _error_text(error))
        span.end(end_time=self._ns(end))

    def _input_content(self, state: _StepSpans) -> dict[str, str]:
        """The step's prompt as the conventions' JSON, redacted once for all its attempts."""
        if state.input_content is None:
            system = [{"type": "text", "content": redact(m.get("content", ""))}
                      for m in state.messages if m.get("role") == "system"]
            others = [{"role": m.get("role", "user"),
                       "parts": [{"type": "text", "content": redact(m.get("content", ""))}]}
                      for m in state.messages if m.get("role") != "system"]
            state.input_content = (json.dumps(system) if system else "", json.dumps(others))
        system_json, messages_json = state.input_content
        content = {"gen_ai.input.messages": messages_json}
        if system_json:
            content["gen_ai.system_instructions"] = system_json
        return content

    def _step_retrying(self, event: StepRetrying) -> None:
        state = self._step(event.row, event.step_id, 0.0)
        rate_limited = state.last_error_type == RATE_LIMITED
        attributes: dict[str, Any] = {
            "dworkers.attempt": event.attempt,
            "dworkers.wait_seconds": event.wait_seconds,
            "dworkers.reason": _error_text(event.reason),
        }
        if state.last_error_type is not None:
            attributes["error.type"] = state.last_error_type
        assert state.agent is not None
        state.agent.add_event("dworkers.rate_limit_wait" if rate_limited else "dworkers.retry",
                              attributes, timestamp=self._ns(0.0))

    def _step_finished(self, event: StepFinished) -> None:
        result, row = event.result, event.row
        state = self._step(row, result.step_id, event.at)
        assert state.agent is not None
        # A call cut short by a cancellation has no AttemptFinished: its span ends here.
        cut_short = state.started.items() if result.status is StepStatus.CANCELLED else ()
        for attempt, started in sorted(cut_short):
            model = result.model or self._model_of(result.step_id)
            self._chat_span(state.agent, model, {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": provider_name(model),
                "gen_ai.request.model": model, "dworkers.run_id": self._run_id,
                "dworkers.step": result.step_id, "dworkers.attempt": attempt,
                "error.type": "cancelled",
            }, started, event.at, result.error)
        state.started.clear()
        for call in result.tool_calls:
            self._tool_span(state.agent, call, event.at)
        state.agent.set_attributes(self._result_attributes(result))
        if result.status is StepStatus.FAILED:
            state.agent.set_attribute("error.type", state.last_error_type or "step_failed")
            state.agent.set_status(self._trace.StatusCode.ERROR, _error_text(result.error))
        state.agent.end(end_time=self._ns(event.at))
        del self._steps[(row, result.step_id)]

    def _tool_span(self, agent: Span, call: ToolCall, ended: float) -> None:
        """An ``execute_tool`` span for one MCP tool call of a step (``dworkers.tools``)."""
        start = (int(call.started_at * 1e9) if call.started_at is not None
                 else self._ns(ended) - int(call.duration_ms * 1e6))
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": call.tool,
            "gen_ai.tool.type": "function", "dworkers.tool.server": call.server,
            "dworkers.tool.result_chars": call.result_chars, "dworkers.run_id": self._run_id}
        if call.result_digest:
            attributes["dworkers.tool.result_digest"] = call.result_digest
        if call.error:
            attributes["error.type"] = "tool_error"
        span = self._tracer.start_span(f"execute_tool {call.tool}",
                                       context=self._trace.set_span_in_context(agent),
                                       kind=self._trace.SpanKind.INTERNAL,
                                       attributes=attributes, start_time=start)
        if call.error:
            span.set_status(self._trace.StatusCode.ERROR, _error_text(call.error))
        span.end(end_time=start + int(call.duration_ms * 1e6))

    def _model_of(self, step_id: str) -> str:
        info = self._infos.get(step_id)
        return info.model if info is not None else "unknown"

    @staticmethod
    def _result_attributes(result: StepResult) -> dict[str, Any]:
        status = str(result.status)
        attributes: dict[str, Any] = {
            "dworkers.status": status,
            "dworkers.attempts": result.attempts,
            "gen_ai.usage.input_tokens": result.prompt_tokens,
            "gen_ai.usage.output_tokens": result.completion_tokens,
            "dworkers.cost_usd": result.cost_usd,
            "dworkers.cost_known": result.cost_known,
            "dworkers.estimated": result.estimated,
            "dworkers.cached": result.cached,
            "dworkers.truncated": result.truncated,
            "dworkers.skipped": result.status is StepStatus.SKIPPED,
            "dworkers.awaiting_approval": status == AWAITING_APPROVAL,
        }
        if result.model:
            attributes["gen_ai.response.model"] = result.model
        if result.status is StepStatus.SKIPPED and result.error:
            attributes["dworkers.skip_reason"] = _error_text(result.error)
        return attributes

    def _close_workflow(self, row: str | None, at: float, status: str, error: str | None,
                        totals: Mapping[str, Any]) -> None:
        span = self._workflows.pop(row, None)
        if span is None:  # a row that never started (skipped, cancelled): still accounted
            span = self._open_workflow(row, at)
            self._workflows.pop(row)
        for key in [key for key in self._steps if key[0] == row]:  # none, unless cut short
            leftover = self._steps.pop(key)
            if leftover.agent is not None:
                leftover.agent.end(end_time=self._ns(at))
        span.set_attributes({"dworkers.status": status, **totals})
        if status == StepStatus.FAILED.value:
            span.set_attribute("error.type", status)
            span.set_status(self._trace.StatusCode.ERROR, _error_text(error or status))
        span.end(end_time=self._ns(at))

    def _row_finished(self, event: RowFinished) -> None:
        result = event.result
        self._close_workflow(result.key, event.at, str(result.status), result.error, {
            "gen_ai.usage.input_tokens": result.prompt_tokens,
            "gen_ai.usage.output_tokens": result.completion_tokens,
            "dworkers.cost_usd": result.cost_usd, "dworkers.cost_known": result.cost_known})

    def _run_finished(self, event: RunFinished) -> None:
        result = event.result
        failed = next((r for r in result.outputs.values() if r.status is StepStatus.FAILED),
                      None)
        error = f"{failed.step_id}: {failed.error}" if failed is not None else None
        self._close_workflow(None, event.at, str(result.status), error, {
            "gen_ai.usage.input_tokens": result.prompt_tokens,
            "gen_ai.usage.output_tokens": result.completion_tokens,
            "dworkers.cost_usd": result.cost_usd, "dworkers.cost_known": result.cost_known})

    def _dataset_finished(self, event: DatasetFinished) -> None:
        for row in list(self._workflows):  # every row ends with RowFinished; this is a guard
            self._close_workflow(row, event.at, "interrupted", "the dataset run ended", {})

    def _rate_limits(self, event: RateLimits) -> None:
        span = self._workflows.get(None)
        if span is None:  # a dataset run: limits concern all rows, not one row's trace
            return
        attributes: dict[str, Any] = {"gen_ai.request.model": event.model,
                                      "dworkers.source": event.source}
        if event.rpm is not None:
            attributes["dworkers.rpm"] = event.rpm
        if event.tpm is not None:
            attributes["dworkers.tpm"] = event.tpm
        span.add_event("dworkers.rate_limits", attributes, timestamp=self._ns(event.at))


# --- helpers -----------------------------------------------------------------------------------


def provider_name(model: str) -> str:
    """``gen_ai.provider.name`` of a litellm model string (``anthropic/x`` → ``anthropic``)."""
    if model == MOCK_MODEL:
        return "dworkers.mock"
    if "/" in model:
        prefix = model.split("/", 1)[0].lower()
        return PROVIDER_NAMES.get(prefix, prefix)
    if model.startswith("claude"):
        return "anthropic"
    if model.startswith("gemini"):
        return "gcp.gemini"
    return "openai"  # litellm's provider for a bare model name


def server_attributes(endpoint: str | None) -> dict[str, Any]:
    """``server.address``/``server.port`` of an endpoint: its host and port, never a path,
    query or credentials (an ``--api-base`` may hold a password)."""
    if not endpoint:
        return {}
    try:
        parts = urlsplit(endpoint)
        host, port = parts.hostname, parts.port
    except ValueError:
        return {}
    attributes: dict[str, Any] = {}
    if host:
        attributes["server.address"] = host
    if port is not None:
        attributes["server.port"] = port
    return attributes


def _error_text(text: str | None) -> str:
    """An error for a span: one line, cut short, redacted (provider errors already are)."""
    return redact(crop(one_line(text or ""), ERROR_TEXT_CHARS))


@contextlib.contextmanager
def joined(carrier: Mapping[str, str]) -> Iterator[None]:
    """Spans started inside join the trace ``trace_carrier`` described (on a Ray worker: the
    row's), whatever tracer starts them."""
    from opentelemetry import context  # type: ignore[import-not-found, unused-ignore]
    from opentelemetry.trace.propagation.tracecontext import (  # type: ignore[import-not-found, unused-ignore]
        TraceContextTextMapPropagator,
    )

    token = context.attach(TraceContextTextMapPropagator().extract(dict(carrier)))
    try:
        yield
    finally:
        context.detach(token)
