"""Where plans and tenants are found, lowest precedence first.

1. the built-in library shipped with dworkers;
2. each directory in ``DWORKERS_PLANS_PATH`` / ``DWORKERS_TENANTS_PATH`` (``os.pathsep``-separated;
   an earlier directory wins over a later one);
3. ``./plans`` / ``./tenants`` in the current directory, which win over everything else, so a
   project can override a built-in by giving its own file the same name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, NamedTuple, TypeVar

from dworkers.errors import NotFoundError, Problem, ProblemsError

Kind = Literal["plans", "tenants"]
_ENV = {"plans": "DWORKERS_PLANS_PATH", "tenants": "DWORKERS_TENANTS_PATH"}
MAX_FILES_PER_DIRECTORY = 1_000
T = TypeVar("T")


class Origin(NamedTuple):
    """A directory to search and how ``dworkers list`` names it."""

    directory: Path
    label: str


def builtin_dir(kind: Kind) -> Path:
    package = Path(__file__).resolve().parent
    installed = package / "_builtin" / kind
    # A wheel ships the library inside the package; a source checkout has it at the top.
    return installed if installed.is_dir() else package.parent / kind


def search_path(kind: Kind) -> list[Origin]:
    origins = [Origin(builtin_dir(kind), "built-in")]
    env = os.environ.get(_ENV[kind], "")
    for entry in reversed([e for e in env.split(os.pathsep) if e.strip()]):
        origins.append(Origin(Path(entry).expanduser(), _ENV[kind]))
    origins.append(Origin(Path.cwd() / kind, f"./{kind}"))
    seen: set[Path] = set()
    unique: list[Origin] = []
    for origin in reversed(origins):  # keep the highest-precedence copy of a repeated directory
        try:
            key = origin.directory.resolve()
        except (OSError, RuntimeError):  # a symlink loop, an unreadable parent, ...
            key = origin.directory.absolute()
        if key not in seen:
            seen.add(key)
            unique.append(origin)
    return unique[::-1]


def yaml_files(origin: Origin) -> list[Path]:
    try:
        files = sorted(
            p for p in origin.directory.iterdir()
            if p.suffix in (".yaml", ".yml") and p.is_file() and not p.name.startswith(".")
        )
    except OSError:
        return []
    return files[:MAX_FILES_PER_DIRECTORY]


class FileRegistry(Generic[T]):
    """Objects by name: those registered from Python, over those discovered from files.

    Files are read on first use, so importing dworkers costs nothing. A file that fails to load
    is left out and its problems are kept in ``problems`` for ``dworkers list`` to show.
    """

    kind: Kind
    noun: str

    def __init__(self) -> None:
        self._entries: dict[str, Entry[T]] = {}
        self._registered: dict[str, Entry[T]] = {}
        self._problems: list[Problem] = []
        self._discovered = False

    def _name_of(self, item: T) -> str:
        raise NotImplementedError

    def _load(self, path: Path) -> T:
        raise NotImplementedError

    def register(self, item: T) -> T:
        entry = Entry(item, "python")
        self._registered[self._name_of(item)] = self._entries[self._name_of(item)] = entry
        return item

    def unregister(self, name: str) -> None:
        self._registered.pop(name, None)
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        return self.entry(name).item

    def has(self, name: str) -> bool:
        self._discover()
        return name in self._entries

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def entry(self, name: str) -> Entry[T]:
        self._discover()
        try:
            return self._entries[name]
        except KeyError:
            command = "dworkers list --tenants" if self.kind == "tenants" else "dworkers list"
            raise NotFoundError(self.noun, name, list(self._entries),
                                f"run '{command}' to see the {self.kind}") from None

    def entries(self) -> list[Entry[T]]:
        self._discover()
        return [self._entries[name] for name in sorted(self._entries)]

    @property
    def problems(self) -> list[Problem]:
        self._discover()
        return list(self._problems)

    def _clash(self, item: T, path: Path, first: Path) -> Problem:
        key = "id" if self.kind == "tenants" else "name"
        source = getattr(item, "source", None)
        line, column = source.at((key,)) if source is not None else (None, None)
        return Problem(f"{self.noun} {key} {self._name_of(item)!r} is already used by "
                       f"{first.name} in the same directory, so this file is ignored",
                       f"give it another {key}, or remove one of the files", f"duplicate-{key}",
                       str(path), line, column)

    def refresh(self) -> None:
        """Read the files again (e.g. after changing directory or the search path)."""
        self._discovered = False

    def _discover(self) -> None:
        if self._discovered:
            return
        entries: dict[str, Entry[T]] = {}
        problems: list[Problem] = []
        for origin in search_path(self.kind):
            here: dict[str, Path] = {}  # names defined in this directory
            for path in yaml_files(origin):
                try:
                    item = self._load(path)
                except ProblemsError as exc:
                    problems += exc.problems
                    continue
                name = self._name_of(item)
                if name in here:  # two files of one directory: neither silently wins
                    problems.append(self._clash(item, path, here[name]))
                    continue
                here[name] = path
                entries[name] = Entry(item, origin.label, path)
        entries.update(self._registered)
        self._entries, self._problems, self._discovered = entries, problems, True


@dataclass(slots=True)
class Entry(Generic[T]):
    item: T
    origin: str  # "built-in", "./plans", "DWORKERS_PLANS_PATH" or "python"
    path: Path | None = None
