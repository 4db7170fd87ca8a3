"""A deliverable as a PDF (reportlab, pure Python: no browser, no system library): a title page
with the tenant's logo, name and colour, the company name in every later page's header and
page numbers in the footer, then one heading per step (also in the PDF's outline) and the
step's Markdown laid out as headings, paragraphs, bullet and numbered lists, tables (their
header row repeated on each page), code and quotes.

Text is set in DejaVu Sans, shipped in ``fonts/``, which covers Latin, Greek, Cyrillic and
common symbols; a character it lacks shows as a blank box rather than failing the file."""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from dworkers.documents.blocks import (
    Block,
    CodeBlock,
    Heading,
    ListBlock,
    Paragraph,
    QuoteBlock,
    RuleBlock,
    Spans,
    TableBlock,
    parse_blocks,
    plain_text,
)
from dworkers.documents.limits import refuse, require
from dworkers.documents.render import (
    Look,
    Section,
    deliverable_look,
    replace_file,
    section_headings,
)
from dworkers.tenants.config import BrandingConfig

_FONTS = Path(__file__).resolve().parent / "fonts"
_SANS, _MONO = "DworkersSans", "DworkersMono"
_QUOTE_INDENT = 18
_LONGEST_HEADING = 400  # characters of markup


@lru_cache(maxsize=1)
def _register_fonts() -> None:
    from reportlab.lib.fonts import addMapping
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    faces = {(0, 0): "DejaVuSans", (1, 0): "DejaVuSans-Bold", (0, 1): "DejaVuSans-Oblique",
             (1, 1): "DejaVuSans-BoldOblique"}
    for (bold, italic), file in faces.items():
        name = _SANS + ("-Bold" if bold else "") + ("-Italic" if italic else "")
        pdfmetrics.registerFont(TTFont(name, str(_FONTS / f"{file}.ttf")))
        addMapping(_SANS, bold, italic, name)
    pdfmetrics.registerFont(TTFont(_MONO, str(_FONTS / "DejaVuSansMono.ttf")))
    for bold in (0, 1):
        for italic in (0, 1):
            addMapping(_MONO, bold, italic, _MONO)


def render_pdf(title: str, sections: Sequence[Section], branding: BrandingConfig | None,
               path: Path | str, *, dated: date | None = None) -> Path:
    """Write ``sections`` ((heading, Markdown) pairs) as the PDF ``path``, titled ``title``
    and branded with ``branding`` (resolved, see ``TenantConfig.resolved_branding``);
    ``dated`` is the date on the title page (the run's; default today). A tenant's Word
    template does not apply to PDFs. Returns the path."""
    path = Path(path)
    require("reportlab", f"writing {path.name}")
    from reportlab.platypus.doctemplate import LayoutError

    _register_fonts()
    look = deliverable_look(title, branding, dated)
    headings = section_headings(sections)
    bodies = [parse_blocks(markdown) for _, markdown in sections]

    def write_pdf(target: Path) -> None:
        try:
            _PdfBuilder(look, tables_as_text=False).build(target, headings, bodies)
        except LayoutError:
            # A table row taller than a page cannot be laid out: set tables as text instead
            # of failing the deliverable.
            _PdfBuilder(look, tables_as_text=True).build(target, headings, bodies)

    return replace_file(path, write_pdf)


class _PdfBuilder:
    """Blocks into reportlab flowables, and the page decorations."""

    def __init__(self, look: Look, tables_as_text: bool) -> None:
        from reportlab.lib import colors
        from reportlab.lib.styles import ParagraphStyle

        self.look = look
        self.tables_as_text = tables_as_text
        self.color = colors.HexColor(look.color)
        self.pale = _tint(self.color, 0.15)
        self.grid = _tint(self.color, 0.45)
        body = ParagraphStyle("body", fontName=_SANS, fontSize=10, leading=14, spaceAfter=6)
        self.body = body
        self.cell = ParagraphStyle("cell", parent=body, fontSize=9, leading=12, spaceAfter=0)
        self.code_style = ParagraphStyle("code", parent=body, fontName=_MONO, fontSize=8.5,
                                         leading=11, backColor=colors.HexColor("#F2F2F2"),
                                         borderPadding=4, spaceBefore=4, spaceAfter=8)
        self.quote = ParagraphStyle("quote", parent=body, leftIndent=_QUOTE_INDENT,
                                    textColor=colors.HexColor("#444444"))
        self.headings = [ParagraphStyle(f"h{level}", parent=body, fontSize=size,
                                        leading=size * 1.25, spaceBefore=size * 0.8,
                                        spaceAfter=size * 0.4, textColor=self.color,
                                        keepWithNext=1)
                         for level, size in enumerate((20, 16, 13.5, 12, 11, 10, 10), 1)]
        self.title_style = ParagraphStyle("title", parent=body, fontSize=28, leading=34,
                                          textColor=self.color, spaceAfter=18)
        self.company_style = ParagraphStyle("company", parent=body, fontSize=15, leading=20,
                                            spaceAfter=24)

    def build(self, target: Path, headings: list[str], bodies: list[list[Block]]) -> None:
        from reportlab.lib.pagesizes import A4
        from reportlab.lib.units import cm

        document = _outlined_document(str(target), pagesize=A4, leftMargin=2.2 * cm,
                                     rightMargin=2.2 * cm, topMargin=2.4 * cm,
                                     bottomMargin=2 * cm, title=self.look.title,
                                     author=self.look.company or "dworkers",
                                     creator="dworkers")
        self.width = document.width
        story = self.title_story()
        for heading, blocks in zip(headings, bodies, strict=True):
            story.append(self.heading_paragraph(escape(heading), 1))
            for block in blocks:
                story += self.flowables(block, heading_offset=1)
        document.build(story, onFirstPage=lambda canvas, _: None,
                       onLaterPages=self.decorate)

    def title_story(self) -> list[Any]:
        from reportlab.platypus import PageBreak, Paragraph as PdfParagraph, Spacer

        look = self.look
        story: list[Any] = [Spacer(1, 60)]
        if look.logo is not None:
            story += [self.logo(look.logo, width=170, height=90), Spacer(1, 24)]
        if look.company:
            story.append(PdfParagraph(f"<b>{escape(look.company)}</b>", self.company_style))
        story.append(PdfParagraph(escape(look.title), self.title_style))
        story.append(PdfParagraph(f"<i>{escape(look.dated)}</i>", self.body))
        story.append(PageBreak())
        return story

    def logo(self, data: bytes, width: float, height: float) -> Any:
        """The logo scaled to fit ``width`` × ``height`` points, keeping its proportions."""
        from reportlab.lib.utils import ImageReader
        from reportlab.platypus import Image

        try:
            reader = ImageReader(io.BytesIO(data))
            real_width, real_height = reader.getSize()
        except Exception as exc:  # Pillow reads the image; any failure is the file's fault
            raise refuse(self.look.logo_path or "logo", f"cannot be read as an image ({exc})",
                         "use a .png or .jpg file", "broken-logo") from None
        scale = min(width / max(real_width, 1), height / max(real_height, 1))
        picture = Image(io.BytesIO(data), width=real_width * scale,
                        height=real_height * scale)
        picture.hAlign = "LEFT"
        return picture

    def decorate(self, canvas: Any, document: Any) -> None:
        """The header (logo, company name, rule) and footer (page number) of a later page."""
        from reportlab.lib.utils import ImageReader

        canvas.saveState()
        top = document.pagesize[1] - document.topMargin + 14
        right = document.pagesize[0] - document.rightMargin
        canvas.setFont(_SANS, 8.5)
        canvas.setFillColor(self.color)
        canvas.drawRightString(right, top, self.look.company or self.look.title)
        if self.look.logo is not None:
            reader = ImageReader(io.BytesIO(self.look.logo))
            real_width, real_height = reader.getSize()
            height = 16.0
            canvas.drawImage(reader, document.leftMargin, top - 4,
                             width=real_width * height / max(real_height, 1), height=height,
                             mask="auto")
        canvas.setStrokeColor(self.color)
        canvas.setLineWidth(0.6)
        canvas.line(document.leftMargin, top - 6, right, top - 6)
        canvas.setFillColorRGB(0.4, 0.4, 0.4)
        canvas.drawCentredString(document.pagesize[0] / 2, document.bottomMargin - 20,
                                 f"{self.look.title} · {canvas.getPageNumber()}")
        canvas.restoreState()

    def heading_paragraph(self, markup: str, level: int) -> Any:
        from reportlab.platypus import Paragraph as PdfParagraph

        level = min(max(level, 1), len(self.headings))
        if len(markup) > _LONGEST_HEADING:
            # A heading kept with the next block may not be taller than a page; text this
            # long is a paragraph that happens to start with '#'.
            return PdfParagraph(f"<b>{markup}</b>", self.body)
        paragraph = PdfParagraph(markup, self.headings[level - 1])
        paragraph.outline_level = level  # read by _OutlinedDocument.afterFlowable
        return paragraph

    def markup(self, spans: Spans) -> str:
        """Spans as reportlab's paragraph markup, every piece of text escaped."""
        parts = []
        for span in spans:
            text = escape(span.text).replace("\n", "<br/>")
            if span.code:
                text = f'<font face="{_MONO}">{text}</font>'
            if span.bold:
                text = f"<b>{text}</b>"
            if span.italic:
                text = f"<i>{text}</i>"
            if span.link:
                target = escape(span.link, {'"': "&quot;"})
                text = f'<a href="{target}" color="{self.look.color}"><u>{text}</u></a>'
            parts.append(text)
        return "".join(parts)

    def flowables(self, block: Block, heading_offset: int = 0) -> list[Any]:
        from reportlab.platypus import Paragraph as PdfParagraph

        if isinstance(block, Heading):
            return [self.heading_paragraph(self.markup(block.spans),
                                           block.level + heading_offset)]
        if isinstance(block, Paragraph):
            return [PdfParagraph(self.markup(block.spans), self.body)]
        if isinstance(block, ListBlock):
            return [self.list_flowable(block)]
        if isinstance(block, TableBlock):
            return self.table_flowables(block)
        if isinstance(block, CodeBlock):
            lines = [escape(line).replace(" ", "&nbsp;") for line in block.text.split("\n")]
            return [PdfParagraph("<br/>".join(lines), self.code_style)]
        if isinstance(block, QuoteBlock):
            return self.quote_flowables(block, heading_offset)
        if isinstance(block, RuleBlock):
            from reportlab.platypus.flowables import HRFlowable

            return [HRFlowable(width="100%", thickness=0.5, color=self.pale, spaceBefore=4,
                               spaceAfter=8)]
        return []

    def quote_flowables(self, block: QuoteBlock, heading_offset: int) -> list[Any]:
        from reportlab.platypus import Paragraph as PdfParagraph
        from reportlab.platypus.doctemplate import Indenter

        story: list[Any] = [Indenter(left=_QUOTE_INDENT)]
        for inner in block.blocks:
            if isinstance(inner, Paragraph):
                story.append(PdfParagraph(f"<i>{self.markup(inner.spans)}</i>", self.body))
            else:
                story += self.flowables(inner, heading_offset)
        return [*story, Indenter(left=-_QUOTE_INDENT)]

    def list_flowable(self, block: ListBlock) -> Any:
        from reportlab.platypus import ListFlowable, ListItem

        items = []
        for item in block.items:
            content: list[Any] = []
            for inner in item:
                content += self.flowables(inner, heading_offset=1)
            if content:
                items.append(ListItem(content))
        ordered = {"bulletType": "1", "start": block.start, "bulletFormat": "%s."}
        bullets = {"bulletType": "bullet", "start": "•"}
        return ListFlowable(items, **(ordered if block.ordered else bullets),
                            bulletFontName=_SANS, bulletFontSize=9, leftIndent=16,
                            bulletColor=self.color)

    def table_flowables(self, block: TableBlock) -> list[Any]:
        from reportlab.platypus import Paragraph as PdfParagraph, Spacer, Table, TableStyle

        rows = [row for row in block.rows if row]
        if not rows:
            return []
        if self.tables_as_text:
            return [PdfParagraph(" | ".join(self.markup(cell) for cell in row), self.body)
                    for row in rows]
        header = [PdfParagraph(f"<b>{self.markup(cell)}</b>", self.cell) for cell in rows[0]]
        data = [header] + [[PdfParagraph(self.markup(cell), self.cell) for cell in row]
                           for row in rows[1:]]
        columns = len(rows[0])
        widths = self.column_widths(rows, columns)
        table = Table(data, colWidths=widths, repeatRows=1, splitInRow=1, hAlign="LEFT")
        table.setStyle(TableStyle([
            ("GRID", (0, 0), (-1, -1), 0.4, self.grid),
            ("BACKGROUND", (0, 0), (-1, 0), self.pale),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ("LEFTPADDING", (0, 0), (-1, -1), 4),
            ("RIGHTPADDING", (0, 0), (-1, -1), 4),
        ]))
        return [table, Spacer(1, 8)]

    def column_widths(self, rows: list[list[Spans]], columns: int) -> list[float]:
        """Widths that share the page by how much text each column holds, each at least a
        little so that no column is squeezed to nothing."""
        lengths = [1.0] * columns
        for row in rows[:200]:
            for index, cell in enumerate(row):
                lengths[index] = max(lengths[index], min(len(plain_text(cell)), 60))
        floor = min(36.0, self.width / columns)
        spare = self.width - floor * columns
        total = sum(lengths)
        return [floor + spare * length / total for length in lengths]


def _tint(color: Any, strength: float) -> Any:
    """``color`` mixed with white: ``strength`` 1 is the colour itself, 0 is white."""
    from reportlab.lib.colors import Color

    return Color(*(1 - (1 - part) * strength for part in (color.red, color.green, color.blue)))


def _outlined_document_class() -> type:
    from reportlab.platypus import SimpleDocTemplate

    class OutlinedDocument(SimpleDocTemplate):  # type: ignore[misc]
        """A document whose headings become PDF outline (bookmark) entries."""

        outline_depth = 0
        outline_count = 0

        def afterFlowable(self, flowable: Any) -> None:
            level = getattr(flowable, "outline_level", None)
            if level is None:
                return
            level = min(level, self.outline_depth + 1)  # outlines may not skip a level
            self.outline_depth = level
            self.outline_count += 1
            key = f"heading-{self.outline_count}"
            self.canv.bookmarkPage(key)
            self.canv.addOutlineEntry(flowable.getPlainText(), key, level=level - 1,
                                      closed=level > 1)

    return OutlinedDocument


def _outlined_document(*args: Any, **kwargs: Any) -> Any:
    return _outlined_document_class()(*args, **kwargs)
