"""A run's budget: every call holds its estimated cost before it starts, and pays after.

How far a budget holds (the README quotes this): **a call starts only if its estimate — price ×
(estimated prompt tokens + the step's longest recent answer, 256 tokens before one is seen) —
fits beside what is already spent and what the calls under way hold. A run can pass its budget
only by what the calls under way at the end spend beyond their estimates — at most, for each,
an answer longer than expected, up to the model's output limit — plus, for a model whose price
only its endpoint reports (``usage.cost``, ``x-litellm-response-cost``), its first call (one
per process), which goes alone to learn it.** A resumed run starts with what it spent before.

``Budget`` is the protocol a cluster shares (an actor holds a ``LocalBudget``); ``Reservations``
is what one process's calls go through: it holds and releases their estimates, never leaking
one, and lets the first call to a model of not yet known price go alone. Standard library
only: no I/O, no litellm.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class Budget(Protocol):
    """The spending limit of a run, shared by every row (and every process) of it."""

    async def reserve(self, usd: float) -> str | None:
        """Before a call expected to cost ``usd``: ``None`` to go ahead (``usd`` is held until
        ``commit``), else why no more calls may start."""
        ...

    async def commit(self, reserved: float, spent: float) -> str | None:
        """After a call: release the reservation and add what the call really cost. Returns
        why no more calls may start, if the budget is now spent, else ``None``."""
        ...


class LocalBudget:
    """``Budget`` for one process. ``limit=None`` never refuses; ``spent`` is what the run
    spent before (a resume continues the original run's budget)."""

    def __init__(self, limit: float | None, *, spent: float = 0.0) -> None:
        self.limit = limit
        self.spent = max(0.0, spent)
        self.reserved = 0.0

    def refusal(self, usd: float = 0.0) -> str | None:
        """Why a call expected to cost ``usd`` may not start, or ``None``."""
        limit = self.limit
        if limit is None:
            return None
        if limit == 0:
            return "budget of $0 allows no calls"
        if self.spent >= limit:
            return f"budget of {dollars(limit)} reached (${self.spent:.4f} spent)"
        # A hair of tolerance: in floating point 0.1 + 0.05 > 0.15, and a budget of exactly
        # three $0.05 calls must allow the third.
        if usd > 0 and self.spent + self.reserved + usd > limit * (1 + 1e-9):
            return self.estimate_refusal(limit, usd)
        return None

    def estimate_refusal(self, limit: float, usd: float) -> str:
        """Why a call whose estimate ``usd`` does not fit may not start: the budget is not
        spent, the estimate would pass it. Says how far to raise it for that call."""
        raise_it = (f"raise it to at least ${self.spent + self.reserved + usd:.4f} "
                    "(--max-cost, limits.max_cost_usd)")
        if not self.spent and not self.reserved:
            return (f"budget of {dollars(limit)} is too small: the next call may cost "
                    f"${usd:.4f} and nothing is spent yet — {raise_it}")
        left = max(0.0, limit - self.spent - self.reserved)
        held = f", ${self.reserved:.4f} held by calls under way" if self.reserved else ""
        return (f"budget of {dollars(limit)} would be passed: the next call may cost "
                f"${usd:.4f} and ${left:.4f} is left (${self.spent:.4f} spent{held}) — {raise_it}")

    async def reserve(self, usd: float) -> str | None:
        refused = self.refusal(max(0.0, usd))
        if refused is None:
            self.reserved += max(0.0, usd)
        return refused

    async def commit(self, reserved: float, spent: float) -> str | None:
        self.reserved = max(0.0, self.reserved - max(0.0, reserved))
        self.spent += max(0.0, spent)
        return self.refusal()


def dollars(usd: float) -> str:
    """A budget as a person wrote it: ``$0.2``, ``$5``, ``$0.00001`` (never ``$1e-05``)."""
    return "$" + (f"{usd:.10f}".rstrip("0").rstrip(".") or "0")


def unpriced_refusal(model: str, limit: float) -> str:
    """Why a budget cannot hold for ``model``, and the two ways out. The ``prices:`` entry is a
    shape to fill in: its placeholders cannot pass for the model's real price."""
    return (f"model {model!r} has no known price and its endpoint reports no cost, so the "
            f"budget of {dollars(limit)} cannot be kept — declare its price in the tenant "
            f"(prices: {{{model!r}: {{input_per_million: X.XX, output_per_million: Y.YY}}}}, "
            "USD per million prompt and completion tokens), or run without a budget "
            "(--max-cost, limits.max_cost_usd)")


@dataclass
class Hold:
    """One call's reservation: ``usd`` held against the budget until the call is paid for.
    ``alone`` is the lock a model's first call of unknown price holds until it is answered."""

    model: str
    usd: float
    alone: asyncio.Lock | None = None


class Reservations:
    """How one process's calls hold and pay against a ``Budget`` (see the module docstring).
    ``limit`` is the run's budget (``None``: no budget, nothing goes alone)."""

    def __init__(self, budget: Budget, limit: float | None) -> None:
        self.budget = budget
        self.limit = limit
        self.holding = 0  # holds not yet paid, in this process
        self._paid = asyncio.Event()  # set (and replaced) whenever a hold is paid
        self._alone: dict[str, asyncio.Lock] = {}
        self._unpriced: dict[str, str] = {}  # model → why its calls cannot be budgeted

    async def hold(self, model: str, cost: Callable[[], float | None]) -> Hold | str:
        """Reserve what a call to ``model`` is expected to cost (``cost()``: ``None`` while
        its price is not known): the ``Hold`` to pay with, else why the call may not start.
        A call that does not fit while others are under way waits for them to be paid (they
        may cost less than they hold); a call of unknown price goes alone, holding nothing,
        until an answer says the price."""
        refused = self._unpriced.get(model)
        if refused is not None:
            return refused
        usd = cost()
        alone = None
        if usd is None and self.limit is not None:
            alone = self._alone.setdefault(model, asyncio.Lock())
            await alone.acquire()
            # The call that went before may have answered meanwhile: with a price, or none.
            refused, usd = self._unpriced.get(model), cost()
            if refused is not None or usd is not None:
                alone.release()
                alone = None
            if refused is not None:
                return refused
        try:
            while True:
                paid = self._paid  # a payment while ``reserve`` is out must not go unseen
                refused = await self.budget.reserve(usd or 0.0)
                if refused is None or not self.holding:
                    break
                await paid.wait()
                latest = cost() if alone is None else None
                usd = latest if latest is not None else usd
        except BaseException:
            if alone is not None:
                alone.release()
            raise
        if refused is not None:
            if alone is not None:
                alone.release()
            return refused
        self.holding += 1
        return Hold(model, usd or 0.0, alone)

    async def pay(self, hold: Hold, spent: float | None, *, answered: bool) -> str | None:
        """Release ``hold`` and count what its call ``spent`` (``None``: unknown). ``answered``
        says an answer came: one of unknown cost for a model of unknown price stops the
        budgeted run. Returns why no more calls may start, if that is now so."""
        alone, hold.alone = hold.alone, None
        try:
            refused = await self.budget.commit(hold.usd, spent or 0.0)
        finally:
            self.holding -= 1
            self._paid.set()
            self._paid = asyncio.Event()
            if alone is not None:
                if answered and spent is None and self.limit is not None:
                    self._unpriced[hold.model] = unpriced_refusal(hold.model, self.limit)
                alone.release()
        return refused or self._unpriced.get(hold.model)
