"""Converted documents kept on disk, keyed by the file's content digest and the converter's
version, so that forty runs over one 200-page PDF convert it once.

Entries live in ``<data dir>/documents/`` (``DWORKERS_HOME`` moves it). A cache that cannot be
read or written is no error: the document is converted again."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from dworkers.files import data_dir, write_atomic

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


class ConversionCache:
    """Markdown of converted documents by (digest, kind, converter version)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else data_dir() / "documents"

    def _entry(self, digest: str, kind: str, version: str) -> Path:
        name = _UNSAFE.sub("_", f"{digest}{kind}.{version}.md")
        return self.root / digest[:2] / name

    def get(self, digest: str, kind: str, version: str) -> str | None:
        try:
            return self._entry(digest, kind, version).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def put(self, digest: str, kind: str, version: str, markdown: str) -> None:
        # A read-only or full disk costs a conversion next time, nothing more.
        with contextlib.suppress(OSError):
            write_atomic(self._entry(digest, kind, version), markdown, durable=False)
