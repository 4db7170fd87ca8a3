"""Markdown built a block at a time within a size bound, and the readers that need only the
standard library: plain text and Markdown, CSV, and HTML (headings, paragraphs, lists, tables,
bold, italics and links survive; scripts and styles do not)."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterable, Sequence
from html.parser import HTMLParser
from pathlib import Path

from dworkers.documents.limits import DocumentLimits, refuse


class MarkdownWriter:
    """A document's Markdown, one block at a time; refuses the document as soon as its text
    passes ``limit`` characters, before the rest is converted."""

    def __init__(self, path: Path, limits: DocumentLimits) -> None:
        self._path, self._limit = path, limits.max_markdown_chars
        self._seconds = limits.max_seconds
        self._deadline = time.monotonic() + limits.max_seconds
        self._blocks: list[str] = []
        self._size = 0

    def charge(self, characters: int) -> None:
        """Count ``characters`` more towards the limit (before they are built), and stop a
        conversion that has run out of time."""
        if time.monotonic() > self._deadline:
            raise refuse(self._path, f"took more than {self._seconds:g} s to convert",
                         "pass a smaller or simpler file (is it a decompression bomb?)",
                         "document-too-slow")
        self._size += characters
        if self._size > self._limit:
            raise refuse(self._path, f"converts to more than {self._limit:,} characters of text",
                         "split it, or pass only the part the plan needs", "document-too-large")

    def add(self, block: str) -> None:
        block = block.strip("\n")
        self.charge(len(block) + 2 if block.strip() else 0)
        if block.strip():
            self._blocks.append(block)

    def add_table(self, rows: Iterable[Sequence[object]]) -> None:
        """A Markdown table of ``rows`` (the first is the header); every cell's text kept, on
        one line, with its pipes escaped."""
        kept: list[list[str]] = []
        for row in rows:
            cells = [table_cell(value) for value in row]
            while cells and not cells[-1]:
                cells.pop()
            if cells:
                self.charge(sum(len(cell) + 3 for cell in cells) + 2)
                kept.append(cells)
        # Columns empty in every row are left out: a sheet's one far-off cell must not
        # make every row thousands of cells wide.
        used = sorted({index for cells in kept for index, cell in enumerate(cells) if cell})
        if not used:
            return
        kept = [[cells[index] if index < len(cells) else "" for index in used]
                for cells in kept]
        width = len(used)
        lines = []
        for index, cells in enumerate(kept):
            lines.append("| " + " | ".join(cells) + " |")
            if index == 0:
                lines.append("|" + " --- |" * width)
        self._blocks.append("\n".join(lines))

    def text(self) -> str:
        return "\n\n".join(self._blocks) + "\n" if self._blocks else ""


def table_cell(value: object) -> str:
    """A value as the text of one Markdown table cell."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    return " ".join(text.split()).replace("|", "\\|")


def decode_text(data: bytes) -> str:
    """Text of a file whose encoding is not declared: UTF-16 with a byte-order mark, UTF-8 (with
    or without one), else Windows-1252, which every byte sequence decodes as."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def read_plain(data: bytes, path: Path, writer: MarkdownWriter,
               limits: DocumentLimits) -> None:
    """.txt and .md: the text itself."""
    writer.add(decode_text(data))


def read_csv(data: bytes, path: Path, writer: MarkdownWriter,
             limits: DocumentLimits) -> None:
    """.csv: one table, the first row its header; the delimiter (, ; tab |) is guessed."""
    text = decode_text(data)
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(text[:16_384], ",;\t|")
    except csv.Error:
        dialect = csv.excel
    try:
        writer.add_table(csv.reader(io.StringIO(text, newline=""), dialect))
    except csv.Error as exc:
        raise refuse(path, f"is not valid CSV: {exc}", "save it again as CSV",
                     "broken-document") from None


def read_html(data: bytes, path: Path, writer: MarkdownWriter,
              limits: DocumentLimits) -> None:
    """.html/.htm: the page's text as Markdown."""
    parser = _HtmlToMarkdown(writer)
    parser.feed(decode_text(data))
    parser.close()


_SKIPPED = {"script", "style", "template", "noscript", "svg", "title", "iframe", "object",
            "canvas", "select"}
_BREAKS = {"p", "div", "section", "article", "header", "footer", "main", "nav", "aside", "form",
           "figure", "figcaption", "address", "dl", "dt", "dd", "center", "details", "summary"}
_EMPHASIS = {"strong": "**", "b": "**", "em": "*", "i": "*", "code": "`"}


class _HtmlToMarkdown(HTMLParser):
    """An HTML page's text as Markdown blocks. Tags it does not know only separate words."""

    def __init__(self, writer: MarkdownWriter) -> None:
        super().__init__(convert_charrefs=True)
        self._writer = writer
        self._words: list[str] = []
        self._skipping: list[str] = []
        self._heading = 0
        self._lists: list[list[int]] = []  # [ordered (0/1), items so far] per open list
        self._item_marker = False
        self._quotes = 0
        self._pre: list[str] | None = None
        self._links: list[str] = []
        self._tables: list[list[list[str]]] = []
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skipping:
            if tag == self._skipping[-1]:
                self._skipping.append(tag)
            return
        if tag in _SKIPPED:
            self._skipping.append(tag)
        elif tag in _EMPHASIS:
            self._words.append(_EMPHASIS[tag])
        elif tag == "a":
            href = dict(attrs).get("href") or ""
            linked = href.startswith(("http://", "https://", "mailto:"))
            self._links.append(href if linked else "")
            if linked:
                self._words.append("[")
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self._words.append(f" [image: {alt}] ")
        elif tag == "br":
            self._words.append(" " if self._in_cell else "\n")
        elif self._in_cell and tag not in ("td", "th", "tr", "table"):
            self._words.append(" ")
        else:
            self._open_block(tag)

    def _open_block(self, tag: str) -> None:
        self._flush()
        if len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self._heading = int(tag[1])
        elif tag in ("ul", "ol"):
            self._lists.append([1 if tag == "ol" else 0, 0])
        elif tag == "li" and self._lists:
            self._lists[-1][1] += 1
            self._item_marker = True
        elif tag == "blockquote":
            self._quotes += 1
        elif tag == "pre":
            self._pre = []
        elif tag == "hr":
            self._writer.add("---")
        elif tag == "table":
            self._tables.append([])
        elif tag == "tr" and self._tables:
            self._tables[-1].append([])
        elif tag in ("td", "th") and self._tables:
            self._in_cell = True

    def handle_endtag(self, tag: str) -> None:
        if self._skipping:
            if tag == self._skipping[-1]:
                self._skipping.pop()
            return
        if tag in _EMPHASIS:
            self._words.append(_EMPHASIS[tag])
        elif tag == "a" and self._links:
            href = self._links.pop()
            if href:
                self._words.append(f"]({href})")
        elif tag in ("td", "th") and self._in_cell and self._tables:
            cell, self._words, self._in_cell = "".join(self._words), [], False
            if self._tables[-1]:
                self._tables[-1][-1].append(" ".join(cell.split()))
        elif self._in_cell and tag not in ("tr", "table"):
            self._words.append(" ")
        else:
            self._close_block(tag)

    def _close_block(self, tag: str) -> None:
        self._flush()
        if len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self._heading = 0
        elif tag in ("ul", "ol") and self._lists:
            self._lists.pop()
        elif tag == "blockquote":
            self._quotes = max(self._quotes - 1, 0)
        elif tag == "pre" and self._pre is not None:
            code = "".join(self._pre).strip("\n").replace("```", "` ` `")
            self._pre = None
            self._writer.add(f"```\n{code}\n```")
        elif tag == "table" and self._tables:
            self._writer.add_table(self._tables.pop())

    def handle_data(self, data: str) -> None:
        if self._skipping:
            return
        if self._pre is not None:
            self._pre.append(data)
        else:
            self._words.append(data)

    def close(self) -> None:
        super().close()
        self._in_cell = False
        self._flush()
        while self._tables:
            self._writer.add_table(self._tables.pop())

    def _flush(self) -> None:
        if self._in_cell:
            return  # a cell's text stays in the cell
        lines = [" ".join(line.split()) for line in "".join(self._words).split("\n")]
        self._words = []
        text = "  \n".join(line for line in lines if line)
        if not text:
            return
        if self._heading:
            text = "#" * self._heading + " " + text.replace("  \n", " ")
        elif self._lists:
            depth = "   " * (len(self._lists) - 1)
            ordered, count = self._lists[-1]
            marker = (f"{count}." if ordered else "-") if self._item_marker else " "
            self._item_marker = False
            text = depth + marker + " " + text
        if self._quotes:
            text = "\n".join("> " * self._quotes + line for line in text.split("\n"))
        self._writer.add(text)
