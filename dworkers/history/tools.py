"""Each step's MCP tool calls in the history: one row per call, in the order they were made.

A step's calls are replaced whenever its result is recorded again (a step is recorded once
when it finishes; a whole run saved at once is idempotent). They are read back with the
step's result wherever a recorded run becomes results again: a resume's reused steps (so the
new run's ``run.json`` keeps them) and ``History.to_run_result``. Arguments are kept as the model
wrote them; a tool's result is not kept, only its size and digest (it is untrusted text and
may be large).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

from dworkers.results import StepResult, ToolCall

TOOL_CALLS_TABLE = (
    """
    CREATE TABLE tool_calls (
        run_id        TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        step_id       TEXT NOT NULL,
        position      INTEGER NOT NULL,
        server        TEXT NOT NULL,
        tool          TEXT NOT NULL,
        arguments     TEXT NOT NULL,
        duration_ms   REAL NOT NULL DEFAULT 0,
        result_chars  INTEGER NOT NULL DEFAULT 0,
        result_digest TEXT,
        error         TEXT,
        PRIMARY KEY (run_id, step_id, position)
    )
    """,
)


def record_tool_calls(conn: sqlite3.Connection, run_id: str, result: StepResult) -> None:
    """Replace the recorded tool calls of ``result``'s step with its own."""
    conn.execute("DELETE FROM tool_calls WHERE run_id = ? AND step_id = ?",
                 (run_id, result.step_id))
    conn.executemany(
        "INSERT INTO tool_calls (run_id, step_id, position, server, tool, arguments, "
        "duration_ms, result_chars, result_digest, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(run_id, result.step_id, n, call.server, call.tool,
          call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments),
          call.duration_ms, call.result_chars, call.result_digest, call.error)
         for n, call in enumerate(result.tool_calls)])



# A run's tool calls, each step's in the order they were made.
TOOL_CALLS_OF_RUN = (
    "SELECT step_id, server, tool, arguments, duration_ms, result_chars, result_digest, error "
    "FROM tool_calls WHERE run_id = ? ORDER BY step_id, position")


def tool_calls_by_step(rows: Iterable[sqlite3.Row]) -> dict[str, list[ToolCall]]:
    """Rows of ``TOOL_CALLS_OF_RUN`` as each step's ``ToolCall`` list."""
    calls: dict[str, list[ToolCall]] = {}
    for row in rows:
        text = str(row["arguments"])
        try:
            arguments = json.loads(text)
        except ValueError:
            arguments = text
        calls.setdefault(str(row["step_id"]), []).append(ToolCall(
            server=row["server"], tool=row["tool"],
            arguments=arguments if isinstance(arguments, dict) else text,
            duration_ms=row["duration_ms"], result_chars=row["result_chars"],
            result_digest=row["result_digest"], error=row["error"]))
    return calls
