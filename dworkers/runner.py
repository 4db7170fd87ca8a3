"""``dworkers run``: resolve the plan, tenant and inputs, run the engine under a view, keep the
outputs, and turn the outcome into an exit code. The CLI only parses arguments into a
``RunRequest``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dworkers.engine import Engine, RunOptions, new_run_id
from dworkers.errors import DworkersError, InputError, Problem
from dworkers.events import Event, RunResult
from dworkers.redact import redact_url
from dworkers.tenants.config import TenantConfig
from dworkers.text import clean, json_text
from dworkers.types import WorkerRole

if TYPE_CHECKING:
    from dworkers.history import History

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
MAX_INPUT_FILE_BYTES = 10 * 1024 * 1024
INPUT_PIPE_WAIT = 10.0  # seconds an --input NAME=@pipe is waited on, at most


@dataclass
class RunRequest:
    plan: str | None
    inputs: list[str] = field(default_factory=list)  # "k=v" or "k=@file"
    tenant: str | None = None  # None: the resumed run's tenant, else "default"
    model: str | None = None
    api_base: str | None = None
    max_concurrency: int | None = None
    max_cost: float | None = None
    fail_fast: bool | None = None  # None: the resumed run's choice, else False
    mock: bool | None = None  # None: the resumed run's choice, else False
    dry_run: bool = False
    out: Path | None = None
    json: bool = False
    quiet: bool = False
    resume: str | None = None
    no_cache: bool | None = None  # None: the resumed run's choice, else False


def parse_inputs(pairs: list[str]) -> dict[str, str]:
    """``k=v`` pairs; ``k=@path`` reads the value from a file. Every bad pair reported."""
    values: dict[str, str] = {}
    problems = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            problems.append(Problem(f"input {pair!r} is not NAME=VALUE",
                                    'write --input brief="..." or --input brief=@brief.txt',
                                    "bad-input", file="--input"))
            continue
        if value.startswith("@@"):  # a literal '@'
            value = value[1:]
        elif value.startswith("@"):
            path = Path(value[1:]).expanduser()
            try:
                value = read_input_file(path)
            except (OSError, ValueError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                problems.append(Problem(f"cannot read input {name!r} from {str(path)!r}: {reason}",
                                        "check the path after '@' (use '@@' to start a value "
                                        "with a literal '@')", "bad-input", file="--input"))
                continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # bytes the terminal could not decode
            problems.append(Problem(f"input {name!r} is not valid text (undecodable bytes)",
                                    "pass UTF-8 text, or read it from a file with NAME=@file",
                                    "bad-input", file="--input"))
            continue
        values[name] = value
    if problems:
        raise InputError(problems)
    return values


def read_input_file(path: Path, wait: float | None = None) -> str:
    """The text of an ``--input NAME=@path`` file. A pipe (``@/dev/stdin``, ``@<(cmd)``, a
    FIFO) is read too, but never waited on for more than ``wait`` seconds in all, so a FIFO
    nobody writes to cannot hang the command."""
    wait = INPUT_PIPE_WAIT if wait is None else wait
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # opening a FIFO never waits
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ValueError("it is a directory")
        if stat.S_ISREG(mode):
            os.set_blocking(fd, True)
            raw = _read_bounded(fd, None)
        else:
            raw = _read_bounded(fd, time.monotonic() + wait)
    except TimeoutError as exc:
        raise ValueError(f"{exc} after {wait:g}s") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_INPUT_FILE_BYTES:
        raise ValueError("larger than 10 MiB")
    return raw.decode("utf-8")


def _read_bounded(fd: int, deadline: float | None) -> bytes:
    """Up to MAX_INPUT_FILE_BYTES + 1 bytes from ``fd``. A non-blocking ``fd`` (a pipe) is
    waited on until ``deadline`` at most, for a writer to come and then to finish."""
    import select

    chunks: list[bytes] = []
    size = 0
    while size <= MAX_INPUT_FILE_BYTES:
        try:
            chunk = os.read(fd, min(1 << 20, MAX_INPUT_FILE_BYTES + 1 - size))
        except BlockingIOError:  # a writer, who has not finished
            chunk = None
        if chunk:
            chunks.append(chunk)
            size += len(chunk)
            continue
        if chunk == b"" and (chunks or deadline is None):
            break  # the end of the file, or the writer closed the pipe
        left = (deadline or 0) - time.monotonic()
        if left <= 0:
            raise TimeoutError("still no end of input" if chunks or chunk is None
                               else "nothing to read: no writer")
        if chunk is None:
            select.select([fd], [], [], left)
        else:  # no writer yet: a FIFO reads as ended until one opens it
            time.sleep(min(0.05, left))
    return b"".join(chunks)


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
    # budgeted run keeps its budget.
    if request.max_cost is None and isinstance(options.get("max_cost"), int | float):
        request.max_cost = float(options["max_cost"])
    if request.max_concurrency is None and isinstance(options.get("max_concurrency"), int):
        request.max_concurrency = options["max_concurrency"]
    if request.fail_fast is None:
        request.fail_fast = bool(options.get("fail_fast"))
    if request.no_cache is None:
        request.no_cache = bool(options.get("no_cache"))
    if request.out is None and isinstance(options.get("out"), str):
        request.out = Path(options["out"])


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


def resolve_tenant(name: str) -> TenantConfig:
    from dworkers import loader
    from dworkers.targets import looks_like_path
    from dworkers.tenants.registry import tenant_registry

    if looks_like_path(name):
        return loader.load_tenant(name)
    return tenant_registry.get(name)


@dataclass
class _Prepared:
    """Everything a run needs, checked: nothing has been called or written yet."""

    engine: Engine
    inputs: dict[str, str]
    history: History | None
    resumed_from: str | None


def execute(request: RunRequest) -> int:
    """Run a plan for the CLI; returns the exit code. User mistakes raise ``DworkersError``."""
    prepared = prepare(request)
    resumed, history = prepared.resumed_from, prepared.history
    reused = prepared.engine.reused_steps(prepared.inputs) if resumed is not None else None
    if request.dry_run:
        return dry_run(prepared.engine, prepared.inputs, as_json=request.json,
                       reused=reused, resumed_from=resumed)
    if resumed is None or history is None:
        return run_live(request, prepared)
    if reused is not None and all(reused.values()):
        return nothing_to_do(request, history, resumed)
    with history.resume_lock(resumed):  # a second resume of this run is refused meanwhile
        return run_live(request, prepared)


def nothing_to_do(request: RunRequest, history: History, resumed: str) -> int:
    """Resuming a run whose every step would be reused: say so, and make no new run."""
    from dworkers import view

    err = view.console()
    view.print_ok(err, f"run {resumed} has nothing left to do: every step succeeded and would "
                       "be asked the same thing (no new run made)")
    if request.json:
        view.write_stdout(json_text(history.to_run_result(resumed).summary()) + "\n", err)
    return EXIT_OK


def prepare(request: RunRequest) -> _Prepared:
    """Resolve the plan, tenant, inputs and resumed run, and build the engine."""
    from dworkers.engine import PlanBuilder
    from dworkers.targets import resolve_plan

    inputs = parse_inputs(request.inputs)
    history = resumed = None
    if not request.dry_run or request.resume is not None:
        from dworkers.history import History

        history = History().open()  # a broken database is reported before anything is spent
    if request.resume is not None and history is not None:
        resumed = history.get_run(request.resume.strip() or "<empty>")
        resume_defaults(request, resumed.plan, resumed.tenant, resumed.options)
        inputs = {**resumed.inputs, **inputs}
    request.mock = bool(request.mock)
    request.fail_fast, request.no_cache = bool(request.fail_fast), bool(request.no_cache)
    if not request.plan:
        raise InputError([Problem("no plan given", "name a plan: dworkers run PLAN",
                                  "missing-plan", file="dworkers run")])
    plan = resolve_plan(request.plan)
    tenant = resolve_tenant(request.tenant or "default")
    reuse = None
    if resumed is not None and history is not None:
        if resumed.plan != plan.name:
            raise InputError([Problem(
                f"run {resumed.run_id} ran plan {resumed.plan!r}, not {plan.name!r}",
                f"resume it with: dworkers run {resumed.plan} --resume {resumed.run_id}",
                "wrong-plan", file="--resume")])
        reuse = history.reuse_for(resumed.run_id, plan)
    cache = None
    if history is not None and not request.no_cache and not request.mock:
        from dworkers.history import HistoryCache

        cache = HistoryCache(history)
    options = RunOptions(max_concurrency=request.max_concurrency, max_cost_usd=request.max_cost,
                         fail_fast=request.fail_fast, run_id=new_run_id())
    engine = PlanBuilder(plan, tenant, request.model, api_base=request.api_base,
                         mock=request.mock, options=options, reuse=reuse, cache=cache).build()
    return _Prepared(engine, engine.resolve_inputs(inputs), history,
                     resumed.run_id if resumed else None)


def run_live(request: RunRequest, prepared: _Prepared) -> int:
    """Run under the live view (or line view), keeping files and history as steps finish."""
    from dworkers import view
    from dworkers.outputs import RunWriter

    engine, values = prepared.engine, prepared.inputs
    prefetch = None
    if not request.mock:
        from dworkers.llm import prefetch_litellm

        prefetch = prefetch_litellm()  # loads while the tree paints
    run_id = engine.options.run_id or new_run_id()
    out_dir = (request.out or Path("dworkers-runs")) / run_id
    check_writable(out_dir)
    writer = RunWriter(out_dir, engine.plan, values)
    err = view.console()
    capped = role_cap_note(engine, request.max_concurrency)
    if capped:
        view.print_note(err, capped)
    interactive = view.is_interactive(err) and not request.quiet
    display = view.make_view(interactive=interactive, quiet=request.quiet, console=err)
    # Streaming costs client CPU per token (which delays the next ready step): only the live
    # tree shows tokens as they arrive.
    engine.options.stream = interactive and not request.json
    fan_out = FanOut([writer, display])
    recorder = None
    if prepared.history is not None:
        from dworkers.history import HistoryRecorder

        recorder = HistoryRecorder(prepared.history, inputs=values,
                                   resumed_from=prepared.resumed_from,
                                   options=recorded_options(request, engine))
        fan_out.consumers.append(recorder)
    engine.on_event = fan_out
    display.prepare(engine.describe(run_id))  # the tree paints the moment the view opens

    async def main() -> RunResult:
        interrupt_cancels(asyncio.current_task())
        with display:
            if prefetch is not None:
                await asyncio.to_thread(prefetch.join)
            return await engine.run(values)  # preflight first: no call unless all is well

    interrupted = False
    with interruptions_restored():
        try:
            result = asyncio.run(main())
        except (KeyboardInterrupt, asyncio.CancelledError):
            interrupted = True
            if engine.result is None:
                err.print("interrupted before the run started")
                return EXIT_INTERRUPTED
            result = engine.result
        finally:
            # The run has ended: a late Ctrl-C or SIGTERM (say, the second of two quick
            # presses) must not cut off the summary or the JSON.
            ignore_interruptions()
        unsaved = []  # what the run's folder or history lacks: the run is not done without it
        if writer.error:
            unsaved.append(f"{writer.error} in {out_dir}")
        unsaved += [f"while recording the run: {problem}" for problem in fan_out.errors]
        if recorder is not None and recorder.error is not None:
            unsaved.append(f"the run history: {recorder.error}")
        view.print_summary(err, result, str(out_dir), unsaved)
        if request.json and not view.write_stdout(json_text(result.summary()) + "\n", err):
            unsaved.append("the JSON result")
    if interrupted or result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if result.success and not unsaved else EXIT_FAILED


def role_cap_note(engine: Engine, asked: int | None) -> str | None:
    """When ``--max-concurrency`` asks for more than the tenant's per-role caps let this plan
    run at once, say so (else "50" silently runs 4)."""
    if asked is None:
        return None
    per_role: dict[WorkerRole, int] = {}
    for step in engine.plan.steps:
        per_role[step.worker_role] = per_role.get(step.worker_role, 0) + 1
    caps = {role: engine.tenant.worker(role).max_concurrent_tasks for role in per_role}
    possible = sum(min(count, caps[role] or count) for role, count in per_role.items())
    if possible >= min(asked, len(engine.plan.steps)):
        return None
    limits = ", ".join(f"{role.value} {cap}" for role, cap in caps.items()
                       if cap is not None and cap < per_role[role])
    return (f"--max-concurrency {asked}: at most {possible} steps of this plan run at once, "
            f"because tenant {engine.tenant.id!r} caps its workers ({limits} at a time) — raise "
            "workers.<role>.max_concurrent_tasks in the tenant file to run more")


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
    }


INTERRUPTIONS = (signal.SIGINT, signal.SIGTERM)
"""Ctrl-C, and the polite stop of ``timeout``, ``docker stop``, systemd and CI cancellations."""


@contextlib.contextmanager
def interruptions_restored() -> Iterator[None]:
    """Put back whatever Ctrl-C and SIGTERM did before (the CLI's runner is also called
    in-process)."""
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
    """From here on the run's files are being written: a late Ctrl-C or SIGTERM waits."""
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


def dry_run(engine: Engine, inputs: dict[str, str], *, as_json: bool,
            reused: dict[str, bool] | None = None, resumed_from: str | None = None) -> int:
    """Render every prompt and the schedule without calling anything; resuming, say which
    steps the earlier run's answers would cover and which would be called."""
    schedule = engine.schedule()
    placeholders = {s.step_id: f"<output of {s.step_id}>" for s in engine.plan.steps}
    steps: list[dict[str, Any]] = []
    for step in engine.plan.steps:
        steps.append({
            "step_id": step.step_id,
            "role": step.worker_role.value,
            "model": engine.model_for(step),
            "timeout_seconds": engine.timeout_for(step),
            "retry_max": engine.retries_for(step),
            "messages": engine.messages_for(step, inputs, placeholders),
        })
        if reused is not None:
            steps[-1]["reused"] = reused[step.step_id]
    if as_json:
        sys.stdout.write(json_text({"plan": engine.plan.name, "schedule": schedule,
                                    "steps": steps}) + "\n")
        return EXIT_OK
    out = [f"Plan {engine.plan.name} for tenant {engine.tenant.id}: {len(steps)} steps", "",
           "Schedule (steps on one line start together):"]
    out += [f"  {i}. {', '.join(wave)}" for i, wave in enumerate(schedule, 1)]
    if reused is not None:
        kept = [sid for sid, hit in reused.items() if hit]
        called = [sid for sid, hit in reused.items() if not hit]
        out += ["", f"Resuming run {resumed_from}:",
                f"  reused ({len(kept)}): {', '.join(kept) or '-'}",
                f"  called ({len(called)}): {', '.join(called) or '-'}"]
    for step_data in steps:
        out += ["", f"=== {step_data['step_id']} ({step_data['role']}, {step_data['model']}, "
                    f"timeout {step_data['timeout_seconds']:g}s, retries {step_data['retry_max']})"]
        for message in step_data["messages"]:
            out += [f"--- {message['role']}", message["content"]]
    sys.stdout.write(clean("\n".join(out)) + "\n")
    return EXIT_OK


__all__ = ["RunRequest", "execute", "parse_inputs"]
