"""A single run of a plan (``dworkers run PLAN -i ...``): what it does differently from a
dataset run — the run folder's writer, the live tree (or line view), the history recorder,
resuming by reusing earlier steps, and the dry run that renders every prompt."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from dworkers import output_schema
from dworkers.plans.base import PlanStep
from dworkers.results import RunResult
from dworkers.run.flow import EXIT_OK, Console, Display, RunMode, RunRequest
from dworkers.text import clean, json_text
from dworkers.types import WorkerRole

if TYPE_CHECKING:
    from dworkers.engine import Engine, StepCache
    from dworkers.events import RunStarted
    from dworkers.history import History, HistoryRecorder
    from dworkers.outputs import RunWriter
    from dworkers.results import StepResult
    from dworkers.run.flow import Resolved

class SingleMode(RunMode):
    """One run of the plan over one set of inputs."""

    kind = "single"
    plan_hint = "dworkers run PLAN"
    streams: ClassVar[bool] = True
    preflight_first: ClassVar[bool] = False  # the tree paints first; engine.run checks

    def __init__(self, request: RunRequest, resolved: Resolved, engine: Engine) -> None:
        super().__init__(request, resolved, engine)
        self.values = engine.resolve_inputs(resolved.inputs)
        if self.files_read:  # documents in the prompt: each step must still fit its model
            from dworkers.run.documents import check_fits

            check_fits(engine, self.values, self.files_read)
        resumed = resolved.resumed
        self.reused = engine.reused_steps(self.values) if resumed is not None else None
        self.run_writer: RunWriter | None = None

    @classmethod
    def engine_parts(cls, resolved: Resolved, request: RunRequest
                     ) -> tuple[dict[str, StepResult] | None, StepCache | None]:
        history, resumed = resolved.history, resolved.resumed
        reuse = None
        if resumed is not None and history is not None:
            reuse = history.reuse_for(resumed.run_id, resolved.plan)
        cache = None
        if history is not None and not request.no_cache and not request.mock:
            from dworkers.history import HistoryCache

            cache = HistoryCache(history)
        return reuse, cache

    def dry_run(self) -> int:
        resumed = self.resolved.resumed
        return render_prompts(self.engine, self.values, as_json=self.request.json,
                              reused=self.reused,
                              resumed_from=resumed.run_id if resumed else None)

    def nothing_to_do(self) -> bool:
        """Resuming a run whose every step would be reused: say so, and make no new run."""
        from dworkers import view

        resumed, history = self.resolved.resumed, self.resolved.history
        if resumed is None or history is None or self.reused is None:
            return False
        if not all(self.reused.values()):
            return False
        err = view.console()
        view.print_ok(err, f"run {resumed.run_id} has nothing left to do: every step succeeded "
                           "and would be asked the same thing (no new run made)")
        if self.request.json:
            summary = history.to_run_result(resumed.run_id).summary()
            view.write_stdout(json_text(summary) + "\n", err)
        return True

    def start(self, err: Console) -> None:
        from dworkers import view

        capped = role_cap_note(self.engine, self.request.max_concurrency)
        if capped:
            view.print_note(err, capped)

    def recorder(self, history: History, options: dict[str, Any],
                 started: RunStarted) -> HistoryRecorder:
        from dworkers.history import HistoryRecorder

        resumed = self.resolved.resumed
        return HistoryRecorder(history, inputs=self.values, options=options,
                               resumed_from=resumed.run_id if resumed else None)

    def writer(self, out_dir: Path) -> RunWriter:
        from dworkers.outputs import RunWriter

        self.run_writer = RunWriter(out_dir, self.engine.plan, self.values)
        return self.run_writer

    def view(self, err: Console, interactive: bool) -> Display:
        from dworkers import view

        # Streaming costs client CPU per token (which delays the next ready step): only the
        # live tree shows tokens as they arrive.
        self.engine.options.stream = interactive and not self.request.json
        return view.make_view(interactive=interactive, quiet=self.request.quiet, console=err)

    async def body(self) -> None:
        await self.engine.run(self.values)

    def close(self) -> None:
        if self.run_writer is not None:  # files still queued land before the summary
            self.run_writer.close()

    def outcome(self, interrupted: bool) -> RunResult | None:
        return self.engine.result

    def print_summary(self, err: Console, outcome: RunResult, out_dir: Path,
                      unsaved: list[str]) -> None:
        from dworkers import view

        view.print_summary(err, outcome, str(out_dir), unsaved)

    def document(self, outcome: RunResult, out_dir: Path) -> dict[str, Any]:
        return outcome.summary()


def role_cap_note(engine: Engine, asked: int | None) -> str | None:
    """When ``--max-concurrency`` asks for more than the tenant's per-role caps let this plan
    run at once, say so (else "50" silently runs 4)."""
    if asked is None:
        return None
    per_role: dict[WorkerRole, int] = {}
    for step in engine.plan.steps:
        per_role[step.worker_role] = per_role.get(step.worker_role, 0) + 1
    caps = {role: engine.tenant.worker(role).max_concurrent_tasks for role in per_role}
    possible = sum(min(count, caps[role] or count) for role, count in per_role.items())
    if possible >= min(asked, len(engine.plan.steps)):
        return None
    limits = ", ".join(f"{role.value} {cap}" for role, cap in caps.items()
                       if cap is not None and cap < per_role[role])
    return (f"--max-concurrency {asked}: at most {possible} steps of this plan run at once, "
            f"because tenant {engine.tenant.id!r} caps its workers ({limits} at a time) — raise "
            "workers.<role>.max_concurrent_tasks in the tenant file to run more")


def placeholder_answer(step: PlanStep) -> Any:
    """What a dry run shows for a step's answer: ``<output of s>``, or for a typed step an
    object whose every field reads ``<s.field>``."""
    schema = step.answer_schema()
    if schema is None:
        return f"<output of {step.step_id}>"
    answer: dict[str, Any] = {}
    paths = list(output_schema.fields(schema))
    for path in (p for p in paths if not any(o.startswith(p + ".") for o in paths)):
        node = answer
        *parents, last = path.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            node = child if isinstance(child, dict) else {}
        node.setdefault(last, f"<{step.step_id}.{path}>")
    return answer


def render_prompts(engine: Engine, inputs: dict[str, str], *, as_json: bool,
                   reused: dict[str, bool] | None = None, resumed_from: str | None = None) -> int:
    """A dry run: render every prompt and the schedule without calling anything; resuming,
    say which steps the earlier run's answers would cover and which would be called."""
    schedule = engine.schedule()
    placeholders = {s.step_id: placeholder_answer(s) for s in engine.plan.steps}
    steps: list[dict[str, Any]] = []
    for step in engine.plan.steps:
        steps.append({
            "step_id": step.step_id,
            "role": step.worker_role.value,
            "model": engine.model_for(step),
            "timeout_seconds": engine.timeout_for(step),
            "retry_max": engine.retries_for(step),
            "when": step.when,
            "gate": gate_state(engine, step),
            "messages": engine.messages_for(step, inputs, placeholders),
        })
        if reused is not None:
            steps[-1]["reused"] = reused[step.step_id]
    if as_json:
        sys.stdout.write(json_text({"plan": engine.plan.name, "schedule": schedule,
                                    "steps": steps}) + "\n")
        return EXIT_OK
    out = [f"Plan {engine.plan.name} for tenant {engine.tenant.id}: {len(steps)} steps", "",
           "Schedule (steps on one line start together):"]
    out += [f"  {i}. {', '.join(wave)}" for i, wave in enumerate(schedule, 1)]
    gated = [s for s in steps if s["gate"] is not None]
    if gated:
        out += ["", "Gates (a person approves before the call; undecided, the run stops there "
                "and exits 3):"]
        out += [f"  {s['step_id']}: {s['gate']['question']} — {s['gate']['state']}"
                for s in gated]
    conditional = [s for s in steps if s["when"]]
    if conditional:
        out += ["", "Conditions (a false when: skips the step: no call, not a failure):"]
        out += [f"  {s['step_id']}: when: {s['when']}" for s in conditional]
    if reused is not None:
        kept = [sid for sid, hit in reused.items() if hit]
        called = [sid for sid, hit in reused.items() if not hit]
        out += ["", f"Resuming run {resumed_from}:",
                f"  reused ({len(kept)}): {', '.join(kept) or '-'}",
                f"  called ({len(called)}): {', '.join(called) or '-'}"]
    for step_data in steps:
        out += ["", f"=== {step_data['step_id']} ({step_data['role']}, {step_data['model']}, "
                    f"timeout {step_data['timeout_seconds']:g}s, retries {step_data['retry_max']})"
                + (" · gate" if step_data["gate"] else "")
                + (f" · when: {step_data['when']}" if step_data["when"] else "")]
        for message in step_data["messages"]:
            out += [f"--- {message['role']}", message["content"]]
    sys.stdout.write(clean("\n".join(out)) + "\n")
    return EXIT_OK


def gate_state(engine: Engine, step: PlanStep) -> dict[str, str] | None:
    """A gated step's question, and what a run would do there now: wait for approval, or
    go on as decided (``--approve``, or a resumed run's decision)."""
    if step.approve is False:
        return None
    from dworkers import approvals

    gates = engine.options.gates or approvals.Gates()
    decision = gates.decision(None, step.step_id)
    state = ("waits for approval" if decision is None
             else f"approved by {decision.by}" if decision.approved
             else decision.reason(step.step_id))
    return {"question": approvals.question_of(step.approve, step.name), "state": state}


__all__ = ["SingleMode", "gate_state", "render_prompts", "role_cap_note"]
