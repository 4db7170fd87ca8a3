"""Run history in SQLite: every run and step, for ``runs``/``show``, ``--resume`` and the cache.

The package, one job per module (imports point down this list):

- ``dataset``: dataset runs — their rows and row-steps: ``DatasetRecorder``, ``DatasetHistory``
  (queries, resume rows), ``DatasetStepCache``.
- ``approvals``: ``GateHistory`` — decisions on approval gates, and the gates a run holds.
- ``recorder``: ``HistoryRecorder``, an ``on_event`` callback that records a run as it goes.
- ``writer``: ``HistoryWriter``, a run's writes on a thread of their own, patient with locks.
- ``cache``: ``HistoryCache``, the engine's step cache answered from every succeeded step.
- ``storage``: ``History``, the SQLite file: opening, upgrading, writing and querying it.
- ``resume``: which steps of an earlier run a resume reuses (pure and linear).
- ``records``: ``RunRecord``/``StepRecord``/``RowRecord`` and the table columns derived from
  them (one step-result schema for a run's steps and a dataset row's).
- ``schema``: the migrations, in order, and the schema version.
"""

from dworkers.history.cache import HistoryCache
from dworkers.history.recorder import HistoryRecorder
from dworkers.history.records import RunRecord, StepRecord
from dworkers.history.resume import ResumeDecision
from dworkers.history.schema import RUN_STATUSES, schema_version
from dworkers.history.storage import (
    AmbiguousRunError,
    History,
    HistoryLockedError,
    NoOutputError,
    ResumeInProgressError,
    RunSpending,
    history_path,
)
from dworkers.history.writer import HistoryWriter

__all__ = [
    "RUN_STATUSES",
    "AmbiguousRunError",
    "History",
    "HistoryCache",
    "HistoryLockedError",
    "HistoryRecorder",
    "HistoryWriter",
    "NoOutputError",
    "ResumeDecision",
    "ResumeInProgressError",
    "RunRecord",
    "RunSpending",
    "StepRecord",
    "history_path",
    "schema_version",
]
