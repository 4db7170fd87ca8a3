"""Pacing to a provider's limits: learned from headers, tightened on 429, never exceeded.

The pacer is pure (it is handed the time), so these tests drive it against a simulated
provider bucket on a simulated clock: thousands of calls, no waiting.
"""

from __future__ import annotations

import bisect
import heapq
import math

import pytest
from fake_llm_server import _Bucket

from dworkers.events import RateLimits
from dworkers.ratelimit import (
    BACKOFF,
    SLOW_START_RPM,
    LocalRateGate,
    Pacer,
    Slot,
    serving_order,
)


class SimulatedProvider:
    """The local test server's token buckets on a simulated clock, with its headers."""

    def __init__(self, rpm: float | None, tpm: float | None = None, burst: float = 1.0,
                 say_limits: bool = True, whole_seconds: bool = False) -> None:
        self.buckets = {kind: _Bucket(limit, burst) for kind, limit
                        in (("requests", rpm), ("tokens", tpm)) if limit}
        for bucket in self.buckets.values():
            bucket.updated = 0.0
        self.say_limits = say_limits
        self.whole_seconds = whole_seconds  # Retry-After in whole seconds only, as gateways do
        self.accepted: list[float] = []
        self.refused = 0

    def call(self, at: float, tokens: int) -> tuple[int, dict[str, str]]:
        costs = {"requests": 1.0, "tokens": float(tokens)}
        waits = [b.wait(costs[k], at) for k, b in self.buckets.items()]
        refused = bool(waits) and max(waits) > 0
        headers: dict[str, str] = {}
        for kind, bucket in self.buckets.items():
            if not refused:
                bucket.take(costs[kind])
            if self.say_limits:
                headers.update(bucket.headers(kind))
        if refused:
            self.refused += 1
            if self.whole_seconds:
                headers["retry-after"] = str(max(1, math.ceil(max(waits))))
            else:
                headers["retry-after-ms"] = str(math.ceil(max(waits) * 1000))
            return 429, headers
        self.accepted.append(at)
        return 200, headers


def simulate(provider: SimulatedProvider, pacer: Pacer, *, calls: int, concurrency: int,
             latency: float = 0.5, tokens: int = 300, estimate: int | None = None,
             model: str = "openai/m") -> float:
    """``calls`` calls, at most ``concurrency`` at once, each retried after a 429 until it is
    answered. Returns the simulated time the last one was answered."""
    now = 0.0
    waiting = calls  # calls not yet booked
    events: list[tuple[float, int, str]] = []  # (time, seq, "book", "send" or "answer")
    answers: dict[int, tuple[int, dict[str, str]]] = {}
    seq = 0
    in_flight = 0
    done = 0
    guess = estimate or tokens

    def book(at: float) -> None:
        nonlocal seq
        slot = pacer.schedule(model, guess, at)
        seq += 1
        heapq.heappush(events, (at + slot.delay, seq, "send" if slot.booked else "book"))

    while waiting and in_flight < concurrency:
        waiting -= 1
        in_flight += 1
        book(now)
    bound = calls * 500
    while done < calls and bound:
        bound -= 1
        now, number, kind = heapq.heappop(events)
        if kind == "book":
            book(now)
            continue
        if kind == "send":
            seq += 1
            answers[seq] = status, headers = provider.call(now, tokens)
            heapq.heappush(events, (now + (latency if status == 200 else 0.01), seq, "answer"))
            continue
        status, headers = answers.pop(number)
        pacer.observe(model, status, headers, tokens if status == 200 else 0, guess, now)
        if status == 429:
            book(now)
            continue
        done += 1
        in_flight -= 1
        if waiting:
            waiting -= 1
            in_flight += 1
            book(now)
    assert done == calls
    return now


def sustained_share(provider: SimulatedProvider, rpm: float) -> float:
    """Accepted calls per minute over the run, as a share of the limit."""
    span = provider.accepted[-1] - provider.accepted[0]
    return (len(provider.accepted) - 1) / span * 60 / rpm


@pytest.mark.parametrize("rpm", [600, 1200, 3000])
def test_an_unstated_request_limit_is_learned_and_used_to_at_least_90_percent(rpm: int) -> None:
    provider = SimulatedProvider(rpm=rpm)
    pacer = Pacer()
    simulate(provider, pacer, calls=2000, concurrency=64)
    assert sustained_share(provider, rpm) >= 0.90
    assert provider.refused / 2000 <= 0.03
    assert pacer.limits("openai/m").rpm == rpm
    assert pacer.limits("openai/m").source == "headers"


def test_the_pace_never_exceeds_the_limit_over_any_minute() -> None:
    provider = SimulatedProvider(rpm=1200, burst=60)  # a bucket of a whole minute
    simulate(provider, Pacer(), calls=3000, concurrency=100)
    times = provider.accepted
    most = max(bisect.bisect_left(times, times[i] + 60) - i for i in range(len(times)))
    assert 1100 <= most <= 1200
    assert provider.refused == 0


def test_a_token_limit_paces_calls_by_their_estimated_size() -> None:
    # 300-token calls at 60,000 TPM: at most 200 calls a minute, though requests allow 10,000.
    provider = SimulatedProvider(rpm=10_000, tpm=60_000)
    simulate(provider, Pacer(), calls=600, concurrency=64, tokens=300)
    share = sustained_share(provider, 200)
    assert 0.90 <= share <= 1.0
    assert provider.refused / 600 <= 0.03


def test_an_underestimate_is_settled_so_the_token_limit_still_holds() -> None:
    provider = SimulatedProvider(rpm=10_000, tpm=60_000)
    simulate(provider, Pacer(), calls=600, concurrency=64, tokens=300, estimate=100)
    assert provider.refused / 600 <= 0.03
    assert sustained_share(provider, 200) <= 1.0


@pytest.mark.parametrize("estimate", [600, 1800, 5400])
def test_long_prompts_under_a_token_limit_use_95_percent_of_it_however_far_off_the_estimate(
        estimate: int) -> None:
    # 1,800-token calls at 600,000 TPM (333 a minute; requests would allow 10,000), estimated
    # at a third, exactly, or three times their size: the estimate settles against the usage
    # each answer reports, and the limit comes from the x-ratelimit-*-tokens headers.
    provider = SimulatedProvider(rpm=10_000, tpm=600_000)
    pacer = Pacer()
    simulate(provider, pacer, calls=1500, concurrency=64, tokens=1800, estimate=estimate)
    assert sustained_share(provider, 600_000 / 1800) >= 0.95
    assert provider.refused / 1500 <= 0.02
    assert pacer.limits("openai/m") == RateLimits("openai/m", 10_000, 600_000, "headers")
    assert pacer._pace("openai/m").token_ratio == pytest.approx(1800 / estimate, rel=0.01)


def test_a_limit_the_provider_never_states_is_found_from_its_429s() -> None:
    provider = SimulatedProvider(rpm=1200, say_limits=False)
    pacer = Pacer()
    simulate(provider, pacer, calls=3000, concurrency=64)
    limits = pacer.limits("openai/m")
    assert limits.source == "429" and limits.rpm is not None
    assert 0.8 * 1200 <= limits.rpm <= 1.25 * 1200  # found by trying
    assert provider.refused / 3000 <= 0.10  # some 429s while it probes; every call answered
    assert sustained_share(provider, 1200) >= 0.75


@pytest.mark.parametrize("rpm", [600, 1500, 3000])
def test_a_limit_stated_only_by_429s_with_whole_second_retry_after_is_used_to_92_percent(
        rpm: int) -> None:
    # Two minutes' worth of calls at least: the opening burst and slow start are a few
    # seconds of it.
    calls = max(3000, 2 * rpm)
    provider = SimulatedProvider(rpm=rpm, say_limits=False, whole_seconds=True)
    pacer = Pacer()
    simulate(provider, pacer, calls=calls, concurrency=64)
    assert sustained_share(provider, rpm) >= 0.92
    assert provider.refused / calls <= 0.05
    limits = pacer.limits("openai/m")
    assert limits.source == "429" and limits.rpm is not None
    assert 0.8 * rpm <= limits.rpm <= 1.25 * rpm  # found by trying


def test_a_tenant_stated_limit_holds_before_any_answer() -> None:
    # The provider would allow 3000 RPM, the tenant says 600: the tenant wins from call one.
    provider = SimulatedProvider(rpm=3000)
    pacer = Pacer({"openai/m": (600, None)})
    simulate(provider, pacer, calls=600, concurrency=64)
    assert 0.90 <= sustained_share(provider, 600) <= 1.0
    assert pacer.limits("openai/m").source == "tenant"


def test_a_429_pauses_the_model_for_retry_after_and_slows_the_pace() -> None:
    pacer = Pacer({"openai/m": (600, None)})
    assert pacer.schedule("openai/m", 10, 100.0) == Slot(True, 0.0)
    pacer.observe("openai/m", 429, {"retry-after": "3"}, 0, 10, 100.5)
    assert pacer.schedule("openai/m", 10, 100.5).booked is False  # 3 s away: ask again
    first = pacer.schedule("openai/m", 10, 103.0)
    second = pacer.schedule("openai/m", 10, 103.0)
    assert first.booked and second.booked
    assert first.delay == pytest.approx(0.5)  # paused until 103.5
    assert second.delay - first.delay > 60 / 600 / 0.97  # spaced wider than before the 429


def test_calls_are_booked_at_most_a_second_ahead_so_a_new_pace_applies_at_once() -> None:
    pacer = Pacer({"openai/m": (120, None)}, probe=False)  # a call every ~0.52 s
    slots = [pacer.schedule("openai/m", 10, 0.0) for _ in range(4)]
    assert [s.booked for s in slots] == [True, True, False, False]
    pacer.observe("openai/m", 200, {"x-ratelimit-limit-requests": "6000"}, 10, 10, 0.1)
    # The tenant's limit still bounds the pace: headers only ever lower a stated limit.
    assert pacer.limits("openai/m").rpm == 120
    pacer.observe("openai/m", 200, {"x-ratelimit-limit-requests": "30"}, 10, 10, 0.2)
    assert pacer.limits("openai/m") == RateLimits("openai/m", 30, None, "headers")


def test_the_first_call_to_an_unknown_model_goes_alone() -> None:
    pacer = Pacer()
    assert pacer.schedule("openai/m", 10, 0.0) == Slot(True, 0.0)
    assert not pacer.schedule("openai/m", 10, 0.1).booked  # waits for the first answer
    pacer.observe("openai/m", 200, {}, 20, 10, 0.5)  # no limits said: no pacing at all
    assert pacer.schedule("openai/m", 10, 0.5) == Slot(True, 0.0)
    assert pacer.schedule("openai/m", 10, 0.5) == Slot(True, 0.0)


def test_limit_changes_are_reported_once() -> None:
    pacer = Pacer()
    headers = {"x-ratelimit-limit-requests": "500", "x-ratelimit-limit-tokens": "90000"}
    info = pacer.observe("openai/m", 200, headers, 0, 0, 1.0)
    assert info is not None and (info.rpm, info.tpm) == (500, 90000)
    assert pacer.observe("openai/m", 200, headers, 0, 0, 2.0) is None


def test_limits_are_read_in_any_header_dialect_and_garbage_is_ignored() -> None:
    pacer = Pacer()
    garbage = {"x-ratelimit-limit-requests": "lots", "x-ratelimit-limit-tokens": "inf",
               "retry-after": "soon"}
    assert pacer.observe("openai/m", 200, garbage, 10, 10, 1.0) is None
    said = {"LLM_PROVIDER-X-RateLimit-Limit-Requests": "1200"}  # a gateway forwarding it
    info = pacer.observe("openai/m", 200, said, 10, 10, 2.0)
    assert info == RateLimits("openai/m", 1200, None, "headers")


@pytest.mark.parametrize(("remaining", "delay"), [("0", 1.0), ("1", 0.0)])
def test_a_request_quota_drained_by_someone_else_pauses_until_the_next_request(
    remaining: str, delay: float,
) -> None:
    # 60 RPM: one request a second. Another client sharing the key used the last one.
    pacer = Pacer(probe=False)
    assert pacer.schedule("openai/m", 10, 0.0) == Slot(True, 0.0)
    headers = {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": remaining}
    pacer.observe("openai/m", 200, headers, 10, 10, 10.0)
    assert pacer.schedule("openai/m", 10, 10.0) == Slot(True, pytest.approx(delay))


@pytest.mark.parametrize(("left", "booked_at_once"), [("100", False), ("5000", True)])
def test_too_few_tokens_left_pauses_until_the_call_would_fit(
    left: str, booked_at_once: bool,
) -> None:
    # 6,000 TPM refills 100 tokens a second: a 1,000-token call with 100 left waits 9 s.
    pacer = Pacer(probe=False)
    assert pacer.schedule("openai/m", 1000, 0.0).booked
    headers = {"x-ratelimit-limit-tokens": "6000", "x-ratelimit-remaining-tokens": left}
    pacer.observe("openai/m", 200, headers, 1000, 1000, 10.0)
    assert pacer.schedule("openai/m", 1000, 10.0).booked is booked_at_once
    if not booked_at_once:
        assert pacer.schedule("openai/m", 1000, 18.0) == Slot(True, pytest.approx(1.0))


def test_the_test_server_enforces_its_limit_and_says_so_on_every_answer() -> None:
    import httpx
    from fake_llm_server import FakeLLMServer

    body = {"model": "m", "messages": [{"role": "user", "content": "two words"}]}
    # One request a minute (a bucket of one): the second is refused unless a minute passed.
    with FakeLLMServer(rpm=1, tpm=6000, reply_tokens=5) as server:  # tokens: a bucket of 100
        answers = [httpx.post(f"{server.url}/chat/completions", json=body) for _ in range(2)]
        log = server.requests
    first, second = answers
    assert [a.status_code for a in answers] == [200, 429]
    assert first.headers["x-ratelimit-limit-requests"] == "1"
    assert first.headers["x-ratelimit-limit-tokens"] == "6000"
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["0", "0"]
    assert first.headers["x-ratelimit-remaining-tokens"] == str(100 - 7)  # 2 words + 5 reply
    assert len(first.json()["choices"][0]["message"]["content"].split()) == 5
    wait_ms = int(second.headers["retry-after-ms"])
    assert 0 < wait_ms <= 60_000
    assert second.headers["retry-after"] == str(max(1, -(-wait_ms // 1000)))
    assert [r.rate_limited for r in log] == [False, True]


def test_a_limit_stated_only_by_429s_is_probed_like_a_congestion_window() -> None:
    """Unpaced until a 429; a slow start while too few answers came to measure by; then a cut
    to a little under what the provider let through, an additive probe upwards, and a
    Retry-After honoured in full once the server shows it means it."""
    pacer, model = Pacer(), "openai/m"
    pace = pacer._pace(model)
    pacer.schedule(model, 10, 0.0)
    pacer.observe(model, 200, {}, 10, 10, 0.5)
    assert pace.learned_rpm is None  # no limit said, none met: no pacing
    # The opening burst is refused before ten answers came: a slow start at 120 a minute.
    pacer.observe(model, 429, {"retry-after": "1"}, 0, 10, 0.6)
    assert pace.learned_rpm == SLOW_START_RPM and pace.guessed
    assert pacer.limits(model).rpm is None  # a guess is not shown as a limit
    # Whole-second Retry-After from a bucket that refills continuously: the model pauses for
    # one call's interval, not the whole second.
    assert pace.paused_until == pytest.approx(0.6 + 60 / SLOW_START_RPM)
    for step in range(1, 21):  # answers while calls wait for the pace: it doubles
        at = 1.0 + step * 0.05
        pacer.schedule(model, 10, at)
        pacer.schedule(model, 10, at)
        pacer.observe(model, 200, {}, 10, 10, at)
    grown = pace.learned_rpm
    assert grown is not None and grown > 1.5 * SLOW_START_RPM
    # Twenty answers in the last second: a 429 now cuts to a little under that rate.
    pacer.observe(model, 429, {"retry-after": "1"}, 0, 10, 2.0)
    assert not pace.guessed
    assert pace.learned_rpm == pytest.approx(min(grown, 20 * 60) * (1 - BACKOFF))
    assert pacer.limits(model) == RateLimits(model, pace.learned_rpm, None, "429")
    cut = pace.learned_rpm
    # Answers while paced: the probe adds a share of the cut pace per second, no more.
    pacer.schedule(model, 10, 2.5)
    pacer.schedule(model, 10, 2.5)
    pacer.observe(model, 200, {}, 10, 10, 2.5)
    assert cut < pace.learned_rpm < cut * 1.01
    # Refused again within the second it asked for: the server counts by windows, so its
    # Retry-After is now waited out in full.
    pacer.observe(model, 429, {"retry-after": "3"}, 0, 10, 2.7)
    assert pace.honours_retry_after and pace.paused_until == pytest.approx(5.7)


def test_a_pace_that_demand_does_not_use_is_not_probed_upwards() -> None:
    pacer, model = Pacer(probe=False), "openai/m"
    pace = pacer._pace(model)
    pacer.observe(model, 429, {"retry-after": "1"}, 0, 10, 0.0)
    learned = pace.learned_rpm
    for second in range(1, 30):  # one call every two seconds: far below the pace
        pacer.schedule(model, 10, second * 2.0)
        pacer.observe(model, 200, {}, 10, 10, second * 2.0 + 0.5)
    assert pace.learned_rpm == learned


def test_waiting_calls_are_served_by_row_then_step_not_by_arrival() -> None:
    """Calls that arrive while the model is paused are let through in (row, step) order,
    whatever order they came in."""
    import asyncio

    gate = LocalRateGate({"openai/m": (6000.0, None)}, probe=False)
    served: list[tuple[int, int]] = []

    async def call(row: int, step: int) -> None:
        serving_order.set((row, step))
        await gate.acquire("openai/m", 10)
        served.append((row, step))

    async def main() -> None:
        # A 429 pauses the model for 1.5 s, longer than calls are booked ahead: every call
        # below queues during the pause.
        await gate.observe("openai/m", 429, {"retry-after-ms": "1500"}, 0, 10)
        arrivals = [(5, 0), (1, 2), (3, 1), (1, 0), (0, 2), (4, 0), (3, 0), (0, 1)]
        await asyncio.gather(*(call(row, step) for row, step in arrivals))

    asyncio.run(main())
    assert served == sorted(served)
    assert len(served) == 8
