"""Deliverables: a run's Markdown written as Word and PDF documents with real structure
(headings, lists, tables, emphasis), the tenant's brand on the title page and every header,
and no text at all that can break either file. Each is read back to check."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from dworkers.documents import MissingExtraError
from dworkers.documents.docx_writer import render_docx
from dworkers.documents.pdf_writer import render_pdf
from dworkers.errors import TenantValidationError
from dworkers.loader import load_tenant
from dworkers.tenants.config import BrandingConfig

REPORT = [
    ("Scope", "# Findings\n\nAccess reviews are **overdue** in *two* plants; see "
              "[the standard](https://example.com/iso).\n\n- Monterrey\n- Wroclaw\n"
              "  1. payroll\n  2. treasury\n\n"
              "| Control | Owner | Status |\n|---|---|---|\n| AC-2 | CISO | **failed** |\n"
              "| BK-1 | CIO | effective |\n"),
    ("Actions", "1. Re-certify users\n2. Automate joiner-mover-leaver\n\n"
                "3. Report to the audit committee\n\n> Deadline: Q1.\n\n```\nSELECT *\n```\n"),
]


def logo(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (240, 80), (31, 78, 121)).save(path)
    return path


@pytest.fixture
def branding(tmp_path: Path) -> BrandingConfig:
    return BrandingConfig(company_name="ACME Audit Partners", primary_color="#1F4E79",
                          logo=str(logo(tmp_path / "logo.png")))


# --- Word ---------------------------------------------------------------------------------


def read_docx(path: Path) -> object:
    import docx

    return docx.Document(str(path))


def test_docx_has_step_headings_and_markdown_structure(tmp_path: Path,
                                                       branding: BrandingConfig) -> None:
    document = read_docx(render_docx("Access audit", REPORT, branding, tmp_path / "r.docx"))
    styled = [(p.style.name, p.text) for p in document.paragraphs if p.text.strip()]
    assert ("Heading 1", "Scope") in styled and ("Heading 1", "Actions") in styled
    assert ("Heading 2", "Findings") in styled  # a step's own '#' sits under its name
    assert ("List Bullet", "Monterrey") in styled
    assert ("List Number 2", "payroll") in styled
    assert ("List Number", "Re-certify users") in styled
    assert ("Quote", "Deadline: Q1.") in styled
    assert not any("**" in text or "| ---" in text for _, text in styled)  # no raw Markdown
    findings = next(p for p in document.paragraphs if p.text.startswith("Access reviews"))
    assert [(r.text, bool(r.bold), bool(r.italic)) for r in findings.runs][1:4] == [
        ("overdue", True, False), (" in ", False, False), ("two", False, True)]
    assert [h.address for h in findings.hyperlinks] == ["https://example.com/iso"]
    table = document.tables[0]
    assert [[cell.text for cell in row.cells] for row in table.rows] == [
        ["Control", "Owner", "Status"], ["AC-2", "CISO", "failed"], ["BK-1", "CIO", "effective"]]
    assert all(run.bold for run in table.rows[0].cells[0].paragraphs[0].runs)


def test_docx_numbered_lists_each_start_at_their_own_number(tmp_path: Path) -> None:
    sections = [("A", "1. one\n2. two"), ("B", "1. again\n\n5. five\n6. six")]
    document = read_docx(render_docx("Lists", sections, None, tmp_path / "r.docx"))
    numbering = document.part.numbering_part.numbering_definitions._numbering

    def start_of(text: str) -> tuple[int, int]:
        paragraph = next(p for p in document.paragraphs if p.text == text)
        num_id = paragraph._p.pPr.numPr.numId.val
        override = numbering.num_having_numId(num_id).lvlOverride_lst[0]
        return num_id, override.startOverride.val

    (first, first_start), (second, second_start) = start_of("one"), start_of("again")
    assert first != second and first_start == second_start == 1
    assert start_of("two") == (first, 1)


def test_docx_carries_the_brand_on_the_title_page_and_every_header(
        tmp_path: Path, branding: BrandingConfig) -> None:
    from docx.shared import RGBColor

    document = read_docx(render_docx("Access audit", REPORT, branding, tmp_path / "r.docx"))
    opening = [p.text for p in document.paragraphs[:4]]
    assert "ACME Audit Partners" in opening and "Access audit" in opening
    assert len(document.inline_shapes) == 1  # the logo on the title page
    section = document.sections[0]
    assert section.different_first_page_header_footer  # the title page has no header
    assert "ACME Audit Partners" in section.header.paragraphs[0].text
    assert section.header.part.related_parts  # the header's small logo
    assert document.styles["Heading 1"].font.color.rgb == RGBColor(0x1F, 0x4E, 0x79)
    assert document.core_properties.author == "ACME Audit Partners"


def test_docx_uses_a_template_s_styles_header_and_footer(tmp_path: Path) -> None:
    import docx
    from docx.shared import Pt

    template = docx.Document()
    template.styles["Normal"].font.name = "Georgia"
    template.styles["Normal"].font.size = Pt(13)
    template.sections[0].header.paragraphs[0].text = "ACME CONFIDENTIAL"
    template.sections[0].footer.paragraphs[0].text = "acme.example"
    template.add_paragraph("Sample text of the template")
    template.save(str(tmp_path / "brand.docx"))
    branding = BrandingConfig(company_name="ACME", template=str(tmp_path / "brand.docx"))

    document = read_docx(render_docx("Audit", REPORT, branding, tmp_path / "r.docx"))
    assert document.styles["Normal"].font.name == "Georgia"
    assert document.styles["Normal"].font.size == Pt(13)
    assert document.sections[0].header.paragraphs[0].text == "ACME CONFIDENTIAL"
    assert document.sections[0].footer.paragraphs[0].text == "acme.example"
    texts = [p.text for p in document.paragraphs]
    assert "Sample text of the template" not in texts
    assert "ACME" in texts and "Scope" in texts


def test_a_template_that_is_a_zip_bomb_is_refused(tmp_path: Path) -> None:
    from document_samples import make_zip_bomb

    from dworkers.documents import DocumentError

    bomb = make_zip_bomb(tmp_path / "brand.docx")
    with pytest.raises(DocumentError, match="zip bomb"):
        render_docx("Audit", REPORT, BrandingConfig(template=str(bomb)), tmp_path / "r.docx")
    assert not (tmp_path / "r.docx").exists()


# --- PDF ----------------------------------------------------------------------------------


def read_pdf(path: Path) -> object:
    import pypdf

    return pypdf.PdfReader(str(path))


def outline_titles(outline: list[object]) -> list[object]:
    return [outline_titles(item) if isinstance(item, list) else item.title  # type: ignore[attr-defined]
            for item in outline]


def test_pdf_has_step_headings_lists_and_tables(tmp_path: Path,
                                                branding: BrandingConfig) -> None:
    reader = read_pdf(render_pdf("Access audit", REPORT, branding, tmp_path / "r.pdf"))
    assert outline_titles(reader.outline) == ["Scope", ["Findings"], "Actions"]
    body = "\n".join(page.extract_text() for page in reader.pages[1:])
    for text in ("Access reviews are overdue in two plants", "Monterrey", "payroll",
                 "Re-certify users", "Report to the audit committee", "Deadline: Q1.",
                 "SELECT *"):
        assert text in body
    assert "**" not in body and "| ---" not in body
    lines = body.splitlines()
    assert lines.index("AC-2") < lines.index("CISO") < lines.index("failed")  # table cells
    assert lines[lines.index("Re-certify users") - 1] == "1."
    assert lines[lines.index("Report to the audit committee") - 1] == "3."
    links = [annotation.get_object()["/A"]["/URI"]
             for page in reader.pages for annotation in page.get("/Annots", [])]
    assert links == ["https://example.com/iso"]


def test_pdf_carries_the_brand_on_the_title_page_and_every_header(
        tmp_path: Path, branding: BrandingConfig) -> None:
    long_report = [(f"Step {n}", "Paragraph of findings. " * 300) for n in range(1, 4)]
    reader = read_pdf(render_pdf("Access audit", long_report, branding, tmp_path / "r.pdf"))
    title_page = reader.pages[0].extract_text()
    assert "ACME Audit Partners" in title_page and "Access audit" in title_page
    assert len(reader.pages[0].images) == 1  # the logo
    assert len(reader.pages) > 3
    for number, page in enumerate(reader.pages[1:], 2):
        text = page.extract_text()
        assert text.startswith("ACME Audit Partners"), number
        assert f"Access audit · {number}" in text
        assert len(page.images) == 1  # the header's logo
    assert reader.metadata.author == "ACME Audit Partners"


def test_pdf_shows_text_beyond_latin_1(tmp_path: Path) -> None:
    sections = [("Überblick", "Ελληνικά, русский, čeština, €, ✓ → ≤")]
    reader = read_pdf(render_pdf("Ünïcode", sections, None, tmp_path / "r.pdf"))
    assert "Ελληνικά, русский, čeština, €, ✓ → ≤" in reader.pages[1].extract_text()


def test_a_table_row_taller_than_a_page_still_gives_a_pdf(tmp_path: Path) -> None:
    cell = "evidence " * 6000
    sections = [("Evidence", f"| ref | text |\n|---|---|\n| E-1 | {cell} |\n| E-2 | short |")]
    reader = read_pdf(render_pdf("Big", sections, None, tmp_path / "r.pdf"))
    text = "".join(page.extract_text() for page in reader.pages)
    assert "E-1" in text and "E-2" in text and text.count("evidence") > 5000


# --- any text at all --------------------------------------------------------------------------

HOSTILE_TEXTS = [
    "**unclosed bold and [broken link](",
    "| a | b |\n|---|\n| ragged | row | extra |",
    "> " * 500 + "deep quote",
    "- " * 300 + "deep list",
    "\x1b[31mred\x1b[0m \x00 nul \ud800 lone surrogate \ufffe",
    "<script>alert(1)</script> <b>raw html</b> &amp; &lt;",
    "```\nunclosed fence",
    "# " + "very long heading " * 400,
    "\u202eright-to-left override 中文 😀 \u200d",
]


@pytest.mark.parametrize("text", HOSTILE_TEXTS)
def test_text_that_is_not_valid_markdown_never_breaks_a_deliverable(tmp_path: Path,
                                                                    text: str) -> None:
    docx_path = render_docx(text[:80], [(text[:40], text)], None, tmp_path / "r.docx")
    pdf_path = render_pdf(text[:80], [(text[:40], text)], None, tmp_path / "r.pdf")
    word_text = "\n".join(p.text for p in read_docx(docx_path).paragraphs)
    pdf_text = "".join(page.extract_text() for page in read_pdf(pdf_path).pages)
    for word in ("unclosed", "ragged", "deep", "red", "raw", "very long", "override"):
        if word in text:
            assert word in word_text and word in pdf_text.replace("\n", " "), word
    assert "\x1b" not in word_text and "\x1b" not in pdf_text


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.sampled_from(list("ab *_#>|-`[]()!\n\t1.<&\x1b\x00é中\ud800")),
               max_size=200))
def test_any_text_renders_to_both_formats(tmp_path: Path, text: str) -> None:
    render_docx("T", [("S", text)], None, tmp_path / "r.docx")
    render_pdf("T", [("S", text)], None, tmp_path / "r.pdf")
    read_docx(tmp_path / "r.docx")
    assert len(read_pdf(tmp_path / "r.pdf").pages) >= 2


# --- without the extra, and tenant branding -------------------------------------------------


@pytest.mark.parametrize(("module", "render", "name"), [("docx", render_docx, "r.docx"),
                                                        ("reportlab", render_pdf, "r.pdf")])
def test_without_the_extra_a_deliverable_names_the_extra(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, render: object,
        name: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtraError) as caught:
        render("T", REPORT, None, tmp_path / name)  # type: ignore[operator]
    assert str(caught.value) == (f"writing {name} needs the docs extra, which is not installed"
                                 " — install the docs extra: pip install 'dworkers[docs]'")


def tenant_file(tmp_path: Path, branding: str) -> Path:
    path = tmp_path / "tenants" / "acme.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text("id: acme\nname: ACME Corp\nbranding:\n" + branding)
    return path


def test_tenant_branding_resolves_files_beside_the_tenant(tmp_path: Path) -> None:
    (tmp_path / "tenants" / "brand").mkdir(parents=True)
    logo(tmp_path / "tenants" / "brand" / "acme.png")
    path = tenant_file(tmp_path, "  logo: brand/acme.png\n  primary_color: '#1F4E79'\n")
    brand = load_tenant(path).resolved_branding()
    assert brand is not None
    assert brand.company_name == "ACME Corp"  # the tenant's name by default
    assert brand.logo == str((tmp_path / "tenants" / "brand" / "acme.png").absolute())
    reader = read_pdf(render_pdf("Audit", REPORT, brand, tmp_path / "r.pdf"))
    assert "ACME Corp" in reader.pages[0].extract_text()


def test_tenant_branding_mistakes_are_located(tmp_path: Path) -> None:
    path = tenant_file(tmp_path, "  logo: brand/missing.png\n  primary_color: navy\n"
                                 "  template: brand.dotx\n  font: Arial\n")
    with pytest.raises(TenantValidationError) as caught:
        load_tenant(path)
    assert str(caught.value).splitlines() == [
        f"{path}:4:9: logo file 'brand/missing.png' does not exist (looked for "
        f"{str(tmp_path / 'tenants' / 'brand' / 'missing.png')!r}) — fix the path (relative "
        "to the tenant file) or add the file",
        f"{path}:5:18: primary_color 'navy' is not a colour — write it as '#RRGGBB', "
        "e.g. '#1F4E79'",
        f"{path}:6:13: template 'brand.dotx' is not a .docx file — name a .docx file",
        f"{path}:7:3: unknown key 'font' in branding of the tenant — allowed keys: "
        "company_name, logo, primary_color, template",
    ]


def test_a_tenant_without_branding_has_none() -> None:
    tenant = load_tenant("t.yaml", "id: t\n")
    assert tenant.branding is None and tenant.resolved_branding() is None


def test_a_logo_that_is_not_an_image_is_a_clear_error(tmp_path: Path) -> None:
    from dworkers.documents import DocumentError

    (tmp_path / "logo.png").write_bytes(b"not an image")
    brand = BrandingConfig(company_name="ACME", logo=str(tmp_path / "logo.png"))
    for render, name in ((render_docx, "r.docx"), (render_pdf, "r.pdf")):
        with pytest.raises(DocumentError, match="cannot be read as an image"):
            render("T", REPORT, brand, tmp_path / name)
        assert not (tmp_path / name).exists()


def test_the_title_page_carries_the_date_given(tmp_path: Path) -> None:
    from datetime import date

    path = render_pdf("Audit", REPORT, None, tmp_path / "r.pdf", dated=date(2026, 3, 9))
    assert "9 March 2026" in read_pdf(path).pages[0].extract_text()
    path = render_docx("Audit", REPORT, None, tmp_path / "r.docx", dated=date(2026, 3, 9))
    assert "9 March 2026" in [p.text for p in read_docx(path).paragraphs[:5]]
