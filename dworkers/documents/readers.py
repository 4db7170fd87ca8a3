"""Readers of the formats that need the docs extra: .pdf (pypdf), .docx (python-docx), .xlsx
(openpyxl) and .pptx (python-pptx). Each writes Markdown blocks to a ``MarkdownWriter``;
headings, lists, bold and italics are kept where the format has them, and every table becomes a
Markdown table, so each cell's text reaches the prompt.

The libraries are imported when a file of their kind is read, never before."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from dworkers.documents.limits import DocumentLimits, refuse, require
from dworkers.documents.markup import MarkdownWriter


def read_pdf(data: bytes, path: Path, writer: MarkdownWriter, limits: DocumentLimits) -> None:
    """Each page's text, after a ``[Page N]`` line when there are several (for citations). A PDF
    has no headings or tables of its own, only positioned text: a table's cells arrive in
    reading order."""
    pypdf = require("pypdf", "reading .pdf files", path)
    _quiet_pypdf()
    reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
    if reader.is_encrypted:
        try:
            opened = bool(reader.decrypt(""))  # only an owner password: readable as it is
        except Exception:  # a cipher pypdf needs another package for: as good as locked
            opened = False
        if not opened:
            raise refuse(path, "is encrypted (password-protected)",
                         "save or print an unprotected copy and pass that", "encrypted-document")
    count = len(reader.pages)
    if count > limits.max_pdf_pages:
        raise refuse(path, f"has {count:,} pages, over the {limits.max_pdf_pages:,} a document "
                     "may have", "split it, or pass only the pages the plan needs",
                     "document-too-large")
    found_text = False
    for number, page in enumerate(reader.pages, 1):
        text = page.extract_text() or ""
        found_text = found_text or bool(text.strip())
        writer.add(f"[Page {number}]\n\n{text}" if count > 1 else text)
    if not found_text:
        raise refuse(path, "has no text to read (a scan, or only images)",
                     "run text recognition (OCR) on it first", "no-text")


@lru_cache(maxsize=1)
def _quiet_pypdf() -> None:
    """pypdf logs what it repairs in a damaged file; without a handler of its own, Python
    would print that on the terminal, in the middle of dworkers' output."""
    logging.getLogger("pypdf").addHandler(logging.NullHandler())


def read_docx(data: bytes, path: Path, writer: MarkdownWriter, limits: DocumentLimits) -> None:
    """Paragraphs and tables in document order; heading and list styles become Markdown
    headings and list items."""
    docx = require("docx", "reading .docx files", path)
    from docx.table import Table

    document = docx.Document(io.BytesIO(data))
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            writer.add_table([cell.text for cell in row.cells] for row in block.rows)
        else:
            writer.add(_docx_paragraph(block))


def _docx_paragraph(paragraph: Any) -> str:
    pieces: list[tuple[str, bool, bool]] = []
    for item in paragraph.iter_inner_content():
        if hasattr(item, "address"):  # a hyperlink
            text = item.text
            pieces.append((f"[{text}]({item.address})" if item.address and text else text,
                           False, False))
        else:
            pieces.append((item.text, bool(item.bold), bool(item.italic)))
    text = formatted(pieces).strip()
    if not text:
        return ""
    style = paragraph.style.name if paragraph.style is not None else ""
    if style == "Title":
        return "# " + text
    level = style.removeprefix("Heading ")
    if level != style and level.isdigit():
        return "#" * min(max(int(level), 1), 6) + " " + text
    properties = paragraph._p.pPr
    numbering = properties.numPr if properties is not None else None
    if style.startswith("List") or numbering is not None:
        depth = 0
        if numbering is not None and numbering.ilvl is not None:
            depth = min(int(numbering.ilvl.val), 8)
        marker = "1." if "Number" in style else "-"
        return "   " * depth + marker + " " + text
    return text


def formatted(pieces: Iterable[tuple[str, bool, bool]]) -> str:
    """Runs of (text, bold, italic) as Markdown, neighbours of the same look merged so that
    ``**a****b**`` never appears, and spaces kept outside the markers."""
    merged: list[list[Any]] = []
    for text, bold, italic in pieces:
        if merged and merged[-1][1:] == [bold, italic]:
            merged[-1][0] += text
        else:
            merged.append([text, bold, italic])
    out = []
    for text, bold, italic in merged:
        core = text.strip()
        if core and (bold or italic):
            mark = "***" if bold and italic else "**" if bold else "*"
            lead, trail = text[: len(text) - len(text.lstrip())], text[len(text.rstrip()):]
            text = f"{lead}{mark}{core}{mark}{trail}"
        out.append(text)
    return "".join(out)


def read_xlsx(data: bytes, path: Path, writer: MarkdownWriter, limits: DocumentLimits) -> None:
    """Each worksheet under a ``## sheet name`` heading, as one table (the first non-blank row
    its header). Formulas give the value Excel last computed."""
    openpyxl = require("openpyxl", "reading .xlsx files", path)
    workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        for sheet in workbook.worksheets:
            # A stated size ("A1:XFD1048576") would pad every row to it; the cells themselves
            # say how wide the sheet is.
            sheet.reset_dimensions()
            writer.add(f"## {' '.join(str(sheet.title).split())}")
            writer.add_table(_sheet_rows(sheet.iter_rows(values_only=True), path, limits))
    finally:
        workbook.close()


def _sheet_rows(rows: Iterable[tuple[Any, ...]], path: Path,
                limits: DocumentLimits) -> Iterator[tuple[Any, ...]]:
    for count, row in enumerate(rows, 1):
        if count > limits.max_sheet_rows:
            raise refuse(path, f"has a sheet of more than {limits.max_sheet_rows:,} rows",
                         "save only the rows the plan needs", "document-too-large")
        if any(value is not None and str(value).strip() for value in row):
            yield row


def read_pptx(data: bytes, path: Path, writer: MarkdownWriter, limits: DocumentLimits) -> None:
    """Each slide under ``## Slide N: its title``: its text as list items (indented by level),
    its tables as tables, then its speaker notes."""
    pptx = require("pptx", "reading .pptx files", path)
    presentation = pptx.Presentation(io.BytesIO(data))
    for number, slide in enumerate(presentation.slides, 1):
        title_shape = slide.shapes.title
        title = " ".join(title_shape.text_frame.text.split()) if title_shape is not None else ""
        writer.add(f"## Slide {number}: {title}" if title else f"## Slide {number}")
        for shape in _slide_shapes(slide.shapes):
            if title_shape is not None and shape.shape_id == title_shape.shape_id:
                continue
            if getattr(shape, "has_table", False) and shape.has_table:
                writer.add_table([cell.text for cell in row.cells] for row in shape.table.rows)
            elif getattr(shape, "has_text_frame", False) and shape.has_text_frame:
                writer.add("\n".join(_slide_lines(shape.text_frame)))
        if slide.has_notes_slide:
            notes = slide.notes_slide.notes_text_frame
            if notes is not None and notes.text.strip():
                writer.add("Notes: " + notes.text.strip())


def _slide_shapes(shapes: Iterable[Any]) -> Iterator[Any]:
    """Every shape, the members of groups included."""
    for shape in shapes:
        members = getattr(shape, "shapes", None)
        if members is not None:
            yield from _slide_shapes(members)
        else:
            yield shape


def _slide_lines(frame: Any) -> Iterator[str]:
    for paragraph in frame.paragraphs:
        text = formatted((run.text, bool(run.font.bold), bool(run.font.italic))
                         for run in paragraph.runs).strip()
        if text:
            yield "  " * min(paragraph.level, 8) + "- " + " ".join(text.split())
