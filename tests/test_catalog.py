"""The plan catalog behind ``dworkers list``: the same answer as the registry, rebuilt when a
file changes, and cheap when nothing did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dworkers.catalog import CACHE_NAME, plan_catalog
from dworkers.files import data_dir

PLAN = """\
name: local-plan
description: {description}
steps:
  - step_id: only
    name: Only
    prompt_template: "Work on {{topic}}"
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plans").mkdir()
    return tmp_path


def names(project: Path) -> list[str]:
    return [plan.name for plan in plan_catalog()[0]]


def test_the_catalog_lists_built_ins_and_local_plans_with_their_origin(project: Path) -> None:
    (project / "plans" / "local.yaml").write_text(PLAN.format(description="first"))
    plans, problems = plan_catalog()
    assert problems == []
    by_name = {plan.name: plan for plan in plans}
    assert by_name["local-plan"].origin == "./plans"
    assert by_name["local-plan"].required_inputs == ["topic"]
    assert by_name["local-plan"].steps == 1
    assert by_name["compliance-audit"].origin == "built-in"
    assert (data_dir() / CACHE_NAME).is_file()


def test_a_changed_file_is_read_again(project: Path) -> None:
    path = project / "plans" / "local.yaml"
    path.write_text(PLAN.format(description="first"))
    plans = {plan.name: plan for plan in plan_catalog()[0]}
    assert plans["local-plan"].description == "first"
    path.write_text(PLAN.format(description="second, and longer"))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    plans = {plan.name: plan for plan in plan_catalog()[0]}
    assert plans["local-plan"].description == "second, and longer"


def test_a_new_broken_file_shows_its_problems_and_a_removed_one_disappears(
    project: Path,
) -> None:
    broken = project / "plans" / "broken.yaml"
    broken.write_text("name: broken\nsteps:\n  - step_id: a\n    name: A\n    depends_on: [b]\n")
    plans, problems = plan_catalog()
    assert "broken" not in [p.name for p in plans]
    assert [p.render() for p in problems] == [
        f"{broken}:5:18: step 'a' depends on unknown step 'b' — depends_on must name step_ids "
        "defined in this plan"
    ]
    broken.unlink()
    assert plan_catalog()[1] == []


def test_a_damaged_cache_is_rebuilt(project: Path) -> None:
    expected = plan_catalog()
    (data_dir() / CACHE_NAME).write_text("{not json")
    assert plan_catalog() == expected
    json.loads((data_dir() / CACHE_NAME).read_text())  # and written again


def test_an_unwritable_home_still_lists(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = project / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("DWORKERS_HOME", str(blocker / "home"))
    assert "compliance-audit" in names(project)


def test_a_warm_list_reads_no_yaml_and_builds_no_models(project: Path) -> None:
    script = (
        "import sys\n"
        "from dworkers.cli import main\n"
        "sys.argv = ['dworkers', 'list', '--json']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'yaml', 'pydantic', 'litellm'})\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    env = {**os.environ}
    for _ in range(2):  # the first run builds the catalog, the second uses it
        done = subprocess.run([sys.executable, "-c", script], cwd=project, env=env,
                              capture_output=True, text=True, timeout=60, check=True)
    assert "HEAVY []" in done.stderr
    assert "compliance-audit" in [p["name"] for p in json.loads(done.stdout)]


def test_list_tenants_shows_each_tenant_and_its_default_model(project: Path) -> None:
    from typer.testing import CliRunner

    from dworkers.cli import app

    result = CliRunner().invoke(app, ["list", "--tenants", "--json"])
    assert result.exit_code == 0
    rows = {row["id"]: row for row in json.loads(result.stdout)}
    assert rows["acme-corp"]["name"] == "ACME Corp"
    assert rows["default"]["default_model"] == "openai/gpt-4o-mini"
    assert rows["default"]["source"] == "built-in"


def test_a_plan_hidden_by_a_broken_override_is_left_out_like_the_registry_does(
    project: Path,
) -> None:
    from dworkers.plans.registry import plan_registry

    broken = project / "plans" / "compliance-audit.yaml"
    broken.write_text("name: compliance-audit\nsteps:\n  - step_id: a\n    name: A\n"
                      "    depends_on: [b]\n")
    plans, problems = plan_catalog()
    assert "compliance-audit" not in [p.name for p in plans]
    assert [p.name for p in plans] == plan_registry.names()
    assert [p.render() for p in problems] == [
        f"{broken}:5:18: step 'a' depends on unknown step 'b' — depends_on must name step_ids "
        "defined in this plan"
    ]
    broken.unlink()
    assert "compliance-audit" in names(project)  # the built-in is back


def test_an_edit_that_keeps_size_and_mtime_is_still_seen(project: Path) -> None:
    path = project / "plans" / "local.yaml"
    path.write_text(PLAN.format(description="aaaa"))
    before = path.stat()
    assert {p.name: p for p in plan_catalog()[0]}["local-plan"].description == "aaaa"
    path.write_text(PLAN.format(description="bbbb"))  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `cp -p` would leave it
    assert {p.name: p for p in plan_catalog()[0]}["local-plan"].description == "bbbb"
