"""Checks made before a document library sees a file: a regular file of bounded size, and for
Office files (zip packages of XML) bounded unpacked sizes and no DTD.

A zip bomb declares its huge sizes in the zip directory, which is read without unpacking
anything; Python's zipfile never unpacks past a part's declared size (a part that lies about it
fails its checksum), so the declared sizes bound the memory a library can use. Office XML never
has a DTD, so any ``<!DOCTYPE`` or ``<!ENTITY`` (the start of every entity-expansion bomb) is
refused outright, whatever the XML parser underneath would do with it."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

from dworkers.documents.limits import DocumentError, DocumentLimits, refuse

_MIB = 1024 * 1024
_DTD_MARKERS = tuple(marker.encode(encoding) for marker in ("<!DOCTYPE", "<!ENTITY")
                     for encoding in ("utf-8", "utf-16-le", "utf-16-be"))
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # encrypted OOXML and .doc/.xls/.ppt
_LONGEST_MARKER = max(len(marker) for marker in _DTD_MARKERS)


def size_text(size: int) -> str:
    """``size`` bytes for people: '1.5 MB', '820 KB', '12 bytes'."""
    if size >= _MIB:
        return f"{size / _MIB:.1f} MB"
    if size >= 1024:
        return f"{size // 1024} KB"
    return f"{size} bytes"


def read_document(path: Path, limits: DocumentLimits) -> bytes:
    """The bytes of the regular file ``path``, refused when it is something else (a folder, a
    pipe that would block, a device) or larger than ``limits.max_file_bytes``. Read once, so
    that the digest and the conversion see the same bytes."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise refuse(path, "no such file", "check the path", "no-such-file") from None
    except OSError as exc:
        raise refuse(path, f"cannot be opened: {exc.strerror}",
                     "check the path and its permissions", "unreadable-document") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise refuse(path, "is not a regular file", "name a document or a folder",
                         "not-a-file")
        if info.st_size > limits.max_file_bytes:
            raise refuse(path, f"is {size_text(info.st_size)}, over the "
                         f"{size_text(limits.max_file_bytes)} a document may have",
                         "split it, or pass only the part the plan needs", "document-too-large")
        try:
            data = handle.read(info.st_size)  # read(n) sets aside n bytes: never the limit
            grew = handle.read(1)
        except OSError as exc:
            raise refuse(path, f"cannot be read: {exc.strerror}", "check the file",
                         "unreadable-document") from None
    if grew:
        raise refuse(path, "changed while it was being read",
                     "pass it again once it is fully written", "unreadable-document")
    return data


def check_office_package(data: bytes, path: Path, limits: DocumentLimits) -> None:
    """Refuse an Office file (.docx, .xlsx, .pptx) that is not a zip, holds too many parts,
    unpacks too far (a zip bomb) or carries a DTD (an XML entity bomb)."""
    kind = path.suffix.lower()
    if data.startswith(_OLE_MAGIC):
        raise refuse(path, f"is password-protected (or an old binary Office file, not {kind})",
                     f"save an unprotected copy as {kind}", "encrypted-document")
    try:
        package = zipfile.ZipFile(io.BytesIO(data))
    except Exception:  # BadZipFile, NotImplementedError, struct.error...: damaged either way
        raise refuse(path, f"is not a {kind} file (not a zip package)",
                     f"open it and save it again as {kind}", "broken-document") from None
    with package:
        parts = package.infolist()
        if len(parts) > limits.max_zip_entries:
            raise refuse(path, f"holds {len(parts):,} parts, over the {limits.max_zip_entries:,}"
                         " a document may have", "save it again from its application",
                         "zip-bomb")
        total = sum(part.file_size for part in parts)
        if total > limits.max_unpacked_bytes:
            raise refuse(path, f"unpacks to {size_text(total)}, over the "
                         f"{size_text(limits.max_unpacked_bytes)} a document may have "
                         "(a zip bomb?)", "save it again from its application, or split it",
                         "zip-bomb")
        for part in parts:
            ratio = part.file_size / max(part.compress_size, 1)
            if part.file_size > _MIB and ratio > limits.max_packing_ratio:
                raise refuse(path, f"part {part.filename[:80]!r} unpacks {ratio:,.0f} times "
                             "its packed size (a zip bomb)", "do not use this file", "zip-bomb")
        for part in parts:
            if part.filename.lower().endswith((".xml", ".rels", ".vml")):
                _refuse_dtd(package, part, path)


def _refuse_dtd(package: zipfile.ZipFile, part: zipfile.ZipInfo, path: Path) -> None:
    """Scan one XML part, unpacked a chunk at a time, for the start of a DTD."""
    tail = b""
    try:
        with package.open(part) as stream:
            while chunk := stream.read(_MIB):
                window = tail + chunk
                if any(marker in window for marker in _DTD_MARKERS):
                    raise refuse(path, f"part {part.filename[:80]!r} declares a DTD or XML "
                                 "entities, which Office files never do (an entity bomb?)",
                                 "do not use this file", "xml-entities")
                tail = window[-_LONGEST_MARKER:]
    except DocumentError:
        raise
    except Exception as exc:  # a bad checksum, an encrypted part, an unknown compression...
        raise refuse(path, f"is damaged: part {part.filename[:80]!r} cannot be unpacked "
                     f"({exc})", "open it and save it again", "broken-document") from None
