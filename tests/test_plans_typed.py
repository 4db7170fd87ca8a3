"""The built-in plans' typed steps, and the table a typed dataset run writes: each built-in plan
has a typed step whose fields a later step reads, runs offline with answers that fit, and passes
the exact figures on (through litellm and the suite's own server); ``results.csv`` is safe to
open in a spreadsheet and keeps numbers as numbers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from support import FakeLLMServer, invoke, llm_server

from dworkers import loader, output_schema, templates
from dworkers.dataset.outputs import spreadsheet_text

__all__ = ["llm_server"]

REPO = Path(__file__).resolve().parent.parent
BUILTIN_PLANS = sorted((REPO / "plans").glob("*.yaml"))


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DWORKERS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DWORKERS_MOCK_LATENCY", "0")
    monkeypatch.chdir(tmp_path)


def typed_fields_read_later(path: Path) -> set[str]:
    """The ``step.field`` references to a typed step in later steps' templates."""
    plan = loader.load_plan(path)
    typed = {step.step_id for step in plan.steps if step.answer_schema() is not None}
    found: set[str] = set()
    for step in plan.steps:
        parsed = templates.parse(step.prompt_template or "", typed=True)
        found |= {".".join(p.path) for p in parsed.placeholders
                  if len(p.path) > 1 and p.path[0] in typed}
    return found


@pytest.mark.parametrize("path", BUILTIN_PLANS, ids=lambda p: p.stem)
def test_every_builtin_plan_has_a_typed_step_whose_fields_a_later_step_reads(
        path: Path) -> None:
    assert typed_fields_read_later(path), f"{path.stem}: no later step reads a typed field"
    code, _, stderr = invoke("validate", str(path))
    assert code == 0 and "is valid" in stderr  # 0 false positives on what we ship


@pytest.mark.parametrize("path", BUILTIN_PLANS, ids=lambda p: p.stem)
def test_every_builtin_plan_runs_offline_with_answers_that_fit_its_schemas(
        path: Path, tmp_path: Path) -> None:
    plan = loader.load_plan(path)
    given = [arg for name in plan.required_inputs() for arg in ("-i", f"{name}=a {name}")]
    code, stdout, stderr = invoke("run", path.stem, "--mock", "--json", "--out", "runs",
                                  *given)
    assert code == 0, stderr
    outputs = json.loads(stdout)["outputs"]
    typed = [step for step in plan.steps if step.answer_schema() is not None]
    assert typed
    for step in typed:
        value = outputs[step.step_id]["value"]
        schema = step.answer_schema()
        assert schema is not None and output_schema.validate_value(value, schema)[1] == []
    report = (next((tmp_path / "runs").iterdir()) / "report.md").read_text()
    first_field = next(iter(typed[0].answer_schema()["properties"]))  # type: ignore[index]
    assert f"\n{first_field}:" in report and "{\"" not in report  # fields, not JSON


SIZING = {
    "size_unit": "EUR million a year", "tam": 1250.5, "sam": 480, "som": 36,
    "growth_low_pct": -3, "growth_base_pct": 4.5, "growth_high_pct": 12,
    "drivers": [{"driver": "fleet operators", "value": "42,000", "basis": "assumed"}],
    "sensitivities": ["subsidy levels"], "confidence": "medium", "method": "top-down",
}


def test_the_market_report_quotes_the_sizing_figures_exactly(
        llm_server: FakeLLMServer) -> None:
    llm_server.add_rule("# Your step: Size the Market (analyze-market-data)",
                        content=json.dumps(SIZING))
    code, _, stderr = invoke("run", "market-analysis", "-i", "brief=Enter?", "-i",
                             "market=cargo bikes", "-i", "geography=EU", "--model",
                             "openai/test-model", "--api-base", llm_server.url, "--out", "runs")
    assert code == 0, stderr
    [report] = llm_server.requests_containing("# Your step: Design Report (design-report)")
    # design-report does not depend on the sizing directly: only its typed fields bring the
    # figures, unchanged by the synthesis in between.
    assert "## Input from Size the Market" not in report.text
    assert ("in\nEUR million a year: TAM 1250.5, SAM 480,\nSOM 36; 5-year annual growth -3% to"
            "\n12% (base 4.5%); sizing\nconfidence medium.") in report.text


# --- results.csv in a spreadsheet ---------------------------------------------------------------


@pytest.mark.parametrize(("text", "cell"), [
    ("=HYPERLINK(\"http://x\",\"go\")", "'=HYPERLINK(\"http://x\",\"go\")"),
    ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
    ("-2+3", "'-2+3"),
    ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
    ("\t=1", "'\t=1"),
    ("\r=1", "'\r=1"),
    ("-", "'-"),
    ("-3", "-3"),  # a number, not a formula: a spreadsheet reads -3
    ("+1.5", "+1.5"),
    ("-2.5e3", "-2.5e3"),
    ("-١", "'-١"),  # digits a spreadsheet does not read as a number are text
    ("a = b", "a = b"),
    ("", ""),
])
def test_a_cell_that_would_run_as_a_formula_is_made_text(text: str, cell: str) -> None:
    assert spreadsheet_text(text) == cell


def test_a_typed_dataset_table_neutralises_formulas_and_keeps_numbers(
        llm_server: FakeLLMServer, tmp_path: Path) -> None:
    rows = tmp_path / "markets.csv"
    with rows.open("w", newline="") as handle:
        csv.writer(handle).writerows([
            ["id", "brief", "market", "geography"],
            ["bikes", '=HYPERLINK("http://evil.example","go")', "cargo bikes", "-3"],
            ["-7", "@@SUM(A1:A9)", "vans", "EU"],  # '@@' is a literal '@'; '@' reads a file
        ])
    hostile = {**SIZING, "size_unit": "=1+2", "method": "+cmd|' /C calc'!A0"}
    llm_server.add_rule("Estimate the size and growth of cargo bikes",
                        content=json.dumps(hostile))
    llm_server.add_rule("Estimate the size and growth of vans", content=json.dumps(SIZING))
    code, _, stderr = invoke("run", "market-analysis", "--data", str(rows), "--model",
                             "openai/test-model", "--api-base", llm_server.url, "--out", "runs")
    assert code == 0, stderr
    [run_dir] = (tmp_path / "runs").iterdir()
    with (run_dir / "results.csv").open(newline="") as handle:
        table = {r["key"]: r for r in csv.DictReader(handle)}
    bikes, vans = table["bikes"], table["-7"]  # a key that is a number stays one
    assert bikes["brief"] == '\'=HYPERLINK("http://evil.example","go")'
    assert vans["brief"] == "'@SUM(A1:A9)"
    assert bikes["analyze-market-data.size_unit"] == "'=1+2"
    assert bikes["analyze-market-data.method"] == "'+cmd|' /C calc'!A0"
    assert bikes["geography"] == "-3"  # an input that is a number
    assert [bikes[f"analyze-market-data.{f}"] for f in ("tam", "growth_low_pct")] == [
        "1250.5", "-3"]  # typed numbers are numbers, a negative one too
    assert vans["analyze-market-data.size_unit"] == "EUR million a year"
    # results.jsonl keeps the answers as they were: only the spreadsheet's copy is guarded.
    lines = {r["key"]: r for r in map(json.loads, (run_dir / "results.jsonl").read_text()
                                      .splitlines())}
    assert lines["bikes"]["outputs"]["analyze-market-data"]["size_unit"] == "=1+2"
    assert lines["bikes"]["inputs"]["brief"].startswith("=HYPERLINK")
