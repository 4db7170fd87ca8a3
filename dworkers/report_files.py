"""Deliverables beside ``report.md``: ``--format md,docx,pdf`` on ``dworkers run`` writes a
run's ``report.docx`` / ``report.pdf`` and a dataset row's ``rows/<key>.docx|pdf`` from the
same sections as ``report.md`` (``dworkers.deliverables``), styled by the tenant's branding
(``dworkers.documents``)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dworkers.errors import DworkersError, InputError, Problem
from dworkers.events import Event, RowFinished, RunFinished

if TYPE_CHECKING:
    from dworkers.plans.base import BasePlan
    from dworkers.tenants.config import BrandingConfig, TenantConfig

FORMATS = ("md", "docx", "pdf")
_EXTRA_MODULES = {"docx": "docx", "pdf": "reportlab"}
_DOCS_EXTRA = "install the docs extra: pip install 'dworkers[docs]'"


def deliverable_formats(given: Sequence[str] | None, tenant: TenantConfig,
                        where: str = "--format", plan: BasePlan | None = None,
                        ) -> tuple[str, ...]:
    """The formats a run writes: ``--format`` (comma-separated, repeatable), else the plan's
    ``formats``, else the tenant's, else md. Refused before any call: an unknown format, or
    one whose writer (the docs extra) is not installed."""
    words = [w.strip().lower() for item in (given or []) for w in item.split(",") if w.strip()]
    if not words:
        words = list((plan.formats if plan else None) or tenant.formats or ["md"])
    problems = [Problem(f"unknown format {word!r}", f"use any of {', '.join(FORMATS)}, "
                        "e.g. --format md,docx", "unknown-format", file=where)
                for word in words if word not in FORMATS]
    formats = tuple(dict.fromkeys(w for w in words if w in FORMATS))
    problems += [Problem(f"writing report.{kind} needs the docs extra, which is not installed",
                         _DOCS_EXTRA, "missing-extra", file=where)
                 for kind in formats if kind in _EXTRA_MODULES
                 and importlib.util.find_spec(_EXTRA_MODULES[kind]) is None]
    if problems:
        raise InputError(problems)
    return formats


def write_documents(directory: Path, stem: str, title: str, sections: list[tuple[str, str]],
                    branding: BrandingConfig | None, formats: Sequence[str],
                    dated: date | None = None) -> list[Path]:
    """``<stem>.docx`` and/or ``<stem>.pdf`` in ``directory`` (``md`` is the caller's: its
    report holds run details besides the sections). Returns the paths written."""
    from dworkers.documents import render_docx, render_pdf

    written = []
    if "docx" in formats:
        written.append(render_docx(title, sections, branding, directory / f"{stem}.docx",
                                   dated=dated))
    if "pdf" in formats:
        written.append(render_pdf(title, sections, branding, directory / f"{stem}.pdf",
                                  dated=dated))
    return written


class DocumentsWriter:
    """An ``on_event`` callback beside a run's writer: when the run (or a dataset row)
    finishes, writes its .docx/.pdf deliverables. A deliverable that cannot be written is
    reported in ``error`` and fails the exit code, like any file of the run folder."""

    def __init__(self, inner: Any, directory: Path, plan: BasePlan, tenant: TenantConfig,
                 formats: Sequence[str], row_name: Callable[[str], str]) -> None:
        """``row_name`` is the file name (without suffix) of a dataset row's deliverables."""
        self.inner = inner
        self.row_name = row_name
        self.directory = directory
        self.plan = plan
        self.branding = tenant.resolved_branding()
        self.formats = [kind for kind in formats if kind != "md"]
        self.problems: list[str] = []

    @property
    def error(self) -> str | None:
        mine = "; ".join(self.problems[:3]) or None
        inner = self.inner.error
        return "; ".join(text for text in (inner, mine) if text) or None

    def __call__(self, event: Event) -> None:
        self.inner(event)
        if not self.formats:
            return
        from dworkers import deliverables

        if isinstance(event, RunFinished):
            result = event.result
            self._write(self.directory, "report", self.plan.name,
                        deliverables.plan_sections(self.plan, result.outputs), result.started_at)
        elif isinstance(event, RowFinished) and event.result.outputs:
            row = event.result
            self._write(self.directory / "rows", self.row_name(row.key),
                        f"{self.plan.name} — {row.key}",
                        deliverables.plan_sections(self.plan, row.outputs), None)

    def _write(self, directory: Path, stem: str, title: str,
               sections: list[tuple[str, str]], started_at: float | None) -> None:
        dated = datetime.fromtimestamp(started_at).date() if started_at else None
        try:
            write_documents(directory, stem, title, sections, self.branding, self.formats,
                            dated)
        except (OSError, DworkersError) as exc:
            if len(self.problems) < 5:
                self.problems.append(f"{directory / stem}.{'/'.join(self.formats)}: {exc}")


__all__ = ["FORMATS", "DocumentsWriter", "deliverable_formats", "write_documents"]
