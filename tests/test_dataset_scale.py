"""Dataset runs stay flat in memory however many rows they have, and leave every row behind.

A finished row is handed on (files, view, history) and forgotten: nothing the engine keeps
holds a row's run or its result once it is done, while the totals still count it; and a run's
folder and history hold every row once it is over.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
import weakref
from pathlib import Path
from typing import Any

import pytest
from support import invoke, make_plan, make_tenant

from dworkers.engine import PlanBuilder, RunOptions, dataset as engine_dataset
from dworkers.engine.instance import PlanInstance
from dworkers.events import RowFinished, RowStarted
from dworkers.llm import MockClient
from dworkers.results import RowResult, RowStatus
from dworkers.view.dataset_state import FAILURES_SHOWN, DatasetState

ROWS = 120
WINDOW = 4


def test_a_finished_row_is_released_and_the_totals_still_count_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    alive: weakref.WeakSet[PlanInstance] = weakref.WeakSet()

    class Tracked(PlanInstance):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            alive.add(self)

    monkeypatch.setattr(engine_dataset, "PlanInstance", Tracked)
    engine = PlanBuilder(make_plan({"a": [], "b": ["a"], "c": ["b"]}), make_tenant(),
                         client=MockClient(latency=0),
                         options=RunOptions(row_window=WINDOW)).build()
    handed_on: list[weakref.ref[RowResult]] = []
    most_alive = 0
    tokens = 0

    async def consume() -> None:
        nonlocal most_alive, tokens
        rows = ({"item": f"item-{n:03d}"} for n in range(ROWS))
        async for result in engine.run_many(rows):
            handed_on.append(weakref.ref(result))
            tokens += result.total_tokens
            if len(handed_on) % 20 == 0:
                gc.collect()
                most_alive = max(most_alive, len(alive))

    asyncio.run(consume())
    gc.collect()
    assert len(handed_on) == ROWS
    # At most the window's rows were alive at once, and none is once the run is over: not
    # their runs, nor the results the consumer let go of.
    assert 0 < most_alive <= WINDOW
    assert len(alive) == 0
    assert all(ref() is None for ref in handed_on)
    totals = engine.dataset_result
    assert totals is not None
    assert totals.counts[RowStatus.SUCCEEDED] == ROWS and totals.rows == ROWS
    assert totals.calls == ROWS * 3
    assert totals.prompt_tokens + totals.completion_tokens == tokens > 0


def test_the_progress_state_keeps_counts_not_rows() -> None:
    state = DatasetState(total=2_000)
    for n in range(2_000):
        key = f"row-{n}"
        state.apply(RowStarted(key, n + 2, float(n)))
        failed = n % 3 == 0
        state.apply(RowFinished(RowResult(
            key=key, status=RowStatus.FAILED if failed else RowStatus.SUCCEEDED,
            error="a: HTTP 500" if failed else None), float(n)))
    assert state.running == set()  # a finished row's key is let go of
    assert len(state.failures) == FAILURES_SHOWN  # the last few, not every failure
    assert state.count(RowStatus.FAILED) == 667 and state.count(RowStatus.SUCCEEDED) == 1_333
    assert state.done == 2_000 and state.left == 0


def test_every_row_is_in_the_results_the_reports_and_the_history(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rows = 300
    monkeypatch.setenv("DWORKERS_MOCK_LATENCY", "0")
    monkeypatch.setenv("DWORKERS_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plan.yaml").write_text(
        "name: per-row\ndescription: twice per row\ninputs:\n  topic:\n"
        "    description: what to write about\nsteps:\n"
        "  - step_id: first\n    name: First\n    worker_role: analyst\n"
        "    prompt_template: \"On {topic}\"\n"
        "  - step_id: second\n    name: Second\n    worker_role: analyst\n"
        "    depends_on: [first]\n"
        "    prompt_template: \"Again on {topic}\"\n")
    (tmp_path / "rows.csv").write_text(
        "id,topic\n" + "".join(f"row-{n:04d},topic {n}\n" for n in range(rows)))
    code, _, stderr = invoke("run", "plan.yaml", "--data", "rows.csv", "--mock", "-q",
                             "--out", "runs", "--max-concurrency", "8")
    assert code == 0, stderr
    [run_dir] = list((tmp_path / "runs").iterdir())
    keys = {f"row-{n:04d}" for n in range(rows)}
    lines = [json.loads(line) for line in
             (run_dir / "results.jsonl").read_text().splitlines()]
    assert len(lines) == rows and {line["key"] for line in lines} == keys
    assert all(line["status"] == "succeeded" for line in lines)
    # One report per row and nothing else: no temporary file left behind.
    assert sorted(p.name for p in (run_dir / "rows").iterdir()) == sorted(
        f"{key}.md" for key in keys)
    assert json.loads((run_dir / "run.json").read_text())["counts"]["succeeded"] == rows
    with sqlite3.connect(tmp_path / "home" / "history.db") as db:
        recorded = dict(db.execute("SELECT key, status FROM rows WHERE run_id = ?",
                                   (run_dir.name,)).fetchall())
        steps = db.execute("SELECT count(*) FROM row_steps WHERE run_id = ? AND "
                           "status = 'succeeded'", (run_dir.name,)).fetchone()[0]
    assert recorded == dict.fromkeys(keys, "succeeded")
    assert steps == rows * 2
