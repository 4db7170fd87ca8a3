"""The only module that imports litellm, behind a small client protocol the engine calls.

``LLMClient`` is the seam: ``LiteLLMClient`` talks to every provider through litellm,
``MockClient`` answers offline for ``--mock`` and for tests of the engine itself.
Errors come out as ``dworkers.errors.LLMError`` subclasses, whatever the provider said.

An answer is untrusted input: it holds at most ``MAX_ANSWER_BYTES`` (the body of a whole answer
from an OpenAI-compatible endpoint, refused as it arrives; the text of any answer), a whole
answer sent as a stream is read as the stream it is, and an error shows at most
``ERROR_EXCERPT_CHARS`` of what the endpoint said, escape codes removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import importlib
import json
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dworkers import output_schema, provider_headers
from dworkers.errors import (
    AuthenticationError,
    BadRequestError,
    InvalidAnswerError,
    LLMError,
    Problem,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
    Usage,
)
from dworkers.redact import redact, redact_url
from dworkers.results import MOCK_MODEL
from dworkers.text import ELLIPSIS, one_line

Message = dict[str, str]
DeltaCallback = Callable[[str], None]
Headers = Mapping[str, str]

CHARS_PER_TOKEN = 4  # for estimates where a provider reports no counts (English prose)
MAX_ANSWER_BYTES = 64 * 1024 * 1024
"""The most one answer may hold. Generous: a model writes at most a few hundred thousand tokens
(128,000 tokens are about 0.5 MB of text; streamed, with each chunk's wrapping, about 25 MB),
and an answer past it is refused as it arrives instead of filling memory."""
ERROR_EXCERPT_CHARS = 200  # of an endpoint's own words, in an error message


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million prompt (input) and completion (output) tokens."""

    input_per_million: float
    output_per_million: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_million
                + completion_tokens * self.output_per_million) / 1_000_000


@dataclass(frozen=True, slots=True)
class LLMRequest:
    """One call. ``timeout`` is how long the endpoint may stay silent (before the first byte
    or between two chunks); ``total_timeout`` bounds the whole answer (``None``: no bound
    beyond the silence one). ``price`` is the tenant's declared price for ``model``."""

    model: str
    messages: Sequence[Message]
    timeout: float
    step_id: str = ""
    role: str = ""
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)  # never logged or saved
    total_timeout: float | None = None
    price: Price | None = None
    stream: bool = True
    # The tools the model may call (OpenAI "function" schemas), and the turns of a tool loop
    # so far (the model's tool calls and their results), sent after ``messages``.
    tools: Sequence[Mapping[str, Any]] = ()
    turns: Sequence[Mapping[str, Any]] = ()

    # A typed step's normalised output_schema: the client asks for it natively where the model
    # supports that (``structured_mode``); the engine validates every answer itself.
    output_schema: Mapping[str, Any] | None = None
    # How to ask for it when the tenant says (``structured_output``): a gateway's own model
    # names tell litellm nothing. ``None``: as litellm says of the model.
    structured_mode: str | None = None


@dataclass(frozen=True, slots=True)
class ToolRequest:
    """One tool call the model asked for: ``arguments`` is the JSON text it wrote."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Completion:
    """A successful answer. ``cost_usd`` is ``None`` when it cannot be known (no reported
    cost, no price); ``headers`` are the answer's response headers, normalised by
    ``provider_headers.normalise`` (rate limits: ``provider_headers.rate_limits(headers)``);
    ``finish_reason`` "length" means the answer was cut off at the token limit."""

    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    headers: Headers = field(default_factory=dict)
    finish_reason: str | None = None
    tool_calls: tuple[ToolRequest, ...] = ()

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


class LLMClient(Protocol):
    """What the engine needs from a model provider."""

    @property
    def offline(self) -> bool:
        """True when answers are made up without calling any model (``--mock``): the engine
        then names the client, not a model, and never mixes its answers with real ones."""
        ...

    async def complete(self, request: LLMRequest, on_delta: DeltaCallback) -> Completion:
        """Stream one completion, calling ``on_delta`` with each piece of text (``""`` for a
        chunk without text: a sign of life).

        Gives up with ``ProviderTimeoutError`` when the endpoint stays silent for
        ``request.timeout`` or the whole answer takes longer than ``request.total_timeout``.
        Raises an ``LLMError`` subclass on failure; never retries by itself.
        """
        ...

    def preflight(self, models: Mapping[str, Sequence[str]], keyed: set[str]) -> list[Problem]:
        """Problems that would make calls to ``models`` (model → step ids) fail at once.

        ``keyed`` lists the models whose key is passed explicitly (``api_key_env``).
        """
        ...

    def price_of(self, model: str) -> Price | None:
        """What a call to ``model`` costs per million tokens, from the client's own price
        list, or ``None`` when the client cannot tell before the endpoint answers."""
        ...


def estimate_tokens(text: str) -> int:
    """A rough token count for text nobody counted: about four characters a token."""
    return -(-len(text) // CHARS_PER_TOKEN)


def endpoint_of(url: str | None) -> str:
    """``scheme://host:port`` of an endpoint, for messages: never a path, query or password."""
    if not url:
        return ""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return redact_url(url)
    if not parts.scheme or not host:
        return redact_url(url)
    if port is None:
        port = {"http": 80, "https": 443}.get(parts.scheme.lower())
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


# --- litellm --------------------------------------------------------------------------------

_import_lock = threading.Lock()


def load_litellm() -> Any:
    """Import and configure litellm (seconds); safe to call from a background thread."""
    with _import_lock:
        # litellm's own modules warn (on import, and a provider module on first use); those
        # warnings are not the user's business, whoever calls: the command line or a script.
        warnings.filterwarnings("ignore", module=r"litellm(\.|$)")
        warnings.filterwarnings("ignore", message=r".*ReadOnly. qualifier", category=UserWarning)
        # Use the cost map shipped with litellm instead of fetching one at import time.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        litellm: Any = importlib.import_module("litellm")
        litellm.suppress_debug_info = True
        litellm.telemetry = False
        # litellm fails a stream whose same chunk repeats 100 times ("model is repeating the
        # same chunk"), which legitimate output does (table rules, indentation, "ha ha"). A
        # runaway answer is bounded by the step's total timeout and the model's token limit.
        litellm.REPEATED_STREAMING_CHUNK_LIMIT = 1 << 62
        # litellm's own logger can echo request details; keys must never reach a log.
        for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        return litellm


def prefetch_litellm() -> threading.Thread:
    """Start importing litellm in the background so a view can paint meanwhile."""
    thread = threading.Thread(target=_load_and_warm, name="dworkers-load-litellm", daemon=True)
    thread.start()
    return thread


def _load_and_warm() -> None:
    """Import litellm, then make one offline call (litellm's own ``mock_response``: nothing
    is sent): litellm sets up the rest of itself on its first call, close to a second here,
    which would otherwise delay the run's first step and every step after it."""
    litellm = load_litellm()
    with contextlib.suppress(Exception):
        asyncio.run(litellm.acompletion(
            model="openai/dworkers-warm-up", messages=[{"role": "user", "content": "-"}],
            mock_response="-", num_retries=0))


@dataclass
class _Received:
    """What one attempt has received so far: enough to bill a failed attempt honestly."""

    pieces: list[str] = field(default_factory=list)
    usage: Any = None
    finish_reason: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    started: bool = False  # the endpoint accepted the request and began answering
    limit: int = MAX_ANSWER_BYTES  # bytes of a body, characters of the text
    size: int = 0  # characters of text kept so far
    too_large: bool = False  # the answer passed ``limit`` and was refused
    event_stream: list[bytes] | None = None  # a stream sent to a request for a whole answer
    # Tool calls the model asked for, by their index in the answer: id, name, arguments.
    tool_parts: dict[int, list[str]] = field(default_factory=dict)

    def add_tool_calls(self, calls: object) -> None:
        """Keep the tool calls of a message or a stream chunk (a stream sends each call's
        arguments in pieces, by index); anything malformed is ignored."""
        if not isinstance(calls, list):
            return
        for position, call in enumerate(calls):
            index = _field(call, "index")
            index = index if isinstance(index, int) and not isinstance(index, bool) else position
            parts = self.tool_parts.setdefault(index, ["", "", ""])
            function = _field(call, "function")
            for slot, value in enumerate((_field(call, "id"), _field(function, "name"),
                                          _field(function, "arguments"))):
                if isinstance(value, str):
                    self.size += len(value)
                    if self.size > self.limit:
                        self.too_large = True
                        raise AnswerTooLarge(self.limit)
                    parts[slot] = value if slot < 2 else parts[slot] + value

    @property
    def tool_calls(self) -> tuple[ToolRequest, ...]:
        return tuple(ToolRequest(call_id or f"call_{index}", name, arguments)
                     for index, (call_id, name, arguments) in sorted(self.tool_parts.items())
                     if name)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def add(self, text: object, on_delta: DeltaCallback) -> bool:
        """Keep a piece of the answer (any string the provider sent, made valid text) and pass
        it on; ``False`` for anything else. Raises ``AnswerTooLarge`` past ``limit``."""
        if not text or not isinstance(text, str):
            return False
        self.size += len(text)
        if self.size > self.limit:
            self.too_large = True
            raise AnswerTooLarge(self.limit)
        text = valid_text(text)
        self.pieces.append(text)
        on_delta(text)
        return True


def _field(item: object, name: str) -> object:
    """``item[name]`` or ``item.name``: litellm hands out objects, raw answers are dicts."""
    if isinstance(item, dict):
        return item.get(name)
    return getattr(item, name, None)


class AnswerTooLarge(Exception):
    """An answer passed its size bound: raised where it is read, while it arrives."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is larger than {_size(limit)}")
        self.limit = limit


def _size(count: int) -> str:
    return f"{count / (1 << 20):g} MiB" if count >= 1 << 20 else f"{count:,} bytes"


# The attempt being made in this task, for the HTTP answer hook below: bound and keep its body.
_ATTEMPT: contextvars.ContextVar[_Received | None] = contextvars.ContextVar(
    "dworkers_attempt", default=None)


@functools.lru_cache(maxsize=256)
def _structured_mode(litellm: Any, model: str) -> str:
    """``LiteLLMClient.structured_mode``, asked of litellm once per model."""
    try:
        if litellm.supports_response_schema(model=model):
            return "native"
    except Exception:  # a model litellm does not know: it cannot vouch for it
        pass
    try:
        provider = litellm.get_llm_provider(model=model)[1]
        supported = litellm.get_supported_openai_params(model=model,
                                                         custom_llm_provider=provider)
    except Exception:
        return "instructions"
    return "json_mode" if supported and "response_format" in supported else "instructions"


@functools.lru_cache(maxsize=256)
def _price_of(litellm: Any, model: str) -> Price | None:
    """``LiteLLMClient.price_of``, asked of litellm once per model: its price list does not
    change while a process runs, and the lookup (an exception for a model it does not know)
    cost a third of a millisecond before every call."""
    try:
        prompt_cost, completion_cost = litellm.cost_per_token(
            model=model, prompt_tokens=1_000_000, completion_tokens=1_000_000)
    except Exception:  # a local or custom model: litellm raises for any it does not know
        return None
    return Price(float(prompt_cost), float(completion_cost))


class LiteLLMClient:
    """Calls any provider through ``litellm.acompletion`` with streaming and usage."""

    offline = False

    def __init__(self, *, max_answer_bytes: int = MAX_ANSWER_BYTES) -> None:
        self._litellm: Any = None
        self.max_answer_bytes = max_answer_bytes

    @property
    def litellm(self) -> Any:
        if self._litellm is None:
            self._litellm = load_litellm()
        return self._litellm

    def preflight(self, models: Mapping[str, Sequence[str]], keyed: set[str]) -> list[Problem]:
        problems = []
        for model, steps in models.items():
            used_by = f"used by: {', '.join(steps)}"
            try:
                self.litellm.get_llm_provider(model=model)
            except Exception:  # litellm cannot tell which provider to send it to
                problems.append(Problem(
                    f"model {model!r} names no provider litellm knows ({used_by})",
                    f"write it as provider/model, e.g. 'openai/{model.rpartition('/')[2]}' "
                    "for an OpenAI-compatible endpoint", "unknown-provider", file="model"))
                continue
            if model in keyed:
                continue
            try:
                status = self.litellm.validate_environment(model=model)
            except Exception:  # an unknown provider: let the call itself report it
                continue
            missing = [k for k in status.get("missing_keys", []) if k]
            if missing and not status.get("keys_in_environment", False):
                names = " and ".join(missing)
                problems.append(
                    Problem(
                        f"model {model!r} needs {names}, which is not set ({used_by})",
                        f"export {missing[0]}=... or run with --mock to try the plan offline",
                        "missing-api-key",
                        file="environment",
                    )
                )
        return problems

    def structured_mode(self, model: str) -> str:
        """How a typed step's answer is asked of ``model``: ``"native"`` (a JSON Schema
        ``response_format``, where litellm says the model supports one), ``"json_mode"``
        (``{"type": "json_object"}``, where it accepts a response_format at all) or
        ``"instructions"`` (the schema in the prompt only). The prompt carries the schema in
        every case, and every answer is validated by the engine."""
        return _structured_mode(self.litellm, model)

    def price_of(self, model: str) -> Price | None:
        """litellm's price list for ``model``, or ``None`` for a model it cannot price."""
        return _price_of(self.litellm, model)

    async def complete(self, request: LLMRequest, on_delta: DeltaCallback) -> Completion:
        litellm = self.litellm
        options: dict[str, Any] = {}
        if request.api_base:
            options["api_base"] = request.api_base
        if request.api_key:
            options["api_key"] = request.api_key
        if request.stream:
            options["stream_options"] = {"include_usage": True}
        if request.tools:
            options["tools"] = [dict(tool) for tool in request.tools]
        mode = None
        if request.output_schema is not None:
            mode = request.structured_mode or self.structured_mode(request.model)
            if mode == "native":
                options["response_format"] = output_schema.response_format(
                    request.output_schema, request.step_id or "answer")
            elif mode == "json_mode":
                options["response_format"] = {"type": "json_object"}
        got = _Received(limit=self.max_answer_bytes)
        watching = _ATTEMPT.set(got)
        _watch_http_answers(litellm)
        loop = asyncio.get_running_loop()
        silence = request.timeout
        total = request.total_timeout
        whole = asyncio.timeout(total if total is not None else None)
        quiet = asyncio.timeout(silence)
        try:
            async with whole, quiet:
                answer = await litellm.acompletion(
                    model=request.model,
                    messages=[*request.messages, *(dict(t) for t in request.turns)],
                    stream=request.stream,
                    timeout=silence,  # httpx's read timeout: silence between two bytes
                    num_retries=0,  # attempts are the engine's, so they are counted and shown
                    max_retries=0,
                    **options,
                )
                got.started = True
                quiet.reschedule(loop.time() + silence)
                got.headers = _answer_headers(answer)
                if not request.stream:
                    self._read_whole(answer, got, on_delta)
                elif not _is_event_stream(got.headers) and (body := await _raw_body(answer)):
                    # An endpoint that ignores "stream": true answers with plain JSON, which
                    # the stream reader would drop: read it as the answer it is.
                    _read_json_answer(body, got, on_delta)
                else:
                    async for chunk in answer:
                        quiet.reschedule(loop.time() + silence)
                        self._read_chunk(chunk, got, on_delta)
                    got.headers = _answer_headers(answer) or got.headers
        except LLMError:
            raise
        except TimeoutError:
            raise self._timed_out(request, got, whole.expired()) from None
        except Exception as exc:
            if got.too_large:
                raise self._too_large(request, got) from None
            # An endpoint that answers a request for a whole answer with a stream: litellm
            # cannot parse it, the hook kept it, and it is read as the stream it is.
            if got.event_stream is None or not _read_event_stream(got, on_delta):
                error = self._translate(exc, (request.api_key,), request.api_base)
                if mode in _PLAINER and isinstance(error, BadRequestError):
                    error = _refused_format(error, request.model, mode)
                raise self._with_usage(error, request, got) from None
        finally:
            _ATTEMPT.reset(watching)
        if not got.text.strip() and not (request.tools and got.tool_calls):
            reason = ("its answer held no text" if got.finish_reason or got.usage is not None
                      else "it sent nothing readable")
            raise InvalidAnswerError(
                f"the endpoint answered 200 but {reason}", headers=got.headers, status=200,
                usage=self._usage(request, got, estimated=True))
        usage = self._usage(request, got, estimated=False)
        return Completion(
            text=got.text,
            model=request.model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost_usd=usage.cost_usd,
            headers=got.headers,
            finish_reason=got.finish_reason,
            tool_calls=got.tool_calls,
        )

    @staticmethod
    def _read_chunk(chunk: Any, got: _Received, on_delta: DeltaCallback) -> None:
        if getattr(chunk, "usage", None):
            got.usage = chunk.usage
        choices = getattr(chunk, "choices", None) or []
        if not choices:
            on_delta("")  # a sign of life all the same
            return
        reason = getattr(choices[0], "finish_reason", None)
        if reason:
            got.finish_reason = str(reason)
        delta = getattr(choices[0], "delta", None)
        text = getattr(delta, "content", None) if delta is not None else None
        got.add_tool_calls(getattr(delta, "tool_calls", None))
        if not got.add(text, on_delta):
            on_delta("")

    @staticmethod
    def _read_whole(answer: Any, got: _Received, on_delta: DeltaCallback) -> None:
        got.usage = getattr(answer, "usage", None)
        choices = getattr(answer, "choices", None) or []
        if not choices:
            return
        reason = getattr(choices[0], "finish_reason", None)
        got.finish_reason = str(reason) if reason else None
        message = getattr(choices[0], "message", None)
        got.add_tool_calls(getattr(message, "tool_calls", None))
        got.add(getattr(message, "content", None) if message is not None else None, on_delta)

    def _usage(self, request: LLMRequest, got: _Received, *, estimated: bool) -> Usage:
        """Tokens and cost of an attempt: as reported, else estimated from what was sent and
        received (``estimated``: the attempt did not finish, so the provider may have billed
        the prompt without reporting it)."""
        prompt = _int(getattr(got.usage, "prompt_tokens", 0))
        completion = _int(getattr(got.usage, "completion_tokens", 0))
        guessed = False
        if got.usage is None and estimated:
            prompt = estimate_tokens("".join(m.get("content", "") for m in request.messages))
            completion = estimate_tokens(got.text)
            guessed = True
        elif completion == 0 and got.text:
            completion, guessed = estimate_tokens(got.text), True
        cost = None if guessed else _reported_cost(got.usage, got.headers, prompt + completion)
        if cost is None:
            cost = self._priced(request, prompt, completion)
        return Usage(prompt, completion, cost, guessed)

    def _priced(self, request: LLMRequest, prompt_tokens: int,
                completion_tokens: int) -> float | None:
        if prompt_tokens == 0 and completion_tokens == 0:
            return 0.0
        if request.price is not None:
            return request.price.cost(prompt_tokens, completion_tokens)
        if _price_of(self.litellm, request.model) is None:
            return None  # litellm cannot price it (known once per model: asking raises)
        try:  # litellm's own arithmetic: some models are priced by tiers of prompt length
            prompt_cost, completion_cost = self.litellm.cost_per_token(
                model=request.model, prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens)
        except Exception:  # a model without a price (local, custom): unknown, not free
            return None
        return float(prompt_cost) + float(completion_cost)

    def _timed_out(self, request: LLMRequest, got: _Received, whole: bool) -> LLMError:
        if whole:
            message = (f"timed out: the answer took longer than {request.total_timeout:g}s "
                       "(timeout_seconds)")
        elif got.pieces:
            message = f"timed out: the answer stalled, nothing for {request.timeout:g}s"
        else:
            message = f"timed out: no answer within {request.timeout:g}s"
        return ProviderTimeoutError(message, headers=got.headers,
                                    usage=self._usage(request, got, estimated=True))

    def _too_large(self, request: LLMRequest, got: _Received) -> LLMError:
        error = InvalidAnswerError(
            f"the answer is larger than {_size(got.limit)}, the most dworkers reads of one "
            "answer: refused, not retried (ask for a shorter answer, or lower the model's "
            "max_tokens)", headers=got.headers, status=200,
            usage=self._usage(request, got, estimated=True))
        error.retryable = False  # the same prompt would be answered at the same length
        return error

    def _with_usage(self, error: LLMError, request: LLMRequest, got: _Received) -> LLMError:
        """``error`` carrying what its attempt consumed: an answer cut off half-way, or a
        timeout after the request was sent, is billed by the provider."""
        billed = got.started or isinstance(error, ProviderTimeoutError)
        if billed and error.status is None:
            error.usage = self._usage(request, got, estimated=True)
        if not error.headers and got.headers:
            error.headers = got.headers
        return error

    def _translate(self, exc: BaseException, secrets: Iterable[str | None] = (),
                   api_base: str | None = None) -> LLMError:
        """Map litellm's (OpenAI-style) exceptions to ours, keeping the provider's message with
        every secret in it redacted (``secrets``: the request's own key, and see ``redact``).

        Order matters: litellm gives a failed connection status 500 (``APIConnectionError``,
        or ``InternalServerError`` wrapping one for OpenAI-compatible providers) and a timeout
        is an ``openai.APIConnectionError`` too, so timeouts, then connections, come first.
        """
        headers = _error_headers(exc)
        if isinstance(exc, TimeoutError):  # asyncio.TimeoutError is TimeoutError
            return ProviderTimeoutError("the provider did not answer in time", headers=headers)
        ex = self.litellm.exceptions
        status = getattr(exc, "status_code", None)
        status = status if isinstance(status, int) else None
        message = excerpt(redact(_clean_message(exc), secrets))
        network = _network_failure(exc) if status in (None, 408, 500) else None
        answered = bool(headers)  # an HTTP answer came: not a network failure
        where = f" ({endpoint_of(api_base)})" if api_base else ""
        if isinstance(exc, ex.Timeout) or network == "timeout":
            return ProviderTimeoutError(f"timed out{where}: {message}", headers=headers)
        if _unparseable_answer(exc, message) and status in (None, 200, 500):
            return InvalidAnswerError(f"the endpoint's answer is not valid JSON: {message}",
                                      headers=headers, status=200)
        if (isinstance(exc, ex.APIConnectionError) or network == "connection") and not (
                answered and status not in (None, 500)):
            return ProviderUnavailableError(f"connection failed{where}: "
                                            f"{message}", headers=headers)
        if isinstance(exc, ex.RateLimitError) or status == 429:
            now = time.time()
            return RateLimitError(
                f"rate limited (429): {message}", headers=headers, status=429,
                retry_after=provider_headers.retry_after_seconds(headers, now))
        if isinstance(exc, ex.AuthenticationError | ex.PermissionDeniedError) or status in (
            401,
            403,
        ):
            return AuthenticationError(f"authentication failed ({status}): {message}",
                                       headers=headers, status=status)
        if status is not None and status >= 500:
            return ProviderUnavailableError(f"provider error ({status}): {message}",
                                            headers=headers, status=status)
        unavailable = (ex.InternalServerError, ex.ServiceUnavailableError, ex.BadGatewayError)
        if isinstance(exc, unavailable):
            return ProviderUnavailableError(f"provider error: {message}", headers=headers)
        if status is not None:
            return BadRequestError(f"request refused ({status}): {message}", headers=headers,
                                   status=status)
        return BadRequestError(f"{type(exc).__name__}: {message}", headers=headers)


# A structured mode → what its request holds, and the plainer mode to ask in instead.
_PLAINER = {"native": ("a JSON Schema response_format", "json_mode"),
            "json_mode": ("response_format json_object", "instructions")}


def _refused_format(error: BadRequestError, model: str, mode: str) -> BadRequestError:
    """A refusal of a request that held a ``response_format``, saying the way out: an endpoint
    behind a gateway may not take one though litellm vouches for the model's name."""
    held, plainer = _PLAINER[mode]
    return BadRequestError(
        f"{error} — if the endpoint does not take {held}, set structured_output: "
        f"{{{model!r}: {plainer}}} in the tenant",
        headers=error.headers, status=error.status, usage=error.usage)


def _int(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _reported_cost(usage: Any, headers: Headers, tokens: int) -> float | None:
    """The cost the endpoint reported (``usage.cost`` or ``x-litellm-response-cost``). A
    reported 0 for an answer with tokens is what gateways say for models they have no price
    for, so it counts as not reported."""
    for value in (getattr(usage, "cost", None), provider_headers.cost_from_headers(headers)):
        if isinstance(value, dict):
            value = value.get("total_cost")
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if value > 0 or (value == 0 and tokens == 0):
            return float(value)
    return None


def _answer_headers(answer: Any) -> dict[str, str]:
    hidden = getattr(answer, "_hidden_params", None)
    if not isinstance(hidden, dict):
        return {}
    raw = hidden.get("additional_headers")
    return provider_headers.normalise(raw) if isinstance(raw, Mapping) else {}


def _error_headers(exc: BaseException) -> dict[str, str]:
    response = getattr(exc, "response", None)
    raw = getattr(response, "headers", None) if response is not None else None
    raw = raw or getattr(exc, "litellm_response_headers", None)
    try:
        return provider_headers.normalise(raw) if raw else {}
    except Exception:  # an exception's odd headers object must not hide the error itself
        return {}


def _is_event_stream(headers: Headers) -> bool:
    kind = headers.get("content-type")
    return kind is None or "event-stream" in kind.lower()


async def _raw_body(answer: Any) -> bytes:
    """The unread body of a stream's HTTP response, where litellm exposes it (OpenAI-style
    providers); empty where it does not, so the stream is read as usual."""
    response = getattr(getattr(answer, "completion_stream", None), "response", None)
    read = getattr(response, "aread", None)
    if read is None or getattr(response, "is_stream_consumed", True):
        return b""
    body = await read()
    return body if isinstance(body, bytes) else b""


def excerpt(text: str, limit: int = ERROR_EXCERPT_CHARS) -> str:
    """At most ``limit`` characters of ``text``, on one line and without escape codes: what an
    error shows of an endpoint's own words (which can be a whole answer body)."""
    text = one_line(text[: limit * 4])
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def _watch_http_answers(litellm: Any) -> None:
    """Let every answer from an OpenAI-compatible endpoint pass ``_watch_answer`` first.

    litellm sends those through the httpx client it builds for the OpenAI SDK; the same client,
    with the hook added, is handed back as ``litellm.aclient_session`` (its documented setting
    for a custom client). Nothing is changed when a caller set a session of their own, or where
    litellm builds its clients otherwise: answers are then bounded by their text only.
    """
    if litellm.aclient_session is not None:
        return  # ours, already watched; or the caller's own client, theirs to configure
    try:
        from litellm.llms.openai.common_utils import BaseOpenAILLM

        session: Any = BaseOpenAILLM._get_async_http_client()
        hooks = session.event_hooks
        session.event_hooks = {**hooks, "response": [*hooks.get("response", []), _watch_answer]}
    except Exception:  # another litellm: no hook, the text bound still holds
        return
    litellm.aclient_session = session


async def _watch_answer(response: Any) -> None:
    """httpx response hook, before the body is read: refuse a body announced or found larger
    than the attempt's bound, and keep a stream sent to a request for a whole answer."""
    got = _ATTEMPT.get()
    if got is None:
        return  # not one of our calls
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > got.limit:
        got.too_large = True
        raise AnswerTooLarge(got.limit)
    kind = response.headers.get("content-type", "").lower()
    if response.status_code == 200 and "event-stream" in kind and not _asks_stream(
            response.request):
        got.event_stream = []
        got.headers = provider_headers.normalise(dict(response.headers))
    response.stream = _bounded_body(response.stream, got)


def _asks_stream(request: Any) -> bool:
    import json

    try:
        body = json.loads(request.content or b"null")
    except (ValueError, RuntimeError):  # not JSON, or a body not read into memory
        return True
    return not isinstance(body, dict) or bool(body.get("stream"))


def _bounded_body(stream: Any, got: _Received) -> Any:
    """``stream`` (an httpx body stream) counting its bytes: ``AnswerTooLarge`` past the bound;
    an event stream sent to a request for a whole answer is also kept in ``got``."""
    return _bounded_body_type()(stream, got)


@functools.cache
def _bounded_body_type() -> type:
    import httpx  # litellm's own HTTP library, loaded with it

    class BoundedBody(httpx.AsyncByteStream):
        def __init__(self, stream: Any, got: _Received) -> None:
            self.stream, self.got = stream, got

        async def __aiter__(self) -> Any:
            received = 0
            async for part in self.stream:
                received += len(part)
                if received > self.got.limit:
                    self.got.too_large = True
                    raise AnswerTooLarge(self.got.limit)
                if self.got.event_stream is not None:
                    self.got.event_stream.append(part)
                yield part

        async def aclose(self) -> None:
            await self.stream.aclose()

    return BoundedBody


def _read_event_stream(got: _Received, on_delta: DeltaCallback) -> bool:
    """Read the kept event stream (``data: {chunk}`` lines) into ``got``: whether it held an
    answer."""
    import json

    body = b"".join(got.event_stream or ())
    read = False
    for line in body.decode("utf-8", "replace").splitlines():
        data = line[5:].strip() if line.startswith("data:") else ""
        if not data or data == "[DONE]":
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            continue
        if isinstance(chunk, dict):
            read = _read_answer_dict(chunk, "delta", got, on_delta) or read
    return read


def _read_json_answer(body: bytes, got: _Received, on_delta: DeltaCallback) -> None:
    """Read a non-stream chat completion body into ``got``; nothing if it is not one."""
    import json

    try:
        data = json.loads(body)
    except ValueError:
        return
    if isinstance(data, dict):
        _read_answer_dict(data, "message", got, on_delta)


def _read_answer_dict(data: dict[str, Any], part: str, got: _Received,
                      on_delta: DeltaCallback) -> bool:
    """Read one decoded chat completion (``part`` "message") or stream chunk ("delta") into
    ``got``: whether it was one."""
    from types import SimpleNamespace

    usage = data.get("usage")
    if isinstance(usage, dict):
        got.usage = SimpleNamespace(**{k: v for k, v in usage.items() if isinstance(k, str)})
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return isinstance(usage, dict)
    reason = choices[0].get("finish_reason")
    if isinstance(reason, str) or part == "message":
        got.finish_reason = reason if isinstance(reason, str) else None
    message = choices[0].get(part)
    got.add_tool_calls(message.get("tool_calls") if isinstance(message, dict) else None)
    got.add(message.get("content") if isinstance(message, dict) else None, on_delta)
    return True


def _unparseable_answer(exc: BaseException, message: str) -> bool:
    """litellm's report of a 200 whose body is not JSON ("Expecting value: line 1 ...")."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 20:
        seen.add(id(current))
        if isinstance(current, ValueError) and "Expecting" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return message.startswith(("Expecting value", "Expecting property name", "Extra data"))


# "litellm.AuthenticationError: AuthenticationError: OpenAIException - ", "APIError: ", ...
_LEADING_LABEL = re.compile(
    r"(?:(?:litellm\.)?(?:[A-Z][A-Za-z]*(?:Error|Exception|Timeout)|Timeout)(?::\s*|\s+-\s+))+"
)
_REPEATED_LABEL = re.compile(r"\b([A-Z][A-Za-z]*(?:Error|Exception)): (?:\1: )+")
_LITELLM_NOISE = re.compile(
    r"\s*Handle with `litellm\.\w+`\.?"  # advice meant for litellm's callers, not users
    r"|\s*LiteLLM Retried: \d+ times?(?:, LiteLLM Max Retries: \d+)?"
    r"| ssl:<ssl\.SSLContext object at 0x[0-9a-fA-F]+>"
)


def valid_text(text: str) -> str:
    """``text`` with lone surrogates (which a provider's JSON can carry but UTF-8 cannot) made
    '?': the output must be writable to files and sendable to the next step."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _clean_message(exc: BaseException) -> str:
    """The provider's message without litellm's class-name labels, on one line."""
    text = str(getattr(exc, "message", None) or exc)
    text = " ".join(text.split())
    text = _LITELLM_NOISE.sub("", text)
    match = _LEADING_LABEL.match(text)
    if match and match.end() < len(text):
        text = text[match.end():]
    text = _REPEATED_LABEL.sub(r"\1: ", text)
    first, _, repeated = text.partition(" Error_str: ")  # litellm's Timeout says it twice
    if repeated and repeated.strip() in first:
        text = first
    return text.strip() or type(exc).__name__


def _network_failure(exc: BaseException) -> str | None:
    """"timeout" or "connection" when ``exc`` was caused by the network rather than by an
    answer: litellm reports a refused connection as a status-500 ``InternalServerError``."""
    kinds = _network_error_types()
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 20:
        seen.add(id(current))
        if isinstance(current, kinds["timeout"]):
            return "timeout"
        if isinstance(current, kinds["connection"]):
            return "connection"
        current = current.__cause__ or current.__context__
    return None


def _network_error_types() -> dict[str, tuple[type[BaseException], ...]]:
    """Network exception classes of the HTTP libraries litellm uses (all imported by then)."""
    timeout: list[type[BaseException]] = [TimeoutError]
    connection: list[type[BaseException]] = [ConnectionError]
    for module, timeouts, connections in (
        ("openai", ("APITimeoutError",), ("APIConnectionError",)),
        ("httpx", ("TimeoutException",), ("NetworkError", "RemoteProtocolError", "ProxyError")),
        ("aiohttp", ("ServerTimeoutError",), ("ClientConnectionError",)),
        ("litellm.exceptions", ("Timeout",), ("APIConnectionError",)),
    ):
        loaded = sys.modules.get(module)
        if loaded is None:
            continue
        timeout += [c for n in timeouts if isinstance(c := getattr(loaded, n, None), type)]
        connection += [c for n in connections if isinstance(c := getattr(loaded, n, None), type)]
    return {"timeout": tuple(timeout), "connection": tuple(connection)}


# --- offline ------------------------------------------------------------------------------


class MockClient:
    """Offline answers for ``--mock``: deterministic text built from the step and its prompt,
    streamed in pieces with a small realistic latency, through the same engine path."""

    model_name = MOCK_MODEL
    offline = True

    def __init__(self, latency: float | None = None) -> None:
        # A scale: 1.0 ≈ 0.4–1.6 s per step, 0 for instant. DWORKERS_MOCK_LATENCY sets it
        # for the command line.
        if latency is None:
            try:
                latency = float(os.environ.get("DWORKERS_MOCK_LATENCY", "1"))
            except ValueError:
                latency = 1.0
        self.latency = max(0.0, min(latency, 100.0))

    def preflight(self, models: Mapping[str, Sequence[str]], keyed: set[str]) -> list[Problem]:
        return []

    def price_of(self, model: str) -> Price | None:
        return Price(0.0, 0.0)  # offline answers cost nothing

    async def complete(self, request: LLMRequest, on_delta: DeltaCallback) -> Completion:
        digest = hashlib.sha256(
            "".join(m["content"] for m in request.messages).encode()
        ).digest()
        if request.output_schema is not None:  # deterministic JSON that fits the schema
            text = json.dumps(output_schema.mock_value(request.output_schema, digest.hex()),
                              ensure_ascii=False, indent=1)
        else:
            text = mock_text(request, digest.hex()[:8])
        words = text.split(" ")
        pieces = 12
        per_piece = self.latency * (0.4 + digest[0] / 255 * 1.2) / pieces
        size = max(1, len(words) // pieces)
        if not request.stream:  # the whole answer at once, after the same total latency
            if per_piece:
                await asyncio.sleep(per_piece * pieces)
            words, size = [], 1
        for i in range(0, len(words), size):
            if per_piece:
                await asyncio.sleep(per_piece)
            on_delta(" ".join(words[i : i + size]) + (" " if i + size < len(words) else ""))
        prompt_tokens = sum(len(m["content"].split()) for m in request.messages)
        return Completion(text, self.model_name, prompt_tokens, len(text.split()), 0.0)


def mock_text(request: LLMRequest, digest: str) -> str:
    task = request.messages[-1]["content"] if request.messages else ""
    marker = "## Your task\n"
    if marker in task:
        task = task.split(marker, 1)[1]
    task = " ".join(task.split())
    if len(task) > 240:
        task = task[:237] + "..."
    return (
        f"### Mock {request.role} output for `{request.step_id}`\n\n"
        f"This is offline mock output (digest {digest}); no model was called.\n\n"
        f"**Task as given:** {task}\n\n"
        "- Finding 1: placeholder finding for this step.\n"
        "- Finding 2: placeholder finding for this step.\n"
        "- Next step: run without --mock to get a real deliverable.\n"
    )


def count_prompt_tokens(model: str, messages: Sequence[Mapping[str, Any]]) -> int:
    """How many tokens ``messages`` take for ``model``, by litellm's counter (the model's own
    tokenizer where litellm has it, else tiktoken's); a rough count when it cannot say."""
    try:
        return int(load_litellm().token_counter(model=model, messages=list(messages)))
    except Exception:  # an unknown model or a counter failure: the estimate still guards
        return sum(estimate_tokens(str(message.get("content", ""))) for message in messages)


def context_window_of(model: str) -> int | None:
    """The most prompt tokens ``model`` takes, from litellm's model information; ``None``
    for a model litellm does not know."""
    try:
        info = load_litellm().get_model_info(model=model)
    except Exception:  # litellm raises for any model it has no entry for
        return None
    size = info.get("max_input_tokens") or info.get("max_tokens")
    return int(size) if isinstance(size, int | float) and size > 0 else None
