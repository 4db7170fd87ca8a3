"""Run history: schema and migrations, recording, queries, concurrency, broken databases,
resume decisions and the cache — with call counts proven by a counting client and by the local
server's request log."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fake_llm_server import FakeLLMServer
from support import llm_server, make_plan, make_tenant, marker, request_for

from dworkers.engine import PlanBuilder, RunOptions, StepCache
from dworkers.errors import (
    DworkersError,
    HistoryError,
    NotFoundError,
    Problem,
    ProviderUnavailableError,
)
from dworkers.events import EventLog, RunStarted, StepFinished, StepInfo, StepProgress, StepStarted
from dworkers.history import (
    AmbiguousRunError,
    History,
    HistoryCache,
    HistoryRecorder,
    HistoryWriter,
    NoOutputError,
    ResumeInProgressError,
    history_path,
    schema as history_schema,
    schema_version,
)
from dworkers.history.writer import Statement
from dworkers.llm import Completion, DeltaCallback, LLMClient, LLMRequest, MockClient
from dworkers.plans.base import BasePlan, PlanStep
from dworkers.results import RunResult, StepResult, StepStatus

__all__ = ["llm_server"]

# a → b → c, a → d, and e on its own
GRAPH = {"a": [], "b": ["a"], "c": ["b"], "d": ["a"], "e": []}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DWORKERS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def hist(home: Path) -> Iterator[History]:
    with History() as h:
        yield h


class CountingClient:
    """A real (not offline) client that answers at once, counting calls per step, so these
    tests take the path a real model's answers take (the engine treats offline clients apart).
    ``fail`` steps fail for good (a 5xx and no retries left); ``hang`` steps never answer. The
    answer is derived from what the step was asked, as a model's would be."""

    offline = False
    model_name = "counting-model"

    def __init__(self, fail: Sequence[str] = (), hang: Sequence[str] = ()) -> None:
        self.fail, self.hang = set(fail), set(hang)
        self.calls: list[str] = []

    def preflight(self, models: Mapping[str, Sequence[str]], keyed: set[str]) -> list[Problem]:
        return []

    async def complete(self, request: LLMRequest, on_delta: DeltaCallback) -> Completion:
        self.calls.append(request.step_id)
        if request.step_id in self.hang:
            await asyncio.sleep(3600)
        if request.step_id in self.fail:
            raise ProviderUnavailableError("provider error (500): injected")
        asked = "".join(m["content"] for m in request.messages)
        digest = hashlib.sha256(asked.encode()).hexdigest()[:12]
        text = f"the answer of step {request.step_id} to what it was asked ({digest})"
        for word in text.split(" "):  # streamed word by word, as a model does
            on_delta(word + " ")
        return Completion(text, self.model_name, len(asked.split()), len(text.split()))


def run(
    hist: History,
    plan: BasePlan,
    client: LLMClient | None = None,
    *,
    inputs: Mapping[str, str] | None = None,
    reuse: Mapping[str, StepResult] | None = None,
    cache: StepCache | None = None,
    resumed_from: str | None = None,
    run_id: str | None = None,
    log: EventLog | None = None,
    options: Mapping[str, Any] | None = None,
) -> RunResult:
    recorder = HistoryRecorder(hist, inputs=inputs, resumed_from=resumed_from, options=options)

    def on_event(event: Any) -> None:
        recorder(event)
        if log is not None:
            log(event)

    engine = PlanBuilder(
        plan, make_tenant(), client=client or CountingClient(),
        options=RunOptions(retry_base_delay=0, run_id=run_id), on_event=on_event,
        reuse=reuse, cache=cache,
    ).build()
    result = asyncio.run(engine.run(inputs or {}))
    assert recorder.error is None
    return result


def db_rows(path: Path, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute(sql, tuple(params)))
    finally:
        conn.close()


# --- where the history lives ----------------------------------------------------------------------


def test_history_path_follows_dworkers_home_then_the_user_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("DWORKERS_HOME", str(tmp_path / "dw"))
    assert history_path() == tmp_path / "dw" / "history.db"
    monkeypatch.delenv("DWORKERS_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert history_path() == tmp_path / "xdg" / "dworkers" / "history.db"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    assert history_path() == tmp_path / ".local" / "share" / "dworkers" / "history.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert history_path() == tmp_path / ".local" / "share" / "dworkers" / "history.db"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert history_path() == (tmp_path / "Library" / "Application Support" / "dworkers"
                              / "history.db")


def test_opening_is_lazy_and_creates_the_directory(home: Path) -> None:
    h = History()
    assert h.path == home / "history.db"
    assert not home.exists()
    assert h.list_runs() == []
    assert (home / "history.db").is_file()
    h.close()


# --- schema and migrations ----------------------------------------------------------------------


def test_a_new_database_gets_the_current_schema_in_wal_mode(hist: History) -> None:
    hist.open()
    assert db_rows(hist.path, "PRAGMA user_version") == [(schema_version(),)]
    assert db_rows(hist.path, "PRAGMA journal_mode") == [("wal",)]
    tables = {r[0] for r in db_rows(hist.path, "SELECT name FROM sqlite_master")}
    assert {"runs", "steps", "steps_cache"} <= tables


def test_migrations_run_in_order_once_and_keep_existing_runs(
    hist: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(hist, make_plan({"a": []}), run_id="r1")
    hist.close()
    applied: list[str] = []
    migrations = [*history_schema.MIGRATIONS,
                  ("ALTER TABLE runs ADD COLUMN note TEXT",),
                  ("UPDATE runs SET note = 'v3'", "CREATE INDEX runs_note ON runs (note)")]
    monkeypatch.setattr(history_schema, "MIGRATIONS", migrations)
    original_migrate = History._migrate

    def spy(self: History, conn: sqlite3.Connection) -> None:
        applied.append(str(conn.execute("PRAGMA user_version").fetchone()[0]))
        original_migrate(self, conn)

    monkeypatch.setattr(History, "_migrate", spy)
    with History(hist.path) as again:
        assert again.get_run("r1").status == "succeeded"
    assert db_rows(hist.path, "PRAGMA user_version") == [(len(migrations),)]
    assert db_rows(hist.path, "SELECT note FROM runs") == [("v3",)]
    with History(hist.path) as third:  # already current: nothing to do
        third.open()
    before = len(migrations) - 2
    assert applied == [str(before), str(len(migrations))]


def test_a_failing_migration_is_rolled_back_entirely(
    hist: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(hist, make_plan({"a": []}), run_id="r1")
    hist.close()
    monkeypatch.setattr(history_schema, "MIGRATIONS", [
        *history_schema.MIGRATIONS, ("CREATE TABLE half (x)", "THIS IS NOT SQL")])
    with pytest.raises(HistoryError, match=r"history\.db"):
        History(hist.path).open()
    assert db_rows(hist.path, "PRAGMA user_version") == [(len(history_schema.MIGRATIONS) - 1,)]
    assert not db_rows(hist.path, "SELECT name FROM sqlite_master WHERE name = 'half'")
    assert db_rows(hist.path, "SELECT run_id FROM runs") == [("r1",)]


def test_a_database_from_a_newer_dworkers_is_refused(hist: History) -> None:
    hist.open()
    hist.close()
    conn = sqlite3.connect(hist.path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(HistoryError, match=r"schema version 99.*upgrade dworkers"):
        History(hist.path).open()


def test_an_unrelated_sqlite_database_is_left_alone(home: Path) -> None:
    home.mkdir()
    path = home / "history.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE photos (id)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(HistoryError, match=r"not a dworkers run history.*photos"):
        History().open()
    assert path.read_bytes() == before


# --- recording a run ----------------------------------------------------------------------------


def test_recorder_persists_a_whole_run(hist: History) -> None:
    plan = make_plan(GRAPH)
    plan.get_step("a").prompt_template = "Study {topic}"  # type: ignore[union-attr]
    log = EventLog()
    result = run(hist, plan, inputs={"topic": "widgets"}, log=log,
                 options={"model": None, "mock": True})
    assert result.success

    record = hist.get_run(result.run_id)
    assert record.status == "succeeded"
    assert (record.plan, record.tenant, record.inputs) == ("test-plan", "test-tenant",
                                                           {"topic": "widgets"})
    assert record.counts == {"total": 5, "succeeded": 5, "cached": 0}
    assert record.tokens == result.total_tokens > 0
    assert record.cost_usd == result.cost_usd
    assert record.duration_ms == pytest.approx(result.total_duration_ms)
    assert record.finished_at is not None and record.finished_at >= record.started_at
    assert record.resumed_from is None
    assert record.options == {"model": None, "mock": True}

    sent = {e.step_id: list(e.messages) for e in log.events
            if isinstance(e, StepStarted) and e.attempt == 1}
    steps = hist.steps(result.run_id)
    assert [s.step_id for s in steps] == list(GRAPH)
    for step in steps:
        engine_result = result.outputs[step.step_id]
        assert step.status == "succeeded"
        assert step.output == engine_result.output != ""
        assert step.messages == sent[step.step_id]
        assert step.model == "counting-model"
        assert step.attempts == 1
        assert step.fingerprint == plan.get_step(step.step_id).fingerprint()  # type: ignore[union-attr]
        assert step.cache_key == engine_result.cache_key is not None
        assert step.depends_on == GRAPH[step.step_id]
        assert step.name == step.step_id.upper() and step.role == "analyst"
        assert step.started_at is not None and step.finished_at is not None
    assert "Study widgets" in steps[0].messages[-1]["content"]  # type: ignore[index]

    assert hist.step_output(result.run_id, "c") == result.outputs["c"].output
    again = hist.to_run_result(result.run_id)
    assert again.success and list(again.outputs) == list(GRAPH)
    assert {k: v.output for k, v in again.outputs.items()} == {
        k: v.output for k, v in result.outputs.items()}
    json.dumps(record.to_dict())
    assert "messages" not in steps[0].to_dict()
    assert json.loads(json.dumps(steps[0].to_dict(messages=True)))["messages"] == sent["a"]


def test_a_failed_run_records_the_error_and_what_was_skipped(hist: History) -> None:
    result = run(hist, make_plan(GRAPH), CountingClient(fail=["b"]))
    record = hist.get_run(result.run_id)
    assert record.status == "failed"
    assert record.counts == {"total": 5, "succeeded": 3, "failed": 1, "skipped": 1, "cached": 0}
    b, c = hist.step(result.run_id, "b"), hist.step(result.run_id, "c")
    assert b.status == "failed" and "injected" in (b.error or "") and b.messages
    assert c.status == "skipped" and c.messages is None
    with pytest.raises(NoOutputError, match=r"step 'b' .* no output: it failed .*injected"):
        hist.step_output(result.run_id, "b")
    with pytest.raises(NotFoundError, match=r"no step named 'bb' — did you mean 'b'"):
        hist.step_output(result.run_id, "bb")


def test_recorder_writes_a_few_times_per_step_never_per_token_and_off_the_event_loop(
    hist: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    threads: set[str] = set()
    original = History.write_patiently

    def counting(self: History, doing: str, jobs: Sequence[Any], **kwargs: Any) -> None:
        writes.append(len(jobs))
        threads.add(threading.current_thread().name)
        original(self, doing, jobs, **kwargs)

    monkeypatch.setattr(History, "write_patiently", counting)
    log = EventLog()
    run(hist, make_plan(GRAPH), log=log)
    assert sum(isinstance(e, StepProgress) for e in log.events) > 20
    assert sum(writes) == 2 + 2 * len(GRAPH)  # run start/end, each step's start/end
    assert len(writes) <= sum(writes)  # what queued up together went in one transaction
    assert threading.current_thread().name not in threads  # never on the event loop's thread
    assert hist.get_run("last").counts["succeeded"] == len(GRAPH)


# --- queries --------------------------------------------------------------------------------------


def test_list_runs_filters_and_orders_most_recent_first(hist: History) -> None:
    ok, other = make_plan({"a": []}), make_plan({"x": []}, name="other-plan")
    run(hist, ok, run_id="20250101-000000-aaa111")
    run(hist, ok, CountingClient(fail=["a"]), run_id="20250101-000001-aab222")
    run(hist, other, run_id="20250101-000002-bbb333")

    assert [r.run_id for r in hist.list_runs()] == [
        "20250101-000002-bbb333", "20250101-000001-aab222", "20250101-000000-aaa111"]
    assert [r.run_id for r in hist.list_runs(limit=1)] == ["20250101-000002-bbb333"]
    assert [r.run_id for r in hist.list_runs(plan="test-plan")] == [
        "20250101-000001-aab222", "20250101-000000-aaa111"]
    assert [r.run_id for r in hist.list_runs(status="failed")] == ["20250101-000001-aab222"]
    assert [r.run_id for r in hist.list_runs(plan="other-plan", status="succeeded")] == [
        "20250101-000002-bbb333"]
    assert hist.list_runs(status="interrupted") == []
    with pytest.raises(DworkersError, match="unknown run status 'done'"):
        hist.list_runs(status="done")


def test_a_run_is_found_by_a_unique_prefix_or_last(hist: History) -> None:
    plan = make_plan({"a": []})
    for run_id in ("20250101-000000-aaa111", "20250101-000001-aab222", "20250102-000000-ccc333"):
        run(hist, plan, run_id=run_id)
    assert hist.get_run("20250101-000000-aaa111").run_id == "20250101-000000-aaa111"
    assert hist.get_run("20250102").run_id == "20250102-000000-ccc333"
    assert hist.get_run("20250101-000001").run_id == "20250101-000001-aab222"
    assert hist.get_run("last").run_id == "20250102-000000-ccc333"
    assert hist.steps("20250102")[0].run_id == "20250102-000000-ccc333"

    with pytest.raises(AmbiguousRunError) as ambiguous:
        hist.get_run("20250101")
    message = str(ambiguous.value)
    assert "ambiguous" in message
    assert "20250101-000000-aaa111" in message and "20250101-000001-aab222" in message
    assert isinstance(ambiguous.value, NotFoundError)

    with pytest.raises(NotFoundError, match=r"no run named '1999'.*dworkers runs.*latest: "
                                            r"20250102-000000-ccc333"):
        hist.get_run("1999")
    with pytest.raises(NotFoundError, match=r"did you mean '20250101-000000-aaa111'"):
        hist.get_run("20250101-000000-aaa11x")


def test_last_on_an_empty_history_says_none_are_recorded(hist: History) -> None:
    with pytest.raises(NotFoundError, match="none recorded yet"):
        hist.get_run("last")


# --- concurrency --------------------------------------------------------------------------------


def test_concurrent_runs_in_threads_all_land_intact(home: Path) -> None:
    plan = make_plan(GRAPH)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with History() as mine:  # one connection per writer, as separate processes have
                for i in range(8):
                    run(mine, plan, run_id=f"t{n}-{i:02d}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with History() as h:
        runs = h.list_runs(limit=None)
        assert len(runs) == 32
        assert all(r.status == "succeeded" and r.counts["succeeded"] == 5 for r in runs)
    assert db_rows(home / "history.db", "SELECT count(*) FROM steps") == [(32 * 5,)]
    assert db_rows(home / "history.db", "PRAGMA integrity_check") == [("ok",)]


def test_one_history_shared_between_threads(hist: History) -> None:
    plan = make_plan({"a": [], "b": ["a"]})
    threads = [threading.Thread(target=run, args=(hist, plan), kwargs={"run_id": f"s{n}"})
               for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.run_id for r in hist.list_runs()) == ["s0", "s1", "s2", "s3"]


WRITER_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, sys.argv[1])
    from support import make_plan, make_tenant
    from dworkers.engine import RunOptions
    from dworkers.history import History, HistoryRecorder
    from dworkers.llm import MockClient
    from dworkers.engine import PlanBuilder
    graph = {"a": [], "b": ["a"], "c": ["b"], "d": ["a"], "e": []}
    history = History()
    for i in range(int(sys.argv[3])):
        engine = PlanBuilder(make_plan(graph), make_tenant(), client=MockClient(latency=0),
                             options=RunOptions(run_id=f"{sys.argv[2]}-{i:02d}"),
                             on_event=HistoryRecorder(history)).build()
        assert asyncio.run(engine.run()).success
""")


@pytest.mark.slow
def test_concurrent_runs_in_processes_all_land_intact(home: Path) -> None:
    tests = str(Path(__file__).parent)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, tests, f"p{n}", "15"],
                              stderr=subprocess.PIPE, text=True) for n in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    with History() as h:
        runs = h.list_runs(limit=None)
    assert len(runs) == 45 and all(r.status == "succeeded" for r in runs)
    assert db_rows(home / "history.db", "SELECT count(*) FROM steps "
                                        "WHERE status = 'succeeded'") == [(45 * 5,)]
    assert db_rows(home / "history.db", "PRAGMA integrity_check") == [("ok",)]


# --- broken databases ---------------------------------------------------------------------------


def test_a_corrupt_file_is_a_clear_error_and_is_left_untouched(home: Path) -> None:
    home.mkdir()
    path = home / "history.db"
    garbage = b"this is not a database at all\x00\xff" * 200
    path.write_bytes(garbage)
    with pytest.raises(HistoryError) as caught:
        History().list_runs()
    message = str(caught.value)
    assert str(path) in message
    assert "corrupt or not a database" in message
    assert "move it aside" in message and "DWORKERS_HOME" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert path.read_bytes() == garbage


def test_damaged_pages_are_a_clear_error(hist: History) -> None:
    for n in range(5):
        run(hist, make_plan(GRAPH), run_id=f"r{n}")
    hist.close()
    conn = sqlite3.connect(hist.path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(hist.path.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    data[page:len(data)] = b"\xa5" * (len(data) - page)  # keep the header, wreck every page
    hist.path.write_bytes(bytes(data))
    with pytest.raises(HistoryError, match=r"corrupt or not a database.*move it aside"):
        History(hist.path).list_runs()


def test_a_locked_database_is_a_clear_error_after_the_busy_timeout(hist: History) -> None:
    run(hist, make_plan({"a": []}), run_id="r1")
    blocker = sqlite3.connect(hist.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        waiting = History(hist.path, timeout=0.2)
        t0 = time.monotonic()
        with pytest.raises(HistoryError) as caught:
            waiting.start_run("r2", "p", "t", inputs={}, steps=())
        assert time.monotonic() - t0 >= 0.15  # it waited for the lock first
        message = str(caught.value)
        assert str(hist.path) in message and "locked by another process" in message
        assert "waited 0.2s" in message and "DWORKERS_HOME" in message
        assert waiting.get_run("r1").status == "succeeded"  # WAL: reading still works
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    waiting.start_run("r2", "p", "t", inputs={}, steps=())  # and works once released
    assert {r.run_id for r in waiting.list_runs()} == {"r1", "r2"}
    waiting.close()


def test_creating_a_history_while_locked_is_a_clear_error(home: Path) -> None:
    home.mkdir()
    blocker = sqlite3.connect(home / "history.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(HistoryError, match=r"locked by another process .* opening it"):
            History(timeout=0.1).open()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    History().open().close()


def test_an_unusable_location_is_a_clear_error(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("DWORKERS_HOME", str(tmp_path / "file"))
    with pytest.raises(HistoryError, match=r"cannot create the run history directory.*"
                                           "DWORKERS_HOME"):
        History().open()
    monkeypatch.setenv("DWORKERS_HOME", str(tmp_path))
    (tmp_path / "history.db").mkdir()
    with pytest.raises(HistoryError, match="is a directory"):
        History().open()


class LockedAttempts:
    """Counts the writes that found the history locked (each waited one busy timeout)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = History._locked

        def counting(history: History, doing: str, waited: float) -> Any:
            self.count += 1
            return original(history, doing, waited)

        monkeypatch.setattr(History, "_locked", counting)


def test_a_history_locked_longer_than_the_busy_timeout_keeps_recording(
    hist: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds the lock through many busy timeouts while the run goes: the
    writes wait on (off the event loop) and every one lands once the lock is gone."""
    hist.open()
    hist.close()
    blocker = sqlite3.connect(hist.path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    locked = LockedAttempts(monkeypatch)

    class Releasing(CountingClient):
        async def complete(self, request: LLMRequest, on_delta: DeltaCallback) -> Completion:
            if request.step_id == "c":  # after five busy timeouts, the lock goes away
                for _ in range(10_000):
                    if locked.count >= 5:
                        break
                    await asyncio.sleep(0.01)
                blocker.execute("ROLLBACK")
            return await super().complete(request, on_delta)

    plan = make_plan({"a": [], "b": ["a"], "c": ["b"]})
    recorder = HistoryRecorder(History(hist.path, timeout=0.05), inputs={"k": "v"})
    engine = PlanBuilder(plan, make_tenant(), client=Releasing(), on_event=recorder,
                         options=RunOptions(run_id="locked-run")).build()
    result = asyncio.run(engine.run())
    blocker.close()
    assert result.success
    assert locked.count >= 5  # the lock outlasted the busy timeout several times over
    assert recorder.error is None
    with History(hist.path) as h:
        record = h.get_run("locked-run")
        assert record.status == "succeeded" and record.inputs == {"k": "v"}
        steps = h.steps("locked-run")
        assert [(s.step_id, s.status) for s in steps] == [
            ("a", "succeeded"), ("b", "succeeded"), ("c", "succeeded")]
        assert all(s.messages for s in steps) and steps[2].depends_on == ["b"]


def test_writes_given_up_are_saved_whole_when_the_run_ends(
    hist: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Locked beyond the recorder's patience, the first writes are given up; the run ends
    after the lock is gone, and the whole run is saved in one transaction."""
    hist.open()
    hist.close()
    blocker = sqlite3.connect(hist.path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    errors: list[HistoryError | None] = []

    class Releasing(CountingClient):
        async def complete(self, request: LLMRequest, on_delta: DeltaCallback) -> Completion:
            if request.step_id == "b":  # the first writes have been given up by now
                for _ in range(10_000):
                    if recorder.error is not None:
                        break
                    await asyncio.sleep(0.01)
                errors.append(recorder.error)
                blocker.execute("ROLLBACK")
            return await super().complete(request, on_delta)

    plan = make_plan({"a": [], "b": ["a"]})
    recorder = HistoryRecorder(History(hist.path, timeout=0.02), patience=0.1)
    engine = PlanBuilder(plan, make_tenant(), client=Releasing(), on_event=recorder,
                         options=RunOptions(run_id="saved-whole")).build()
    assert asyncio.run(engine.run()).success
    blocker.close()
    assert errors[0] is not None and "locked by another process" in str(errors[0])
    assert recorder.error is None  # saved in one transaction at the end
    with History(hist.path) as h:
        assert h.get_run("saved-whole").status == "succeeded"
        assert [s.status for s in h.steps("saved-whole")] == ["succeeded", "succeeded"]


def test_a_writer_drops_queued_writes_a_later_one_rewrites_and_bounds_its_queue(
    hist: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dworkers.history import writer as writer_module

    hist.open()
    locked = LockedAttempts(monkeypatch)
    monkeypatch.setattr(writer_module, "MOST_QUEUED", 3)
    written: list[str] = []

    def job(name: str) -> Any:
        return lambda conn: written.append(name)

    blocker = sqlite3.connect(hist.path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    writer = HistoryWriter(History(hist.path, timeout=0.02))
    writer.submit("first", job("first"))
    for _ in range(10_000):  # until "first" is being written (and waits for the lock)
        if locked.count >= 1:
            break
        time.sleep(0.01)
    submitted: list[str] = []

    def submit_the_rest() -> None:
        for name, about, whole in (("a:step", "a", False), ("b:step", "b", False),
                                   ("a:row", "a", True), ("last", None, False)):
            writer.submit(name, job(name), about=about, whole=whole)
            submitted.append(name)

    producer = threading.Thread(target=submit_the_rest)
    producer.start()
    for _ in range(10_000):  # three queued: the fourth waits, while the lock is waited for
        if len(submitted) == 3 and locked.count >= 4:
            break
        time.sleep(0.01)
    assert submitted == ["a:step", "b:step", "a:row"]
    blocker.execute("ROLLBACK")
    blocker.close()
    producer.join()
    assert writer.close() is None and writer.lost == 0
    # The row's step went in with the row that rewrote it: written once, not twice.
    assert written == ["first", "b:step", "a:row", "last"]


def test_a_writer_gathers_the_writes_that_come_while_it_waits_and_flush_cuts_it_short(
    hist: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Woken by the first write, the thread lets the next ones join its transaction rather
    than writing each on its own; someone waiting in ``flush`` does not wait out the gathering
    (a gathering longer than any test here shows that)."""
    from dworkers.history import writer as writer_module

    hist.open()
    monkeypatch.setattr(writer_module, "GATHER_SECONDS", 3600.0)
    transactions: list[int] = []
    written: list[int] = []
    writer = HistoryWriter(History(hist.path))
    patiently = writer.history.write_patiently

    def counting(doing: str, jobs: Sequence[Any], **kwargs: Any) -> None:
        transactions.append(len(jobs))
        patiently(doing, jobs, **kwargs)

    monkeypatch.setattr(writer.history, "write_patiently", counting)
    for n in range(100):
        writer.submit("a write", lambda conn, n=n: written.append(n))
    assert writer.flush() is None
    assert written == list(range(100)) and transactions == [100]
    writer.submit("one more", lambda conn: written.append(100))
    assert writer.close() is None
    assert written[-1] == 100 and transactions == [100, 1]


def test_a_write_a_later_one_covers_is_never_even_made(
    hist: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row's step is recorded lazily: when the row (with all its steps) is written in the
    same transaction, the step's own parameters are never made; a step alone is written."""
    from dworkers.history import writer as writer_module

    hist.open()
    monkeypatch.setattr(writer_module, "GATHER_SECONDS", 3600.0)
    made: list[str] = []
    sql = "INSERT INTO runs (run_id, plan, tenant, status, started_at) VALUES (?, 'p', 't', ?, 0)"

    def params(run_id: str, status: str) -> tuple[str, str]:
        made.append(run_id)
        return run_id, status

    writer = HistoryWriter(History(hist.path))
    writer.submit("a row's step", [Statement(sql, partial(params, "covered", "running"))],
                  about="a")
    writer.submit("a step of another row", [Statement(sql, partial(params, "alone", "running"))],
                  about="b")
    writer.submit("the row", [Statement(sql, ("row-a", "succeeded"))], about="a", whole=True)
    assert writer.close() is None
    assert made == ["alone"]
    assert hist.get_run("alone").status == "running"
    assert hist.get_run("row-a").status == "succeeded"


def test_a_recorder_whose_history_stays_locked_keeps_the_error(hist: History) -> None:
    hist.open()
    blocker = sqlite3.connect(hist.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        recorder = HistoryRecorder(History(hist.path, timeout=0.02), patience=0.2)
        engine = PlanBuilder(make_plan({"a": []}), make_tenant(), client=CountingClient(),
                             on_event=recorder).build()
        assert asyncio.run(engine.run()).success  # the run itself is not harmed
        assert recorder.error is not None and "locked" in str(recorder.error)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_patient_writes_back_off_and_say_how_long_they_waited(
    hist: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    hist.open()
    pauses: list[float] = []
    blocker = sqlite3.connect(hist.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    clock = [0.0]
    fake_time = SimpleNamespace(monotonic=lambda: clock[0], time=time.time)
    monkeypatch.setattr("dworkers.history.storage.time", fake_time)

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        clock[0] += seconds

    waiting = History(hist.path, timeout=0.01)
    try:
        with pytest.raises(HistoryError, match=r"locked by another process \(waited 29\.6s"):
            waiting.write_patiently("recording a row", [lambda conn: None], patience=30,
                                    sleep=sleep)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # Doubling from 50 ms to a second, and never past the patience.
    assert pauses[:5] == [0.05, 0.1, 0.2, 0.4, 0.8] and max(pauses) == 1.0
    assert sum(pauses) <= 30
    waiting.write_patiently("recording a row", [lambda conn: conn.execute(
        "INSERT INTO runs (run_id, plan, tenant, status, started_at) "
        "VALUES ('w', 'p', 't', 'succeeded', 0)")], patience=30, sleep=sleep)
    assert hist.get_run("w").status == "succeeded"
    waiting.close()


# --- resume ---------------------------------------------------------------------------------------


def test_resume_after_a_failure_runs_only_the_failed_step_and_its_descendants(
    hist: History,
) -> None:
    plan = make_plan(GRAPH)
    first_client = CountingClient(fail=["b"])
    first = run(hist, plan, first_client)
    assert sorted(first_client.calls) == ["a", "b", "d", "e"]

    decisions = {d.step_id: (d.reuse, d.reason) for d in hist.resume_decisions(first.run_id,
                                                                                plan)}
    assert decisions == {"a": (True, "succeeded"), "b": (False, "failed"),
                         "c": (False, "skipped"), "d": (True, "succeeded"),
                         "e": (True, "succeeded")}
    reuse = hist.reuse_for(first.run_id[:12], plan)  # a prefix is enough
    assert set(reuse) == {"a", "d", "e"}
    assert reuse["a"].output == first.outputs["a"].output

    client = CountingClient()
    second = run(hist, plan, client, reuse=reuse, resumed_from=first.run_id)
    assert second.success
    assert sorted(client.calls) == ["b", "c"]
    assert second.outputs["a"].cached and not second.outputs["b"].cached
    record = hist.get_run(second.run_id)
    assert record.resumed_from == first.run_id
    assert record.counts == {"total": 5, "succeeded": 5, "cached": 3}
    reused_a = hist.step(second.run_id, "a")
    assert reused_a.cached and reused_a.output == first.outputs["a"].output
    assert reused_a.messages == hist.step(first.run_id, "a").messages  # the original prompt

    # A resume of the resumed run has nothing left to do.
    assert set(hist.reuse_for(second.run_id, plan)) == set(GRAPH)


def test_resume_reruns_a_changed_step_and_everything_downstream(hist: History) -> None:
    first = run(hist, make_plan(GRAPH))
    changed = make_plan(GRAPH)
    changed.get_step("b").prompt_template = "Do b, but differently"  # type: ignore[union-attr]
    changed.add_step(PlanStep(step_id="f", name="F", depends_on=["e"]))

    decisions = {d.step_id: (d.reuse, d.reason) for d in hist.resume_decisions(first.run_id,
                                                                                changed)}
    assert decisions == {"a": (True, "succeeded"), "b": (False, "definition changed"),
                         "c": (False, "depends on changed b"), "d": (True, "succeeded"),
                         "e": (True, "succeeded"), "f": (False, "new step")}
    client = CountingClient()
    result = run(hist, changed, client, reuse=hist.reuse_for(first.run_id, changed))
    assert result.success
    assert sorted(client.calls) == ["b", "c", "f"]


def test_a_changed_root_reruns_the_whole_branch(hist: History) -> None:
    first = run(hist, make_plan(GRAPH))
    changed = make_plan(GRAPH)
    changed.get_step("a").retry_max = 3  # type: ignore[union-attr]
    assert set(hist.reuse_for(first.run_id, changed)) == {"e"}


def test_killed_mid_run_running_and_pending_steps_count_as_never_started(hist: History) -> None:
    """Replay what a kill -9 leaves behind: the recorder got some events, then nothing."""
    plan = make_plan(GRAPH)
    infos = tuple(StepInfo(s.step_id, s.name, "analyst", "mock", tuple(s.depends_on))
                  for s in plan.steps)
    recorder = HistoryRecorder(hist)
    recorder(RunStarted("killed", plan.name, "test-tenant", infos, 0.0))
    for sid in ("a", "b", "e"):
        recorder(StepStarted(sid, 1, "mock", 0.0, ({"role": "user", "content": sid},)))
    for sid in ("a", "e"):
        recorder(StepFinished(StepResult(
            step_id=sid, status=StepStatus.SUCCEEDED, output=f"out {sid}",
            fingerprint=plan.get_step(sid).fingerprint(), attempts=1,  # type: ignore[union-attr]
            cost_usd=0.25, prompt_tokens=10)))
    assert recorder.flush() is None  # what the writer's thread had written when it died
    # The process is gone: pretend the run was written by a pid that no longer exists.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    conn = sqlite3.connect(hist.path)
    with conn:
        conn.execute("UPDATE runs SET pid = ? WHERE run_id = 'killed'", (dead.pid,))
    conn.close()

    record = hist.get_run("killed")
    assert record.status == "interrupted" and record.finished_at is None
    assert [r.run_id for r in hist.list_runs(status="interrupted")] == ["killed"]
    assert hist.list_runs(status="running") == []
    assert [(s.step_id, s.status) for s in hist.steps("killed")] == [
        ("a", "succeeded"), ("b", "running"), ("c", "pending"), ("d", "pending"),
        ("e", "succeeded")]
    decisions = {d.step_id: d.reason for d in hist.resume_decisions("killed", plan)}
    assert decisions["b"] == "did not finish" and decisions["c"] == "never started"
    assert set(hist.reuse_for("killed", plan)) == {"a", "e"}
    shown = hist.to_run_result("killed")
    assert shown.interrupted and not shown.success
    assert shown.outputs["b"].status is StepStatus.CANCELLED
    assert "did not finish" in (shown.outputs["b"].error or "")
    # What it spent before it died is what `runs` shows, and what a resume's budget counts.
    assert (record.cost_usd, record.prompt_tokens) == (0.5, 20)
    spent = hist.spent("killed")
    assert (spent.cost_usd, spent.cost_known, spent.complete) == (0.5, True, False)


def test_what_a_run_spent_counts_the_runs_it_resumed_once_each(hist: History) -> None:
    plan = make_plan({"a": [], "b": ["a"]})

    class Priced(CountingClient):
        price: float | None = 0.125

        async def complete(self, request: LLMRequest, on_delta: DeltaCallback) -> Completion:
            done = await super().complete(request, on_delta)
            return dataclasses.replace(done, cost_usd=self.price)

    class Unpriced(Priced):
        price = None

    first = run(hist, plan, Priced(fail=["b"]), run_id="first")
    second = run(hist, plan, Priced(), run_id="second", resumed_from="first",
                 reuse=hist.reuse_for("first", plan))
    assert second.success and second.outputs["a"].cached
    spent = hist.spent("second")
    assert spent.runs == ("second", "first")
    # a in the first run, b in the second: the reused a costs nothing the second time.
    assert spent.cost_usd == pytest.approx(first.cost_usd + second.cost_usd)
    assert spent.cost_usd == pytest.approx(0.125 * 2)
    assert spent.cost_known and spent.complete
    third = run(hist, plan, Unpriced(), run_id="third", resumed_from="second")
    assert not third.cost_known and not hist.spent("third").cost_known
    assert hist.spent("third").runs == ("third", "second", "first")


def test_what_a_run_spent_stops_at_runs_no_longer_on_record_or_in_a_loop(
    hist: History,
) -> None:
    hist.start_run("x", "p", "t", inputs={}, steps=(), resumed_from="y")
    hist.start_run("y", "p", "t", inputs={}, steps=(), resumed_from="x")  # a damaged file
    hist.start_run("z", "p", "t", inputs={}, steps=(), resumed_from="gone")
    assert hist.spent("x").runs == ("x", "y") and hist.spent("z").runs == ("z",)


def test_a_run_started_by_a_live_process_reads_as_running(hist: History) -> None:
    hist.start_run("live", "p", "t", inputs={}, steps=())
    assert hist.get_run("live").status == "running"
    assert [r.run_id for r in hist.list_runs(status="running")] == ["live"]


KILLED_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, sys.argv[1])
    from support import make_plan, make_tenant
    from dworkers.engine import RunOptions
    from dworkers.history import History, HistoryRecorder
    from test_history import CountingClient

    from dworkers.engine import PlanBuilder
    graph = {"a": [], "b": ["a"], "c": ["b"], "d": ["a"], "e": []}
    engine = PlanBuilder(make_plan(graph), make_tenant(), client=CountingClient(hang=["b"]),
                         options=RunOptions(run_id="doomed"),
                         on_event=HistoryRecorder(History(), inputs={"k": "v"})).build()
    asyncio.run(engine.run())
""")


@pytest.mark.slow
def test_resume_after_kill_9_mid_run(hist: History) -> None:
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SCRIPT, str(Path(__file__).parent)],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                states = {s.step_id: s.status for s in hist.steps("doomed")}
            except NotFoundError:
                states = {}
            if states.get("b") == "running" and states.get("d") == states.get("e") == "succeeded":
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the run never reached step b: {states}")
        assert hist.get_run("doomed").status == "running"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)

    assert db_rows(hist.path, "PRAGMA integrity_check") == [("ok",)]
    record = hist.get_run("doomed")
    assert record.status == "interrupted" and record.inputs == {"k": "v"}
    plan = make_plan(GRAPH)
    reuse = hist.reuse_for("doomed", plan)
    assert set(reuse) == {"a", "d", "e"}
    client = CountingClient()
    result = run(hist, plan, client, reuse=reuse, resumed_from="doomed")
    assert result.success and sorted(client.calls) == ["b", "c"]


def test_an_interrupted_run_is_recorded_and_resumable(hist: History) -> None:
    plan = make_plan(GRAPH)
    client = CountingClient(hang=["c"])
    engine = PlanBuilder(plan, make_tenant(), client=client, on_event=HistoryRecorder(hist),
                         options=RunOptions(run_id="ctrl-c")).build()

    async def interrupt() -> None:
        task = asyncio.create_task(engine.run())
        while "c" not in client.calls:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupt())
    record = hist.get_run("ctrl-c")
    assert record.status == "interrupted" and record.finished_at is not None
    assert hist.step("ctrl-c", "c").status == "cancelled"
    assert set(hist.reuse_for("ctrl-c", plan)) == {"a", "b", "d", "e"}


# --- cache --------------------------------------------------------------------------------------


def test_an_identical_run_is_served_from_the_cache_without_calls(hist: History) -> None:
    plan = make_plan(GRAPH)
    plan.get_step("a").prompt_template = "Study {topic}"  # type: ignore[union-attr]
    first = run(hist, plan, inputs={"topic": "widgets"})

    cache = HistoryCache(hist)
    client = CountingClient()
    second = run(hist, plan, client, inputs={"topic": "widgets"}, cache=cache)
    assert second.success and client.calls == []
    assert cache.hits == 5 and cache.error is None
    assert all(r.cached and r.cost_usd == 0 and r.total_tokens == 0
               for r in second.outputs.values())
    assert {k: r.output for k, r in second.outputs.items()} == {
        k: r.output for k, r in first.outputs.items()}
    record = hist.get_run(second.run_id)
    assert record.counts["cached"] == 5 and record.tokens == 0
    cached_a = hist.step(second.run_id, "a")
    assert cached_a.cached and cached_a.messages == hist.step(first.run_id, "a").messages

    # Different inputs change a's prompt, and so everything downstream of it; e is unchanged.
    client = CountingClient()
    third = run(hist, plan, client, inputs={"topic": "gadgets"}, cache=HistoryCache(hist))
    assert sorted(client.calls) == ["a", "b", "c", "d"]
    assert third.outputs["e"].cached and not third.outputs["a"].cached

    # --no-cache: no cache given, every step is called.
    client = CountingClient()
    run(hist, plan, client, inputs={"topic": "widgets"})
    assert sorted(client.calls) == sorted(GRAPH)


def test_mock_answers_are_never_served_to_a_real_run(hist: History) -> None:
    plan = make_plan(GRAPH)
    mocked = run(hist, plan, MockClient(latency=0))
    assert hist.step(mocked.run_id, "a").model == "mock"
    client = CountingClient()
    run(hist, plan, client, cache=HistoryCache(hist))
    assert sorted(client.calls) == sorted(GRAPH)
    assert HistoryCache(hist, exclude_models=()).lookup(
        mocked.outputs["a"].cache_key or "") is not None


def test_only_succeeded_steps_are_cached(hist: History) -> None:
    plan = make_plan(GRAPH)
    run(hist, plan, CountingClient(fail=["b"]))
    client = CountingClient()
    result = run(hist, plan, client, cache=HistoryCache(hist))
    assert sorted(client.calls) == ["b", "c"]
    assert result.success


def test_cache_lookup_returns_the_most_recent_match(hist: History) -> None:
    plan = make_plan({"a": []})
    run(hist, plan, run_id="old")
    key = hist.step("old", "a").cache_key
    assert key is not None
    conn = sqlite3.connect(hist.path)
    with conn:
        conn.execute("UPDATE steps SET output = 'old output', finished_at = 1 WHERE run_id = 'old'")
    conn.close()
    run(hist, plan, run_id="new")
    hit = hist.lookup(key)
    assert hit is not None and hit.output == hist.step("new", "a").output != "old output"
    assert hist.lookup("no-such-key") is None


def test_a_broken_history_is_a_cache_miss_not_a_failed_step(home: Path) -> None:
    home.mkdir()
    (home / "history.db").write_bytes(b"garbage" * 100)
    cache = HistoryCache(History())
    assert cache.lookup("key") is None
    assert cache.error is not None and "corrupt" in str(cache.error)


# --- call counts against the local HTTP server --------------------------------------------------


def run_http(
    server: FakeLLMServer,
    hist: History,
    plan: BasePlan,
    *,
    reuse: Mapping[str, StepResult] | None = None,
    cache: StepCache | None = None,
    resumed_from: str | None = None,
    model: str = "openai/test-model",
    api_base: str | None = "",
) -> RunResult:
    """``api_base`` is the server's unless given; ``None`` leaves the endpoint to the
    provider's environment variables."""
    recorder = HistoryRecorder(hist, resumed_from=resumed_from)
    engine = PlanBuilder(plan, make_tenant(), model=model,
                         api_base=server.url if api_base == "" else api_base,
                         options=RunOptions(retry_base_delay=0), on_event=recorder,
                         reuse=reuse, cache=cache).build()
    result = asyncio.run(engine.run())
    assert recorder.error is None
    return result


def test_http_resume_calls_only_the_failed_step_and_its_descendants(
    llm_server: FakeLLMServer, hist: History
) -> None:
    plan = make_plan(GRAPH)
    llm_server.add_rule(marker("b"), status=500)  # permanent, and b has no retries
    for step_id in GRAPH:  # (the default reply would echo the marker into c's prompt)
        llm_server.add_rule(marker(step_id), content=f"deliverable of {step_id}")
    first = run_http(llm_server, hist, plan)
    assert not first.success
    assert first.outputs["b"].status is StepStatus.FAILED
    assert first.outputs["c"].status is StepStatus.SKIPPED
    assert len(llm_server.requests) == 4  # a, b, d, e

    llm_server.reset()
    for step_id in GRAPH:
        llm_server.add_rule(marker(step_id), content=f"deliverable of {step_id}")
    second = run_http(llm_server, hist, plan, reuse=hist.reuse_for(first.run_id, plan),
                      resumed_from=first.run_id)
    assert second.success
    assert len(llm_server.requests) == 2
    assert len(request_for(llm_server, "b")) == len(request_for(llm_server, "c")) == 1
    c_prompt = request_for(llm_server, "c")[0].messages[-1]["content"]
    assert second.outputs["b"].output in c_prompt  # c was fed the new b
    assert hist.get_run(second.run_id).counts == {"total": 5, "succeeded": 5, "cached": 3}


def test_http_identical_run_makes_zero_calls_with_the_cache(
    llm_server: FakeLLMServer, hist: History
) -> None:
    plan = make_plan(GRAPH)
    for step_id in GRAPH:
        llm_server.add_rule(marker(step_id), content=f"deliverable of {step_id}")
    first = run_http(llm_server, hist, plan)
    assert first.success and len(llm_server.requests) == 5

    second = run_http(llm_server, hist, plan, cache=HistoryCache(hist))
    assert second.success
    assert len(llm_server.requests) == 5  # not one more
    assert all(r.cached for r in second.outputs.values())
    assert second.outputs["c"].output == "deliverable of c"

    third = run_http(llm_server, hist, plan)  # --no-cache
    assert third.success and len(llm_server.requests) == 10


def _deliverables(server: FakeLLMServer) -> None:
    for step_id in GRAPH:  # (the default reply would echo a marker into the next prompt)
        server.add_rule(marker(step_id), content=f"deliverable of {step_id}")


def test_http_the_cache_keys_on_an_endpoint_set_by_the_providers_own_variable(
    llm_server: FakeLLMServer, hist: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = make_plan(GRAPH)
    _deliverables(llm_server)
    monkeypatch.setenv("OPENAI_API_BASE", llm_server.url)
    first = run_http(llm_server, hist, plan, api_base=None)
    assert first.success and len(llm_server.requests) == 5

    with FakeLLMServer() as moved:  # the same command, the variable pointing elsewhere
        _deliverables(moved)
        monkeypatch.setenv("OPENAI_API_BASE", moved.url)
        second = run_http(moved, hist, plan, api_base=None, cache=HistoryCache(hist))
        assert second.success and len(moved.requests) == 5
        assert not any(r.cached for r in second.outputs.values())
    assert len(llm_server.requests) == 5

    # Back at the first endpoint, its answers are served again.
    monkeypatch.setenv("OPENAI_API_BASE", llm_server.url)
    third = run_http(llm_server, hist, plan, api_base=None, cache=HistoryCache(hist))
    assert all(r.cached for r in third.outputs.values()) and len(llm_server.requests) == 5


def test_http_resume_after_the_endpoint_moved_makes_only_the_missing_calls(
    llm_server: FakeLLMServer, hist: History
) -> None:
    plan = make_plan(GRAPH)
    llm_server.add_rule(marker("b"), status=500)  # permanent, and b has no retries
    _deliverables(llm_server)
    first = run_http(llm_server, hist, plan)
    assert not first.success and len(llm_server.requests) == 4  # a, b, d, e

    with FakeLLMServer() as moved:  # a restarted server on a new port, another model
        _deliverables(moved)
        second = run_http(moved, hist, plan, reuse=hist.reuse_for(first.run_id, plan),
                          resumed_from=first.run_id, model="openai/other-model",
                          api_base=moved.url)
        assert second.success
        assert sorted(r.messages[-1]["content"].split()[-1] for r in moved.requests) == [
            "b", "c"]
        assert {r.model for r in moved.requests} == {"other-model"}  # --model: what it runs
    assert [sid for sid, r in second.outputs.items() if r.cached] == ["a", "d", "e"]
    assert second.outputs["a"].model == "openai/test-model"  # who answered it, first time


def test_a_resume_reruns_a_step_whose_upstream_answer_changed(hist: History) -> None:
    plan = make_plan(GRAPH)
    first = run(hist, plan, CountingClient(fail=["b"]))
    reuse = hist.reuse_for(first.run_id, plan)
    # d's recorded answer no longer matches what d would be asked if a's output were different
    changed_a = reuse["a"].model_copy(update={"output": "a different answer"})
    client = CountingClient()
    run(hist, plan, client, reuse={**reuse, "a": changed_a})
    assert sorted(client.calls) == ["b", "c", "d"]


def test_a_run_is_found_by_its_random_suffix_alone(hist: History) -> None:
    plan = make_plan({"a": []})
    run(hist, plan, run_id="20250101-000000-e34387")
    run(hist, plan, run_id="20250101-000001-0ab0ab")
    run(hist, plan, run_id="20250102-000001-0ab0ab")
    assert hist.resolve("e34387") == "20250101-000000-e34387"
    with pytest.raises(AmbiguousRunError, match="'0ab0ab' is ambiguous"):
        hist.resolve("0ab0ab")
    with pytest.raises(NotFoundError):
        hist.resolve("4387")  # only the whole suffix
    assert hist.resolve("last") == "20250102-000001-0ab0ab"


def test_one_resume_of_a_run_at_a_time(hist: History) -> None:
    hist.open()
    other = History(hist.path)  # another command, with its own handle on the history
    with hist.resume_lock("r1"):
        with pytest.raises(ResumeInProgressError, match="run r1 is being resumed"), \
                other.resume_lock("r1"):
            pass
        with other.resume_lock("r2"):  # another run is another matter
            pass
    with other.resume_lock("r1"):  # free again once the first is done
        pass
