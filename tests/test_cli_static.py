"""The commands that never call a model: validate, list, show; and where plans come from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import invoke

from dworkers.discovery import search_path
from dworkers.plans.registry import plan_registry
from dworkers.tenants.registry import tenant_registry

REPO = Path(__file__).resolve().parent.parent
BUILTIN_NAMES = [
    "compliance-audit",
    "customer-segmentation",
    "market-analysis",
    "process-improvement",
    "technology-assessment",
]
GOOD = """\
name: good-plan
description: A small valid plan
inputs:
  topic:
    description: what to write about
steps:
  - step_id: draft
    name: Draft
    worker_role: analyst
    prompt_template: "Write about {topic}"
  - step_id: review
    name: Review
    worker_role: manager
    depends_on: [draft]
"""
BAD = """\
name: bad-plan
steps:
  - step_id: draft
    name: Draft
    worker_role: analist
  - step_id: review
    name: Review
    depends_on: [draf]
"""


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory: only the built-in library is found from here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# --- validate ---------------------------------------------------------------------------------


def test_validate_a_valid_file(cwd: Path) -> None:
    write(cwd / "good.yaml", GOOD)
    code, out, err = invoke("validate", "good.yaml")
    assert code == 0
    assert out == ""
    assert err == "✓ good.yaml: plan 'good-plan' is valid (2 steps)\n"


def test_validate_reports_every_problem_as_path_line_col(cwd: Path) -> None:
    write(cwd / "bad.yaml", BAD)
    code, out, err = invoke("validate", "bad.yaml")
    assert code == 2
    assert out == ""
    assert err.splitlines() == [
        "bad.yaml:5:18: unknown worker role 'analist' in step 'draft' — did you mean "
        "'analyst'? valid roles: analyst, researcher, data_analyst, manager, designer",
        "bad.yaml:8:18: step 'review' depends on unknown step 'draf' — did you mean 'draft'?",
        "2 problem(s) found.",
    ]


def test_validate_json(cwd: Path) -> None:
    write(cwd / "bad.yaml", BAD)
    code, out, err = invoke("validate", "bad.yaml", "--json")
    assert code == 2
    assert err == ""
    assert json.loads(out) == [
        {"file": "bad.yaml", "line": 5, "column": 18, "code": "unknown-role",
         "message": "unknown worker role 'analist' in step 'draft' — did you mean 'analyst'? "
                    "valid roles: analyst, researcher, data_analyst, manager, designer"},
        {"file": "bad.yaml", "line": 8, "column": 18, "code": "unknown-dependency",
         "message": "step 'review' depends on unknown step 'draf' — did you mean 'draft'?"},
    ]


def test_validate_json_of_valid_files_is_an_empty_list(cwd: Path) -> None:
    write(cwd / "good.yaml", GOOD)
    code, out, err = invoke("validate", "--json", "good.yaml", "compliance-audit",
                            str(REPO / "tenants" / "acme-corp.yaml"))
    assert (code, json.loads(out), err) == (0, [], "")


def test_validate_several_files_reports_all_of_them(cwd: Path) -> None:
    write(cwd / "good.yaml", GOOD)
    write(cwd / "bad.yaml", BAD)
    write(cwd / "tenant.yaml", "id: t\nmodels:\n  default: openai/gpt 4o\n")
    code, out, _ = invoke("validate", "--json", "good.yaml", "bad.yaml", "tenant.yaml")
    assert code == 2
    found = json.loads(out)
    assert [(p["file"], p["line"], p["column"], p["code"]) for p in found] == [
        ("bad.yaml", 5, 18, "unknown-role"),
        ("bad.yaml", 8, 18, "unknown-dependency"),
        ("tenant.yaml", 3, 12, "invalid-model"),
    ]
    for problem in found:
        assert set(problem) == {"file", "line", "column", "code", "message"}


def test_validate_registered_names(cwd: Path) -> None:
    code, _, err = invoke("validate", *BUILTIN_NAMES)
    assert code == 0
    assert err.count("✓") == 5


def test_validate_an_unknown_name_suggests_one(cwd: Path) -> None:
    code, out, err = invoke("validate", "complience-audit")
    assert code == 2
    assert "no plan named 'complience-audit' — did you mean 'compliance-audit'?" in err
    code, out, _ = invoke("validate", "--json", "complience-audit")
    assert json.loads(out)[0]["code"] == "not-found"


@pytest.mark.parametrize(
    ("content", "code", "line", "column"),
    [
        (b"name: !!python/object/apply:os.system [ls]\nsteps: []\n", "unsafe-tag", 1, 7),
        (b"name: a\nname: b\nsteps: []\n", "duplicate-key", 2, 1),
        (b"\x00\x01binary\xff\xfe", "not-utf8", 1, 9),
        (b"name: p\nsteps:\n  - {step_id: a, name: A, prompt_template: '{x:>999999999}'}\n",
         "template-syntax", 3, 45),
        (b"a: " + b"[" * 5000 + b"]" * 5000, "too-large", 1, 1003),
        (b"", "empty-file", 1, 1),
    ],
)
def test_validate_hostile_files_without_a_traceback(
    cwd: Path, content: bytes, code: str, line: int, column: int
) -> None:
    (cwd / "hostile.yaml").write_bytes(content)
    exit_code, out, _ = invoke("validate", "--json", "hostile.yaml")
    assert exit_code == 2
    first = json.loads(out)[0]
    assert (first["code"], first["line"], first["column"]) == (code, line, column)


def test_validate_a_missing_file_or_a_directory(cwd: Path) -> None:
    (cwd / "folder.yaml").mkdir()
    code, out, _ = invoke("validate", "--json", "missing.yaml", "folder.yaml")
    assert code == 2
    assert [(p["file"], p["code"]) for p in json.loads(out)] == [
        ("missing.yaml", "not-found"), ("folder.yaml", "not-a-file")]


@pytest.mark.parametrize("command", ["validate", "show"])
def test_a_name_too_long_for_the_file_system(cwd: Path, command: str) -> None:
    code, out, err = invoke(command, "x" * 5000)
    assert (code, out) == (2, "")
    assert "no plan" in err


def test_validate_in_a_real_process_exits_2_without_a_traceback(cwd: Path) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    (cwd / "bomb.yaml").write_text("\n".join(lines))
    write(cwd / "bad.yaml", BAD)
    result = subprocess.run(
        [sys.executable, "-m", "dworkers.cli", "validate", "bomb.yaml", "bad.yaml"],
        capture_output=True, text=True, timeout=60, check=False, cwd=cwd,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("bomb.yaml:6:28: file expands to more than 500,000 values")
    assert "bad.yaml:5:18: unknown worker role 'analist'" in result.stderr
    assert result.stdout == ""


# --- list -------------------------------------------------------------------------------------


def test_list_shows_the_builtin_library(cwd: Path) -> None:
    code, out, err = invoke("list")
    assert code == 0
    assert err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["PLAN", "STEPS", "INPUTS", "SOURCE", "DESCRIPTION"]
    assert [line.split()[0] for line in lines[1:]] == BUILTIN_NAMES
    assert "Audit regulatory compliance and generate remediation plan" in out
    assert lines[1].split()[:4] == ["compliance-audit", "6", "brief", "built-in"]


def test_list_json(cwd: Path) -> None:
    code, out, err = invoke("list", "--json")
    assert (code, err) == (0, "")
    plans = json.loads(out)
    assert [p["name"] for p in plans] == BUILTIN_NAMES
    first = plans[0]
    assert {"name", "steps", "required_inputs", "description", "source"} <= set(first)
    assert (first["steps"], first["required_inputs"], first["source"]) == (6, ["brief"],
                                                                            "built-in")
    assert first["description"] == "Audit regulatory compliance and generate remediation plan"
    assert [p["steps"] for p in plans] == [6, 6, 6, 6, 6]


def test_a_local_plan_overrides_a_builtin_and_says_where_it_came_from(cwd: Path) -> None:
    write(cwd / "plans" / "compliance-audit.yaml", GOOD.replace("good-plan", "compliance-audit"))
    write(cwd / "plans" / "extra.yml", GOOD.replace("good-plan", "extra"))
    code, out, _ = invoke("list", "--json")
    assert code == 0
    plans = {p["name"]: p for p in json.loads(out)}
    assert sorted(plans) == sorted([*BUILTIN_NAMES, "extra"])
    local = plans["compliance-audit"]
    assert (local["steps"], local["source"]) == (2, os.path.join("plans", "compliance-audit.yaml"))
    assert local["required_inputs"] == ["topic"]
    assert plans["extra"]["source"] == os.path.join("plans", "extra.yml")
    assert plans["market-analysis"]["source"] == "built-in"
    code, out, _ = invoke("list")
    row = next(line for line in out.splitlines() if line.startswith("compliance-audit"))
    assert row.split()[:4] == ["compliance-audit", "2", "topic",
                               os.path.join("plans", "compliance-audit.yaml")]


def test_plans_path_directories_in_order_of_precedence(
    cwd: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    write(first / "shared.yaml", GOOD.replace("good-plan", "shared"))
    write(second / "shared.yaml", BAD.replace("bad-plan", "shared").replace("analist", "analyst")
          .replace("draf]", "draft]"))
    write(second / "only-second.yaml", GOOD.replace("good-plan", "only-second"))
    monkeypatch.setenv("DWORKERS_PLANS_PATH", os.pathsep.join([str(first), str(second)]))
    code, out, _ = invoke("list", "--json")
    assert code == 0
    plans = {p["name"]: p for p in json.loads(out)}
    assert plans["shared"]["path"] == str(first / "shared.yaml")  # earlier directory wins
    assert plans["only-second"]["path"] == str(second / "only-second.yaml")
    write(cwd / "plans" / "shared.yaml", GOOD.replace("good-plan", "shared"))
    plan_registry.refresh()
    _, out, _ = invoke("list", "--json")
    plans = {p["name"]: p for p in json.loads(out)}
    assert plans["shared"]["source"] == os.path.join("plans", "shared.yaml")  # ./plans wins


def test_list_leaves_out_broken_files_and_says_why(cwd: Path) -> None:
    write(cwd / "plans" / "broken.yaml", BAD)
    (cwd / "plans" / "garbage.yaml").write_bytes(b"\xff\xfe\x00")
    (cwd / "plans" / "notes.txt").write_text("not a plan")
    code, out, err = invoke("list")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:]] == BUILTIN_NAMES
    assert "3 problem(s) kept some plan files out of this list:" in err
    assert "plans/broken.yaml:5:18: unknown worker role 'analist'" in err
    assert "plans/garbage.yaml:1:1: file is not UTF-8 text" in err


def test_two_files_of_one_directory_with_the_same_name(cwd: Path) -> None:
    write(cwd / "plans" / "a.yaml", GOOD.replace("good-plan", "twin"))
    write(cwd / "plans" / "b.yaml", GOOD.replace("good-plan", "twin"))
    code, out, err = invoke("list", "--json")
    assert code == 0
    twin = next(p for p in json.loads(out) if p["name"] == "twin")
    assert twin["path"] == str(cwd / "plans" / "a.yaml")
    assert (f"{cwd / 'plans' / 'b.yaml'}:1:7: plan name 'twin' is already used by a.yaml in the "
            "same directory, so this file is ignored") in err


def test_tenants_are_discovered_the_same_way(cwd: Path, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    assert tenant_registry.list_tenants() == ["acme-corp", "default"]
    assert tenant_registry.entry("acme-corp").origin == "built-in"
    elsewhere = tmp_path_factory.mktemp("tenants")
    write(elsewhere / "globex.yaml", "id: globex\nname: Globex\n")
    write(cwd / "tenants" / "acme-corp.yaml", "id: acme-corp\nname: Local ACME\n")
    monkeypatch.setenv("DWORKERS_TENANTS_PATH", str(elsewhere))
    tenant_registry.refresh()
    assert tenant_registry.list_tenants() == ["acme-corp", "default", "globex"]
    assert tenant_registry.get("acme-corp").name == "Local ACME"
    assert tenant_registry.entry("acme-corp").origin == "./tenants"
    assert tenant_registry.entry("globex").origin == "DWORKERS_TENANTS_PATH"


def test_search_path_order(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DWORKERS_PLANS_PATH", os.pathsep.join(["/a", "", "/b"]))
    origins = search_path("plans")
    assert [o.label for o in origins] == ["built-in", "DWORKERS_PLANS_PATH",
                                          "DWORKERS_PLANS_PATH", "./plans"]
    assert [str(o.directory) for o in origins[1:3]] == ["/b", "/a"]  # lowest precedence first


# --- show -------------------------------------------------------------------------------------


def test_show_tree(cwd: Path) -> None:
    code, out, err = invoke("show", "compliance-audit")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == ("compliance-audit — Audit regulatory compliance and generate "
                        "remediation plan")
    # the input's description from the plan file, so a user knows what to pass
    assert lines[1].startswith("inputs: brief — What to audit, for whom, and why")
    assert "├── scope-audit  analyst  ← triage" in lines
    assert "remediation-plan  analyst  ← research-regulations, analyze-gaps" in out


def test_show_mermaid(cwd: Path) -> None:
    code, out, _ = invoke("show", "compliance-audit", "--format", "mermaid")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "flowchart TD"
    assert '    s_scope_audit["Scope Audit (analyst)"]' in lines
    assert "    s_remediation_plan --> s_executive_briefing" in lines
    assert sum("-->" in line for line in lines) == 7


def test_show_a_file_and_json(cwd: Path) -> None:
    write(cwd / "good.yaml", GOOD)
    code, out, _ = invoke("show", "good.yaml", "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["name"], data["required_inputs"]) == ("good-plan", ["topic"])
    assert [s["step_id"] for s in data["steps"]] == ["draft", "review"]


def test_show_an_invalid_file_reports_its_problems(cwd: Path) -> None:
    write(cwd / "bad.yaml", BAD)
    code, out, err = invoke("show", "bad.yaml")
    assert (code, out) == (2, "")
    assert "bad.yaml:8:18: step 'review' depends on unknown step 'draf'" in err


def test_show_unknown_plan_or_format(cwd: Path) -> None:
    code, out, err = invoke("show", "market-analisys")
    assert (code, out) == (2, "")
    assert "no plan or run named 'market-analisys' — did you mean 'market-analysis'?" in err
    code, _, err = invoke("show", "market-analysis", "--format", "dot")
    assert code == 2
    assert "unknown format 'dot'" in err


def test_show_last_never_suggests_what_was_typed(cwd: Path) -> None:
    # 'last' names the last run, even where a plan is called 'last': with no run yet, the
    # hint must not be "did you mean 'last'?"
    write(cwd / "plans" / "last.yaml", GOOD.replace("name: good-plan", "name: last"))
    assert plan_registry.has("last")
    code, out, err = invoke("show", "last")
    assert (code, out) == (2, "")
    assert "no plan or run named 'last'" in err and "did you mean" not in err
    assert "give its file" in err


def test_python_dash_m_dworkers_is_the_same_command(cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    by_module = subprocess.run([sys.executable, "-m", "dworkers", "--version"],
                               capture_output=True, text=True, env=env, check=False)
    _, by_app, _ = invoke("--version")
    assert by_module.returncode == 0 and by_module.stdout == by_app
    assert by_module.stdout.startswith("dworkers ") and by_module.stdout.endswith("\n")
    listed = subprocess.run([sys.executable, "-m", "dworkers", "list", "--json"],
                            capture_output=True, text=True, env=env, check=False)
    assert listed.returncode == 0
    assert {p["name"] for p in json.loads(listed.stdout)} >= set(BUILTIN_NAMES)


# --- nothing here imports litellm -------------------------------------------------------------

PROBE = """
import json, sys
sys.argv = ["dworkers", *json.loads(sys.argv[1])]
from dworkers.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"litellm", "openai", "httpx", "aiohttp",
                                                          "tiktoken", "tokenizers"})
heavy += sorted(m for m in sys.modules if m in ("dworkers.engine", "dworkers.llm"))
sys.stderr.write("PROBE " + json.dumps({"code": code, "heavy": heavy}) + "\\n")
"""


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["list", "--json"],
        ["validate", "compliance-audit", str(REPO / "tenants" / "acme-corp.yaml")],
        ["validate", "--json", str(REPO / "plans" / "market-analysis.yaml")],
        ["show", "compliance-audit"],
        ["show", "compliance-audit", "--format", "mermaid"],
        ["--help"],
    ],
    ids=lambda args: " ".join(args)[:40],
)
def test_static_commands_do_not_import_litellm(cwd: Path, args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True,
                            text=True, timeout=60, check=False, cwd=cwd)
    probe = next(line for line in result.stderr.splitlines() if line.startswith("PROBE "))
    report = json.loads(probe.removeprefix("PROBE "))
    assert report == {"code": 0, "heavy": []}, result.stderr


# --- a broken file is never silently passed over ----------------------------------------------

BROKEN_ROLE = "unknown worker role 'analystt' in step 'triage' — did you mean 'analyst'?"


def broken_builtin(name: str = "compliance-audit") -> str:
    text = (REPO / "plans" / "compliance-audit.yaml").read_text(encoding="utf-8")
    assert "    worker_role: analyst\n" in text
    return text.replace("    worker_role: analyst\n", "    worker_role: analystt\n", 1).replace(
        "name: compliance-audit\n", f"name: {name}\n", 1)


def role_problem(path: Path, text: str) -> str:
    """``path:line:col`` of the first broken worker role in ``text``, as the CLI prints it."""
    lines = text.splitlines()
    line = next(i for i, ln in enumerate(lines, 1) if ln.endswith("worker_role: analystt"))
    return f"{os.path.join('plans', path.name)}:{line}:18: {BROKEN_ROLE}"


def test_a_broken_local_override_stops_run_and_show_instead_of_using_the_builtin(
    cwd: Path,
) -> None:
    text = broken_builtin()
    path = write(cwd / "plans" / "compliance-audit.yaml", text)
    expected = role_problem(path, text)
    code, out, err = invoke("run", "compliance-audit", "--mock", "-i", "brief=x")
    assert code == 2
    assert expected in err
    code, out, err = invoke("show", "compliance-audit")
    assert (code, out) == (2, "")
    assert expected in err
    code, out, err = invoke("validate", "compliance-audit")
    assert code == 2
    assert expected in out + err
    # list agrees: the built-in copy is not offered, and the file's problems say why.
    code, out, err = invoke("list", "--json")
    assert code == 0
    assert sorted(p["name"] for p in json.loads(out)) == BUILTIN_NAMES[1:]
    assert expected in err


def test_a_broken_file_found_by_its_declared_name_or_stem(cwd: Path) -> None:
    text = broken_builtin()
    path = write(cwd / "plans" / "my-audit.yaml", text)  # declares name: compliance-audit
    code, _, err = invoke("show", "compliance-audit")
    assert code == 2
    assert role_problem(path, text) in err
    code, _, err = invoke("show", "my-audit")  # and its stem
    assert code == 2
    assert role_problem(path, text) in err
    path.unlink()
    write(cwd / "plans" / "compliance-audit.yaml", "name: [unclosed\n")  # too broken to name
    plan_registry.refresh()
    code, _, err = invoke("run", "compliance-audit", "--mock", "-i", "brief=x")
    assert code == 2
    assert f"{os.path.join('plans', 'compliance-audit.yaml')}:2:1: invalid YAML" in err


def test_a_broken_local_only_plan_shows_its_problems_not_no_such_plan(cwd: Path) -> None:
    text = broken_builtin("my-plan")
    path = write(cwd / "plans" / "my-plan.yaml", text)
    for args in (["show", "my-plan"], ["run", "my-plan", "--mock", "-i", "brief=x"]):
        code, out, err = invoke(*args)
        assert (code, out) == (2, ""), args
        assert role_problem(path, text) in err
        assert "no plan" not in err


def test_a_broken_local_tenant_stops_a_run_instead_of_using_the_builtin(cwd: Path) -> None:
    write(cwd / "tenants" / "acme-corp.yaml", "id: acme-corp\nname: ACME\nmodels:\n  defualt: x\n")
    code, _, err = invoke("run", "compliance-audit", "--mock", "-i", "brief=x",
                          "--tenant", "acme-corp")
    assert code == 2
    assert (f"{os.path.join('tenants', 'acme-corp.yaml')}:4:3: unknown key 'defualt' in models "
            "of the tenant — did you mean 'default'?") in err
    code, out, err = invoke("list", "--tenants", "--json")
    assert code == 0
    assert [row["id"] for row in json.loads(out)] == ["default"]
    assert "unknown key 'defualt'" in err


def test_a_broken_unrelated_file_does_not_stop_a_valid_plan(cwd: Path) -> None:
    write(cwd / "plans" / "broken.yaml", BAD)
    write(cwd / "plans" / "good.yaml", GOOD)
    code, _, err = invoke("run", "good-plan", "--mock", "-i", "topic=tea")
    assert code == 0, err
    code, _, _ = invoke("run", "compliance-audit", "--mock", "-i", "brief=x")
    assert code == 0
    code, out, err = invoke("list", "--json")
    assert code == 0
    assert sorted(p["name"] for p in json.loads(out)) == sorted([*BUILTIN_NAMES, "good-plan"])
    assert "unknown worker role 'analist'" in err


def test_a_broken_file_of_lower_precedence_is_shadowed_by_a_valid_one(
    cwd: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dworkers.discovery import BrokenFileError
    from dworkers.loader import load_plan

    elsewhere = tmp_path_factory.mktemp("plans")
    write(elsewhere / "shared.yaml", BAD.replace("bad-plan", "shared"))
    write(cwd / "plans" / "shared.yaml", GOOD.replace("good-plan", "shared"))
    monkeypatch.setenv("DWORKERS_PLANS_PATH", str(elsewhere))
    assert plan_registry.entry("shared").origin == "./plans"
    assert "shared" in plan_registry.names()
    code, _, _ = invoke("show", "shared")
    assert code == 0
    # A plan registered from Python wins over every file, broken ones included.
    write(cwd / "plans" / "shared.yaml", BAD.replace("bad-plan", "shared"))
    plan_registry.refresh()
    with pytest.raises(BrokenFileError) as caught:
        plan_registry.get("shared")
    assert caught.value.path == cwd / "plans" / "shared.yaml"
    assert plan_registry.has("shared") and "shared" not in plan_registry.names()
    python_plan = load_plan("shared.yaml", GOOD.replace("good-plan", "shared"))
    plan_registry.register(python_plan)
    assert plan_registry.get("shared") is python_plan
