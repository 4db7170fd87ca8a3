"""Files and folders to Markdown: ``to_markdown``, ``folder_to_markdown`` and ``convert_path``.

Each file is read once (bounded), its SHA-256 digest taken, and its Markdown looked up in the
conversion cache before any library is asked to parse it. What comes out has had escape
sequences and control characters removed (``dworkers.text.clean``), since it may be printed as
well as sent to a model."""

from __future__ import annotations

import errno
import hashlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from dworkers.documents.cache import ConversionCache
from dworkers.documents.limits import (
    DEFAULT_LIMITS,
    DocumentError,
    DocumentLimits,
    refuse,
    require,
)
from dworkers.documents.markup import MarkdownWriter, read_csv, read_html, read_plain
from dworkers.documents.safety import check_office_package, read_document, size_text
from dworkers.text import clean, one_line

CONVERTER_REVISION = "1"
"""Bumped whenever dworkers' own readers change what they write, so older cache entries are
not used."""

Reader = Callable[[bytes, Path, MarkdownWriter, DocumentLimits], None]


def _office_reader(name: str) -> Reader:
    """The reader ``name`` of ``readers.py``, imported on first use: that module is only
    needed for the formats of the docs extra."""

    def read(data: bytes, path: Path, writer: MarkdownWriter, limits: DocumentLimits) -> None:
        from dworkers.documents import readers

        reader: Reader = getattr(readers, name)
        reader(data, path, writer, limits)

    return read


# suffix → (reader, the distribution it needs (None: standard library), its import name)
_FORMATS: dict[str, tuple[Reader, str | None, str]] = {
    ".pdf": (_office_reader("read_pdf"), "pypdf", "pypdf"),
    ".docx": (_office_reader("read_docx"), "python-docx", "docx"),
    ".xlsx": (_office_reader("read_xlsx"), "openpyxl", "openpyxl"),
    ".pptx": (_office_reader("read_pptx"), "python-pptx", "pptx"),
    ".html": (read_html, None, ""),
    ".htm": (read_html, None, ""),
    ".csv": (read_csv, None, ""),
    ".md": (read_plain, None, ""),
    ".markdown": (read_plain, None, ""),
    ".txt": (read_plain, None, ""),
}
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(_FORMATS)
_ZIPPED = (".docx", ".xlsx", ".pptx")
_KINDS_HINT = "pass one of: .pdf .docx .xlsx .pptx .html .csv .md .txt (or a folder of them)"


@dataclass(frozen=True, slots=True)
class DocumentFile:
    """What a run's history records about a file it read."""

    name: str
    size: int
    digest: str
    """SHA-256 of the file's bytes, hexadecimal."""


@dataclass(frozen=True, slots=True)
class ConvertedDocument:
    """One file as Markdown. ``from_cache`` tells whether it was converted this time or taken
    from the conversion cache."""

    name: str
    """The file's name (in a folder: its path relative to the folder, with '/')."""
    path: Path
    size: int
    digest: str
    markdown: str
    from_cache: bool

    @property
    def files(self) -> tuple[DocumentFile, ...]:
        return (DocumentFile(self.name, self.size, self.digest),)

    @property
    def converted(self) -> int:
        """How many files were converted (not taken from the cache): 0 or 1."""
        return 0 if self.from_cache else 1


@dataclass(frozen=True, slots=True)
class ConvertedFolder:
    """Every supported file of a folder as one Markdown text, each under a ``# name`` heading
    in sorted order. ``skipped`` names the files of other kinds, which were not read."""

    path: Path
    documents: tuple[ConvertedDocument, ...]
    skipped: tuple[str, ...]

    @property
    def markdown(self) -> str:
        return "\n".join(f"# {document.name}\n\n{document.markdown}"
                         for document in self.documents)

    @property
    def files(self) -> tuple[DocumentFile, ...]:
        return tuple(file for document in self.documents for file in document.files)

    @property
    def converted(self) -> int:
        return sum(document.converted for document in self.documents)


def is_document(path: Path | str) -> bool:
    """Whether ``path`` names a kind of file ``to_markdown`` converts (by its suffix)."""
    return Path(path).suffix.lower() in _FORMATS


def convert_path(path: Path | str, *, limits: DocumentLimits = DEFAULT_LIMITS,
                 cache: ConversionCache | None = None) -> ConvertedDocument | ConvertedFolder:
    """A file (``to_markdown``) or a folder (``folder_to_markdown``) as Markdown."""
    path = Path(path)
    if path.is_dir():
        return folder_to_markdown(path, limits=limits, cache=cache)
    return to_markdown(path, limits=limits, cache=cache)


def to_markdown(path: Path | str, *, limits: DocumentLimits = DEFAULT_LIMITS,
                cache: ConversionCache | None = None, name: str | None = None,
                ) -> ConvertedDocument:
    """The file ``path`` (.pdf .docx .xlsx .pptx .html .csv .md .txt) as Markdown, from the
    cache when the same bytes were converted before by the same converter version. Raises
    ``DocumentError`` (a located ``InputError``) for any file that cannot be used."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        kind = f"a {suffix} file" if suffix else "a file without an extension"
        raise refuse(path, f"is {kind}, which dworkers does not convert", _KINDS_HINT,
                     "unsupported-document")
    reader, distribution, module = _FORMATS[suffix]
    version = CONVERTER_REVISION
    if distribution is not None:
        try:  # the version, not the module: a cached document needs no library at all
            version += f"-{distribution}-{metadata.version(distribution)}"
        except metadata.PackageNotFoundError:
            require(module, f"reading {suffix} files", path)
            raise  # installed without its metadata: not an install dworkers supports
    data = read_document(path, limits)
    digest = hashlib.sha256(data).hexdigest()
    cache = cache if cache is not None else ConversionCache()
    document_name = name if name is not None else path.name
    cached = cache.get(digest, suffix, version)
    if cached is not None and len(cached) <= limits.max_markdown_chars:
        return ConvertedDocument(document_name, path, len(data), digest, cached, True)
    if distribution is not None:
        require(module, f"reading {suffix} files", path)
    if suffix in _ZIPPED:
        check_office_package(data, path, limits)
    writer = MarkdownWriter(path, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # libraries warn about files, not to users
            reader(data, path, writer, limits)
    except DocumentError:
        raise
    except Exception as exc:
        # Document libraries raise anything at all on a malformed file (KeyError, struct.error,
        # RecursionError...): each is this file's problem, not a crash.
        detail = one_line(str(exc))[:160] or type(exc).__name__
        raise refuse(path, f"cannot be read as a {suffix} file ({detail})",
                     f"open it and save it again as {suffix}", "broken-document") from None
    markdown = clean(writer.text())
    if not markdown.isprintable() and any("\ud800" <= c <= "\udfff" for c in markdown):
        markdown = markdown.encode("utf-8", "replace").decode("utf-8")
    cache.put(digest, suffix, version, markdown)
    return ConvertedDocument(document_name, path, len(data), digest, markdown, False)


def folder_to_markdown(folder: Path | str, *, limits: DocumentLimits = DEFAULT_LIMITS,
                       cache: ConversionCache | None = None) -> ConvertedFolder:
    """Every supported file under ``folder`` (its subfolders too, hidden files and Office lock
    files left out), converted in sorted order. Bounded in count, total size and depth; a
    symbolic link that loops back is refused."""
    folder = Path(folder)
    found, skipped = _folder_files(folder, limits)
    if not found:
        raise refuse(folder, "holds no document dworkers can read", _KINDS_HINT, "no-documents")
    total = 0
    for _, path in found:
        try:
            total += path.stat().st_size
        except OSError:
            continue  # reported by to_markdown, with the reason
        if total > limits.max_folder_bytes:
            raise refuse(folder, f"holds more than {size_text(limits.max_folder_bytes)} of "
                         "documents", "pass a smaller folder, or only the files the plan needs",
                         "folder-too-large")
    cache = cache if cache is not None else ConversionCache()
    documents: list[ConvertedDocument] = []
    characters = 0
    for relative, path in found:
        document = to_markdown(path, limits=limits, cache=cache, name=relative)
        characters += len(document.markdown)
        if characters > limits.max_markdown_chars:
            raise refuse(folder, f"converts to more than {limits.max_markdown_chars:,} "
                         "characters of text", "pass only the files the plan needs",
                         "folder-too-large")
        documents.append(document)
    return ConvertedFolder(folder, tuple(documents), tuple(skipped))


def _folder_files(folder: Path, limits: DocumentLimits,
                  ) -> tuple[list[tuple[str, Path]], list[str]]:
    """(relative name, path) of each supported file, sorted by name, and the names of the
    others."""
    found: list[tuple[str, Path]] = []
    skipped: list[str] = []
    entries_seen = 0

    def walk(directory: Path, relative: str, ancestors: frozenset[tuple[int, int]]) -> None:
        nonlocal entries_seen
        try:
            info = directory.stat()
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _loop(directory) from None
            raise refuse(directory, f"cannot be read: {exc.strerror}",
                         "check the folder and its permissions", "unreadable-document") from None
        identity = (info.st_dev, info.st_ino)
        if identity in ancestors:
            raise _loop(directory)
        if len(ancestors) >= limits.max_folder_depth:
            raise refuse(directory, f"is more than {limits.max_folder_depth} folders deep",
                         "pass a shallower folder", "folder-too-deep")
        inside = ancestors | {identity}
        for entry in entries:
            entries_seen += 1
            if entries_seen > limits.max_folder_files * 20:
                raise refuse(folder, "holds too many files to look through",
                             "pass a smaller folder", "folder-too-large")
            if entry.name.startswith((".", "~$")):
                continue
            name = f"{relative}{entry.name}"
            path = Path(entry.path)
            try:
                is_folder, is_file = entry.is_dir(), entry.is_file()
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise _loop(path) from None
                raise refuse(path, f"cannot be read: {exc.strerror}",
                             "check the file and its permissions",
                             "unreadable-document") from None
            if is_folder:
                walk(path, f"{name}/", inside)
            elif is_file and is_document(path):
                found.append((name, path))
                if len(found) > limits.max_folder_files:
                    raise refuse(folder, f"holds more than {limits.max_folder_files} documents",
                                 "pass a smaller folder, or only the files the plan needs",
                                 "folder-too-large")
            else:
                skipped.append(name)

    walk(folder, "", frozenset())
    found.sort(key=lambda item: item[0])
    return found, skipped


def _loop(path: Path) -> DocumentError:
    return refuse(path, "is a symbolic link that loops back into its own folder",
                  "remove the link, or pass the folder it points to", "symlink-loop")
