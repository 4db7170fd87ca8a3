"""The dataset history under trial, end to end: a run killed while its rows are recorded, a
history locked by another process for 10 s and then a kill -9, and a resume through another
spelling of the endpoint. Each counts what the local server was asked."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import FakeLLMServer, invoke, llm_server

__all__ = ["llm_server"]

PLAN = """\
name: per-row
description: A plan run once per row
inputs:
  topic:
    description: what to write about
steps:
  - step_id: scope
    name: SCOPE
    worker_role: analyst
    prompt_template: "Scope {topic}"
"""
TWO_STEPS = PLAN + """\
  - step_id: write
    name: WRITE
    worker_role: manager
    depends_on: [scope]
    prompt_template: "Write up {topic}"
"""
POLL = 0.01  # seconds between looks at the history while waiting for a moment to act
LOOKS = 30_000  # a bound on every such wait


@pytest.fixture(autouse=True)
def workspace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DWORKERS_MOCK_LATENCY", "0")
    monkeypatch.setenv("DWORKERS_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "per-row.yaml").write_text(PLAN)


def write_rows(path: Path, count: int) -> None:
    path.write_text("id,topic\n" + "".join(f"k{n:06d},topic number {n}\n"
                                           for n in range(count)))


def start_run(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key"}
    return subprocess.Popen(
        [sys.executable, "-m", "dworkers.cli", "run", "per-row.yaml", *args, "--out", "runs",
         "-q"], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)


def query(db: Path, sql: str) -> tuple[object, ...] | None:
    """One row of the history as another process sees it (None while it cannot be read)."""
    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(db, timeout=1)
        try:
            row = conn.execute(sql).fetchone()
            return tuple(row) if row is not None else None
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stderr:
        proc.stderr.close()


@pytest.mark.slow
def test_killed_while_its_rows_are_recorded_a_resume_never_finishes_over_fewer_rows(
    tmp_path: Path,
) -> None:
    write_rows(tmp_path / "big.csv", 60_000)
    db = tmp_path / "home" / "history.db"
    proc = start_run(tmp_path, "--data", "big.csv", "--mock")
    try:
        for _ in range(LOOKS):  # until some rows are on record, not all
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            recording = query(db, "SELECT count(*), (SELECT rows_complete FROM runs) FROM rows")
            if recording is not None and recording[0] and recording[1] == 0:
                break
            time.sleep(POLL)
        else:
            pytest.fail("the rows were never seen being recorded")
        proc.send_signal(signal.SIGKILL)
    finally:
        stop(proc)
    recorded = query(db, "SELECT count(*) FROM rows")
    assert recorded is not None and 0 < int(recorded[0]) < 60_000  # cut off part-way

    code, stdout, stderr = invoke("run", "--resume", "last", "--mock", "--out", "runs", "--json")
    assert code == 2 and stdout == ""
    assert "was stopped while its rows were being recorded" in stderr
    assert f"dworkers run per-row --data {tmp_path / 'big.csv'}" in stderr
    code, stdout, _ = invoke("runs", "--json")
    runs = json.loads(stdout)
    assert len(runs) == 1 and runs[0]["status"] == "interrupted"  # no run reports success


LOCK_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


@pytest.mark.slow
def test_a_history_locked_for_10s_mid_run_then_kill_9_resume_repays_no_answered_call(
    llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    """The trial of issue 16: before, recording stopped at the first write that waited out the
    busy timeout, and the resume paid again for every row answered after it."""
    rows = 500
    write_rows(tmp_path / "rows.csv", rows)
    llm_server.latency = 0.2  # at most 20 calls a second: the run outlasts the lock
    db = tmp_path / "home" / "history.db"
    slots = 4
    proc = start_run(tmp_path, "--data", "rows.csv", "--model", "openai/test-model",
                     "--api-base", llm_server.url, "--max-concurrency", str(slots))
    try:
        for _ in range(LOOKS):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            done = query(db, "SELECT count(*) FROM row_steps WHERE status = 'succeeded'")
            if done is not None and int(done[0]) >= 20:
                break
            time.sleep(POLL)
        holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(db), "10"],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        asked_when_locked = len(llm_server.requests)
        holder.communicate()
        assert holder.returncode == 0
        assert proc.poll() is None  # the run went on while the history was locked ...
        assert len(llm_server.requests) > asked_when_locked + 20
        assert len(llm_server.requests) < rows - 100  # and has rows left to run

        # Now every new call hangs: once all slots hang and the history holds every answer
        # the server gave, the run is killed.
        hang = llm_server.add_rule(hang=True)
        for _ in range(LOOKS):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            # Every slot holds a hung call, so no answer is on its way: the history must hold
            # every answer the server gave.
            settled = hang.matched == llm_server.in_flight == slots
            answered = sum(r.status == 200 for r in llm_server.requests)
            done = query(db, "SELECT count(*) FROM row_steps WHERE status = 'succeeded'")
            if settled and done is not None and int(done[0]) == answered:
                break
            time.sleep(POLL)
        else:
            pytest.fail("the history never caught up with the answers")
        proc.send_signal(signal.SIGKILL)
    finally:
        stop(proc)
    paid = {r.text for r in llm_server.requests if r.status == 200}
    in_flight = {r.text for r in llm_server.requests if r.status is None}
    assert len(paid) == answered and len(in_flight) == slots
    llm_server.clear_rules()
    llm_server.latency = 0
    before = len(llm_server.requests)

    code, stdout, stderr = invoke("run", "--resume", "last", "--model", "openai/test-model",
                                  "--api-base", llm_server.url, "--out", "runs", "--json",
                                  "--no-cache")
    assert code == 0, stderr
    assert json.loads(stdout)["counts"]["succeeded"] == rows
    again = [r.text for r in llm_server.requests[before:]]
    assert not [text for text in again if text in paid]  # no answered call is paid twice
    assert in_flight <= set(again) and len(again) == rows - len(paid)


def test_a_dataset_resume_reuses_answers_whatever_the_endpoint_is_called(
    llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    (tmp_path / "per-row.yaml").write_text(TWO_STEPS)
    write_rows(tmp_path / "rows.csv", 3)
    llm_server.add_rule("Write up topic number 2", status=400, error_message="refused")
    code, stdout, _ = invoke("run", "per-row.yaml", "--data", "rows.csv",
                             "--model", "openai/test-model", "--api-base",
                             f"http://127.0.0.1:{llm_server.port}/v1", "--out", "runs",
                             "--json")
    assert code == 1 and json.loads(stdout)["counts"]["failed"] == 1
    llm_server.clear_rules()
    before = len(llm_server.requests)

    # The same server spelled another way, and another model: what succeeded is reused.
    code, stdout, stderr = invoke("run", "--resume", "last", "--model", "openai/other-model",
                                  "--api-base", f"http://localhost:{llm_server.port}/v1",
                                  "--out", "runs", "--json")
    assert code == 0, stderr
    again = llm_server.requests[before:]
    assert [r.text.splitlines()[-1] for r in again] == ["Write up topic number 2"]
    assert json.loads(stdout)["counts"]["succeeded"] == 3


def test_an_unpriced_dataset_run_is_cost_unknown_and_cut_off_answers_stay_marked(
    llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    write_rows(tmp_path / "rows.csv", 2)
    llm_server.add_rule("Scope topic number 1", finish_reason="length")
    served = ("--model", "openai/test-model", "--api-base", llm_server.url, "--out", "runs")
    code, _, stderr = invoke("run", "per-row.yaml", "--data", "rows.csv", *served)
    assert code == 0, stderr  # the test model has no price

    code, stdout, _ = invoke("runs", "--json")
    [listed] = json.loads(stdout)
    assert listed["cost_usd"] is None and listed["cost_known"] is False
    code, stdout, _ = invoke("runs")
    assert "cost unknown" in stdout and "$0.0000" not in stdout
    code, stdout, _ = invoke("show", "last", "--json")
    shown = json.loads(stdout)
    assert shown["cost_usd"] is None and shown["cost_known"] is False
    code, stdout, _ = invoke("show", "last", "k000001", "--json")
    row = json.loads(stdout)
    assert row["truncated"] is True and row["cost_usd"] is None
    assert [s["truncated"] for s in row["steps"]] == [True]

    # The same rows again: answered from the history, and still marked as cut off.
    before = len(llm_server.requests)
    code, _, stderr = invoke("run", "per-row.yaml", "--data", "rows.csv", *served)
    assert code == 0, stderr and len(llm_server.requests) == before
    code, stdout, _ = invoke("show", "last", "k000001", "--json")
    [step] = json.loads(stdout)["steps"]
    assert step["cached"] is True and step["truncated"] is True
