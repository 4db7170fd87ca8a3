"""Approval gates through the command line, against the local OpenAI-compatible server: a run
stops before a gated step (exit 3), a person approves or rejects it, and a resume continues
without paying twice — per row in a dataset run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from support import FakeLLMServer, invoke, llm_server, make_plan, make_tenant, marker

from dworkers.engine import PlanBuilder
from dworkers.history import History
from dworkers.history.approvals import GateHistory
from dworkers.plans.base import PlanStep
from dworkers.results import RunStatus, StepStatus

__all__ = ["llm_server"]

PLAN = """\
name: gated
description: A plan with a partner's sign-off before the briefing
inputs:
  topic: {}
steps:
  - step_id: scope
    name: SCOPE
    prompt_template: "Scope {topic}"
  - step_id: side
    name: SIDE
    prompt_template: "Side work on {topic}"
  - step_id: briefing
    name: BRIEFING
    depends_on: [scope]
    approve: "Send the briefing to the client?"
    prompt_template: "Brief on {topic}"
  - step_id: follow-up
    name: FOLLOW-UP
    depends_on: [briefing]
    prompt_template: "Follow up on {topic}"
"""
STEPS = ("scope", "side", "briefing", "follow-up")


@pytest.fixture(autouse=True)
def instant_mock(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DWORKERS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DWORKERS_USER", "alice")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def plan_file(tmp_path: Path) -> Path:
    path = tmp_path / "gated.yaml"
    path.write_text(PLAN)
    return path


def calls(server: FakeLLMServer, step_id: str, since: int = 0) -> int:
    """Requests the server received for ``step_id`` (from request number ``since`` on)."""
    return sum(1 for r in server.requests[since:] if marker(step_id) in r.text)


def common(server: FakeLLMServer, tmp_path: Path) -> tuple[str, ...]:
    return ("--model", "openai/test-model", "--api-base", server.url,
            "--out", str(tmp_path / "runs"))


def last_run(tmp_path: Path) -> Path:
    return max((tmp_path / "runs").iterdir(), key=lambda p: p.stat().st_mtime_ns)


def start_held_run(server: FakeLLMServer, plan_file: Path, tmp_path: Path) -> str:
    code, stdout, stderr = invoke("run", str(plan_file), "-i", "topic=tea", "--json",
                                  *common(server, tmp_path))
    assert code == 3, stderr
    return str(json.loads(stdout)["run_id"])


def test_a_gate_stops_the_run_with_exit_3_once_the_other_branches_are_done(
    llm_server: FakeLLMServer, plan_file: Path, tmp_path: Path
) -> None:
    llm_server.add_rule(marker("side"), latency=0.2)  # still running when the gate is reached
    code, stdout, stderr = invoke("run", str(plan_file), "-i", "topic=tea",
                                  *common(llm_server, tmp_path))
    assert code == 3, stderr
    assert [calls(llm_server, s) for s in STEPS] == [1, 1, 0, 0]  # the gate: 0 calls
    assert "HOLD   briefing: waiting for approval: Send the briefing to the client?" in stderr
    assert "HOLD   follow-up: waiting for approval of briefing" in stderr
    assert "OK     side" in stderr  # the independent branch finished before the run stopped
    assert "dworkers approve " in stderr
    run_json = json.loads((last_run(tmp_path) / "run.json").read_text())
    assert run_json["status"] == "waiting for approval" and run_json["success"] is False
    assert {s: run_json["outputs"][s]["status"] for s in STEPS} == {
        "scope": "succeeded", "side": "succeeded", "briefing": "waiting",
        "follow-up": "waiting"}
    assert (last_run(tmp_path) / "steps" / "scope.md").is_file()  # what finished is saved
    code, stdout, _ = invoke("runs", "--json")
    assert code == 0 and json.loads(stdout)[0]["status"] == "waiting for approval"
    code, stdout, _ = invoke("runs", "--status", "waiting for approval", "--json")
    assert code == 0 and len(json.loads(stdout)) == 1


def test_approve_then_resume_makes_no_repeated_call(
    llm_server: FakeLLMServer, plan_file: Path, tmp_path: Path
) -> None:
    run_id = start_held_run(llm_server, plan_file, tmp_path)
    code, _, stderr = invoke("approve", run_id, "briefing", "--note", "checked by legal")
    assert code == 0, stderr
    with History() as history:
        [(key, decision)] = GateHistory(history).decisions(run_id).items()
    assert key == (None, "briefing")
    assert (decision.approved, decision.by, decision.note) == (True, "alice", "checked by legal")
    before = len(llm_server.requests)
    code, stdout, stderr = invoke("run", "--resume", run_id, "--json",
                                  *common(llm_server, tmp_path))
    assert code == 0, stderr
    assert [calls(llm_server, s, before) for s in STEPS] == [0, 0, 1, 1]
    assert [calls(llm_server, s) for s in STEPS] == [1, 1, 1, 1]  # each step paid for once
    data = json.loads(stdout)
    assert data["status"] == "succeeded" and data["outputs"]["scope"]["cached"] is True


def test_reject_skips_the_gate_and_everything_below_it_with_the_note(
    llm_server: FakeLLMServer, plan_file: Path, tmp_path: Path
) -> None:
    run_id = start_held_run(llm_server, plan_file, tmp_path)
    code, _, stderr = invoke("reject", run_id, "briefing", "--note", "not for this client")
    assert code == 0, stderr
    before = len(llm_server.requests)
    code, _, stderr = invoke("run", "--resume", run_id, *common(llm_server, tmp_path))
    assert code == 0, stderr  # a rejection is a decision, not a failure
    assert len(llm_server.requests) == before  # 0 calls for the gate and its dependents
    assert "REJECT briefing: rejected by alice: not for this client" in stderr
    run_dir = last_run(tmp_path)
    outputs = json.loads((run_dir / "run.json").read_text())["outputs"]
    assert outputs["briefing"]["status"] == outputs["follow-up"]["status"] == "rejected"
    assert "not for this client" in outputs["follow-up"]["error"]
    report = (run_dir / "report.md").read_text()
    assert "rejected by alice: not for this client" in report
    assert "briefing was rejected" in report  # the dependent says why it has no output


@pytest.mark.parametrize("flags", [("--approve", "briefing"), ("--approve-all",)])
def test_pre_approval_runs_through_the_gate_and_is_recorded(
    llm_server: FakeLLMServer, plan_file: Path, tmp_path: Path, flags: tuple[str, ...]
) -> None:
    code, stdout, stderr = invoke("run", str(plan_file), "-i", "topic=tea", "--json", *flags,
                                  *common(llm_server, tmp_path))
    assert code == 0, stderr
    assert [calls(llm_server, s) for s in STEPS] == [1, 1, 1, 1]
    run_id = json.loads(stdout)["run_id"]
    with History() as history:
        decisions = GateHistory(history).decisions(run_id)
    assert decisions[None, "briefing"].by == "--approve"


def test_approve_names_only_a_gate_of_the_plan(plan_file: Path) -> None:
    code, _, stderr = invoke("run", str(plan_file), "-i", "topic=tea", "--mock",
                             "--approve", "brefing")
    assert code == 2 and "did you mean 'briefing'?" in stderr
    code, _, stderr = invoke("run", str(plan_file), "-i", "topic=tea", "--mock",
                             "--approve", "side")
    assert code == 2 and "not a gate" in stderr


def test_deciding_what_is_not_waiting_exits_2_with_a_clear_message(
    llm_server: FakeLLMServer, plan_file: Path, tmp_path: Path
) -> None:
    run_id = start_held_run(llm_server, plan_file, tmp_path)
    cases = {
        ("approve", "no-such-run", "briefing"): "no run named 'no-such-run'",
        ("approve", run_id, "brefing"): "did you mean 'briefing'?",
        ("approve", run_id, "follow-up"): "is not a gate: it waits for gate briefing",
        ("reject", run_id, "side"): "is not waiting for approval (it succeeded)",
        ("approve", run_id, "briefing", "--rows", "a"): "is not a dataset run",
    }
    for args, message in cases.items():
        code, _, stderr = invoke(*args)
        assert code == 2, args
        assert message in stderr and "Traceback" not in stderr, stderr
    with History() as history:
        assert GateHistory(history).decisions(run_id) == {}  # nothing was recorded


def test_show_lists_the_pending_gate_with_what_it_would_approve(
    llm_server: FakeLLMServer, plan_file: Path, tmp_path: Path
) -> None:
    run_id = start_held_run(llm_server, plan_file, tmp_path)
    code, stdout, _ = invoke("show", run_id)
    assert code == 0
    assert "⏸ briefing" in stdout  # the tree marks the gate
    assert "briefing waits for approval: Send the briefing to the client?" in stdout
    assert f"from scope (succeeded): {last_run(tmp_path) / 'steps' / 'scope.md'}" in stdout
    code, stdout, _ = invoke("show", run_id, "--json")
    [gate] = json.loads(stdout)["waiting_for_approval"]
    assert gate["step_id"] == "briefing"
    assert gate["question"] == "Send the briefing to the client?"
    assert [dep["step_id"] for dep in gate["depends_on"]] == ["scope"]


def test_dataset_gates_hold_per_row_and_resume_only_the_approved_rows(
    llm_server: FakeLLMServer, plan_file: Path, tmp_path: Path
) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text("id,topic\na,alpha\nb,beta\nc,gamma\n")
    args = ("--model", "openai/test-model", "--api-base", llm_server.url,
            "--out", str(tmp_path / "runs"))
    code, stdout, stderr = invoke("run", str(plan_file), "--data", str(rows), "--json", *args)
    assert code == 3, stderr
    run_id = json.loads(stdout)["run_id"]
    assert [calls(llm_server, s) for s in STEPS] == [3, 3, 0, 0]  # every row waits at the gate
    code, stdout, _ = invoke("show", run_id, "--json")
    assert sorted(g["row"] for g in json.loads(stdout)["waiting_for_approval"]) == ["a", "b", "c"]

    code, _, stderr = invoke("approve", run_id, "briefing")
    assert code == 2 and "--rows KEY,... or --all-rows" in stderr
    code, _, stderr = invoke("approve", run_id, "briefing", "--rows", "a,zz")
    assert code == 2 and "zz" in stderr
    assert invoke("approve", run_id, "briefing", "--rows", "a")[0] == 0
    assert invoke("reject", run_id, "briefing", "--rows", "b", "--note", "no")[0] == 0

    before = len(llm_server.requests)
    code, stdout, stderr = invoke("run", "--resume", run_id, "--json", *args)
    assert code == 3, stderr  # row c still waits
    assert [calls(llm_server, s, before) for s in STEPS] == [0, 0, 1, 1]  # row a's only
    assert "alpha" in llm_server.requests[-1].text or "alpha" in llm_server.requests[-2].text
    results = {r["key"]: r for r in map(json.loads, (last_run(tmp_path) / "results.jsonl")
                                        .read_text().splitlines())}
    assert {k: r["status"] for k, r in results.items()} == {
        "a": "succeeded", "b": "rejected", "c": "waiting"}

    second = json.loads(stdout)["run_id"]
    assert invoke("approve", second, "briefing", "--all-rows")[0] == 0
    before = len(llm_server.requests)
    code, _, stderr = invoke("run", "--resume", second, *args)
    assert code == 0, stderr
    assert [calls(llm_server, s, before) for s in STEPS] == [0, 0, 1, 1]  # row c's only
    assert all("gamma" in r.text for r in llm_server.requests[before:])
    assert [calls(llm_server, s) for s in STEPS] == [3, 3, 2, 2]  # b rejected: never called


def test_python_api_gate_waits_and_is_not_a_success(llm_server: FakeLLMServer) -> None:
    plan = make_plan({"a": [], "b": ["a"], "c": ["b"], "d": []})
    plan.get_step("b").approve = "Go on?"  # type: ignore[union-attr]
    assert PlanStep(step_id="x", name="X", approve=True).approve is True
    engine = PlanBuilder(plan, make_tenant(), api_base=llm_server.url).build()
    result = asyncio.run(engine.run({}))
    assert result.success is False and result.status is RunStatus.WAITING
    assert {s: r.status for s, r in result.outputs.items()} == {
        "a": StepStatus.SUCCEEDED, "b": StepStatus.WAITING, "c": StepStatus.WAITING,
        "d": StepStatus.SUCCEEDED}
    assert len(llm_server.requests) == 2


def test_validate_refuses_an_empty_question(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(PLAN.replace('approve: "Send the briefing to the client?"', 'approve: ""'))
    code, _, stderr = invoke("validate", str(path))
    assert code == 2
    assert f"{path}:15:14: approve: must be true, false, or the question" in stderr


# --- a failure and a gate in one run ----------------------------------------------------------


def test_a_failure_dominates_a_gate_yet_the_summary_says_how_to_approve(
    llm_server: FakeLLMServer, plan_file: Path, tmp_path: Path
) -> None:
    llm_server.add_rule(marker("side"), status=400, error_message="bad side request", times=1)
    code, _, stderr = invoke("run", str(plan_file), "-i", "topic=tea",
                             *common(llm_server, tmp_path))
    assert code == 1, stderr  # not 3: a step failed, and that is what a script must see
    assert "gated failed: 1 succeeded, 1 failed, 2 waiting" in stderr
    run_id = json.loads((last_run(tmp_path) / "run.json").read_text())["run_id"]
    assert f"decide: dworkers approve {run_id} briefing" in stderr
    assert f"dworkers run --resume {run_id}" in stderr
    assert json.loads((last_run(tmp_path) / "run.json").read_text())["status"] == "failed"
    assert json.loads(invoke("runs", "--json")[1])[0]["status"] == "failed"
    code, stdout, _ = invoke("show", run_id)  # the gate is still there to decide
    assert "briefing waits for approval: Send the briefing to the client?" in stdout

    assert invoke("approve", run_id, "briefing")[0] == 0  # the gate can still be decided
    code, _, stderr = invoke("run", "--resume", run_id, *common(llm_server, tmp_path))
    assert code == 0, stderr
    assert [calls(llm_server, s) for s in STEPS] == [1, 2, 1, 1]  # only side is asked again


def test_a_dataset_run_with_a_failed_row_and_a_waiting_row_exits_1(
    llm_server: FakeLLMServer, plan_file: Path, tmp_path: Path
) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text("id,topic\na,alpha\nb,beta\n")
    llm_server.add_rule("Side work on beta", status=400, error_message="bad row")
    code, stdout, stderr = invoke("run", str(plan_file), "--data", str(rows), "--json",
                                  *common(llm_server, tmp_path))
    assert code == 1, stderr
    data = json.loads(stdout)
    assert data["status"] == "failed"
    assert (data["counts"]["waiting"], data["counts"]["failed"]) == (1, 1)
    run_id = data["run_id"]
    assert "Dataset run finished with failures" in stderr
    assert "1 row waits for approval — decide: " in stderr
    assert f"dworkers approve {run_id} briefing --all-rows" in stderr
    statuses = {r["key"]: r["status"] for r in map(
        json.loads, (last_run(tmp_path) / "results.jsonl").read_text().splitlines())}
    assert statuses == {"a": "waiting", "b": "failed"}


# --- what a dry run and `show PLAN` say of gates -----------------------------------------------


def test_a_dry_run_names_each_gate_and_what_a_run_would_do_there(
    llm_server: FakeLLMServer, plan_file: Path, tmp_path: Path
) -> None:
    code, stdout, _ = invoke("run", str(plan_file), "-i", "topic=tea", "--dry-run")
    assert code == 0
    assert ("Gates (a person approves before the call; undecided, the run stops there and "
            "exits 3):\n  briefing: Send the briefing to the client? — waits for approval\n"
            ) in stdout
    [header] = [line for line in stdout.splitlines() if line.startswith("=== briefing ")]
    assert header.endswith(") · gate")
    assert "Conditions" not in stdout  # no step has a when:
    code, stdout, _ = invoke("run", str(plan_file), "-i", "topic=tea", "--dry-run", "--json",
                             "--approve", "briefing")
    steps = {s["step_id"]: s for s in json.loads(stdout)["steps"]}
    assert steps["briefing"]["gate"] == {"question": "Send the briefing to the client?",
                                         "state": "approved by --approve"}
    assert steps["scope"]["gate"] is None and steps["scope"]["when"] is None

    run_id = start_held_run(llm_server, plan_file, tmp_path)
    assert invoke("reject", run_id, "briefing", "--note", "not yet")[0] == 0
    before = len(llm_server.requests)
    code, stdout, _ = invoke("run", "--resume", run_id, "--dry-run")
    assert code == 0 and len(llm_server.requests) == before
    assert "briefing: Send the briefing to the client? — rejected by alice: not yet" in stdout


def test_show_plan_marks_gates_conditions_typed_answers_and_file_inputs(tmp_path: Path) -> None:
    path = tmp_path / "marked.yaml"
    path.write_text("""\
name: marked
inputs:
  contract: {type: file, description: The signed contract}
  notes: {type: file, default: notes.md}
  client: {}
steps:
  - step_id: triage
    name: Triage
    output_schema: {severity: low|high, areas: [str]}
    prompt_template: "Triage {client}: {contract} {notes}"
  - step_id: deep
    name: Deep dive
    depends_on: [triage]
    when: "triage.severity == 'high'"
  - step_id: send
    name: Send
    depends_on: [deep]
    approve: true
""")
    code, stdout, _ = invoke("show", str(path))
    assert code == 0
    assert stdout.splitlines() == [
        "marked",
        "inputs:",
        "  contract (file) — The signed contract",
        "  client",
        "  notes (file, optional, default 'notes.md')",
        "├── triage  analyst",
        "│   answers: severity, areas",
        "├── deep  analyst  ← triage",
        "│   when: triage.severity == 'high'",
        "└── send  analyst  ← deep",
        "    ⏸ gate: Run 'Send'?",
    ]
    code, stdout, _ = invoke("run", str(path), "-i", "client=x", "-i", "contract=@@c",
                             "--dry-run")
    assert ("Conditions (a false when: skips the step: no call, not a failure):\n"
            "  deep: when: triage.severity == 'high'\n") in stdout
    assert "Gates (a person approves before the call; undecided, the run stops there and " \
           "exits 3):\n  send: Run 'Send'? — waits for approval\n" in stdout
    [header] = [line for line in stdout.splitlines() if line.startswith("=== deep ")]
    assert header.endswith(") · when: triage.severity == 'high'")
