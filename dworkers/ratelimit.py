"""Rate control: pace each model's calls to its provider's limits.

Providers say their limits on every answer (``x-ratelimit-limit-requests`` etc., as OpenAI,
Azure, Groq and most gateways do) and answer 429 with ``Retry-After`` when a client goes over.
``Pacer`` learns each model's requests-per-minute and tokens-per-minute from those headers (or
takes them from the tenant) and spaces calls evenly just under them; a 429 tightens the pace and
pauses the model until the provider's reset, and the pace recovers slowly while answers keep
coming. It never sends faster than the known limits, so a long dataset run uses the limit almost
fully with almost no 429s and without being told the limit.

``Pacer`` is pure (the caller passes the time) so a cluster can keep one in a shared actor;
``LocalRateGate`` is the in-process implementation of the ``RateGate`` protocol the engine
calls. The budget lives in ``dworkers.budget``, token estimates in ``dworkers.estimates``.
Standard library only: no I/O, no litellm.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from dworkers import provider_headers
from dworkers.events import RateLimits

__all__ = ["LocalRateGate", "Pacer", "RateGate", "Slot"]

SAFETY = 0.97  # share of a known limit we aim for: jitter in send times must not cross it
TIGHTEN = 0.85  # pace multiplier after a 429
MIN_FACTOR = 0.25
RECOVER = 0.005  # pace regained per answered call after a 429 (≈ 30 calls to regain 15 %)
# A limit found from 429s alone is probed upwards by this share per second: slowly just after
# a 429 (near the limit), faster once none has come for a while.
# A first guess made from too few answers grows fast until the next 429 corrects it.
PROBE_GROWTH_NEAR, PROBE_GROWTH, PROBE_GROWTH_GUESS = 0.005, 0.03, 1.0
CUT_INTERVAL = 1.0  # 429s within this many seconds of a cut are one signal, not many
HORIZON = 1.0  # calls are booked at most this far ahead, so a new pace applies at once
PROBE_SECONDS = 2.0  # how long the first call to an unknown model goes alone, at most


@dataclass(frozen=True, slots=True)
class Slot:
    """A booking: wait ``delay`` seconds, then send (``booked``) or ask again."""

    booked: bool
    delay: float


class RateGate(Protocol):
    """Where a call waits its turn. Arguments and results are plain values, so a cluster can
    share one gate (an actor) between processes."""

    async def acquire(self, model: str, tokens: int) -> None:
        """Wait until a call to ``model`` estimated at ``tokens`` (prompt + expected output)
        may be sent without exceeding the model's request or token limits."""
        ...

    async def observe(self, model: str, status: int, headers: dict[str, str], tokens: int,
                      estimated: int) -> RateLimits | None:
        """Report an answer: its HTTP status, the provider's headers (lower-case names),
        the tokens it really used (0 if unknown) and the estimate ``acquire`` was given.
        Returns the model's limits when they changed, else ``None``."""
        ...


# --- pacing ---------------------------------------------------------------------------------


@dataclass
class _ModelPace:
    stated_rpm: float | None = None
    stated_tpm: float | None = None
    header_rpm: float | None = None
    header_tpm: float | None = None
    learned_rpm: float | None = None  # from 429s, when the provider says nothing
    factor: float = 1.0
    next_request: float = 0.0  # the earliest time the next call may go (virtual schedule)
    next_token: float = 0.0
    paused_until: float = 0.0
    probe_started: float | None = None  # the first call is out; the rest wait for its answer
    answered: bool = False
    accepted: deque[float] = field(default_factory=deque)  # answer times in the last minute
    last_cut: float = -math.inf
    grown: float = 0.0  # when a learned limit was last probed upwards
    guessed: bool = False  # the learned limit is a guess from too few answers
    token_ratio: float = 1.0  # tokens used ÷ tokens estimated, lately
    reported: tuple[float | None, float | None] = (None, None)

    @property
    def rpm(self) -> float | None:
        known = [v for v in (self.stated_rpm, self.header_rpm) if v]
        return min(known) if known else self.learned_rpm

    @property
    def tpm(self) -> float | None:
        known = [v for v in (self.stated_tpm, self.header_tpm) if v]
        return min(known) if known else None


class Pacer:
    """Per-model pacing, pure: every method takes the current time (``time.monotonic()``)."""

    def __init__(self, stated: Mapping[str, tuple[float | None, float | None]] | None = None,
                 *, probe: bool = True) -> None:
        """``stated``: model → (rpm, tpm) the tenant declares; headers can only lower them.
        ``probe``: the first call to a model goes alone until answered (at most
        ``PROBE_SECONDS``): a dataset run's opening burst would otherwise run into limits not
        yet known; a single run's few calls need not wait."""
        self.probe = probe
        self._models: dict[str, _ModelPace] = {}
        for model, (rpm, tpm) in (stated or {}).items():
            self._models[model] = _ModelPace(stated_rpm=rpm, stated_tpm=tpm)
        self.calls = 0
        self.rate_limited = 0

    def _pace(self, model: str) -> _ModelPace:
        pace = self._models.get(model)
        if pace is None:
            pace = self._models[model] = _ModelPace()
        return pace

    def limits(self, model: str) -> RateLimits:
        pace = self._pace(model)
        source = ("tenant" if pace.stated_rpm or pace.stated_tpm else
                  "headers" if pace.header_rpm or pace.header_tpm else
                  "429" if pace.learned_rpm else "none")
        if (pace.header_rpm or pace.header_tpm) and source == "tenant" and (
                (pace.header_rpm or math.inf) < (pace.stated_rpm or math.inf)
                or (pace.header_tpm or math.inf) < (pace.stated_tpm or math.inf)):
            source = "headers"
        return RateLimits(model, pace.rpm, pace.tpm, source)

    def schedule(self, model: str, tokens: int, now: float) -> Slot:
        """Book a call to ``model`` estimated at ``tokens``: how long to wait before sending
        it. Calls are booked at most ``HORIZON`` seconds ahead, so a pace that changes (a 429,
        a limit learned) applies to every call not yet booked; a call that cannot be booked
        yet is told when to ask again."""
        pace = self._pace(model)
        rpm, tpm = pace.rpm, pace.tpm
        if self.probe and not pace.answered:
            # One call goes first: its answer's headers set the pace before a burst can run
            # into the limit, and the client's first-call set-up (which can hold back calls
            # and then send them at once) is over before the pace matters.
            if pace.probe_started is None:
                pace.probe_started = now
            elif now - pace.probe_started < PROBE_SECONDS:
                return Slot(False, 0.05)
        at = max(now, pace.paused_until)
        if rpm:
            at = max(at, pace.next_request)
        if tpm:
            at = max(at, pace.next_token)
        if at - now > HORIZON:
            return Slot(False, min(at - now - HORIZON / 2, HORIZON))
        if rpm:
            pace.next_request = at + 60.0 / (rpm * SAFETY * pace.factor)
        if tpm:
            booked = max(tokens, 1) * pace.token_ratio
            pace.next_token = at + booked * 60.0 / (tpm * SAFETY * pace.factor)
        self.calls += 1
        return Slot(True, at - now)

    def observe(self, model: str, status: int, headers: Mapping[str, str], tokens: int,
                estimated: int, now: float) -> RateLimits | None:
        """Learn from an answer; the model's limits when they changed, else ``None``."""
        pace = self._pace(model)
        pace.answered = True
        values = provider_headers.normalise(headers)
        said = provider_headers.rate_limits(values)
        if said.requests.limit:  # a limit of 0 is noise, not a limit
            pace.header_rpm = float(said.requests.limit)
        if said.tokens.limit:
            pace.header_tpm = float(said.tokens.limit)
        tpm = pace.tpm
        if tokens > 0 and estimated > 0:
            # The booking used an estimate: settle the difference on the token schedule, and
            # scale later estimates by how far off they have been.
            booked = estimated * pace.token_ratio
            if tpm:
                pace.next_token += (tokens - booked) * 60.0 / (tpm * SAFETY * pace.factor)
            ratio = 0.8 * pace.token_ratio + 0.2 * tokens / estimated
            pace.token_ratio = min(10.0, max(0.1, ratio))
        stated = bool(pace.stated_rpm or pace.header_rpm or tpm)
        if status == 429:
            self.rate_limited += 1
            if now - pace.last_cut >= CUT_INTERVAL:
                pace.last_cut = now
                if stated:
                    pace.factor = max(MIN_FACTOR, pace.factor * TIGHTEN)
                else:  # the provider limits without saying: pace to the rate it accepts
                    while pace.accepted and pace.accepted[0] < now - 10.0:
                        pace.accepted.popleft()
                    accepted = len(pace.accepted)
                    pace.guessed = accepted < 5
                    if not pace.guessed:
                        span = max(now - pace.accepted[0], 1.0)
                        pace.learned_rpm = max(1.0, accepted * 60.0 / span * TIGHTEN)
                    else:
                        pace.learned_rpm = max(1.0, (pace.learned_rpm or 60.0) * TIGHTEN)
                    pace.grown = now
            # Retry-After (seconds or a date), else the reset of the exhausted limit.
            wait = provider_headers.retry_after_seconds(values, time.time())
            if wait is None and pace.rpm:
                wait = 60.0 / pace.rpm
            pace.paused_until = max(pace.paused_until, now + min(wait or 1.0, 60.0))
        elif 200 <= status < 300:
            pace.factor = min(1.0, pace.factor + RECOVER)
            if not stated:
                pace.accepted.append(now)
                if len(pace.accepted) > 100_000:
                    pace.accepted.popleft()
                if pace.learned_rpm:
                    growth = (PROBE_GROWTH_GUESS if pace.guessed else PROBE_GROWTH_NEAR
                              if now - pace.last_cut < 30.0 else PROBE_GROWTH)
                    pace.learned_rpm *= 1.0 + growth * max(0.0, now - pace.grown)
                    pace.grown = now
            rpm = pace.rpm
            remaining = said.requests.remaining
            if remaining is not None and remaining < 1 and rpm:
                # Someone else shares the quota and drained it: wait for the next request.
                pace.paused_until = max(pace.paused_until, now + 60.0 / rpm)
            tokens_left = said.tokens.remaining
            if tokens_left is not None and tpm and estimated and tokens_left < estimated:
                refill = (estimated - tokens_left) * 60.0 / tpm
                pace.paused_until = max(pace.paused_until, now + refill)
        current = (pace.rpm, pace.tpm)
        if any(_moved(was, now_) for was, now_ in zip(pace.reported, current, strict=True)):
            pace.reported = current
            return self.limits(model)
        return None


def _moved(was: float | None, now: float | None) -> bool:
    """Whether a limit changed enough to tell the user (learned limits drift every call)."""
    if was is None or now is None:
        return was is not now
    return abs(now - was) > 0.02 * was


class LocalRateGate:
    """``RateGate`` for one process: a ``Pacer`` and ``asyncio.sleep``."""

    def __init__(
        self, stated: Mapping[str, tuple[float | None, float | None]] | None = None,
        *, probe: bool = True,
    ) -> None:
        self.pacer = Pacer(stated, probe=probe)

    async def acquire(self, model: str, tokens: int) -> None:
        while True:
            slot = self.pacer.schedule(model, tokens, time.monotonic())
            if slot.delay > 0:
                await asyncio.sleep(slot.delay)
            if slot.booked:
                return

    async def observe(self, model: str, status: int, headers: dict[str, str], tokens: int,
                      estimated: int) -> RateLimits | None:
        return self.pacer.observe(model, status, headers, tokens, estimated, time.monotonic())

    def limits(self, model: str) -> RateLimits:
        return self.pacer.limits(model)
