"""Where dworkers keeps its own files, and writing them safely. Standard library only: every
command imports this."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def data_dir() -> Path:
    """``$DWORKERS_HOME`` if set, else the platform's per-user data directory for dworkers."""
    home = os.environ.get("DWORKERS_HOME")
    if home:
        return Path(home).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "dworkers"
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA")
        return (Path(base) if base else Path.home() / "AppData" / "Local") / "dworkers"
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore relative paths
        return Path(xdg) / "dworkers"
    return Path.home() / ".local" / "share" / "dworkers"


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any threads
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_atomic(path: Path, text: str, *, durable: bool = True) -> None:
    """Replace ``path`` with ``text`` in one step: readers (and a crash) see the old file or the
    new one, never half of one. The file gets the usual permissions (mkstemp's are 0600).
    ``durable=False`` skips the fsync (about 10 ms a file): the rename is still atomic, so a
    killed process leaves whole files; only a power cut may lose the newest version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # "replace": a model's reply may hold lone surrogates, which UTF-8 cannot encode.
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as handle:
            handle.write(text)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
