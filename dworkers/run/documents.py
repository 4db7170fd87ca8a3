"""Client files in a run, all checked before any call: ``-i NAME=PATH`` for an input the plan
declares ``type: file``, dataset cells that name files or folders (a column declared
``type: file``, or a cell starting with ``@``, relative to the data file), and whether each
step's prompt, documents included, fits its model's context window."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dworkers.errors import InputError, Problem, ProblemsError, shown
from dworkers.results import Row
from dworkers.run.inputs import FileRead, input_file_text

if TYPE_CHECKING:
    from dworkers.dataset.reader import Dataset
    from dworkers.engine import Engine
    from dworkers.plans.base import BasePlan

MAX_FILE_PROBLEMS = 100  # dataset cells reported at once; the first ones are enough to fix
_WINDOW_HINT = ("pass fewer or smaller files (only the pages or sheets the plan needs), split "
                "them over the rows of a dataset run, or choose a model with a larger context "
                "window (--model); for a model litellm does not know, state its window in the "
                "tenant's context_windows")


def file_inputs_of(plan: BasePlan) -> frozenset[str]:
    """The inputs ``plan`` declares ``type: file``."""
    return frozenset(name for name, spec in (plan.inputs or {}).items() if spec.type == "file")


def declared_file_inputs(plan: BasePlan, pairs: Sequence[str], inputs: dict[str, str],
                         files: list[FileRead]) -> dict[str, str]:
    """``inputs`` with each ``-i NAME=PATH`` (no '@') of a ``type: file`` input read from the
    file or folder it names."""
    declared = file_inputs_of(plan)
    problems: list[Problem] = []
    for pair in pairs:
        name, _, value = pair.partition("=")
        name = name.strip()
        if name not in declared or not value or value.startswith("@"):
            continue  # '@' values were read by parse_inputs already
        try:
            inputs[name] = input_file_text(name, Path(value).expanduser(), files)
        except ProblemsError as exc:
            problems.extend(exc.problems)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            problems.append(Problem(f"cannot read input {name!r} from {value!r}: {reason}",
                                    f"input {name!r} names a file or folder (type: file)",
                                    "bad-input", file="--input"))
    if problems:
        raise InputError(problems)
    return inputs


class RowFiles:
    """Reads the files a dataset's cells name: a cell of a ``type: file`` column, or any
    cell starting with ``@`` ('@@' for a literal '@'), relative to the data file's folder.
    ``fixed`` names the ``-i`` inputs given to every row, already read."""

    def __init__(self, plan: BasePlan, data_file: Path, fixed: Iterable[str] = ()) -> None:
        self.columns = file_inputs_of(plan)
        self.base = data_file.absolute().parent
        self.label = str(data_file)
        self.fixed = frozenset(fixed)

    def may_name_files(self, dataset: Dataset) -> bool:
        """Whether any cell of ``dataset`` could name files: a ``type: file`` column it fills,
        or an '@' anywhere in the bytes it checked. Most datasets have neither and are not
        read a second time."""
        if self.columns & set(dataset.input_columns) - self.fixed:
            return True
        if dataset.copy is None:
            return True
        descriptor, offset = dataset.copy.fileno(), 0
        while chunk := os.pread(descriptor, 1 << 20, offset):
            if b"@" in chunk:
                return True
            offset += len(chunk)
        return False

    def names_files(self, name: str, value: str) -> bool:
        return name not in self.fixed and (name in self.columns or value.startswith("@"))

    def read(self, row: Row, files: list[FileRead]) -> Row:
        """``row`` with every cell that names files replaced by their Markdown; raises
        ``InputError`` located at the row's line for a missing or refused file."""
        values = dict(row.inputs)
        problems: list[Problem] = []
        for name, value in row.inputs.items():
            if name in self.fixed:
                continue
            if value.startswith("@@"):
                values[name] = value[1:]
                continue
            if not self.names_files(name, value):
                continue
            written = value[1:] if value.startswith("@") else value
            path = Path(written.strip()).expanduser()
            path = path if path.is_absolute() else self.base / path
            where = f"column {shown(name)}: {shown(written, 120)}"
            if not path.exists():
                problems.append(self._problem(row, f"{where}: no such file",
                                              f"fix the path: it is read from {self.base}"))
                continue
            try:
                values[name] = input_file_text(name, path, files)
            except ProblemsError as exc:
                problems += [self._problem(row, f"{where}: {p.location}: {p.message}", p.hint)
                             for p in exc.problems]
            except (OSError, ValueError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                problems.append(self._problem(row, f"{where}: cannot be read: {reason}",
                                              "check the file and its permissions"))
        if problems:
            raise InputError(problems)
        return Row(row.key, values, row.extra, row.line, row.reuse)

    def _problem(self, row: Row, message: str, hint: str) -> Problem:
        return Problem(message, hint, "bad-file-cell", file=self.label, line=row.line)

    def check(self, rows: Iterable[Row], engine: Engine | None = None) -> list[FileRead]:
        """Read every row's files once, before any call (the conversion cache keeps them for
        the run), and check that each row's prompts fit; every problem is reported, up to
        ``MAX_FILE_PROBLEMS``. Returns the files read."""
        files: list[FileRead] = []
        problems: list[Problem] = []
        for row in rows:
            before = len(files)
            try:
                read = self.read(row, files)
                if engine is not None and len(files) > before:
                    check_fits(engine, engine.resolve_inputs(read.inputs), files[before:],
                               where=(self.label, row.line))
            except ProblemsError as exc:
                problems.extend(exc.problems)
            if len(problems) >= MAX_FILE_PROBLEMS:
                break
        if problems:
            raise InputError(problems[:MAX_FILE_PROBLEMS])
        return unique_files(files)

    def rows(self, rows: Iterable[Row]) -> Iterator[Row]:
        """The rows with their files' Markdown, read again (from the conversion cache)."""
        for row in rows:
            yield self.read(row, [])


def recorded_files(options: Mapping[str, Any]) -> list[FileRead]:
    """The files a recorded run read (its options' ``files``): a resumed run uses the same
    inputs, so its history names them too."""
    found = []
    for item in options.get("files") or []:
        try:
            found.append(FileRead(str(item["input"]), str(item["name"]), int(item["size"]),
                                  str(item["sha256"])))
        except (KeyError, TypeError, ValueError):
            continue  # a record written by another version: what can be read is kept
    return found


def unique_files(files: Iterable[FileRead]) -> list[FileRead]:
    return list(dict.fromkeys(files))


def check_fits(engine: Engine, inputs: Mapping[str, str], files: Sequence[FileRead],
               where: tuple[str, int | None] = ("--input", None)) -> None:
    """Refuse, before any call, a step whose prompt (its dependencies' outputs left out) would
    not fit its model's context window once the documents are in it: the error names the
    largest document input, its tokens and the window. Offline runs have no window."""
    if engine.offline or not files:
        return
    from dworkers.llm import context_window_of, count_prompt_tokens

    placeholders = {step.step_id: "" for step in engine.plan.steps}
    document_inputs = list(dict.fromkeys(file.input for file in files))
    problems: list[Problem] = []
    for step in engine.plan.steps:
        model = engine.model_for(step)
        window = engine.tenant.context_window_for(model) or context_window_of(model)
        if window is None:
            continue
        messages: list[Any] = list(engine.messages_for(step, inputs, placeholders))
        tokens = count_prompt_tokens(model, messages)
        if tokens <= window:
            continue
        sizes = {name: count_prompt_tokens(model, [{"role": "user", "content": inputs[name]}])
                 for name in document_inputs if name in inputs}
        largest = max(sizes, key=lambda name: sizes[name], default=None)
        named = (f"input {largest!r} alone is {sizes[largest]:,} tokens"
                 if largest is not None else "its inputs are too large")
        problems.append(Problem(
            f"step {step.step_id!r} would send {tokens:,} prompt tokens to {model!r}, whose "
            f"context window is {window:,} tokens: {named}", _WINDOW_HINT, "prompt-too-large",
            file=where[0], line=where[1]))
    if problems:
        raise InputError(problems)


__all__ = ["RowFiles", "check_fits", "declared_file_inputs", "file_inputs_of", "recorded_files",
           "unique_files"]
