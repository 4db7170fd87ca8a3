"""Rate control: pace each model's calls to its provider's limits.

Providers say their limits on every answer (``x-ratelimit-limit-requests`` etc., as OpenAI,
Azure, Groq and most gateways do) and answer 429 with ``Retry-After`` when a client goes over.
``Pacer`` learns each model's requests-per-minute and tokens-per-minute from those headers (or
takes them from the tenant) and spaces calls evenly just under them; a 429 tightens the pace and
pauses the model until the provider's reset, and the pace recovers slowly while answers keep
coming. It never sends faster than the known limits, so a long dataset run uses the limit almost
fully with almost no 429s and without being told the limit.

A limit the provider never states (no ``x-ratelimit-*`` headers, only 429 + Retry-After) is
found like a congestion window: calls go unpaced until the first 429, then each 429 is a small
multiplicative cut to the rate the provider was seen to accept, followed by a slow additive
probe upwards (AIMD); a slow start when too few answers came to measure the provider by.
Such a server's Retry-After is usually whole seconds for a bucket that refills continuously,
so it is not waited out in full — unless a 429 comes again inside the time it asked for, which
shows a server that counts by fixed windows and means it.

``Pacer`` is pure (the caller passes the time) so a cluster can keep one in a shared actor;
``LocalRateGate`` is the in-process implementation of the ``RateGate`` protocol the engine
calls. Its callers queue first come, first served, by row then step (``serving_order``): when
a limit binds, the row that started first gets the next turn, so rows finish in about the
order they started instead of later rows taking the turns of waiting ones. The budget lives
in ``dworkers.budget``, token estimates in ``dworkers.estimates``.
Standard library only: no I/O, no litellm.
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from dworkers import provider_headers
from dworkers.events import RateLimits

__all__ = ["LocalRateGate", "Pacer", "RateGate", "ServingQueue", "Slot", "serving_order"]

SAFETY = 0.97  # share of a known limit we aim for: jitter in send times must not cross it
TIGHTEN = 0.85  # pace multiplier after a 429
MIN_FACTOR = 0.25
RECOVER = 0.005  # pace regained per answered call after a 429 (≈ 30 calls to regain 15 %)
# A limit found from 429s alone (AIMD): calls are not paced until the first 429; then each
# 429 cuts the pace to (1 - BACKOFF) of the rate the provider was seen to accept lately, and
# it grows by PROBE_GROWTH of that rate per second: slowly, so a 429 comes every few seconds
# and costs one or two calls. A 429 before enough answers to measure by starts the pace at
# SLOW_START_RPM, doubling in about a second until the next.
SLOW_START_RPM, SLOW_START_GROWTH = 120.0, 0.7
BACKOFF, PROBE_GROWTH, ACCEPTED_WINDOW = 0.06, 0.004, 1.0
MEASURED_ANSWERS, ACCEPTED_MEMORY = 10, 10.0  # a rate is measured over 10 answers at least
PROBE_SPEEDUP_SECONDS = 5.0  # the probe's growth rises by its own size every this many seconds
MAX_LEARNED_RPM = 1e7  # a provider that never refuses: the pace stops doubling here
# Where a call stands in its model's queue at the gate: (row, step), lower goes first. The
# engine sets it in each step's task, so the gate protocol keeps plain arguments and a gate
# that does not queue (a cluster's) needs nothing.
serving_order: contextvars.ContextVar[tuple[int, int]] = contextvars.ContextVar(
    "serving_order", default=(0, 0))
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
    cut_rpm: float = 0.0  # the learned pace right after the last cut: what probing adds to
    pacing_at: float = -math.inf  # when a call last had to wait for the pace
    asked_until: float = 0.0  # the end of the last Retry-After that was not waited out
    honours_retry_after: bool = False  # a 429 came inside it: the server counts by windows
    factor: float = 1.0
    next_request: float = 0.0  # the earliest time the next call may go (virtual schedule)
    next_token: float = 0.0
    paused_until: float = 0.0
    probe_started: float | None = None  # the first call is out; the rest wait for its answer
    answered: bool = False
    accepted: deque[float] = field(default_factory=deque)  # recent answer times, in order
    last_cut: float = -math.inf
    grown: float = 0.0  # when a learned limit was last probed upwards
    guessed: bool = False  # slow start: too few answers to measure by, the pace is a guess
    token_ratio: float = 1.0  # tokens used ÷ tokens estimated, lately
    reported: tuple[float | None, float | None] = (None, None)

    @property
    def rpm(self) -> float | None:
        known = [v for v in (self.stated_rpm, self.header_rpm) if v]
        return min(known) if known else self.learned_rpm

    @property
    def shown_rpm(self) -> float | None:
        """The request limit to tell the user: none while a slow start's guess paces calls."""
        known = self.rpm
        return None if self.guessed and known == self.learned_rpm else known

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
                  "429" if pace.learned_rpm and not pace.guessed else "none")
        if (pace.header_rpm or pace.header_tpm) and source == "tenant" and (
                (pace.header_rpm or math.inf) < (pace.stated_rpm or math.inf)
                or (pace.header_tpm or math.inf) < (pace.stated_tpm or math.inf)):
            source = "headers"
        return RateLimits(model, pace.shown_rpm, pace.tpm, source)

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
        if at > now:
            pace.pacing_at = now  # calls wait for the pace: it, not demand, sets the rate
        if at - now > HORIZON:
            return Slot(False, min(at - now - HORIZON / 2, HORIZON))
        if rpm:
            # A learned pace is the provider's accepted rate already: no margin on top.
            share = 1.0 if pace.learned_rpm == rpm else SAFETY * pace.factor
            pace.next_request = at + 60.0 / (rpm * share)
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
            wait = provider_headers.retry_after_seconds(values, time.time())
            if stated:
                if now - pace.last_cut >= CUT_INTERVAL:
                    pace.last_cut = now
                    pace.factor = max(MIN_FACTOR, pace.factor * TIGHTEN)
                # Retry-After (seconds or a date), else the reset of the exhausted limit.
                if wait is None and pace.rpm:
                    wait = 60.0 / pace.rpm
                pace.paused_until = max(pace.paused_until, now + min(wait or 1.0, 60.0))
            else:
                self._refused_unstated(pace, wait, now)
        elif 200 <= status < 300:
            pace.factor = min(1.0, pace.factor + RECOVER)
            if not stated:
                self._accepted_unstated(pace, now)
            rpm = pace.rpm
            remaining = said.requests.remaining
            if remaining is not None and remaining < 1 and rpm:
                # Someone else shares the quota and drained it: wait for the next request.
                pace.paused_until = max(pace.paused_until, now + 60.0 / rpm)
            tokens_left = said.tokens.remaining
            if tokens_left is not None and tpm and estimated and tokens_left < estimated:
                refill = (estimated - tokens_left) * 60.0 / tpm
                pace.paused_until = max(pace.paused_until, now + refill)
        # A slow start's pace is a guess that moves every answer: not worth telling.
        current = (pace.shown_rpm, pace.tpm)
        if any(_moved(was, now_) for was, now_ in zip(pace.reported, current, strict=True)):
            pace.reported = current
            return self.limits(model)
        return None

    def _refused_unstated(self, pace: _ModelPace, wait: float | None, now: float) -> None:
        """A 429 from a provider that states no limit: cut the pace (once per burst of 429s)
        and pause briefly — or, for a server that counts by windows, as long as it asks."""
        if now < pace.asked_until:
            pace.honours_retry_after = True  # refused again inside the time it asked for
        if now - pace.last_cut >= CUT_INTERVAL:
            pace.last_cut = now
            current = pace.learned_rpm or math.inf
            seen = self._accepted_rate(pace, now)
            pace.grown = now
            if seen is None:
                # Too few answers to measure the provider by (the opening burst): start slow
                # and double until the answers can tell.
                pace.learned_rpm = min(current / 2, SLOW_START_RPM) if pace.guessed \
                    else min(current, SLOW_START_RPM)
                pace.guessed = True
            else:
                # What the provider let through lately is its rate (the pace may have run
                # ahead of it: it grows a little before the answers show a refusal).
                pace.learned_rpm = max(1.0, min(current, seen) * (1.0 - BACKOFF))
                pace.cut_rpm = pace.learned_rpm
                pace.guessed = False
        asked = min(wait if wait is not None else 1.0, 60.0)
        if pace.honours_retry_after:
            pace.paused_until = max(pace.paused_until, now + asked)
        else:
            # A continuously refilled bucket has room again after one call's interval.
            pace.paused_until = max(pace.paused_until, now + 60.0 / (pace.learned_rpm or 60.0))
            pace.asked_until = max(pace.asked_until, now + asked)

    @staticmethod
    def _accepted_rate(pace: _ModelPace, now: float) -> float | None:
        """Answers a minute the provider accepted lately: over the last ``ACCEPTED_WINDOW``
        seconds, or over the last ``MEASURED_ANSWERS`` answers if that is too few; ``None``
        without that many answers in ``ACCEPTED_MEMORY`` seconds."""
        answers = pace.accepted
        while answers and answers[0] < now - ACCEPTED_MEMORY:
            answers.popleft()
        recent = len(answers) - bisect.bisect_left(answers, now - ACCEPTED_WINDOW)
        if recent >= MEASURED_ANSWERS:
            return recent * 60.0 / ACCEPTED_WINDOW
        if len(answers) < MEASURED_ANSWERS:
            return None
        return MEASURED_ANSWERS * 60.0 / max(now - answers[-MEASURED_ANSWERS], ACCEPTED_WINDOW)

    def _accepted_unstated(self, pace: _ModelPace, now: float) -> None:
        """An answer from a provider that states no limit: probe its limit upwards."""
        pace.accepted.append(now)
        if len(pace.accepted) > 4 * MEASURED_ANSWERS:
            self._accepted_rate(pace, now)  # forgets what is too old to matter
        if pace.learned_rpm is None:
            return  # no pacing until the provider refuses a call
        elapsed = max(0.0, now - pace.grown)
        pace.grown = now
        if now - pace.pacing_at > 1.0:
            return  # fewer calls than the pace allows: sending them says nothing of the limit
        if pace.guessed:
            pace.learned_rpm = min(MAX_LEARNED_RPM,
                                   pace.learned_rpm * (1.0 + SLOW_START_GROWTH * elapsed))
        else:
            # Slowly just after a cut (the limit is near), faster the longer none comes.
            quiet = now - pace.last_cut
            pace.learned_rpm += (PROBE_GROWTH * (1.0 + quiet / PROBE_SPEEDUP_SECONDS)
                                 * pace.cut_rpm * elapsed)


def _moved(was: float | None, now: float | None) -> bool:
    """Whether a limit changed enough to tell the user (learned limits drift every call)."""
    if was is None or now is None:
        return was is not now
    return abs(now - was) > 0.02 * was


class _Turn:
    """A call waiting at the gate: its place in the queue and the event that wakes it."""

    __slots__ = ("gone", "order", "woken")

    def __init__(self, order: tuple[int, int, int]) -> None:
        self.order = order
        self.woken = asyncio.Event()
        self.gone = False

    def __lt__(self, other: _Turn) -> bool:
        return self.order < other.order


class ServingQueue:
    """The calls waiting for one model, served first come, first served by ``serving_order``
    (arrival breaks ties). Only the head asks the pacer for a slot; the rest sleep until it
    has one, so a later call can never take the turn of an earlier one."""

    def __init__(self) -> None:
        self._heap: list[_Turn] = []
        self._arrivals = itertools.count()

    def join(self, order: tuple[int, int]) -> _Turn:
        turn = _Turn((*order, next(self._arrivals)))
        heapq.heappush(self._heap, turn)
        return turn

    def head(self) -> _Turn | None:
        while self._heap and self._heap[0].gone:
            heapq.heappop(self._heap)
        return self._heap[0] if self._heap else None

    def leave(self, turn: _Turn) -> None:
        """``turn`` is served or cancelled: the next call in line takes over."""
        turn.gone = True
        following = self.head()
        if following is not None:
            following.woken.set()


class LocalRateGate:
    """``RateGate`` for one process: a ``Pacer``, a ``ServingQueue`` per model and
    ``asyncio.sleep``."""

    def __init__(
        self, stated: Mapping[str, tuple[float | None, float | None]] | None = None,
        *, probe: bool = True,
    ) -> None:
        self.pacer = Pacer(stated, probe=probe)
        self._queues: dict[str, ServingQueue] = {}

    async def acquire(self, model: str, tokens: int) -> None:
        queue = self._queues.setdefault(model, ServingQueue())
        turn = queue.join(serving_order.get())
        try:
            while True:
                if queue.head() is not turn:
                    turn.woken.clear()
                    await turn.woken.wait()
                    continue
                slot = self.pacer.schedule(model, tokens, time.monotonic())
                if slot.booked:
                    break
                # An earlier call may arrive while the head sleeps: it wakes to find itself
                # behind it.
                await asyncio.sleep(slot.delay)
        finally:
            queue.leave(turn)
        if slot.delay > 0:
            await asyncio.sleep(slot.delay)

    async def observe(self, model: str, status: int, headers: dict[str, str], tokens: int,
                      estimated: int) -> RateLimits | None:
        return self.pacer.observe(model, status, headers, tokens, estimated, time.monotonic())

    def limits(self, model: str) -> RateLimits:
        return self.pacer.limits(model)
