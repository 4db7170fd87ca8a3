"""``dworkers run`` when things around it fail: files that cannot be written, a locked history,
standard output closed or full, odd ``--input`` files, signals. Nothing is reported as done
that was not."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import FakeLLMServer, invoke, llm_server, make_plan, make_tenant, marker

from dworkers.errors import InputError
from dworkers.events import Event, EventLog, RunFinished
from dworkers.history import History
from dworkers.outputs import RunWriter
from dworkers.plans.builder import PlanBuilder
from dworkers.run import inputs as run_inputs
from dworkers.run.flow import FanOut
from dworkers.run.inputs import parse_inputs, read_input_file

__all__ = ["llm_server"]

CHAIN = """\
name: chain
description: Two steps, one after the other
steps:
  - step_id: first
    name: FIRST
  - step_id: second
    name: SECOND
    depends_on: [first]
"""


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DWORKERS_MOCK_LATENCY", "0")
    monkeypatch.setenv("DWORKERS_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


def run_chain(server: FakeLLMServer, tmp_path: Path, *extra: str) -> tuple[int, str, str]:
    plan = tmp_path / "chain.yaml"
    plan.write_text(CHAIN)
    return invoke("run", str(plan), "--model", "openai/test-model", "--api-base", server.url,
                  "--out", str(tmp_path / "runs"), *extra)


def while_second_step_runs(server: FakeLLMServer, action: object) -> threading.Thread:
    """Do ``action`` once the second step's request is in flight (the server holds it 1 s)."""
    server.add_rule(marker("second"), latency=1.0)

    def wait_then_act() -> None:
        if server._wait_until(lambda: bool(server.requests_containing(marker("second"))), 30):
            action()  # type: ignore[operator]

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


# --- files and history that cannot be written ----------------------------------------------------


def test_a_step_file_that_cannot_be_written_fails_the_exit_code_and_is_named(
    llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    def break_the_steps_folder() -> None:
        [run_dir] = list((tmp_path / "runs").iterdir())
        for _ in range(500):  # the first step's file lands beside the run, a moment after it
            if (run_dir / "steps" / "first.md").exists():
                break
            time.sleep(0.01)
        shutil.rmtree(run_dir / "steps")
        (run_dir / "steps").write_text("not a folder")  # every later step file fails

    thread = while_second_step_runs(llm_server, break_the_steps_folder)
    code, _, stderr = run_chain(llm_server, tmp_path)
    thread.join(timeout=30)

    assert code == 1, stderr  # not "finished": the deliverable is missing
    assert "finished" not in stderr and "not everything was saved" in stderr
    assert "not saved: steps/second.md" in stderr
    assert "outputs (incomplete):" in stderr
    # the failed write did not stop the run: both steps ran, and the rest was saved
    [run_dir] = list((tmp_path / "runs").iterdir())
    data = json.loads((run_dir / "run.json").read_text())
    assert data["outputs"]["second"]["status"] == "succeeded"
    assert "## SECOND" in (run_dir / "report.md").read_text()
    assert len(llm_server.requests) == 2


def test_a_locked_history_fails_the_exit_code_and_says_so(
    llm_server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # wait 0.2 s (not 5 s) for the lock, so the test is quick; the lock itself is real
    monkeypatch.setitem(History.__init__.__kwdefaults__, "timeout", 0.2)
    blocker: list[sqlite3.Connection] = []

    def lock_the_history() -> None:
        connection = sqlite3.connect(tmp_path / "home" / "history.db", isolation_level=None,
                                     check_same_thread=False)
        connection.execute("BEGIN EXCLUSIVE")
        blocker.append(connection)

    thread = while_second_step_runs(llm_server, lock_the_history)
    try:
        code, _, stderr = run_chain(llm_server, tmp_path)
    finally:
        thread.join(timeout=30)
        for connection in blocker:
            connection.execute("ROLLBACK")
            connection.close()
    assert blocker, "the history was never locked"
    assert code == 1, stderr
    assert "not saved: the run history" in stderr and "locked" in stderr
    assert "finished" not in stderr


def test_a_failing_event_consumer_does_not_stop_the_run_nor_starve_the_others() -> None:
    log = EventLog()

    def broken(event: Event) -> None:
        raise RuntimeError("view bug")

    fan_out = FanOut([broken, log])
    engine = PlanBuilder(make_plan({"a": [], "b": ["a"]}), make_tenant(), mock=True,
                         on_event=fan_out).build()
    result = asyncio.run(engine.run({}))
    assert result.success
    assert isinstance(log.events[-1], RunFinished)  # every event still reached the log
    assert fan_out.errors and "view bug" in fan_out.errors[0]
    assert len(fan_out.errors) == FanOut.MAX_ERRORS  # bounded, however many events


def test_run_files_are_replaced_atomically(tmp_path: Path) -> None:
    """A reader (say, a dashboard polling run.json) never sees half a file."""
    plan = make_plan({"a": []})
    writer = RunWriter(tmp_path / "run", plan, {"big": "x" * 200_000})
    writer.write("steps", None)
    writer.write_run_json()
    torn: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                text = (tmp_path / "run" / "run.json").read_text()
            except FileNotFoundError:
                torn.append("missing")
                continue
            try:
                json.loads(text)
            except ValueError:
                torn.append(text[:40])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for n in range(150):
            writer.inputs = {"big": str(n) * 200_000}
            writer.write_run_json()
    finally:
        done.set()
        reader.join(timeout=30)
    assert torn == []
    assert writer.unsaved == {}
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["run.json"] or sorted(
        p.name for p in (tmp_path / "run").iterdir()) == ["run.json", "steps"]


# --- standard output ------------------------------------------------------------------------------


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dworkers.cli", *args]


@pytest.mark.slow
@pytest.mark.parametrize("stdout", ["full", "closed"])
def test_json_to_a_full_or_closed_stdout_is_an_error_not_a_traceback(
    tmp_path: Path, stdout: str
) -> None:
    env = {**os.environ, "DWORKERS_HOME": str(tmp_path / "home"), "DWORKERS_MOCK_LATENCY": "0"}
    target = open(os.devnull if stdout == "closed" else "/dev/full", "w")  # noqa: SIM115
    with target:
        proc = subprocess.run(
            cli("run", "compliance-audit", "--mock", "-i", "brief=x", "--json", "--out",
                str(tmp_path / "runs")),
            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            timeout=120,
            **({"stdout": target} if stdout == "full" else {"stdout": subprocess.DEVNULL,
                                                            "close_fds": True,
                                                            "preexec_fn": lambda: os.close(1)}),
        )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert "cannot write to standard output" in proc.stderr
    [run_dir] = list((tmp_path / "runs").iterdir())
    assert (run_dir / "report.md").is_file()  # the run itself was kept


@pytest.mark.slow
@pytest.mark.parametrize("stdout", ["full", "closed"])
@pytest.mark.parametrize("command", [["list"], ["show", "compliance-audit"], ["list", "--json"]])
def test_listing_to_a_full_or_closed_stdout_fails_instead_of_printing_nothing(
    tmp_path: Path, stdout: str, command: list[str]
) -> None:
    env = {**os.environ, "DWORKERS_HOME": str(tmp_path / "home")}
    with open(os.devnull if stdout == "closed" else "/dev/full", "w") as target:
        proc = subprocess.run(
            cli(*command), cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, timeout=120,
            **({"stdout": target} if stdout == "full" else {"stdout": subprocess.DEVNULL,
                                                            "close_fds": True,
                                                            "preexec_fn": lambda: os.close(1)}),
        )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert "standard output is closed" in proc.stderr or "No space left" in proc.stderr


# --- inputs ---------------------------------------------------------------------------------------


def test_double_at_is_a_literal_at() -> None:
    assert parse_inputs(["handle=@@dworkers", "mail=a@b"]) == {
        "handle": "@dworkers", "mail": "a@b"}


def test_an_input_fifo_with_no_writer_is_an_error_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_inputs, "INPUT_PIPE_WAIT", 0.3)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=r"nothing to read: no writer after 0\.3s"):
        parse_inputs([f"brief=@{fifo}"])
    with pytest.raises(InputError, match="holds no document dworkers can read"):
        parse_inputs([f"brief=@{tmp_path}"])  # a folder is read for its documents


def test_an_input_pipe_is_read_but_never_waited_on_without_bound(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def writer(text: str, linger: float) -> None:
        with open(fifo, "w") as handle:  # blocks until the reader opens the FIFO
            handle.write(text)
            handle.flush()
            time.sleep(linger)

    quick = threading.Thread(target=writer, args=("from a pipe", 0.0), daemon=True)
    quick.start()
    assert read_input_file(fifo, wait=10) == "from a pipe"
    quick.join(timeout=60)

    slow = threading.Thread(target=writer, args=("partial", 3.0), daemon=True)
    slow.start()
    with pytest.raises(ValueError, match=r"still no end of input after 0\.3s"):
        read_input_file(fifo, wait=0.3)
    slow.join(timeout=60)


def test_interruption_handlers_are_put_back_after_a_run(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    code, _, stderr = invoke("run", "compliance-audit", "--mock", "-i", "brief=x",
                             "--out", str(tmp_path / "runs"))
    assert code == 0, stderr
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


# --- resuming a budgeted run ----------------------------------------------------------------
