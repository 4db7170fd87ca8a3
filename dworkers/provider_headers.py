"""Reads what a provider or gateway says in its response headers: waits, rate limits, cost.

Pure: no I/O, no clock of its own (``now`` is passed in). Every dialect in use is read the same
way: names are compared lower-case with LiteLLM's ``llm_provider-`` prefix stripped (a LiteLLM
Proxy forwards the upstream provider's headers under that prefix), so ``retry-after``,
``llm_provider-retry-after`` and ``Retry-After`` are one header.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

PROVIDER_PREFIX = "llm_provider-"
COST_HEADER = "x-litellm-response-cost"

Headers = Mapping[str, str]

# Go-style durations as OpenAI sends them in x-ratelimit-reset-*: "1s", "6m0s", "120ms",
# "1h2m3.5s"; a bare number is seconds.
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                 "h": 3600.0, "d": 86400.0}
_MAX_HEADER_CHARS = 200  # longer values are not any header we read


def normalise(headers: Mapping[str, object] | Iterable[tuple[str, object]] | None) -> dict[str,
                                                                                          str]:
    """``headers`` with lower-case names and the ``llm_provider-`` prefix stripped.

    When both a plain and a prefixed form are present the plain one wins: it was set by the
    endpoint dworkers talks to (a gateway's own limits), the prefixed one by the provider
    behind it."""
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    plain: dict[str, str] = {}
    forwarded: dict[str, str] = {}
    for name, value in items:
        if not isinstance(name, str) or value is None:
            continue
        key = name.strip().lower()
        text = str(value).strip()
        if key.startswith(PROVIDER_PREFIX):
            forwarded.setdefault(key[len(PROVIDER_PREFIX):], text)
        else:
            plain[key] = text
    return {**forwarded, **plain}


def parse_duration(text: str | None) -> float | None:
    """Seconds in a duration such as ``"6m0s"``, ``"1s"``, ``"120ms"``, ``"1h2m3.5s"`` or a bare
    number of seconds (``"0.5"``); ``None`` if it is none of these."""
    if text is None:
        return None
    value = text.strip().lower()
    if not value or len(value) > _MAX_HEADER_CHARS:
        return None
    number = _number(value)
    if number is not None:
        return number
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(value) or position == 0 or not math.isfinite(total):
        return None
    return total


def parse_http_date(text: str | None, now: float) -> float | None:
    """Seconds from ``now`` (epoch seconds) until an HTTP date such as
    ``"Wed, 21 Oct 2015 07:28:00 GMT"``: 0 if it has passed, ``None`` if it is not a date."""
    if not text or len(text) > _MAX_HEADER_CHARS:
        return None
    try:
        moment = parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:  # HTTP dates are GMT
        from datetime import UTC

        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - now)


def retry_after_seconds(headers: Headers, now: float) -> float | None:
    """How long the endpoint asks the client to wait before trying again, in seconds, from any
    of: ``retry-after-ms``; ``retry-after`` (seconds or an HTTP date, relative to ``now`` in epoch
    seconds); ``x-ratelimit-reset-requests`` / ``-tokens`` (durations). ``None`` when no header
    says. ``headers`` should be ``normalise``d (prefixed names are read too, if not)."""
    values = headers if _is_normalised(headers) else normalise(headers)
    millis = _number(values.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    retry_after = values.get("retry-after")
    if retry_after is not None:
        seconds = _number(retry_after)
        if seconds is None:
            seconds = parse_http_date(retry_after, now)
        if seconds is not None:
            return seconds
    limits = rate_limits(values)
    # The exhausted limit says when it resets; if neither says it is exhausted, the later reset
    # is the safe one.
    exhausted = [r.reset_seconds for r in (limits.requests, limits.tokens)
                 if r.remaining == 0 and r.reset_seconds is not None]
    resets = exhausted or [r.reset_seconds for r in (limits.requests, limits.tokens)
                           if r.reset_seconds is not None]
    return max(resets) if resets else None


def cost_from_headers(headers: Headers) -> float | None:
    """The call's cost in USD as a LiteLLM Proxy reports it (``x-litellm-response-cost``), or
    ``None`` when not reported or not a non-negative number."""
    values = headers if _is_normalised(headers) else normalise(headers)
    return _number(values.get(COST_HEADER))


@dataclass(frozen=True, slots=True)
class Limit:
    """One rate limit as the endpoint last stated it; ``None`` where it did not say."""

    limit: int | None = None
    remaining: int | None = None
    reset_seconds: float | None = None

    @property
    def stated(self) -> bool:
        return self.limit is not None or self.remaining is not None or (
            self.reset_seconds is not None)


@dataclass(frozen=True, slots=True)
class HeaderLimits:
    """The ``x-ratelimit-*`` headers of one answer: requests and tokens per window."""

    requests: Limit
    tokens: Limit


def rate_limits(headers: Headers) -> HeaderLimits:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` of one answer."""
    values = headers if _is_normalised(headers) else normalise(headers)

    def limit(kind: str) -> Limit:
        return Limit(
            limit=_whole_count(values.get(f"x-ratelimit-limit-{kind}")),
            remaining=_whole_count(values.get(f"x-ratelimit-remaining-{kind}")),
            reset_seconds=parse_duration(values.get(f"x-ratelimit-reset-{kind}")),
        )

    return HeaderLimits(requests=limit("requests"), tokens=limit("tokens"))


def _number(text: str | None) -> float | None:
    """A finite, non-negative decimal number, else ``None``."""
    if text is None or len(text) > _MAX_HEADER_CHARS:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _whole_count(text: str | None) -> int | None:
    """A whole count; a negative one (a LiteLLM Proxy says ``-1`` once a soft limit is
    exceeded) means none left."""
    if text is None or len(text) > _MAX_HEADER_CHARS:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return max(0, int(value)) if math.isfinite(value) else None


def _is_normalised(headers: Headers) -> bool:
    return all(isinstance(k, str) and k == k.lower() and not k.startswith(PROVIDER_PREFIX)
               for k in headers)
