"""Reads a dataset file (``.csv`` with a header row, or ``.jsonl``, one object per line) as a
stream of rows, and checks every row before a dataset run spends anything.

A dataset is untrusted input, like a plan file: lines, rows, columns and keys are bounded, bytes
that are not UTF-8, duplicate names and values that cannot be an input are reported, and nothing
a file holds can raise anything but ``InputError``. The file is read exactly once: ``check``
copies what it reads to an unnamed temporary file while it checks (keeping only a set of the
keys in memory, to prove them unique: which earlier row a repeated key repeats is looked up in
the copy, only when some key repeats), and ``rows`` reads that copy, one row at a time. So the
rows that run are the rows that were checked, even if the file changes meanwhile, and a pipe
or FIFO given as ``--data`` works (it could not be opened a second time).

Each row's key names it in results, history and files: ``--key COLUMN``, by default the ``id``
column when there is one, else the 1-based row number; surrounding spaces are not part of a
key. Keys that differ only in case or Unicode form (a composed or decomposed ``é``) are
duplicates. ``safe_name(key)`` is the file name of a row's report.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import tempfile
import unicodedata
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from dworkers.errors import InputError, Problem, did_you_mean, shown

Format = Literal["csv", "jsonl"]

MAX_LINE_BYTES = 1024 * 1024  # one JSONL line, or one physical line of a CSV file
MAX_ROW_BYTES = 4 * 1024 * 1024  # one CSV record (quoted fields may span lines)
MAX_COLUMNS = 1_000
MAX_ROWS = 1_000_000
MAX_KEY_CHARS = 200
MAX_PROBLEMS = 100  # shown; the rest are counted
DEFAULT_KEY = "id"
SAFE_NAME_CHARS = 80

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Names Windows refuses as files, whatever the extension.
_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                       *(f"lpt{i}" for i in range(10))})
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1: keys are printed


_DIGEST_SHAPED = re.compile(r"-[0-9a-f]{16}$")
DIGEST_CHARS = 16


def safe_name(key: str) -> str:
    """A file name for a row's key, never the same for two keys (even on a file system that
    ignores case): the key itself when it is a plain lower-case name, else its plain
    characters and a digest of the whole key. A plain key that looks like such a name (ends in
    ``-`` and 16 hex digits) gets a digest of its own, so it cannot take another key's name."""
    plain = _UNSAFE.sub("_", key).strip("._") or "row"
    plain = plain[:SAFE_NAME_CHARS]
    if (plain == key and key == key.lower() and plain not in _RESERVED
            and not _DIGEST_SHAPED.search(key)):
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:DIGEST_CHARS]
    return f"{plain}-{digest}"


def row_key(number: int, values: Mapping[str, str], key_column: str | None) -> str:
    """A row's key: its ``key_column`` value without surrounding spaces, else its number."""
    if key_column is None:
        return str(number)
    return values.get(key_column, "").strip()


def folded_key(key: str) -> str:
    """What makes two keys the same row: case and Unicode form (NFC) do not count."""
    return unicodedata.normalize("NFC", key).casefold()


@dataclass(frozen=True, slots=True)
class DataRow:
    """One row: its key, where it starts in the file, every column's value as text, and the
    plan inputs it fills (columns that name an input, then ``-i`` values)."""

    key: str
    number: int  # 1-based, counting rows (not lines)
    line: int  # the file line the row starts on
    values: dict[str, str]
    inputs: dict[str, str]


@dataclass
class Dataset:
    """A checked dataset: what ``check`` learned, and the copy of the file it checked.

    ``key_column`` is None when rows are keyed by their number. ``input_columns`` are the
    columns that fill plan inputs; ``fixed_inputs`` are ``-i`` values given to every row.
    ``sha256`` is the digest of the bytes checked (and run).
    """

    path: Path
    format: Format
    rows_count: int
    columns: list[str]
    key_column: str | None
    input_columns: list[str]
    fixed_inputs: dict[str, str] = field(default_factory=dict)
    copy: IO[bytes] | None = field(default=None, repr=False)  # what check read, byte for byte
    sha256: str = ""

    def __post_init__(self) -> None:
        if self.copy is not None:  # the copy lives as long as the dataset
            weakref.finalize(self, self.copy.close)

    @property
    def label(self) -> str:
        return str(self.path)

    def rows(self) -> Iterator[DataRow]:
        """The rows that were checked, one at a time (each call starts again from the first).
        They are read from ``check``'s copy, never from the file again."""
        reader = _DataFileReader(self.path, self.format)
        source = self.copy.fileno() if self.copy is not None else None
        for raw in reader.records(source):
            if isinstance(raw, Problem):  # only if the copy itself was damaged
                raise InputError([raw])
            number, line, values = raw
            key = row_key(number, values, self.key_column)
            inputs = {c: values[c] for c in self.input_columns if values.get(c, "") != ""}
            yield DataRow(key, number, line, values, {**inputs, **self.fixed_inputs})


class _CopyReader(io.RawIOBase):
    """Reads the copy of a data file from the start, with a position of its own (``pread``), so
    several readers never disturb one another."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd, self.position = fd, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = os.pread(self.fd, len(buffer), self.position)
        buffer[:len(data)] = data
        self.position += len(data)
        return len(data)


class _Copying:
    """A binary file whose lines are copied to ``copy`` and digested as they are read."""

    def __init__(self, source: IO[bytes], copy: IO[bytes]) -> None:
        self.source, self.copy = source, copy
        self.digest = hashlib.sha256()

    def readline(self, limit: int = -1) -> bytes:
        data = self.source.readline(limit)
        self.copy.write(data)
        self.digest.update(data)
        return data


def dataset_format(path: Path) -> Format | None:
    suffix = path.suffix.lower()
    return "csv" if suffix == ".csv" else "jsonl" if suffix in (".jsonl", ".ndjson") else None


def check(path: Path | str, *, required: Sequence[str], optional: Iterable[str] = (),
          fixed: Mapping[str, str] | None = None, key: str | None = None) -> Dataset:
    """Read the whole file once and report every problem at once (``InputError``, each
    ``FILE:LINE: message — fix``): unreadable lines, bad values, missing required inputs,
    missing, empty or repeated keys, a name given both as a column and with ``-i``.

    ``required``/``optional`` are the plan's input names; ``fixed`` the ``-i`` values; ``key``
    the ``--key`` column (default: ``id`` if there is such a column, else the row number).
    """
    return _Checker(Path(path), list(required), set(optional), dict(fixed or {}), key).run()


# --- reading ------------------------------------------------------------------------------------

Record = tuple[int, int, dict[str, str]]  # row number, first line, values


class _DataFileReader:
    """Yields each record, or a ``Problem`` for one that cannot be read (and goes on with the
    next where the format allows: every JSONL line stands alone; a CSV file stops at the first
    line that breaks its quoting)."""

    def __init__(self, path: Path, fmt: Format) -> None:
        self.path, self.format = path, fmt
        self.file = str(path)
        self.header: list[str] = []
        self.header_problems: list[Problem] = []
        self.copying: IO[bytes] | None = None  # where to copy what is read, if anywhere
        self.copied: _Copying | None = None

    def problem(self, line: int, message: str, hint: str, code: str = "bad-data") -> Problem:
        return Problem(message, hint, code, file=self.file, line=line)

    def records(self, copy_of: int | None = None) -> Iterator[Record | Problem]:
        """The records of the file; with ``copy_of``, of the copy of it open on that fd.
        When ``copying`` is set, what is read is copied there too (see ``check``)."""
        try:
            if copy_of is not None:
                opened: Any = io.BufferedReader(_CopyReader(copy_of), 1 << 16)
            else:
                opened = self.path.open("rb")
            with opened as handle:
                source = handle if self.copying is None else _Copying(handle, self.copying)
                self.copied = source if isinstance(source, _Copying) else None
                if self.format == "csv":
                    yield from self._csv(source)
                else:
                    yield from self._jsonl(source)
        except OSError as exc:
            yield self.problem(1, f"cannot read the data file: {exc.strerror or exc}",
                               "check the path given to --data", "unreadable-data")

    def _lines(self, handle: Any) -> Iterator[tuple[int, str | Problem]]:
        """Numbered lines, decoded; a line that is too long or not UTF-8 is a ``Problem``."""
        number = 0
        while True:
            raw: bytes = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            number += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest of the line
                    raw = handle.readline(MAX_LINE_BYTES + 1)
                yield number, self.problem(
                    number, f"line is longer than {MAX_LINE_BYTES // 1024 // 1024} MiB",
                    "shorten it: a row's values belong in a few columns of text", "long-line")
                continue
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a byte-order mark, as spreadsheet programs write
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, self.problem(
                    number, f"line is not UTF-8 text (byte {exc.start + 1} of the line)",
                    "save the file as UTF-8", "not-utf8")

    # --- JSONL ---

    def _jsonl(self, handle: Any) -> Iterator[Record | Problem]:
        rows = 0
        for number, text in self._lines(handle):
            if isinstance(text, Problem):
                rows += 1
                yield text
                continue
            if not text.strip():
                continue  # blank lines (a trailing newline, say) are not rows
            rows += 1
            if rows > MAX_ROWS:
                yield self.problem(number, f"more than {MAX_ROWS:,} rows",
                                   "split the file into several datasets", "too-many-rows")
                return
            yield self._json_row(rows, number, text)

    def _json_row(self, row: int, line: int, text: str) -> Record | Problem:
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicates,
                              parse_constant=_no_constant)
        except _DuplicateName as exc:
            return self.problem(line, f"name {shown(exc.name)} appears twice in one object",
                                "keep one of them", "duplicate-column")
        except (ValueError, RecursionError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            column = exc.colno if isinstance(exc, json.JSONDecodeError) else None
            where = f" (column {column})" if column else ""
            return self.problem(line, f"not a JSON object: {reason}{where}",
                                "write one object per line, like "
                                '{"id": "acme", "brief": "Audit SOX"}', "bad-json")
        if not isinstance(data, dict):
            kind = _kind(data)
            return self.problem(line, f"line holds {kind}, not an object",
                                'write one object per line, like {"id": "acme", "brief": "..."}',
                                "bad-json")
        if len(data) > MAX_COLUMNS:
            return self.problem(line, f"more than {MAX_COLUMNS:,} names in one object",
                                "keep only the columns the plan needs", "too-many-columns")
        values: dict[str, str] = {}
        bad: list[str] = []
        for name, value in data.items():
            text_value = _scalar(value)
            if text_value is None:
                if value is not None:
                    bad.append(f"{shown(name)} holds {_kind(value)}")
                continue  # null: as if the name were absent
            values[name] = text_value
        if bad:
            return self.problem(line, f"{'; '.join(bad)}: values must be text, numbers or "
                                "true/false", "flatten it into separate names, or write it "
                                "as a JSON string", "nested-value")
        return row, line, values

    # --- CSV ---

    def _csv(self, handle: Any) -> Iterator[Record | Problem]:
        lines = self._lines(handle)
        problems: list[Problem] = []
        consumed = [0, 0]  # the last physical line read, and bytes since the record started

        def text_lines() -> Iterator[str]:
            for number, text in lines:
                consumed[0] = number
                if isinstance(text, Problem):
                    problems.append(text)
                    yield "\n"  # keep the line count; the row is reported as unreadable
                    continue
                consumed[1] += len(text)
                if consumed[1] > MAX_ROW_BYTES:
                    problems.append(self.problem(
                        number, f"a row longer than {MAX_ROW_BYTES // 1024 // 1024} MiB "
                        "(an unclosed quote?)", 'close every quoted field with "', "long-row"))
                    return
                yield text

        reader = csv.reader(text_lines(), strict=True)
        start = 1
        rows = 0
        try:
            for fields in reader:
                end = consumed[0]
                consumed[1] = 0
                if problems:
                    yield from problems
                    problems.clear()
                    start = end + 1
                    if not self.header and rows == 0:
                        return  # an unreadable header: nothing else can be read
                    continue
                if not self.header:
                    yield from self._take_header(fields, start)
                    if not self.header:
                        return
                elif not any(field.strip() for field in fields):
                    pass  # an empty line is not a row
                else:
                    rows += 1
                    if rows > MAX_ROWS:
                        yield self.problem(start, f"more than {MAX_ROWS:,} rows",
                                           "split the file into several datasets",
                                           "too-many-rows")
                        return
                    yield self._csv_row(rows, start, fields)
                start = end + 1
        except csv.Error as exc:
            yield from problems
            yield self.problem(consumed[0] or start, f"the CSV cannot be read from here: {exc}",
                               'quote fields holding commas, quotes or line breaks ("a, b"), '
                               'and double quotes inside them ("say ""hi""")', "bad-csv")
            return
        yield from problems
        if not self.header:
            yield self.problem(1, "the file is empty: no header row",
                               "write the column names on the first line, like: id,brief",
                               "empty-data")

    def _take_header(self, fields: list[str], line: int) -> Iterator[Problem]:
        names = [name.strip() for name in fields]
        if len(names) > MAX_COLUMNS:
            yield self.problem(line, f"more than {MAX_COLUMNS:,} columns",
                               "keep only the columns the plan needs", "too-many-columns")
            return
        seen: dict[str, int] = {}
        ok = True
        for position, name in enumerate(names, 1):
            if not name:
                ok = False
                yield self.problem(line, f"column {position} has no name in the header row",
                                   "name it, or remove the column", "unnamed-column")
            elif name in seen:
                ok = False
                yield self.problem(line, f"column {shown(name)} appears twice in the header "
                                   f"(columns {seen[name]} and {position})",
                                   "rename or remove one of them", "duplicate-column")
            else:
                seen[name] = position
        if ok:
            self.header = names

    def _csv_row(self, row: int, line: int, fields: list[str]) -> Record | Problem:
        if len(fields) != len(self.header):
            return self.problem(line, f"row has {len(fields)} values for {len(self.header)} "
                                "columns", "give every row one value per header column "
                                '(quote values that hold commas: "a, b")', "wrong-columns")
        return row, line, dict(zip(self.header, fields, strict=True))


class _DuplicateName(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, value in pairs:
        if name in data:
            raise _DuplicateName(name)
        data[name] = value
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _scalar(value: object) -> str | None:
    """A value as input text: strings as they are, numbers and booleans as JSON writes them."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return json.dumps(value) if math.isfinite(value) else None
    return None


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, float):
        return "a number too large for JSON"
    if value is None:
        return "null"
    return "a single value" if isinstance(value, (str, int, bool)) else type(value).__name__


# --- checking -----------------------------------------------------------------------------------


class _Checker:
    def __init__(self, path: Path, required: list[str], optional: set[str],
                 fixed: dict[str, str], key: str | None) -> None:
        self.path, self.required, self.optional = path, required, optional
        self.fixed, self.key = fixed, key
        self.file = str(path)
        self.problems: list[Problem] = []
        self.more = 0
        self.row_required: list[str] = []
        # Repeated keys, each with the index of its problem, told once the earlier rows are
        # known: (index, folded key, key, line).
        self.repeats: list[tuple[int, str, str, int]] = []

    def add(self, problem: Problem) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        else:
            self.more += 1

    def usage(self, message: str, hint: str, code: str) -> InputError:
        return InputError([Problem(message, hint, code, file="--data")])

    def run(self) -> Dataset:
        path = self.path
        fmt = dataset_format(path)
        if fmt is None:
            raise self.usage(f"{shown(str(path))} is neither .csv nor .jsonl",
                             "give a CSV file with a header row (rows.csv) or a JSON Lines "
                             "file with one object per line (rows.jsonl)", "bad-data-format")
        if not path.exists():
            raise self.usage(f"no data file {shown(str(path))}", "check the path given to --data",
                             "missing-data")
        if path.is_dir():
            raise self.usage(f"{shown(str(path))} is a directory", "give a .csv or .jsonl file",
                             "missing-data")
        # Unnamed: gone with the process, however it ends; it lives as long as the Dataset.
        copy = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            return self._read(path, fmt, copy)
        except BaseException:
            copy.close()
            raise

    def _read(self, path: Path, fmt: Format, copy: IO[bytes]) -> Dataset:
        reader = _DataFileReader(path, fmt)
        reader.copying = copy
        records = reader.records()
        known = [*self.required, *sorted(self.optional)]
        columns: list[str] = []
        column_set: set[str] = set()
        key_column = self.key
        keys: set[str] = set()  # folded keys: files need unique names
        rows = 0
        decided = False
        input_columns: list[str] = []
        for record in records:
            if isinstance(record, Problem):
                self.add(record)
                continue
            number, line, values = record
            if not decided:  # the first row (CSV: the header) decides the shape
                decided = True
                columns = reader.header or list(values)
                column_set = set(columns)
                key_column = self._decide_key(columns, fmt)
                input_columns = self._input_columns(columns, known, fmt)
                # A CSV column missing altogether is one problem, not one per row.
                self.row_required = [name for name in self.required if name not in self.fixed
                                     and (fmt == "jsonl" or name in column_set)]
            rows += 1
            if fmt == "jsonl":
                for name in values:
                    if name not in column_set:
                        column_set.add(name)
                        columns.append(name)
                        if name in known and name not in input_columns:
                            if name in self.fixed:
                                self.add(self._both(name, line))
                            input_columns.append(name)
            self._check_row(values, line, number, key_column, keys)
        if not decided and reader.header:  # a CSV file with a header and no rows
            columns = reader.header
            column_set = set(columns)
            key_column = self._decide_key(columns, fmt)
            input_columns = self._input_columns(columns, known, fmt)
        if rows == 0 and not self.problems:
            self.add(Problem("the file has no rows", "add one row per run of the plan",
                             "empty-data", file=self.file, line=1))
        if fmt == "csv" and reader.header:
            for name in self.required:
                if name not in column_set and name not in self.fixed:
                    self.add(Problem(
                        f"no column gives the plan's required input {shown(name)}",
                        self._column_hint(name, columns), "missing-input", file=self.file,
                        line=1))
        if self.repeats:
            copy.flush()
            self._tell_repeats(path, fmt, copy, key_column)
        if self.more:
            self.problems.append(Problem(f"... and {self.more:,} more problems", "fix the ones "
                                         "above and check again", "more", file=self.file))
        if self.problems:
            raise InputError(self.problems)
        copy.flush()
        digest = reader.copied.digest.hexdigest() if reader.copied is not None else ""
        return Dataset(path, fmt, rows, columns, key_column, input_columns, dict(self.fixed),
                       copy=copy, sha256=digest)

    def _decide_key(self, columns: list[str], fmt: Format) -> str | None:
        if self.key is None:
            return DEFAULT_KEY if DEFAULT_KEY in columns else None
        if self.key not in columns:
            guess = did_you_mean(self.key, columns)
            where = "a column of" if fmt == "csv" else "a name in the first row of"
            raise self.usage(f"--key {shown(self.key)} is not {where} {self.file}",
                             f"did you mean {guess!r}?" if guess
                             else f"the columns are: {', '.join(columns[:20])}", "bad-key")
        return self.key

    def _input_columns(self, columns: list[str], known: list[str], fmt: Format) -> list[str]:
        found = [name for name in columns if name in known]
        for name in found:
            if name in self.fixed:
                self.add(self._both(name, 1))
        return found

    def _both(self, name: str, line: int) -> Problem:
        return Problem(f"input {shown(name)} is given both by a column and by -i",
                       f"drop -i {name}=... to use each row's value, or drop the column",
                       "input-given-twice", file=self.file, line=line)

    def _column_hint(self, name: str, columns: list[str]) -> str:
        guess = did_you_mean(name, columns)
        if guess:
            return f"rename column {guess!r} to {name!r}, or pass -i {name}=..."
        return f"add a {name!r} column, or pass -i {name}=... to give every row the same value"

    def _check_row(self, values: dict[str, str], line: int, number: int, key_column: str | None,
                   keys: set[str]) -> None:
        missing = [name for name in self.row_required if values.get(name, "") == ""]
        if missing:
            empty = [name for name in missing if name in values]
            what = "an empty value" if len(empty) == len(missing) else "no value"
            names = ", ".join(shown(name) for name in missing)
            self.add(Problem(f"row has {what} for required input{'s' if len(missing) > 1 else ''}"
                             f" {names}", "fill it in, or remove the row", "missing-input",
                             file=self.file, line=line))
        key = row_key(number, values, key_column)
        if key_column is not None and not _usable_key(key, key_column):
            if key == "":
                self.add(Problem(f"row has no key (column {shown(key_column)} is "
                                 f"{'empty' if key_column in values else 'missing'})",
                                 "give every row a unique key, or choose another --key column",
                                 "missing-key", file=self.file, line=line))
            else:
                what = (f"is longer than {MAX_KEY_CHARS} characters" if len(key) > MAX_KEY_CHARS
                        else "holds control characters (line breaks, tabs, ...)")
                self.add(Problem(f"key {shown(key)} {what}", "keys name rows in results and "
                                 "files: use short plain text, or choose another --key column",
                                 "bad-key", file=self.file, line=line))
            return
        folded = folded_key(key)
        if folded in keys:
            if len(self.problems) < MAX_PROBLEMS:  # told by ``_tell_repeats``
                self.repeats.append((len(self.problems), folded, key, line))
            self.add(Problem(f"key {shown(key)} repeats an earlier key", "keys must be unique:"
                             " fix the value, or choose another --key column", "duplicate-key",
                             file=self.file, line=line))
            return
        keys.add(folded)

    def _tell_repeats(self, path: Path, fmt: Format, copy: IO[bytes],
                      key_column: str | None) -> None:
        """Say which earlier key each repeated one repeats, and on which line: the first row
        with that key, read again from the copy (only the keys themselves were kept)."""
        wanted = {folded for _, folded, _, _ in self.repeats}
        first: dict[str, tuple[str, int]] = {}
        for record in _DataFileReader(path, fmt).records(copy.fileno()):
            if isinstance(record, Problem):
                continue
            number, line, values = record
            key = row_key(number, values, key_column)
            folded = folded_key(key)
            if folded in wanted and folded not in first and _usable_key(key, key_column):
                first[folded] = (key, line)
                if len(first) == len(wanted):
                    break
        for index, folded, key, line in self.repeats:
            if folded not in first:  # cannot be: the copy is what was checked
                continue
            earlier, earlier_line = first[folded]
            self.problems[index] = Problem(
                f"key {shown(key)} repeats {_how_alike(earlier, key, earlier_line)}",
                "keys must be unique: fix the value, or choose another --key column",
                "duplicate-key", file=self.file, line=line)


def _usable_key(key: str, key_column: str | None) -> bool:
    """Whether ``_check_row`` takes ``key`` as a row's key (it reports the others)."""
    return key_column is None or (key != "" and len(key) <= MAX_KEY_CHARS
                                  and not _CONTROL.search(key))


def _how_alike(earlier: str, key: str, line: int) -> str:
    """Which earlier key a repeated one matches, and how, for the duplicate-key message."""
    if earlier == key:
        return f"the key of line {line}"
    if unicodedata.normalize("NFC", earlier) == unicodedata.normalize("NFC", key):
        why = "the same text, its accents encoded another way: composed vs decomposed"
    else:
        why = "keys differing only in case would share a file"
    return f"key {shown(earlier)} of line {line} ({why})"


__all__ = ["DataRow", "Dataset", "check", "dataset_format", "folded_key", "row_key", "safe_name"]
