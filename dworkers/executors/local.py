"""The default executor: every row in this process, on one event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from dworkers.results import RowResult, Rows


class LocalExecutor:
    """``engine.run_many`` as it is: one scheduler over every row, in this process."""

    name = "local"

    def run_many(self, engine: Any, rows: Rows, *,
                 max_failures: int | None = None) -> AsyncIterator[RowResult]:
        result: AsyncIterator[RowResult] = engine.run_many(rows, max_failures=max_failures)
        return result
