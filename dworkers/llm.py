"""The only module that imports litellm, behind a small client protocol the engine calls.

``LLMClient`` is the seam: ``LiteLLMClient`` talks to every provider through litellm,
``MockClient`` answers offline for ``--mock`` and for tests of the engine itself.
Errors come out as ``dworkers.errors.LLMError`` subclasses, whatever the provider said.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dworkers.errors import (
    AuthenticationError,
    BadRequestError,
    LLMError,
    Problem,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
)
from dworkers.events import MOCK_MODEL
from dworkers.redact import redact

Message = dict[str, str]
DeltaCallback = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class LLMRequest:
    model: str
    messages: Sequence[Message]
    timeout: float
    step_id: str = ""
    role: str = ""
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)  # never logged or saved


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class LLMClient(Protocol):
    """What the engine needs from a model provider."""

    @property
    def offline(self) -> bool:
        """True when answers are made up without calling any model (``--mock``): the engine
        then names the client, not a model, and never mixes its answers with real ones."""
        ...

    async def complete(self, request: LLMRequest, on_delta: DeltaCallback) -> Completion:
        """Stream one completion, calling ``on_delta`` with each piece of text.

        Raises an ``LLMError`` subclass on failure; never retries by itself.
        """
        ...

    def preflight(self, models: Mapping[str, Sequence[str]], keyed: set[str]) -> list[Problem]:
        """Problems that would make calls to ``models`` (model → step ids) fail at once.

        ``keyed`` lists the models whose key is passed explicitly (``api_key_env``).
        """
        ...


# --- litellm --------------------------------------------------------------------------------

_import_lock = threading.Lock()


def load_litellm() -> Any:
    """Import and configure litellm (seconds); safe to call from a background thread."""
    with _import_lock:
        # Use the cost map shipped with litellm instead of fetching one at import time.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        litellm: Any = importlib.import_module("litellm")
        litellm.suppress_debug_info = True
        litellm.telemetry = False
        # litellm's own logger can echo request details; keys must never reach a log.
        for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        return litellm


def prefetch_litellm() -> threading.Thread:
    """Start importing litellm in the background so a view can paint meanwhile."""
    thread = threading.Thread(target=load_litellm, name="dworkers-load-litellm", daemon=True)
    thread.start()
    return thread


class LiteLLMClient:
    """Calls any provider through ``litellm.acompletion`` with streaming and usage."""

    offline = False

    def __init__(self) -> None:
        self._litellm: Any = None

    @property
    def litellm(self) -> Any:
        if self._litellm is None:
            self._litellm = load_litellm()
        return self._litellm

    def preflight(self, models: Mapping[str, Sequence[str]], keyed: set[str]) -> list[Problem]:
        problems = []
        for model, steps in models.items():
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
                        f"model {model!r} needs {names}, which is not set "
                        f"(used by: {', '.join(steps)})",
                        f"export {missing[0]}=... or run with --mock to try the plan offline",
                        "missing-api-key",
                        file="environment",
                    )
                )
        return problems

    async def complete(self, request: LLMRequest, on_delta: DeltaCallback) -> Completion:
        litellm = self.litellm
        options: dict[str, Any] = {}
        if request.api_base:
            options["api_base"] = request.api_base
        if request.api_key:
            options["api_key"] = request.api_key
        try:
            stream = await litellm.acompletion(
                model=request.model,
                messages=list(request.messages),
                stream=True,
                stream_options={"include_usage": True},
                timeout=request.timeout,
                num_retries=0,  # attempts are the engine's, so they are counted and shown
                max_retries=0,
                **options,
            )
            pieces: list[str] = []
            usage: Any = None
            async for chunk in stream:
                if getattr(chunk, "usage", None):
                    usage = chunk.usage
                choices = getattr(chunk, "choices", None) or []
                if choices:
                    delta = getattr(choices[0], "delta", None)
                    text = getattr(delta, "content", None) if delta is not None else None
                    if text:
                        text = valid_text(text)
                        pieces.append(text)
                        on_delta(text)
        except LLMError:
            raise
        except Exception as exc:
            raise self._translate(exc, (request.api_key,)) from None
        text = "".join(pieces)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        return Completion(
            text=text,
            model=request.model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=self._cost(request.model, prompt_tokens, completion_tokens),
        )

    def _cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        try:
            prompt_cost, completion_cost = self.litellm.cost_per_token(
                model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
            )
        except Exception:  # a model without a price (local, custom): count it as free
            return 0.0
        return float(prompt_cost) + float(completion_cost)

    def _translate(self, exc: BaseException, secrets: Iterable[str | None] = ()) -> LLMError:
        """Map litellm's (OpenAI-style) exceptions to ours, keeping the provider's message with
        every secret in it redacted (``secrets``: the request's own key, and see ``redact``).

        Order matters: litellm gives a failed connection status 500 (``APIConnectionError``,
        or ``InternalServerError`` wrapping one for OpenAI-compatible providers) and a timeout
        is an ``openai.APIConnectionError`` too, so timeouts, then connections, come first.
        """
        if isinstance(exc, TimeoutError):  # asyncio.TimeoutError is TimeoutError
            return ProviderTimeoutError("the provider did not answer in time")
        ex = self.litellm.exceptions
        status = getattr(exc, "status_code", None)
        message = _clean_message(exc)
        message = redact(message, secrets)
        message = message if len(message) <= 500 else message[:499] + "…"
        network = _network_failure(exc) if status in (None, 408, 500) else None
        if isinstance(exc, ex.Timeout) or network == "timeout":
            return ProviderTimeoutError(f"timed out: {message}")
        if isinstance(exc, ex.APIConnectionError) or network == "connection":
            return ProviderUnavailableError(f"connection failed: {message}")
        if isinstance(exc, ex.RateLimitError) or status == 429:
            return RateLimitError(f"rate limited (429): {message}", retry_after=_retry_after(exc))
        if isinstance(exc, ex.AuthenticationError | ex.PermissionDeniedError) or status in (
            401,
            403,
        ):
            return AuthenticationError(f"authentication failed ({status}): {message}")
        if isinstance(status, int) and status >= 500:
            return ProviderUnavailableError(f"provider error ({status}): {message}")
        unavailable = (ex.InternalServerError, ex.ServiceUnavailableError, ex.BadGatewayError)
        if isinstance(exc, unavailable):
            return ProviderUnavailableError(f"provider error: {message}")
        if isinstance(status, int):
            return BadRequestError(f"request refused ({status}): {message}")
        return BadRequestError(f"{type(exc).__name__}: {message}")


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


def _retry_after(exc: BaseException) -> float | None:
    headers: Any = None
    response = getattr(exc, "response", None)
    if response is not None:
        headers = getattr(response, "headers", None)
    headers = headers or getattr(exc, "litellm_response_headers", None)
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    scale = 1000.0
    if value is None:
        value, scale = headers.get("retry-after"), 1.0
    try:
        return max(0.0, float(value) / scale) if value is not None else None
    except (TypeError, ValueError):
        return None  # an HTTP date: fall back to backoff


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

    async def complete(self, request: LLMRequest, on_delta: DeltaCallback) -> Completion:
        digest = hashlib.sha256(
            "".join(m["content"] for m in request.messages).encode()
        ).digest()
        text = mock_text(request, digest.hex()[:8])
        words = text.split(" ")
        pieces = 12
        per_piece = self.latency * (0.4 + digest[0] / 255 * 1.2) / pieces
        size = max(1, len(words) // pieces)
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
