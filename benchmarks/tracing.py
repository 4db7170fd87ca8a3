"""What tracing costs: CPU per call, a run's makespan, and start-up with the extra installed.

1. CPU per call: a run's events for N one-call steps (StepStarted, AttemptFinished,
   StepFinished) through ``RunTracer`` with an in-memory exporter, batching as in production
   (and exporting at once, the worst case), with content capture off and on; CPU time of the
   whole process (the batch thread included) per step, against the same events through an
   ``EventLog``.
2. Makespan: a plan of independent steps through the real engine and litellm against the
   local server (50 ms a call), traced (exported over OTLP/HTTP, batched as ``tracer_for``
   does, to a receiver in its own process on 127.0.0.1) vs not, runs interleaved; target:
   traced ≤ 1.02 × untraced. Also the CPU per call of the whole process and of the event
   loop's thread alone (spans are built and exported on threads of their own: what tracing
   adds to the loop's is what delays the next request).
3. Start-up of a run: ``import dworkers.cli, dworkers.run.flow, dworkers.run.single`` (what
   ``dworkers run`` loads before it calls anything) with and without what the flow adds,
   ``start_tracing`` (``import dworkers.tracing; tracer_for(None)``), no endpoint set, in fresh
   interpreters; target: ratio about 1.00, and no ``opentelemetry`` module loaded.
   (``list``/``validate``/``--help`` never import ``dworkers.tracing``.)

    python benchmarks/tracing.py [--steps 2000] [--runs 5] [--startup-runs 15]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

from _common import ROOT, local_server, plan_from_graph

from dworkers.engine import PlanBuilder, RunOptions
from dworkers.events import (
    AttemptFinished,
    EventLog,
    RunFinished,
    RunStarted,
    StepFinished,
    StepInfo,
    StepStarted,
)
from dworkers.results import RunResult, StepResult, StepStatus
from dworkers.tenants.config import LimitsConfig, ModelsConfig, TenantConfig
from dworkers.tracing import RunTracer, tracer_for

MODEL = "openai/bench-model"
MESSAGES = ({"role": "system", "content": "You are an analyst at ACME. " * 20},
            {"role": "user", "content": "Summarise the quarter's sales by region. " * 40})


def one_run(steps: int) -> Iterator[object]:
    """The events of a run of ``steps`` independent one-call steps."""
    at = time.monotonic()
    infos = tuple(StepInfo(f"s{i}", f"S{i}", "analyst", MODEL, ()) for i in range(steps))
    yield RunStarted("bench", "bench-plan", "bench", infos, at)
    for i in range(steps):
        sid = f"s{i}"
        yield StepStarted(sid, 1, MODEL, at, MESSAGES)
        yield AttemptFinished(sid, 1, MODEL, "bench-model-2024", 812, 240, "stop", 0.0012,
                              endpoint="https://api.example.com", answer="Sales grew. " * 60,
                              started_at=at, at=at)
        yield StepFinished(StepResult(step_id=sid, status=StepStatus.SUCCEEDED, attempts=1,
                                      model="bench-model-2024", prompt_tokens=812,
                                      completion_tokens=240, cost_usd=0.0012), at)
    yield RunFinished(RunResult(run_id="bench", plan="bench-plan", tenant="bench",
                                success=True), at)


def cpu_per_step(consumer_of: Callable[[], tuple[Callable[[object], None], Callable[[], None]]],
                 steps: int, runs: int) -> float:
    """The best CPU seconds per step over ``runs`` runs (the events are made beforehand)."""
    best = float("inf")
    for _ in range(runs):
        events = list(one_run(steps))
        consume, finish = consumer_of()
        start = time.process_time()
        for event in events:
            consume(event)
        finish()  # the batch thread's export counts too
        best = min(best, (time.process_time() - start) / steps)
    return best


def tracer(batch: bool, capture: bool) -> Callable[[], tuple[Callable[[object], None],
                                                               Callable[[], None]]]:
    def make() -> tuple[Callable[[object], None], Callable[[], None]]:
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        exporter = InMemorySpanExporter()
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        traced = RunTracer([processor], capture_content=capture)
        return traced, traced.close
    return make


def event_log() -> tuple[Callable[[object], None], Callable[[], None]]:
    log = EventLog()
    return log, lambda: None  # type: ignore[return-value]


# --- makespan -------------------------------------------------------------------------------


# An OTLP/HTTP collector that takes every export and answers 200, in its own process (in this
# one it would compete with the engine for the GIL); it prints its port.
RECEIVER = """
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@contextlib.contextmanager
def otlp_receiver() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield f"http://127.0.0.1:{proc.stdout.readline().strip()}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def makespan(url: str, steps: int, traced: bool) -> tuple[float, float, float]:
    """One run's makespan, the process's CPU seconds and the event loop thread's (what delays
    the next request); traced, it is exported as ``dworkers run`` does (``tracer_for`` with
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` set), and the wait for the last export counts."""
    run_tracer = tracer_for(True) if traced else None
    consume: Callable[[object], None] = run_tracer if run_tracer is not None else (
        lambda event: None)
    tenant = TenantConfig(id="bench", models=ModelsConfig(default=MODEL),
                          limits=LimitsConfig(max_concurrency=16, max_cost_usd=None))
    graph: dict[str, list[str]] = {f"s{i}": [] for i in range(steps)}
    engine = PlanBuilder(plan_from_graph("makespan", graph), tenant, api_base=url,
                         options=RunOptions(stream=False), on_event=consume).build()
    start, cpu, loop = time.perf_counter(), time.process_time(), time.thread_time()
    result = asyncio.run(engine.run())
    loop = time.thread_time() - loop  # the loop runs in this thread; the tracer's do not
    if run_tracer is not None:
        run_tracer.close()
        assert run_tracer.error is None and not run_tracer.export_problems, (
            run_tracer.error, run_tracer.export_problems)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert result.success
    return elapsed, cpu, loop


# --- start-up ---------------------------------------------------------------------------------

RUN_PATH = "import sys, time, dworkers.cli, dworkers.run.flow, dworkers.run.single\n"
ASK = ("from dworkers.run.flow import RunRequest, start_tracing\n"
       "assert start_tracing(RunRequest(plan=None), None) is None\n")
WITH_TRACING = (RUN_PATH + ASK
                + "assert not any(m.startswith('opentelemetry') for m in sys.modules)\n")
WITHOUT = RUN_PATH
# The same, timed from inside: what importing the module and asking costs on the run path.
ONLY_TRACING = RUN_PATH + "start = time.perf_counter()\n" + ASK + (
    "print(time.perf_counter() - start)\n")


def startup(code: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--makespan-steps", type=int, default=128)
    parser.add_argument("--latencies", default="0.05,0.5",
                        help="seconds a call takes at the server, comma-separated")
    parser.add_argument("--startup-runs", type=int, default=15)
    args = parser.parse_args()

    print(f"CPU per call ({args.steps} one-call steps, best of {args.runs}):")
    base = cpu_per_step(event_log, args.steps, args.runs)
    print(f"  {'events kept in a list (baseline)':44} {base * 1e6:8.1f} µs")
    for label, batch, capture in (("traced, batch export", True, False),
                                  ("traced, batch export, content captured", True, True),
                                  ("traced, export at once (worst case)", False, False)):
        cost = cpu_per_step(tracer(batch, capture), args.steps, args.runs)
        print(f"  {label:44} {cost * 1e6:8.1f} µs  (+{(cost - base) * 1e6:.1f} µs a call)")

    for latency in (float(x) for x in args.latencies.split(",")):
        print(f"\nMakespan, {args.makespan_steps} calls of {latency * 1000:g} ms, 16 at a time, "
              f"exported over OTLP/HTTP to 127.0.0.1 (median of {args.runs}, interleaved):")
        with local_server("--latency", str(latency)) as url, otlp_receiver() as collector:
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector
            os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-real-key")
            makespan(url, 4, True)  # warm litellm up
            plain: list[tuple[float, float, float]] = []
            traced: list[tuple[float, float, float]] = []
            for _ in range(args.runs):
                plain.append(makespan(url, args.makespan_steps, False))
                traced.append(makespan(url, args.makespan_steps, True))
        off, on = (statistics.median(run[0] for run in runs) for runs in (plain, traced))
        cpu_off, cpu_on = (statistics.median(run[1] for run in runs) / args.makespan_steps
                           for runs in (plain, traced))
        loop_off, loop_on = (statistics.median(run[2] for run in runs) / args.makespan_steps
                             for runs in (plain, traced))
        print(f"  untraced {off:.3f}s  traced {on:.3f}s  ratio {on / off:.3f} (target ≤ 1.02)"
              f"\n  CPU per call, whole process: {cpu_off * 1000:.2f} ms untraced, "
              f"{cpu_on * 1000:.2f} ms traced (+{(cpu_on - cpu_off) * 1000:.2f} ms)"
              f"\n  CPU per call, event loop thread: {loop_off * 1000:.2f} ms untraced, "
              f"{loop_on * 1000:.2f} ms traced (+{(loop_on - loop_off) * 1000:.2f} ms)")

    # Compiled modules are cached as installed ones are: without .pyc files the figure would
    # be the compiler's.
    del os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OTEL_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(ROOT)
    for code in (WITH_TRACING, WITHOUT):
        startup(code, env)  # warm the caches
    with_tracing: list[float] = []
    without: list[float] = []
    for _ in range(args.startup_runs):  # interleaved: load on the machine hits both alike
        with_tracing.append(startup(WITH_TRACING, env))
        without.append(startup(WITHOUT, env))
    own = statistics.median(
        float(subprocess.run([sys.executable, "-c", ONLY_TRACING], env=env, check=True,
                             capture_output=True, text=True).stdout)
        for _ in range(args.startup_runs))
    a, b = statistics.median(with_tracing), statistics.median(without)
    print(f"\nStart-up with the otel extra installed, no endpoint (median of "
          f"{args.startup_runs}):\n  the run path {b * 1000:.0f} ms; with "
          f"start_tracing {a * 1000:.0f} ms; ratio {a / b:.3f}\n"
          f"  start_tracing alone (import dworkers.tracing, tracer_for(None)): "
          f"{own * 1000:.2f} ms")


if __name__ == "__main__":
    main()
