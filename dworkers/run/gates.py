"""Approval gates from the command line: the decisions a run starts with (a resumed run's, and
``--approve``/``--approve-all``), and ``dworkers approve|reject RUN STEP`` deciding a held gate.

The engine only asks ``approvals.Gates``; the history keeps the decisions
(``history.approvals``); this module checks what a person typed and says what happened.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dworkers.approvals import PRE_APPROVER, WAITING_FOR_APPROVAL, Gates
from dworkers.errors import DworkersError, NotFoundError, did_you_mean, suggestion

if TYPE_CHECKING:
    from dworkers.history import History, RunRecord
    from dworkers.history.approvals import HeldGate
    from dworkers.plans.base import BasePlan


def approver() -> str:
    """Who decides: ``$DWORKERS_USER``, else the operating system's user."""
    named = os.environ.get("DWORKERS_USER", "").strip()
    if named:
        return named
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in this environment (a bare container)
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


def gated_steps(plan: BasePlan) -> list[str]:
    return [step.step_id for step in plan.steps if step.approve is not False]


def check_pre_approvals(plan: BasePlan, steps: Sequence[str]) -> None:
    """``--approve STEP`` must name a gated step of the plan (did-you-mean otherwise)."""
    gates = gated_steps(plan)
    for sid in steps:
        if sid in gates:
            continue
        if plan.has_step(sid):
            raise DworkersError(f"--approve {sid}: step {sid!r} of plan {plan.name!r} is not a "
                                f"gate (no 'approve:') — gates: {', '.join(gates) or 'none'}")
        guess = did_you_mean(sid, gates) or did_you_mean(sid, [s.step_id for s in plan.steps])
        hint = suggestion(sid, guess) if guess else f"gates: {', '.join(gates) or 'none'}"
        raise DworkersError(f"--approve {sid}: plan {plan.name!r} has no step {sid!r} — {hint}")


def run_gates(plan: BasePlan, history: History | None, resumed: RunRecord | None,
              approve: Sequence[str], approve_all: bool) -> Gates:
    """The decisions a run starts with: those a resumed run (and the runs it resumed) got,
    then the command line's pre-approvals."""
    check_pre_approvals(plan, approve)
    decided = {}
    if history is not None and resumed is not None:
        from dworkers.history.approvals import GateHistory

        decided = GateHistory(history).decisions(resumed.run_id)
    return Gates(decided=decided, approve_steps=frozenset(approve), approve_all=approve_all)


def record_pre_approvals(history: History, run_id: str, plan: BasePlan,
                         approve: Sequence[str], approve_all: bool) -> None:
    """Keep ``--approve``/``--approve-all`` in the history as the run's decisions."""
    from dworkers.history.approvals import GateHistory

    steps = gated_steps(plan) if approve_all else [s for s in gated_steps(plan) if s in approve]
    gates = GateHistory(history)
    for sid in steps:
        gates.record(run_id, sid, approved=True, by=PRE_APPROVER)


@dataclass(frozen=True, slots=True)
class GateDecision:
    """What ``dworkers approve|reject`` asked for, as typed."""

    run: str
    step: str
    approved: bool
    note: str = ""
    rows: Sequence[str] | None = None  # --rows KEY,...
    all_rows: bool = False


def decide_gate(request: GateDecision) -> str:
    """Record an approver's decision on a held gate; returns what to tell them. Raises
    ``DworkersError`` (exit 2) for a run, step or row that cannot be decided."""
    from dworkers.history import History
    from dworkers.history.approvals import GateHistory

    verb = "approve" if request.approved else "reject"
    with History() as history:
        record = history.get_run(request.run.strip() or "<empty>")
        gates = GateHistory(history)
        held = gates.held(record.run_id)
        dataset = isinstance(record.options.get("data"), dict)
        at_step = [gate for gate in held if gate.step_id == request.step]
        if not at_step:
            raise _not_held(history, record.run_id, request.step, held, dataset, verb)
        rows = _rows_to_decide(request, at_step, dataset, verb, record.run_id)
        gates.record(record.run_id, request.step, approved=request.approved, by=approver(),
                     note=request.note.strip(), rows=rows)
    done = "approved" if request.approved else "rejected"
    whose = f" for {len(rows)} row{'s' if len(rows) != 1 else ''}" if dataset else ""
    then = ("continue it" if request.approved
            else "finish it (the step and everything downstream of it are skipped)")
    return (f"{done} {request.step} of run {record.run_id}{whose} — {then}: "
            f"dworkers run --resume {record.run_id}")


def _rows_to_decide(request: GateDecision, at_step: list[HeldGate], dataset: bool, verb: str,
                    run_id: str) -> list[str]:
    if not dataset:
        if request.rows is not None or request.all_rows:
            raise DworkersError(f"run {run_id} is not a dataset run: it has no rows — drop "
                                "--rows/--all-rows")
        return [""]
    waiting = [gate.row for gate in at_step if gate.row is not None]
    if request.all_rows:
        if request.rows is not None:
            raise DworkersError("--rows and --all-rows both given — use one")
        return waiting
    if request.rows is None:
        raise DworkersError(f"{len(waiting)} rows of run {run_id} wait at {request.step} — name "
                            f"them: dworkers {verb} {run_id} {request.step} --rows KEY,... or "
                            "--all-rows")
    chosen = [key.strip() for key in request.rows if key.strip()]
    if not chosen:
        raise DworkersError("--rows names no row — give keys separated by commas")
    known = set(waiting)
    for key in chosen:
        if key not in known:
            raise NotFoundError(f"row waiting at {request.step}", key, waiting,
                                f"waiting rows: {', '.join(waiting[:10])}"
                                + (" …" if len(waiting) > 10 else ""))
    return list(dict.fromkeys(chosen))


def _not_held(history: History, run_id: str, step: str, held: list[HeldGate], dataset: bool,
              verb: str) -> DworkersError:
    """Why ``step`` cannot be decided: no such step, not a gate, or not waiting."""
    gates = list(dict.fromkeys(gate.step_id for gate in held))
    waiting = f"waiting: {', '.join(gates)}" if gates else f"run {run_id} waits at no gate"
    if dataset:
        known = gates  # a dataset run keeps its steps per row
    else:
        steps = history.steps(run_id)
        known = [s.step_id for s in steps]
        found = next((s for s in steps if s.step_id == step), None)
        if found is not None:
            reason = found.error or ""
            if reason.startswith(WAITING_FOR_APPROVAL + " of "):
                gate = reason[len(WAITING_FOR_APPROVAL + " of "):]
                return DworkersError(f"step {step!r} of run {run_id} is not a gate: it waits "
                                     f"for gate {gate} — dworkers {verb} {run_id} {gate}")
            return DworkersError(f"step {step!r} of run {run_id} is not waiting for approval "
                                 f"(it {found.status}) — {waiting}")
    guess = did_you_mean(step, gates) or did_you_mean(step, known)
    if guess:
        return DworkersError(f"run {run_id} has no gate {step!r} waiting — "
                             f"{suggestion(step, guess)}")
    return DworkersError(f"run {run_id} has no gate {step!r} waiting — {waiting}")


__all__ = ["GateDecision", "approver", "check_pre_approvals", "decide_gate",
           "record_pre_approvals", "run_gates"]
