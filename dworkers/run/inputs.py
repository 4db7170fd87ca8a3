"""``--input`` values of ``dworkers run``: ``NAME=VALUE`` or ``NAME=@file`` (a pipe or FIFO too,
never waited on for long), checked against the inputs the plan takes. A document
(``NAME=@report.pdf``) or a folder of them (``NAME=@evidence/``) is converted to Markdown by
``dworkers.documents``; every file read is noted, for the run's history."""

from __future__ import annotations

import hashlib
import os
import select
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dworkers.errors import InputError, Problem, ProblemsError, did_you_mean, shown

MAX_INPUT_FILE_BYTES = 10 * 1024 * 1024
INPUT_PIPE_WAIT = 10.0  # seconds an --input NAME=@pipe is waited on, at most
PLAIN_SUFFIXES = ("", ".txt", ".md", ".markdown")
"""Read as they are (a pipe too), not converted: their text is the value."""


@dataclass(frozen=True, slots=True)
class FileRead:
    """One file a run read for an input: what its history records."""

    input: str
    name: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, object]:
        return {"input": self.input, "name": self.name, "size": self.size,
                "sha256": self.sha256}


def input_file_text(name: str, path: Path, files: list[FileRead]) -> str:
    """The value of input ``name`` read from ``path``: a document (.pdf .docx .xlsx .pptx
    .html .csv) or a folder of them as Markdown, any other file (.txt, .md, .yaml, a pipe...)
    as its text, as before documents were read. Notes each file read in ``files``. Raises
    ``DocumentError`` (an ``InputError``) for a document that cannot be used, ``OSError`` or
    ``ValueError`` for an unreadable plain file."""
    from dworkers.documents import convert_path, is_document

    if path.is_dir() or (is_document(path) and path.suffix.lower() not in PLAIN_SUFFIXES):
        converted = convert_path(path)
        files.extend(FileRead(name, file.name, file.size, file.digest)
                     for file in converted.files)
        return converted.markdown
    text = read_input_file(path)
    data = text.encode("utf-8")
    if path.is_file():  # a pipe is not a file a later run could read again
        files.append(FileRead(name, path.name, len(data), hashlib.sha256(data).hexdigest()))
    return text


def parse_inputs(pairs: list[str], files: list[FileRead] | None = None) -> dict[str, str]:
    """``k=v`` pairs; ``k=@path`` reads the value from a file (a document or a folder of them
    converted to Markdown), noting it in ``files``. Every bad pair reported."""
    files = files if files is not None else []
    values: dict[str, str] = {}
    problems = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            problems.append(Problem(f"input {pair!r} is not NAME=VALUE",
                                    'write --input brief="..." or --input brief=@brief.txt',
                                    "bad-input", file="--input"))
            continue
        if value.startswith("@@"):  # a literal '@'
            value = value[1:]
        elif value.startswith("@"):
            path = Path(value[1:]).expanduser()
            try:
                value = input_file_text(name, path, files)
            except ProblemsError as exc:  # a document refused: located at its path
                problems.extend(exc.problems)
                continue
            except (OSError, ValueError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                problems.append(Problem(f"cannot read input {name!r} from {str(path)!r}: {reason}",
                                        "check the path after '@' (use '@@' to start a value "
                                        "with a literal '@')", "bad-input", file="--input"))
                continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # bytes the terminal could not decode
            problems.append(Problem(f"input {name!r} is not valid text (undecodable bytes)",
                                    "pass UTF-8 text, or read it from a file with NAME=@file",
                                    "bad-input", file="--input"))
            continue
        values[name] = value
    if problems:
        raise InputError(problems)
    return values


def read_input_file(path: Path, wait: float | None = None) -> str:
    """The text of an ``--input NAME=@path`` file. A pipe (``@/dev/stdin``, ``@<(cmd)``, a
    FIFO) is read too, but never waited on for more than ``wait`` seconds in all, so a FIFO
    nobody writes to cannot hang the command."""
    wait = INPUT_PIPE_WAIT if wait is None else wait
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # opening a FIFO never waits
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ValueError("it is a directory")
        if stat.S_ISREG(mode):
            os.set_blocking(fd, True)
            raw = _read_bounded(fd, None)
        else:
            raw = _read_bounded(fd, time.monotonic() + wait)
    except TimeoutError as exc:
        raise ValueError(f"{exc} after {wait:g}s") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_INPUT_FILE_BYTES:
        raise ValueError("larger than 10 MiB")
    return raw.decode("utf-8")


def _read_bounded(fd: int, deadline: float | None) -> bytes:
    """Up to MAX_INPUT_FILE_BYTES + 1 bytes from ``fd``. A non-blocking ``fd`` (a pipe) is
    waited on until ``deadline`` at most, for a writer to come and then to finish."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_INPUT_FILE_BYTES:
        try:
            chunk = os.read(fd, min(1 << 20, MAX_INPUT_FILE_BYTES + 1 - size))
        except BlockingIOError:  # a writer, who has not finished
            chunk = None
        if chunk:
            chunks.append(chunk)
            size += len(chunk)
            continue
        if chunk == b"" and (chunks or deadline is None):
            break  # the end of the file, or the writer closed the pipe
        left = (deadline or 0) - time.monotonic()
        if left <= 0:
            raise TimeoutError("still no end of input" if chunks or chunk is None
                               else "nothing to read: no writer")
        if chunk is None:
            select.select([fd], [], [], left)
        else:  # no writer yet: a FIFO reads as ended until one opens it
            time.sleep(min(0.05, left))
    return b"".join(chunks)


def check_input_names(given: Mapping[str, str], required: list[str], optional: list[str]) -> None:
    """Refuse ``-i`` names the plan does not take (every one reported, with a guess)."""
    known = [*required, *optional]
    problems = []
    for name in given:
        if name not in known:
            guess = did_you_mean(name, known)
            problems.append(Problem(f"unknown input {shown(name)}",
                                    f"did you mean {guess!r}?" if guess
                                    else f"this plan takes: {', '.join(known) or 'no inputs'}",
                                    "unknown-input", file="--input"))
    if problems:
        raise InputError(problems)


__all__ = ["FileRead", "check_input_names", "input_file_text", "parse_inputs", "read_input_file"]
