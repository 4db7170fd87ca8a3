"""Reading waits, rate limits and costs from response headers, in every dialect gateways use."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from dworkers.provider_headers import (
    Limit,
    cost_from_headers,
    normalise,
    parse_duration,
    parse_http_date,
    rate_limits,
    retry_after_seconds,
)

NOW = 1_800_000_000.0


def test_names_are_lower_cased_and_the_gateway_prefix_stripped() -> None:
    headers = normalise({"Retry-After": "3", "llm_provider-X-RateLimit-Remaining-Requests": "7",
                         "LLM_PROVIDER-x-litellm-response-cost": "0.5"})
    assert headers == {"retry-after": "3", "x-ratelimit-remaining-requests": "7",
                       "x-litellm-response-cost": "0.5"}


def test_the_endpoints_own_header_wins_over_the_forwarded_one() -> None:
    # A LiteLLM Proxy's own limits come plain; the provider's behind it come prefixed.
    headers = normalise([("llm_provider-x-ratelimit-remaining-requests", "100"),
                         ("x-ratelimit-remaining-requests", "2")])
    assert headers["x-ratelimit-remaining-requests"] == "2"


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("6m0s", 360.0), ("120ms", 0.12), ("1h2m3.5s", 3723.5), ("0.5", 0.5),
    ("17", 17.0), ("250us", 0.00025), ("2m", 120.0), (" 5s ", 5.0), ("1.5h", 5400.0),
])
def test_durations_as_providers_write_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1x", "-1s", "1s2", "soon", "nan", "inf", "1e999",
                                  "1s" * 200, "m1"])
def test_what_is_not_a_duration_is_none(text: str) -> None:
    assert parse_duration(text) is None


def test_retry_after_in_seconds() -> None:
    assert retry_after_seconds({"retry-after": "60"}, NOW) == 60


def test_retry_after_ms_wins_and_is_milliseconds() -> None:
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "2"}, NOW) == 1.5
    assert retry_after_seconds({"retry-after-ms": "250"}, NOW) == 0.25


def test_retry_after_as_an_http_date() -> None:
    date = formatdate(NOW + 90, usegmt=True)
    assert retry_after_seconds({"retry-after": date}, NOW) == pytest.approx(90)
    assert parse_http_date(formatdate(NOW - 5, usegmt=True), NOW) == 0  # already passed


def test_litellm_proxy_dialect() -> None:
    # What a LiteLLM Proxy sends with its 429s: no standard Retry-After at all.
    raw = {"llm_provider-retry-after": "60", "x-litellm-call-id": "abc"}
    assert retry_after_seconds(normalise(raw), NOW) == 60
    assert retry_after_seconds(raw, NOW) == 60  # read the same without normalising first


def test_reset_headers_of_the_exhausted_limit() -> None:
    headers = {"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "1s",
               "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"}
    assert retry_after_seconds(headers, NOW) == 360
    headers["x-ratelimit-remaining-tokens"] = "900"
    headers["x-ratelimit-remaining-requests"] = "0"
    assert retry_after_seconds(headers, NOW) == 1
    # Neither says it is exhausted: the later reset is the safe wait.
    headers["x-ratelimit-remaining-requests"] = "3"
    assert retry_after_seconds(headers, NOW) == 360
    assert retry_after_seconds({"x-ratelimit-reset-tokens": "120ms"}, NOW) == pytest.approx(0.12)


@pytest.mark.parametrize("value", ["soon", "-5", "nan", "inf", "", "1" * 300])
def test_garbage_waits_are_ignored(value: str) -> None:
    assert retry_after_seconds({"retry-after": value}, NOW) is None
    assert retry_after_seconds({"retry-after-ms": value, "retry-after": "4"}, NOW) == 4


def test_no_header_no_wait() -> None:
    assert retry_after_seconds({}, NOW) is None
    assert retry_after_seconds({"content-type": "application/json"}, NOW) is None


def test_rate_limits_of_an_answer() -> None:
    limits = rate_limits(normalise({
        "x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms", "llm_provider-x-ratelimit-limit-tokens": "30000",
        "llm_provider-x-ratelimit-remaining-tokens": "29000",
        "llm_provider-x-ratelimit-reset-tokens": "2s"}))
    assert limits.requests == Limit(500, 499, pytest.approx(0.12))
    assert limits.tokens == Limit(30000, 29000, 2.0)
    assert rate_limits({}).requests == Limit() and not Limit().stated


def test_a_negative_remaining_count_means_none_left() -> None:
    # A LiteLLM Proxy with a soft rpm limit answers past it with "remaining: -1".
    limits = rate_limits({"x-ratelimit-remaining-requests": "-1",
                          "x-ratelimit-limit-requests": "1"})
    assert limits.requests == Limit(1, 0, None)


def test_cost_from_the_gateways_header() -> None:
    assert cost_from_headers(normalise({"llm_provider-x-litellm-response-cost": "0.0042"})) == (
        pytest.approx(0.0042))
    assert cost_from_headers({"x-litellm-response-cost": "0"}) == 0
    for bad in ("free", "-1", "nan", "inf"):
        assert cost_from_headers({"x-litellm-response-cost": bad}) is None
    assert cost_from_headers({}) is None
