"""``dworkers export RUN [KEY]``: the deliverables of an earlier run, or of one row of a
dataset run, made again from the history without a call (``report_files`` writes them)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from dworkers.errors import DworkersError, InputError, Problem
from dworkers.report_files import write_documents

if TYPE_CHECKING:
    from dworkers.tenants.config import TenantConfig


def export_run(ref: str, key: str | None, formats: Sequence[str], out: Path | None
               ) -> list[Path]:
    """The deliverables of recorded run ``ref`` (or of its dataset row ``key``) in
    ``formats``, written to ``out`` (default: the current folder) from the history; nothing
    is called. Returns the files written."""
    from dworkers import deliverables
    from dworkers.files import write_atomic
    from dworkers.history import History
    from dworkers.history.dataset import DatasetHistory
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
            steps = DatasetHistory(history).steps(record.run_id, key.strip())
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


__all__ = ["export_run"]
