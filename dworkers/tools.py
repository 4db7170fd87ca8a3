"""Tools through MCP: the servers a tenant declares, started on first use and stopped at the end.

The only module that imports the MCP SDK (the optional extra ``dworkers[mcp]``, pinned to its
1.x API), and only when a run first uses a tool. A ``Toolbox`` belongs to one run: its steps
(and a dataset run's rows) share each server, and ``aclose`` stops them all, however the run
ends. The SDK's sessions live inside anyio cancel scopes that must be entered and left by the
same task, so each server has one owner task that opens the connection, serves the calls it is
handed through a queue (each in a task of its own: calls asked together run together) and
closes the connection again.

A tool's result is untrusted text: escape codes stripped, cut to the server's
``max_result_chars`` (head and tail kept, the cut said). A call that takes longer than the
server's ``timeout_seconds``, or a server that dies, fails that call only: the model is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dworkers.errors import DworkersError
from dworkers.redact import redact
from dworkers.results import ToolCall
from dworkers.tenants.config import ENV_REFERENCE, McpServerConfig
from dworkers.text import clean, one_line

START_TIMEOUT_SECONDS = 30.0  # a server that has not listed its tools by then is not coming
STOP_GRACE_SECONDS = 1.0  # a stopping server may finish its own teardown for this long
ERROR_CHARS = 300  # of a server's own words, in an error
_FUNCTION_NAME = re.compile(r"[^A-Za-z0-9_-]")
_SDK_HINT = "install the MCP extra: pip install 'dworkers[mcp]'"


class ToolServerError(DworkersError):
    """A tool server could not be started or asked (not installed, missing variable, dead)."""

    exit_code = 1


@dataclass(frozen=True, slots=True)
class Tool:
    """One tool of one server, and the name the model calls it by."""

    server: str
    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def qualified(self) -> str:
        return f"{self.server}.{self.name}"

    @property
    def function_name(self) -> str:
        """``server__tool`` in the characters a model's function name allows."""
        return _FUNCTION_NAME.sub("_", f"{self.server}__{self.name}")[:64]

    def schema(self) -> dict[str, Any]:
        """The tool as an OpenAI-style function, for the model."""
        parameters = dict(self.parameters) or {"type": "object", "properties": {}}
        return {"type": "function", "function": {
            "name": self.function_name, "description": self.description[:1024],
            "parameters": parameters}}


def expand_variables(value: str, where: str) -> str:
    """``value`` with each ``${VAR}`` replaced by the variable's value, read now."""

    def variable(match: re.Match[str]) -> str:
        name = match.group(1)
        found = os.environ.get(name)
        if found is None:
            raise ToolServerError(f"{where} uses ${{{name}}}, which is not set — export {name}"
                                  "=... before the run")
        return found

    return ENV_REFERENCE.sub(variable, value)


def cap_text(text: str, limit: int) -> str:
    """``text`` without escape codes, at most about ``limit`` characters: its head and its
    tail, with the cut said in between."""
    text = clean(text)
    if len(text) <= limit:
        return text
    half = limit // 2
    cut = len(text) - 2 * half
    return f"{text[:half]}\n[… {cut:,} characters cut …]\n{text[len(text) - half:]}"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:16]


def result_text(result: Any) -> str:
    """The text of an MCP ``CallToolResult``: its text parts, other parts named."""
    parts = []
    for item in getattr(result, "content", None) or ():
        text = getattr(item, "text", None)
        parts.append(text if isinstance(text, str) else f"[{getattr(item, 'type', 'part')} "
                     "omitted]")
    if not parts and getattr(result, "structuredContent", None) is not None:
        parts.append(json.dumps(result.structuredContent, default=str))
    return "\n".join(parts)


# --- the processes a run started, for a last resort at exit ---------------------------------

_LIVE_GROUPS: set[int] = set()


def _child_pids() -> set[int]:
    """This process's children (Linux; elsewhere none are known and the SDK alone stops them)."""
    found: set[int] = set()
    for children in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            found.update(int(pid) for pid in children.read_text().split())
    return found


def _leads_own_group(pid: int) -> bool:
    """Whether ``pid`` leads a process group of its own, as the SDK starts a stdio server:
    only such groups are ever signalled (never one this process shares)."""
    try:
        return os.getpgid(pid) == pid != os.getpgid(0)
    except OSError:
        return False


def _kill_groups(groups: set[int], signum: int = signal.SIGKILL) -> None:
    """Signal each process group a server leads (the SDK starts each in a session of its own),
    so a server's own children go with it."""
    for group in list(groups):
        try:
            os.killpg(group, signum)
        except (ProcessLookupError, PermissionError):  # the whole group has exited
            groups.discard(group)


def _kill_leftovers() -> None:
    _kill_groups(_LIVE_GROUPS)


if sys.platform != "win32":
    import atexit

    atexit.register(_kill_leftovers)


# --- one server ------------------------------------------------------------------------------


@dataclass(eq=False)  # each job is itself: kept in a set
class _Job:
    tool: str
    arguments: dict[str, Any]
    answer: asyncio.Future[Any]
    scope: Any = None  # the anyio cancel scope of the task serving it


class _Server:
    """One MCP server, owned by one task (see the module docstring)."""

    def __init__(self, name: str, config: McpServerConfig, groups: set[int]) -> None:
        self.name = name
        self.config = config
        self.groups = groups  # the toolbox's process groups
        self.jobs: asyncio.Queue[_Job | None] = asyncio.Queue()
        self.active: set[_Job] = set()
        self.tools: asyncio.Future[list[Tool]] = asyncio.get_running_loop().create_future()
        self.owner: asyncio.Task[None] | None = None
        self.failure: str | None = None
        self.secrets: list[str] = []  # values read from ${VAR}: never in a message

    async def start(self) -> list[Tool]:
        self.owner = asyncio.create_task(self.own(), name=f"dworkers-mcp-{self.name}")
        try:
            async with asyncio.timeout(START_TIMEOUT_SECONDS):
                return await asyncio.shield(self.tools)
        except TimeoutError:
            raise ToolServerError(f"MCP server {self.name!r} listed no tools within "
                                  f"{START_TIMEOUT_SECONDS:g}s") from None

    def expanded(self, values: Mapping[str, str], where: str) -> dict[str, str]:
        """``values`` with their ``${VAR}`` read now; every value is kept out of messages."""
        found = {k: expand_variables(v, f"{where}.{k}") for k, v in values.items()}
        self.secrets += found.values()
        return found

    def transport(self, errlog: Any) -> Any:
        """The SDK's client for this server's transport, secrets read from the environment."""
        config, where = self.config, f"mcp_servers.{self.name}"
        if config.url is not None:
            from mcp.client import streamable_http

            headers = self.expanded(config.headers, f"{where}.headers")
            if not hasattr(streamable_http, "streamable_http_client"):  # before 1.24
                return streamable_http.streamablehttp_client(
                    config.url, headers=headers, timeout=config.timeout_seconds,
                    sse_read_timeout=config.timeout_seconds)
            return _http_transport(streamable_http, config.url, headers, config.timeout_seconds)
        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client

        env = self.expanded(config.env, f"{where}.env")
        return stdio_client(StdioServerParameters(
            command=config.command or "", args=list(config.args), env=env or None),
            errlog=errlog)

    async def own(self) -> None:
        """Open the connection, list the tools, serve calls until told to stop, close."""
        try:
            import anyio
            from mcp import ClientSession
        except ImportError:
            self.fail(f"the MCP SDK is not installed — {_SDK_HINT}")
            return
        before = _child_pids()
        try:
            # A server's own messages would write over the live view: they go nowhere.
            with open(os.devnull, "w") as errlog:
                await self.serve_until_stopped(anyio, ClientSession, errlog, before)
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, ToolServerError):
                self.fail(str(exc))
            else:
                self.fail(f"MCP server {self.name!r} stopped: {_failure_text(exc)}")
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self.fail(self.failure or f"MCP server {self.name!r} has stopped")

    async def serve_until_stopped(self, anyio: Any, session_type: Any, errlog: Any,
                                  before: set[int]) -> None:
        """The owner's work, inside the SDK's contexts (opened and closed by this task)."""
        async with self.transport(errlog) as streams, session_type(*streams[:2]) as session:
            started = {pid for pid in _child_pids() - before if _leads_own_group(pid)}
            self.groups.update(started)
            _LIVE_GROUPS.update(started)
            await session.initialize()
            self.tools.set_result(await self.list_tools(session))
            async with anyio.create_task_group() as group:
                while (job := await self.jobs.get()) is not None:
                    group.start_soon(self.serve, session, job)
                group.cancel_scope.cancel()  # calls still running are abandoned

    async def list_tools(self, session: Any) -> list[Tool]:
        tools: list[Tool] = []
        cursor = None
        for _ in range(100):  # pages: a bound, whatever the server says
            listed = await session.list_tools(cursor=cursor) if cursor else \
                await session.list_tools()
            tools += [Tool(self.name, one_line(t.name), clean(t.description or ""),
                           dict(t.inputSchema or {})) for t in listed.tools]
            cursor = getattr(listed, "nextCursor", None)
            if not cursor:
                break
        return tools

    async def serve(self, session: Any, job: _Job) -> None:
        import anyio

        with anyio.CancelScope() as scope:
            job.scope = scope
            if job.answer.done():  # the caller gave up while it waited in the queue
                return
            self.active.add(job)
            try:
                result = await session.call_tool(job.tool, job.arguments)
            except Exception as exc:
                if not job.answer.done():
                    job.answer.set_exception(ToolServerError(
                        redact(_failure_text(exc), self.secrets)))
            else:
                if not job.answer.done():
                    job.answer.set_result(result)
            finally:
                self.active.discard(job)

    def fail(self, reason: str) -> None:
        """The server is gone: every call waiting for it, and every later one, fails."""
        self.failure = self.failure or redact(reason, self.secrets)
        if not self.tools.done():
            self.tools.set_exception(ToolServerError(self.failure))
            self.tools.exception()  # retrieved: nobody may be waiting for it
        waiting = list(self.active)
        while not self.jobs.empty():
            job = self.jobs.get_nowait()
            if job is not None:
                waiting.append(job)
        for job in waiting:
            if not job.answer.done():
                job.answer.set_exception(ToolServerError(self.failure))

    async def call(self, tool: str, arguments: dict[str, Any], timeout: float) -> Any:
        if self.failure is not None:
            raise ToolServerError(self.failure)
        job = _Job(tool, arguments, asyncio.get_running_loop().create_future())
        self.jobs.put_nowait(job)
        try:
            async with asyncio.timeout(timeout):
                return await job.answer
        except TimeoutError:
            raise ToolServerError(f"no answer within {timeout:g}s (the server's "
                                  "timeout_seconds)") from None
        finally:
            if job.scope is not None:
                job.scope.cancel()

    async def stop(self) -> None:
        owner = self.owner
        if owner is None or owner.done():
            return
        self.jobs.put_nowait(None)
        done, _ = await asyncio.wait({owner}, timeout=STOP_GRACE_SECONDS)
        if not done:
            _kill_groups(self.groups, signal.SIGTERM)  # the SDK then finds it gone at once
            owner.cancel()
            await asyncio.wait({owner}, timeout=STOP_GRACE_SECONDS * 2)


@contextlib.asynccontextmanager
async def _http_transport(module: Any, url: str, headers: dict[str, str],
                          timeout: float) -> AsyncIterator[Any]:
    """The SDK's streamable HTTP client over an HTTP client this module opens and closes."""
    import httpx

    async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout),
                                 follow_redirects=False) as client, \
            module.streamable_http_client(url, http_client=client) as streams:
        yield streams


def _failure_text(exc: BaseException) -> str:
    inner = getattr(exc, "exceptions", None)  # an anyio task group's ExceptionGroup
    if inner:
        return _failure_text(inner[0])
    text = one_line(str(exc))[:ERROR_CHARS]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- one run's servers ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What one tool call came to: ``text`` is what the model is told."""

    text: str
    record: ToolCall


class Toolbox:
    """The MCP servers of one run: each started on first use, shared, stopped by ``aclose``."""

    def __init__(self, servers: Mapping[str, McpServerConfig]) -> None:
        self.servers = dict(servers)
        self.started: dict[str, _Server] = {}
        self.starting: dict[str, asyncio.Lock] = {}
        self.groups: set[int] = set()
        self.closed = False

    async def server(self, name: str) -> _Server:
        if self.closed:
            raise ToolServerError("the run's tool servers are stopped")
        lock = self.starting.setdefault(name, asyncio.Lock())
        async with lock:
            if name not in self.started:
                config = self.servers.get(name)
                if config is None:
                    raise ToolServerError(f"no MCP server {name!r} is declared")
                server = self.started[name] = _Server(name, config, self.groups)
                await server.start()
            return self.started[name]

    async def tools_for(self, entries: Sequence[str]) -> list[Tool]:
        """The tools ``entries`` name (``server`` or ``server.tool``), servers started as
        needed; a tool a server does not have is an error."""
        chosen: dict[str, Tool] = {}
        for entry in entries:
            name, _, only = entry.partition(".")
            server = await self.server(name)
            tools = server.tools.result()
            picked = [t for t in tools if not only or t.name == only]
            if only and not picked:
                raise ToolServerError(f"MCP server {name!r} has no tool {only!r} (it has: "
                                      f"{', '.join(t.name for t in tools[:20]) or 'none'})")
            chosen.update((t.function_name, t) for t in picked)
        return list(chosen.values())

    def pure(self, entries: Sequence[str]) -> bool:
        """Whether every server ``entries`` name is marked ``pure`` (cacheable answers)."""
        return all(self.servers[e.split(".", 1)[0]].pure for e in entries
                   if e.split(".", 1)[0] in self.servers)

    async def call(self, tool: Tool, arguments_text: str) -> ToolOutcome:
        """Call ``tool`` with the JSON arguments the model wrote; never raises for the tool's
        own failures (the model is told), only for cancellation."""
        started, started_at = time.monotonic(), time.time()
        config = self.servers[tool.server]
        arguments: dict[str, Any] | str = arguments_text
        error: str | None = None
        text = ""
        try:
            parsed = json.loads(arguments_text or "{}")
            if not isinstance(parsed, dict):
                raise ValueError("the arguments are not a JSON object")
            arguments = parsed
            server = await self.server(tool.server)
            result = await server.call(tool.name, parsed, config.timeout_seconds)
            text = cap_text(result_text(result), config.max_result_chars)
            if getattr(result, "isError", False):
                error = one_line(text)[:ERROR_CHARS] or "the tool reported an error"
        except ValueError as exc:
            error = f"invalid arguments: {one_line(str(exc))[:ERROR_CHARS]}"
        except ToolServerError as exc:
            error = str(exc)
        record = ToolCall(server=tool.server, tool=tool.name, arguments=arguments,
                          started_at=started_at,
                          duration_ms=(time.monotonic() - started) * 1000,
                          result_chars=len(text), result_digest=digest(text) if text else None,
                          error=error)
        return ToolOutcome(f"error: {error}" if error and not text else text, record)

    async def aclose(self) -> None:
        """Stop every server this run started; the last resort kills what is left."""
        self.closed = True
        try:
            await asyncio.gather(*(s.stop() for s in self.started.values()))
        finally:
            _kill_groups(self.groups)
            _LIVE_GROUPS.difference_update(self.groups)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Toolbox]:
        try:
            yield self
        finally:
            await self.aclose()


async def list_server_tools(
        servers: Mapping[str, McpServerConfig]) -> dict[str, list[Tool] | str]:
    """Each server's tools, or why they cannot be listed (``dworkers tools``): servers started
    together, listed and stopped."""
    box = Toolbox(servers)

    async def listed(name: str) -> list[Tool] | str:
        try:
            return await box.tools_for([name])
        except ToolServerError as exc:
            return str(exc)

    async with box.running():
        answers = await asyncio.gather(*(listed(name) for name in servers))
    return dict(zip(servers, answers, strict=True))


def parameters_of(tool: Tool) -> str:
    """``name: type, other?: type`` from a tool's JSON Schema (``?``: optional)."""
    properties = tool.parameters.get("properties")
    if not isinstance(properties, dict):
        return ""
    required = tool.parameters.get("required")
    needed = set(required) if isinstance(required, list) else set()
    shown = []
    for name, spec in list(properties.items())[:50]:
        kind = spec.get("type", "any") if isinstance(spec, dict) else "any"
        shown.append(f"{one_line(str(name))}{'' if name in needed else '?'}: "
                     f"{one_line(str(kind))}")
    return ", ".join(shown)
