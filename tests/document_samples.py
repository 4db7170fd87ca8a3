"""Sample documents made on the spot for the document tests and benchmarks: ordinary ones with
headings, lists and tables in each format, and hostile ones (zip bombs, an XML entity bomb, an
encrypted PDF). Each is written with the same libraries a user's office tools would produce."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

from dworkers.text import clean

POLICY_CELL = "Quarterly access review"  # a table cell whose text must reach the prompt


def make_pdf(path: Path, pages: list[list[str]]) -> Path:
    """A PDF with one page per list of lines."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen.canvas import Canvas

    canvas = Canvas(str(path), pagesize=A4)
    for lines in pages:
        y = 800
        for line in lines:
            canvas.drawString(60, y, line)
            y -= 16
        canvas.showPage()
    canvas.save()
    return path


def make_encrypted_pdf(path: Path) -> Path:
    import pypdf

    plain = make_pdf(path.with_name("plain-" + path.name), [["Secret board minutes"]])
    writer = pypdf.PdfWriter(clone_from=str(plain))
    writer.encrypt(user_password="open sesame", owner_password="owner", algorithm="RC4-128")
    with path.open("wb") as handle:
        writer.write(handle)
    return path


def make_docx(path: Path) -> Path:
    """A policy: title, headings, bold and italic runs, bullet and numbered lists, a table."""
    import docx

    document = docx.Document()
    document.add_heading("Access Control Policy", 0)
    document.add_heading("Scope", 1)
    paragraph = document.add_paragraph("Applies to ")
    paragraph.add_run("all staff").bold = True
    paragraph.add_run(" and ")
    paragraph.add_run("contractors").italic = True
    document.add_heading("Rules", 2)
    document.add_paragraph("Unique accounts", style="List Bullet")
    document.add_paragraph("Request access", style="List Number")
    table = document.add_table(rows=2, cols=3)
    for cell, text in zip(table.rows[0].cells, ["Control", "Owner", "Frequency"], strict=True):
        cell.text = text
    for cell, text in zip(table.rows[1].cells, ["AC-2", "CISO", POLICY_CELL], strict=True):
        cell.text = text
    document.save(str(path))
    return path


def make_xlsx(path: Path, rows: int = 3) -> Path:
    """A control matrix: a header and ``rows`` rows on one sheet, and a second sheet."""
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "Controls"
    sheet.append(["ID", "Control", "Owner", "Status"])
    for index in range(1, rows + 1):
        sheet.append([f"C-{index}", f"Control number {index}", "CISO", "effective"])
    workbook.create_sheet("Findings").append(["Finding", POLICY_CELL])
    workbook.save(str(path))
    return path


def make_pptx(path: Path) -> Path:
    """A steering deck: a titled slide with nested bullets and notes, and a slide with a table."""
    import pptx
    from pptx.util import Inches

    deck = pptx.Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[1])
    slide.shapes.title.text = "Q3 steering"
    frame = slide.placeholders[1].text_frame
    frame.text = "Revenue up 4%"
    detail = frame.add_paragraph()
    detail.text = "Driven by Monterrey"
    detail.level = 1
    slide.notes_slide.notes_text_frame.text = "Mention the audit"
    second = deck.slides.add_slide(deck.slide_layouts[5])
    second.shapes.title.text = "Risks"
    table = second.shapes.add_table(2, 2, Inches(1), Inches(2), Inches(6), Inches(1)).table
    table.cell(0, 0).text, table.cell(0, 1).text = "Risk", "Mitigation"
    table.cell(1, 0).text, table.cell(1, 1).text = "Supplier", POLICY_CELL
    deck.save(str(path))
    return path


def rewrite_part(source: Path, target: Path, part: str, text: bytes) -> Path:
    """A copy of the Office file ``source`` with ``part`` replaced by ``text``."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(
            target, "w", zipfile.ZIP_DEFLATED) as copy:
        for item in original.infolist():
            data = text if item.filename == part else original.read(item.filename)
            copy.writestr(item, data)
    return target


def make_entity_bomb_docx(path: Path) -> Path:
    """A .docx whose document part expands a billion-laughs entity."""
    laughs = ['<!ENTITY lol "lol">']
    for level in range(1, 10):
        previous = f"&lol{level - 1 if level > 1 else ''};"
        laughs.append(f'<!ENTITY lol{level} "{previous * 10}">')
    body = ("<?xml version='1.0'?><!DOCTYPE lolz [" + "".join(laughs) + "]>"
            '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
            "<w:body><w:p><w:r><w:t>&lol9;</w:t></w:r></w:p></w:body></w:document>")
    plain = make_docx(path.with_name("plain-" + path.name))
    return rewrite_part(plain, path, "word/document.xml", body.encode())


def make_zip_bomb(path: Path, megabytes: int = 40) -> Path:
    """An .xlsx-named zip whose one part unpacks to ``megabytes`` of the same byte (about a
    thousand times its packed size)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bomb:
        bomb.writestr("xl/worksheets/sheet1.xml", b"<" + b" " * (megabytes << 20))
    return path


def make_lying_zip(path: Path, declared: int = 8 << 30) -> Path:
    """A .docx-named zip whose directory declares a part of ``declared`` bytes (8 GB): refused
    from the directory alone, nothing unpacked."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as package:
        package.writestr("word/document.xml", b"<w:document/>")
    data = bytearray(path.read_bytes())
    central = data.rfind(b"PK\x01\x02")
    size = min(declared, 0xFFFFFFFE)
    data[central + 24:central + 28] = struct.pack("<I", size)
    path.write_bytes(bytes(data))
    return path


def visible(text: str) -> bool:
    """Whether ``text`` is free of escape sequences and control characters."""
    return clean(text) == text and "\x1b" not in text
