"""The one flow of ``dworkers run``, for a single run and a dataset run alike.

The flow owns everything the two modes share: the history and what a resumed run left
(its options hold unless given again, what it spent counts against ``--max-cost``), the
coercion of flags, the plan and tenant, the engine's options, preflight, the output folder
and its writability, the litellm prefetch, the fan-out of events to view, files and history,
Ctrl-C and SIGTERM, the "not saved" list and the exit code. A ``RunMode`` supplies only what
differs: its writer, view, recorder, the body that runs, and how it sums up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from dworkers.engine import Engine, RunOptions, new_run_id
from dworkers.errors import DworkersError, InputError, PlanValidationError, Problem
from dworkers.events import Event
from dworkers.redact import redact_url
from dworkers.run.inputs import FileRead, parse_inputs
from dworkers.text import json_text

if TYPE_CHECKING:
    from dworkers.engine import StepCache
    from dworkers.events import RunStarted
    from dworkers.history import History, RunRecord
    from dworkers.plans.base import BasePlan
    from dworkers.results import StepResult
    from dworkers.tenants.config import TenantConfig
    from dworkers.tracing import RunTracer
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_WAITING = 0, 1, 130, 3
Console = Any  # the view's rich console: only the view imports rich


@dataclass
class RunRequest:
    """``dworkers run``'s arguments, as parsed. ``None`` means "not given": resuming, the
    resumed run's choice; else the default."""

    plan: str | None
    inputs: list[str] = field(default_factory=list)  # "k=v" or "k=@file"
    tenant: str | None = None  # None: the resumed run's tenant, else "default"
    model: str | None = None
    api_base: str | None = None
    max_concurrency: int | None = None
    max_cost: float | None = None
    fail_fast: bool | None = None
    mock: bool | None = None
    dry_run: bool = False
    out: Path | None = None
    json: bool = False
    quiet: bool = False
    resume: str | None = None
    no_cache: bool | None = None
    # A dataset run: the file, its key column, when to stop starting rows, where rows run.
    data: Path | None = None
    key: str | None = None
    max_failures: int | None = None
    executor: str = "local"  # this process, or "ray"
    ray_address: str | None = None  # with "ray": an existing cluster to join
    formats: list[str] | None = None  # --format md,docx,pdf; None: the plan's, tenant's, or md
    trace: bool | None = None  # --trace/--no-trace; None: on when an OTLP endpoint is set
    # Approval gates decided up front (for automation): these steps, or every gate.
    approve: list[str] = field(default_factory=list)
    approve_all: bool = False

    @property
    def names_a_dataset(self) -> bool:
        return (self.data is not None or self.key is not None or self.max_failures is not None
                or self.executor != "local" or self.ray_address is not None)


@dataclass
class Resolved:
    """What both modes start from, checked: nothing has been called or written yet."""

    plan: BasePlan
    tenant: TenantConfig
    inputs: dict[str, str]  # -i values (and, resuming, the resumed run's)
    history: History | None
    resumed: RunRecord | None
    spent_before_usd: float = 0.0  # what the resumed run (and those it resumed) spent
    files: list[FileRead] = field(default_factory=list)  # read for -i values, for the history


class Outcome(Protocol):
    """What the flow needs of a run's result to choose the exit code."""

    @property
    def interrupted(self) -> bool: ...

    @property
    def success(self) -> bool: ...

    @property
    def waiting(self) -> bool: ...

    @property
    def failed(self) -> bool: ...


class Consumer(Protocol):
    """An ``on_event`` callback whose failures the flow reports as "not saved"."""

    def __call__(self, event: Event) -> None: ...

    @property
    def error(self) -> Any: ...


class Recorder(Consumer, Protocol):
    """A consumer that writes the history; ``close`` waits for its queued writes to land."""

    def close(self) -> None: ...


class Display(Protocol):
    def prepare(self, event: Any) -> None: ...

    def __call__(self, event: Event) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None, /) -> Any: ...


class RunMode:
    """What a single run and a dataset run do differently; the flow calls these in order:
    ``start`` (after preflight and the folder check), ``recorder``, ``writer``, ``view``,
    then ``body`` under the view, then ``outcome``, ``print_summary`` and ``document``."""

    kind: ClassVar[str]  # how the mode names itself in messages: "single" or "dataset"
    plan_hint: ClassVar[str]  # the command that names a plan, for "no plan given"

    def __init__(self, request: RunRequest, resolved: Resolved, engine: Engine) -> None:
        self.request, self.resolved, self.engine = request, resolved, engine
        self.files_read: list[FileRead] = list(resolved.files)  # recorded with the run

    # --- before anything is resolved -----------------------------------------------------

    @classmethod
    def check_request(cls, request: RunRequest, resumed: RunRecord | None,
                      inputs: dict[str, str]) -> None:
        """Refuse flags that do not fit this mode (or this resumed run)."""

    @classmethod
    def engine_parts(cls, resolved: Resolved, request: RunRequest
                     ) -> tuple[dict[str, StepResult] | None, StepCache | None]:
        """The earlier answers a resumed run reuses, and the cache, for the engine."""
        raise NotImplementedError

    # --- what differs ------------------------------------------------------------------

    streams: ClassVar[bool] = True  # the live view may stream answers token by token
    # Whether preflight runs before anything is recorded (it imports litellm) rather than in
    # ``engine.run``, once the view has painted while litellm loaded in the background.
    preflight_first: ClassVar[bool] = True

    def dry_run(self) -> int:
        raise NotImplementedError

    def nothing_to_do(self) -> bool:
        """Resuming: whether every step would be reused (then no new run is made)."""
        return False

    def start(self, err: Console) -> None:
        """Last checks and set-up before anything is recorded."""

    def recorder(self, history: History, options: dict[str, Any],
                 started: RunStarted) -> Recorder:
        """Records the run as it goes (a dataset run records every row now)."""
        raise NotImplementedError

    def writer(self, out_dir: Path) -> Consumer:
        raise NotImplementedError

    def view(self, err: Console, interactive: bool) -> Display:
        raise NotImplementedError

    async def body(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """After the body, however it ended."""

    def outcome(self, interrupted: bool) -> Outcome | None:
        """The run's result; None if it never started."""
        raise NotImplementedError

    def print_summary(self, err: Console, outcome: Any, out_dir: Path,
                      unsaved: list[str]) -> None:
        raise NotImplementedError

    def document(self, outcome: Any, out_dir: Path) -> dict[str, Any]:
        """The ``--json`` result."""
        raise NotImplementedError


def run_flow(request: RunRequest, mode_type: type[RunMode]) -> int:
    """Run a plan in ``mode_type``'s way; returns the exit code. User mistakes raise
    ``DworkersError`` before any call."""
    resolved = resolve(request, mode_type)
    engine = build_engine(request, resolved, mode_type)
    mode = mode_type(request, resolved, engine)
    if request.dry_run:
        return mode.dry_run()
    history, resumed = resolved.history, resolved.resumed
    if resumed is None or history is None:
        return run_live(mode)
    if mode.nothing_to_do():
        return EXIT_OK
    with history.resume_lock(resumed.run_id):  # a second resume of this run waits its turn
        return run_live(mode)


# --- resolving ---------------------------------------------------------------------------------


def resolve(request: RunRequest, mode_type: type[RunMode]) -> Resolved:
    """The history, the resumed run, flags, plan, tenant and inputs, checked."""
    from dworkers.targets import resolve_plan, resolve_tenant, tool_problems

    files: list[FileRead] = []
    inputs = parse_inputs(request.inputs, files)
    history: History | None = None
    resumed: RunRecord | None = None
    if not request.dry_run or request.resume is not None or mode_type.kind == "dataset":
        from dworkers.history import History

        history = History().open()  # a broken database is reported before anything is spent
    if request.resume is not None and history is not None:
        resumed = history.get_run(request.resume.strip() or "<empty>")
    mode_type.check_request(request, resumed, inputs)
    if resumed is not None:
        resume_defaults(request, resumed.plan, resumed.tenant, resumed.options)
        from dworkers.run.documents import recorded_files

        files += [file for file in recorded_files(resumed.options) if file.input not in inputs]
        inputs = {**resumed.inputs, **inputs}
    request.mock = bool(request.mock)
    request.fail_fast, request.no_cache = bool(request.fail_fast), bool(request.no_cache)
    if not request.plan:
        raise InputError([Problem("no plan given", f"name a plan: {mode_type.plan_hint}",
                                  "missing-plan", file="dworkers run")])
    plan = resolve_plan(request.plan)
    tenant = resolve_tenant(request.tenant or "default")
    if not request.dry_run or request.formats:
        from dworkers.report_files import deliverable_formats

        request.formats = list(deliverable_formats(request.formats, tenant, plan=plan))
    if resumed is None:
        from dworkers.run.documents import declared_file_inputs

        inputs = declared_file_inputs(plan, request.inputs, inputs, files)
    if problems := tool_problems(plan, tenant):
        raise PlanValidationError(problems)
    spent = 0.0
    if resumed is not None and history is not None:
        if resumed.plan != plan.name:
            raise InputError([Problem(
                f"run {resumed.run_id} ran plan {resumed.plan!r}, not {plan.name!r}",
                f"resume it with: dworkers run {resumed.plan} --resume {resumed.run_id}",
                "wrong-plan", file="--resume")])
        if request.max_cost is not None or tenant.limits.max_cost_usd is not None:
            # What the resumed run and every run it resumed paid for: a budget is for the
            # whole run, however often it is resumed. Reads every step: only if needed.
            spent = history.spent(resumed.run_id).cost_usd
    return Resolved(plan, tenant, inputs, history, resumed, spent, files)


def resume_defaults(request: RunRequest, plan: str, tenant: str, options: dict[str, Any]) -> None:
    """Fill what the command line left out from the run being resumed; what it says wins."""
    from dworkers.plans.registry import plan_registry
    from dworkers.tenants.registry import tenant_registry

    request.plan = request.plan or _name_or_path(plan_registry, plan, options.get("plan_path"))
    request.tenant = request.tenant or _name_or_path(tenant_registry, tenant,
                                                     options.get("tenant_path"))
    request.model = request.model or options.get("model")
    api_base = options.get("api_base")
    if not request.api_base and api_base:
        if "[redacted]" in str(api_base):
            raise InputError([Problem(
                "the resumed run's --api-base held credentials, which are never stored",
                "pass --api-base again", "missing-api-base", file="--resume")])
        request.api_base = api_base
    if request.mock is None:
        request.mock = bool(options.get("mock"))
    # Every other option the run was started with holds too, unless given again: a resumed
    # budgeted run keeps its budget (and what it spent counts: ``History.spent``).
    if request.max_cost is None and isinstance(options.get("max_cost"), int | float):
        request.max_cost = float(options["max_cost"])
    if request.max_concurrency is None and isinstance(options.get("max_concurrency"), int):
        request.max_concurrency = options["max_concurrency"]
    if request.fail_fast is None:
        request.fail_fast = bool(options.get("fail_fast"))
    if request.no_cache is None:
        request.no_cache = bool(options.get("no_cache"))
    if request.formats is None and isinstance(options.get("formats"), list):
        request.formats = [str(kind) for kind in options["formats"]]
    if request.out is None and isinstance(options.get("out"), str):
        request.out = Path(options["out"])
    data = options.get("data")
    kept = data.get("max_failures") if isinstance(data, dict) else None
    if request.max_failures is None and isinstance(kept, int):
        request.max_failures = kept


def _name_or_path(registry: Any, name: str, path: object) -> str:
    """How to find again the plan or tenant a run used: its name when that still finds the same
    file, else the file it was read from (a plan run from a path, say, is not registered)."""
    if not isinstance(path, str) or not Path(path).is_file():
        return name
    try:
        entry = registry.entry(name)
    except DworkersError:
        return path
    same = entry.path is not None and os.path.samefile(entry.path, path)
    return name if same else path




def build_engine(request: RunRequest, resolved: Resolved, mode_type: type[RunMode]) -> Engine:
    """The engine for this run; a resumed run's earlier spending counts against the budget."""
    from dworkers.engine import PlanBuilder

    options = RunOptions(max_concurrency=request.max_concurrency, max_cost_usd=request.max_cost,
                         fail_fast=bool(request.fail_fast), run_id=new_run_id(),
                         stream=mode_type.streams, spent_before_usd=resolved.spent_before_usd)
    from dworkers.run.gates import run_gates

    options.gates = run_gates(resolved.plan, resolved.history, resolved.resumed,
                              request.approve, request.approve_all)
    reuse, cache = mode_type.engine_parts(resolved, request)
    return PlanBuilder(resolved.plan, resolved.tenant, request.model, api_base=request.api_base,
                       mock=bool(request.mock), options=options, reuse=reuse,
                       cache=cache).build()


def check_writable(directory: Path) -> None:
    """Fail before the run if its folder could not be created; create nothing yet, so a run
    stopped by preflight leaves no empty folder behind."""
    existing = directory.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        reason = "not a directory" if not existing.is_dir() else "not writable"
        raise InputError([Problem(f"cannot write the run's outputs to {directory}: {existing} "
                                  f"is {reason}", "choose another directory with --out",
                                  "unwritable-out", file="--out")])


def recorded_options(request: RunRequest, engine: Engine) -> dict[str, Any]:
    """How the run was started, for ``--resume``: never a credential."""
    plan, tenant = engine.plan, engine.tenant
    return {
        "model": request.model,
        "api_base": redact_url(request.api_base) if request.api_base else None,
        "mock": request.mock,
        "tenant": tenant.id,
        "plan_path": str(plan.source.file) if plan.source else None,
        "tenant_path": str(tenant.source.file) if tenant.source else None,
        "max_cost": request.max_cost,
        "max_concurrency": request.max_concurrency,
        "fail_fast": bool(request.fail_fast),
        "no_cache": bool(request.no_cache),
        "out": str(request.out.absolute()) if request.out is not None else None,
        "formats": request.formats,
    }


# --- running -----------------------------------------------------------------------------------


def run_live(mode: RunMode) -> int:
    """Run under the view, keeping files and history as the run goes; sum up; exit code."""
    from dworkers import view

    request, engine, history = mode.request, mode.engine, mode.resolved.history
    if mode.preflight_first:  # a refused run ends here, before anything is recorded
        engine.preflight()
    run_id = engine.options.run_id or new_run_id()
    out_dir = (request.out or Path("dworkers-runs")) / run_id
    check_writable(out_dir)
    tracer = start_tracing(request, mode.resolved.resumed)
    err = view.console()
    prefetch: threading.Thread | None = None
    try:
        mode.start(err)
        started = engine.describe(run_id)
        recorder: Recorder | None = None
        if history is not None:  # HistoryError: reported, nothing spent
            options = recorded_options(request, engine)
            options["files"] = [file.to_dict() for file in mode.files_read]
            recorder = mode.recorder(history, options, started)
        writer = mode.writer(out_dir)
        if any(kind != "md" for kind in request.formats or ()):
            from dworkers.dataset.reader import safe_name
            from dworkers.report_files import DocumentsWriter

            writer = DocumentsWriter(writer, out_dir, engine.plan, engine.tenant,
                                     request.formats or (), row_name=safe_name)
        interactive = view.is_interactive(err) and not request.quiet
        display = mode.view(err, interactive)
        fan_out = FanOut([writer, display, *([recorder] if recorder is not None else []),
                          *([tracer] if tracer is not None else [])])
        engine.on_event = fan_out
        display.prepare(started)  # paints the moment the view opens
        if not request.mock:
            from dworkers.llm import prefetch_litellm

            prefetch = prefetch_litellm()  # loads while the view paints

        async def main() -> None:
            interrupt_cancels(asyncio.current_task())
            with display:
                if prefetch is not None:
                    await asyncio.to_thread(prefetch.join)
                await mode.body()  # each result reaches files, view and history as events

        interrupted = False
        with interruptions_restored():
            try:
                asyncio.run(main())
            except (KeyboardInterrupt, asyncio.CancelledError):
                interrupted = True
            finally:
                # The run has ended: a late Ctrl-C or SIGTERM (say, the second of two quick
                # presses) must not cut off the summary or the JSON.
                ignore_interruptions()
                mode.close()
                if recorder is not None:  # the last event may never have come (Ctrl-C)
                    recorder.close()
                end_tracing(tracer, err)
            outcome = mode.outcome(interrupted)
            if outcome is None:
                err.print("interrupted before the run started")
                return EXIT_INTERRUPTED
            unsaved = not_saved(writer, recorder, fan_out, out_dir)
            unsaved += keep_pre_approvals(mode, history, run_id, recorder)
            mode.print_summary(err, outcome, out_dir, unsaved)
            if request.json:
                summary = {**mode.document(outcome, out_dir), "out_dir": str(out_dir),
                           "files": files_written(out_dir)}
                document = json_text(summary) + "\n"
                if not view.write_stdout(document, err):
                    unsaved.append("the JSON result")
        return exit_code(outcome, interrupted, unsaved)
    finally:
        if tracer is not None:
            tracer.close()  # a run that failed before its body: what was traced is exported
        if prefetch is not None:
            # Never leave litellm half imported at exit: a finalizer waiting on the import
            # lock would hang the interpreter's shutdown. Ctrl-C still ends this wait.
            prefetch.join()


def files_written(out_dir: Path) -> list[str]:
    """The run folder's files, relative to it, for ``--json``: the deliverables (``report.md``,
    ``.docx``, ``.pdf``), ``run.json``, a dataset's ``results.*`` and a run's ``steps/*.md``. A
    dataset's ``rows/`` folder is named, not listed (it holds a file per row)."""
    try:
        entries = sorted(out_dir.iterdir())
    except OSError:
        return []
    files = [entry.name for entry in entries if entry.is_file()]
    steps = out_dir / "steps"
    if steps.is_dir():
        files += sorted(f"steps/{entry.name}" for entry in steps.iterdir() if entry.is_file())
    if (out_dir / "rows").is_dir():
        files.append("rows/")
    return files


def start_tracing(request: RunRequest, resumed: RunRecord | None) -> RunTracer | None:
    """The run's tracer when tracing is on (``--trace``, or an OTLP endpoint in the
    environment); a resumed run's trace links to the run it resumes. OpenTelemetry is imported
    then, and ``--trace`` without the ``otel`` extra is refused before anything runs."""
    from dworkers.tracing import tracer_for

    return tracer_for(request.trace, resumed_from=resumed.run_id if resumed else None)


def end_tracing(tracer: RunTracer | None, err: Console) -> None:
    """Export what is left of the trace; say once if the collector could not take it (a
    trace never fails a run)."""
    if tracer is None:
        return
    tracer.close()
    problems = [*tracer.export_problems, *([repr(tracer.error)] if tracer.error else [])]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        err.print(f"warning: the trace was not fully exported: {problems[0]}{more}",
                  markup=False, highlight=False)


def keep_pre_approvals(mode: RunMode, history: History | None, run_id: str,
                       recorder: Recorder | None) -> list[str]:
    """``--approve``/``--approve-all``: in the history, as the run's own decisions; what
    could not be saved."""
    request = mode.request
    if history is None or recorder is None or recorder.error is not None or not (
            request.approve or request.approve_all):
        return []
    from dworkers.errors import HistoryError
    from dworkers.run.gates import record_pre_approvals

    try:
        record_pre_approvals(history, run_id, mode.engine.plan, request.approve,
                             request.approve_all)
    except HistoryError as exc:  # the run is recorded; only who approved its gates is not
        return [f"the run history's approvals: {exc}"]
    return []


def not_saved(writer: Consumer, recorder: Consumer | None, fan_out: FanOut,
              out_dir: Path) -> list[str]:
    """What the run's folder or history lacks: the run is not done without it."""
    unsaved = [f"{writer.error} in {out_dir}"] if writer.error else []
    unsaved += [f"while recording the run: {problem}" for problem in fan_out.errors]
    if recorder is not None and recorder.error is not None:
        unsaved.append(f"the run history: {recorder.error}")
    return unsaved


def exit_code(outcome: Outcome, interrupted: bool, unsaved: list[str]) -> int:
    if interrupted or outcome.interrupted:
        return EXIT_INTERRUPTED
    if outcome.waiting and not outcome.failed and not unsaved:
        return EXIT_WAITING  # everything finished is saved; a person decides the rest
    return EXIT_OK if outcome.success and not unsaved else EXIT_FAILED


class FanOut:
    """The engine's ``on_event``: every event to every consumer (files, view, history).

    One consumer's failure (a view bug, an unwritable file) must not stop the run, nor starve
    the others: the run goes on and the first few errors are kept in ``errors`` to report."""

    MAX_ERRORS = 5

    def __init__(self, consumers: list[Callable[[Event], None]]) -> None:
        self.consumers = consumers
        self.errors: list[str] = []

    def __call__(self, event: Event) -> None:
        for consumer in self.consumers:
            try:
                consumer(event)
            except Exception as exc:
                if len(self.errors) < self.MAX_ERRORS:
                    self.errors.append(f"{type(consumer).__name__}: {exc!r}")


# --- Ctrl-C and SIGTERM ------------------------------------------------------------------------

INTERRUPTIONS = (signal.SIGINT, signal.SIGTERM)
"""Ctrl-C, and the polite stop of ``timeout``, ``docker stop``, systemd and CI cancellations."""


@contextlib.contextmanager
def interruptions_restored() -> Iterator[None]:
    """Put back whatever Ctrl-C and SIGTERM did before (the flow is also called in-process),
    so that after the summary a signal ends the process again."""
    previous = {}
    for number in INTERRUPTIONS:
        with contextlib.suppress(ValueError):  # pragma: no cover - no signals on this platform
            previous[number] = signal.getsignal(number)
    try:
        yield
    finally:
        for number, handler in previous.items():
            if handler is not None:
                with contextlib.suppress(ValueError):  # not the main thread: nothing to restore
                    signal.signal(number, handler)


def ignore_interruptions() -> None:
    """While the summary and the JSON are written (a moment, never a wait): a late Ctrl-C or
    SIGTERM waits until ``interruptions_restored`` puts the handlers back."""
    for number in INTERRUPTIONS:
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(number, signal.SIG_IGN)


def interrupt_cancels(task: asyncio.Task[Any] | None) -> None:
    """Make every Ctrl-C and SIGTERM cancel the run's task. The engine then cancels in-flight
    calls and accounts for every step; a second press only cuts the wait for calls to wind
    down, so the outputs are written either way (asyncio's default would raise
    KeyboardInterrupt wherever the second press lands, and SIGTERM would kill the process with
    no report and run.json left "running")."""
    if task is None:
        return
    loop = asyncio.get_running_loop()
    for number in INTERRUPTIONS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # main thread
            loop.add_signal_handler(number, task.cancel)


__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_WAITING", "FanOut", "Resolved",
           "RunMode", "RunRequest", "run_flow"]
