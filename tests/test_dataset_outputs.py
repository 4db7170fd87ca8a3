"""The folder of a dataset run: results.jsonl as rows finish, row reports, report.md, run.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support import make_plan

from dworkers.dataset.outputs import DatasetWriter, row_report
from dworkers.dataset.reader import safe_name
from dworkers.events import DatasetFinished, RowFinished, RunStarted, StepInfo
from dworkers.results import DatasetResult, RowResult, RowStatus, StepResult, StepStatus

PLAN = make_plan({"scope": [], "write": ["scope"]})
STEPS = tuple(StepInfo(s.step_id, s.name, "analyst", "openai/m", tuple(s.depends_on))
              for s in PLAN.steps)


def result(key: str, ok: bool = True) -> RowResult:
    scope = StepResult(step_id="scope", status=StepStatus.SUCCEEDED, output=f"scope of {key}",
                       prompt_tokens=5, completion_tokens=7, cost_usd=0.5, attempts=1)
    write = (StepResult(step_id="write", status=StepStatus.SUCCEEDED, output=f"text for {key}",
                        prompt_tokens=1, completion_tokens=2, cost_usd=0.25, attempts=1) if ok
             else StepResult(step_id="write", status=StepStatus.FAILED, error="HTTP 500 | bad"))
    return RowResult(key=key, status=RowStatus.SUCCEEDED if ok else RowStatus.FAILED,
                     inputs={"brief": f"brief {key}"}, extra={"region": "EU"}, line=2,
                     outputs={"scope": scope, "write": write},
                     error=None if ok else "write: HTTP 500 | bad")


def test_rows_are_written_as_they_finish_then_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "run"
    writer = DatasetWriter(out, PLAN, data={"file": "rows.csv", "key": "id", "rows": 3})
    writer(RunStarted("r1", PLAN.name, "acme", STEPS, 0.0, dataset=True))
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    writer(RowFinished(result("acme")))
    # Readable before the run ends: a whole line per finished row.
    [line] = (out / "results.jsonl").read_text().splitlines()
    assert json.loads(line) == {
        "key": "acme", "status": "succeeded", "inputs": {"brief": "brief acme"},
        "extra": {"region": "EU"}, "line": 2,
        "outputs": {"scope": "scope of acme", "write": "text for acme"}, "tokens": 15,
        "cost_usd": 0.75, "cost_known": True, "error": None, "truncated": []}
    writer(RowFinished(result("a/b", ok=False)))
    writer(RowFinished(RowResult(key="never", status=RowStatus.SKIPPED,
                                 error="not started: 1 row failed (--max-failures 1)")))
    done = DatasetResult(run_id="r1", plan=PLAN.name, tenant="acme", calls=4,
                         prompt_tokens=12, completion_tokens=18, cost_usd=1.25,
                         stop_reason="1 row failed (--max-failures 1)")
    done.counts.update({RowStatus.SUCCEEDED: 1, RowStatus.FAILED: 1, RowStatus.SKIPPED: 1})
    writer(DatasetFinished(done))
    assert writer.error is None
    assert [json.loads(x)["key"] for x in (out / "results.jsonl").read_text().splitlines()] == [
        "acme", "a/b", "never"]
    # One report per row that ran, named safely; the skipped row has nothing to show.
    assert sorted(p.name for p in (out / "rows").iterdir()) == sorted(
        ["acme.md", f"{safe_name('a/b')}.md"])
    failed = (out / "rows" / f"{safe_name('a/b')}.md").read_text()
    assert "## SCOPE\n\nscope of a/b" in failed and "> Not available: failed — HTTP 500" in failed
    report = (out / "report.md").read_text()
    assert "| succeeded | 1 |" in report and "| skipped | 1 |" in report
    assert "- Cost: $1.2500" in report and "- Stopped: 1 row failed (--max-failures 1)" in report
    assert "| a/b | failed | write: HTTP 500 \\| bad |" in report  # pipes cannot break the table
    assert "| never | skipped | not started" in report
    data = json.loads((out / "run.json").read_text())
    assert data["status"] == "failed" and data["rows"] == 3
    assert data["counts"] == {"succeeded": 1, "failed": 1, "skipped": 1, "cancelled": 0}
    assert data["data"] == {"file": "rows.csv", "key": "id", "rows": 3}
    assert data["models"] == {"scope": "openai/m", "write": "openai/m"}


def test_row_files_are_not_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    writer = DatasetWriter(tmp_path / "run", PLAN, data={})
    writer(RunStarted("r1", PLAN.name, "acme", STEPS, 0.0, dataset=True))
    before = len(synced)  # run.json is replaced atomically
    for n in range(50):
        writer(RowFinished(result(f"k{n}")))
    assert len(list((tmp_path / "run" / "rows").iterdir())) == 50
    assert len(synced) - before <= 1  # at most one run.json rewrite, never once per row
    writer.close()


def test_an_unwritable_folder_is_reported_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    writer = DatasetWriter(blocker / "run", PLAN, data={})
    writer(RunStarted("r1", PLAN.name, "acme", STEPS, 0.0, dataset=True))
    writer(RowFinished(result("acme")))
    assert writer.error is not None and "file" in writer.error


def test_escape_codes_from_data_and_answers_never_reach_the_files(tmp_path: Path) -> None:
    # A row's inputs come from the data file and its outputs and errors from a model: any of
    # them may carry codes that retitle a window or clear a screen when the file is cat'ed.
    evil = "\x1b]0;PWNED\x07\x1b[2J\x1b[31mred\x1b[0m \x9b2J"
    scope = StepResult(step_id="scope", status=StepStatus.SUCCEEDED, output=f"one\n{evil}\nthree")
    write = StepResult(step_id="write", status=StepStatus.FAILED, error=f"bad {evil}")
    row = RowResult(key="k", status=RowStatus.FAILED, inputs={"brief": f"brief {evil}"},
                    outputs={"scope": scope, "write": write}, error=f"write: bad {evil}")
    out = tmp_path / "run"
    writer = DatasetWriter(out, PLAN, data={"file": "rows.csv", "key": "id", "rows": 1})
    writer(RunStarted("r1", PLAN.name, "acme", STEPS, 0.0, dataset=True))
    writer(RowFinished(row))
    done = DatasetResult(run_id="r1", plan=PLAN.name, tenant="acme")
    done.counts[RowStatus.FAILED] = 1
    writer(DatasetFinished(done))
    assert writer.error is None
    for name in ("rows/k.md", "report.md", "results.jsonl"):
        text = (out / name).read_text()
        assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text, (name, text)
    assert "\none\nred \nthree\n" in (out / "rows" / "k.md").read_text()  # lines kept, codes gone
    [line] = (out / "results.jsonl").read_text().splitlines()
    assert json.loads(line)["outputs"]["scope"] == f"one\n{evil}\nthree"  # the data, escaped


def test_a_row_report_marks_a_cut_off_answer_as_a_run_report_does() -> None:
    row = result("acme")
    row.outputs["write"] = row.outputs["write"].model_copy(update={"truncated": True})
    report = row_report(PLAN, row)
    assert "## WRITE\n\n> Truncated: the answer was cut off" in report
    assert "text for acme" in report


def unpriced(key: str) -> RowResult:
    row = result(key)
    for sid, step in row.outputs.items():
        row.outputs[sid] = step.model_copy(update={"cost_usd": 0.0, "cost_known": False})
    return row


def test_a_model_without_a_price_is_cost_unknown_never_zero(tmp_path: Path) -> None:
    out = tmp_path / "run"
    writer = DatasetWriter(out, PLAN, data={"file": "rows.csv"})
    writer(RunStarted("r1", PLAN.name, "acme", STEPS, 0.0, dataset=True))
    writer(RowFinished(unpriced("acme")))
    writer.write_run_json(None)
    running = json.loads((out / "run.json").read_text())
    assert running["cost_usd"] is None and running["cost_known"] is False
    done = DatasetResult(run_id="r1", plan=PLAN.name, tenant="acme")
    done.add(unpriced("acme"))  # the engine's totals learn the unknown cost from the row
    writer(DatasetFinished(done))
    [line] = map(json.loads, (out / "results.jsonl").read_text().splitlines())
    assert line["cost_usd"] is None and line["cost_known"] is False
    data = json.loads((out / "run.json").read_text())
    assert data["cost_usd"] is None and data["cost_known"] is False
    report = (out / "report.md").read_text()
    assert "- Cost: unknown" in report and "$0.0000" not in report


def test_a_cut_off_answer_stays_marked_in_results(tmp_path: Path) -> None:
    row = result("acme")
    row.outputs["write"] = row.outputs["write"].model_copy(update={"truncated": True})
    writer = DatasetWriter(tmp_path / "run", PLAN, data={})
    writer(RunStarted("r1", PLAN.name, "acme", STEPS, 0.0, dataset=True))
    writer(RowFinished(row))
    writer.close()
    [line] = map(json.loads, (tmp_path / "run" / "results.jsonl").read_text().splitlines())
    assert line["truncated"] == ["write"]
    assert "> Truncated" in (tmp_path / "run" / "rows" / "acme.md").read_text()


def test_keys_that_sanitise_alike_never_share_a_report(tmp_path: Path) -> None:
    # Each of these would be "a_b" once unsafe characters are replaced; the last is another
    # key's whole file name, and "A_b" differs from "a_b" only where a file system ignores case.
    keys = ["a/b", "a:b", "a b", "a_b", "A_b", safe_name("a/b")]
    writer = DatasetWriter(tmp_path / "run", PLAN, data={})
    writer(RunStarted("r1", PLAN.name, "acme", STEPS, 0.0, dataset=True))
    for key in keys:
        writer(RowFinished(result(key)))
    writer.close()
    names = sorted(p.name for p in (tmp_path / "run" / "rows").iterdir())
    assert len(names) == len(keys) and len({n.casefold() for n in names}) == len(keys)
    for key in keys:  # each report is its own row's
        assert f"scope of {key}" in (tmp_path / "run" / "rows" / f"{safe_name(key)}.md").read_text()


def test_a_row_report_is_replaced_whole_or_not_at_all(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    writer = DatasetWriter(tmp_path / "run", PLAN, data={})
    writer(RunStarted("r1", PLAN.name, "acme", STEPS, 0.0, dataset=True))
    writer(RowFinished(result("acme")))
    report = tmp_path / "run" / "rows" / "acme.md"
    before = report.read_text()

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)  # the new version never lands
    writer(RowFinished(result("acme", ok=False)))
    writer.close()
    assert report.read_text() == before  # never half of the new one
    assert [p.name for p in report.parent.iterdir()] == ["acme.md"]  # no temporary left over
    assert writer.error is not None and "No space left" in writer.error


def test_a_row_report_gets_the_permissions_every_other_file_of_the_run_gets(
        tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path / "run", PLAN, data={})
    writer(RunStarted("r1", PLAN.name, "acme", STEPS, 0.0, dataset=True))
    writer(RowFinished(result("acme")))
    writer.close()
    mode = (tmp_path / "run" / "rows" / "acme.md").stat().st_mode & 0o777
    assert mode == (tmp_path / "run" / "run.json").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # as the umask allows: not mkstemp's 0600
    assert [p.name for p in (tmp_path / "run" / "rows").iterdir()] == ["acme.md"]


def test_each_results_line_is_one_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[bytes] = []
    real = os.write

    def recording(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real(fd, data)

    writer = DatasetWriter(tmp_path / "run", PLAN, data={})
    writer(RunStarted("r1", PLAN.name, "acme", STEPS, 0.0, dataset=True))
    monkeypatch.setattr(os, "write", recording)
    writer(RowFinished(result("acme")))
    writer(RowFinished(result("beta" * 20_000)))  # a long line: still one write
    monkeypatch.undo()
    writer.close()
    lines = [w for w in writes if w.startswith(b'{"key"')]
    assert len(lines) == 2 and all(w.endswith(b"\n") and w.count(b"\n") == 1 for w in lines)
