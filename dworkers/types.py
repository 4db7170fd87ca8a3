"""Small shared types."""

from __future__ import annotations

from enum import StrEnum


class WorkerRole(StrEnum):
    """The kind of worker that carries out a step; each has its own instructions."""

    ANALYST = "analyst"
    RESEARCHER = "researcher"
    DATA_ANALYST = "data_analyst"
    MANAGER = "manager"
    DESIGNER = "designer"


ROLE_NAMES: tuple[str, ...] = tuple(role.value for role in WorkerRole)


SourcePath = tuple[str | int, ...]
"""Where a value sits inside a document, e.g. ``("steps", 2, "depends_on", 0)``."""


class SourceMap:
    """Positions of the values (and mapping keys) of one loaded file, 1-based.

    The loader fills it while it reads YAML; validation uses it to point at the exact line and
    column of the value that is wrong. A path that was not recorded falls back to its nearest
    recorded parent, so every problem gets the best location there is.
    """

    __slots__ = ("file", "keys", "styles", "values")

    def __init__(self, file: str) -> None:
        self.file = file
        self.values: dict[SourcePath, tuple[int, int]] = {}
        self.keys: dict[SourcePath, tuple[int, int]] = {}
        self.styles: dict[SourcePath, str] = {}

    def at(self, path: SourcePath, *, key: bool = False) -> tuple[int | None, int | None]:
        table = self.keys if key else self.values
        if path in table:
            return table[path]
        while path:
            path = path[:-1]
            if path in self.keys:
                return self.keys[path]
            if path in self.values:
                return self.values[path]
        return None, None
