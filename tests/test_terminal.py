"""Real processes: the live tree on a pseudo-terminal, and Ctrl-C (SIGINT) or SIGTERM mid-run."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import FakeLLMServer, llm_server, marker

__all__ = ["llm_server"]

PLAN = """\
name: interruptible
description: One quick step, one that never answers, one after it
steps:
  - step_id: quick
    name: QUICK
    worker_role: analyst
  - step_id: hang
    name: HANG
    worker_role: researcher
  - step_id: after
    name: AFTER
    worker_role: manager
    depends_on: [hang]
"""


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dworkers.cli", *args]


def wait_until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.05)
    return False


def interrupt_run(
    server: FakeLLMServer, tmp_path: Path, presses: int, sig: int = signal.SIGINT
) -> tuple[int, str, Path]:
    """Start a run whose 'hang' step never gets an answer, send ``sig`` (Ctrl-C) ``presses``
    times once 'quick' has finished, and return the exit code, stderr and the run directory."""
    server.add_rule(marker("hang"), hang=True)
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    out = tmp_path / "runs"
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key",
           "DWORKERS_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(
        cli("run", str(plan), "--model", "openai/test-model", "--api-base", server.url,
            "--out", str(out)),
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert wait_until(lambda: any(out.glob("*/steps/quick.md"))
                          and server.requests_containing(marker("hang")), timeout=60)
        for _ in range(presses):
            proc.send_signal(sig)
            time.sleep(0.02)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    [run_dir] = list(out.iterdir())
    return proc.returncode, stderr, run_dir


@pytest.mark.slow
@pytest.mark.parametrize(("presses", "sig"), [(1, signal.SIGINT), (2, signal.SIGINT),
                                              (1, signal.SIGTERM), (2, signal.SIGTERM)])
def test_ctrl_c_or_sigterm_cancels_in_flight_calls_keeps_finished_work_and_exits_130(
    llm_server: FakeLLMServer, tmp_path: Path, presses: int, sig: int
) -> None:
    # SIGTERM is what `timeout`, `docker stop` and CI cancellations send: handled like Ctrl-C
    code, stderr, run_dir = interrupt_run(llm_server, tmp_path, presses, sig)

    assert code == 130, stderr
    assert "Traceback" not in stderr
    data = json.loads((run_dir / "run.json").read_text())
    assert data["status"] == "interrupted"
    assert data["outputs"]["quick"]["status"] == "succeeded"
    assert data["outputs"]["hang"]["status"] == "cancelled"
    assert data["outputs"]["after"]["status"] in ("skipped", "cancelled")
    assert (run_dir / "steps" / "quick.md").read_text().startswith("Reply to:")
    assert "## QUICK" in (run_dir / "report.md").read_text()
    assert "1 succeeded" in stderr  # the summary was printed
    assert llm_server.wait_idle(timeout=60)  # the hung connection was closed, not left open


def run_on_terminal(tmp_path: Path, **extra_env: str) -> tuple[int, str]:
    """Run a mock plan on a pseudo-terminal; return its exit code and everything it drew."""
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "30",
           "DWORKERS_MOCK_LATENCY": "0.3", "DWORKERS_HOME": str(tmp_path / "home")}
    env.pop("NO_COLOR", None)
    env.update(extra_env)
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        cli("run", "compliance-audit", "--mock", "-i", "brief=SOX", "--out", str(tmp_path)),
        cwd=tmp_path, env=env, stdin=secondary, stdout=secondary, stderr=secondary,
        close_fds=True,
    )
    os.close(secondary)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.2)
            if ready:
                try:
                    data = os.read(primary, 65536)
                except OSError:  # the terminal closed: the process is done
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        os.close(primary)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
def test_the_live_tree_paints_and_finishes_on_a_terminal(tmp_path: Path) -> None:
    code, screen = run_on_terminal(tmp_path)
    assert code == 0, screen[-2000:]
    assert "\x1b[" in screen  # drawn with cursor control, i.e. a live display
    for step_id in ("triage", "scope-audit", "research-regulations", "analyze-gaps",
                    "remediation-plan", "executive-briefing"):
        assert step_id in screen
    assert "compliance-audit" in screen
    assert re.search(r"\d succeeded", screen)
    assert re.search(r"\x1b\[3[0-9]m", screen)  # coloured status icons


@pytest.mark.slow
def test_no_color_keeps_the_live_tree_but_drops_colours(tmp_path: Path) -> None:
    code, screen = run_on_terminal(tmp_path, NO_COLOR="1")
    assert code == 0, screen[-2000:]
    assert re.search(r"\d succeeded", screen)
    assert not re.search(r"\x1b\[[0-9;]*3[0-9]m", screen)
