"""A deliverable as a Word document (python-docx): a title page with the tenant's logo, name
and colour, the company name in every page's header, then one ``Heading 1`` per step and the
step's Markdown as real Word structure — headings, paragraphs, bullet and numbered lists,
tables, bold, italics, links. A tenant's ``template`` .docx gives the styles, header and
footer instead (its sample text is removed)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

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
)
from dworkers.documents.limits import DEFAULT_LIMITS, refuse, require
from dworkers.documents.render import (
    Look,
    Section,
    deliverable_look,
    replace_file,
    section_headings,
)
from dworkers.documents.safety import check_office_package, read_document
from dworkers.tenants.config import BrandingConfig

_MONO = "Courier New"


def render_docx(title: str, sections: Sequence[Section], branding: BrandingConfig | None,
                path: Path | str, *, dated: date | None = None) -> Path:
    """Write ``sections`` ((heading, Markdown) pairs) as the Word document ``path``, titled
    ``title`` and branded with ``branding`` (resolved, see
    ``TenantConfig.resolved_branding``); ``dated`` is the date on the title page (the run's;
    default today). Returns the path."""
    path = Path(path)
    docx = require("docx", f"writing {path.name}")
    look = deliverable_look(title, branding, dated)
    if look.template is not None:
        data = read_document(look.template, DEFAULT_LIMITS)
        check_office_package(data, look.template, DEFAULT_LIMITS)
        try:
            document = docx.Document(io.BytesIO(data))
        except Exception as exc:  # any malformed package: the template's problem
            raise refuse(look.template, f"cannot be used as a Word template ({exc})",
                         "open it in Word and save it again as .docx",
                         "broken-template") from None
        _clear_body(document)
    else:
        document = docx.Document()
        _brand_styles(document, look)
        _brand_header(document, look)
    document.core_properties.title = look.title
    document.core_properties.author = look.company or "dworkers"
    writer = _DocxWriter(document, look)
    writer.write_title_page()
    for heading, (_, markdown) in zip(section_headings(sections), sections, strict=True):
        writer.heading(heading, 1)
        for block in parse_blocks(markdown):
            writer.block(block, heading_offset=1)
    return replace_file(path, lambda temporary: document.save(str(temporary)))


def _clear_body(document: Any) -> None:
    """Remove a template's sample paragraphs and tables, keeping its page setup."""
    body = document.element.body
    for child in list(body):
        if not child.tag.endswith("}sectPr"):
            body.remove(child)


def _brand_styles(document: Any, look: Look) -> None:
    from docx.shared import Pt, RGBColor

    color = RGBColor.from_string(look.color_hex)
    for name in ("Title", "Heading 1", "Heading 2", "Heading 3"):
        document.styles[name].font.color.rgb = color
    document.styles["Normal"].font.size = Pt(11)


def _brand_header(document: Any, look: Look) -> None:
    """The company name (and a small logo) at the top of every page but the title page."""
    from docx.enum.text import WD_ALIGN_PARAGRAPH
    from docx.shared import Cm, Pt

    section = document.sections[0]
    section.different_first_page_header_footer = True
    header = section.header.paragraphs[0]
    header.alignment = WD_ALIGN_PARAGRAPH.RIGHT
    if look.logo is not None:
        _add_logo(header.add_run(), look, height=Cm(0.8))
        header.add_run("  ")
    run = header.add_run(look.company or look.title)
    run.font.size = Pt(9)
    footer = section.footer.paragraphs[0]
    footer.alignment = WD_ALIGN_PARAGRAPH.CENTER
    footer.add_run(look.title).font.size = Pt(8)


def _add_logo(run: Any, look: Look, **size: Any) -> None:
    try:
        run.add_picture(io.BytesIO(look.logo or b""), **size)
    except Exception as exc:  # python-docx parses the image itself: a broken one is the file's
        raise refuse(look.logo_path or "logo", f"cannot be read as an image ({exc!r})",
                     "use a .png or .jpg file", "broken-logo") from None


class _DocxWriter:
    """Blocks into a python-docx ``Document``, tolerating templates that lack a style."""

    def __init__(self, document: Any, look: Look) -> None:
        self.document = document
        self.look = look

    def paragraph(self, style: str | None = None, container: Any = None) -> Any:
        target = container if container is not None else self.document
        if style is not None:
            try:
                return target.add_paragraph(style=style)
            except KeyError:
                pass  # a template without this style: plain text still reads well
        return target.add_paragraph()

    def write_title_page(self) -> None:
        from docx.enum.text import WD_BREAK
        from docx.shared import Cm, Pt, RGBColor

        look = self.look
        if look.logo is not None:
            _add_logo(self.paragraph().add_run(), look, width=Cm(5))
        if look.company:
            run = self.paragraph().add_run(look.company)
            run.bold = True
            run.font.size = Pt(16)
            run.font.color.rgb = RGBColor.from_string(look.color_hex)
        self.paragraph("Title").add_run(look.title)
        self.paragraph().add_run(look.dated).italic = True
        self.paragraph().add_run().add_break(WD_BREAK.PAGE)

    def heading(self, text: str, level: int) -> None:
        self.paragraph(f"Heading {min(max(level, 1), 9)}").add_run(text)

    def block(self, block: Block, heading_offset: int = 0, container: Any = None,
              depth: int = 0) -> None:
        if isinstance(block, Heading):
            paragraph = self.paragraph(f"Heading {min(block.level + heading_offset, 9)}",
                                       container)
            self.spans(paragraph, block.spans)
        elif isinstance(block, Paragraph):
            self.spans(self.paragraph("Quote" if depth < 0 else None, container), block.spans)
        elif isinstance(block, ListBlock):
            self.list(block, container, max(depth, 0))
        elif isinstance(block, TableBlock):
            self.table(block, container)
        elif isinstance(block, CodeBlock):
            self.code(block.text, container)
        elif isinstance(block, QuoteBlock):
            for inner in block.blocks:
                self.block(inner, heading_offset, container, depth=-1)
        elif isinstance(block, RuleBlock):
            self.paragraph(None, container)

    def spans(self, paragraph: Any, spans: Spans) -> None:
        from docx.shared import RGBColor

        for span in spans:
            run = paragraph.add_run(span.text)
            run.bold = span.bold or None
            run.italic = span.italic or None
            if span.code:
                run.font.name = _MONO
            if span.link:
                run.font.underline = True
                run.font.color.rgb = RGBColor.from_string(self.look.color_hex)
                _hyperlink(paragraph, run, span.link)

    def list(self, block: ListBlock, container: Any, depth: int) -> None:
        base = "List Number" if block.ordered else "List Bullet"
        style = base if depth == 0 else f"{base} {min(depth + 1, 3)}"
        numbering = self.restarted_numbering(style, block.start) if block.ordered else None
        for item in block.items:
            first = True
            for inner in item:
                if first and isinstance(inner, Paragraph):
                    paragraph = self.paragraph(style, container)
                    if numbering is not None:
                        _use_numbering(paragraph, numbering)
                    self.spans(paragraph, inner.spans)
                    first = False
                elif isinstance(inner, ListBlock):
                    self.list(inner, container, depth + 1)
                else:
                    self.block(inner, 1, container, depth)

    def restarted_numbering(self, style: str, start: int) -> str | None:
        """A new Word list of the numbering of ``style``, starting at ``start``: without one,
        every numbered list of a document continues the previous list's numbers."""
        try:
            properties = self.document.styles[style].element.pPr
            numbering = self.document.part.numbering_part.numbering_definitions._numbering
            style_num = properties.numPr.numId.val
            abstract = numbering.num_having_numId(style_num).abstractNumId.val
            num = numbering.add_num(abstract)
            num.add_lvlOverride(ilvl=0).add_startOverride(start)
            return str(num.numId)
        except (KeyError, AttributeError, NotImplementedError):
            return None  # a template whose list style has no numbering: its own look wins

    def table(self, block: TableBlock, container: Any) -> None:
        rows = [row for row in block.rows if row]
        if not rows:
            return
        target = container if container is not None else self.document
        table = target.add_table(rows=len(rows), cols=len(rows[0]))
        with contextlib.suppress(KeyError, ValueError):  # a template without the style
            table.style = "Table Grid"
        for index, (row, cells) in enumerate(zip(table.rows, rows, strict=True)):
            for cell, spans in zip(row.cells, cells, strict=True):
                paragraph = cell.paragraphs[0]
                self.spans(paragraph, spans)
                if index == 0:
                    for run in paragraph.runs:
                        run.bold = True
            if index == 0:
                _repeat_header(row)
        self.paragraph(None, container)

    def code(self, text: str, container: Any) -> None:
        from docx.shared import Pt

        paragraph = self.paragraph(None, container)
        for number, line in enumerate(text.split("\n")):
            if number:
                paragraph.add_run().add_break()
            run = paragraph.add_run(line)
            run.font.name = _MONO
            run.font.size = Pt(9)


def _use_numbering(paragraph: Any, num_id: str) -> None:
    numbering = paragraph._p.get_or_add_pPr().get_or_add_numPr()
    numbering.get_or_add_ilvl().val = 0
    numbering.get_or_add_numId().val = int(num_id)


def _repeat_header(row: Any) -> None:
    """Mark a table's first row to repeat at the top of each page it spans."""
    from docx.oxml import OxmlElement

    properties = row._tr.get_or_add_trPr()
    properties.append(OxmlElement("w:tblHeader"))


def _hyperlink(paragraph: Any, run: Any, url: str) -> None:
    """Make ``run`` (already in ``paragraph``) a link to ``url``."""
    from docx.opc.constants import RELATIONSHIP_TYPE
    from docx.oxml import OxmlElement
    from docx.oxml.ns import qn

    relation = paragraph.part.relate_to(url, RELATIONSHIP_TYPE.HYPERLINK, is_external=True)
    link = OxmlElement("w:hyperlink")
    link.set(qn("r:id"), relation)
    run._r.addprevious(link)
    link.append(run._r)
