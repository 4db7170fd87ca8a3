"""Typed steps end to end, through litellm and the suite's own server: answers checked against
``output_schema`` and re-asked when they do not fit, ``when:`` conditions that skip a step at
no cost, typed fields in later prompts, and ``validate`` on mutated typed plans."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from support import TEST_MODEL, FakeLLMServer, invoke, llm_server, make_tenant, request_for

from dworkers.engine import PlanBuilder, RunOptions
from dworkers.events import EventLog, StepRetrying
from dworkers.plans.base import BasePlan, InputSpec, PlanStep
from dworkers.results import RunResult, StepStatus

__all__ = ["llm_server"]

TRIAGE = {"severity": "low|medium|high", "in_scope": "bool", "areas": ["str"]}


def triage_plan(*, when: str | None = None, retries: int = 1, model: type | None = None
                ) -> BasePlan:
    return BasePlan("typed", "A typed plan", [
        PlanStep(step_id="triage", name="TRIAGE", output_schema=model or TRIAGE,
                 output_retries=retries, prompt_template="Triage this brief: {brief}"),
        PlanStep(step_id="deep", name="DEEP", depends_on=["triage"], when=when,
                 prompt_template="Dig into severity {triage.severity}; areas:\n{triage.areas}"),
        PlanStep(step_id="memo", name="MEMO", depends_on=["deep", "triage"],
                 prompt_template="Write the memo; deep dive: {deep ?? 'none was needed'}"),
    ], inputs={"brief": InputSpec()})


def run(server: FakeLLMServer, plan: BasePlan, *, model: str = TEST_MODEL,
        log: EventLog | None = None) -> RunResult:
    engine = PlanBuilder(plan, make_tenant(model=model), api_base=server.url,
                         options=RunOptions(retry_base_delay=0.01), on_event=log).build()
    return asyncio.run(engine.run({"brief": "Acme buys a bakery"}))


def test_a_typed_answer_is_parsed_and_its_fields_reach_later_prompts(
        llm_server: FakeLLMServer) -> None:
    result = run(llm_server, triage_plan())

    assert result.success
    triage = result.outputs["triage"]
    assert triage.value == {"severity": "low", "in_scope": True, "areas": ["text"]}
    assert json.loads(triage.output) == triage.value  # the text is kept as well
    assert triage.attempts == 1
    deep_request = request_for(llm_server, "deep")[0]
    assert "Dig into severity low; areas:\n- text" in deep_request.text
    assert deep_request.structured is None  # an untyped step is not asked for JSON
    first = request_for(llm_server, "triage")[0]
    assert first.structured in ("native", "json_mode")
    assert "matches this JSON Schema" in first.text


def test_an_answer_that_does_not_fit_is_re_asked_once_and_counted(
        llm_server: FakeLLMServer) -> None:
    llm_server.invalid_first_structured = 1.0  # the first answer is broken JSON
    log = EventLog()
    result = run(llm_server, triage_plan(), log=log)

    assert result.success
    triage = result.outputs["triage"]
    calls = request_for(llm_server, "triage")
    assert len(calls) == 2 and calls[0].invalid and not calls[1].invalid
    assert triage.attempts == 2
    reask = calls[1].messages
    assert reask[-2] == {"role": "assistant", "content": calls[0].reply}
    assert "does not match the required JSON schema" in reask[-1]["content"]
    assert "$:" in reask[-1]["content"]  # the error, with its JSON path
    # Both calls are paid for: the tokens of the first answer are in the step's totals.
    first_tokens = len(calls[0].text.split()) + len((calls[0].reply or "").split())
    assert triage.total_tokens > first_tokens
    assert any(isinstance(e, StepRetrying) and "output_schema" in e.reason for e in log.events)
    assert triage.value is not None


def test_an_answer_still_wrong_after_the_re_ask_fails_the_step_with_the_errors(
        llm_server: FakeLLMServer) -> None:
    llm_server.add_rule("Triage this brief", content='{"severity": "urgent", "in_scope": 1}')
    result = run(llm_server, triage_plan())

    triage = result.outputs["triage"]
    assert not result.success
    assert triage.status is StepStatus.FAILED
    assert triage.attempts == 2 and len(request_for(llm_server, "triage")) == 2
    assert triage.error is not None
    assert '$.severity: expected one of "low", "medium", "high", got "urgent"' in triage.error
    assert "$.in_scope: expected" in triage.error and "$.areas" in triage.error
    assert triage.cache_key is None and triage.output == "" and triage.value is None
    assert result.outputs["deep"].status is StepStatus.SKIPPED


def test_output_retries_zero_fails_at_the_first_wrong_answer(llm_server: FakeLLMServer) -> None:
    llm_server.add_rule("Triage this brief", content="not json at all")
    result = run(llm_server, triage_plan(retries=0))
    assert result.outputs["triage"].attempts == 1
    assert "not valid JSON" in (result.outputs["triage"].error or "") or "JSON" in (
        result.outputs["triage"].error or "")


def test_a_false_condition_skips_the_step_with_no_call_and_its_dependents_run(
        llm_server: FakeLLMServer) -> None:
    # The server answers the first enum value: severity is "low".
    result = run(llm_server, triage_plan(when="triage.severity == 'high'"))

    assert result.success  # a skip by condition is not a failure
    deep = result.outputs["deep"]
    assert deep.status is StepStatus.SKIPPED and deep.condition_false
    assert deep.error == "when: triage.severity == 'high' is false (triage.severity = \"low\")"
    assert request_for(llm_server, "deep") == []
    assert len(llm_server.requests) == 2  # triage and memo
    memo = request_for(llm_server, "memo")[0].text
    assert "deep dive: none was needed" in memo
    assert "This step was skipped and has no output: when: triage.severity == 'high'" in memo


def test_a_true_condition_runs_the_step(llm_server: FakeLLMServer) -> None:
    result = run(llm_server, triage_plan(when="triage.in_scope and 'text' in triage.areas"))
    assert result.success and result.outputs["deep"].succeeded
    assert len(request_for(llm_server, "deep")) == 1


def test_a_pydantic_model_is_a_schema(llm_server: FakeLLMServer) -> None:
    from typing import Literal

    from pydantic import BaseModel

    class Triage(BaseModel):
        severity: Literal["low", "medium", "high"]
        in_scope: bool
        areas: list[str]

    result = run(llm_server, triage_plan(model=Triage))
    assert result.success and result.outputs["triage"].value["severity"] == "low"


def test_a_model_litellm_knows_takes_the_native_path(llm_server: FakeLLMServer) -> None:
    result = run(llm_server, triage_plan(), model="openai/gpt-4o")
    assert result.success
    request = request_for(llm_server, "triage")[0]
    assert request.structured == "native"
    assert request.body["response_format"]["json_schema"]["schema"]["required"] == [
        "severity", "in_scope", "areas"]


def test_mock_answers_fit_the_schema() -> None:
    from dworkers.llm import MockClient

    plan = triage_plan()
    engine = PlanBuilder(plan, make_tenant(), client=MockClient(latency=0)).build()
    result = asyncio.run(engine.run({"brief": "x"}))
    again = asyncio.run(PlanBuilder(plan, make_tenant(), client=MockClient(latency=0))
                        .build().run({"brief": "x"}))
    assert result.success
    assert set(result.outputs["triage"].value) == {"severity", "in_scope", "areas"}
    assert result.outputs["triage"].value == again.outputs["triage"].value  # deterministic


# --- validate on typed plans ---------------------------------------------------------------------

TYPED_PLAN = """\
name: typed
inputs:
  brief: {}
steps:
  - step_id: triage
    name: Triage
    output_schema:
      severity: low|medium|high
      in_scope: bool
    prompt_template: "Triage {brief}"
  - step_id: other
    name: Other
    output_schema: {score: int}
    prompt_template: "Score {brief}"
  - step_id: deep
    name: Deep
    depends_on: [triage]
    when: "triage.in_scope and triage.severity == 'high'"
    prompt_template: "Dig into {triage.severity}"
"""

MUTATIONS = [
    ("{triage.severity}", "{triage.severty}", "has no field 'severty'", "did you mean"),
    ("severity == 'high'", "severity == 'hihg'", "is not a value of triage.severity",
     "did you mean"),
    ("triage.in_scope and", "triage.in_scope == 'yes' and", "in_scope", "true or false"),
    ("Dig into {triage.severity}", "Dig into {other.score}", "not upstream", "depends_on"),
]


@pytest.mark.parametrize(("old", "new", "message", "hint"), MUTATIONS)
def test_validate_reports_each_mutation_of_a_typed_plan_where_it_is(
        tmp_path: Path, old: str, new: str, message: str, hint: str) -> None:
    plan_file = tmp_path / "typed.yaml"
    plan_file.write_text(TYPED_PLAN)
    assert invoke("validate", str(plan_file))[0] == 0
    mutated = TYPED_PLAN.replace(old, new)
    plan_file.write_text(mutated)

    code, stdout, stderr = invoke("validate", str(plan_file))
    assert code == 2
    line_no = next(i for i, line in enumerate(mutated.splitlines(), 1) if new in line)
    column = mutated.splitlines()[line_no - 1].index(new) + 1
    located = [line for line in (stdout + stderr).splitlines()
               if line.startswith(f"{plan_file}:{line_no}:")]
    assert located, stdout + stderr
    assert message in located[0] and hint in located[0]
    reported_column = int(located[0].split(":")[2])
    assert column <= reported_column <= column + len(new)


def test_a_step_that_may_be_skipped_must_say_what_to_use_instead(tmp_path: Path) -> None:
    plan_file = tmp_path / "typed.yaml"
    plan_file.write_text(TYPED_PLAN + """\
  - step_id: memo
    name: Memo
    depends_on: [deep]
    prompt_template: "Use {deep}"
""")
    code, stdout, stderr = invoke("validate", str(plan_file))
    assert code == 2
    assert f"{plan_file}:23:" in stdout + stderr
    assert "may be skipped" in stdout + stderr and "{deep ?? 'n/a'}" in stdout + stderr


def test_a_schema_file_is_read_beside_the_plan_and_its_problems_located_in_it(
        tmp_path: Path) -> None:
    (tmp_path / "triage.yaml").write_text(
        "type: object\nproperties:\n  severity: {type: strng}\nrequired: [severity]\n")
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(TYPED_PLAN.replace(
        "    output_schema:\n      severity: low|medium|high\n      in_scope: bool\n",
        "    output_schema: triage.yaml\n").replace(
        "triage.in_scope and triage.severity == 'high'", "triage.severity == 'high'"))
    code, stdout, stderr = invoke("validate", str(plan_file))
    assert code == 2
    assert f"{tmp_path / 'triage.yaml'}:3:" in stdout + stderr
    (tmp_path / "triage.yaml").write_text(
        "type: object\nproperties:\n  severity: {type: string, enum: [low, high]}\n"
        "required: [severity]\n")
    assert invoke("validate", str(plan_file))[0] == 0


# --- datasets -------------------------------------------------------------------------------------

DATASET_PLAN = """\
name: typed-rows
inputs:
  company: {}
steps:
  - step_id: triage
    name: TRIAGE
    output_schema:
      severity: low|medium|high
      in_scope: bool
      owner: {name: str, team?: str}
      areas: [str]
    prompt_template: "Triage {company}"
  - step_id: deep
    name: DEEP
    depends_on: [triage]
    when: "company != 'Skipped Co'"
    prompt_template: "Dig into {company}, severity {triage.severity}"
"""


def test_a_typed_dataset_run_writes_a_table_and_parsed_objects(
        llm_server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import csv

    monkeypatch.setenv("DWORKERS_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plan.yaml").write_text(DATASET_PLAN)
    (tmp_path / "rows.csv").write_text("id,company\na,Acme\nb,Skipped Co\n")
    code, _, stderr = invoke("run", "plan.yaml", "--data", "rows.csv", "--model",
                             "openai/test-model", "--api-base", llm_server.url, "--out", "runs")
    assert code == 0, stderr
    [run_dir] = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    with (run_dir / "results.csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == ["key", "status", "company", "triage.severity", "triage.in_scope",
                              "triage.owner.name", "triage.owner.team", "triage.areas",
                              "cost_usd", "error"]
    assert [(r["key"], r["status"], r["triage.severity"], r["triage.in_scope"],
             r["triage.areas"]) for r in sorted(table, key=lambda r: r["key"])] == [
        ("a", "succeeded", "low", "true", '["text"]'),
        ("b", "succeeded", "low", "true", '["text"]')]
    lines = {r["key"]: r for r in map(json.loads, (run_dir / "results.jsonl").read_text()
                                      .splitlines())}
    assert lines["a"]["outputs"]["triage"] == {  # type: ignore[index]
        "severity": "low", "in_scope": True, "owner": {"name": "text", "team": "text"},
        "areas": ["text"]}
    assert "deep" not in lines["b"]["outputs"]  # type: ignore[operator]
    # The skipped row's deep dive cost no call: three calls for two rows.
    assert len(llm_server.requests) == 3


def test_a_typed_answer_is_reused_with_its_value_and_an_invalid_one_never_is(
        llm_server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DWORKERS_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plan.yaml").write_text(TYPED_PLAN)
    args = ("run", "plan.yaml", "-i", "brief=Acme", "--model", "openai/test-model",
            "--api-base", llm_server.url, "--json", "--out", "runs")
    llm_server.add_rule("Score Acme", content="no JSON here", times=2)
    code, stdout, _ = invoke(*args)
    first = json.loads(stdout)
    assert code == 1 and first["outputs"]["other"]["status"] == "failed"
    calls = len(llm_server.requests)

    code, stdout, _ = invoke(*args)
    second = json.loads(stdout)
    assert code == 0
    # triage comes from the cache, parsed again; the step whose answers were invalid is asked.
    assert second["outputs"]["triage"]["cached"] is True
    assert second["outputs"]["triage"]["value"] == first["outputs"]["triage"]["value"]
    assert second["outputs"]["other"]["cached"] is False
    assert second["outputs"]["other"]["value"] == {"score": 1}
    assert len(llm_server.requests) == calls + 1
