"""Approval gates: what a run knows of the decisions on its gated steps (pure data, no I/O).

A step with ``approve:`` is a gate. When its dependencies are done the engine asks ``Gates``
whether it may run: approved (by ``dworkers approve``, ``--approve STEP`` or
``--approve-all``) it is called; rejected, it and everything downstream of it end as
``rejected`` without a call; undecided, it and its dependents end as ``waiting`` and the run
stops with exit 3. The history (``history.approvals``) stores the decisions; a resumed run
gets them here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

WAITING_FOR_APPROVAL = "waiting for approval"  # how a held step's reason begins
REJECTED = "rejected"  # how a rejected step's reason begins
PRE_APPROVER = "--approve"  # who approved a gate from the command line of `dworkers run`


@dataclass(frozen=True, slots=True)
class Decision:
    """An approver's decision on one gate (of one row, in a dataset run)."""

    approved: bool
    by: str
    at: float
    note: str = ""

    def reason(self, step_id: str) -> str:
        """Why a rejected step was not called, as the tree, run.json and report.md say it."""
        said = f": {self.note}" if self.note else ""
        return f"{REJECTED} by {self.by}{said}"


@dataclass
class Gates:
    """The decisions a run starts with. ``decided`` is keyed by (row key or None, step id); a
    decision with row ``None`` holds for every row."""

    decided: Mapping[tuple[str | None, str], Decision] = field(default_factory=dict)
    approve_steps: frozenset[str] = frozenset()  # --approve STEP
    approve_all: bool = False  # --approve-all

    def decision(self, row: str | None, step_id: str) -> Decision | None:
        """The decision on ``step_id`` (for ``row``), or None: the step waits."""
        found = self.decided.get((row, step_id)) or self.decided.get((None, step_id))
        if found is not None:
            return found
        if self.approve_all or step_id in self.approve_steps:
            return Decision(approved=True, by=PRE_APPROVER, at=0.0)
        return None


def waiting_reason(question: str) -> str:
    """What a held gate shows: the question its approver is asked."""
    return f"{WAITING_FOR_APPROVAL}: {question}"


def held_below(gate: str, reason: str) -> str:
    """What a step downstream of a held or rejected gate shows."""
    if reason.startswith(REJECTED):
        return f"{REJECTED}: {gate} was {reason}"
    return f"{WAITING_FOR_APPROVAL} of {gate}"


def question_of(approve: bool | str, step_name: str) -> str:
    """The question an approver answers: the plan's own, or one made from the step's name."""
    if isinstance(approve, str) and approve.strip():
        return approve.strip()
    return f"Run {step_name!r}?"


__all__ = ["PRE_APPROVER", "REJECTED", "WAITING_FOR_APPROVAL", "Decision", "Gates", "held_below",
           "question_of", "waiting_reason"]
