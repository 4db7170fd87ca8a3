"""``HistoryCache``: the engine's step cache, answered from every succeeded step on record."""

from __future__ import annotations

from collections.abc import Sequence

from dworkers.errors import HistoryError
from dworkers.history.storage import History
from dworkers.results import MOCK_MODEL, StepResult


class HistoryCache:
    """The engine's ``StepCache`` over the history: a step whose model and rendered messages
    match a succeeded step on record is reused without a call. A history that cannot be read
    is a cache miss (the error is kept in ``error``), never a failed step.

    Answers made up offline by ``--mock`` (model ``mock``) are never served to a real run: the
    cache key holds the model the step asked for, not the client that answered. A ``--mock``
    run may pass ``exclude_models=()``.
    """

    def __init__(self, history: History, *,
                 exclude_models: Sequence[str] = (MOCK_MODEL,)) -> None:
        self.history = history
        self.exclude_models = tuple(exclude_models)
        self.error: HistoryError | None = None
        self.hits = 0

    def lookup(self, key: str) -> StepResult | None:
        try:
            hit = self.history.lookup(key, exclude_models=self.exclude_models)
        except HistoryError as exc:
            self.error = exc
            return None
        self.hits += hit is not None
        return hit
