"""``dworkers run`` end to end: exit codes, the run directory, JSON, line mode, dry runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support import FakeLLMServer, invoke, llm_server, marker

__all__ = ["llm_server"]

PLAN = """\
name: tiny
description: A tiny plan
inputs:
  topic:
    description: what to write about
steps:
  - step_id: scope
    name: SCOPE
    worker_role: analyst
    prompt_template: "Scope {topic}"
  - step_id: left
    name: LEFT
    worker_role: researcher
    depends_on: [scope]
  - step_id: right
    name: RIGHT
    worker_role: data_analyst
    depends_on: [scope]
  - step_id: final
    name: FINAL
    worker_role: manager
    depends_on: [left, right]
"""


@pytest.fixture
def plan_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(PLAN)
    return path


@pytest.fixture(autouse=True)
def instant_mock(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DWORKERS_MOCK_LATENCY", "0")
    monkeypatch.setenv("DWORKERS_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


def only_run_dir(out: Path) -> Path:
    [run_dir] = list(out.iterdir())
    return run_dir


def test_mock_run_of_a_builtin_plan_succeeds_and_saves_everything(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    code, stdout, stderr = invoke("run", "compliance-audit", "--mock", "--input",
                                  "brief=Audit SOX compliance for Q4", "--out", str(out))
    assert code == 0, stderr
    assert stdout == ""  # human output goes to stderr
    run_dir = only_run_dir(out)
    data = json.loads((run_dir / "run.json").read_text())
    assert data["status"] == "succeeded" and data["plan"] == "compliance-audit"
    assert data["inputs"] == {"brief": "Audit SOX compliance for Q4"}
    # The triage's when: may spare the research: skipped, not failed.
    ran = [sid for sid, step in data["outputs"].items() if step["status"] == "succeeded"]
    spared = [sid for sid, step in data["outputs"].items() if step["condition_false"]]
    assert sorted(ran + spared) == sorted(["triage", "scope-audit", "research-regulations",
                                           "analyze-gaps", "remediation-plan",
                                           "executive-briefing"])
    assert set(spared) <= {"research-regulations"}
    steps = sorted(p.stem for p in (run_dir / "steps").glob("*.md"))
    assert steps == sorted(ran)
    assert data["counts"]["succeeded"] == len(ran)
    report = (run_dir / "report.md").read_text()
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert headings == ["## Triage", "## Scope Audit", "## Research Regulations",
                        "## Analyze Compliance Gaps", "## Remediation Plan",
                        "## Executive Briefing"]
    assert str(run_dir) in stderr  # the summary says where the outputs are


def test_json_prints_one_document_and_nothing_else(plan_file: Path, tmp_path: Path) -> None:
    code, stdout, _ = invoke("run", str(plan_file), "--mock", "-i", "topic=tea", "--json",
                             "--out", str(tmp_path / "runs"))
    assert code == 0
    data = json.loads(stdout)
    assert data["success"] is True
    assert list(data["outputs"]) == ["scope", "left", "right", "final"]
    assert all(step["status"] == "succeeded" for step in data["outputs"].values())
    assert "Scope tea" in data["outputs"]["scope"]["output"]


def test_line_mode_prints_one_line_per_state_change(plan_file: Path) -> None:
    code, _, stderr = invoke("run", str(plan_file), "--mock", "-i", "topic=tea")
    assert code == 0
    assert "scope" in stderr and "final" in stderr
    assert "\x1b[" not in stderr  # no live redraw or colour codes when not a terminal


def test_a_failing_step_exits_1_and_keeps_the_other_outputs(
    llm_server: FakeLLMServer, plan_file: Path, tmp_path: Path
) -> None:
    llm_server.add_rule(marker("left"), status=500, error_message="boom")
    out = tmp_path / "runs"
    code, _, stderr = invoke("run", str(plan_file), "-i", "topic=tea", "--model",
                             "openai/test-model", "--api-base", llm_server.url, "--out", str(out))
    assert code == 1, stderr
    run_dir = only_run_dir(out)
    assert sorted(p.stem for p in (run_dir / "steps").glob("*.md")) == ["right", "scope"]
    data = json.loads((run_dir / "run.json").read_text())
    assert data["status"] == "failed"
    assert data["outputs"]["left"]["status"] == "failed"
    assert "boom" in data["outputs"]["left"]["error"]
    assert data["outputs"]["final"]["status"] == "skipped"
    assert data["outputs"]["final"]["error"] == "left failed"
    assert "sk-test-not-a-real-key" not in "".join(
        p.read_text() for p in run_dir.rglob("*") if p.is_file()
    )


def test_missing_inputs_exit_2_before_anything_runs(plan_file: Path, tmp_path: Path) -> None:
    code, stdout, stderr = invoke("run", str(plan_file), "--mock", "-i", "tpic=x")
    assert code == 2
    assert "--input: missing input: topic" in stderr
    assert "did you mean 'topic'?" in stderr
    assert "Traceback" not in stderr and stdout == ""
    assert not (tmp_path / "dworkers-runs").exists()


def test_missing_key_exits_2_and_names_the_variable(
    plan_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code, _, stderr = invoke("run", str(plan_file), "-i", "topic=x", "--model",
                             "openai/gpt-4o-mini")
    assert code == 2
    assert "OPENAI_API_KEY" in stderr and "Traceback" not in stderr


def test_an_invalid_plan_exits_2_with_located_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(PLAN.replace("depends_on: [left, right]", "depends_on: [left, rihgt]"))
    code, _, stderr = invoke("run", str(bad), "--mock", "-i", "topic=x")
    assert code == 2
    assert f"{bad}:22:24: step 'final' depends on unknown step 'rihgt'" in stderr
    assert "did you mean 'right'?" in stderr


def test_dry_run_prints_prompts_and_schedule(plan_file: Path) -> None:
    code, stdout, _ = invoke("run", str(plan_file), "-i", "topic=tea", "--dry-run")
    assert code == 0
    assert "  1. scope\n  2. left, right\n  3. final\n" in stdout
    assert "Scope tea" in stdout
    assert "<output of left>" in stdout


def test_dry_run_with_a_missing_input_exits_2(plan_file: Path) -> None:
    code, _, stderr = invoke("run", str(plan_file), "--dry-run")
    assert code == 2 and "missing input: topic" in stderr


def test_input_values_can_come_from_files(plan_file: Path, tmp_path: Path) -> None:
    (tmp_path / "topic.txt").write_text("green tea from a file")
    code, stdout, _ = invoke("run", str(plan_file), "-i", "topic=@topic.txt", "--dry-run")
    assert code == 0 and "Scope green tea from a file" in stdout
    code, _, stderr = invoke("run", str(plan_file), "-i", "topic=@missing.txt", "--dry-run")
    assert code == 2 and "cannot read input 'topic'" in stderr


def test_unknown_plan_name_suggests_the_closest(tmp_path: Path) -> None:
    code, _, stderr = invoke("run", "complianse-audit", "--mock")
    assert code == 2 and "did you mean 'compliance-audit'?" in stderr


def test_resume_calls_only_the_failed_step_and_its_descendants(
    llm_server: FakeLLMServer, plan_file: Path, tmp_path: Path
) -> None:
    # A refusal, not a 5xx: the default tenant retries 5xx (limits.retry_max).
    rule = llm_server.add_rule(marker("left"), status=400, error_message="boom")
    common = ("--model", "openai/test-model", "--api-base", llm_server.url,
              "--out", str(tmp_path / "runs"))
    code, _, _ = invoke("run", str(plan_file), "-i", "topic=tea", *common)
    assert code == 1
    assert len(llm_server.requests) == 3  # scope, right, and the failing left
    llm_server.clear_rules()
    assert rule.matched == 1

    code, stdout, stderr = invoke("run", str(plan_file), "--resume", "last", "--json", *common)
    assert code == 0, stderr
    called = llm_server.requests[3:]
    assert sorted(step for r in called for step in ("left", "final")
                  if marker(step) in r.text) == ["final", "left"]
    assert len(called) == 2  # scope and right were reused, not paid for again
    data = json.loads(stdout)
    assert data["inputs"] == {"topic": "tea"}  # taken from the resumed run
    assert data["outputs"]["scope"]["cached"] is True
    assert data["outputs"]["left"]["cached"] is False


def test_identical_steps_come_from_the_cache_unless_told_otherwise(
    llm_server: FakeLLMServer, plan_file: Path, tmp_path: Path
) -> None:
    common = ("-i", "topic=tea", "--model", "openai/test-model", "--api-base", llm_server.url,
              "--out", str(tmp_path / "runs"))
    assert invoke("run", str(plan_file), *common)[0] == 0
    assert len(llm_server.requests) == 4
    code, stdout, _ = invoke("run", str(plan_file), *common, "--json")
    assert code == 0 and len(llm_server.requests) == 4  # zero calls
    assert all(step["cached"] for step in json.loads(stdout)["outputs"].values())
    assert invoke("run", str(plan_file), *common, "--no-cache")[0] == 0
    assert len(llm_server.requests) == 8


def test_runs_and_show_read_the_history(plan_file: Path, tmp_path: Path) -> None:
    assert invoke("run", str(plan_file), "--mock", "-i", "topic=tea",
                  "--out", str(tmp_path / "runs"))[0] == 0
    code, stdout, _ = invoke("runs", "--json")
    [record] = json.loads(stdout)
    assert record["plan"] == "tiny" and record["status"] == "succeeded"
    code, stdout, _ = invoke("show", record["run_id"][:17], "scope")
    assert code == 0 and "Scope tea" in stdout
    code, stdout, _ = invoke("show", "last")
    assert code == 0 and "✓ scope" in stdout and "## SCOPE (scope)" in stdout
    code, _, stderr = invoke("show", "no-such-thing")
    assert code == 2 and "no plan or run named 'no-such-thing'" in stderr


def test_resume_with_other_inputs_runs_again_what_they_change(
    llm_server: FakeLLMServer, plan_file: Path, tmp_path: Path
) -> None:
    llm_server.add_rule(marker("left"), status=400, times=1)  # a 5xx would be retried
    common = ("--model", "openai/test-model", "--api-base", llm_server.url,
              "--out", str(tmp_path / "runs"))
    assert invoke("run", str(plan_file), "-i", "topic=tea", *common)[0] == 1
    first = len(llm_server.requests)

    code, stdout, _ = invoke("run", "--resume", "last", "-i", "topic=coffee", "--json", *common)
    assert code == 0
    data = json.loads(stdout)
    assert data["inputs"] == {"topic": "coffee"}
    # scope's prompt uses {topic}: it is asked again, not reused from the tea run.
    assert data["outputs"]["scope"]["cached"] is False
    again = [r for r in llm_server.requests[first:] if marker("scope") in r.text]
    assert len(again) == 1 and "Scope coffee" in again[0].text
    assert not any("Scope tea" in r.text for r in llm_server.requests[first:])


def test_resume_finds_a_plan_that_was_run_from_its_file(plan_file: Path, tmp_path: Path) -> None:
    assert invoke("run", str(plan_file), "--mock", "-i", "topic=tea")[0] == 0
    [first] = json.loads(invoke("runs", "--json")[1])
    code, stdout, stderr = invoke("run", "--resume", "last", "--mock", "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["run_id"] == first["run_id"]
    assert "nothing left to do" in stderr


def test_resuming_a_run_that_fully_succeeded_makes_no_new_run(
    llm_server: FakeLLMServer, plan_file: Path, tmp_path: Path
) -> None:
    common = ("--model", "openai/test-model", "--api-base", llm_server.url,
              "--out", str(tmp_path / "runs"))
    assert invoke("run", str(plan_file), "-i", "topic=tea", *common)[0] == 0
    calls = len(llm_server.requests)
    code, _, stderr = invoke("run", "--resume", "last", *common)
    assert code == 0 and "has nothing left to do" in stderr
    assert len(llm_server.requests) == calls
    assert len(json.loads(invoke("runs", "--json")[1])) == 1
    assert len(list((tmp_path / "runs").iterdir())) == 1


def test_resume_dry_run_lists_what_is_reused_and_what_is_called(
    llm_server: FakeLLMServer, plan_file: Path, tmp_path: Path
) -> None:
    llm_server.add_rule(marker("left"), status=500, error_message="boom")
    common = ("--model", "openai/test-model", "--api-base", llm_server.url)
    assert invoke("run", str(plan_file), "-i", "topic=tea", *common)[0] == 1
    calls = len(llm_server.requests)
    code, stdout, _ = invoke("run", "--resume", "last", "--dry-run", *common)
    assert code == 0
    assert "  reused (2): scope, right\n  called (2): left, final" in stdout
    code, stdout, _ = invoke("run", "--resume", "last", "--dry-run", "--json", *common)
    assert {s["step_id"]: s["reused"] for s in json.loads(stdout)["steps"]} == {
        "scope": True, "left": False, "right": True, "final": False}
    assert len(llm_server.requests) == calls  # a dry run calls nothing


def test_a_resume_keeps_the_options_of_the_run_it_resumes(
    llm_server: FakeLLMServer, plan_file: Path, tmp_path: Path
) -> None:
    tenant = tmp_path / "priced.yaml"  # a budget needs a price for the model
    tenant.write_text("id: priced\nprices:\n  openai/test-model: "
                      "{input_per_million: 1, output_per_million: 1}\n")
    common = ("--model", "openai/test-model", "--api-base", llm_server.url,
              "--tenant", str(tenant))
    out = tmp_path / "elsewhere"
    code, _, _ = invoke("run", str(plan_file), "-i", "topic=tea", "--max-cost", "0",
                        "--max-concurrency", "3", "--fail-fast", "--no-cache", "--out", str(out),
                        *common)
    assert code == 1 and llm_server.requests == []  # a budget of $0 allows no calls
    code, stdout, _ = invoke("run", "--resume", "last", "--json", *common)
    assert code == 1 and llm_server.requests == []  # still: the budget was kept
    assert all(s["status"] == "skipped" for s in json.loads(stdout)["outputs"].values())
    [latest, _] = json.loads(invoke("runs", "--json")[1])
    assert {k: latest["options"][k] for k in ("max_cost", "max_concurrency", "fail_fast",
                                               "no_cache", "out")} == {
        "max_cost": 0.0, "max_concurrency": 3, "fail_fast": True, "no_cache": True,
        "out": str(out.absolute())}
    assert len(list(out.iterdir())) == 2  # its folder went where the first run's did
    # What the command line says wins.
    code, _, _ = invoke("run", "--resume", "last", "--max-cost", "5", "--no-fail-fast",
                        "--cache", *common)
    assert code == 0 and len(llm_server.requests) == 4
    [latest, *_] = json.loads(invoke("runs", "--json")[1])
    assert (latest["options"]["fail_fast"], latest["options"]["no_cache"]) == (False, False)


def test_show_last_means_the_last_run_even_beside_a_plan_named_last(
    plan_file: Path, tmp_path: Path
) -> None:
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "last.yaml").write_text(PLAN.replace("name: tiny", "name: last"))
    assert invoke("run", str(plan_file), "--mock", "-i", "topic=tea")[0] == 0
    code, stdout, _ = invoke("show", "last")
    assert code == 0 and "## SCOPE (scope)" in stdout and "Scope tea" in stdout
    run_id = json.loads(invoke("runs", "--json")[1])[0]["run_id"]
    code, stdout, _ = invoke("show", run_id.rsplit("-", 1)[1], "scope")  # the suffix alone
    assert code == 0 and "Scope tea" in stdout


def test_resume_can_be_dry_run(plan_file: Path) -> None:
    assert invoke("run", str(plan_file), "--mock", "-i", "topic=tea")[0] == 0
    code, stdout, _ = invoke("run", "--resume", "last", "--dry-run")
    assert code == 0 and "Scope tea" in stdout


def test_an_unwritable_out_directory_exits_2(plan_file: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, stderr = invoke("run", str(plan_file), "--mock", "-i", "topic=x",
                             "--out", str(blocker / "runs"))
    assert code == 2
    assert "--out: cannot write the run's outputs to" in stderr and "Traceback" not in stderr


def test_undecodable_input_bytes_exit_2(plan_file: Path) -> None:
    code, _, stderr = invoke("run", str(plan_file), "--mock", "-i", "topic=caf\udce9")
    assert code == 2 and "input 'topic' is not valid text" in stderr


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--model", "bad model", "--model: malformed model name 'bad model'"),
        ("--api-base", "notaurl", "--api-base: api_base 'notaurl' is not an http(s) URL"),
        ("--max-cost", "nan", "--max-cost: budget nan is not a number of dollars"),
    ],
)
def test_bad_run_options_exit_2_before_any_call(
    llm_server: FakeLLMServer, plan_file: Path, option: str, value: str, message: str
) -> None:
    args = ["run", str(plan_file), "-i", "topic=x", "--model", "openai/test-model",
            "--api-base", llm_server.url, option, value]
    code, _, stderr = invoke(*args)
    assert code == 2, stderr
    assert message in stderr
    assert llm_server.requests == []


def test_a_zero_budget_makes_no_calls(llm_server: FakeLLMServer, plan_file: Path) -> None:
    code, stdout, _ = invoke("run", str(plan_file), "-i", "topic=x", "--model",
                             "openai/test-model", "--api-base", llm_server.url,
                             "--max-cost", "0", "--json")
    assert code == 1
    outputs = json.loads(stdout)["outputs"]
    assert {step["status"] for step in outputs.values()} == {"skipped"}
    assert outputs["scope"]["error"] == "budget of $0 allows no calls"
    assert llm_server.requests == []


def test_run_files_get_the_usual_permissions(plan_file: Path, tmp_path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    assert invoke("run", str(plan_file), "--mock", "-i", "topic=x",
                  "--out", str(tmp_path / "runs"))[0] == 0
    run_dir = only_run_dir(tmp_path / "runs")
    for path in [run_dir / "run.json", run_dir / "report.md", run_dir / "steps" / "scope.md"]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path  # not mkstemp's 0600


def test_a_mock_run_can_be_resumed_for_real(
    llm_server: FakeLLMServer, plan_file: Path
) -> None:
    assert invoke("run", str(plan_file), "--mock", "-i", "topic=tea")[0] == 0
    code, stdout, stderr = invoke("run", "--resume", "last", "--no-mock", "--model",
                                  "openai/test-model", "--api-base", llm_server.url, "--json")
    assert code == 0, stderr
    # Other model, other endpoint: nothing the mock said is reused.
    assert len(llm_server.requests) == 4
    assert not any(step["cached"] for step in json.loads(stdout)["outputs"].values())


def test_resume_finds_a_tenant_that_was_read_from_its_file(
    plan_file: Path, tmp_path: Path
) -> None:
    tenant = tmp_path / "client.yaml"
    tenant.write_text("id: file-tenant\nname: From A File\ncontext: Makes tea.\n")
    assert invoke("run", str(plan_file), "--mock", "-i", "topic=x", "--tenant", str(tenant))[0] == 0
    code, stdout, stderr = invoke("run", "--resume", "last", "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["tenant"] == "file-tenant"


def test_a_reply_with_undecodable_text_is_still_saved(
    llm_server: FakeLLMServer, plan_file: Path, tmp_path: Path
) -> None:
    llm_server.add_rule(marker("scope"), content="odd \ud800 text")
    out = tmp_path / "runs"
    code, _, stderr = invoke("run", str(plan_file), "-i", "topic=x", "--model",
                             "openai/test-model", "--api-base", llm_server.url, "--out", str(out))
    assert code == 0, stderr
    assert "Traceback" not in stderr
    saved = (only_run_dir(out) / "steps" / "scope.md").read_text()
    assert saved == "odd ? text"


def test_a_second_resume_of_the_same_run_is_refused_while_the_first_goes(
    llm_server: FakeLLMServer, plan_file: Path, tmp_path: Path
) -> None:
    from dworkers.history import History

    llm_server.add_rule(marker("left"), status=500, error_message="boom")
    common = ("--model", "openai/test-model", "--api-base", llm_server.url)
    assert invoke("run", str(plan_file), "-i", "topic=tea", *common)[0] == 1
    llm_server.clear_rules()
    calls = len(llm_server.requests)
    with History() as history:
        run_id = history.resolve("last")
        with history.resume_lock(run_id):  # as another dworkers command resuming it holds
            code, _, stderr = invoke("run", "--resume", run_id, *common)
        assert code == 2 and f"run {run_id} is being resumed by another" in stderr
        assert len(llm_server.requests) == calls  # nothing paid twice
        assert len(history.list_runs()) == 1
    code, _, _ = invoke("run", "--resume", run_id, *common)  # once it is done, it may
    assert code == 0 and len(llm_server.requests) == calls + 2


def test_a_resume_after_the_endpoint_moved_makes_only_the_missing_calls(
    llm_server: FakeLLMServer, plan_file: Path, tmp_path: Path
) -> None:
    llm_server.add_rule(marker("left"), status=500, error_message="boom")
    assert invoke("run", str(plan_file), "-i", "topic=tea", "--model", "openai/test-model",
                  "--api-base", llm_server.url)[0] == 1
    with FakeLLMServer() as moved:  # the server restarted on another port
        code, stdout, _ = invoke("run", "--resume", "last", "--api-base", moved.url, "--json")
        assert code == 0
        assert sorted(step for r in moved.requests for step in ("left", "final")
                      if marker(step) in r.text) == ["final", "left"]
        assert len(moved.requests) == 2
    assert [sid for sid, r in json.loads(stdout)["outputs"].items() if r["cached"]] == [
        "scope", "right"]
