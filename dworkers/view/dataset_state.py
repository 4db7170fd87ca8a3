"""What a dataset run looks like right now, built from the engine's events (no rich, no I/O).

``DatasetState.apply(event)`` folds events into counts (rows succeeded, failed, running, left),
throughput over the last minute (calls and tokens), the pace each model is held to, cost against
the budget, an ETA and the last few failures. Memory stays flat whatever the number of rows:
only the keys of running rows and a minute of per-second buckets are kept.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from dworkers.events import (
    DatasetFinished,
    Event,
    ExecutorNotice,
    RateLimits,
    RowFinished,
    RowStarted,
    RunStarted,
    StepFinished,
)
from dworkers.results import MOCK_MODEL, DatasetResult, RowResult, RowStatus
from dworkers.text import one_line
from dworkers.view.state import Clock

WINDOW_SECONDS = 60
FAILURES_SHOWN = 5
BINDING_SHARE = 0.8  # a limit used this much is the one holding the run back


@dataclass(frozen=True, slots=True)
class Failure:
    key: str
    error: str


@dataclass(frozen=True, slots=True)
class Pace:
    """The limits the engine paces a model to (None: not known yet)."""

    rpm: float | None
    tpm: float | None
    source: str


@dataclass
class DatasetState:
    """A dataset run as it stands. ``total`` is the number of rows (None if unknown)."""

    total: int | None = None
    budget_usd: float | None = None
    now: Clock = time.monotonic
    run_id: str = ""
    plan: str = ""
    tenant: str = ""
    steps_per_row: int = 0
    offline: bool = False  # --mock: no provider, so no limits to learn
    started_at: float | None = None  # monotonic
    finished_at: float | None = None
    counts: dict[RowStatus, int] = field(default_factory=lambda: dict.fromkeys(RowStatus, 0))
    running: set[str] = field(default_factory=set)
    calls: int = 0  # calls answered (not cached), all attempts' worth
    cached: int = 0  # row-steps answered from history
    tokens: int = 0
    cost_usd: float = 0.0
    cost_known: bool = True  # False once a call's cost could not be known (no price)
    paces: dict[str, Pace] = field(default_factory=dict)
    failures: deque[Failure] = field(default_factory=lambda: deque(maxlen=FAILURES_SHOWN))
    result: DatasetResult | None = None
    notice: str = ""  # what the executor is doing that no row shows (Ray starting workers)
    notice_at: float | None = None  # monotonic
    # (second, calls, tokens) for the last WINDOW_SECONDS seconds
    _buckets: deque[list[int]] = field(default_factory=deque)

    def prepare(self, event: RunStarted) -> None:
        """Know the plan before the run starts (without starting the clock)."""
        self.run_id, self.plan, self.tenant = event.run_id, event.plan, event.tenant
        self.steps_per_row = len(event.steps)
        self.offline = bool(event.steps) and all(s.model == MOCK_MODEL for s in event.steps)

    def apply(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.prepare(event)
            self.started_at = event.started_at
        elif isinstance(event, RowStarted):
            self.running.add(event.row)
        elif isinstance(event, StepFinished):
            result = event.result
            if result.cached:
                self.cached += 1
            elif result.attempts:
                self.calls += result.attempts
                self.tokens += result.total_tokens
                self._count(event.at, result.attempts, result.total_tokens)
            self.cost_usd += result.cost_usd
            self.cost_known = self.cost_known and result.cost_known
        elif isinstance(event, RowFinished):
            self._finish_row(event.result)
        elif isinstance(event, RateLimits):
            self.paces[event.model] = Pace(event.rpm, event.tpm, event.source)
        elif isinstance(event, ExecutorNotice):
            self.notice, self.notice_at = event.text, event.at
        elif isinstance(event, DatasetFinished):
            self.result = event.result
            self.finished_at = event.at
            self.running.clear()

    def _finish_row(self, row: RowResult) -> None:
        self.running.discard(row.key)
        self.counts[row.status] += 1
        if row.status is RowStatus.FAILED:
            self.failures.append(Failure(row.key, one_line(row.error or "failed")))

    def _count(self, at: float, calls: int, tokens: int) -> None:
        second = int(at)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += calls
            self._buckets[-1][2] += tokens
        else:
            self._buckets.append([second, calls, tokens])
        self._prune(second)

    def _prune(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - WINDOW_SECONDS:
            self._buckets.popleft()

    # --- what a view shows ---------------------------------------------------------------------

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    @property
    def left(self) -> int | None:
        """Rows neither finished nor running."""
        if self.total is None:
            return None
        return max(self.total - self.done - len(self.running), 0)

    def count(self, status: RowStatus) -> int:
        return self.counts[status]

    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        end = self.finished_at if self.finished_at is not None else self.now()
        return max(end - self.started_at, 0.0)

    def per_minute(self) -> tuple[float, float]:
        """Calls and tokens a minute, over the last minute (or since the start, if sooner)."""
        now = self.finished_at if self.finished_at is not None else self.now()
        self._prune(int(now))
        calls = sum(bucket[1] for bucket in self._buckets)
        tokens = sum(bucket[2] for bucket in self._buckets)
        span = min(self.elapsed(), WINDOW_SECONDS)
        if span <= 0:
            return 0.0, 0.0
        scale = 60 / max(span, 1.0)
        return calls * scale, tokens * scale

    def eta(self) -> float | None:
        """Seconds until every row is done, at the pace rows have finished so far."""
        if self.total is None or self.finished_at is not None:
            return None
        elapsed = self.elapsed()
        finished = self.done
        if finished == 0 or elapsed <= 0:
            return None
        remaining = self.total - finished
        return max(remaining, 0) * elapsed / finished

    def binding(self) -> str | None:
        """Which limit the run is held to now and where it is from (``"calls/min, learned
        from 429s"``), or ``None`` while neither is nearly used up."""
        calls, tokens = self.per_minute()
        rpm, tpm = self.limits()
        shares = [(used / limit, kind) for used, limit, kind
                  in ((calls, rpm, "calls/min"), (tokens, tpm, "tokens/min")) if limit]
        if not shares or max(shares)[0] < BINDING_SHARE:
            return None
        kind = max(shares)[1]
        sources = {pace.source for pace in self.paces.values()
                   if (pace.rpm if kind == "calls/min" else pace.tpm)}
        said = {"tenant": "stated by the tenant", "headers": "stated by the provider",
                "429": "learned from 429s"}
        how = said.get(sources.pop(), "") if len(sources) == 1 else "stated and learned"
        return f"{kind}, {how}" if how else kind

    def limits(self) -> tuple[float | None, float | None]:
        """The requests and tokens a minute the run may use: the sum over the models paced."""
        rpms = [p.rpm for p in self.paces.values() if p.rpm]
        tpms = [p.tpm for p in self.paces.values() if p.tpm]
        return (sum(rpms) if rpms else None), (sum(tpms) if tpms else None)


__all__ = ["DatasetState", "Failure", "Pace"]
