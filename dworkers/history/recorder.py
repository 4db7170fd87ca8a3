"""``HistoryRecorder``: an event consumer that records a run into the history as it goes."""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import partial
from typing import Any

from dworkers.errors import HistoryError
from dworkers.events import Event, RunFinished, RunStarted, StepFinished, StepInfo, StepStarted
from dworkers.history.storage import History
from dworkers.history.writer import PATIENCE, HistoryWriter
from dworkers.results import RunResult


class HistoryRecorder:
    """An ``on_event`` callback that records a run into ``history`` as it goes.

    Writes happen at run start, step start (attempt 1: the rendered prompt), step finish and
    run finish — never per streamed token — and off the event loop, on a ``HistoryWriter``'s
    thread, which waits on patiently while another process holds the lock. The run finishing
    waits for its writes; if some could not be made, the whole run is saved again in one
    transaction, and ``error`` is cleared when that works. Check ``error`` after the run (the
    ``RunFinished`` event) to warn that the history was not saved.
    """

    def __init__(self, history: History, *, inputs: Mapping[str, object] | None = None,
                 resumed_from: str | None = None,
                 options: Mapping[str, Any] | None = None,
                 patience: float = PATIENCE) -> None:
        self.history = history
        self.inputs = {str(k): str(v) for k, v in (inputs or {}).items()}
        self.resumed_from = resumed_from
        self.options = dict(options or {})
        self.patience = patience
        self.run_id: str | None = None
        self._writer: HistoryWriter | None = None
        self._final_error: HistoryError | None = None
        self._steps: tuple[StepInfo, ...] = ()
        self._positions: dict[str, int] = {}
        self._messages: dict[str, tuple[dict[str, str], ...]] = {}

    @property
    def error(self) -> HistoryError | None:
        """Why the run is not (wholly) in the history; ``None`` when it is, or so far."""
        if self._writer is None:
            return self._final_error
        return self._writer.error

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.close()
            self.run_id, self._final_error = event.run_id, None
            self._writer = HistoryWriter(self.history, patience=self.patience)
            self._steps = event.steps
            self._positions = {s.step_id: i for i, s in enumerate(event.steps)}
            self._messages = {}
            self._writer.submit("recording a new run", partial(
                History.put_run, run_id=event.run_id, plan=event.plan, tenant=event.tenant,
                inputs=self.inputs, steps=event.steps, started_at=time.time(),
                resumed_from=self.resumed_from, options=self.options))
        elif self.run_id is None or self._writer is None:
            return
        elif isinstance(event, StepStarted):
            if event.attempt == 1 and event.messages:
                self._messages[event.step_id] = event.messages
                self._writer.submit("recording a step start", partial(
                    History.put_step_start, run_id=self.run_id, step_id=event.step_id,
                    model=event.model, messages=event.messages, started_at=time.time()))
        elif isinstance(event, StepFinished):
            sid = event.result.step_id
            position = self._positions.get(sid, len(self._positions))
            info = self._steps[position] if position < len(self._steps) else None
            self._writer.submit("recording a step result", partial(
                History.put_step, run_id=self.run_id, result=event.result,
                messages=self._messages.get(sid), info=info, position=position))
        elif isinstance(event, RunFinished):
            self._finish(event.result)

    def _finish(self, result: RunResult) -> None:
        assert self._writer is not None
        writer = self._writer
        result = result.model_copy(update={"inputs": result.inputs or self.inputs})
        if writer.flush() is None:
            writer.submit("recording a run result", partial(History.put_run_result,
                                                             result=result))
        if writer.flush() is not None:  # something was not written: all of it, in one go
            try:
                writer.write_now("recording a run", [partial(
                    History.put_whole_run, result=result, steps=self._steps,
                    messages=self._messages, resumed_from=self.resumed_from,
                    options=self.options)])
                writer.error = None
            except HistoryError as exc:
                writer.error = exc
        self._messages = {}
        self.close()

    def flush(self) -> HistoryError | None:
        """Wait until every event so far is written (or given up); returns ``error``."""
        return self._writer.flush() if self._writer is not None else self._final_error

    def close(self) -> None:
        """Wait for the run's writes and end the writer's thread (after the run; idempotent).
        ``RunFinished`` does it; a caller whose run ended otherwise may call it."""
        if self._writer is not None:
            self._final_error = self._writer.close()
            self._writer = None
