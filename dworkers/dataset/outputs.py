"""The folder of a dataset run: ``results.jsonl`` (a line per row as it finishes),
``results.csv`` (a table of the typed fields, when steps have an ``output_schema``),
``rows/<key>.md`` (each row's report), ``report.md`` (the summary) and ``run.json``.

Rows are written as they finish and forgotten: memory stays flat whatever the number of rows.
Every file is whole whatever happens: a row report is written to a temporary file and renamed
(``write_row_file``: not fsynced — at 10,000 rows fsync alone would take minutes, and the
history holds every row — and in as few system calls as that takes: creating 100,000 files is
much of what such a run costs), each ``results.jsonl`` line is appended in one write,
``run.json`` and ``report.md`` are replaced atomically. A cost that could not be known (a
model without a price) is never written as $0: ``cost_usd`` is null and ``cost_known`` false.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from dworkers import conditions, deliverables, output_schema
from dworkers.dataset.reader import safe_name
from dworkers.events import DatasetFinished, Event, RowFinished, RunStarted
from dworkers.files import write_atomic
from dworkers.plans.base import BasePlan
from dworkers.results import DatasetResult, RowResult, RowStatus, shown_counts
from dworkers.text import clean, crop, json_text, one_line

RUN_JSON_INTERVAL = 2.0  # seconds between rewrites of run.json while rows finish
FAILURES_LISTED = 1_000  # report.md lists this many failed rows; results.jsonl has them all


class DatasetWriter:
    """An ``on_event`` callback that keeps a dataset run's folder up to date.

    A file that cannot be written does not stop the run: the first error is kept in ``error``
    for the caller to report, and later rows are still tried.
    """

    def __init__(self, directory: Path, plan: BasePlan, *, data: dict[str, Any]) -> None:
        self.directory = directory
        self.plan = plan
        self.data = data  # where the rows came from: file, key column, rows, fixed inputs
        self.started: RunStarted | None = None
        self.results: int | None = None  # results.jsonl, opened for appending
        self.table: int | None = None  # results.csv, when steps are typed
        self.columns = table_columns(plan)
        self.counts: dict[RowStatus, int] = dict.fromkeys(RowStatus, 0)
        self.cost_usd = 0.0
        self.cost_known = True  # False once a row's cost could not be known
        self.tokens = 0
        self.failures: list[tuple[str, str, str]] = []  # key, status, error
        self.more_failures = 0
        self.last_write = 0.0
        self.error: str | None = None

    def __call__(self, event: Event) -> None:
        try:
            self.handle(event)
        except OSError as exc:
            if self.error is None:
                self.error = f"{exc.filename or self.directory}: {exc.strerror or exc}"

    def handle(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.started = event
            (self.directory / "rows").mkdir(parents=True, exist_ok=True)
            self.results = os.open(self.directory / "results.jsonl",
                                   os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
            if self.columns[1]:
                self.table = os.open(self.directory / "results.csv",
                                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
                append_line(self.table, csv_line([spreadsheet_text(name) for name in (
                    "key", "status", *self.columns[0], *self.columns[1], "cost_usd",
                    "error")]))
            self.write_run_json(None)
        elif isinstance(event, RowFinished):
            self.row(event.result)
        elif isinstance(event, DatasetFinished):
            self.finish(event.result)

    def row(self, row: RowResult) -> None:
        self.counts[row.status] += 1
        self.cost_usd += row.cost_usd
        self.cost_known = self.cost_known and row.cost_known
        self.tokens += row.total_tokens
        if row.status is not RowStatus.SUCCEEDED:
            if len(self.failures) < FAILURES_LISTED:
                self.failures.append((row.key, row.status.value, row.error or ""))
            else:
                self.more_failures += 1
        if self.results is not None:  # a reader (tail -f, a crash) sees whole lines; no fsync
            append_line(self.results, json_text(result_line(row), indent=None))
        if self.table is not None:
            append_line(self.table, csv_line(table_row(row, *self.columns)))
        if row.outputs:
            write_row_file(self.directory / "rows", f"{safe_name(row.key)}.md",
                           row_report(self.plan, row))
        if time.monotonic() - self.last_write >= RUN_JSON_INTERVAL:
            self.write_run_json(None)

    def finish(self, result: DatasetResult) -> None:
        self.close()
        self.write_run_json(result)
        write_atomic(self.directory / "report.md", dataset_report(
            self.plan, result, self.failures, self.more_failures, self.data))

    def write_run_json(self, result: DatasetResult | None) -> None:
        data: dict[str, Any]
        if result is not None:
            data = dataset_summary(result)
        else:
            started = self.started
            data = {
                "run_id": started.run_id if started else None,
                "plan": self.plan.name,
                "tenant": started.tenant if started else None,
                "status": "running",
                "counts": shown_counts(self.counts),
                "tokens": self.tokens,
                **cost_fields(self.cost_usd, self.cost_known),
            }
        data["data"] = self.data
        if self.started is not None:
            data["models"] = {s.step_id: s.model for s in self.started.steps}
        write_atomic(self.directory / "run.json", json.dumps(data, indent=2) + "\n")
        self.last_write = time.monotonic()

    def close(self) -> None:
        """Close results.jsonl if the run ended without ``DatasetFinished``."""
        if self.results is not None:
            os.close(self.results)
            self.results = None
        if self.table is not None:
            os.close(self.table)
            self.table = None


def append_line(fd: int, text: str) -> None:
    """Append ``text`` and a newline to an ``O_APPEND`` file in one write (a short write, on a
    full disk say, is finished by the next ones), so no reader ever sees a line cut in two
    by another line. Lone surrogates from a model's answer are replaced, as text files do."""
    write_all(fd, text + "\n")


def write_all(fd: int, text: str) -> None:
    """Write ``text`` as UTF-8 (lone surrogates replaced), finishing any short write."""
    data = text.encode("utf-8", errors="replace")
    while data:
        written = os.write(fd, data)
        data = data[written:]


def write_row_file(directory: Path, name: str, text: str) -> None:
    """Write ``directory/name`` whole: to ``.name.tmp``, then renamed over it (a reader or a
    killed run never sees half a file). Four system calls, where ``write_atomic`` takes about
    ten: no random temporary name (only this run writes its folder), no mode to set afterwards
    (created with the usual permissions), no folder to check, no fsync."""
    path = os.path.join(directory, name)
    temporary = os.path.join(directory, f".{name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        try:
            write_all(fd, text)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def table_columns(plan: BasePlan) -> tuple[list[str], list[str]]:
    """The columns of ``results.csv``: the plan's inputs, and ``step.field`` for every field
    of every typed step (a nested object's own fields, not the object; a list whole). No
    typed step: no fields, and no table."""
    inputs = list(plan.inputs) if plan.inputs is not None else plan.placeholders()
    typed: list[str] = []
    for step in plan.steps:
        schema = step.answer_schema()
        if schema is None:
            continue
        paths = list(output_schema.fields(schema))
        typed += [f"{step.step_id}.{path}" for path in paths
                  if not any(other.startswith(path + ".") for other in paths)]
    return inputs, typed


def table_row(row: RowResult, inputs: list[str], typed: list[str]) -> list[str]:
    """A row of ``results.csv``: scalars as text, lists and objects as JSON text, a field
    with no value (a failed or skipped step, an absent field) empty. Text from the data file
    or a model's answer is made safe to open in a spreadsheet (``spreadsheet_text``); a typed
    number is written as the number it is."""
    answers = {sid: r.value for sid, r in row.outputs.items() if r.value is not None}
    cells = [row.key, row.status.value, *(row.inputs.get(name, "") for name in inputs)]
    cells = [spreadsheet_text(cell) for cell in cells]
    for column in typed:
        value = conditions.lookup(tuple(column.split(".")), answers)
        if value is conditions.MISSING or value is None:
            cells.append("")
        elif isinstance(value, str):
            cells.append(spreadsheet_text(value))
        else:  # a number, true/false, or a list or object as JSON text: never a formula
            cells.append(json.dumps(value, ensure_ascii=False))
    cost = cost_fields(row.cost_usd, row.cost_known)["cost_usd"]
    cells += ["" if cost is None else f"{cost:.6f}", spreadsheet_text(row.error or "")]
    return cells


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet (Excel, LibreOffice, Google Sheets) read a cell as a formula."""
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def spreadsheet_text(text: str) -> str:
    """``text`` as a ``results.csv`` cell that a spreadsheet cannot run: one that would start a
    formula (``=HYPERLINK(...)``, ``@SUM(...)``, ``-2+3``; a data file or a model's answer
    may hold anything) gets a leading apostrophe, as OWASP advises, and shows as the text it
    is. A plain number such as ``-3`` or ``+1.5`` is left as it is: a spreadsheet reads it as
    that number, and it can call nothing."""
    if text.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def csv_line(cells: list[str]) -> str:
    """One CSV record (quoted as needed; a newline inside a value stays inside its quotes)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(cells)
    return buffer.getvalue()


def cost_fields(cost_usd: float, known: bool) -> dict[str, Any]:
    """``cost_usd`` and ``cost_known`` for a JSON file: an unknown cost is null, never 0."""
    return {"cost_usd": round(cost_usd, 6) if known else None, "cost_known": known}


def result_line(row: RowResult) -> dict[str, Any]:
    """A row as one line of ``results.jsonl``: its cost (null when unknown) and the steps
    whose answers were cut off at the model's token limit."""
    return {**row.record(), **cost_fields(row.cost_usd, row.cost_known),
            "truncated": [sid for sid, step in row.outputs.items() if step.truncated]}


def dataset_status(result: DatasetResult) -> str:
    if result.interrupted:
        return "interrupted"
    if result.waiting and not result.failed:
        return "waiting for approval"
    return "succeeded" if result.success else "failed"


def dataset_summary(result: DatasetResult) -> dict[str, Any]:
    """The machine-readable end of a dataset run (run.json, ``--json``): totals, never rows;
    a cost some row could not know is null."""
    data = result.model_dump(mode="json")
    data["status"] = dataset_status(result)
    data["rows"] = result.rows
    data["counts"] = shown_counts({s: result.counts.get(s, 0) for s in RowStatus})
    data["tokens"] = result.prompt_tokens + result.completion_tokens
    data.update(cost_fields(result.cost_usd, result.cost_known))
    return data


def _cost_text(cost_usd: float, known: bool) -> str:
    """A cost in report.md: an unknown one says so (a model without a price), never $0."""
    if known:
        return f"${cost_usd:.4f}"
    if cost_usd == 0:
        return "unknown (a model without a known price)"
    return f"${cost_usd:.4f} + unknown (a model without a known price)"


def _cell(text: str, limit: int = 200) -> str:
    """Text safe inside a Markdown table cell: one line, pipes escaped, cut to ``limit``."""
    return crop(one_line(text), limit).replace("|", "\\|")


def dataset_report(plan: BasePlan, result: DatasetResult,
                   failures: list[tuple[str, str, str]], more: int,
                   data: dict[str, Any]) -> str:
    """The summary of a dataset run as Markdown: counts, cost, the rows that did not succeed."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(result.started_at or time.time()))
    lines = [
        f"# {plan.name} — dataset run",
        "",
        plan.description,
        "",
        f"- Run: `{result.run_id}` ({dataset_status(result)}), {when}",
        f"- Tenant: {result.tenant}",
        f"- Data: {data.get('file', '')} ({result.rows:,} rows)",
        f"- Calls: {result.calls:,} ({result.rate_limited:,} answered 429)",
        f"- Tokens: {result.prompt_tokens + result.completion_tokens:,}",
        f"- Cost: {_cost_text(result.cost_usd, result.cost_known)}",
        f"- Time: {result.total_duration_ms / 1000:.1f}s",
    ]
    if result.stop_reason:
        lines.append(f"- Stopped: {result.stop_reason}")
    lines += ["", "| status | rows |", "|---|---:|"]
    lines += [f"| {status} | {n:,} |" for status, n in shown_counts(
        {s: result.counts.get(s, 0) for s in RowStatus}).items()]
    if failures:
        lines += ["", "## Rows that did not succeed", "", "| row | status | error |",
                  "|---|---|---|"]
        lines += [f"| {_cell(key, 80)} | {status} | {_cell(error)} |"
                  for key, status, error in failures]
        if more:
            lines += ["", f"… and {more:,} more: see results.jsonl."]
    lines += ["", "Each row's report is in `rows/`; every row's outputs in `results.jsonl`."]
    # Plan files, data files and model answers are untrusted: no escape code reaches a terminal.
    return clean("\n".join(lines)) + "\n"


def row_report(plan: BasePlan, row: RowResult) -> str:
    """One row's deliverables in plan order, as Markdown."""
    lines = [f"# {plan.name} — {row.key}", "", f"- Status: {row.status.value}"]
    if row.line is not None:
        lines.append(f"- Line: {row.line}")
    for name, value in row.inputs.items():
        lines.append(f"- {name}: {crop(one_line(value), 200)}")
    if row.error:
        lines.append(f"- Error: {one_line(row.error)}")
    lines.append("")
    lines += deliverables.sections(plan, row.outputs)
    # Data files and model answers are untrusted: no escape code reaches a terminal via cat.
    return clean("\n".join(lines)).rstrip() + "\n"


__all__ = ["DatasetWriter", "dataset_report", "dataset_summary", "result_line", "row_report",
           "spreadsheet_text", "write_row_file"]
