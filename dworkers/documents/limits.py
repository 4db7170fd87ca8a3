"""How much of a document dworkers reads, and the errors it raises when a file is refused.

A document is untrusted input: every bound here is checked before the file is parsed, so a
hostile file is refused in bounded time and memory with a located message (exit 2)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from dworkers.errors import DworkersError, InputError, Problem

DOCS_EXTRA_HINT = "install the docs extra: pip install 'dworkers[docs]'"


@dataclass(frozen=True, slots=True)
class DocumentLimits:
    """Bounds on what one conversion may read. The defaults fit any document a model's context
    window could hold many times over."""

    max_file_bytes: int = 100 * 1024 * 1024
    """A file larger than this is refused before it is opened."""
    max_markdown_chars: int = 8_000_000
    """A document whose text passes this is refused while it converts (no context window holds
    two million tokens)."""
    max_zip_entries: int = 10_000
    max_unpacked_bytes: int = 512 * 1024 * 1024
    """The declared uncompressed size of every part of a .docx/.xlsx/.pptx together."""
    max_packing_ratio: int = 200
    """A part that unpacks to more than this many times its packed size (and over 1 MiB) is a
    zip bomb: real Office XML packs 5 to 30 times."""
    max_seconds: float = 120.0
    """A document still converting after this long is refused (checked between its blocks):
    a small file can hide a huge amount of work, such as PDF streams that unpack a
    thousandfold."""
    max_pdf_pages: int = 5_000
    max_sheet_rows: int = 1_100_000
    """Rows an .xlsx may walk through, blank ones included (Excel's own limit is 1,048,576)."""
    max_folder_files: int = 500
    max_folder_bytes: int = 512 * 1024 * 1024
    max_folder_depth: int = 16


DEFAULT_LIMITS = DocumentLimits()


class DocumentError(InputError):
    """A document that cannot be used as an input: unreadable, hostile, too large, or of a kind
    dworkers does not convert. Renders as ``FILE: what is wrong — how to fix it``."""


def refuse(path: Path | str, message: str, hint: str, code: str = "bad-document") -> DocumentError:
    """The error for one refused document, located at its path."""
    return DocumentError([Problem(message, hint, code, str(path))])


class MissingExtraError(DworkersError):
    """A document library of the ``docs`` extra is not installed."""


def require(module: str, purpose: str, path: Path | str | None = None) -> ModuleType:
    """``module`` imported, or an error naming the extra that brings it: ``purpose`` says what
    needed it ("reading .pdf files", "writing report.docx")."""
    try:
        return importlib.import_module(module)
    except ImportError:
        message = f"{purpose} needs the docs extra, which is not installed"
        if path is not None:
            raise refuse(path, message, DOCS_EXTRA_HINT, "missing-extra") from None
        raise MissingExtraError(f"{message} — {DOCS_EXTRA_HINT}") from None
