"""Messages that say what is really going on: a bad flag is a bad flag, a tab is a tab, a limit
is named, nothing is skipped without a word, and help is not cut short."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import invoke

from dworkers.cli import app
from dworkers.discovery import MAX_FILES_PER_DIRECTORY
from dworkers.engine import RunOptions
from dworkers.plans.base import BasePlan, PlanStep
from dworkers.plans.builder import PlanBuilder
from dworkers.tenants.registry import tenant_registry

GOOD = "name: {name}\ndescription: d\nsteps:\n  - {{step_id: a, name: A}}\n"


@pytest.fixture(autouse=True)
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DWORKERS_MOCK_LATENCY", "0")
    return tmp_path


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_help_lists_each_command_with_its_whole_first_sentence() -> None:
    code, out, _ = invoke("--help")
    assert code == 0
    flat = one_line(out)
    for command in app.registered_commands:
        doc = (command.callback.__doc__ or "").strip().split("\n\n")[0] if command.callback else ""
        assert one_line(doc) in flat, doc
    assert "...\n" not in out.split("Commands:", 1)[1]  # nothing cut short


def test_a_huge_runs_limit_is_a_bad_flag_not_a_corrupt_history() -> None:
    code, _, err = invoke("runs", "--limit", "99999999999999999999")
    assert code == 2
    assert "--limit" in err and "1000000" in err
    assert "corrupt" not in err and "move it aside" not in err


def test_a_tab_in_the_indentation_gets_its_own_hint(project: Path) -> None:
    (project / "tab.yaml").write_text("name: p\nsteps:\n\t- step_id: a\n")
    code, _, err = invoke("validate", "tab.yaml")
    assert code == 2
    assert "tab.yaml:3:1: invalid YAML: a tab in the indentation — indent with spaces, not tabs" \
        in err


def test_one_step_is_not_one_steps(project: Path) -> None:
    (project / "one.yaml").write_text(GOOD.format(name="one"))
    code, _, err = invoke("validate", "one.yaml")
    assert code == 0
    assert "plan 'one' is valid (1 step)" in err


def test_max_concurrency_capped_by_the_tenants_roles_says_so(project: Path) -> None:
    steps = "".join(f"  - {{step_id: s{i}, name: S, worker_role: manager}}\n" for i in range(6))
    (project / "wide.yaml").write_text(f"name: wide\nsteps:\n{steps}")
    code, _, err = invoke("run", "wide.yaml", "--mock", "--max-concurrency", "50", "-q",
                          "--out", str(project / "runs"))
    assert code == 0, err
    cap = tenant_registry.get("default").workers["manager"].max_concurrent_tasks
    assert (f"note: --max-concurrency 50: at most {cap} steps of this plan run at once, because "
            f"tenant 'default' caps its workers (manager {cap} at a time)") in one_line(err)
    code, _, err = invoke("run", "wide.yaml", "--mock", "--max-concurrency", "2", "-q",
                          "--out", str(project / "runs"))
    assert code == 0 and "note:" not in err  # nothing to say when the caps do not bind


def test_files_left_out_of_plans_are_named_once(project: Path) -> None:
    plans = project / "plans"
    plans.mkdir()
    (plans / "upper.YAML").write_text(GOOD.format(name="upper"))
    (plans / "dangling.yaml").symlink_to(project / "nowhere.yaml")
    (plans / "broken.yaml").write_text("name: broken\nsteps: [")
    (plans / "fine.yaml").write_text(GOOD.format(name="fine"))
    code, out, err = invoke("list")
    assert code == 0
    assert "fine" in out
    assert one_line(err).count("upper.YAML") == 1
    assert "only files ending in .yaml or .yml are read, not .YAML — rename it to upper.yaml" \
        in err
    assert "dangling.yaml: skipped: it is a symbolic link to a file that does not exist" in err
    assert "broken.yaml:" in err


def test_more_files_than_the_limit_are_not_skipped_silently(project: Path) -> None:
    plans = project / "plans"
    plans.mkdir()
    for i in range(MAX_FILES_PER_DIRECTORY + 2):
        (plans / f"p{i:04d}.yaml").write_text(GOOD.format(name=f"p{i:04d}"))
    code, _, err = invoke("list")
    assert code == 0
    assert f"skipped 2 files from p{MAX_FILES_PER_DIRECTORY:04d}.yaml on: at most " \
           f"{MAX_FILES_PER_DIRECTORY} files are read per directory" in one_line(err)


def test_a_missing_directory_in_the_search_path_is_said(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DWORKERS_PLANS_PATH", str(project / "nope"))
    code, _, err = invoke("list")
    assert code == 0
    assert (f"DWORKERS_PLANS_PATH: directory {str(project / 'nope')!r} in DWORKERS_PLANS_PATH "
            "does not exist") in one_line(err)


def test_a_builder_does_not_change_the_options_it_is_given() -> None:
    shared = RunOptions(max_concurrency=3)
    plan = BasePlan("p", steps=[PlanStep(step_id="a", name="A")])
    first = PlanBuilder(plan, model="openai/first", api_base="http://127.0.0.1:9", options=shared,
                        mock=True).build()
    second = PlanBuilder(plan, options=shared, mock=True).build()
    assert (shared.model, shared.api_base) == (None, None)
    assert first.model_for(plan.steps[0]) == "openai/first"
    assert second.model_for(plan.steps[0]) != "openai/first"
    assert second.options.api_base is None and second.options.max_concurrency == 3


def test_the_missing_input_error_says_what_the_input_is_for() -> None:
    code, _, err = invoke("run", "compliance-audit", "--mock")
    assert code == 2
    assert "missing input: brief (What to audit, for whom, and why" in err
    assert os.sep + "dworkers-runs" not in err


def test_running_a_plan_whose_file_was_skipped_says_why(project: Path) -> None:
    plans = project / "plans"
    plans.mkdir()
    (plans / "mine.YAML").write_text(GOOD.format(name="mine"))
    code, _, err = invoke("run", "mine", "--mock")
    assert code == 2
    assert "mine.YAML: skipped: only files ending in .yaml or .yml are read" in err
    assert "rename it to mine.yaml" in err


def test_show_json_gives_each_input_its_description() -> None:
    import json

    code, out, _ = invoke("show", "compliance-audit", "--json")
    assert code == 0
    brief = json.loads(out)["inputs"]["brief"]
    assert brief["description"].startswith("What to audit") and brief["default"] is None
