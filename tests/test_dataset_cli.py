"""``dworkers run PLAN --data FILE`` end to end: files, exit codes, history, resume, cache."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
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
  tone:
    description: how to write it
    default: plain
steps:
  - step_id: scope
    name: SCOPE
    worker_role: analyst
    prompt_template: "Scope {topic} in a {tone} tone"
  - step_id: write
    name: WRITE
    worker_role: manager
    depends_on: [scope]
    prompt_template: "Write up {topic}"
"""

ROWS = "id,topic,region\nalpha,Alpha topic,EU\nbeta,Beta topic,US\ngamma,Gamma topic,EU\n"


@pytest.fixture(autouse=True)
def workspace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DWORKERS_MOCK_LATENCY", "0")
    monkeypatch.setenv("DWORKERS_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "per-row.yaml").write_text(PLAN)
    (tmp_path / "rows.csv").write_text(ROWS)


def served(server: FakeLLMServer) -> tuple[str, ...]:
    return ("--model", "openai/test-model", "--api-base", server.url)


def results(run_dir: Path) -> dict[str, dict[str, object]]:
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    return {row["key"]: row for row in map(json.loads, lines)}


def only_run_dir(out: Path) -> Path:
    [run_dir] = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def test_a_mock_dataset_run_writes_every_row_and_a_summary(tmp_path: Path) -> None:
    code, stdout, stderr = invoke("run", "per-row.yaml", "--data", "rows.csv", "--mock",
                                  "--out", "runs")
    assert code == 0, stderr
    assert stdout == ""
    run_dir = only_run_dir(tmp_path / "runs")
    rows = results(run_dir)
    assert set(rows) == {"alpha", "beta", "gamma"}
    alpha = rows["alpha"]
    assert alpha["status"] == "succeeded" and alpha["error"] is None
    assert alpha["inputs"] == {"topic": "Alpha topic", "tone": "plain"}
    assert alpha["extra"] == {"id": "alpha", "region": "EU"}
    assert set(alpha["outputs"]) == {"scope", "write"}  # type: ignore[arg-type]
    assert sorted(p.name for p in (run_dir / "rows").iterdir()) == [
        "alpha.md", "beta.md", "gamma.md"]
    assert "| succeeded | 3 |" in (run_dir / "report.md").read_text()
    data = json.loads((run_dir / "run.json").read_text())
    assert data["status"] == "succeeded" and data["rows"] == 3
    assert data["data"]["key"] == "id" and data["data"]["file"].endswith("rows.csv")
    # Off a terminal: one line per finished row, then the summary.
    assert sum("✓ succeeded" in line for line in stderr.splitlines()) == 3
    assert "Dataset run succeeded: 3 rows — 3 succeeded" in stderr
    assert f"outputs: runs/{run_dir.name}" in stderr


def test_malformed_data_is_reported_all_at_once_before_any_call(
    llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    (tmp_path / "bad.jsonl").write_text(
        '{"id": "a", "topic": "x"}\n{"id": "a", "topic": "y"}\n'
        '{"id": "b", "topic": ["x"]}\n{"id": "c"}\nnot json\n')
    code, _, stderr = invoke("run", "per-row.yaml", "--data", "bad.jsonl", *served(llm_server),
                             "--out", "runs")
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.startswith("bad.jsonl:")]
    assert [line.split(":")[1] for line in lines] == ["2", "3", "4", "5"]
    assert "Traceback" not in stderr and all(" — " in line for line in lines)
    assert llm_server.requests == []
    assert not (tmp_path / "runs").exists()
    assert json.loads(invoke("runs", "--json")[1] or "[]") == []


@pytest.mark.parametrize(("args", "expected"), [
    (("-i", "topic=same for all"), "input 'topic' is given both by a column and by -i"),
    (("--key", "name"), "--key 'name' is not a column of rows.csv"),
    (("-i", "toen=dry"), "unknown input 'toen' — did you mean 'tone'?"),
    (("--data", "rows.tsv"), "is neither .csv nor .jsonl"),
])
def test_usage_mistakes_exit_2(args: tuple[str, ...], expected: str) -> None:
    data = () if "--data" in args else ("--data", "rows.csv")
    code, _, stderr = invoke("run", "per-row.yaml", *data, *args, "--mock")
    assert code == 2 and expected in stderr, stderr


def test_dash_i_fills_what_no_column_gives(tmp_path: Path) -> None:
    (tmp_path / "topics.jsonl").write_text('{"topic": "tea"}\n{"topic": "coffee"}\n')
    code, stdout, stderr = invoke("run", "per-row.yaml", "--data", "topics.jsonl", "-i",
                                  "tone=dry", "--mock", "--out", "runs", "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["counts"]["succeeded"] == 2
    rows = results(only_run_dir(tmp_path / "runs"))
    assert rows["1"]["inputs"] == {"topic": "tea", "tone": "dry"}  # keyed by row number
    assert rows["2"]["inputs"] == {"topic": "coffee", "tone": "dry"}


def test_a_failing_row_fails_alone_and_max_failures_stops_new_rows(
    llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    llm_server.add_rule("Scope Beta topic", status=400, error_message="no such topic")
    code, stdout, stderr = invoke("run", "per-row.yaml", "--data", "rows.csv",
                                  *served(llm_server), "--out", "runs", "--json")
    assert code == 1
    summary = json.loads(stdout)
    assert summary["counts"] == {"succeeded": 2, "failed": 1, "skipped": 0, "cancelled": 0}
    beta = results(Path(summary["out_dir"]))["beta"]
    assert beta["status"] == "failed" and "no such topic" in str(beta["error"])
    assert "beta" in stderr and "no such topic" in stderr

    # Only one row may fail: with one slot, the rows after beta are not started.
    (tmp_path / "many.csv").write_text("id,topic\n" + "".join(
        f"r{n},{'Beta topic' if n == 1 else f'topic {n}'}\n" for n in range(6)))
    code, stdout, _ = invoke("run", "per-row.yaml", "--data", "many.csv", *served(llm_server),
                             "--max-failures", "1", "--max-concurrency", "1", "--no-cache",
                             "--json", "--out", "runs")
    assert code == 1
    summary = json.loads(stdout)
    assert summary["counts"]["failed"] == 1 and summary["counts"]["skipped"] >= 1
    assert summary["counts"]["succeeded"] + summary["counts"]["skipped"] == 5


def test_max_failures_holds_on_resume(llm_server: FakeLLMServer, tmp_path: Path) -> None:
    # r1, r2 and r3 always fail; with one failure allowed, one slot, the run stops at r1.
    (tmp_path / "many.csv").write_text("id,topic\n" + "".join(
        f"r{n},{'Beta topic' if n in (1, 2, 3) else f'topic {n}'}\n" for n in range(8)))
    llm_server.add_rule("Scope Beta topic", status=400, error_message="no such topic")
    code, stdout, _ = invoke("run", "per-row.yaml", "--data", "many.csv", *served(llm_server),
                             "--max-failures", "1", "--max-concurrency", "1", "--no-cache",
                             "--json", "--out", "runs")
    assert code == 1 and json.loads(stdout)["counts"]["failed"] == 1
    before = len(llm_server.requests)
    code, stdout, _ = invoke("run", "--resume", "last", *served(llm_server), "--json")
    assert code == 1
    resumed = json.loads(stdout)
    # --max-failures 1 was kept: the first failure again stops new rows (else r2..r7 would run).
    assert resumed["counts"]["failed"] == 1 and resumed["stop_reason"]
    assert not [r for r in llm_server.requests[before:] if "topic 7" in r.text]


def test_a_budget_on_resume_counts_what_the_run_already_spent(
    llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    (tmp_path / "priced.yaml").write_text(  # every call costs tens of cents
        "id: priced\nprices:\n  openai/test-model: "
        "{input_per_million: 4000, output_per_million: 4000}\n")
    (tmp_path / "many.csv").write_text(
        "id,topic\n" + "".join(f"{key},topic {key}\n" for key in KEYS))
    common = (*served(llm_server), "--tenant", "priced.yaml", "--out", "runs", "--json")
    code, stdout, stderr = invoke("run", "per-row.yaml", "--data", "many.csv", "--max-cost",
                                  "4", "--max-concurrency", "1", "--no-cache", *common)
    first = json.loads(stdout)
    assert code == 1 and first["counts"]["skipped"] > 0, stderr  # the budget stopped it
    paid = len(llm_server.requests)
    assert paid >= 2
    code, stdout, stderr = invoke("run", "--resume", "last", *common)
    again = len(llm_server.requests) - paid
    # The budget is for the whole run: the resume may not start another $4 allowance (at most
    # the one call a reservation may overshoot by).
    assert again <= 1, (again, stderr)
    assert json.loads(stdout)["counts"]["skipped"] > 0


def test_a_model_without_a_price_shows_cost_unknown_never_zero(
    llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    code, stdout, stderr = invoke("run", "per-row.yaml", "--data", "rows.csv",
                                  *served(llm_server), "--out", "runs", "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["cost_usd"] is None and summary["cost_known"] is False
    assert "cost unknown" in stderr and "$0.0000" not in stderr  # each row, and the summary
    run_dir = Path(summary["out_dir"])
    assert all(row["cost_usd"] is None and row["cost_known"] is False
               for row in results(run_dir).values())
    assert "- Cost: unknown" in (run_dir / "report.md").read_text()
    assert json.loads((run_dir / "run.json").read_text())["cost_usd"] is None


def test_keys_that_only_look_different_are_refused_with_both_lines(tmp_path: Path) -> None:
    (tmp_path / "alike.csv").write_text("id,topic\ncaf\u00e9,a\nG7,b\ncafe\u0301,c\n g7 ,d\n")
    code, _, stderr = invoke("run", "per-row.yaml", "--data", "alike.csv", "--mock")
    assert code == 2
    assert "alike.csv:4: key " in stderr and "of line 2 (the same text" in stderr
    assert "alike.csv:5: key 'g7' repeats key 'G7' of line 3 (keys differing only in case" in (
        stderr)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_as_data_is_read_once(tmp_path: Path) -> None:
    fifo = tmp_path / "piped.csv"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"printf 'id,topic\\na,x\\nb,y\\n' > '{fifo}'"])
    try:
        code, stdout, stderr = invoke("run", "per-row.yaml", "--data", str(fifo), "--mock",
                                      "--json", "--out", "runs")
    finally:
        writer.wait()
    assert code == 0, stderr
    assert json.loads(stdout)["counts"]["succeeded"] == 2


def test_resume_runs_only_the_rows_and_steps_that_did_not_succeed(
    llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    llm_server.add_rule("# Your step: WRITE (write)", status=400, error_message="refused",
                        times=1)
    code, stdout, _ = invoke("run", "per-row.yaml", "--data", "rows.csv", *served(llm_server),
                             "--out", "runs", "--json", "--max-concurrency", "1")
    assert code == 1
    first = json.loads(stdout)
    assert first["counts"]["failed"] == 1 and len(llm_server.requests) == 6
    before = len(llm_server.requests)

    code, stdout, stderr = invoke("run", "--resume", first["run_id"], *served(llm_server),
                                  "--out", "runs", "--json")
    assert code == 0, stderr
    again = llm_server.requests[before:]
    assert len(again) == 1 and "# Your step: WRITE (write)" in again[0].text  # one step, paid once
    resumed = json.loads(stdout)
    assert resumed["counts"]["succeeded"] == 3
    rows = results(Path(resumed["out_dir"]))
    assert all(row["status"] == "succeeded" for row in rows.values())

    code, stdout, _ = invoke("runs", "--json")
    listed = json.loads(stdout)
    assert [r["counts"]["succeeded"] for r in listed] == [3, 2]  # rows, newest first
    assert [r["counts"]["rows"] for r in listed] == [3, 3]
    assert listed[0]["resumed_from"] == first["run_id"]
    code, stdout, _ = invoke("runs")
    assert code == 0 and "3/3 rows" in stdout and "2/3 rows" in stdout


def test_identical_row_steps_are_answered_from_history(
    llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    assert invoke("run", "per-row.yaml", "--data", "rows.csv", *served(llm_server),
                  "--out", "runs")[0] == 0
    assert len(llm_server.requests) == 6
    code, stdout, _ = invoke("run", "per-row.yaml", "--data", "rows.csv", *served(llm_server),
                             "--out", "runs", "--json")
    assert code == 0 and len(llm_server.requests) == 6  # nothing paid twice
    assert json.loads(stdout)["calls"] == 0


def test_show_summarises_a_dataset_run_and_one_row(
    llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    llm_server.add_rule("Scope Gamma topic", status=400, error_message="bad gamma")
    invoke("run", "per-row.yaml", "--data", "rows.csv", *served(llm_server), "--out", "runs")
    code, stdout, _ = invoke("show", "last")
    assert code == 0
    assert "rows: 3 — 2 succeeded, 1 failed" in stdout
    assert "gamma  failed: scope: " in stdout and "bad gamma" in stdout
    code, stdout, _ = invoke("show", "last", "alpha")
    assert code == 0 and "row alpha (succeeded)" in stdout and "## write" in stdout
    code, stdout, _ = invoke("show", "last", "alpha", "--json")
    row = json.loads(stdout)
    assert row["inputs"]["topic"] == "Alpha topic" and len(row["steps"]) == 2
    code, _, stderr = invoke("show", "last", "alpah")
    assert code == 2 and "did you mean 'alpha'?" in stderr


KEYS = [f"k{n:02d}" for n in range(12)]


@pytest.mark.slow
def test_after_kill_9_resume_pays_again_only_for_calls_in_flight(
    llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    (tmp_path / "many.csv").write_text(
        "id,topic\n" + "".join(f"{key},topic {key}\n" for key in KEYS))
    # Row k05's first step hangs: the run is killed while it (and its neighbours) are in flight.
    llm_server.add_rule("Scope topic k05", hang=True, times=1)
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dworkers.cli", "run", "per-row.yaml", "--data", "many.csv",
         *served(llm_server), "--max-concurrency", "2", "--out", "runs", "-q"],
        env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "home" / "history.db"
    try:
        got_going = _wait_for_rows(llm_server, db, 6, "Scope topic k05")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert got_going, "the run never got going"
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stderr:
            proc.stderr.close()
    # What was answered before the kill (a call answered while the process died is in flight).
    answered = {r.text for r in llm_server.requests if r.status == 200 and r.finished}
    llm_server.wait_idle(timeout=1)
    before = len(llm_server.requests)

    code, stdout, stderr = invoke("run", "--resume", "last", *served(llm_server), "--out", "runs",
                                  "--json", "--no-cache")
    assert code == 0, stderr
    assert json.loads(stdout)["counts"]["succeeded"] == len(KEYS)
    again = llm_server.requests[before:]
    repaid = [r for r in again if r.text in answered]
    # At most the calls in flight at the kill (two slots) are paid again: never a recorded one.
    assert len(repaid) <= 2, [r.text[-80:] for r in repaid]
    assert any("Scope topic k05" in r.text for r in again)


def _wait_for_rows(server: FakeLLMServer, db: Path, rows: int, asked: str) -> bool:
    """Whether ``rows`` rows are recorded as succeeded and ``asked`` has reached the server,
    looking again each time the server receives a request (the run makes 2 per key at most).
    The server's wait only keeps a stalled run from stalling the suite: it decides nothing."""
    for _ in range(2 * len(KEYS) + 1):
        if len(_finished_rows(db)) >= rows and server.requests_containing(asked):
            return True
        server.wait_for_requests(len(server.requests) + 1, timeout=120)
    return False


def _finished_rows(db: Path) -> list[str]:
    if not db.exists():
        return []
    try:
        conn = sqlite3.connect(db, timeout=1)
        try:
            return [r[0] for r in conn.execute(
                "SELECT key FROM rows WHERE status = 'succeeded'")]
        finally:
            conn.close()
    except sqlite3.Error:
        return []


@pytest.mark.slow
def test_ctrl_c_keeps_every_finished_row_and_writes_the_summary(
    llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    (tmp_path / "many.csv").write_text(
        "id,topic\n" + "".join(f"{key},topic {key}\n" for key in KEYS))
    llm_server.add_rule("Scope topic k03", hang=True, times=1)
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dworkers.cli", "run", "per-row.yaml", "--data", "many.csv",
         *served(llm_server), "--max-concurrency", "2", "--out", "runs", "--json"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "home" / "history.db"
    got_going = _wait_for_rows(llm_server, db, 4, "Scope topic k03")
    assert proc.poll() is None and got_going, "the run never got going"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    summary = json.loads(stdout)
    assert summary["status"] == "interrupted" and summary["interrupted"] is True
    run_dir = Path(tmp_path / summary["out_dir"])
    rows = results(run_dir)
    assert sum(row["status"] == "succeeded" for row in rows.values()) >= 4
    assert rows["k03"]["status"] == "cancelled"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    assert "interrupted" in (run_dir / "report.md").read_text()
    code, stdout, _ = invoke("runs", "--json")
    assert json.loads(stdout)[0]["status"] == "interrupted"
    code, stdout, stderr = invoke("run", "--resume", "last", *served(llm_server), "--out", "runs",
                                  "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["counts"]["succeeded"] == len(KEYS)


@pytest.mark.slow
def test_a_run_refused_before_any_call_always_exits_promptly(tmp_path: Path) -> None:
    # A model whose key is not set is refused by preflight. litellm used to be loading in a
    # background thread then, and the interpreter could hang on its way out (ignoring Ctrl-C
    # and SIGTERM). `timeout` is only a safety net: a hang fails, it does not stall the suite.
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("OPENAI_")
           and name not in ("DWORKERS_MODEL", "DWORKERS_API_BASE")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    command = ["timeout", "-k", "10", "300", sys.executable, "-m", "dworkers", "run",
               "per-row.yaml", "--data", "rows.csv", "--model", "openai/test-model",
               "--api-base", "http://127.0.0.1:9/v1", "--max-cost", "1", "--out", "runs"]
    for _ in range(10):
        proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                              check=False)
        assert proc.returncode == 2, proc.stderr  # 124/137: the safety net had to stop it
        assert "OPENAI_API_KEY" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_dry_run_checks_every_row_and_renders_the_first(tmp_path: Path) -> None:
    code, stdout, stderr = invoke("run", "per-row.yaml", "--data", "rows.csv", "--dry-run")
    assert code == 0, stderr
    assert "dry run of row 'alpha' (1 of 3 rows; every row checked)" in stderr
    assert "Scope Alpha topic in a plain tone" in stdout and "Beta" not in stdout
    assert not (tmp_path / "dworkers-runs").exists()
    (tmp_path / "bad.csv").write_text("id,topic\na,x\na,y\n")
    code, _, stderr = invoke("run", "per-row.yaml", "--data", "bad.csv", "--dry-run")
    assert code == 2 and "bad.csv:3: key 'a' repeats the key of line 2" in stderr


def test_show_json_of_a_dataset_run_counts_rows(tmp_path: Path) -> None:
    assert invoke("run", "per-row.yaml", "--data", "rows.csv", "--mock")[0] == 0
    code, stdout, _ = invoke("show", "last", "--json")
    document = json.loads(stdout)
    assert code == 0 and document["rows"]["succeeded"] == 3
    assert document["not_succeeded"] == [] and document["options"]["data"]["rows"] == 3
