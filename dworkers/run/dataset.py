"""A dataset run (``dworkers run PLAN --data FILE``): what it does differently from a single
run — every row checked before any call (the file is read once), the rows recorded before
they run, the dataset progress view, results and row reports as rows finish, and ``--resume``
taking its rows from the history."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from dworkers.errors import DworkersError, HistoryError, InputError, Problem
from dworkers.results import DatasetResult, Row
from dworkers.run.flow import EXIT_OK, Console, Display, RunMode, RunRequest
from dworkers.run.inputs import check_input_names
from dworkers.text import one_line

if TYPE_CHECKING:
    from dworkers.dataset.outputs import DatasetWriter
    from dworkers.dataset.reader import Dataset
    from dworkers.engine import Engine, StepCache
    from dworkers.events import RunStarted
    from dworkers.executors import Executor
    from dworkers.history import History, RunRecord
    from dworkers.history.dataset import DatasetRecorder
    from dworkers.results import StepResult
    from dworkers.run.flow import Resolved
    from dworkers.view.dataset import DatasetView


def is_dataset_run(record: RunRecord) -> bool:
    return isinstance(record.options.get("data"), dict)


def resumes_dataset(run_ref: str | None) -> bool:
    """Whether ``--resume RUN`` names a dataset run (an unknown run is ``run``'s to report)."""
    if run_ref is None or not run_ref.strip():
        return False
    from dworkers.history import History

    try:
        with History() as history:
            return is_dataset_run(history.get_run(run_ref.strip()))
    except DworkersError:
        return False


def _usage(message: str, hint: str, code: str, file: str) -> InputError:
    return InputError([Problem(message, hint, code, file=file)])


class DatasetMode(RunMode):
    """The plan once per row of a data file (or of the resumed run's rows)."""

    kind = "dataset"
    plan_hint = "dworkers run PLAN --data rows.csv"
    streams: ClassVar[bool] = False  # nobody watches a dataset's tokens arrive

    def __init__(self, request: RunRequest, resolved: Resolved, engine: Engine) -> None:
        super().__init__(request, resolved, engine)
        self.dataset_writer: DatasetWriter | None = None
        self.display: DatasetView | None = None
        self.executor: Executor | None = None
        resumed, history, plan = resolved.resumed, resolved.history, resolved.plan
        self.rows: Callable[[], Iterator[Row]]
        if resumed is not None and history is not None:
            from dworkers.history.dataset import DatasetHistory

            rows_history, run_id = DatasetHistory(history), resumed.run_id
            self.data: dict[str, Any] = dict(resumed.options["data"])
            self.total = sum(rows_history.counts(run_id).values())
            self.rows = lambda: rows_history.resume_rows(run_id, plan)
            return
        assert request.data is not None  # check_request made sure
        check_input_names(resolved.inputs, plan.required_inputs(), list(plan.optional_inputs()))
        from dworkers.dataset.reader import check

        checked = check(request.data, required=plan.required_inputs(),
                        optional=plan.optional_inputs(), fixed=resolved.inputs, key=request.key)
        self.data = {"file": str(request.data.absolute()), "format": checked.format,
                     "key": checked.key_column, "rows": checked.rows_count,
                     "sha256": checked.sha256, "max_failures": request.max_failures}
        self.total = checked.rows_count
        from dworkers.run.documents import RowFiles

        # Cells naming files are read (and each row's prompts measured) before any call.
        row_files = RowFiles(plan, request.data, fixed=resolved.inputs)
        self.rows = lambda: _rows(checked)
        if row_files.may_name_files(checked):
            self.files_read += row_files.check(_rows(checked), engine)
            self.rows = lambda: row_files.rows(_rows(checked))
        if request.executor != "local" and not request.dry_run:
            self.start_executor()  # Ray starts before the preflight, which takes seconds

    @classmethod
    def check_request(cls, request: RunRequest, resumed: RunRecord | None,
                      inputs: dict[str, str]) -> None:
        if resumed is None:
            if request.data is None:
                raise _usage("--key, --max-failures and --executor need a dataset",
                             "pass --data rows.csv (or rows.jsonl)", "missing-data", "--data")
            return
        if not is_dataset_run(resumed):
            raise _usage(f"run {resumed.run_id} is a single run, not a dataset run",
                         "resume it without --data, --key or --max-failures", "not-a-dataset",
                         "--resume")
        if request.data is not None or request.key is not None or inputs:
            raise _usage("a resumed dataset run takes its rows and inputs from the history",
                         f"drop --data, --key and --input: dworkers run --resume "
                         f"{resumed.run_id}", "resume-with-data", "--resume")

    @classmethod
    def engine_parts(cls, resolved: Resolved, request: RunRequest
                     ) -> tuple[dict[str, StepResult] | None, StepCache | None]:
        if request.no_cache or request.mock or resolved.history is None:
            return None, None
        from dworkers.history.dataset import DatasetStepCache

        return None, DatasetStepCache(resolved.history)

    def dry_run(self) -> int:
        """The first row's prompts and the schedule; every row has been checked."""
        from dworkers import view
        from dworkers.run.single import render_prompts

        first = next(self.rows(), None)
        if first is None:
            return EXIT_OK
        view.console().print(f"dry run of row {one_line(first.key)!r} (1 of {self.total:,} "
                             "rows; every row checked)", markup=False, highlight=False)
        return render_prompts(self.engine, self.engine.resolve_inputs(first.inputs),
                              as_json=self.request.json)

    def start(self, err: Console) -> None:
        if self.executor is None:
            self.start_executor()

    def start_executor(self) -> None:
        from dworkers.executors import executor_for

        self.executor = executor_for(self.request.executor,  # Ray starts now
                                     ray_address=self.request.ray_address,
                                     offline=bool(self.request.mock))

    def recorder(self, history: History, options: dict[str, Any],
                 started: RunStarted) -> DatasetRecorder:
        """Record the run and every row before any runs; every row must be there."""
        from dworkers.history.dataset import DatasetHistory, DatasetRecorder

        resumed = self.resolved.resumed
        recorder = DatasetRecorder(history, inputs=self.resolved.inputs,
                                   resumed_from=resumed.run_id if resumed else None,
                                   options={**options, "data": self.data})
        recorder.start(started, self.rows())
        recorded = sum(DatasetHistory(history).counts(started.run_id).values())
        if recorded != self.total:  # a key the history took for another: never run silently
            raise HistoryError(f"the history recorded {recorded:,} of the dataset's "
                               f"{self.total:,} rows (two keys the history cannot tell apart?)"
                               " — report this; nothing was run")
        return recorder

    def writer(self, out_dir: Path) -> DatasetWriter:
        from dworkers.dataset.outputs import DatasetWriter

        self.dataset_writer = DatasetWriter(out_dir, self.engine.plan, data=self.data)
        return self.dataset_writer

    def view(self, err: Console, interactive: bool) -> Display:
        from dworkers.view.dataset import make_dataset_view

        self.display = make_dataset_view(interactive=interactive, quiet=self.request.quiet,
                                         out=err, total=self.total,
                                         budget_usd=self.engine.max_cost_usd)
        return self.display

    async def body(self) -> None:
        assert self.executor is not None
        rows = self.executor.run_many(self.engine, self.rows(),
                                      max_failures=self.request.max_failures)
        async for _ in rows:
            pass  # each row reaches the writer, the view and the history as an event

    def close(self) -> None:
        if self.dataset_writer is not None:
            self.dataset_writer.close()

    def outcome(self, interrupted: bool) -> DatasetResult | None:
        result = self.engine.dataset_result
        if result is not None and interrupted and not result.interrupted:
            result = result.model_copy(update={"interrupted": True})
        return result

    def print_summary(self, err: Console, outcome: DatasetResult, out_dir: Path,
                      unsaved: list[str]) -> None:
        from dworkers.run.gates import gated_steps
        from dworkers.view.dataset import print_dataset_summary

        print_dataset_summary(err, outcome, str(out_dir), unsaved,
                              gated_steps(self.engine.plan))

    def document(self, outcome: DatasetResult, out_dir: Path) -> dict[str, Any]:
        from dworkers.dataset.outputs import dataset_summary

        return {**dataset_summary(outcome), "out_dir": str(out_dir)}


def _rows(checked: Dataset) -> Iterator[Row]:
    inputs = set(checked.input_columns)
    for row in checked.rows():
        extra = {k: v for k, v in row.values.items() if k not in inputs}
        yield Row(row.key, row.inputs, extra, row.line)


__all__ = ["DatasetMode", "is_dataset_run", "resumes_dataset"]
