"""Documents as inputs: each supported format becomes Markdown that keeps its headings, lists
and tables (a table cell's text included); conversions are cached by content; hostile files are
refused with a located error before any library parses them."""

from __future__ import annotations

import os
import sys
import tracemalloc
from pathlib import Path

import pytest
from document_samples import (
    POLICY_CELL,
    make_docx,
    make_encrypted_pdf,
    make_entity_bomb_docx,
    make_lying_zip,
    make_pdf,
    make_pptx,
    make_xlsx,
    make_zip_bomb,
    rewrite_part,
    visible,
)
from hypothesis import HealthCheck, given, settings, strategies as st

from dworkers.documents import (
    ConversionCache,
    ConvertedFolder,
    DocumentError,
    DocumentLimits,
    convert as convert_module,
    convert_path,
    folder_to_markdown,
    to_markdown,
)
from dworkers.errors import DworkersError, InputError


def refusal(path: Path, **limits: float) -> DocumentError:
    with pytest.raises(DocumentError) as caught:
        convert_path(path, limits=DocumentLimits(**limits))  # type: ignore[arg-type]
    return caught.value


# --- quality: structure and every table cell reach the Markdown ------------------------------


def test_docx_keeps_headings_emphasis_lists_and_table_cells(tmp_path: Path) -> None:
    markdown = to_markdown(make_docx(tmp_path / "policy.docx")).markdown
    assert "# Access Control Policy" in markdown
    assert "# Scope" in markdown and "## Rules" in markdown
    assert "Applies to **all staff** and *contractors*" in markdown
    assert "- Unique accounts" in markdown and "1. Request access" in markdown
    assert "| Control | Owner | Frequency |" in markdown
    assert f"| AC-2 | CISO | {POLICY_CELL} |" in markdown


def test_xlsx_gives_each_sheet_a_heading_and_a_table(tmp_path: Path) -> None:
    markdown = to_markdown(make_xlsx(tmp_path / "matrix.xlsx", rows=2)).markdown
    assert markdown.index("## Controls") < markdown.index("## Findings")
    assert "| ID | Control | Owner | Status |\n| --- | --- | --- | --- |" in markdown
    assert "| C-2 | Control number 2 | CISO | effective |" in markdown
    assert f"| Finding | {POLICY_CELL} |" in markdown


def test_pptx_gives_slides_titles_nested_bullets_tables_and_notes(tmp_path: Path) -> None:
    markdown = to_markdown(make_pptx(tmp_path / "deck.pptx")).markdown
    assert "## Slide 1: Q3 steering" in markdown
    assert "- Revenue up 4%\n  - Driven by Monterrey" in markdown
    assert "Notes: Mention the audit" in markdown
    assert "## Slide 2: Risks" in markdown
    assert f"| Supplier | {POLICY_CELL} |" in markdown


def test_pdf_text_arrives_page_by_page(tmp_path: Path) -> None:
    path = make_pdf(tmp_path / "policy.pdf", [["Policy overview", "Control AC-2"],
                                              ["Owner CISO", POLICY_CELL]])
    markdown = to_markdown(path).markdown
    assert markdown.index("[Page 1]") < markdown.index("Control AC-2") < markdown.index(
        "[Page 2]") < markdown.index(POLICY_CELL)


def test_html_becomes_markdown_without_scripts_or_styles(tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text(
        "<html><head><title>T</title><style>p {color: red}</style></head><body>"
        "<h2>Findings</h2><p>One <b>major</b> and <i>two</i> minor, "
        "<a href='https://example.com/r'>report</a>.</p>"
        "<ol><li>Fix backups<ul><li>weekly</li></ul></li><li>Train staff</li></ol>"
        f"<table><tr><th>Risk</th><th>Owner</th></tr><tr><td>{POLICY_CELL}</td>"
        "<td>CFO | CEO</td></tr></table><script>steal()</script></body></html>")
    markdown = to_markdown(page).markdown
    assert "## Findings" in markdown
    assert "One **major** and *two* minor, [report](https://example.com/r)." in markdown
    assert "1. Fix backups\n\n   - weekly\n\n2. Train staff" in markdown
    assert f"| {POLICY_CELL} | CFO \\| CEO |" in markdown
    assert "steal" not in markdown and "color" not in markdown


def test_csv_with_semicolons_becomes_a_table(tmp_path: Path) -> None:
    data = tmp_path / "ledger.csv"
    data.write_text("account;amount\ncash;1 200\nloans;-300\n", encoding="utf-8")
    assert to_markdown(data).markdown == (
        "| account | amount |\n| --- | --- |\n| cash | 1 200 |\n| loans | -300 |\n")


def test_text_and_markdown_pass_through_in_any_common_encoding(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("# Notes\n\n- café\n", encoding="utf-8")
    (tmp_path / "legacy.txt").write_bytes("Überblick: 5 €".encode("cp1252"))
    (tmp_path / "wide.txt").write_text("wide text", encoding="utf-16")
    assert to_markdown(tmp_path / "notes.md").markdown == "# Notes\n\n- café\n"
    assert to_markdown(tmp_path / "legacy.txt").markdown == "Überblick: 5 €\n"
    assert to_markdown(tmp_path / "wide.txt").markdown == "wide text\n"


def test_escape_codes_never_pass_through(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("ok \x1b[2J\x1b]0;pwned\x07 done\r overwrite\x00")
    (tmp_path / "b.html").write_text("<p>red \x1b[31mtext\x9b0m</p>")
    (tmp_path / "c.csv").write_text("h\n\x1b[5mblink\n")
    for name in ("a.txt", "b.html", "c.csv"):
        markdown = to_markdown(tmp_path / name).markdown
        assert visible(markdown), name
    assert to_markdown(tmp_path / "a.txt").markdown == "ok  done\n overwrite\n"


def test_each_document_reports_name_size_and_digest(tmp_path: Path) -> None:
    import hashlib

    path = make_docx(tmp_path / "policy.docx")
    document = to_markdown(path)
    assert (document.name, document.size) == ("policy.docx", path.stat().st_size)
    assert document.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [(f.name, f.size, f.digest) for f in document.files] == [
        ("policy.docx", document.size, document.digest)]


# --- the conversion cache -------------------------------------------------------------------


def test_a_second_conversion_of_the_same_bytes_converts_nothing(tmp_path: Path) -> None:
    path = make_xlsx(tmp_path / "matrix.xlsx")
    first = to_markdown(path)
    copy = tmp_path / "renamed.xlsx"
    copy.write_bytes(path.read_bytes())
    again, renamed = to_markdown(path), to_markdown(copy)
    assert (first.from_cache, again.from_cache, renamed.from_cache) == (False, True, True)
    assert again.markdown == renamed.markdown == first.markdown
    assert renamed.name == "renamed.xlsx"


def test_the_cache_lives_in_dworkers_home_and_changed_bytes_convert_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DWORKERS_HOME", str(tmp_path / "home"))
    path = tmp_path / "notes.txt"
    path.write_text("first")
    to_markdown(path)
    assert len(list((tmp_path / "home" / "documents").rglob("*.md"))) == 1
    path.write_text("second")
    changed = to_markdown(path)
    assert (changed.from_cache, changed.markdown) == (False, "second\n")


def test_a_new_converter_version_converts_again(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_docx(tmp_path / "policy.docx")
    to_markdown(path)
    monkeypatch.setattr(convert_module, "CONVERTER_REVISION", "next")
    assert to_markdown(path).from_cache is False


def test_an_unwritable_cache_only_costs_a_conversion(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    cache = ConversionCache(blocked / "documents")
    path = tmp_path / "notes.txt"
    path.write_text("text")
    assert [to_markdown(path, cache=cache).from_cache for _ in range(2)] == [False, False]


# --- folders ---------------------------------------------------------------------------------


def test_a_folder_gives_every_supported_file_sorted_under_its_name(tmp_path: Path) -> None:
    folder = tmp_path / "evidence"
    (folder / "b-sub").mkdir(parents=True)
    make_docx(folder / "c-policy.docx")
    (folder / "a-notes.txt").write_text("Interview notes")
    (folder / "b-sub" / "ledger.csv").write_text("x,y\n1,2\n")
    (folder / "photo.jpg").write_bytes(b"\xff\xd8")
    (folder / ".hidden.txt").write_text("hidden")
    (folder / "~$c-policy.docx").write_bytes(b"lock")
    result = convert_path(folder)
    assert isinstance(result, ConvertedFolder)
    assert [d.name for d in result.documents] == ["a-notes.txt", "b-sub/ledger.csv",
                                                  "c-policy.docx"]
    assert result.skipped == ("photo.jpg",)
    markdown = result.markdown
    assert markdown.index("# a-notes.txt\n\nInterview notes") < markdown.index(
        "# b-sub/ledger.csv") < markdown.index("# c-policy.docx") < markdown.index(POLICY_CELL)
    assert [f.name for f in result.files] == ["a-notes.txt", "b-sub/ledger.csv",
                                              "c-policy.docx"]
    assert convert_path(folder).converted == 0  # all three from the cache


def test_a_folder_is_bounded_in_count_size_and_depth(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    (folder / "a" / "b" / "c").mkdir(parents=True)
    for index in range(3):
        (folder / f"{index}.txt").write_text("x" * 100)
    (folder / "a" / "b" / "c" / "deep.txt").write_text("deep")
    assert refusal(folder, max_folder_files=2).problems[0].code == "folder-too-large"
    assert refusal(folder, max_folder_bytes=250).problems[0].code == "folder-too-large"
    assert refusal(folder, max_folder_depth=2).problems[0].code == "folder-too-deep"
    assert len(folder_to_markdown(folder).documents) == 4


def test_a_folder_without_documents_is_an_error_naming_the_kinds(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    error = refusal(tmp_path / "empty")
    assert "holds no document dworkers can read" in str(error)
    assert ".pdf .docx .xlsx .pptx .html .csv .md .txt" in str(error)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_a_symlink_loop_in_a_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "evidence"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("notes")
    (folder / "sub" / "back").symlink_to(folder, target_is_directory=True)
    error = refusal(folder)
    assert error.problems[0].code == "symlink-loop"
    assert error.problems[0].file == str(folder / "sub" / "back")
    (folder / "sub" / "back").unlink()
    (folder / "self.txt").symlink_to(folder / "self.txt")  # a link to itself
    assert refusal(folder).problems[0].code == "symlink-loop"


# --- hostile and unusable files ---------------------------------------------------------------


def test_a_zip_bomb_is_refused_from_its_sizes_before_unpacking(tmp_path: Path) -> None:
    error = refusal(make_zip_bomb(tmp_path / "matrix.xlsx"))
    assert error.problems[0].code == "zip-bomb"
    assert "unpacks" in str(error) and "times its packed size" in str(error)


def test_a_zip_that_declares_gigabytes_is_refused_without_unpacking(tmp_path: Path) -> None:
    path = make_lying_zip(tmp_path / "policy.docx")
    tracemalloc.start()
    try:
        error = refusal(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.problems[0].code == "zip-bomb"
    assert "unpacks to 4096.0 MB" in str(error)
    assert peak < 20 << 20


def test_an_xml_entity_bomb_is_refused(tmp_path: Path) -> None:
    error = refusal(make_entity_bomb_docx(tmp_path / "bomb.docx"))
    assert error.problems[0].code == "xml-entities"
    assert "word/document.xml" in str(error)


def test_an_encrypted_pdf_is_refused_with_what_to_do(tmp_path: Path) -> None:
    error = refusal(make_encrypted_pdf(tmp_path / "minutes.pdf"))
    assert str(error) == (f"{tmp_path / 'minutes.pdf'}: is encrypted (password-protected) — "
                          "save or print an unprotected copy and pass that")


@pytest.mark.parametrize("content", [b"%PDF-1.7\n1 0 obj << /Type /Catalog", b"not a pdf",
                                     b""])
def test_a_broken_pdf_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.pdf"
    path.write_bytes(content)
    assert refusal(path).problems[0].code == "broken-document"


def test_a_truncated_docx_and_a_password_protected_one_are_refused(tmp_path: Path) -> None:
    whole = make_docx(tmp_path / "whole.docx").read_bytes()
    (tmp_path / "cut.docx").write_bytes(whole[: len(whole) // 2])
    assert refusal(tmp_path / "cut.docx").problems[0].code == "broken-document"
    (tmp_path / "locked.docx").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 512)
    assert refusal(tmp_path / "locked.docx").problems[0].code == "encrypted-document"


def test_a_docx_missing_its_document_part_is_refused(tmp_path: Path) -> None:
    plain = make_docx(tmp_path / "plain.docx")
    broken = rewrite_part(plain, tmp_path / "broken.docx", "word/document.xml", b"<oops")
    error = refusal(broken)
    assert error.problems[0].code == "broken-document"
    assert "open it and save it again as .docx" in str(error)


def test_a_pdf_without_text_is_refused_rather_than_sent_empty(tmp_path: Path) -> None:
    path = make_pdf(tmp_path / "scan.pdf", [[], []])
    assert refusal(path).problems[0].code == "no-text"


def test_a_1_gb_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.pdf"
    with path.open("wb") as handle:
        handle.truncate(1 << 30)  # sparse: takes no disk
    tracemalloc.start()
    try:
        error = refusal(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.problems[0].code == "document-too-large"
    assert "is 1024.0 MB, over the 100.0 MB a document may have" in str(error)
    assert peak < 1 << 20


def test_text_past_the_bound_is_refused_while_converting(tmp_path: Path) -> None:
    path = make_xlsx(tmp_path / "matrix.xlsx", rows=500)
    assert refusal(path, max_markdown_chars=2_000).problems[0].code == "document-too-large"


def test_a_sheet_declaring_a_million_rows_is_bounded(tmp_path: Path) -> None:
    import openpyxl

    workbook = openpyxl.Workbook()
    workbook.active["A1"] = "top"
    workbook.active["XFD1048576"] = "far corner"
    workbook.save(str(tmp_path / "sparse.xlsx"))
    assert refusal(tmp_path / "sparse.xlsx", max_sheet_rows=1000).problems[0].code == (
        "document-too-large")
    markdown = to_markdown(tmp_path / "sparse.xlsx").markdown
    assert "top" in markdown and "far corner" in markdown


@pytest.mark.parametrize(("name", "message"), [
    ("deck.key", "is a .key file, which dworkers does not convert"),
    ("README", "is a file without an extension, which dworkers does not convert"),
    ("missing.pdf", "no such file"),
])
def test_unusable_paths_are_located_errors_with_a_fix(tmp_path: Path, name: str,
                                                      message: str) -> None:
    if name != "missing.pdf":
        (tmp_path / name).write_text("x")
    error = refusal(tmp_path / name)
    assert isinstance(error, InputError) and error.exit_code == 2
    assert str(error).startswith(f"{tmp_path / name}: {message} — ")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_is_refused_rather_than_waited_on(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.txt")
    assert refusal(tmp_path / "pipe.txt").problems[0].code == "not-a-file"


# --- without the docs extra -----------------------------------------------------------------


@pytest.mark.parametrize(("module", "suffix"), [("pypdf", ".pdf"), ("docx", ".docx"),
                                                ("openpyxl", ".xlsx"), ("pptx", ".pptx")])
def test_without_the_extra_a_document_names_the_extra(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      module: str, suffix: str) -> None:
    path = tmp_path / f"file{suffix}"
    path.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, module, None)  # what an install without the extra sees
    error = refusal(path)
    assert isinstance(error, DworkersError)
    assert str(error) == (f"{path}: reading {suffix} files needs the docs extra, which is not "
                          "installed — install the docs extra: pip install 'dworkers[docs]'")


def test_without_the_extra_text_formats_still_convert(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("pypdf", "docx", "openpyxl", "pptx", "reportlab"):
        monkeypatch.setitem(sys.modules, module, None)
    (tmp_path / "a.csv").write_text("a,b\n1,2\n")
    (tmp_path / "b.html").write_text("<h1>T</h1>")
    assert "| 1 | 2 |" in to_markdown(tmp_path / "a.csv").markdown
    assert to_markdown(tmp_path / "b.html").markdown == "# T\n"


def test_a_cached_document_needs_no_library(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_xlsx(tmp_path / "matrix.xlsx")
    first = to_markdown(path)
    monkeypatch.setitem(sys.modules, "openpyxl", None)  # any import of it would now fail
    again = to_markdown(path)
    assert (again.from_cache, again.markdown) == (True, first.markdown)


def test_a_conversion_that_runs_out_of_time_is_refused(tmp_path: Path) -> None:
    path = make_pdf(tmp_path / "policy.pdf", [["page one"], ["page two"]])
    error = refusal(path, max_seconds=0)
    assert error.problems[0].code == "document-too-slow"
    assert "took more than 0 s to convert" in str(error)


def test_importing_the_package_loads_no_document_library() -> None:
    import subprocess

    libraries = ("pypdf", "docx", "openpyxl", "pptx", "reportlab", "markdown_it", "PIL", "lxml")
    code = ("import sys, dworkers.documents; "
            f"print([m for m in {libraries!r} if m in sys.modules])")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, env={**os.environ, "PYTHONPATH": str(
                                Path(__file__).resolve().parent.parent)}).stdout
    assert output.strip() == "[]"


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".html", ".csv", ".txt", ".md"]))
def test_any_bytes_in_a_text_format_convert_or_are_refused(tmp_path: Path, data: bytes,
                                                           suffix: str) -> None:
    path = tmp_path / f"any{suffix}"
    path.write_bytes(data)
    try:
        markdown = to_markdown(path, cache=ConversionCache(tmp_path / "cache")).markdown
    except DocumentError:
        return
    assert visible(markdown)


@pytest.mark.parametrize("maker", [make_docx, make_xlsx, make_pptx])
def test_damaged_office_files_convert_or_are_refused(tmp_path: Path, maker: object) -> None:
    import random

    suffix = {make_docx: ".docx", make_xlsx: ".xlsx", make_pptx: ".pptx"}[maker]
    original = maker(tmp_path / f"whole{suffix}").read_bytes()  # type: ignore[operator]
    import zipfile

    generator = random.Random(19)
    parts = zipfile.ZipFile(tmp_path / f"whole{suffix}").namelist()
    for attempt in range(40):
        path = tmp_path / f"damaged-{attempt}{suffix}"
        if attempt % 2:  # damage the package itself
            damaged = bytearray(original)
            for _ in range(8):
                damaged[generator.randrange(len(damaged))] = generator.randrange(256)
            path.write_bytes(bytes(damaged))
        else:  # a valid package with one damaged part
            part = generator.choice(parts)
            text = bytearray(zipfile.ZipFile(tmp_path / f"whole{suffix}").read(part))
            for _ in range(4):
                text[generator.randrange(len(text))] = generator.randrange(256)
            rewrite_part(tmp_path / f"whole{suffix}", path, part, bytes(text))
        try:
            to_markdown(path)
        except DocumentError as error:
            assert error.problems[0].file == str(path)
