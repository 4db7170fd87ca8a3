"""Client files in, deliverables out, through real runs against the local server: documents and
folders as inputs (``-i NAME=@file``, ``type: file``, dataset cells), refused before any call
when hostile or too large for the model, the files each run read in its history, ``--format
docx,pdf`` deliverables read back, and ``dworkers export`` from the history."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from document_samples import (
    POLICY_CELL,
    make_docx,
    make_encrypted_pdf,
    make_entity_bomb_docx,
    make_pdf,
    make_pptx,
    make_xlsx,
    make_zip_bomb,
)
from support import FakeLLMServer, invoke, llm_server

__all__ = ["llm_server"]

PLAN = """\
name: audit
inputs:
  brief: {}
  evidence:
    type: file
    description: the client's files
steps:
  - step_id: review
    name: Evidence review
    worker_role: analyst
    prompt_template: "Review {evidence} for {brief}"
  - step_id: memo
    name: Audit memo
    worker_role: manager
    depends_on: [review]
"""

ANSWER = """\
## Findings

Access reviews are **late** and *incomplete*.

- Unique accounts
- Quarterly reviews

| Control | Status |
| --- | --- |
| AC-2 | Ineffective |
"""


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DWORKERS_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "audit.yaml").write_text(PLAN)


def server_args(server: FakeLLMServer, *extra: str) -> tuple[str, ...]:
    return ("--model", "openai/test-model", "--api-base", server.url, "--out", "runs", *extra)


def evidence_folder(root: Path) -> Path:
    folder = root / "evidence"
    (folder / "deck").mkdir(parents=True)
    make_docx(folder / "policy.docx")
    make_xlsx(folder / "matrix.xlsx")
    make_pptx(folder / "deck" / "steering.pptx")
    make_pdf(folder / "minutes.pdf", [["Board minutes page one"], ["Budget approved in May"]])
    (folder / "notes.html").write_text("<h1>Site visit</h1><table><tr><td>Badge reader"
                                       "</td></tr></table>")
    (folder / "vendors.csv").write_text("vendor,risk\nGlobex,high\n")
    (folder / "photo.jpg").write_bytes(b"\xff\xd8 not read")
    return folder


def sent_text(server: FakeLLMServer) -> str:
    return "\n".join(str(m.get("content", "")) for r in server.requests for m in r.messages)


def only_run_dir(out: Path) -> Path:
    [run_dir] = list(out.iterdir())
    return run_dir


def test_every_file_of_a_folder_reaches_the_request(llm_server: FakeLLMServer,
                                                    tmp_path: Path) -> None:
    evidence_folder(tmp_path)
    code, _, stderr = invoke("run", "audit.yaml", "-i", "brief=SOX", "-i", "evidence=@evidence/",
                             *server_args(llm_server))
    assert code == 0, stderr
    [review] = llm_server.requests_containing("Review # deck/steering.pptx")
    text = "\n".join(str(m["content"]) for m in review.messages)
    for expected in ("Access Control Policy", POLICY_CELL, "Control number 3",  # docx, xlsx
                     "Q3 steering", "Driven by Monterrey",  # pptx, in a subfolder
                     "Board minutes page one", "Budget approved in May",  # both PDF pages
                     "Badge reader", "Globex"):  # an HTML table cell, a CSV row
        assert expected in text, expected
    assert "| AC-2 | CISO | Quarterly access review |" in text  # a Word table stays a table
    assert "not read" not in text  # a photo is no document


def test_a_declared_file_input_takes_a_plain_path_and_the_history_lists_what_was_read(
        llm_server: FakeLLMServer, tmp_path: Path) -> None:
    make_docx(tmp_path / "policy.docx")
    llm_server.add_rule("# Your step: Audit memo (memo)", status=400, error_message="boom", times=1)
    code, _, stderr = invoke("run", "audit.yaml", "-i", "brief=SOX", "-i", "evidence=policy.docx",
                             *server_args(llm_server))
    assert code == 1, stderr  # the memo failed: resumed below
    assert POLICY_CELL in sent_text(llm_server)
    code, stdout, _ = invoke("show", "last")
    size = (tmp_path / "policy.docx").stat().st_size
    assert code == 0 and f"evidence: policy.docx · {size:,} bytes · sha256" in stdout
    code, stdout, _ = invoke("show", "last", "--json")
    [read] = json.loads(stdout)["files"]
    digest = hashlib.sha256((tmp_path / "policy.docx").read_bytes()).hexdigest()
    assert read == {"input": "evidence", "name": "policy.docx", "size": size, "sha256": digest}
    code, _, stderr = invoke("run", "--resume", "last", *server_args(llm_server))
    assert code == 0, stderr
    code, stdout, _ = invoke("show", "last")  # the resumed run read the same file
    assert code == 0 and "✓ memo" in stdout
    assert f"evidence: policy.docx · {size:,} bytes · sha256" in stdout


@pytest.mark.parametrize("make", [
    lambda path: make_zip_bomb(path / "bomb.docx"),
    lambda path: make_entity_bomb_docx(path / "entities.docx"),
    lambda path: make_encrypted_pdf(path / "locked.pdf"),
    lambda path: (path / "broken.pdf").write_bytes(b"%PDF-1.7\nnot really") and None,
    lambda path: os.symlink(path, path / "loop"),
], ids=["zip-bomb", "entity-bomb", "encrypted-pdf", "broken-pdf", "symlink-loop"])
def test_a_hostile_file_exits_2_before_any_call(llm_server: FakeLLMServer, tmp_path: Path,
                                                make: object) -> None:
    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / "fine.txt").write_text("an ordinary note")
    make(folder)  # type: ignore[operator]
    code, _, stderr = invoke("run", "audit.yaml", "-i", "brief=SOX", "-i", "evidence=@hostile/",
                             *server_args(llm_server))
    assert code == 2, stderr
    assert "hostile" in stderr and " — " in stderr  # located, with what to do
    assert llm_server.requests == []
    assert not (tmp_path / "runs").exists()


def test_a_prompt_too_large_for_the_window_exits_2_naming_the_input(
        llm_server: FakeLLMServer, tmp_path: Path) -> None:
    make_xlsx(tmp_path / "matrix.xlsx", rows=400)
    tenant = tmp_path / "small.yaml"
    tenant.write_text("id: small\ncontext_windows:\n  'openai/test-*': 2000\n")
    code, _, stderr = invoke("run", "audit.yaml", "-i", "brief=SOX", "-i", "evidence=@matrix.xlsx",
                             "--tenant", str(tenant), *server_args(llm_server))
    assert code == 2
    assert "context window is 2,000 tokens: input 'evidence' alone is" in stderr
    assert "step 'review' would send" in stderr and "--model" in stderr
    assert llm_server.requests == []


def test_dataset_cells_name_folders_beside_the_data_file(llm_server: FakeLLMServer,
                                                         tmp_path: Path) -> None:
    data = tmp_path / "audits"
    for name, text in (("acme", "Acme keeps paper logs"), ("globex", "Globex shreds weekly")):
        (data / name).mkdir(parents=True)
        make_pdf(data / name / "report.pdf", [[text]])
    # A declared file column needs no "@"; an "@" names files in any column.
    (data / "rows.csv").write_text("id,brief,evidence\nacme,SOX,@acme/\nglobex,SOX,globex\n")
    code, _, stderr = invoke("run", "audit.yaml", "--data", str(data / "rows.csv"),
                             "--format", "docx", *server_args(llm_server))
    assert code == 0, stderr
    assert len(llm_server.requests_containing("Acme keeps paper logs")) == 1
    assert len(llm_server.requests_containing("Globex shreds weekly")) == 1
    run_dir = only_run_dir(tmp_path / "runs")
    assert sorted(p.name for p in (run_dir / "rows").iterdir()) == [
        "acme.docx", "acme.md", "globex.docx", "globex.md"]
    code, stdout, _ = invoke("show", "last")
    assert code == 0 and "files read (2):" in stdout
    assert "evidence: report.pdf" in stdout
    calls = len(llm_server.requests)
    code, _, stderr = invoke("export", "last", "globex", "--format", "pdf", "--out", "one")
    assert code == 0, stderr
    assert len(llm_server.requests) == calls and (tmp_path / "one" / "globex.pdf").is_file()
    code, _, stderr = invoke("export", "last")
    assert code == 2 and "is a dataset run: its deliverables are per row" in stderr


def test_a_dataset_cell_naming_a_missing_file_is_located_before_any_call(
        llm_server: FakeLLMServer, tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("id,brief,evidence\na,SOX,@here.txt\nb,SOX,@gone/\n")
    (tmp_path / "here.txt").write_text("present")
    code, _, stderr = invoke("run", "audit.yaml", "--data", "rows.csv",
                             *server_args(llm_server))
    assert code == 2
    assert "rows.csv:3: column 'evidence': 'gone/': no such file — fix the path" in stderr
    assert llm_server.requests == []


def test_word_and_pdf_deliverables_read_back_with_structure_and_brand(
        llm_server: FakeLLMServer, tmp_path: Path) -> None:
    import docx
    import pypdf

    llm_server.add_rule(None, content=ANSWER)
    (tmp_path / "brief.txt").write_text("SOX")
    tenant = tmp_path / "acme.yaml"
    tenant.write_text("id: acme\nname: ACME Corp\nbranding:\n  primary_color: '#1F4E79'\n")
    code, stdout, stderr = invoke("run", "audit.yaml", "-i", "brief=@brief.txt", "-i",
                                  "evidence=@brief.txt", "--tenant", str(tenant), "--format",
                                  "md,docx,pdf", "--json", *server_args(llm_server))
    assert code == 0, stderr
    run_dir = only_run_dir(tmp_path / "runs")
    summary = json.loads(stdout)  # a script finds every deliverable from --json alone
    assert Path(summary["out_dir"]).resolve() == run_dir.resolve()
    assert summary["files"] == ["report.docx", "report.md", "report.pdf", "run.json",
                                *(f"steps/{s}.md" for s in sorted(summary["outputs"]))]
    document = docx.Document(str(run_dir / "report.docx"))
    headings = [p.text for p in document.paragraphs if p.style.name == "Heading 1"]
    assert headings == ["Evidence review", "Audit memo"]  # the step names, in plan order
    assert "Findings" in [p.text for p in document.paragraphs  # the answer's own heading,
                          if p.style.name.startswith("Heading ") and p.style.name != "Heading 1"]
    bold = [r.text for p in document.paragraphs for r in p.runs if r.bold]
    assert "late" in bold and "Unique accounts" in [p.text for p in document.paragraphs]
    assert [[c.text for c in row.cells] for row in document.tables[0].rows] == [
        ["Control", "Status"], ["AC-2", "Ineffective"]]
    assert "ACME Corp" in document.sections[0].header.paragraphs[0].text
    pdf_text = "\n".join(page.extract_text() for page in pypdf.PdfReader(
        str(run_dir / "report.pdf")).pages)
    for expected in ("ACME Corp", "Evidence review", "Audit memo", "Ineffective"):
        assert expected in pdf_text
    assert "## Evidence review" in (run_dir / "report.md").read_text()


def test_export_makes_the_deliverables_from_history_without_a_call(
        llm_server: FakeLLMServer, tmp_path: Path) -> None:
    import docx

    llm_server.add_rule(None, content=ANSWER)
    code, _, _ = invoke("run", "audit.yaml", "-i", "brief=SOX", "-i", "evidence=none",
                        *server_args(llm_server))
    assert code == 2  # 'none' names no file: refused before any call
    (tmp_path / "e.md").write_text("# Evidence\n\nAll fine.")
    code, _, _ = invoke("run", "audit.yaml", "-i", "brief=SOX", "-i", "evidence=@e.md",
                        *server_args(llm_server))
    assert code == 0
    calls = len(llm_server.requests)
    code, _, stderr = invoke("export", "last", "--format", "docx,md", "--out", "exported")
    assert code == 0, stderr
    assert len(llm_server.requests) == calls
    document = docx.Document(str(tmp_path / "exported" / "report.docx"))
    assert [p.text for p in document.paragraphs if p.style.name == "Heading 1"] == [
        "Evidence review", "Audit memo"]
    assert "| AC-2 | Ineffective |" in (tmp_path / "exported" / "report.md").read_text()
    code, _, stderr = invoke("export", "last", "row-1")
    assert code == 2 and "is a single run: it has no rows" in stderr


def test_a_second_run_over_the_same_files_converts_nothing(
        llm_server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dworkers.documents import readers

    evidence_folder(tmp_path)
    args = ("run", "audit.yaml", "-i", "brief=SOX", "-i", "evidence=@evidence/", "--no-cache",
            *server_args(llm_server))
    assert invoke(*args)[0] == 0

    def refuse_to_convert(*_: object) -> None:
        raise AssertionError("converted again")

    for name in ("read_pdf", "read_docx", "read_xlsx", "read_pptx"):
        monkeypatch.setattr(readers, name, refuse_to_convert)
    code, _, stderr = invoke(*args)
    assert code == 0, stderr  # every document came from the conversion cache
    first, second = (r for r in llm_server.requests_containing("Review # deck"))
    assert first.messages == second.messages


def test_an_unknown_format_or_a_missing_extra_exits_2_before_any_call(
        llm_server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    code, _, stderr = invoke("run", "audit.yaml", "-i", "brief=x", "-i", "evidence=@audit.yaml",
                             "--format", "md,odt", *server_args(llm_server))
    assert code == 2 and "--format: unknown format 'odt'" in stderr
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "reportlab" else real(name, *a))
    code, _, stderr = invoke("run", "audit.yaml", "-i", "brief=x", "-i", "evidence=@audit.yaml",
                             "--format", "pdf", *server_args(llm_server))
    assert code == 2 and "pip install 'dworkers[docs]'" in stderr
    assert llm_server.requests == []


def test_validate_and_the_schema_know_file_inputs(tmp_path: Path) -> None:
    code, _, stderr = invoke("validate", "audit.yaml")
    assert code == 0, stderr
    code, stdout, _ = invoke("schema", "plan")
    spec = json.loads(stdout)["$defs"]["InputSpec"]["properties"]["type"]
    assert spec["enum"] == ["text", "file"]
    (tmp_path / "bad.yaml").write_text(PLAN.replace("type: file", "type: folder"))
    code, _, stderr = invoke("validate", "bad.yaml")
    assert code == 2 and "bad.yaml:5" in stderr


def test_a_plan_or_tenant_sets_the_default_formats(llm_server: FakeLLMServer,
                                                  tmp_path: Path) -> None:
    (tmp_path / "e.txt").write_text("evidence")
    (tmp_path / "pdf.yaml").write_text("id: pdfs\nformats: [md, pdf]\n")
    args = ("-i", "brief=SOX", "-i", "evidence=@e.txt", *server_args(llm_server))
    assert invoke("run", "audit.yaml", "--tenant", "pdf.yaml", *args)[0] == 0
    (tmp_path / "docx.yaml").write_text(PLAN.replace("inputs:", "formats: [docx]\ninputs:"))
    assert invoke("run", "docx.yaml", "--tenant", "pdf.yaml", *args)[0] == 0  # the plan wins
    assert invoke("run", "docx.yaml", "--format", "md", *args)[0] == 0  # --format wins
    made = sorted(sorted(p.name for p in run.iterdir() if p.name.startswith("report."))
                  for run in (tmp_path / "runs").iterdir())
    assert made == [["report.docx", "report.md"], ["report.md"], ["report.md", "report.pdf"]]
