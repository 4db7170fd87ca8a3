"""``dworkers run PLAN --data FILE``: check every row, run them all on one engine under the
dataset progress view, keep results, row reports and history as rows finish, and turn the
outcome into an exit code. ``--resume`` of a dataset run takes its rows from the history.

It shares the single run's helpers (inputs, resume defaults, Ctrl-C handling) in ``runner``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dworkers.errors import InputError, Problem, did_you_mean, shown
from dworkers.events import DatasetResult, Event, Row
from dworkers.runner import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    FanOut,
    RunRequest,
    check_writable,
    ignore_interruptions,
    interrupt_cancels,
    interruptions_restored,
    parse_inputs,
    recorded_options,
    resolve_tenant,
    resume_defaults,
)
from dworkers.text import clean, json_text, one_line

if TYPE_CHECKING:
    from dworkers.dataset import Dataset
    from dworkers.engine import Engine
    from dworkers.history import History, RunRecord


@dataclass
class DatasetRequest:
    """What ``run`` adds for a dataset: the file, its key column, when to stop starting rows."""

    data: Path | None = None
    key: str | None = None
    max_failures: int | None = None
    executor: str = "local"  # where rows run: this process, or "ray"
    ray_address: str | None = None  # with "ray": an existing cluster to join

    @property
    def given(self) -> bool:
        return (self.data is not None or self.key is not None or self.max_failures is not None
                or self.executor != "local" or self.ray_address is not None)


def resumes_dataset(run_ref: str | None) -> bool:
    """Whether ``--resume RUN`` names a dataset run (an unknown run is ``run``'s to report)."""
    if run_ref is None or not run_ref.strip():
        return False
    from dworkers.errors import DworkersError
    from dworkers.history import History

    try:
        with History() as history:
            return _is_dataset(history.get_run(run_ref.strip()))
    except DworkersError:
        return False


def _is_dataset(record: RunRecord) -> bool:
    return isinstance(record.options.get("data"), dict)


@dataclass
class _Prepared:
    engine: Engine
    rows: Callable[[], Iterator[Row]]  # the rows, read again from the start on each call
    total: int
    fixed: dict[str, str]
    data: dict[str, Any]  # where the rows came from (run.json, history options)
    history: History | None
    resumed_from: str | None


def execute_dataset(request: RunRequest, dataset: DatasetRequest) -> int:
    """Run a plan over every row of a dataset; returns the exit code. User mistakes (a bad
    file, a missing input, an unknown key column) raise ``DworkersError`` before any call."""
    prepared = prepare(request, dataset)
    if request.dry_run:
        return _dry_run(request, prepared)
    if prepared.resumed_from is None or prepared.history is None:
        return run_rows(request, dataset, prepared)
    with prepared.history.resume_lock(prepared.resumed_from):  # one resume of a run at a time
        return run_rows(request, dataset, prepared)


def _usage(message: str, hint: str, code: str, file: str) -> InputError:
    return InputError([Problem(message, hint, code, file=file)])


def prepare(request: RunRequest, dataset: DatasetRequest) -> _Prepared:
    """Resolve plan, tenant and rows (from the file, or the resumed run's history), check every
    row, and build the engine. Nothing is called or written."""
    from dworkers.engine import PlanBuilder, RunOptions, new_run_id
    from dworkers.history import History
    from dworkers.targets import resolve_plan

    fixed = parse_inputs(request.inputs)
    history = History().open()  # a broken database is reported before anything is spent
    resumed: RunRecord | None = None
    if request.resume is not None:
        resumed = history.get_run(request.resume.strip() or "<empty>")
        if not _is_dataset(resumed):
            raise _usage(f"run {resumed.run_id} is a single run, not a dataset run",
                         "resume it without --data, --key or --max-failures", "not-a-dataset",
                         "--resume")
        if dataset.data is not None or dataset.key is not None or fixed:
            raise _usage("a resumed dataset run takes its rows and inputs from the history",
                         f"drop --data, --key and --input: dworkers run --resume "
                         f"{resumed.run_id}", "resume-with-data", "--resume")
        resume_defaults(request, resumed.plan, resumed.tenant, resumed.options)
    elif dataset.data is None:
        raise _usage("--key, --max-failures and --executor need a dataset",
                     "pass --data rows.csv (or rows.jsonl)", "missing-data", "--data")
    request.mock = bool(request.mock)
    request.fail_fast, request.no_cache = bool(request.fail_fast), bool(request.no_cache)
    if not request.plan:
        raise _usage("no plan given", "name a plan: dworkers run PLAN --data rows.csv",
                     "missing-plan", "dworkers run")
    plan = resolve_plan(request.plan)
    tenant = resolve_tenant(request.tenant or "default")
    options = RunOptions(max_concurrency=request.max_concurrency, max_cost_usd=request.max_cost,
                         fail_fast=request.fail_fast, run_id=new_run_id(), stream=False)
    cache = None
    if not request.no_cache and not request.mock:
        from dworkers.history.dataset import RowStepCache

        cache = RowStepCache(history)
    engine = PlanBuilder(plan, tenant, request.model, api_base=request.api_base,
                         mock=request.mock, options=options, cache=cache).build()
    if resumed is not None:
        if resumed.plan != plan.name:
            raise _usage(f"run {resumed.run_id} ran plan {resumed.plan!r}, not {plan.name!r}",
                         f"resume it with: dworkers run {resumed.plan} --resume "
                         f"{resumed.run_id}", "wrong-plan", "--resume")
        from dworkers.history.dataset import RowHistory

        rows_history = RowHistory(history)
        run_id = resumed.run_id
        data = dict(resumed.options["data"])
        total = sum(rows_history.counts(run_id).values())
        if dataset.max_failures is None and isinstance(data.get("max_failures"), int):
            dataset.max_failures = data["max_failures"]
        return _Prepared(engine, lambda: rows_history.resume_rows(run_id, plan), total,
                         dict(resumed.inputs), data, history, run_id)
    assert dataset.data is not None
    _check_fixed(fixed, plan.required_inputs(), list(plan.optional_inputs()))
    from dworkers.dataset import check

    checked = check(dataset.data, required=plan.required_inputs(),
                    optional=plan.optional_inputs(), fixed=fixed, key=dataset.key)
    data = {"file": str(dataset.data.absolute()), "format": checked.format,
            "key": checked.key_column, "rows": checked.rows_count,
            "max_failures": dataset.max_failures}
    return _Prepared(engine, lambda: _rows(checked), checked.rows_count, fixed, data, history,
                     None)


def _check_fixed(fixed: dict[str, str], required: list[str], optional: list[str]) -> None:
    """``-i`` names the plan does not take (every one reported)."""
    known = [*required, *optional]
    problems = []
    for name in fixed:
        if name not in known:
            guess = did_you_mean(name, known)
            problems.append(Problem(f"unknown input {shown(name)}",
                                    f"did you mean {guess!r}?" if guess
                                    else f"this plan takes: {', '.join(known) or 'no inputs'}",
                                    "unknown-input", file="--input"))
    if problems:
        raise InputError(problems)


def _rows(checked: Dataset) -> Iterator[Row]:
    inputs = set(checked.input_columns)
    for row in checked.rows():
        extra = {k: v for k, v in row.values.items() if k not in inputs}
        yield Row(row.key, row.inputs, extra, row.line)


def _dry_run(request: RunRequest, prepared: _Prepared) -> int:
    """The first row's prompts and the schedule; every row has been checked."""
    from dworkers import view
    from dworkers.runner import dry_run

    first = next(prepared.rows(), None)
    if first is None:
        return EXIT_OK
    view.console().print(f"dry run of row {one_line(first.key)!r} (1 of {prepared.total:,} "
                         "rows; every row checked)", markup=False, highlight=False)
    return dry_run(prepared.engine, prepared.engine.resolve_inputs(first.inputs),
                   as_json=request.json)


def run_rows(request: RunRequest, dataset: DatasetRequest, prepared: _Prepared) -> int:
    """Run every row under the progress view (or one line per row), keeping files and history
    as rows finish."""
    from dworkers import view
    from dworkers.dataset_outputs import DatasetWriter, dataset_summary
    from dworkers.engine import new_run_id
    from dworkers.executors import executor_for
    from dworkers.history.dataset import DatasetRecorder
    from dworkers.view.dataset import make_dataset_view, summary

    engine = prepared.engine
    prefetch = None
    if not request.mock:
        from dworkers.llm import prefetch_litellm

        prefetch = prefetch_litellm()  # loads while the rows are recorded
    run_id = engine.options.run_id or new_run_id()
    out_dir = (request.out or Path("dworkers-runs")) / run_id
    check_writable(out_dir)
    executor = executor_for(dataset.executor, ray_address=dataset.ray_address)  # Ray starts now
    engine.preflight()  # a missing key or a model not allowed: before anything is recorded
    describe = engine.describe(run_id)
    err = view.console()
    options = {**recorded_options(request, engine), "data": prepared.data}
    recorder = None
    if prepared.history is not None:
        recorder = DatasetRecorder(prepared.history, inputs=prepared.fixed,
                                   resumed_from=prepared.resumed_from, options=options)
        recorder.start(describe, prepared.rows())  # HistoryError: reported, nothing spent
    writer = DatasetWriter(out_dir, engine.plan, data=prepared.data)
    display = make_dataset_view(interactive=view.is_interactive(err), quiet=request.quiet,
                                out=err, total=prepared.total, budget_usd=engine.max_cost_usd)
    consumers: list[Callable[[Event], None]] = [writer, display]
    if recorder is not None:
        consumers.append(recorder)
    fan_out = FanOut(consumers)
    engine.on_event = fan_out
    display.prepare(describe)

    async def main() -> None:
        interrupt_cancels(asyncio.current_task())
        with display:
            if prefetch is not None:
                await asyncio.to_thread(prefetch.join)
            rows = executor.run_many(engine, prepared.rows(), max_failures=dataset.max_failures)
            async for _ in rows:
                pass  # each row reaches the writer, the view and the history as an event

    interrupted = False
    with interruptions_restored():
        try:
            asyncio.run(main())
        except (KeyboardInterrupt, asyncio.CancelledError):
            interrupted = True
        finally:
            # The run has ended: a late Ctrl-C or SIGTERM must not cut off the summary.
            ignore_interruptions()
            writer.close()
        result = engine.dataset_result
        if result is None:
            err.print("interrupted before the run started")
            return EXIT_INTERRUPTED
        if interrupted and not result.interrupted:
            result = result.model_copy(update={"interrupted": True})
        err.print(summary(result, str(out_dir)), soft_wrap=True)
        unsaved = [f"{writer.error} in {out_dir}"] if writer.error else []
        unsaved += [f"while recording the run: {problem}" for problem in fan_out.errors]
        if recorder is not None and recorder.error is not None:
            unsaved.append(f"the run history, from then on: {recorder.error}")
        for problem in unsaved:
            view.print_error(err, f"not saved: {problem}")
        if request.json:
            document = {**dataset_summary(result), "out_dir": str(out_dir)}
            if not view.write_stdout(json_text(document) + "\n", err):
                unsaved.append("the JSON result")
    return exit_code(result, interrupted, unsaved)


def exit_code(result: DatasetResult, interrupted: bool, unsaved: list[str]) -> int:
    if interrupted or result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if result.success and not unsaved else EXIT_FAILED


def show_dataset(ref: str, key: str | None, *, as_json: bool) -> bool:
    """``show RUN [KEY]`` for a dataset run: its summary and the rows that did not succeed, or
    one row with its steps and outputs. False when RUN is not a dataset run."""
    from dworkers import view
    from dworkers.history import History
    from dworkers.history.dataset import RowHistory
    from dworkers.view.dataset import recorded_rows, row_details

    with History() as history:
        record = history.get_run(ref)
        if not _is_dataset(record):
            return False
        rows = RowHistory(history)
        if key is not None:
            row = rows.row(record.run_id, key)
            steps = rows.steps(record.run_id, key)
            if as_json:
                document = {**row.to_dict(),
                            "steps": [s.to_dict() for s in steps]}
                view.write_stdout(json_text(document) + "\n")
                return True
            out = view.console(stderr=False)
            out.print(row_details(row, steps), soft_wrap=True)
            for step in steps:
                if step.output:
                    out.print(f"\n## {step.step_id}\n", style="bold", soft_wrap=True)
                    out.print(clean(step.output).rstrip(), markup=False, highlight=False,
                              soft_wrap=True)
            return True
        counts = rows.counts(record.run_id)
        failures = rows.not_succeeded(record.run_id)
    if as_json:
        document = {**record.to_dict(), "rows": counts,
                    "not_succeeded": [r.to_dict() for r in failures]}
        view.write_stdout(json_text(document) + "\n")
        return True
    out = view.console(stderr=False)
    data = record.options.get("data", {})
    out.print(one_line(f"{record.plan} for {record.tenant} · run {record.run_id} "
                       f"({record.status}) · {data.get('file', '?')} · "
                       f"${record.cost_usd:.4f} · {record.tokens:,} tokens"),
              markup=False, highlight=False, soft_wrap=True)
    out.print(recorded_rows(counts, failures, out.width), soft_wrap=True)
    more = sum(n for status, n in counts.items() if status != "succeeded") - len(failures)
    if more > 0:
        out.print(f"  … and {more:,} more", markup=False)
    out.print(f"one row: dworkers show {record.run_id} KEY · finish the rest: dworkers run "
              f"--resume {record.run_id}", style="dim", markup=False, soft_wrap=True)
    return True


__all__ = ["DatasetRequest", "execute_dataset", "resumes_dataset", "show_dataset"]
