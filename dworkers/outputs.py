"""The run directory: ``steps/<step_id>.md`` as each step finishes, ``run.json`` kept current,
and ``report.md`` assembling the deliverables in plan order when the run ends.

Every file is written atomically (temporary file + rename), so a crash or Ctrl-C leaves either
the previous or the new version of a file, never half of one.

While the run goes, files are written on a ``JobQueue``'s thread: a step's dependents start
while its file is written, not after (writing held each one up by most of the client's time
per step). Each step's file is queued the moment the step finishes; run.json's rewrites
coalesce when steps finish faster than they can be written. When the run ends — finished,
failed, Ctrl-C or SIGTERM (the engine reports every step then too) — everything queued is
written before the final run.json and report.md, in the caller's thread.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from dworkers import deliverables
from dworkers.events import Event, RunFinished, RunStarted, StepFinished
from dworkers.files import write_atomic
from dworkers.job_queue import JobQueue
from dworkers.plans.base import BasePlan
from dworkers.results import RunResult, StepResult
from dworkers.text import clean, crop, one_line

# run.json is rewritten after every step, except in very large plans, where rewriting it per
# step would be quadratic: there it is rewritten at most every RUN_JSON_INTERVAL seconds.
LARGE_PLAN_STEPS = 200
RUN_JSON_INTERVAL = 0.5
# The file thread lets a finished step's files wait this long, so that the event loop, which
# shares the interpreter with it, gets the dependents' requests out first.
FILES_PACE_SECONDS = 0.03


class RunWriter:
    """An ``on_event`` callback that keeps a run directory up to date.

    A file that cannot be written (disk full, directory removed) does not stop the run: the
    calls already paid for go on being saved where they can (history, other files), every file
    that could not be written is kept in ``unsaved`` with the reason, and the caller reports it
    and fails the run's exit code. ``close`` (after the run, however it ended) waits for the
    files still queued.
    """

    def __init__(self, directory: Path, plan: BasePlan, inputs: dict[str, str]) -> None:
        self.directory = directory
        self.plan = plan
        self.inputs = inputs
        self.started: RunStarted | None = None
        self.results: dict[str, StepResult] = {}
        self.last_write = 0.0
        self.throttle = RUN_JSON_INTERVAL if len(plan.steps) > LARGE_PLAN_STEPS else 0.0
        self.unsaved: dict[str, str] = {}  # file, relative to the run directory -> why
        self.files = JobQueue("dworkers-run-files", pace=FILES_PACE_SECONDS)
        # ``results`` grows on the event loop while the queue's thread renders run.json.
        self._results_lock = threading.Lock()
        self._step_texts: dict[str, tuple[StepResult, str]] = {}  # run.json's, per result

    @property
    def error(self) -> str | None:
        """What is missing from the run directory, on one line (None when every file is there)."""
        if not self.unsaved:
            return None
        reasons = list(dict.fromkeys(self.unsaved.values()))
        names = list(self.unsaved)
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return f"{shown} ({'; '.join(reasons[:2])})"

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.files.close()  # an earlier run's files, if this writer saw one
            self.files = JobQueue("dworkers-run-files", pace=FILES_PACE_SECONDS)
            self.started = event
            self.write("steps", None)
            self.write_run_json(status="running")
        elif isinstance(event, StepFinished):
            result = event.result
            with self._results_lock:
                self.results[result.step_id] = result
            # No fsync (whole files even if killed; the history has every result): the queue
            # would fall behind the steps by ~20 ms a file.
            if result.succeeded:  # a model's escape codes must not reach a reader's terminal
                self.in_background(f"steps/{result.step_id}.md",
                                   lambda: clean(result.output))
            if time.monotonic() - self.last_write >= self.throttle:
                self.in_background("run.json", self.running_json)
        elif isinstance(event, RunFinished):
            self.files.close()  # what is queued lands before the final versions
            with self._results_lock:
                self.results.update(event.result.outputs)
            self.write_run_json(result=event.result)
            self.write("report.md", report(self.plan, event.result))

    def close(self) -> None:
        """Wait until every file queued is written (the run's end does it too)."""
        self.files.close()

    def in_background(self, name: str, render: Callable[[], str]) -> None:
        """Write ``name`` on the queue's thread, with the text ``render`` gives when its turn
        comes; a rewrite of a file still waiting for its turn is not queued twice."""

        def job() -> None:
            try:
                text = render()
            except Exception as exc:  # a bug: the file is missing, and the run says so
                self.unsaved[name] = f"internal error: {exc!r}"
                return
            self.write(name, text, durable=False)
            if name == "run.json":
                self.last_write = time.monotonic()

        self.files.submit(job, key=name)

    def write(self, name: str, text: str | None, *, durable: bool = True) -> None:
        """Write ``name`` (a directory when ``text`` is None), or note why it could not be."""
        path = self.directory / name
        try:
            if text is None:
                path.mkdir(parents=True, exist_ok=True)
            else:
                write_atomic(path, text, durable=durable)
        except OSError as exc:
            self.unsaved[name if text is not None else f"{name}/"] = exc.strerror or str(exc)
        else:
            self.unsaved.pop(name, None)  # a later version made it (run.json is rewritten)

    def running_json(self, status: str = "running") -> str:
        """run.json while the run goes, as ``json.dumps(..., indent=2)`` would write it: each
        step's part is made once, so a rewrite costs little more than joining them (it runs
        beside the event loop, and holds the interpreter while it runs)."""
        with self._results_lock:
            results = list(self.results.items())
        started = self.started
        head = json.dumps({
            "run_id": started.run_id if started else None,
            "plan": self.plan.name,
            "tenant": started.tenant if started else None,
            "inputs": self.inputs,
            "status": status,
        }, indent=2)
        steps = ",\n".join(f"    {json.dumps(sid)}: {self._step_json(sid, result)}"
                           for sid, result in results)
        text = head[:-2] + ',\n  "outputs": ' + (f"{{\n{steps}\n  }}" if steps else "{}")
        if started is not None:
            models = {s.step_id: s.model for s in started.steps}
            text += ',\n  "models": ' + json.dumps(models, indent=2).replace("\n", "\n  ")
        return text + "\n}\n"

    def _step_json(self, sid: str, result: StepResult) -> str:
        """One step's entry in run.json's outputs, indented as there; made once a result."""
        kept = self._step_texts.get(sid)
        if kept is None or kept[0] is not result:
            dumped = result.model_dump(mode="json")
            dumped.pop("output", None)  # outputs live in steps/*.md
            text = json.dumps(dumped, indent=2).replace("\n", "\n    ")
            kept = self._step_texts[sid] = (result, text)
        return kept[1]

    def write_run_json(self, *, status: str = "running", result: RunResult | None = None,
                       durable: bool = True) -> None:
        if result is None:
            text = self.running_json(status)
        else:
            data = result.summary()
            data["status"] = run_status(result)
            if self.started is not None:
                data["models"] = {s.step_id: s.model for s in self.started.steps}
            for step in data.get("outputs", {}).values():  # outputs live in steps/*.md
                if isinstance(step, dict):
                    step.pop("output", None)
            text = json.dumps(data, indent=2) + "\n"
        self.write("run.json", text, durable=durable)
        self.last_write = time.monotonic()


def run_status(result: RunResult) -> str:
    return result.status.value  # "waiting for approval" too


def report(plan: BasePlan, result: RunResult) -> str:
    """The deliverables of a run in plan order, as one Markdown document."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(result.started_at or time.time()))
    lines = [
        f"# {plan.name}",
        "",
        plan.description,
        "",
        f"- Run: `{result.run_id}` ({run_status(result)}), {when}",
        f"- Tenant: {result.tenant}",
    ]
    for name, value in result.inputs.items():
        lines.append(f"- {name}: {crop(one_line(value), 200)}")
    lines.append("")
    lines += deliverables.sections(plan, result.outputs)
    # Plan files and model answers are untrusted: no escape code reaches a terminal via cat.
    return clean("\n".join(lines)).rstrip() + "\n"
