"""Dataset runs in the history: rows recorded up front (all or refused on resume), paid steps
kept at once, one step-result schema with single runs (and its upgrade), unknown costs and
cut-off answers kept, patience with a locked file, resume rows, and what a run has spent."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import make_plan

from dworkers.errors import HistoryError, NotFoundError
from dworkers.events import DatasetFinished, RowFinished, RunStarted, StepFinished, StepInfo
from dworkers.history import History, schema
from dworkers.history.dataset import (
    DatasetHistory,
    DatasetRecorder,
    DatasetStepCache,
    IncompleteRowsError,
)
from dworkers.history.records import (
    NOT_STEP_COLUMNS,
    ROW_STEP_COLUMNS,
    STEP_COLUMNS,
    STEP_RESULT_COLUMNS,
)
from dworkers.results import DatasetResult, Row, RowResult, RowStatus, StepResult, StepStatus

PLAN = make_plan({"scope": [], "write": ["scope"]})
STEPS = tuple(StepInfo(s.step_id, s.name, "analyst", "openai/m", tuple(s.depends_on))
              for s in PLAN.steps)


def ok(sid: str, key: str, *, model: str = "openai/m", **update: Any) -> StepResult:
    step = PLAN.get_step(sid)
    assert step is not None
    fields: dict[str, Any] = {
        "step_id": sid, "status": StepStatus.SUCCEEDED, "output": f"{sid} of {key}",
        "attempts": 1, "model": model, "cost_usd": 0.5, "prompt_tokens": 3,
        "completion_tokens": 4, "cache_key": f"{sid}:{key}", "fingerprint": step.fingerprint(),
        "finished_at": 1.0, "messages_digest": f"asked {sid} of {key}"}
    return StepResult(**{**fields, **update})


def failed(sid: str) -> StepResult:
    return StepResult(step_id=sid, status=StepStatus.FAILED, error="HTTP 500", attempts=3)


@pytest.fixture
def hist(tmp_path: Path) -> History:
    return History(tmp_path / "history.db").open()


def rows_of(keys: list[str]) -> Iterator[Row]:
    return (Row(key, {"brief": f"brief {key}"}, {"region": "EU"}, n + 2)
            for n, key in enumerate(keys))


def start(hist: History, keys: list[str], run_id: str = "r1", *,
          resumed_from: str | None = None, patience: float = 120.0) -> DatasetRecorder:
    recorder = DatasetRecorder(hist, inputs={"tone": "dry"}, resumed_from=resumed_from,
                               options={"data": {"file": "rows.csv", "rows": len(keys)}},
                               patience=patience)
    event = RunStarted(run_id, PLAN.name, "acme", STEPS, 0.0, dataset=True)
    assert recorder.start(event, rows_of(keys)) == len(keys)
    recorder(event)
    return recorder


def finish(recorder: DatasetRecorder, *rows: RowResult, interrupted: bool = False) -> None:
    """The rows finish, then the run (which waits for its writes)."""
    assert recorder.run_id is not None
    result = DatasetResult(run_id=recorder.run_id, plan=PLAN.name, tenant="acme",
                           interrupted=interrupted)
    for row in rows:
        recorder(RowFinished(row))
        result.add(row)
    recorder(DatasetFinished(result))


def succeeded(key: str, **update: Any) -> RowResult:
    return RowResult(key=key, status=RowStatus.SUCCEEDED, inputs={"brief": f"brief {key}"},
                     outputs={"scope": ok("scope", key, **update),
                              "write": ok("write", key, **update)})


def test_every_row_is_recorded_before_the_first_call(hist: History) -> None:
    start(hist, [f"k{n}" for n in range(1200)])  # more than one batch
    rows = DatasetHistory(hist)
    assert rows.is_dataset("r1")
    assert rows.counts("r1")["pending"] == 1200
    [record] = hist.list_runs()
    assert record.counts["total"] == 1200 and record.options["data"]["rows"] == 1200
    first = rows.row("r1", "k0")
    assert (first.number, first.line, first.inputs, first.extra) == (
        1, 2, {"brief": "brief k0"}, {"region": "EU"})


def test_a_paid_step_is_kept_the_moment_it_succeeds(hist: History) -> None:
    recorder = start(hist, ["a", "b"])
    recorder(StepFinished(ok("scope", "a"), row="a"))
    assert recorder.flush() is None  # written (off the event loop) as soon as it came
    # The process dies here (kill -9): the row never finished, but its paid step is on record.
    resumed = list(DatasetHistory(hist).resume_rows("r1", PLAN))
    assert [row.key for row in resumed] == ["a", "b"]
    assert set(resumed[0].reuse) == {"scope"} and resumed[0].reuse["scope"].output == "scope of a"
    assert resumed[0].inputs == {"brief": "brief a"} and resumed[0].line == 2
    assert resumed[1].reuse == {}


def test_resume_reuses_what_succeeded_and_runs_the_rest(hist: History) -> None:
    recorder = start(hist, ["a", "b", "c"])
    recorder(RowFinished(RowResult(key="a", status=RowStatus.SUCCEEDED,
                                   inputs={"brief": "brief a", "tone": "dry"},
                                   outputs={"scope": ok("scope", "a"),
                                            "write": ok("write", "a")})))
    recorder(RowFinished(RowResult(key="b", status=RowStatus.FAILED, error="write: HTTP 500",
                                   outputs={"scope": ok("scope", "b"),
                                            "write": failed("write")})))
    result = DatasetResult(run_id="r1", plan=PLAN.name, tenant="acme", interrupted=True)
    result.counts.update({RowStatus.SUCCEEDED: 1, RowStatus.FAILED: 1})
    recorder(DatasetFinished(result))
    assert recorder.error is None
    rows = DatasetHistory(hist)
    assert rows.counts("r1") == {"pending": 1, "succeeded": 1, "failed": 1, "skipped": 0,
                                 "cancelled": 0}
    assert hist.get_run("r1").status == "interrupted"
    reuse = {row.key: set(row.reuse) for row in rows.resume_rows("r1", PLAN)}
    assert reuse == {"a": {"scope", "write"}, "b": {"scope"}, "c": set()}
    # A changed step definition runs again in every row, and so does what depends on it.
    changed = make_plan({"scope": [], "write": ["scope"]})
    changed.steps[0].description = "Scope it differently"
    assert {row.key: set(row.reuse) for row in rows.resume_rows("r1", changed)} == {
        "a": set(), "b": set(), "c": set()}
    [failure, never] = rows.not_succeeded("r1")
    assert (failure.key, failure.status, failure.error) == ("b", "failed", "write: HTTP 500")
    assert never.key == "c" and never.status == "pending"
    assert [s.step_id for s in rows.steps("r1", "b")] == ["scope", "write"]


def test_identical_row_steps_are_answered_from_history(hist: History) -> None:
    recorder = start(hist, ["a"])
    recorder(StepFinished(ok("scope", "a"), row="a"))
    recorder(StepFinished(ok("write", "a", model="mock"), row="a"))
    recorder.flush()
    cache = DatasetStepCache(hist)
    hit = cache.lookup("scope:a")
    assert hit is not None and hit.output == "scope of a" and cache.hits == 1
    assert cache.lookup("write:a") is None  # offline answers never reach real runs
    assert DatasetStepCache(hist, exclude_models=()).lookup("write:a") is not None
    assert cache.lookup("nothing") is None


def test_an_unknown_row_names_its_neighbours(hist: History) -> None:
    start(hist, ["acme", "globex"])
    with pytest.raises(NotFoundError, match=r"no row named 'acmee' — did you mean 'acme'\?"):
        DatasetHistory(hist).row("r1", "acmee")




# --- one step-result schema, and its upgrade ----------------------------------------------------


def columns(path: Path, table: str) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")]
    finally:
        conn.close()


def test_a_row_step_has_every_column_a_single_runs_step_result_has(hist: History) -> None:
    assert set(columns(hist.path, "steps")) == set(STEP_COLUMNS)
    assert set(columns(hist.path, "row_steps")) == set(ROW_STEP_COLUMNS)
    # Everything the engine reports about a step is kept, for both kinds of run alike.
    assert set(STEP_RESULT_COLUMNS) == set(StepResult.model_fields) - NOT_STEP_COLUMNS
    assert {"cost_known", "estimated", "truncated", "messages_digest"} <= set(
        columns(hist.path, "row_steps"))
    assert {"cost_known", "estimated", "truncated"} <= set(columns(hist.path, "rows"))


def at_version_3(path: Path) -> None:
    """A history as the previous dworkers left it: a dataset run and a single run."""
    conn = sqlite3.connect(path, isolation_level=None)
    for statements in schema.MIGRATIONS[:3]:
        for statement in statements:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 3")
    conn.execute("INSERT INTO runs (run_id, plan, tenant, status, started_at, finished_at, "
                 "cost_usd, options) VALUES ('old', ?, 'acme', 'failed', 1, 2, 1.5, ?)",
                 (PLAN.name, '{"data": {"file": "rows.csv", "rows": 2}}'))
    conn.executemany("INSERT INTO rows (run_id, key, number, status, inputs) "
                     "VALUES ('old', ?, ?, ?, '{}')", [("a", 1, "succeeded"), ("b", 2, "failed")])
    for row, status in (("a", "succeeded"), ("b", "failed")):
        for position, sid in enumerate(("scope", "write")):
            step = PLAN.get_step(sid)
            assert step is not None
            conn.execute(
                "INSERT INTO row_steps (run_id, row, step_id, position, status, model, output, "
                "cost_usd, cache_key, fingerprint, finished_at) "
                "VALUES ('old', ?, ?, ?, ?, 'openai/m', ?, 0.25, ?, ?, 1)",
                (row, sid, position, "succeeded" if sid == "scope" else status,
                 f"{sid} of {row}", f"{sid}:{row}", step.fingerprint()))
    conn.close()


def test_a_history_at_the_previous_schema_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    at_version_3(path)
    with History(path) as upgraded:
        upgraded.open()
        History(tmp_path / "new.db").open().close()
        for table in ("runs", "steps", "rows", "row_steps"):  # as a new history has them
            assert columns(path, table) == columns(tmp_path / "new.db", table)
        rows = DatasetHistory(upgraded)
        [(a, a_steps), (b, _)] = list(rows.rows("old"))
        assert (a.status, a.cost_known, a.truncated, b.status) == (
            "succeeded", True, False, "failed")
        assert [(s.step_id, s.cost_known, s.truncated, s.messages_digest) for s in a_steps] == [
            ("scope", True, False, None), ("write", True, False, None)]
        # Its rows resume as before (answers from before digests match on their cache key).
        reuse = {row.key: set(row.reuse) for row in rows.resume_rows("old", PLAN)}
        assert reuse == {"a": {"scope", "write"}, "b": {"scope"}}
        assert upgraded.spent("old").cost_usd == pytest.approx(1.0)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (len(schema.MIGRATIONS),)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


def test_resumed_row_steps_carry_what_they_were_asked(hist: History) -> None:
    recorder = start(hist, ["a"])
    finish(recorder, succeeded("a"))
    [row] = DatasetHistory(hist).resume_rows("r1", PLAN)
    assert row.reuse["scope"].messages_digest == "asked scope of a"  # matched, not the URL


# --- unknown costs and cut-off answers ------------------------------------------------------------


def test_an_unknown_cost_and_a_cut_off_answer_stay_marked(hist: History) -> None:
    recorder = start(hist, ["a", "b"])
    unpriced = succeeded("a", cost_usd=0.0, cost_known=False, truncated=True)
    finish(recorder, unpriced, succeeded("b"))
    assert recorder.error is None
    rows = DatasetHistory(hist)
    a = rows.row("r1", "a")
    assert (a.cost_known, a.truncated, rows.row("r1", "b").cost_known) == (False, True, True)
    assert a.to_dict()["cost_usd"] is None and a.to_dict()["cost_known"] is False
    assert all(s.truncated and not s.cost_known for s in rows.steps("r1", "a"))
    [run] = hist.list_runs()
    assert run.cost_known is False  # "cost unknown" in `runs`, never $0
    assert run.to_dict()["cost_usd"] is None and run.to_dict()["cost_known"] is False
    assert hist.get_run("r1").to_dict()["cost_usd"] is None  # and in `show --json`
    # An answer taken from this history is still marked as cut off.
    hit = DatasetStepCache(hist).lookup("write:a")
    assert hit is not None and hit.truncated


def test_a_priced_dataset_run_reports_its_cost(hist: History) -> None:
    finish(start(hist, ["a"]), succeeded("a"))
    [run] = hist.list_runs()
    assert run.cost_known and run.to_dict()["cost_usd"] == pytest.approx(1.0)


# --- no rows lost by a kill -----------------------------------------------------------------------


class Killed(BaseException):
    """Stands for the process dying while its rows are read (as SIGKILL would)."""


def cut_off(keys: list[str], after: int) -> Iterator[Row]:
    for n, row in enumerate(rows_of(keys)):
        if n == after:
            raise Killed
        yield row


def test_a_run_cut_off_while_its_rows_are_recorded_is_refused_on_resume(
    hist: History,
) -> None:
    keys = [f"k{n}" for n in range(1500)]
    recorder = DatasetRecorder(hist, inputs={}, resumed_from=None,
                               options={"data": {"file": "/data/rows.csv", "rows": 1500}})
    event = RunStarted("r1", PLAN.name, "acme", STEPS, 0.0, dataset=True)
    with pytest.raises(Killed):
        recorder.start(event, cut_off(keys, 1200))
    rows = DatasetHistory(hist)
    assert sum(rows.counts("r1").values()) == 1000  # two batches were in
    with pytest.raises(IncompleteRowsError, match=(
            r"run r1 was stopped while its rows were being recorded \(1,000 on record, none "
            r"of them run\) — .* start it again: dworkers run test-plan --data /data/rows\.csv")):
        list(rows.resume_rows("r1", PLAN))
    # A resume's own run cut off the same way points back at the run it resumed.
    resumed = DatasetRecorder(hist, inputs={}, resumed_from="r1", options={})
    with pytest.raises(Killed):
        resumed.start(RunStarted("r2", PLAN.name, "acme", STEPS, 0.0, dataset=True),
                      cut_off(keys, 700))
    with pytest.raises(IncompleteRowsError, match=r"dworkers run --resume r1"):
        rows.check_complete("r2")
    # Recorded to the end, a run resumes over every row.
    start(hist, keys, "r3")
    assert sum(1 for _ in rows.resume_rows("r3", PLAN)) == 1500


def test_a_repeated_key_is_refused_by_name_never_dropped(hist: History) -> None:
    recorder = DatasetRecorder(hist, inputs={}, resumed_from=None, options={})
    event = RunStarted("r1", PLAN.name, "acme", STEPS, 0.0, dataset=True)
    with pytest.raises(IncompleteRowsError, match=r"line 5 repeats the key 'b' of an earlier "
                                                  r"row \(line 3\)"):
        recorder.start(event, rows_of(["a", "b", "c", "b"]))
    assert hist.list_runs() == []  # refused before anything ran: not kept


def test_rows_that_differ_from_the_rows_checked_are_refused(hist: History) -> None:
    recorder = DatasetRecorder(hist, inputs={}, resumed_from=None,
                               options={"data": {"rows": 3}})
    event = RunStarted("r1", PLAN.name, "acme", STEPS, 0.0, dataset=True)
    with pytest.raises(IncompleteRowsError, match=r"3 rows were checked, 2 read afterwards"):
        recorder.start(event, rows_of(["a", "b"]))
    assert hist.list_runs() == []


# --- a locked history -----------------------------------------------------------------------------


def test_a_history_locked_for_a_while_loses_nothing(
    hist: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = start(History(hist.path, timeout=0.02), ["a", "b"])
    waits = []
    original = History._locked

    def counting(history: History, doing: str, waited: float) -> HistoryError:
        waits.append(waited)
        return original(history, doing, waited)

    monkeypatch.setattr(History, "_locked", counting)
    blocker = sqlite3.connect(hist.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    recorder(StepFinished(ok("scope", "a"), row="a"))
    recorder(RowFinished(succeeded("a")))  # the run goes on meanwhile
    for _ in range(10_000):  # until the writes have waited out ten busy timeouts
        if len(waits) >= 10:
            break
        time.sleep(0.01)
    blocker.execute("ROLLBACK")
    blocker.close()
    finish(recorder, succeeded("b"))
    assert len(waits) >= 10 and recorder.error is None and recorder.lost == 0
    assert DatasetHistory(hist).counts("r1")["succeeded"] == 2
    assert hist.get_run("r1").status == "succeeded"


def test_a_history_that_stays_locked_is_reported_not_the_run_stopped(hist: History) -> None:
    recorder = start(History(hist.path, timeout=0.02), ["a", "b"], patience=0.2)
    blocker = sqlite3.connect(hist.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        recorder(StepFinished(ok("scope", "a"), row="a"))
        finish(recorder, succeeded("a"), succeeded("b"))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert recorder.error is not None and "locked by another process" in str(recorder.error)
    assert recorder.lost == 4  # the step, two rows and the run's result: for the summary to say
    assert DatasetHistory(hist).counts("r1")["pending"] == 2


# --- what a run has spent -----------------------------------------------------------------------


def test_what_a_run_spent_counts_every_run_it_resumed(hist: History) -> None:
    first = start(hist, ["a", "b"])
    finish(first, succeeded("a"), RowResult(key="b", status=RowStatus.FAILED,
                                            outputs={"scope": ok("scope", "b"),
                                                     "write": failed("write")}))
    second = start(hist, ["a", "b"], "r2", resumed_from="r1")
    reused = {sid: r.model_copy(update={"cached": True, "cost_usd": 0.0, "prompt_tokens": 0,
                                        "completion_tokens": 0})
              for sid, r in succeeded("a").outputs.items()}
    finish(second, RowResult(key="a", status=RowStatus.SUCCEEDED, outputs=reused),
           succeeded("b"))
    spent = hist.spent("r2")
    assert spent.runs == ("r2", "r1")
    assert spent.cost_usd == pytest.approx(0.5 * 3 + 0.5 * 2)  # reused answers cost nothing
    assert spent.prompt_tokens == 3 * 5 and spent.cost_known and spent.complete
    # Resuming r1 again counts what its resume r2 spent too: the budget is the whole run's.
    assert hist.spent("r1").runs == ("r1", "r2")
    assert hist.spent("r1").cost_usd == pytest.approx(spent.cost_usd)


def test_what_a_killed_run_spent_is_what_its_steps_on_record_spent(hist: History) -> None:
    recorder = start(hist, ["a", "b"])
    recorder(StepFinished(ok("scope", "a"), row="a"))
    recorder(StepFinished(ok("scope", "b", cost_known=False, cost_usd=0.0), row="b"))
    recorder.flush()
    # The process dies here: the run never finished.
    spent = hist.spent("r1")
    assert spent.cost_usd == pytest.approx(0.5) and not spent.cost_known
    assert not spent.complete  # calls in flight at the kill are not on record
    [run] = hist.list_runs()
    assert run.cost_usd == pytest.approx(0.5) and not run.cost_known  # not $0 in `runs`


def test_a_resume_killed_before_its_rows_ran_keeps_what_the_run_before_it_answered(
    hist: History,
) -> None:
    first = start(hist, ["a", "b", "c"])
    finish(first, succeeded("a"), RowResult(key="b", status=RowStatus.FAILED,
                                            outputs={"scope": ok("scope", "b"),
                                                     "write": failed("write")}),
           interrupted=True)
    start(hist, ["a", "b", "c"], "r2", resumed_from="r1")  # then killed: nothing ran
    third = start(hist, ["a", "b", "c"], "r3", resumed_from="r2")
    # r3 ran a's write again and it failed: that, not r1's success, is the latest record.
    third(RowFinished(RowResult(key="a", status=RowStatus.FAILED,
                                outputs={"scope": ok("scope", "a"), "write": failed("write")})))
    third.flush()
    reuse = {row.key: set(row.reuse) for row in DatasetHistory(hist).resume_rows("r3", PLAN)}
    assert reuse == {"a": {"scope"}, "b": {"scope"}, "c": set()}
    assert {row.key: set(row.reuse) for row in DatasetHistory(hist).resume_rows("r2", PLAN)} == {
        "a": {"scope", "write"}, "b": {"scope"}, "c": set()}
