"""Deliverables beside ``report.md``: ``--format md,docx,pdf`` on ``dworkers run`` (a run's
``report.docx`` / ``report.pdf``, a dataset row's ``rows/<key>.docx|pdf``) and
``dworkers export RUN [KEY]``, which makes them again from the history without a call. The
sections are those of ``report.md`` (``dworkers.deliverables``); the tenant's branding styles
them (``dworkers.documents``)."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
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
                        where: str = "--format") -> tuple[str, ...]:
    """The formats a run writes: ``--format`` (comma-separated, repeatable), else the
    tenant's ``formats``, else md. Refused before any call: an unknown format, or one whose
    writer (the docs extra) is not installed."""
    words = [w.strip().lower() for item in (given or []) for w in item.split(",") if w.strip()]
    if not words:
        words = list(tenant.formats or ["md"])
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
                 formats: Sequence[str]) -> None:
        self.inner = inner
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
        from dworkers.dataset.reader import safe_name

        if isinstance(event, RunFinished):
            result = event.result
            self._write(self.directory, "report", self.plan.name,
                        deliverables.plan_sections(self.plan, result.outputs), result.started_at)
        elif isinstance(event, RowFinished) and event.result.outputs:
            row = event.result
            self._write(self.directory / "rows", safe_name(row.key),
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


def export_run(ref: str, key: str | None, formats: Sequence[str], out: Path | None
               ) -> list[Path]:
    """The deliverables of recorded run ``ref`` (or of its dataset row ``key``) in
    ``formats``, written to ``out`` (default: the current folder) from the history; nothing
    is called. Returns the files written."""
    from dworkers import deliverables
    from dworkers.files import write_atomic
    from dworkers.history import History
    from dworkers.history.rows import RowHistory
    from dworkers.text import clean

    with History() as history:
        record = history.get_run(ref)
        dataset = isinstance(record.options.get("data"), dict)
        if dataset and key is None:
            raise InputError([Problem(
                f"run {record.run_id} is a dataset run: its deliverables are per row",
                f"name a row: dworkers export {record.run_id} KEY (see dworkers show "
                f"{record.run_id})", "missing-key", file="dworkers export")])
        if key is not None and not dataset:
            raise InputError([Problem(f"run {record.run_id} is a single run: it has no rows",
                                      f"drop the key: dworkers export {record.run_id}",
                                      "not-a-dataset", file="dworkers export")])
        if key is not None:
            steps = RowHistory(history).steps(record.run_id, key.strip())
            title, stem = f"{record.plan} — {key.strip()}", key.strip()
        else:
            steps = history.steps(record.run_id)
            title, stem = record.plan, "report"
    tenant = _recorded_tenant(record.tenant, record.options.get("tenant_path"))
    sections = deliverables.named_sections(
        (step.name or step.step_id, step.to_step_result()) for step in steps)
    directory = (out or Path(".")).absolute()
    from dworkers.dataset.reader import safe_name

    stem = safe_name(stem) if key is not None else stem
    dated = datetime.fromtimestamp(record.started_at).date() if record.started_at else None
    written: list[Path] = []
    if "md" in formats:
        lines = [f"# {title}", "", f"- Run: `{record.run_id}` ({record.status})",
                 f"- Tenant: {record.tenant}", "", *deliverables.markdown_lines(sections)]
        path = directory / f"{stem}.md"
        write_atomic(path, clean("\n".join(lines)).rstrip() + "\n")
        written.append(path)
    branding = tenant.resolved_branding() if tenant is not None else None
    return written + write_documents(directory, stem, title, sections, branding, formats, dated)


def _recorded_tenant(name: str, path: object) -> TenantConfig | None:
    """The tenant a run used, for its branding; None when it can no longer be found (the
    deliverables are then unbranded rather than refused)."""
    from dworkers import loader
    from dworkers.tenants.registry import tenant_registry

    try:
        if isinstance(path, str) and Path(path).is_file():
            return loader.load_tenant(path)
        return tenant_registry.get(name)
    except DworkersError:
        return None


__all__ = ["FORMATS", "DocumentsWriter", "deliverable_formats", "export_run",
           "write_documents"]
