"""The run folder written off the event loop: a step's dependents start while its file is
written, and nothing queued is lost when the run ends, however it ends."""

from __future__ import annotations

import asyncio
import json
import threading
from functools import partial
from pathlib import Path

import pytest
from support import FakeLLMServer, llm_server, make_plan, make_tenant, marker

from dworkers import job_queue
from dworkers.events import Event, RunFinished, RunStarted, StepFinished, StepInfo
from dworkers.job_queue import JobQueue
from dworkers.outputs import RunWriter
from dworkers.plans.builder import PlanBuilder
from dworkers.results import StepResult, StepStatus

__all__ = ["llm_server"]

BOUND = 60.0  # seconds a test waits for a server-side event at most (a hang guard, no criterion)


class SlowDisk(JobQueue):
    """A queue whose first job holds every later one until someone waits for the queue: the
    files a run queues stay unwritten until the writer asks for them."""

    def __init__(self) -> None:
        super().__init__("slow disk")
        self.free = threading.Event()
        self.submit(lambda: self.free.wait(BOUND))

    def flush(self) -> None:
        self.free.set()
        super().flush()

    def close(self) -> None:
        self.free.set()
        super().close()


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DWORKERS_MOCK_LATENCY", "0")
    monkeypatch.setenv("DWORKERS_HOME", str(tmp_path / "home"))


def test_files_queued_when_a_run_is_interrupted_are_written_before_it_ends(
    llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    """The disk is slow (files wait until the writer asks for them): the steps after 'quick'
    still start, and when Ctrl-C ends the run every finished step's file is on disk before
    run.json says so."""
    llm_server.add_rule(marker("hang"), hang=True)
    plan = make_plan({"quick": [], "next": ["quick"], "hang": ["next"]})
    run_dir = tmp_path / "run"
    writer = RunWriter(run_dir, plan, {})
    steps_on_disk: list[list[str]] = []  # when the run ended, and once the writer saw it end

    def consume(event: Event) -> None:
        if isinstance(event, RunFinished):
            steps_on_disk.append(sorted(p.name for p in (run_dir / "steps").iterdir()))
        writer(event)
        if isinstance(event, RunFinished):
            steps_on_disk.append(sorted(p.name for p in (run_dir / "steps").iterdir()))
        if isinstance(event, RunStarted):
            writer.files = SlowDisk()

    engine = PlanBuilder(plan, make_tenant(), api_base=llm_server.url,
                         on_event=consume).build()

    async def interrupted_run() -> None:
        task = asyncio.create_task(engine.run())
        asked = await asyncio.to_thread(
            llm_server._wait_until, lambda: bool(llm_server.requests_containing(
                marker("hang"))), BOUND)
        assert asked, "the last step was never called"
        task.cancel()  # what Ctrl-C and SIGTERM do
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupted_run())

    # The steps ran on while their files waited; the run's end wrote them.
    assert steps_on_disk == [[], ["next.md", "quick.md"]]
    assert (run_dir / "steps" / "quick.md").read_text().startswith("Reply to:")
    assert (run_dir / "steps" / "next.md").read_text().startswith("Reply to:")
    data = json.loads((run_dir / "run.json").read_text())
    assert data["status"] == "interrupted"
    assert {sid: step["status"] for sid, step in data["outputs"].items()} == {
        "quick": "succeeded", "next": "succeeded", "hang": "cancelled"}
    assert "## NEXT" in (run_dir / "report.md").read_text()
    assert writer.unsaved == {}


def test_close_writes_what_is_queued_when_the_run_s_last_event_never_came(
    tmp_path: Path
) -> None:
    """The flow closes the writer however the run ended: every finished step is in run.json
    (its rewrites coalesce, the last one has them all) and in steps/."""
    plan = make_plan({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]})
    run_dir = tmp_path / "run"
    writer = RunWriter(run_dir, plan, {"topic": "x"})

    def consume(event: Event) -> None:
        if isinstance(event, RunFinished):
            return  # lost, say, to a bug further up
        writer(event)
        if isinstance(event, RunStarted):
            writer.files = SlowDisk()

    engine = PlanBuilder(plan, make_tenant(), mock=True, on_event=consume).build()
    assert asyncio.run(engine.run({})).success
    assert not (run_dir / "steps" / "a.md").exists()  # the run did not wait for its files
    writer.close()

    data = json.loads((run_dir / "run.json").read_text())
    assert data["status"] == "running"
    assert sorted(data["outputs"]) == ["a", "b", "c", "d"]
    assert all(step["status"] == "succeeded" and "output" not in step
               for step in data["outputs"].values())
    assert sorted(p.name for p in (run_dir / "steps").iterdir()) == [
        "a.md", "b.md", "c.md", "d.md"]


def test_file_queue_runs_jobs_in_order_and_a_waiting_rewrite_only_once(tmp_path: Path) -> None:
    queue = JobQueue("test")
    free = threading.Event()
    done: list[str] = []
    queue.submit(lambda: free.wait(BOUND))
    queue.submit(lambda: done.append("steps/a.md"))
    for _ in range(3):  # run.json after each of three steps, while the disk is busy
        queue.submit(lambda: done.append("run.json"), key="run.json")
    queue.submit(lambda: done.append("steps/b.md"))
    free.set()
    queue.flush()
    assert done == ["steps/a.md", "run.json", "steps/b.md"]

    queue.submit(lambda: done.append("run.json"), key="run.json")  # no longer waiting: queued
    queue.close()
    assert done[-1] == "run.json" and done.count("run.json") == 2
    queue.submit(lambda: done.append("late"))  # after close: at once, in this thread
    assert done[-1] == "late"


def test_a_job_that_raises_neither_stops_the_queue_nor_hangs_a_flush() -> None:
    queue = JobQueue("test")
    done: list[int] = []

    def broken() -> None:
        raise RuntimeError("bug")

    queue.submit(broken)
    queue.submit(lambda: done.append(1))
    queue.close()
    assert done == [1]
    assert isinstance(queue.failure, RuntimeError)


def test_run_json_while_running_is_what_json_dumps_would_write(tmp_path: Path) -> None:
    """run.json is assembled from each step's part, made once: byte for byte the document
    ``json.dumps(..., indent=2)`` makes of the run so far, nested values and escapes included."""
    plan = make_plan({"a": [], "b": ["a"]})
    writer = RunWriter(tmp_path / "run", plan, {"brief": 'two\nlines, "quoted", é'})

    def expected() -> str:
        started = writer.started
        data: dict[str, object] = {
            "run_id": started.run_id if started else None, "plan": plan.name,
            "tenant": started.tenant if started else None, "inputs": writer.inputs,
            "status": "running",
            "outputs": {sid: {k: v for k, v in result.model_dump(mode="json").items()
                              if k != "output"} for sid, result in writer.results.items()}}
        if started is not None:
            data["models"] = {info.step_id: info.model for info in started.steps}
        return json.dumps(data, indent=2) + "\n"

    assert writer.running_json() == expected()  # nothing known yet
    writer(RunStarted("run-1", plan.name, "acme", (
        StepInfo("a", "A", "analyst", "openai/x", ()), StepInfo("b", "B", "analyst", "m", ())),
        0.0))
    assert writer.running_json() == expected()
    writer(StepFinished(StepResult(step_id="a", status=StepStatus.SUCCEEDED, attempts=1,
                                   output="{}", value={"rows": [1, {"k": "v\n"}], "none": None},
                                   cost_usd=0.5), 1.0))
    writer(StepFinished(StepResult(step_id="b", status=StepStatus.FAILED, attempts=2,
                                   error="bad\tthing"), 2.0))
    assert writer.running_json() == expected()
    writer.close()
    assert (tmp_path / "run" / "run.json").read_text() == expected()


def test_job_queue_stays_flat_when_jobs_come_faster_than_its_thread_takes_them(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_queue, "MOST_QUEUED", 5)
    queue = JobQueue("test", pace=BOUND)  # would gather for a minute, unless it must hurry
    most: list[int] = []
    done: list[int] = []
    for n in range(50):
        queue.submit(partial(done.append, n))
        most.append(len(queue._jobs))
    queue.close()
    assert done == list(range(50))
    assert max(most) <= 5
