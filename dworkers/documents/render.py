"""What the .docx and .pdf writers share: a deliverable's sections, its brand with defaults,
and writing the file so that a reader never sees half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from dworkers.documents.blocks import xml_safe
from dworkers.documents.limits import DEFAULT_LIMITS, refuse
from dworkers.documents.safety import read_document
from dworkers.tenants.config import BrandingConfig

Section = tuple[str, str]
"""(heading, Markdown body): one step's deliverable, its name as the heading."""

DEFAULT_COLOR = "#1F3864"
_MAX_LOGO_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Look:
    """A deliverable's brand, with defaults filled in and every text made safe for XML."""

    title: str
    company: str
    color: str
    """'#RRGGBB'."""
    logo: bytes | None
    logo_path: Path | None
    template: Path | None
    dated: str

    @property
    def color_hex(self) -> str:
        return self.color.lstrip("#").upper()


def deliverable_look(title: str, branding: BrandingConfig | None,
                     dated: date | None = None) -> Look:
    """The look of a deliverable titled ``title`` for ``branding`` (resolved: absolute paths,
    see ``TenantConfig.resolved_branding``). The logo is read here, bounded, so a logo that
    disappeared since the tenant was checked is a clear error."""
    logo: bytes | None = None
    if branding is not None and branding.logo:
        path = Path(branding.logo)
        logo = read_document(path, DEFAULT_LIMITS)
        if len(logo) > _MAX_LOGO_BYTES:
            raise refuse(path, "is over 10 MB, too large for a logo", "use a smaller image",
                         "logo-too-large")
    color = branding.primary_color if branding and branding.primary_color else DEFAULT_COLOR
    return Look(
        title=xml_safe(title).strip() or "Report",
        company=xml_safe(branding.company_name if branding else "").strip(),
        color=color,
        logo=logo,
        logo_path=Path(branding.logo) if branding and branding.logo else None,
        template=Path(branding.template) if branding and branding.template else None,
        dated=(dated or date.today()).strftime("%d %B %Y").lstrip("0"),
    )


def section_headings(sections: Sequence[Section]) -> list[str]:
    return [xml_safe(heading).strip() or "Untitled" for heading, _ in sections]


def replace_file(path: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write`` on a temporary file beside ``path``, then put it in place in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        write(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
