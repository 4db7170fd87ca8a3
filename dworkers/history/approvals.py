"""Approval gates in the history: the decisions on gated steps, and the gates a run holds.

A decision (approved or rejected, by whom, when, with what note) is kept for the run that
stopped at the gate (``row`` '' for a single run or for every row of a dataset run, else one
row's key). A resume reads the decisions of the run it resumes and of every run that one
resumed, the newest first; ``dworkers run --approve`` records its pre-approvals for its own run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from dworkers.approvals import WAITING_FOR_APPROVAL, Decision
from dworkers.history.storage import History

EVERY_ROW = ""  # the ``row`` of a decision that holds for the whole run


@dataclass(frozen=True, slots=True)
class HeldGate:
    """A gated step a run stopped before (for one row, in a dataset run)."""

    step_id: str
    question: str
    row: str | None = None


class GateHistory:
    """The ``approvals`` table, and the held gates among a run's recorded steps."""

    def __init__(self, history: History) -> None:
        self.history = history

    def record(self, run_id: str, step_id: str, *, approved: bool, by: str, note: str = "",
               rows: Sequence[str] = (EVERY_ROW,), at: float | None = None) -> None:
        """Record one decision on ``step_id`` for each of ``rows`` (a later one replaces it)."""
        when = at if at is not None else time.time()
        decision = "approved" if approved else "rejected"
        with self.history._write("recording an approval decision") as conn:
            conn.executemany(
                "INSERT INTO approvals (run_id, row, step_id, decision, decided_by, decided_at, "
                "note) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, row, step_id) DO "
                "UPDATE SET decision = excluded.decision, decided_by = excluded.decided_by, "
                "decided_at = excluded.decided_at, note = excluded.note",
                [(run_id, row, step_id, decision, by, when, note) for row in rows])

    def decisions(self, run_ref: str) -> dict[tuple[str | None, str], Decision]:
        """Every decision a resume of ``run_ref`` follows: its own and those of the runs it
        resumed, the newest run's first; keyed by (row key, or None for every row, step id)."""
        found: dict[tuple[str | None, str], Decision] = {}
        for run_id in self.history.resume_chain(run_ref):
            for row in self.history._read(
                    "SELECT row, step_id, decision, decided_by, decided_at, note FROM approvals "
                    "WHERE run_id = ? ORDER BY decided_at", (run_id,),
                    doing="reading approval decisions"):
                key = (row["row"] or None, str(row["step_id"]))
                found.setdefault(key, Decision(
                    approved=row["decision"] == "approved", by=str(row["decided_by"]),
                    at=float(row["decided_at"]), note=str(row["note"])))
        return found

    def held(self, run_id: str) -> list[HeldGate]:
        """The gates ``run_id`` stopped before: its steps (or rows' steps) held at a gate, not
        those held below one."""
        prefix = WAITING_FOR_APPROVAL + ":"
        gates = []
        for row in self.history._read(
                "SELECT NULL AS row, step_id, error, position FROM steps WHERE run_id = ? "
                "AND status = 'skipped' AND substr(error, 1, ?) = ? UNION ALL "
                "SELECT row, step_id, error, position FROM row_steps WHERE run_id = ? "
                "AND status = 'skipped' AND substr(error, 1, ?) = ? ORDER BY row, position",
                (run_id, len(prefix), prefix, run_id, len(prefix), prefix),
                doing="reading the gates a run waits at"):
            question = str(row["error"])[len(prefix):].strip()
            gates.append(HeldGate(str(row["step_id"]), question,
                                  None if row["row"] is None else str(row["row"])))
        return gates

    def rows_waiting_at(self, run_id: str, step_id: str, start: str = "",
                        limit: int = 50) -> list[str]:
        """The keys, in key order, of at most ``limit`` rows of ``run_id`` that wait at gate
        ``step_id`` and start with ``start`` (one indexed range query, however many rows)."""
        prefix = WAITING_FOR_APPROVAL + ":"
        found = self.history._read(
            "SELECT row FROM row_steps WHERE run_id = ? AND step_id = ? AND status = 'skipped' "
            "AND substr(error, 1, ?) = ? AND row >= ? ORDER BY row LIMIT ?",
            (run_id, step_id, len(prefix), prefix, start, limit),
            doing="reading the rows waiting at a gate")
        return [str(row["row"]) for row in found if str(row["row"]).startswith(start)]


__all__ = ["EVERY_ROW", "GateHistory", "HeldGate"]
