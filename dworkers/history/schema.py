"""The history database's schema: the migrations that build it, in order, and its version.

The schema version (``PRAGMA user_version``) is the number of migrations applied; ``storage``
applies the missing ones in one transaction when it opens the file.
"""

from __future__ import annotations

from dworkers.history.tools import TOOL_CALLS_TABLE
from dworkers.results import RunStatus

RUN_STATUSES = tuple(status.value for status in RunStatus)
# How a status the tables' CHECKs predate is stored: a run waiting for approval as 'failed'
# (read back as waiting while one of its steps waits), a held or rejected step (or row) as
# 'skipped', with its reason, which says which (records.status_as_read).
STORED_STATUS = {"waiting for approval": "failed", "waiting": "skipped", "rejected": "skipped"}

# Each migration is a list of statements, applied in order inside one transaction; the schema
# version (PRAGMA user_version) is the number of migrations applied. Never edit a released
# migration: append a new one.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """
        CREATE TABLE runs (
            run_id            TEXT PRIMARY KEY,
            plan              TEXT NOT NULL,
            tenant            TEXT NOT NULL,
            inputs            TEXT NOT NULL DEFAULT '{}',
            status            TEXT NOT NULL
                              CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted')),
            started_at        REAL NOT NULL,
            finished_at       REAL,
            duration_ms       REAL,
            prompt_tokens     INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd          REAL NOT NULL DEFAULT 0,
            resumed_from      TEXT,
            options           TEXT NOT NULL DEFAULT '{}',
            pid               INTEGER,
            host              TEXT
        )
        """,
        "CREATE INDEX runs_started ON runs (started_at)",
        "CREATE INDEX runs_plan ON runs (plan, started_at)",
        """
        CREATE TABLE steps (
            run_id            TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            step_id           TEXT NOT NULL,
            position          INTEGER NOT NULL DEFAULT 0,
            name              TEXT NOT NULL DEFAULT '',
            role              TEXT NOT NULL DEFAULT '',
            depends_on        TEXT NOT NULL DEFAULT '[]',
            status            TEXT NOT NULL
                              CHECK (status IN ('pending', 'running', 'succeeded', 'failed',
                                                'skipped', 'cancelled')),
            model             TEXT,
            messages          TEXT,
            output            TEXT NOT NULL DEFAULT '',
            error             TEXT,
            attempts          INTEGER NOT NULL DEFAULT 0,
            duration_ms       REAL NOT NULL DEFAULT 0,
            prompt_tokens     INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd          REAL NOT NULL DEFAULT 0,
            cached            INTEGER NOT NULL DEFAULT 0,
            cache_key         TEXT,
            fingerprint       TEXT,
            started_at        REAL,
            finished_at       REAL,
            PRIMARY KEY (run_id, step_id)
        )
        """,
        """
        CREATE INDEX steps_cache ON steps (cache_key, finished_at)
        WHERE status = 'succeeded' AND cache_key IS NOT NULL
        """,
    ),
    # 2: dataset runs — a run's rows, and each row's steps (see history.dataset)
    (
        """
        CREATE TABLE rows (
            run_id            TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            key               TEXT NOT NULL,
            number            INTEGER NOT NULL,
            line              INTEGER,
            status            TEXT NOT NULL
                              CHECK (status IN ('pending', 'running', 'succeeded', 'failed',
                                                'skipped', 'cancelled')),
            inputs            TEXT NOT NULL DEFAULT '{}',
            extra             TEXT NOT NULL DEFAULT '{}',
            error             TEXT,
            duration_ms       REAL NOT NULL DEFAULT 0,
            prompt_tokens     INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd          REAL NOT NULL DEFAULT 0,
            started_at        REAL,
            finished_at       REAL,
            PRIMARY KEY (run_id, key)
        )
        """,
        "CREATE UNIQUE INDEX rows_order ON rows (run_id, number)",
        """
        CREATE TABLE row_steps (
            run_id            TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            row               TEXT NOT NULL,
            step_id           TEXT NOT NULL,
            position          INTEGER NOT NULL DEFAULT 0,
            status            TEXT NOT NULL
                              CHECK (status IN ('succeeded', 'failed', 'skipped', 'cancelled')),
            model             TEXT,
            output            TEXT NOT NULL DEFAULT '',
            error             TEXT,
            attempts          INTEGER NOT NULL DEFAULT 0,
            duration_ms       REAL NOT NULL DEFAULT 0,
            prompt_tokens     INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd          REAL NOT NULL DEFAULT 0,
            cached            INTEGER NOT NULL DEFAULT 0,
            cache_key         TEXT,
            fingerprint       TEXT,
            started_at        REAL,
            finished_at       REAL,
            PRIMARY KEY (run_id, row, step_id)
        )
        """,
        """
        CREATE INDEX row_steps_cache ON row_steps (cache_key, finished_at)
        WHERE status = 'succeeded' AND cache_key IS NOT NULL
        """,
    ),
    # 3: whether a cost was known, estimated, or an answer cut off
    (
        # An unknown cost is not $0, counts that include estimates say so, and a cut-off
        # answer stays marked when the run is shown again.
        "ALTER TABLE steps ADD COLUMN cost_known INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE steps ADD COLUMN estimated INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE steps ADD COLUMN truncated INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE runs ADD COLUMN cost_known INTEGER NOT NULL DEFAULT 1",
    ),
    # 4: one step-result schema (records.STEP_RESULT_COLUMNS) for a run's steps and a dataset
    # row's; the messages digest that lets a resume reuse answers whatever the endpoint; rows
    # that say what their steps' costs and answers were; and a dataset run's rows known to be
    # all on record (recorded in batches: a run killed in between is refused on resume).
    (
        "ALTER TABLE steps ADD COLUMN messages_digest TEXT",
        "ALTER TABLE row_steps ADD COLUMN cost_known INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE row_steps ADD COLUMN estimated INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE row_steps ADD COLUMN truncated INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE row_steps ADD COLUMN messages_digest TEXT",
        "ALTER TABLE rows ADD COLUMN cost_known INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE rows ADD COLUMN estimated INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE rows ADD COLUMN truncated INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE runs ADD COLUMN rows_complete INTEGER NOT NULL DEFAULT 1",
    ),
    # each MCP tool call of each step (history/tools.py)
    TOOL_CALLS_TABLE,
    # approval gates (history.approvals): each decision on a gated step — who, when, the note.
    # Held and rejected steps are stored 'skipped' with their reason (STORED_STATUS); ``row``
    # is '' for a single run, or for every row of a dataset run.
    (
        """
        CREATE TABLE approvals (
            run_id            TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            row               TEXT NOT NULL DEFAULT '',
            step_id           TEXT NOT NULL,
            decision          TEXT NOT NULL CHECK (decision IN ('approved', 'rejected')),
            decided_by        TEXT NOT NULL,
            decided_at        REAL NOT NULL,
            note              TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (run_id, row, step_id)
        )
        """,
    ),
]


def schema_version() -> int:
    """The schema version this dworkers writes."""
    return len(MIGRATIONS)

