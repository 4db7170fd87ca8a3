"""Dataset runs in the history: rows recorded up front, paid steps kept at once, resume rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import make_plan

from dworkers.errors import NotFoundError
from dworkers.events import DatasetFinished, RowFinished, RunStarted, StepFinished, StepInfo
from dworkers.history import History
from dworkers.history.rows import DatasetRecorder, RowHistory, RowStepCache
from dworkers.results import DatasetResult, Row, RowResult, RowStatus, StepResult, StepStatus

PLAN = make_plan({"scope": [], "write": ["scope"]})
STEPS = tuple(StepInfo(s.step_id, s.name, "analyst", "openai/m", tuple(s.depends_on))
              for s in PLAN.steps)


def ok(sid: str, key: str, *, model: str = "openai/m") -> StepResult:
    step = PLAN.get_step(sid)
    assert step is not None
    return StepResult(step_id=sid, status=StepStatus.SUCCEEDED, output=f"{sid} of {key}",
                      attempts=1, model=model, cost_usd=0.5, prompt_tokens=3,
                      completion_tokens=4, cache_key=f"{sid}:{key}",
                      fingerprint=step.fingerprint(), finished_at=1.0)


def failed(sid: str) -> StepResult:
    return StepResult(step_id=sid, status=StepStatus.FAILED, error="HTTP 500", attempts=3)


@pytest.fixture
def hist(tmp_path: Path) -> History:
    return History(tmp_path / "history.db").open()


def start(hist: History, keys: list[str], run_id: str = "r1") -> DatasetRecorder:
    recorder = DatasetRecorder(hist, inputs={"tone": "dry"}, resumed_from=None,
                               options={"data": {"file": "rows.csv", "rows": len(keys)}})
    rows = (Row(key, {"brief": f"brief {key}"}, {"region": "EU"}, n + 2)
            for n, key in enumerate(keys))
    event = RunStarted(run_id, PLAN.name, "acme", STEPS, 0.0, dataset=True)
    assert recorder.start(event, rows) == len(keys)
    recorder(event)
    return recorder


def test_every_row_is_recorded_before_the_first_call(hist: History) -> None:
    start(hist, [f"k{n}" for n in range(1200)])  # more than one batch
    rows = RowHistory(hist)
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
    # The process dies here (kill -9): the row never finished, but its paid step is on record.
    resumed = list(RowHistory(hist).resume_rows("r1", PLAN))
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
    rows = RowHistory(hist)
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
    cache = RowStepCache(hist)
    hit = cache.lookup("scope:a")
    assert hit is not None and hit.output == "scope of a" and cache.hits == 1
    assert cache.lookup("write:a") is None  # offline answers never reach real runs
    assert RowStepCache(hist, exclude_models=()).lookup("write:a") is not None
    assert cache.lookup("nothing") is None


def test_an_unknown_row_names_its_neighbours(hist: History) -> None:
    start(hist, ["acme", "globex"])
    with pytest.raises(NotFoundError, match=r"no row named 'acmee' — did you mean 'acme'\?"):
        RowHistory(hist).row("r1", "acmee")


def test_a_history_that_fails_mid_run_stops_recording_not_the_run(
    hist: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dworkers.errors import HistoryError

    recorder = start(hist, ["a", "b"])

    def broken(*args: object) -> None:
        raise HistoryError("run history is locked")

    monkeypatch.setattr(RowHistory, "finish_step", broken)
    recorder(StepFinished(ok("scope", "a"), row="a"))
    recorder(RowFinished(RowResult(key="a", status=RowStatus.SUCCEEDED)))
    assert recorder.error is not None and "locked" in str(recorder.error)
    assert RowHistory(hist).counts("r1")["pending"] == 2  # nothing written after the failure
