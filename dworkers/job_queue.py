"""``JobQueue``: work done on a thread of its own, so the next step is not kept waiting.

A run's events arrive on the event loop, and what consumes them there (writing the run's files,
building its trace's spans) held up every step's dependents by the time it took. A queue takes
each piece of work as a job and runs it on its own thread, in the order given. A job given a
``key`` reads the state it writes when it runs, so while one with that key waits its turn,
another is not queued: rewrites of a file (run.json after every step) coalesce into one when
steps finish faster than the disk takes them.

The thread still shares the interpreter with the event loop: a ``pace`` makes it run what has
queued up at most that often, in one go, rather than wake at every job (each wake-up takes the
interpreter from the loop, often just as it was about to send the next request).

Past ``MOST_QUEUED`` jobs waiting, ``submit`` waits for the thread to take them, so memory
stays flat when work comes faster than the thread gets through it. ``flush`` waits until every
job given so far has run; ``close`` also ends the thread, and a job
given after that runs at once in the caller's thread, so nothing is ever dropped. Standard
library only.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable

Job = Callable[[], None]
MOST_QUEUED = 10_000  # jobs waiting at most before ``submit`` waits for the thread


class JobQueue:
    """Runs jobs in order on a daemon thread started by the first one (see the module)."""

    def __init__(self, name: str, *, pace: float = 0.0) -> None:
        self.name = name
        self.pace = pace  # seconds the thread lets jobs gather before it runs them
        self._jobs: deque[tuple[Hashable | None, Job]] = deque()
        self._queued_keys: set[Hashable] = set()
        self._changed = threading.Condition()
        self._running = False
        self._waiting = 0  # callers of flush/close: the thread hurries while there are any
        self._closed = False
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None  # a job that raised (a bug): kept, not lost

    def submit(self, job: Job, *, key: Hashable | None = None) -> None:
        """Run ``job`` after those given before; with a ``key``, not if a job with that key
        has not started yet (that one will do: it reads the state when it runs)."""
        with self._changed:
            if not self._closed:
                if key is not None:
                    if key in self._queued_keys:
                        return
                    self._queued_keys.add(key)
                if len(self._jobs) >= MOST_QUEUED:  # the thread falls behind: memory stays flat
                    self._waiting += 1
                    self._changed.notify_all()
                    try:
                        self._changed.wait_for(lambda: len(self._jobs) < MOST_QUEUED)
                    finally:
                        self._waiting -= 1
                self._jobs.append((key, job))
                if self._thread is None:
                    self._thread = threading.Thread(target=self._work, name=self.name,
                                                    daemon=True)
                    self._thread.start()
                if not self.pace:
                    self._changed.notify_all()
                return
        self._run(job)

    def flush(self) -> None:
        """Wait until every job given so far has run."""
        with self._changed:
            self._drained()

    def close(self) -> None:
        """``flush``, then end the thread; later jobs run at once in the caller's thread."""
        with self._changed:
            self._drained()
            self._closed = True
            self._changed.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _drained(self) -> None:
        self._waiting += 1
        self._changed.notify_all()
        try:
            self._changed.wait_for(lambda: not self._jobs and not self._running)
        finally:
            self._waiting -= 1

    def _work(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._jobs or self._closed)
                if self.pace:  # let more gather, unless someone waits for them
                    self._changed.wait_for(lambda: self._closed or self._waiting, self.pace)
                if not self._jobs:
                    return  # closed
                batch = list(self._jobs)
                self._jobs.clear()
                self._running = True
            try:
                for key, job in batch:
                    if key is not None:
                        with self._changed:  # from now on, a rewrite comes after this one
                            self._queued_keys.discard(key)
                    self._run(job)
            finally:
                with self._changed:
                    self._running = False
                    self._changed.notify_all()

    def _run(self, job: Job) -> None:
        try:
            job()
        except Exception as exc:  # a bug in a job must not kill the thread nor hang a flush
            self.failure = self.failure or exc


__all__ = ["MOST_QUEUED", "Job", "JobQueue"]
