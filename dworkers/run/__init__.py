"""``dworkers run``: one flow (``flow``) for both modes, a single run (``single``) and a
dataset run (``dataset``); ``inputs`` parses ``-i NAME=VALUE``. The CLI only parses arguments
into a ``RunRequest`` and calls ``execute``."""

from __future__ import annotations

from dworkers.run.flow import RunRequest


def execute(request: RunRequest) -> int:
    """Run a plan once, or once per row of a dataset; returns the exit code. User mistakes
    raise ``DworkersError`` before any call."""
    from dworkers.run.dataset import DatasetMode, resumes_dataset
    from dworkers.run.flow import run_flow
    from dworkers.run.single import SingleMode

    dataset = request.names_a_dataset or resumes_dataset(request.resume)
    return run_flow(request, DatasetMode if dataset else SingleMode)


__all__ = ["RunRequest", "execute"]
