"""``HistoryRecorder``: an event consumer that records a run into the history as it goes."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from dworkers.errors import HistoryError
from dworkers.events import Event, RunFinished, RunStarted, StepFinished, StepInfo, StepStarted
from dworkers.history.storage import History
from dworkers.results import RunResult


class HistoryRecorder:
    """An ``on_event`` callback that records a run into ``history`` as it goes.

    Writes happen at run start, step start (attempt 1: the rendered prompt), step finish and
    run finish — never per streamed token. A write that fails (say, the database is locked for
    longer than the busy timeout) does not stop the run: the recorder stops writing per event,
    keeps ``error``, and saves the whole run in one transaction when it finishes; if that works
    too, ``error`` is cleared. Check ``error`` after the run to warn that history was not saved.
    """

    def __init__(self, history: History, *, inputs: Mapping[str, object] | None = None,
                 resumed_from: str | None = None,
                 options: Mapping[str, Any] | None = None) -> None:
        self.history = history
        self.inputs = {str(k): str(v) for k, v in (inputs or {}).items()}
        self.resumed_from = resumed_from
        self.options = dict(options or {})
        self.run_id: str | None = None
        self.error: HistoryError | None = None
        self._steps: tuple[StepInfo, ...] = ()
        self._positions: dict[str, int] = {}
        self._messages: dict[str, tuple[dict[str, str], ...]] = {}

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.run_id, self.error = event.run_id, None
            self._steps = event.steps
            self._positions = {s.step_id: i for i, s in enumerate(event.steps)}
            self._messages = {}
            self._try(lambda: self.history.start_run(
                event.run_id, event.plan, event.tenant, inputs=self.inputs, steps=event.steps,
                started_at=time.time(), resumed_from=self.resumed_from,
                options=self.options))
        elif self.run_id is None:
            return
        elif isinstance(event, StepStarted):
            if event.attempt == 1 and event.messages:
                self._messages[event.step_id] = event.messages
                run_id = self.run_id
                self._try(lambda: self.history.start_step(
                    run_id, event.step_id, event.model, event.messages, time.time()))
        elif isinstance(event, StepFinished):
            sid = event.result.step_id
            run_id = self.run_id
            position = self._positions.get(sid, len(self._positions))
            info = self._steps[position] if position < len(self._steps) else None
            self._try(lambda: self.history.finish_step(
                run_id, event.result, self._messages.get(sid), info, position))
        elif isinstance(event, RunFinished):
            self._finish(event.result)

    def _try(self, write: Any) -> None:
        if self.error is not None:
            return  # saved in one go at the end
        try:
            write()
        except HistoryError as exc:
            self.error = exc

    def _finish(self, result: RunResult) -> None:
        result = result.model_copy(update={"inputs": result.inputs or self.inputs})
        try:
            if self.error is None:
                self.history.finish_run(result)
            else:
                self.history.save_run(result, steps=self._steps, messages=self._messages,
                                      resumed_from=self.resumed_from,
                                      options=self.options)
            self.error = None
        except HistoryError as exc:
            self.error = exc
        self._messages = {}
