"""A tiny OpenAI-compatible chat-completions server for tests and benchmarks.

Standard library only.  The server binds ``127.0.0.1`` on an ephemeral port and
runs in a background thread; every connection is handled by its own daemon
thread, so slow or hanging requests never block others.

Typical use::

    with FakeLLMServer() as srv:
        srv.add_rule("summarise", content="A short summary.")
        srv.add_rule("flaky", status=429, retry_after=1, times=1)
        srv.add_rule("stuck", hang=True)
        ...  # litellm.acompletion(model="openai/x", api_base=srv.url, api_key="sk-test", ...)
        assert srv.wait_for_requests(3, timeout=5)
        print(srv.requests, srv.max_in_flight)

Endpoints
    ``POST /v1/chat/completions`` (also ``/chat/completions``): JSON response, or
    server-sent events when the body has ``"stream": true``.  With
    ``stream_options.include_usage`` a final chunk carrying ``usage`` (and empty
    ``choices``) precedes ``data: [DONE]``, as OpenAI does.
    ``GET /v1/models`` (also ``/models``): a one-entry model list.

HTTP details
    Every response carries ``Connection: close``.  JSON bodies have an exact
    ``Content-Length``; SSE bodies (``Content-Type: text/event-stream``) use
    chunked transfer encoding and the connection is closed after ``[DONE]``.

Token counts
    Approximated as whitespace-separated words: prompt tokens are the words of
    all messages' text contents, completion tokens the words of the reply.

Retry-After
    For a rule with ``retry_after`` the error response carries
    ``Retry-After: <integer seconds>`` (``math.ceil`` of the value, the RFC 9110
    ``delay-seconds`` form; litellm only parses integers there) and
    ``retry-after-ms: <milliseconds>`` with the exact value (honoured by the
    OpenAI SDK).

Rate limits (``rpm=``/``tpm=``, or ``--rpm``/``--tpm``)
    A provider-style token bucket per limit: it holds ``burst`` seconds' worth of the
    per-minute limit (at least one request), starts full and refills continuously.  A request
    costs one request and ``prompt tokens + reply tokens`` tokens (the request's
    ``max_tokens`` when larger, as OpenAI reserves it), charged when it arrives.  Every chat
    answer (200 or error) carries OpenAI's headers: ``x-ratelimit-limit-requests`` (the
    per-minute limit), ``x-ratelimit-remaining-requests`` (whole requests left in the bucket),
    ``x-ratelimit-reset-requests`` (time until the bucket is full again, ``"20ms"``/``"1.5s"``)
    and the same three for ``-tokens``.  A request the bucket cannot pay for is answered 429
    with ``Retry-After``/``retry-after-ms`` (time until it could be paid) and costs nothing;
    its record has ``rate_limited`` set.  ``silent_limits=True`` (``--silent-limits``) sends
    no ``x-ratelimit-*`` or ``retry-after-ms`` header at all, only 429 + Retry-After (whole
    seconds), as many gateways and
    self-hosted servers do.

Reply length
    ``reply_tokens=N`` pads every default reply to N words; ``stream_chunk_tokens=K`` streams
    replies K words per chunk (default: 4-8 chunks), as providers stream one token per chunk.

Stopping
    ``stop()`` wakes every sleeping/hanging request at once (they all wait on one
    ``threading.Event``); such requests are abandoned, i.e. the connection is
    closed without a response.  A hang is also abandoned when the client
    disconnects or after ``max_hang`` seconds.

Structured answers
    A request asking for JSON (a ``response_format``, or a prompt that says "matches this JSON
    Schema" followed by a fenced ```json block) gets a JSON object that fits the schema (the
    first enum value, ``true``, the minimum number, one list item ...), unless a rule gives
    the content.  ``invalid_first_structured=F`` answers a fraction F of *first* structured
    requests (no assistant message yet: not a re-ask) invalidly, spread evenly (request n is
    invalid when ``floor((n+1)F) > floor(nF)``), rotating through broken JSON, a missing
    required field and a value outside an enum.  ``record.structured`` says how the JSON was
    asked for: ``"native"`` (json_schema), ``"json_mode"`` (json_object) or ``"instructions"``;
    ``record.invalid`` whether the answer was made invalid on purpose.

Script mode (for benchmarks)::

    python tests/fake_llm_server.py --port 0 --latency 0.1

prints the base URL (``http://127.0.0.1:PORT/v1``) as the first line of stdout
and serves until SIGTERM/SIGINT, then exits cleanly with status 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import select
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import urlsplit

__all__ = ["FakeLLMServer", "RequestRecord", "Rule", "main"]

HOST = "127.0.0.1"
DEFAULT_MAX_HANG = 60.0
_POLL = 0.05  # seconds between client-disconnect checks while waiting
_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
_MODEL_PATHS = frozenset({"/v1/models", "/models"})

_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("not_found_error", "model_not_found"),
    408: ("timeout_error", None),
    409: ("conflict_error", None),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "gateway_timeout"),
}


@dataclass
class Rule:
    """How to answer requests whose message text contains ``contains``.

    Created through :meth:`FakeLLMServer.add_rule`; see there for the fields.
    ``matched`` counts the requests this rule has answered so far.
    """

    contains: str | None = None
    latency: float = 0.0
    status: int = 200
    retry_after: float | None = None
    hang: bool = False
    content: str | None = None
    times: int | None = None
    chunk_delay: float = 0.0
    error_message: str | None = None
    # Faults of answers that claim success (see add_rule):
    headers: dict[str, str] | None = None
    raw_body: str | None = None
    answer: str = "normal"
    finish_reason: str = "stop"
    usage_cost: float | None = None
    pieces: int | None = None
    drop_after: int | None = None
    body_delay: float = 0.0
    tool_calls: list[dict[str, Any]] | None = None
    tool_rounds: int = 1
    matched: int = 0

    def matches(self, text: str) -> bool:
        """True when this rule applies to a request with message text ``text``."""
        if self.times is not None and self.times <= 0:
            return False
        return self.contains is None or self.contains in text


@dataclass
class RequestRecord:
    """One chat-completions request as the server saw it.

    ``started``/``finished`` are ``time.monotonic()`` values: when the request
    body had been read, and when the last response bytes were being sent (taken
    just before that final write, so a client that holds a complete response
    always sees ``finished`` set and ``in_flight`` decremented) or the request
    was abandoned; ``finished`` is ``None`` while in flight.  ``status`` is the
    HTTP status sent, or ``None`` if no response was sent (hang, stop,
    disconnect).  ``abandoned`` is true when the request was dropped: no
    response, or the client went away mid-response.
    """

    index: int
    model: str | None
    messages: list[dict[str, Any]]
    stream: bool
    started: float
    finished: float | None = None
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    path: str = ""
    reply: str | None = None
    abandoned: bool = False
    rate_limited: bool = False
    body_sent: int = 0  # bytes of a slowly sent whole answer's body written so far
    structured: str | None = None  # how JSON was asked for (see "Structured answers")
    invalid: bool = False  # a structured answer made invalid on purpose

    @property
    def text(self) -> str:
        """All messages' text contents joined with newlines (what rules match on)."""
        return messages_text(self.messages)

    @property
    def duration(self) -> float | None:
        """``finished - started`` in seconds, or ``None`` while in flight."""
        return None if self.finished is None else self.finished - self.started


def content_text(content: Any) -> str:
    """The text of one message ``content`` (a string or a list of content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    return ""


def messages_text(messages: Iterable[Any]) -> str:
    """All messages' text contents joined with newlines."""
    return "\n".join(content_text(m.get("content")) for m in messages if isinstance(m, dict))


def count_tokens(text: str) -> int:
    """Approximate token count: the number of whitespace-separated words."""
    return len(text.split())


def default_reply(messages: list[dict[str, Any]]) -> str:
    """``"Reply to: <first 60 chars of the last user message, on one line>"``."""
    last_user = ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            last_user = content_text(message.get("content"))
            break
    return "Reply to: " + " ".join(last_user.split())[:60]


_SCHEMA_IN_PROMPT = re.compile(r"matches this JSON Schema:\s*```json\n(.*?)\n```", re.S)


def requested_schema(body: dict[str, Any], messages: list[dict[str, Any]]
                     ) -> tuple[str | None, dict[str, Any] | None]:
    """How a request asks for JSON, and the schema it gives (see "Structured answers")."""
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")  # type: ignore[union-attr]
        return "native", schema if isinstance(schema, dict) else {}
    found = _SCHEMA_IN_PROMPT.search(messages_text(messages[:2]))
    schema = None
    if found:
        try:
            schema = json.loads(found.group(1))
        except ValueError:
            schema = None
    if kind == "json_object":
        return "json_mode", schema or {}
    return ("instructions", schema) if schema is not None else (None, None)


def fitting_value(schema: Any, depth: int = 0) -> Any:
    """A simple value that fits ``schema`` (the subset dworkers writes)."""
    if not isinstance(schema, dict) or depth > 20:
        return "text"
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if isinstance(schema.get("anyOf"), list) and schema["anyOf"]:
        return fitting_value({**schema, "anyOf": None, **schema["anyOf"][0]}, depth + 1)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {name: fitting_value(sub, depth + 1)
                for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [fitting_value(schema.get("items"), depth + 1)
                for _ in range(max(1, schema.get("minItems", 1)))]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1
                         if "exclusiveMinimum" in schema else 1)
        return int(low) if kind == "integer" else float(low)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "text".ljust(schema.get("minLength", 0), "x")


def unfitting_reply(schema: dict[str, Any], value: Any, turn: int) -> str:
    """An answer that does not fit: broken JSON, a missing required field, or a value
    outside an enum, by turns (the next kind when a schema offers no such field)."""
    required = [n for n in schema.get("required") or () if isinstance(value, dict) and n in value]
    enums = [n for n, sub in (schema.get("properties") or {}).items()
             if isinstance(sub, dict) and sub.get("enum") and isinstance(value, dict)]
    kind = turn % 3
    if kind == 1 and required:
        return json.dumps({k: v for k, v in value.items() if k != required[0]})
    if kind == 2 and enums:
        return json.dumps({**value, enums[0]: "not-a-listed-value"})
    return json.dumps(value)[:-1] + ",,"  # broken JSON


def split_pieces(text: str, max_pieces: int = 8, min_pieces: int = 4) -> list[str]:
    """Split ``text`` into at most ``max_pieces`` pieces that join back to ``text``.

    Splits on word boundaries (aiming for ``min_pieces``..``max_pieces`` pieces);
    text with fewer than ``min_pieces`` words is split by characters instead.
    """
    if not text:
        return [""]
    units: list[str] = re.findall(r"\s*\S+", text)
    if units:
        units[-1] += text[len("".join(units)) :]  # trailing whitespace
    if len(units) < min_pieces:
        units = list(text)
    count = min(max_pieces, len(units))
    size, extra = divmod(len(units), count)
    pieces: list[str] = []
    pos = 0
    for i in range(count):
        step = size + (1 if i < extra else 0)
        pieces.append("".join(units[pos : pos + step]))
        pos += step
    return pieces


def _peer_closed(conn: socket.socket) -> bool:
    """True when the client has closed (or reset) the connection."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        if not readable:
            return False
        return conn.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def pad_reply(reply: str, words: int) -> str:
    """``reply`` followed by filler words, ``words`` words in all (never shorter than 1)."""
    have = reply.split()
    filler = [f"word{i % 97}" for i in range(max(0, words - len(have)))]
    return " ".join([*have, *filler][: max(1, words)])


def _format_duration(seconds: float) -> str:
    """OpenAI's reset format: ``"20ms"`` below a second, else ``"1.5s"``/``"2m3s"``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    return (f"{int(minutes)}m" if minutes else "") + f"{rest:.3g}s"


class _Bucket:
    """A token bucket holding ``burst`` seconds of a per-minute ``limit`` (callers lock)."""

    def __init__(self, limit: float, burst: float) -> None:
        self.limit = limit
        self.rate = limit / 60.0
        self.capacity = max(1.0, self.rate * burst)
        self.level = self.capacity
        self.updated = time.monotonic()

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` can be paid (0: now); a cost above the capacity is paid
        once the bucket is full."""
        self._refill(now)
        need = min(cost, self.capacity) - self.level
        return max(0.0, need / self.rate)

    def take(self, cost: float) -> None:
        self.level -= min(cost, self.capacity)

    def headers(self, kind: str) -> dict[str, str]:
        return {
            f"x-ratelimit-limit-{kind}": str(int(self.limit)),
            f"x-ratelimit-remaining-{kind}": str(max(0, math.floor(self.level))),
            f"x-ratelimit-reset-{kind}": _format_duration(
                (self.capacity - self.level) / self.rate),
        }


class _Abandon(Exception):
    """Internal: stop handling the request without (further) response."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, fake: FakeLLMServer, port: int) -> None:
        self.fake = fake
        super().__init__((HOST, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call socket.getfqdn() (a DNS lookup).
        socketserver.TCPServer.server_bind(self)
        self.server_name = HOST
        self.server_port = int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    timeout = 30.0  # socket timeout for reading a request / writing a response
    server_version = "FakeLLM/1.0"
    # Called just before the last write of a response, so that a client that has
    # the whole response always sees its request recorded as finished.
    before_last_write: Callable[[], None] | None = None

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.fake.verbose:
            super().log_message(format, *args)

    # -- routing -------------------------------------------------------------

    def do_GET(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        if path in _MODEL_PATHS:
            payload = {
                "object": "list",
                "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}],
            }
            self._send_json(200, payload)
        else:
            self._send_json(404, _error_payload(404, f"no such endpoint: {path}"))

    def do_POST(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        if path not in _CHAT_PATHS:
            self._read_body()
            self._send_json(404, _error_payload(404, f"no such endpoint: {path}"))
            return
        self.server.fake._handle_chat(self, path)

    # -- helpers used by FakeLLMServer ----------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_json(
        self, status: int, payload: Any, extra_headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self._last_write(data)

    def _send_raw(self, status: int, data: bytes, extra_headers: dict[str, str]) -> None:
        """Send ``data`` as it is, labelled JSON (an answer that is not one)."""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra_headers.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self._last_write(data)

    def _send_slowly(self, status: int, payload: Any, extra_headers: dict[str, str],
                     pieces: int, delay: float, wait: Callable[[float], None],
                     sent: Callable[[int], None]) -> None:
        """Send ``payload`` as JSON in ``pieces`` writes, ``wait(delay)`` before each and
        ``sent(bytes so far)`` after each."""
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra_headers.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        size = -(-len(data) // max(1, pieces))
        for start in range(0, len(data), size):
            wait(delay)
            if start + size >= len(data):
                self._last_write(data[start:])
            else:
                self.wfile.write(data[start:start + size])
                self.wfile.flush()
            sent(min(start + size, len(data)))

    def _last_write(self, data: bytes) -> None:
        if self.before_last_write is not None:
            self.before_last_write()
        self.wfile.write(data)
        self.wfile.flush()

    def _start_sse(self, extra_headers: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in extra_headers.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()

    @staticmethod
    def _sse_chunk(data: str) -> bytes:
        payload = f"data: {data}\n\n".encode()
        return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"

    def _send_sse(self, data: str) -> None:
        self.wfile.write(self._sse_chunk(data))
        self.wfile.flush()

    def _end_sse(self, data: str) -> None:
        """Send the last event and the terminating zero-length chunk."""
        self._last_write(self._sse_chunk(data) + b"0\r\n\r\n")


def _error_payload(status: int, message: str | None) -> dict[str, Any]:
    kind, code = _ERROR_KINDS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    return {
        "error": {
            "message": message or f"fake server error (HTTP {status})",
            "type": kind,
            "param": None,
            "code": code,
        }
    }


class FakeLLMServer:
    """An OpenAI-compatible chat-completions server on ``127.0.0.1``.

    Args:
        latency: seconds every chat request waits before responding (a
            matching rule's ``latency`` is added to it).
        chunk_delay: seconds between streamed chunks (a matching rule's
            ``chunk_delay`` is added to it).
        port: port to bind; 0 (default) picks a free ephemeral port.
        max_hang: upper bound in seconds for ``hang=True`` requests.
        verbose: log each HTTP request to stderr.
        rpm, tpm: requests / tokens per minute to enforce (see "Rate limits" above).
        burst: seconds' worth of each limit the buckets hold.
        silent_limits: enforce the limits without ``x-ratelimit-*`` headers (429s only).
        reply_tokens: pad default replies to this many words.
        stream_chunk_tokens: words per streamed chunk.
    """

    def __init__(
        self,
        latency: float = 0.0,
        *,
        chunk_delay: float = 0.0,
        port: int = 0,
        max_hang: float = DEFAULT_MAX_HANG,
        verbose: bool = False,
        rpm: float | None = None,
        tpm: float | None = None,
        burst: float = 1.0,
        reply_tokens: int | None = None,
        stream_chunk_tokens: int | None = None,
        silent_limits: bool = False,
        invalid_first_structured: float = 0.0,
    ) -> None:
        self.latency = latency
        self.silent_limits = silent_limits
        self.invalid_first_structured = invalid_first_structured
        self._first_structured = 0  # first structured requests seen (see "Structured answers")
        self.reply_tokens = reply_tokens
        self.stream_chunk_tokens = stream_chunk_tokens
        self._buckets = {
            kind: _Bucket(limit, burst) for kind, limit in (("requests", rpm), ("tokens", tpm))
            if limit
        }
        self.chunk_delay = chunk_delay
        self.max_hang = max_hang
        self.verbose = verbose
        self._port = port
        self._cond = threading.Condition()
        self._stop_event = threading.Event()
        self._rules: list[Rule] = []
        self._records: list[RequestRecord] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> FakeLLMServer:
        """Bind and start serving in a background daemon thread; returns ``self``."""
        if self._httpd is not None or self._stopped:
            raise RuntimeError("FakeLLMServer can only be started once")
        self._httpd = _HTTPServer(self, self._port)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": _POLL},
            name=f"FakeLLMServer:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving; wakes sleeping/hanging requests (which are abandoned).

        Returns promptly: waits at most about ``timeout`` seconds for in-flight
        handlers to finish recording.  Idempotent.
        """
        if self._stopped:
            return
        self._stopped = True
        self._stop_event.set()
        httpd, thread = self._httpd, self._thread
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout)
        with self._cond:
            self._cond.wait_for(lambda: self._in_flight == 0, timeout)

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port (only valid after :meth:`start`)."""
        if self._httpd is None:
            raise RuntimeError("FakeLLMServer is not started")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no ``/v1``)."""
        return f"http://{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` -- the ``api_base`` for ``openai/<model>``."""
        return f"{self.base_url}/v1"

    # -- rules -----------------------------------------------------------------

    def add_rule(
        self,
        contains: str | None = None,
        *,
        latency: float = 0.0,
        status: int = 200,
        retry_after: float | None = None,
        hang: bool = False,
        content: str | None = None,
        times: int | None = None,
        chunk_delay: float = 0.0,
        error_message: str | None = None,
        headers: dict[str, str] | None = None,
        raw_body: str | None = None,
        answer: str = "normal",
        finish_reason: str = "stop",
        usage_cost: float | None = None,
        pieces: int | None = None,
        drop_after: int | None = None,
        body_delay: float = 0.0,
        tool_calls: list[dict[str, Any]] | None = None,
        tool_rounds: int = 1,
    ) -> Rule:
        """Add a behaviour rule; rules are tried in the order added.

        A rule matches when ``contains`` is None or a substring of all messages'
        text joined; the first matching rule with ``times`` left (None =
        unlimited) answers the request and its ``times`` is decremented.

        Args:
            contains: substring to look for in the messages' text.
            latency: extra seconds to wait before responding.
            status: HTTP status; anything but 200 sends an OpenAI-style error.
            retry_after: seconds for the ``Retry-After`` header of an error.
            hang: never respond (until stop, client disconnect or ``max_hang``).
            content: the reply text (default: ``"Reply to: ..."``).
            times: how many requests this rule answers (None = unlimited).
            chunk_delay: extra seconds between streamed chunks.
            error_message: the error's ``message`` for ``status != 200``.
            headers: extra response headers, on errors and answers alike (a gateway's
                ``llm_provider-retry-after``, ``x-ratelimit-*``, ``x-litellm-response-cost``).
            raw_body: send exactly this body with status ``status`` and Content-Type
                ``application/json`` (an empty or unparseable answer), stream or not.
            answer: ``"normal"``; ``"done-only"`` (a stream holding only ``data: [DONE]``);
                ``"json"`` (a plain JSON answer even when a stream was asked for);
                ``"stream"`` (server-sent events even when a whole answer was asked for).
            finish_reason: the answer's ``finish_reason`` (``"length"``: cut off).
            usage_cost: report this cost in USD as ``usage.cost`` (as gateways do).
            pieces: stream the reply in this many pieces (default: 4 to 8).
            drop_after: close the connection after streaming this many pieces (an answer
                that breaks off half-way).
            body_delay: send a whole (not streamed) answer's body in ``pieces`` writes (default
                8), this many seconds apart: a slow download of a large answer.
            tool_calls: answer with these tool calls (``{"name": ..., "arguments": {...}}``,
                ``finish_reason`` "tool_calls") while the request holds fewer than
                ``tool_rounds`` assistant turns with tool calls; after that, answer ``content``
                (default: ``"Tool results: "`` and the tool messages' contents joined).
            tool_rounds: how many turns of tool calls to ask for before answering.
        """
        rule = Rule(
            contains=contains,
            latency=latency,
            status=status,
            retry_after=retry_after,
            hang=hang,
            content=content,
            times=times,
            chunk_delay=chunk_delay,
            error_message=error_message,
            headers=dict(headers) if headers else None,
            raw_body=raw_body,
            answer=answer,
            finish_reason=finish_reason,
            usage_cost=usage_cost,
            pieces=pieces,
            drop_after=drop_after,
            body_delay=body_delay,
            tool_calls=[dict(call) for call in tool_calls] if tool_calls else None,
            tool_rounds=tool_rounds,
        )
        with self._cond:
            self._rules.append(rule)
        return rule

    def clear_rules(self) -> None:
        """Remove all rules."""
        with self._cond:
            self._rules.clear()

    def reset(self) -> None:
        """Remove all rules and forget recorded requests and ``max_in_flight``."""
        with self._cond:
            self._rules.clear()
            self._records.clear()
            self._max_in_flight = self._in_flight

    def _take_rule(self, text: str) -> Rule | None:
        with self._cond:
            for rule in self._rules:
                if rule.matches(text):
                    if rule.times is not None:
                        rule.times -= 1
                    rule.matched += 1
                    return dataclasses.replace(rule)
        return None

    # -- rate limits -----------------------------------------------------------

    def _charge(self, record: RequestRecord) -> dict[str, str]:
        """Charge the buckets for a request: the ``x-ratelimit-*`` headers to send, with
        ``"status": "429"`` (and Retry-After) when the request cannot be paid for."""
        if not self._buckets:
            return {}
        reply = self.reply_tokens or count_tokens(default_reply(record.messages))
        asked = record.body.get("max_tokens") if isinstance(record.body, dict) else None
        if isinstance(asked, int) and asked > reply:
            reply = asked
        costs = {"requests": 1.0, "tokens": float(count_tokens(record.text) + reply)}
        headers: dict[str, str] = {}
        with self._cond:
            now = time.monotonic()
            waits = [bucket.wait(costs[kind], now) for kind, bucket in self._buckets.items()]
            refused = max(waits) > 0
            for kind, bucket in self._buckets.items():
                if not refused:
                    bucket.take(costs[kind])
                if not self.silent_limits:
                    headers.update(bucket.headers(kind))
            if refused:
                record.rate_limited = True
                wait = max(waits)
                headers["status"] = "429"
                headers["Retry-After"] = str(max(1, math.ceil(wait)))
                if not self.silent_limits:  # such servers say whole seconds at most
                    headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
        return headers

    # -- request log -----------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot (copies) of all chat requests received, in arrival order."""
        with self._cond:
            return [dataclasses.replace(r) for r in self._records]

    def requests_containing(self, text: str) -> list[RequestRecord]:
        """Recorded requests whose messages' text contains ``text``."""
        return [r for r in self.requests if text in r.text]

    def wait_for_requests(self, n: int, timeout: float | None = 5.0) -> bool:
        """Wait up to ``timeout`` seconds (``None``: as long as it takes) until ``n`` requests
        have arrived."""
        return self._wait_until(lambda: len(self._records) >= n, timeout)

    def wait_for_body_sent(self, count: int, timeout: float | None = 5.0) -> bool:
        """Wait up to ``timeout`` seconds (``None``: as long as it takes) until a slowly sent
        whole answer (``body_delay``) has written ``count`` bytes of its body."""
        return self._wait_until(lambda: any(r.body_sent >= count for r in self._records),
                                timeout)

    def _body_sent(self, record: RequestRecord, count: int) -> None:
        with self._cond:
            record.body_sent = count
            self._cond.notify_all()

    def wait_for_in_flight(self, n: int, timeout: float | None = 5.0) -> bool:
        """Wait up to ``timeout`` seconds (``None``: as long as it takes) until ``n`` requests
        are in flight."""
        return self._wait_until(lambda: self._in_flight >= n, timeout)

    def wait_idle(self, timeout: float | None = 5.0) -> bool:
        """Wait up to ``timeout`` seconds (``None``: as long as it takes) until no request is
        in flight."""
        return self._wait_until(lambda: self._in_flight == 0, timeout)

    def _wait_until(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    @property
    def in_flight(self) -> int:
        """Number of chat requests currently being processed."""
        with self._cond:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """Highest number of chat requests processed concurrently so far."""
        with self._cond:
            return self._max_in_flight

    # -- request handling (runs on handler threads) ----------------------------

    def _wait(self, seconds: float, conn: socket.socket) -> None:
        """Sleep ``seconds``; raise :class:`_Abandon` on stop() or client disconnect."""
        deadline = time.monotonic() + seconds
        while True:
            if self._stop_event.is_set() or _peer_closed(conn):
                raise _Abandon
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._stop_event.wait(min(remaining, _POLL)):
                raise _Abandon

    def _handle_chat(self, handler: _Handler, path: str) -> None:
        raw = handler._read_body()
        started = time.monotonic()
        body: Any
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        valid = isinstance(body, dict) and isinstance(body.get("messages"), list)
        payload: dict[str, Any] = body if valid else {}
        messages = [m for m in payload.get("messages", []) if isinstance(m, dict)]
        model = payload.get("model")
        stream = bool(payload.get("stream"))
        with self._cond:
            record = RequestRecord(
                index=len(self._records),
                model=model if isinstance(model, str) else None,
                messages=messages,
                stream=stream,
                started=started,
                headers={k.lower(): v for k, v in handler.headers.items()},
                body=body,
                path=path,
            )
            self._records.append(record)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            self._cond.notify_all()

        def finish() -> None:
            with self._cond:
                if record.finished is None:
                    record.finished = time.monotonic()
                    self._in_flight -= 1
                    self._cond.notify_all()

        handler.before_last_write = finish
        try:
            if not valid:
                record.status = 400
                handler._send_json(400, _error_payload(400, "body must be JSON with 'messages'"))
            else:
                self._respond(handler, record)
        except (_Abandon, OSError):
            record.abandoned = True
        finally:
            handler.close_connection = True
            finish()

    def _structured_reply(self, record: RequestRecord) -> str | None:
        """The JSON answer to a request that asks for JSON, or ``None`` (see "Structured
        answers")."""
        body = record.body if isinstance(record.body, dict) else {}
        mode, schema = requested_schema(body, record.messages)
        record.structured = mode
        if mode is None:
            return None
        value = fitting_value(schema or {})
        if any(m.get("role") == "assistant" for m in record.messages):
            return json.dumps(value)  # a re-ask: answered right
        with self._cond:
            n = self._first_structured
            self._first_structured += 1
        rate = self.invalid_first_structured
        if math.floor((n + 1) * rate) > math.floor(n * rate):
            record.invalid = True
            return unfitting_reply(schema or {}, value, math.floor(n * rate))
        return json.dumps(value)

    def _respond(self, handler: _Handler, record: RequestRecord) -> None:
        conn: socket.socket = handler.connection
        limit_headers = self._charge(record)
        request_id = f"req-fake-{record.index}"
        if limit_headers.pop("status", None) == "429":  # the gateway refuses before the model
            record.status = 429
            handler._send_json(
                429,
                _error_payload(429, "Rate limit reached for requests. Please try again later."),
                {"x-request-id": request_id, **limit_headers},
            )
            return
        rule = self._take_rule(record.text) or Rule()
        self._wait(self.latency + rule.latency, conn)
        if rule.hang:
            self._wait(self.max_hang, conn)
            raise _Abandon
        extra = {"x-request-id": request_id, **limit_headers, **(rule.headers or {})}
        if rule.raw_body is not None:
            record.status = rule.status
            handler._send_raw(rule.status, rule.raw_body.encode(), extra)
            return
        if rule.status != 200:
            headers = dict(extra)
            if rule.retry_after is not None:
                headers["Retry-After"] = str(max(0, math.ceil(rule.retry_after)))
                headers["retry-after-ms"] = str(max(0, round(rule.retry_after * 1000)))
            record.status = rule.status
            handler._send_json(
                rule.status, _error_payload(rule.status, rule.error_message), headers
            )
            return
        if rule.tool_calls:
            rounds = sum(1 for m in record.messages
                         if m.get("role") == "assistant" and m.get("tool_calls"))
            if rounds < rule.tool_rounds:
                self._send_tool_calls(handler, record, rule, rounds, extra)
                return
            if rule.content is None:
                rule = dataclasses.replace(rule, content="Tool results: " + " | ".join(
                    content_text(m.get("content")) for m in record.messages
                    if m.get("role") == "tool"))
        reply = rule.content if rule.content is not None else self._structured_reply(record)
        if reply is None:
            reply = default_reply(record.messages)
        # A structured answer is never padded: it would stop being JSON.
        if rule.content is None and self.reply_tokens and record.structured is None:
            reply = pad_reply(reply, self.reply_tokens)
        record.reply = reply
        model = record.model or "fake-model"
        completion_id = f"chatcmpl-fake-{record.index}"
        created = int(time.time())
        prompt_tokens = count_tokens(record.text)
        completion_tokens = count_tokens(reply)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if rule.usage_cost is not None:
            usage["cost"] = rule.usage_cost
        if rule.answer == "done-only" and record.stream:
            record.status = 200
            handler._start_sse(extra)
            handler._end_sse("[DONE]")
            return
        if (not record.stream and rule.answer != "stream") or rule.answer == "json":
            record.status = 200
            whole = {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply},
                        "finish_reason": rule.finish_reason,
                    }
                ],
                "usage": usage,
            }
            if rule.body_delay > 0:
                handler._send_slowly(200, whole, extra, rule.pieces or 8, rule.body_delay,
                                     lambda seconds: self._wait(seconds, conn),
                                     lambda count: self._body_sent(record, count))
            else:
                handler._send_json(200, whole, extra)
            return

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
            return json.dumps(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
                }
            )

        delay = self.chunk_delay + rule.chunk_delay
        record.status = 200
        handler._start_sse(extra)
        handler._send_sse(chunk({"role": "assistant", "content": ""}))
        size = self.stream_chunk_tokens
        if size:
            pieces = re.findall(rf"(?:\s*\S+){{1,{size}}}\s*", reply) or [""]
        else:
            pieces = (split_pieces(reply, rule.pieces, min(4, rule.pieces)) if rule.pieces
                      else split_pieces(reply))
        for sent, piece in enumerate(pieces):
            if rule.drop_after is not None and sent >= rule.drop_after:
                raise _Abandon  # the connection closes with the answer half-sent
            if delay > 0:
                self._wait(delay, conn)
            handler._send_sse(chunk({"content": piece}))
        if delay > 0:
            self._wait(delay, conn)
        handler._send_sse(chunk({}, rule.finish_reason))
        options = record.body.get("stream_options") if isinstance(record.body, dict) else None
        if isinstance(options, dict) and options.get("include_usage"):
            handler._send_sse(
                json.dumps(
                    {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                )
            )
        handler._end_sse("[DONE]")


    def _send_tool_calls(self, handler: _Handler, record: RequestRecord, rule: Rule,
                         rounds: int, extra: dict[str, str]) -> None:
        """Answer with ``rule.tool_calls`` (ids unique per round), whole or streamed."""
        calls = [{"id": f"call_{rounds}_{n}", "type": "function",
                  "function": {"name": call["name"],
                               "arguments": json.dumps(call.get("arguments", {}))}}
                 for n, call in enumerate(rule.tool_calls or [])]
        record.status = 200
        record.reply = ""
        model = record.model or "fake-model"
        usage = {"prompt_tokens": count_tokens(record.text), "completion_tokens": len(calls),
                 "total_tokens": count_tokens(record.text) + len(calls)}
        base = {"id": f"chatcmpl-fake-{record.index}", "created": int(time.time()),
                "model": model}
        if not record.stream:
            handler._send_json(200, {**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": None,
                                         "tool_calls": calls},
                 "finish_reason": "tool_calls"}], "usage": usage}, extra)
            return
        handler._start_sse(extra)
        for index, call in enumerate(calls):
            # As providers stream them: the id and name first, the arguments after.
            first = {"index": index, "id": call["id"], "type": "function",
                     "function": {"name": call["function"]["name"], "arguments": ""}}
            rest = {"index": index, "function": {"arguments": call["function"]["arguments"]}}
            for delta in (first, rest):
                handler._send_sse(json.dumps({**base, "object": "chat.completion.chunk",
                                              "choices": [{"index": 0, "delta": {
                                                  "tool_calls": [delta]},
                                                  "finish_reason": None}]}))
        handler._send_sse(json.dumps({**base, "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}))
        handler._send_sse(json.dumps({**base, "object": "chat.completion.chunk",
                                      "choices": [], "usage": usage}))
        handler._end_sse("[DONE]")


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; print the base URL as the first stdout line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="port to bind on 127.0.0.1 (0 = any)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument("--content", default=None, help="fixed reply text for every request")
    parser.add_argument("--verbose", action="store_true", help="log requests to stderr")
    parser.add_argument("--rpm", type=float, default=None, help="requests per minute to enforce")
    parser.add_argument("--tpm", type=float, default=None, help="tokens per minute to enforce")
    parser.add_argument("--burst", type=float, default=1.0,
                        help="seconds' worth of each limit the buckets hold")
    parser.add_argument("--silent-limits", action="store_true",
                        help="no x-ratelimit-* headers: limits show only as 429 + Retry-After")
    parser.add_argument("--reply-tokens", type=int, default=None, help="words per reply")
    parser.add_argument("--stream-chunk-tokens", type=int, default=None,
                        help="words per streamed chunk")
    parser.add_argument("--log", default=None,
                        help="on exit, write one JSON line per request (times, status) here")
    parser.add_argument("--invalid-first-structured", type=float, default=0.0,
                        help="fraction of first structured answers made invalid")
    parser.add_argument("--rules", default=None,
                        help="JSON file: a list of add_rule() keyword arguments, in order")
    args = parser.parse_args(argv)

    done = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    server = FakeLLMServer(
        latency=args.latency, chunk_delay=args.chunk_delay, port=args.port, verbose=args.verbose,
        rpm=args.rpm, tpm=args.tpm, burst=args.burst, reply_tokens=args.reply_tokens,
        stream_chunk_tokens=args.stream_chunk_tokens, silent_limits=args.silent_limits,
        invalid_first_structured=args.invalid_first_structured,
    )
    if args.rules is not None:
        with open(args.rules, encoding="utf-8") as handle:
            for rule in json.load(handle):
                server.add_rule(**rule)
    if args.content is not None:
        server.add_rule(content=args.content)
    with server:
        print(server.url, flush=True)
        while not done.wait(0.5):
            pass
        if args.log is not None:
            with open(args.log, "w", encoding="utf-8") as log:
                for r in server.requests:
                    log.write(json.dumps({"started": r.started, "finished": r.finished,
                                          "status": r.status, "stream": r.stream,
                                          "rate_limited": r.rate_limited,
                                          "tokens": count_tokens(r.text)
                                          + count_tokens(r.reply or ""),
                                          "structured": r.structured, "invalid": r.invalid,
                                          "reply": (r.reply or "")[:80]}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
