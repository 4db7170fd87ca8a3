"""Spans built on the tracer's own thread (as ``dworkers run`` builds them): the same spans as
built inline, at the times the events came, none built on the event loop's thread, and none
lost when the run ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra (in the test extra)")

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_tracing import step_events

from dworkers.tracing import RunTracer


class ThreadNoting(SimpleSpanProcessor):  # type: ignore[misc]
    """Exports to memory, and notes the thread each span was ended on."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        super().__init__(exporter)
        self.threads: set[str] = set()

    def on_end(self, span: ReadableSpan) -> None:
        self.threads.add(threading.current_thread().name)
        super().on_end(span)


def shapes(spans: Sequence[ReadableSpan]) -> list[tuple[Any, ...]]:
    """Spans as a collector sees them, but for their ids, their events' times, and times
    counted from the trace's start (each tracer turns the monotonic clock into epoch time by
    an offset of its own, read when it starts)."""
    start = min(span.start_time or 0 for span in spans)
    return sorted(((span.name, dict(span.attributes or {}), (span.start_time or 0) - start,
                    (span.end_time or 0) - start, span.status.status_code,
                    [(e.name, dict(e.attributes or {})) for e in span.events])
                   for span in spans), key=repr)


def test_spans_built_on_the_tracer_thread_equal_those_built_inline_at_the_events_times(
) -> None:
    at = time.monotonic()
    inline_spans, background_spans = InMemorySpanExporter(), InMemorySpanExporter()
    inline = RunTracer([SimpleSpanProcessor(inline_spans)])
    noting = ThreadNoting(background_spans)
    background = RunTracer([noting], background=True)
    before = time.time_ns()
    for event in step_events(at, retry=True):  # a 429, a wait, and a second attempt
        inline(event)
        background(event)
    after = time.time_ns()
    time.sleep(0.05)  # whatever the thread builds from now on is built well after ``after``
    background.close()  # builds what is queued, exports, and stops
    inline.close()

    assert background.error is None and inline.error is None
    built = shapes(background_spans.get_finished_spans())
    assert built == shapes(inline_spans.get_finished_spans())
    assert len(built) == 4  # the workflow, the step, and a chat span per attempt
    assert noting.threads == {"dworkers-trace"}  # not one span ended by the caller's thread
    # The retry's event carries no time of its own: it is when the tracer heard of it, not
    # when the tracer's thread got to it.
    [agent] = [s for s in background_spans.get_finished_spans()
               if s.name.startswith("invoke_agent")]
    [retry] = agent.events
    assert before - 1_000_000 <= retry.timestamp <= after + 1_000_000  # ± clock rounding


def test_closing_builds_and_exports_what_a_cut_short_run_queued() -> None:
    """Ctrl-C: the run's events stop coming, the flow closes the tracer; every step that
    finished is exported."""
    exporter = InMemorySpanExporter()
    tracer = RunTracer([SimpleSpanProcessor(exporter)], background=True)
    events = [event for event in step_events(time.monotonic())
              if type(event).__name__ != "RunFinished"]
    for event in events:
        tracer(event)
    tracer.close()
    assert sorted(span.name for span in exporter.get_finished_spans()) == [
        "chat openai/x", "invoke_agent analyst"]
    tracer(events[0])  # after close: nothing, and no error
    assert tracer.error is None
