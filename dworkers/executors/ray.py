"""The Ray executor: a dataset's rows run on a Ray cluster, its decisions and files stay here.

The driver (this process) starts one ``RowWorker`` actor per CPU of the cluster and one
``Coordinator`` (``ray_coordinator``) that holds the run's rate gate and budget, streams rows
(whole plan instances) to the workers and gets their events back. It alone paints the view,
writes results.jsonl, the row reports and the history, exactly as a local run does from the
same events. A worker that dies has its unfinished rows run again elsewhere, reusing the steps
it had finished, and every row is reported exactly once. The coordinator lives on this machine;
if it dies the run stops as interrupted: rows in flight end cancelled, rows not finished are
left for ``--resume``, none is failed for it.

Keys (``DWORKERS_RAY_KEYS``). By default (``send``) the workers get the providers' variables
the plan needs (keys, endpoints — see ``worker_environment``) from this process, through their
Ray environment (``runtime_env``), never as arguments. A cluster keeps an actor's
``runtime_env`` in its metadata: whoever can read that — ``ray list actors --detail``, the
dashboard, the state API, any job on the cluster — can read those values. With
``DWORKERS_RAY_KEYS=worker-env`` this process sends no variable at all: each worker uses the
environment its node's Ray was started with (``OPENAI_API_KEY=… ray start …``), so keys never
leave the machines that hold them. This process still checks that its own environment has the
keys the plan needs; a worker without them reports which are missing and the run stops.

Without an address this starts a private Ray instance sized to the machine: its files live in a
temporary directory removed afterwards, it is protected by a random token, its logs are kept
free of the environment it passes on, and Ray prints nothing on the terminal.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import copy
import dataclasses
import logging
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from dworkers import __version__
from dworkers.budget import LocalBudget
from dworkers.errors import DworkersError, InputError, PreflightError, Problem
from dworkers.events import DatasetFinished, ExecutorNotice, RowFinished, RowStarted, StepFinished
from dworkers.executors.ray_coordinator import start_coordinator
from dworkers.executors.ray_workers import Batch, RowWorker, process_started
from dworkers.llm import load_litellm
from dworkers.ratelimit import LocalRateGate
from dworkers.results import DatasetResult, Row, RowResult, Rows, RowStatus, each_row

KEYS_VARIABLE = "DWORKERS_RAY_KEYS"
KEY_MODES = ("send", "worker-env")  # see the module's docstring
COORDINATOR_LOST = ("the Ray coordinator died (killed, or out of memory?): no call could be "
                    "paced or paid for — `dworkers run --resume` runs the rows left")
MAX_ROW_DEATHS = 3  # a row whose worker died this often fails instead of killing more
CANCEL_WAIT_SECONDS = 10.0  # how long Ctrl-C waits for workers to report their rows

# What a worker needs from the driver's environment: the settings of the providers the plan
# calls (keys, endpoints, versions, as litellm reads them), dworkers' and litellm's own
# settings, proxies and certificates. Nothing else leaves this machine.
_PROVIDER_PREFIXES = {
    "openai": ("OPENAI_",), "text-completion-openai": ("OPENAI_",),
    "azure": ("AZURE_",), "azure_ai": ("AZURE_",),
    "bedrock": ("AWS_",), "sagemaker": ("AWS_",),
    "vertex_ai": ("VERTEXAI_", "VERTEX_", "GOOGLE_"), "gemini": ("GEMINI_", "GOOGLE_"),
    "together_ai": ("TOGETHERAI_", "TOGETHER_"), "fireworks_ai": ("FIREWORKS_",),
    "huggingface": ("HUGGINGFACE_", "HF_"),
}
_ALWAYS = re.compile(r"DWORKERS_\w+|LITELLM_\w+|(?:HTTPS?|NO|ALL)_PROXY|SSL_CERT_FILE"
                     r"|REQUESTS_CA_BUNDLE", re.IGNORECASE)


def provider_prefixes(model: str) -> tuple[str, ...]:
    """Variable-name prefixes of a litellm model's provider (``openai/x`` → ``OPENAI_``)."""
    provider = model.split("/", 1)[0].lower() if "/" in model else "openai"
    return _PROVIDER_PREFIXES.get(provider, (provider.upper().replace("-", "_") + "_",))


def worker_environment(engine: Any, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables passed to workers (see above); the tenant's key variables included."""
    environ = os.environ if environ is None else environ
    models = {engine.model_for(step) for step in engine.plan.steps}
    prefixes = tuple(p for model in models for p in provider_prefixes(model))
    names = {name for name in environ
             if _ALWAYS.fullmatch(name) or name.upper().startswith(prefixes)}
    names |= {key for model in models if (key := engine.tenant.api_key_env_for(model))}
    names.discard("DWORKERS_HOME")  # workers keep no history
    return {name: environ[name] for name in sorted(names) if name in environ}


def keys_mode(environ: Mapping[str, str] | None = None) -> str:
    """How workers get the providers' keys: ``DWORKERS_RAY_KEYS`` (see the module's docstring)."""
    environ = os.environ if environ is None else environ
    mode = environ.get(KEYS_VARIABLE, "").strip().lower() or "send"
    if mode not in KEY_MODES:
        raise InputError([Problem(f"{KEYS_VARIABLE}={environ[KEYS_VARIABLE]!r} is not a way to "
                                  "pass keys to Ray workers",
                                  f"set it to one of: {', '.join(KEY_MODES)}", "invalid-option",
                                  file=KEYS_VARIABLE)])
    return mode


def runtime_env_for(engine: Any, mode: str, environ: Mapping[str, str] | None = None,
                    inherited: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Ray environment workers start with: the providers' variables (``send``), or
    nothing at all (``worker-env``: workers use their node's own environment).

    ``inherited``: the environment the workers have anyway (a private cluster's workers are
    started with this process's environment as it was when the cluster started). Variables
    they already have with the same value are not sent: an actor with a ``runtime_env`` of
    its own cannot use the worker processes Ray started in advance and waits for new ones."""
    if mode == "worker-env":
        return {}
    wanted = worker_environment(engine, environ)
    if inherited is not None:
        wanted = {name: value for name, value in wanted.items() if inherited.get(name) != value}
    return {"env_vars": wanted} if wanted else {}


# --- the cluster ----------------------------------------------------------------------------


_AUTH_TOKEN = secrets.token_hex(32)  # this process's private Ray instances' (``local_cluster``)


@contextlib.contextmanager
def local_cluster(num_cpus: int | None = None) -> Iterator[Path]:
    """A private Ray instance on this machine for the duration of the block; yields the
    directory that holds its files (removed afterwards)."""
    temp = tempfile.mkdtemp(prefix="dworkers-ray-")
    settings = {
        # Ray's runtime-env agent logs every environment it creates, values included, at INFO.
        "RAY_LOGGER_LEVEL": "warning",
        # A new local instance is protected by a token, which Ray would write to
        # ~/.ray/auth_token; a token of our own in the environment is used instead. Ray reads
        # it once per process: every instance this process starts gets the same one.
        "RAY_AUTH_TOKEN": _AUTH_TOKEN,
        "RAY_USAGE_STATS_ENABLED": "0",
        # Every actor call would also be reported for a dashboard nobody opens: CPU per call.
        "RAY_enable_task_events": "0",
        "RAY_enable_metrics_collection": "0",
    }
    saved = {name: os.environ.get(name) for name in [*settings, "RAY_AUTH_MODE"]}
    os.environ.update(settings)
    try:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1,
                 include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 _temp_dir=temp, _node_ip_address="127.0.0.1")
        _quiet_cluster_messages()
        yield Path(temp)
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(temp, ignore_errors=True)


@contextlib.contextmanager
def joined_cluster(address: str) -> Iterator[None]:
    """An existing cluster (``ray start --head``) for the duration of the block."""
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise DworkersError(f"--ray-address: cannot join the Ray cluster at {address!r}: "
                            f"{' '.join(str(exc).split())[:300]} — start it with "
                            "`ray start --head`, or check the address") from None
    _quiet_cluster_messages()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()


def starts_private_cluster(address: str | None) -> bool:
    """Whether ``cluster(address)`` would start a private Ray instance."""
    return not ray.is_initialized() and not (address or os.environ.get("RAY_ADDRESS"))


@contextlib.contextmanager
def cluster(address: str | None) -> Iterator[None]:
    """The cluster to run on: the one this process is already connected to (a library user's
    or a test's), else the one at ``address`` (or ``RAY_ADDRESS``), else a private one."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        yield
    elif address:
        with joined_cluster(address):
            yield
    else:
        with local_cluster():
            yield


def _quiet_cluster_messages() -> None:
    """Ray's driver prints the cluster's error messages ("A worker died or was killed ...") on
    stdout, where ``--json`` output goes. The executor reports a worker's death itself."""
    module = sys.modules.get("ray._private.worker")
    original = getattr(module, "print_to_stdstream", None)
    if module is None or original is None or getattr(original, "dworkers_quiet", False):
        return

    def quiet(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":
            original(data, ignore_prefix)

    quiet.dworkers_quiet = True  # type: ignore[attr-defined]
    module.print_to_stdstream = quiet  # type: ignore[attr-defined]


# --- the run --------------------------------------------------------------------------------


class RayExecutor:
    """Runs rows on Ray workers; see the module's docstring."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, *,
                 connect: bool = False, keys: str | None = None, offline: bool = False) -> None:
        """``connect``: join or start the cluster now rather than when the run starts (the
        command line does, so that Ray starts while the run is being prepared). ``keys``:
        ``send`` or ``worker-env`` (default: ``DWORKERS_RAY_KEYS``; see the module's
        docstring). ``offline``: the run calls no model (``--mock``), so a private cluster's
        workers need not import litellm while the run is prepared."""
        self.address = address
        self.workers = workers  # default: one per CPU of the cluster
        self.keys = keys_mode({KEYS_VARIABLE: keys} if keys is not None else None)
        self.offline = offline
        self.run: _ClusterRun | None = None  # the current run (tests reach its workers here)
        self._cluster = contextlib.ExitStack()
        self._connected = False
        # A private cluster's workers start with this process's environment as it was then.
        self.inherited: dict[str, str] | None = None
        self.began: float | None = None  # monotonic: when this executor began to start Ray
        self.cluster_ready: float | None = None  # …and when Ray was up
        self.standby: list[Any] = []  # workers started with a private cluster (``connect``)
        if connect:
            self.connect()

    def connect(self) -> None:
        """Join the cluster, or start a private one (see ``cluster``). A private cluster's
        workers start at once, on the worker processes Ray starts with itself, and import what
        they need (litellm: seconds of CPU) while this process prepares the run."""
        if not self._connected:
            joined, private = ray.is_initialized(), starts_private_cluster(self.address)
            started = time.monotonic()
            inherited = dict(os.environ)
            # This process's preflight imports litellm (seconds of CPU) next: it does so while
            # it waits for Ray's processes to start.
            loading = None
            if private and not self.offline:
                loading = threading.Thread(target=load_litellm, name="dworkers-load-litellm",
                                           daemon=True)
                loading.start()
            try:
                self._cluster.enter_context(cluster(self.address))
            except BaseException:
                if loading is not None:
                    loading.join()  # never left half imported (see ``run.flow``)
                raise
            self._connected = True
            atexit.register(self.close)  # a run that never started must not leave Ray behind
            if not joined:
                self.began, self.cluster_ready = started, time.monotonic()
            if private:
                # Its workers start now, on the worker processes Ray started with itself.
                self.inherited = inherited
                count = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
                self.standby = [start_worker(f"dworkers-worker-{index}", {},
                                             warm_litellm=not self.offline)
                                for index in range(count)]
            if loading is not None:
                loading.join()  # while the workers import it too

    def take_standby(self, runtime_env: dict[str, Any]) -> list[Any]:
        """The workers started with the cluster, for a run whose workers need
        ``runtime_env``: none if that is not the one they have (they are stopped)."""
        standby, self.standby = self.standby, []
        if runtime_env:
            for handle in standby:
                with contextlib.suppress(Exception):
                    ray.kill(handle, no_restart=True)
            return []
        return standby

    def close(self) -> None:
        """Leave the cluster (a private one stops and its files are removed)."""
        if self._connected:
            self._connected = False
            self.standby = []
            atexit.unregister(self.close)
            self._cluster.close()

    async def run_many(self, engine: Any, rows: Rows, *,
                       max_failures: int | None = None) -> AsyncIterator[RowResult]:
        engine.preflight()  # missing keys fail here, before a cluster starts
        try:
            if not ray.is_initialized() and engine.on_event is not None:
                engine.on_event(ExecutorNotice("starting Ray…", time.monotonic()))
            self.connect()
            self.run = _ClusterRun(engine, rows, max_failures, self)
            async for result in self.run.results():
                yield result
        finally:
            self.close()


@dataclasses.dataclass(eq=False)
class _Slot:
    """One worker actor and the rows it holds."""

    handle: Any
    index: int
    capacity: int
    assigned: dict[str, Row] = dataclasses.field(default_factory=dict)
    done_steps: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    heard: bool = False  # it has sent a batch: it started
    fed: int = 0  # rows sent to it so far
    rows_done: int = 0  # rows it finished
    closed: bool = False
    ended: bool = False  # its stream is over: finished, or the worker died
    consumer: asyncio.Task[None] | None = None


_END = object()


class _ClusterRun:
    """The driver's side of one dataset run on a cluster."""

    def __init__(self, engine: Any, rows: Rows, max_failures: int | None,
                 executor: RayExecutor) -> None:
        self.engine = engine
        self.executor = executor
        # Monotonic: when the cluster began to start (Ray's own start-up included when this
        # run's executor started it), for the start-up time; and the moments of its parts.
        now = time.monotonic()
        self.began = executor.began if executor.began is not None else now
        self.startup_marks: dict[str, float] = {"run prepared": now}
        if (command_started := process_started()) is not None:
            self.startup_marks["command started"] = command_started
        if executor.cluster_ready is not None:
            self.startup_marks["ray.init"] = executor.cluster_ready
        self.emit = engine.on_event or (lambda event: None)
        self.source = each_row(rows)
        self.source_done = False
        self.max_failures = max_failures
        self.requested_workers = executor.workers
        self.retry: deque[Row] = deque()
        self.deaths: dict[str, int] = {}
        self.slots: list[_Slot] = []
        # What workers send, and (slot None) the coordinator's death.
        self.inbox: asyncio.Queue[tuple[_Slot | None, Any]] = asyncio.Queue()
        self.failed = 0
        self.restarts = 0
        self.max_restarts = 0
        self.initial_workers = 0
        self.stop_reason: str | None = None
        self.coordinator: Any = None
        self.watcher: asyncio.Task[None] | None = None
        self.coordinator_lost = False
        self.ready = False  # a worker has reported: Ray's start-up is over
        self.shipped: Any = None
        self.keys = executor.keys
        self.runtime_env: dict[str, Any] = {}
        self.capacity = 2 * int(getattr(engine, "max_concurrency", 8)) + 8
        self.result = DatasetResult(run_id=engine.options.run_id or "", plan=engine.plan.name,
                                    tenant=engine.tenant.id, started_at=time.time())
        self.pending_feeds: set[asyncio.Task[None]] = set()
        self.unlimited = False
        self.actor_calls = 0  # calls the coordinator served (a benchmark figure)
        self.late_results: list[RowResult] = []  # rows that ended while the workers stopped
        self.calls_seen = 0  # calls the workers reported: the count if the coordinator is lost

    # --- start-up ------------------------------------------------------------------------

    def start(self) -> None:
        engine = self.engine
        # The cluster's one gate and budget: the engine's own kind (or the ones it would make
        # for a run in this process), held by the coordinator.
        gate = engine.rate_gate or LocalRateGate(engine.stated_limits(), probe=True)
        budget = engine.budget or LocalBudget(engine.max_cost_usd,
                                               spent=engine.options.spent_before_usd)
        self.unlimited = engine.budget is None and engine.max_cost_usd is None
        self.coordinator = start_coordinator(
            gate, budget, name=f"dworkers-{self.result.run_id}-coordinator")
        self.watcher = asyncio.create_task(self.watch_coordinator(), name="ray-coordinator-watch")
        shipped = copy.copy(engine)
        shipped.on_event = None
        shipped.cache = None
        shipped.rate_gate = None
        shipped.budget = None
        self.shipped = ray.put(shipped)
        self.runtime_env = runtime_env_for(engine, self.keys, inherited=self.executor.inherited)
        count = self.requested_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.max_restarts = 2 * count
        self.initial_workers = count
        self.emit(dataclasses.replace(engine.describe(self.result.run_id), dataset=True))
        self.emit(ExecutorNotice(f"starting Ray: {count} worker{'s' if count != 1 else ''}…",
                                 time.monotonic()))
        standby = self.executor.take_standby(self.runtime_env)
        for handle in standby[count:]:
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)
        for index in range(count):
            self.add_worker(standby[index] if index < len(standby) else None)

    def add_worker(self, handle: Any = None) -> _Slot:
        """Give a worker the run (a new one unless ``handle``, one started with the cluster)."""
        index = len(self.slots)
        if handle is None:
            handle = start_worker(f"dworkers-{self.result.run_id}-worker-{index}",
                                  self.runtime_env, warm_litellm=not self.engine.offline)
        slot = _Slot(handle, index, self.capacity)
        self.slots.append(slot)
        stream = handle.run.options(num_returns="streaming").remote(
            self.shipped, self.coordinator, unlimited_budget=self.unlimited)
        slot.consumer = asyncio.create_task(self.consume(slot, stream),
                                            name=f"ray-worker-{index}")
        return slot

    async def consume(self, slot: _Slot, stream: Any) -> None:
        """Pass a worker's batches to the driver's loop; its death too."""
        try:
            async for ref in stream:
                self.inbox.put_nowait((slot, await ref))
        except RayActorError as exc:
            self.inbox.put_nowait((slot, exc))
        except RayError as exc:  # a bug in the worker: fail the run with its error
            self.inbox.put_nowait((slot, exc))
            return
        self.inbox.put_nowait((slot, _END))

    async def watch_coordinator(self) -> None:
        """Tell the loop when the coordinator dies (its ``watch`` never returns otherwise)."""
        try:
            await self.coordinator.totals.remote()
            self.startup_marks["coordinator ready"] = time.monotonic()
            await self.coordinator.watch.remote()
        except RayActorError:
            self.inbox.put_nowait((None, RayActorError))

    # --- the loop --------------------------------------------------------------------------

    async def results(self) -> AsyncIterator[RowResult]:
        try:
            self.start()
            await self.dispatch()
            while any(not slot.ended for slot in self.slots):
                slot, item = await self.inbox.get()
                if slot is None or (isinstance(item, Batch) and item.coordinator_lost):
                    await self.lose_coordinator()
                    break
                for result in await self.handle(slot, item):
                    yield result
                await self.dispatch()
            if self.coordinator_lost:
                for result in self.late_results:
                    yield result
            else:
                async for result in self.leftovers():
                    yield result
        except asyncio.CancelledError:
            self.result.interrupted = True
            try:
                await self.cancel_all()
            finally:
                self.finish()
            raise
        except BaseException:  # a worker's error, or the consumer stopped early
            self.result.interrupted = True
            self.finish()
            raise
        else:
            self.finish()
        finally:
            self.teardown()

    async def handle(self, slot: _Slot, item: Any) -> list[RowResult]:
        """Take in what a worker sent; the rows it finished."""
        if isinstance(item, Batch):
            slot.heard = True
            if not self.ready:
                self.ready = True
                self.startup_marks["first rows back"] = time.monotonic()
                self.result.startup_ms = (time.monotonic() - self.began) * 1000
                self.emit(ExecutorNotice("", time.monotonic()))
            if item.startup is not None:
                self.note_worker_startup(item)
                self.result.startup_parts = self.startup_parts()
            if item.problems:
                raise PreflightError([dataclasses.replace(p, message=f"on a Ray worker: "
                                                          f"{p.message}")
                                      for p in item.problems])
            return await self.take(slot, item)
        slot.ended = True
        if item is _END:
            return self.worker_ended(slot)
        if isinstance(item, RayActorError):
            if not any(other.heard for other in self.slots) and all(
                    other.ended for other in self.slots[:self.initial_workers]):
                raise DworkersError(f"the Ray workers could not start: {_reason(item)} — "
                                    "every node needs the same dworkers and Python")
            return self.worker_died(slot)
        raise item

    def note_worker_startup(self, batch: Batch) -> None:
        """A worker's start-up marks (the last worker's count)."""
        assert batch.startup is not None
        offset = _clock_offset(batch)
        for name, mark in (("worker processes started", "process_started"),
                           ("workers built", "constructed"),
                           ("litellm ready in workers", "litellm_ready"),
                           ("workers given the run", "attached")):
            if mark in batch.startup:
                at = batch.startup[mark] + offset
                self.startup_marks[name] = max(at, self.startup_marks.get(name, at))

    def startup_parts(self) -> dict[str, float]:
        """Seconds from the start-up's beginning to each of its parts, in order."""
        parts = {name: round(at - self.began, 3) for name, at in self.startup_marks.items()}
        return dict(sorted(parts.items(), key=lambda part: part[1]))

    async def take(self, slot: _Slot, batch: Batch) -> list[RowResult]:
        offset = _clock_offset(batch)
        finished = []
        for event in batch.events:
            if offset and hasattr(event, "at"):
                event = dataclasses.replace(event, at=event.at + offset)
                if getattr(event, "started_at", 0.0):  # an AttemptFinished: when it was sent
                    event = dataclasses.replace(event, started_at=event.started_at + offset)
            if isinstance(event, RowFinished):
                key = event.result.key
                if slot.assigned.pop(key, None) is None:
                    continue  # not this worker's row (any more): never reported twice
                slot.done_steps.pop(key, None)
                slot.rows_done += 1
                finished.append(event.result)
                self.count(event.result)
            elif isinstance(event, StepFinished) and event.row is not None:
                if event.row not in slot.assigned:
                    continue
                if not event.result.cached:
                    self.calls_seen += event.result.attempts
                if event.result.succeeded:
                    slot.done_steps.setdefault(event.row, {})[event.result.step_id] = \
                        event.result
            elif isinstance(event, RowStarted) and event.row not in slot.assigned:
                continue
            self.emit(event)
        for result in finished:
            await self.after_row(result)
        return finished

    def count(self, result: RowResult) -> None:
        self.result.add(result)
        if result.status is RowStatus.FAILED:
            self.failed += 1

    async def after_row(self, result: RowResult) -> None:
        """Stop starting rows after too many failures, or when a worker skipped a row (the
        shared budget is spent)."""
        if self.stop_reason is not None:
            return
        if self.max_failures is not None and self.failed >= self.max_failures:
            await self.stop(f"stopped after {self.failed} failed row"
                            f"{'s' if self.failed != 1 else ''} (--max-failures "
                            f"{self.max_failures})")
        elif result.status is RowStatus.SKIPPED:
            await self.stop(result.error or "stopped")

    async def stop(self, reason: str) -> None:
        self.stop_reason = self.result.stop_reason = reason
        live = [slot for slot in self.slots if not slot.ended and not slot.closed]
        for slot in live:
            slot.closed = True
        answers = await asyncio.gather(*(slot.handle.stop.remote() for slot in live),
                                       return_exceptions=True)
        for slot, keys in zip(live, answers, strict=True):
            if isinstance(keys, BaseException):
                continue  # it died: its rows come back through its stream
            for key in keys:
                row = slot.assigned.pop(key, None)
                if row is not None:
                    self.retry.append(row)

    def worker_ended(self, slot: _Slot) -> list[RowResult]:
        """A worker's rows are done; any it was fed but never started (after a stop) go back."""
        self.retry.extend(slot.assigned.values())
        slot.assigned.clear()
        slot.done_steps.clear()
        self.replace_if_needed()
        return []

    def replace_if_needed(self) -> None:
        """Rows wait to run and no open worker would take them: start one (bounded)."""
        open_slots = any(not slot.ended and not slot.closed for slot in self.slots)
        if (self.retry and not open_slots and self.stop_reason is None
                and self.restarts < self.max_restarts):
            self.restarts += 1
            self.add_worker()

    def worker_died(self, slot: _Slot) -> list[RowResult]:
        """Run the dead worker's unfinished rows again elsewhere, reusing finished steps."""
        finished = []
        for key, row in slot.assigned.items():
            deaths = self.deaths[key] = self.deaths.get(key, 0) + 1
            if deaths >= MAX_ROW_DEATHS:
                finished.append(self.local_result(
                    row, RowStatus.FAILED, f"the Ray worker running this row died {deaths} "
                    "times (out of memory, or killed?)"))
                continue
            reuse = {**row.reuse, **slot.done_steps.get(key, {})}
            self.retry.appendleft(dataclasses.replace(row, reuse=reuse))
        slot.assigned.clear()
        slot.done_steps.clear()
        if self.retry and self.stop_reason is None and self.restarts < self.max_restarts:
            self.restarts += 1
            self.add_worker()  # the cluster keeps its size while rows wait
        return finished

    def local_result(self, row: Row, status: RowStatus, error: str) -> RowResult:
        """A row the driver ends itself: it never ran (again) on a worker."""
        result = RowResult(key=row.key, status=status, inputs=dict(row.inputs),
                           extra=dict(row.extra), line=row.line, error=error)
        self.count(result)
        self.emit(RowFinished(result, time.monotonic()))
        return result

    async def dispatch(self) -> None:
        """Feed each open worker up to its capacity: rows to run again first."""
        for slot in self.slots:
            if slot.ended or slot.closed:
                continue
            rows: list[Row] = []
            while len(slot.assigned) + len(rows) < slot.capacity:
                row = await self.next_row()
                if row is None:
                    break
                rows.append(row)
            for row in rows:
                slot.assigned[row.key] = row
            if rows:
                slot.fed += len(rows)
                self.send(slot.handle.feed.remote(rows))
            if self.exhausted:
                slot.closed = True
                self.send(slot.handle.close.remote(slot.fed))

    @property
    def exhausted(self) -> bool:
        return (self.source_done or self.stop_reason is not None) and not self.retry

    async def next_row(self) -> Row | None:
        if self.stop_reason is not None:
            return None
        if self.retry:
            return self.retry.popleft()
        if self.source_done:
            return None
        row = await anext(self.source, None)
        if row is None:
            self.source_done = True
        return row

    def send(self, ref: Any) -> None:
        """Fire a call at a worker; if the worker is dead its stream says so."""
        task = asyncio.ensure_future(_quietly(ref))
        self.pending_feeds.add(task)
        task.add_done_callback(self.pending_feeds.discard)

    async def leftovers(self) -> AsyncIterator[RowResult]:
        """Rows no worker will run: after a stop every row not run yet is reported skipped
        (resume runs them); rows left when every worker died fail."""
        reason = self.stop_reason
        while True:
            if self.retry:
                row: Row | None = self.retry.popleft()
            elif not self.source_done:
                row = await anext(self.source, None)
                self.source_done = row is None
            else:
                return
            if row is not None:
                yield self.local_result(
                    row, RowStatus.SKIPPED if reason else RowStatus.FAILED,
                    reason or "no Ray worker left to run this row (every worker died)")

    async def lose_coordinator(self) -> None:
        """The coordinator is gone: no call can be paced or paid for. Every worker stops as on
        Ctrl-C and the run ends interrupted; rows not finished are left for ``--resume``."""
        self.coordinator_lost = True
        self.result.interrupted = True
        self.stop_reason = self.result.stop_reason = COORDINATOR_LOST
        self.emit(ExecutorNotice("the Ray coordinator died: stopping the run",
                                 time.monotonic()))
        await self.cancel_all()

    async def cancel_all(self) -> None:
        """Ctrl-C: workers cancel their calls and report the rows they had started (kept in
        ``late_results``); rows fed and not started stay unreported, for ``--resume``."""
        for slot in self.slots:
            if not slot.ended:
                slot.closed = True
                self.send(slot.handle.cancel.remote())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CANCEL_WAIT_SECONDS):
                while any(not slot.ended for slot in self.slots):
                    sender, item = await self.inbox.get()
                    if sender is None:
                        continue  # the coordinator's death: the workers are stopping anyway
                    if isinstance(item, Batch) and not item.problems:
                        self.late_results += await self.take(sender, item)
                    elif not isinstance(item, Batch):
                        sender.ended = True

    def finish(self) -> None:
        result = self.result
        result.total_duration_ms = (time.time() - result.started_at) * 1000
        result.calls = self.calls_seen  # unless the coordinator, which counts 429s too, says
        if self.coordinator is not None and not self.coordinator_lost:
            with contextlib.suppress(Exception):
                result.calls, result.rate_limited, self.actor_calls = ray.get(
                    self.coordinator.totals.remote(), timeout=5)
        if hasattr(self.engine, "dataset_result"):
            self.engine.dataset_result = result
        self.emit(DatasetFinished(result, time.monotonic()))

    def teardown(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
        for slot in self.slots:
            if slot.consumer is not None:
                slot.consumer.cancel()
            with contextlib.suppress(Exception):
                ray.kill(slot.handle, no_restart=True)
        if self.coordinator is not None:
            with contextlib.suppress(Exception):
                ray.kill(self.coordinator, no_restart=True)
        for task in list(self.pending_feeds):
            task.cancel()


def start_worker(name: str, runtime_env: dict[str, Any], *, warm_litellm: bool) -> Any:
    """A ``RowWorker`` actor, one CPU, ``name`` findable (``ray list actors``)."""
    return ray.remote(RowWorker).options(
        name=name, num_cpus=1, max_concurrency=100_000, scheduling_strategy="SPREAD",
        runtime_env=runtime_env,
    ).remote(version=__version__, warm_litellm=warm_litellm)


def _clock_offset(batch: Batch) -> float:
    """Seconds to add to a worker's monotonic times to get this process's."""
    offset = time.monotonic() - batch.sent_at
    return 0.0 if abs(offset) < 1.0 else offset  # the same machine's clock (Linux: one clock)


def _reason(error: BaseException) -> str:
    """The last line of a remote error: the exception a worker raised, without Ray's frame."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:300]
    return (lines[-1] if lines else type(error).__name__)[:300]


async def _quietly(ref: Any) -> None:
    with contextlib.suppress(RayError, asyncio.CancelledError):
        await ref
