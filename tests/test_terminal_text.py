"""Nothing from a plan file, a tenant file or a model can move the cursor: every command that
prints their text strips escape sequences and control characters first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from support import FakeLLMServer, invoke, llm_server

from dworkers import view
from dworkers.errors import Problem

__all__ = ["llm_server"]

# YAML's own escapes put raw escape codes into a value: retitle the window, clear the screen,
# colour, and an 8-bit CSI.
EVIL = r"\e]0;PWNED\a\e[2J\e[31mred\e[0m \x9b2J"

PLAN = f"""\
name: evil
description: "Looks {EVIL} harmless"
inputs:
  topic:
    description: "what {EVIL} about"
steps:
  - step_id: first
    name: "First {EVIL} step"
    prompt_template: "Write about {{topic}}"
"""

TENANT = f"""\
id: evil-corp
name: "Evil {EVIL} Corp"
context: "Sells {EVIL} widgets"
models:
  default: "openai/test-model"
"""

CLEAN_PLAN = """\
name: evil
steps:
  - step_id: first
    name: First
    prompt_template: "Write about {topic}"
"""

MODEL_ANSWER = "Answer line one\n\x1b]0;PWNED\x07\x1b[2J\x1b[1;31mred\x1b[0m\nline three \x9b2J"


@pytest.fixture(autouse=True)
def project(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("DWORKERS_MOCK_LATENCY", "0")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "evil.yaml").write_text(PLAN)
    (tmp_path / "tenants").mkdir()
    (tmp_path / "tenants" / "evil-corp.yaml").write_text(TENANT)
    return tmp_path


def assert_inert(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text, repr(text)
    assert "[2J" not in text and "]0;" not in text and "[31m" not in text, repr(text)


def test_plan_and_tenant_files_with_control_characters_are_refused_by_validate() -> None:
    code, out, err = invoke("validate", "plans/evil.yaml", "tenants/evil-corp.yaml")
    assert code == 2
    assert "plans/evil.yaml:2:" in err and "control character '\\x1b' in description" in err
    assert "control character '\\x1b' in inputs.topic.description" in err
    assert "control character '\\x1b' in steps.0.name" in err
    assert "tenants/evil-corp.yaml:2:" in err and "control character '\\x1b' in name" in err
    assert_inert(out + err)


def test_list_and_show_say_what_is_wrong_with_such_files_without_printing_the_codes() -> None:
    for args, expected in ((["list"], 0), (["list", "--tenants"], 0), (["show", "evil"], 2)):
        code, out, err = invoke(*args)
        assert code == expected and "control character" in err, args
        assert_inert(out + err)


def test_tables_and_trees_strip_escapes_from_whatever_they_are_given() -> None:
    from dworkers.catalog import PlanSummary
    from dworkers.plans.base import BasePlan, InputSpec, PlanStep

    raw = "Looks \x1b]0;PWNED\x07\x1b[2J\x1b[31mred\x1b[0m \x9b2Jharmless"
    out = Console(width=100, record=True, force_terminal=False)
    out.print(view.plan_table([PlanSummary("p", 1, ["topic"], raw, "./plans", "p.yaml")], 100))
    out.print(view.tenant_table([{"id": "t", "name": raw, "default_model": "openai/x",
                                  "source": "built-in"}]))
    plan = BasePlan("p", raw, [PlanStep(step_id="a", name=raw, prompt_template="{topic}")],
                    inputs={"topic": InputSpec(description=raw)})
    out.print(view.plan_tree(plan))
    out.print(view.mermaid(plan), markup=False)
    text = out.export_text()
    assert text.count("Looks red harmless") >= 4  # description, name, input, tree, mermaid
    assert_inert(text)


def test_json_escapes_c1_controls_too() -> None:
    from dworkers.tenants.config import ModelsConfig, TenantConfig
    from dworkers.tenants.registry import tenant_registry

    tenant_registry.register(TenantConfig(id="c1", name="C1 \x9b2J corp",
                                          models=ModelsConfig(default="openai/x")))
    code, out, _ = invoke("list", "--tenants", "--json")
    assert code == 0
    assert "\x9b" not in out and "\\u009b" in out
    [tenant] = [t for t in json.loads(out) if t["id"] == "c1"]
    assert tenant["name"] == "C1 \x9b2J corp"  # the value itself is kept, only printed safely


def test_a_model_answer_with_escapes_is_inert_in_show_and_report(
    llm_server: FakeLLMServer, project: Path
) -> None:
    llm_server.add_rule(None, content=MODEL_ANSWER)
    (project / "plans" / "evil.yaml").write_text(CLEAN_PLAN)
    code, _, err = invoke("run", "evil", "-i", "topic=tea", "--model", "openai/test-model",
                          "--api-base", llm_server.url, "--out", str(project / "runs"))
    assert code == 0, err
    assert_inert(err)
    [run_dir] = list((project / "runs").iterdir())
    for name in ("report.md", "steps/first.md"):
        text = (run_dir / name).read_text()
        assert "Answer line one" in text and "line three" in text
        assert_inert(text)

    code, out, err = invoke("show", "last")
    assert code == 0, err
    assert "Answer line one\nred\nline three" in out  # lines kept, codes gone
    assert_inert(out + err)
    code, out, err = invoke("show", "last", "first")
    assert code == 0, err
    assert out.startswith("Answer line one\n")
    assert_inert(out + err)
    code, out, err = invoke("runs")
    assert code == 0, err
    assert_inert(out + err)


def test_errors_and_problems_are_printed_without_escapes() -> None:
    out = Console(width=100, record=True, force_terminal=False)
    view.print_problems(out, [Problem("bad \x1b[31mred\x1b[0m\x1b[2J value", "fix \x1b]0;x\x07 it",
                                      file="plan\x1b[31m.yaml", line=3, column=4)])
    view.print_error(out, "failed: \x1b[2Jgone")
    text = out.export_text()
    assert "bad" in text and "fix  it" in text and "failed: gone" in text
    assert_inert(text)


def test_tables_measure_terminal_cells_so_wide_characters_keep_columns_aligned() -> None:
    from rich.cells import cell_len

    from dworkers.catalog import PlanSummary

    plans = [PlanSummary("alpha", 1, ["主題"], "DESC-A 説明", "./plans", "日本語/計画.yaml"),
             PlanSummary("beta", 12, ["x"], "DESC-B 🎉", "./plans", "b.yaml")]
    out = Console(width=60, record=True, force_terminal=False)
    out.print(view.plan_table(plans, 60), soft_wrap=True)
    lines = out.export_text().splitlines()
    starts = {cell_len(line[: line.index("DESC")]) for line in lines[1:]}
    assert len(starts) == 1, lines  # the description column starts at the same cell everywhere
    assert all(cell_len(line) <= 60 for line in lines), lines
