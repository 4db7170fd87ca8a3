"""``FileQueue``: file writes on a thread of their own, so the next step is not kept waiting.

A run's files are written as its steps finish, and its events arrive on the event loop: writing
there (rendering run.json, creating, writing and renaming files) held up every step's dependents
by the time it took. The queue takes each write as a job and runs it on its own thread, in the
order given. A job given a ``key`` reads the state it writes when it runs, so while one with
that key waits its turn, another is not queued: rewrites of a file (run.json after every step)
coalesce into one when steps finish faster than the disk takes them.

``flush`` waits until every job given so far has run; ``close`` also ends the thread, and a job
given after that runs at once in the caller's thread, so nothing is ever dropped. Standard
library only.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable

Job = Callable[[], None]


class FileQueue:
    """Runs jobs in order on a daemon thread started by the first one (see the module)."""

    def __init__(self, name: str = "dworkers-files") -> None:
        self.name = name
        self._jobs: deque[tuple[Hashable | None, Job]] = deque()
        self._queued_keys: set[Hashable] = set()
        self._changed = threading.Condition()
        self._running = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None  # a job that raised (a bug): kept, not lost

    def submit(self, job: Job, *, key: Hashable | None = None) -> None:
        """Run ``job`` after those given before; with a ``key``, not if a job with that key
        has not started yet (that one will do: it reads the state when it runs)."""
        with self._changed:
            if self._closed:
                run_now = True
            else:
                run_now = False
                if key is not None:
                    if key in self._queued_keys:
                        return
                    self._queued_keys.add(key)
                self._jobs.append((key, job))
                if self._thread is None:
                    self._thread = threading.Thread(target=self._work, name=self.name,
                                                    daemon=True)
                    self._thread.start()
                self._changed.notify_all()
        if run_now:
            self._run(job)

    def flush(self) -> None:
        """Wait until every job given so far has run."""
        with self._changed:
            self._changed.wait_for(lambda: not self._jobs and not self._running)

    def close(self) -> None:
        """``flush``, then end the thread; later jobs run at once in the caller's thread."""
        with self._changed:
            self._changed.wait_for(lambda: not self._jobs and not self._running)
            self._closed = True
            self._changed.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _work(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._jobs or self._closed)
                if not self._jobs:
                    return
                key, job = self._jobs.popleft()
                self._queued_keys.discard(key)
                self._running = True
            try:
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


__all__ = ["FileQueue", "Job"]
