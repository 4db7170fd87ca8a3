"""Where plans and tenants are found, lowest precedence first.

1. the built-in library shipped with dworkers;
2. each directory in ``DWORKERS_PLANS_PATH`` / ``DWORKERS_TENANTS_PATH`` (``os.pathsep``-separated;
   an earlier directory wins over a later one);
3. ``./plans`` / ``./tenants`` in the current directory, which win over everything else, so a
   project can override a built-in by giving its own file the same name.

A file that fails to load is never silently skipped when it is the one asked for: looking up a
name that such a file could define (its file stem, or the ``name:`` / ``id:`` it declares) raises
``BrokenFileError`` with the file's problems, unless a file of higher precedence (or Python)
defines that name. A broken ``./plans/compliance-audit.yaml`` thus stops ``run compliance-audit``
instead of quietly running the built-in plan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, TypeVar

from dworkers.errors import NotFoundError, Problem, ProblemsError

if TYPE_CHECKING:
    from dworkers.types import SourceMap

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


def scan(origin: Origin) -> tuple[list[Path], list[Problem]]:
    """The YAML files of ``origin`` that are read, and a problem for each one left out (and
    for a search-path directory that is not there), so nothing is skipped without a word."""
    directory = origin.directory
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        if origin.label not in _ENV.values():  # ./plans need not exist
            return [], []
        reason = "does not exist" if isinstance(exc, FileNotFoundError) else (
            "is not a directory" if isinstance(exc, NotADirectoryError)
            else f"cannot be read ({exc.strerror or exc})")
        return [], [Problem(f"directory {str(directory)!r} in {origin.label} {reason}",
                            f"create it, or remove it from {origin.label}",
                            "missing-directory", file=origin.label)]
    files: list[Path] = []
    skipped: list[Problem] = []
    for path in entries:
        if path.name.startswith(".") or path.suffix.lower() not in (".yaml", ".yml"):
            continue
        if path.suffix not in (".yaml", ".yml"):
            skipped.append(Problem(f"skipped: only files ending in .yaml or .yml are read, "
                                   f"not {path.suffix}", f"rename it to {path.stem}.yaml",
                                   "skipped-file", file=str(path)))
        elif not path.is_file():
            what = ("is a symbolic link to a file that does not exist" if path.is_symlink()
                    else "is not a file")
            skipped.append(Problem(f"skipped: it {what}", "fix or remove it", "skipped-file",
                                   file=str(path)))
        else:
            files.append(path)
    if len(files) > MAX_FILES_PER_DIRECTORY:
        left = files[MAX_FILES_PER_DIRECTORY:]
        skipped.append(Problem(
            f"skipped {len(left)} files from {left[0].name} on: at most "
            f"{MAX_FILES_PER_DIRECTORY} files are read per directory",
            "spread them over several directories (DWORKERS_PLANS_PATH takes a list)",
            "too-many-files", file=str(directory)))
    return files[:MAX_FILES_PER_DIRECTORY], skipped


class BrokenFileError(ProblemsError):
    """A name was looked up, and the file that would define it failed to load.

    Carries that file's located problems, so the user sees what to fix rather than a
    lower-precedence copy of the same name being used, or "not found".
    """

    def __init__(self, noun: str, name: str, path: Path, problems: list[Problem]) -> None:
        self.noun, self.name, self.path = noun, name, path
        super().__init__(problems)


class _Broken(NamedTuple):
    """A file that failed to load, with the precedence of its directory (higher wins)."""

    rank: int
    path: Path
    problems: list[Problem]


class FileRegistry(Generic[T]):
    """Objects by name: those registered from Python, over those discovered from files.

    Files are read on first use, so importing dworkers costs nothing. A file that fails to load
    is left out and its problems are kept in ``problems`` for ``dworkers list`` to show; looking
    up a name it could define raises ``BrokenFileError`` (see the module's docstring).
    """

    kind: Kind
    noun: str

    def __init__(self) -> None:
        self._entries: dict[str, Entry[T]] = {}
        self._registered: dict[str, Entry[T]] = {}
        self._problems: list[Problem] = []
        self._ranks: dict[str, int] = {}  # name -> precedence of the directory it came from
        self._broken: dict[str, _Broken] = {}  # name -> the failed file that may define it
        self._discovered = False

    @property
    def _key(self) -> str:
        """The top-level key that names an item in its file."""
        return "id" if self.kind == "tenants" else "name"

    def _name_of(self, item: T) -> str:
        raise NotImplementedError

    def _from_data(self, data: Any, source: SourceMap) -> T:
        """A validated item from a file's loaded values; raises ``ProblemsError``."""
        raise NotImplementedError

    def _read(self, path: Path) -> tuple[Any, SourceMap]:
        from dworkers import loader  # YAML is only needed once plans or tenants are asked for

        return loader.read_yaml(path)

    def register(self, item: T) -> T:
        entry = Entry(item, "python")
        self._registered[self._name_of(item)] = self._entries[self._name_of(item)] = entry
        return item

    def get(self, name: str) -> T:
        return self.entry(name).item

    def has(self, name: str) -> bool:
        """Whether ``name`` is defined, or claimed by a file that failed to load (so ``entry``
        raises its problems rather than ``NotFoundError``)."""
        self._discover()
        return name in self._entries or name in self._broken

    def names(self) -> list[str]:
        """The names that can be used: not those hidden by a broken file of higher precedence."""
        self._discover()
        return sorted(name for name in self._entries if self._blocker(name) is None)

    def entry(self, name: str) -> Entry[T]:
        self._discover()
        broken = self._blocker(name)
        if broken is not None:
            raise BrokenFileError(self.noun, name, broken.path, broken.problems)
        try:
            return self._entries[name]
        except KeyError:
            command = "dworkers list --tenants" if self.kind == "tenants" else "dworkers list"
            raise NotFoundError(self.noun, name, list(self._entries),
                                f"run '{command}' to see the {self.kind}") from None

    def entries(self) -> list[Entry[T]]:
        """Every usable entry by name (as ``names``)."""
        return [self._entries[name] for name in self.names()]

    def _blocker(self, name: str) -> _Broken | None:
        """The failed file that ``name`` may mean, if no entry of higher precedence defines it."""
        broken = self._broken.get(name)
        if broken is None:
            return None
        entry = self._entries.get(name)
        if entry is None:
            return broken
        if entry.origin == "python":  # registered from Python: wins over every file
            return None
        return broken if broken.rank >= self._ranks.get(name, -1) else None

    @property
    def problems(self) -> list[Problem]:
        self._discover()
        return list(self._problems)

    def _clash(self, item: T, path: Path, first: Path) -> Problem:
        key = self._key
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
        ranks: dict[str, int] = {}
        broken: dict[str, _Broken] = {}
        problems: list[Problem] = []
        for rank, origin in enumerate(search_path(self.kind)):  # lowest precedence first
            here: dict[str, Path] = {}  # names defined in this directory
            files, skipped = scan(origin)
            problems += skipped
            for problem in skipped:  # "run my-plan" with plans/my-plan.YAML says why
                if problem.code == "skipped-file" and problem.file:
                    path = Path(problem.file)
                    if path.stem not in broken or broken[path.stem].rank < rank:
                        broken[path.stem] = _Broken(rank, path, [problem])
            for path in files:
                data: Any = None
                try:
                    data, source = self._read(path)
                    item = self._from_data(data, source)
                except ProblemsError as exc:
                    problems += exc.problems
                    failed = _Broken(rank, path, exc.problems)
                    for name in self._meant_by(path, data):
                        # A later directory wins; within one, the first file in name order.
                        if name not in broken or broken[name].rank < rank:
                            broken[name] = failed
                    continue
                name = self._name_of(item)
                if name in here:  # two files of one directory: neither silently wins
                    problems.append(self._clash(item, path, here[name]))
                    continue
                here[name] = path
                entries[name] = Entry(item, origin.label, path)
                ranks[name] = rank
        entries.update(self._registered)
        self._entries, self._ranks, self._broken = entries, ranks, broken
        self._problems, self._discovered = problems, True

    def _meant_by(self, path: Path, data: Any) -> set[str]:
        """The names a failed file may define: its stem, and the name it declares if it got as
        far as being parsed."""
        names = {path.stem}
        declared = data.get(self._key) if isinstance(data, dict) else None
        if isinstance(declared, str) and declared:
            names.add(declared)
        return names


@dataclass(slots=True)
class Entry(Generic[T]):
    item: T
    origin: str  # "built-in", "./plans", "DWORKERS_PLANS_PATH" or "python"
    path: Path | None = None
