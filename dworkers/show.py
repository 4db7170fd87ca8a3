"""``dworkers show RUN [STEP|KEY]``: a recorded run from the history — a single run's steps
and outputs, or a dataset run's summary and the rows that did not succeed, or one row."""

from __future__ import annotations

import sys
from typing import Any

from dworkers.text import clean, json_text, one_line


def show_recorded_run(ref: str, step_or_key: str | None, *, as_json: bool) -> None:
    """Show a recorded run (``ref``: an id, a prefix or 'last'); for a dataset run
    ``step_or_key`` names a row, else a step. Raises ``DworkersError`` when not found."""
    from dworkers import view
    from dworkers.history import History

    if show_dataset_run(ref, step_or_key, as_json=as_json):
        return
    with History() as history:
        if step_or_key is not None:
            sys.stdout.write(clean(history.step_output(ref, step_or_key)).rstrip("\n") + "\n")
            return
        record = history.get_run(ref)
        steps = history.steps(record.run_id)
        if as_json:
            document = history.to_run_result(record.run_id).summary()
            document["files"] = record.options.get("files") or []  # what its inputs read
            view.write_stdout(json_text(document) + "\n")
            return
        events = history.replay(record.run_id)
    out = view.console(stderr=False)
    out.print(view.recorded_run(events, out.width))
    print_files_read(out, record.options)
    for step_record in steps:
        if step_record.output:
            title = one_line(f"{step_record.name or step_record.step_id} ({step_record.step_id})")
            out.print(f"\n## {title}\n", style="bold", markup=False, soft_wrap=True)
            out.print(clean(step_record.output).rstrip(), markup=False, highlight=False,
                      soft_wrap=True)


def show_dataset_run(ref: str, key: str | None, *, as_json: bool) -> bool:
    """``show RUN [KEY]`` for a dataset run: its summary and the rows that did not succeed, or
    one row with its steps and outputs. False when RUN is not a dataset run."""
    from dworkers import view
    from dworkers.history import History
    from dworkers.history.dataset import DatasetHistory
    from dworkers.view.dataset import recorded_rows, row_details
    from dworkers.view.state import fmt_cost

    with History() as history:
        record = history.get_run(ref)
        if not isinstance(record.options.get("data"), dict):
            return False
        rows = DatasetHistory(history)
        if key is not None:
            row = rows.row(record.run_id, key.strip())  # keys are kept without spaces around
            steps = rows.steps(record.run_id, row.key)
            if as_json:
                document = {**row.to_dict(), "steps": [s.to_dict() for s in steps]}
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
    cost = fmt_cost(record.cost_usd, record.cost_known)
    out.print(one_line(f"{record.plan} for {record.tenant} · run {record.run_id} "
                       f"({record.status}) · {data.get('file', '?')} · "
                       f"{cost} · {record.tokens:,} tokens"),
              markup=False, highlight=False, soft_wrap=True)
    out.print(recorded_rows(counts, failures, out.width), soft_wrap=True)
    print_files_read(out, record.options)
    more = sum(n for status, n in counts.items() if status != "succeeded") - len(failures)
    if more > 0:
        out.print(f"  … and {more:,} more", markup=False)
    out.print(f"one row: dworkers show {record.run_id} KEY · finish the rest: dworkers run "
              f"--resume {record.run_id}", style="dim", markup=False, soft_wrap=True)
    return True


MAX_FILES_SHOWN = 50


def print_files_read(out: Any, options: dict[str, Any]) -> None:
    """The files a run read for its inputs (name, size, digest), as the history keeps them."""
    files = [f for f in options.get("files") or [] if isinstance(f, dict)]
    if not files:
        return
    out.print(f"\nfiles read ({len(files):,}):", markup=False, highlight=False)
    for file in files[:MAX_FILES_SHOWN]:
        out.print("  " + one_line(f"{file.get('input', '?')}: {file.get('name', '?')} · "
                           f"{file.get('size', 0):,} bytes · sha256 "
                           f"{str(file.get('sha256', ''))[:16]}"),
                  markup=False, highlight=False, soft_wrap=True)
    if len(files) > MAX_FILES_SHOWN:
        out.print(f"  … and {len(files) - MAX_FILES_SHOWN:,} more (--json lists them all)",
                  markup=False)


__all__ = ["print_files_read", "show_dataset_run", "show_recorded_run"]
