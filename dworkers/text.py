"""Text on its way to a terminal: escape sequences and control characters removed, widths
measured in terminal cells (CJK and most emoji take two), and cutting to fit with '…'.

Plan files, tenant files and model answers are untrusted: anything from them that is printed
goes through ``clean`` (multi-line text) or ``one_line`` first, so it cannot move the cursor,
clear the screen or retitle the window. Pure: no I/O, no rich.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from functools import lru_cache

ELLIPSIS = "…"

# Whole escape sequences, 7-bit (ESC ...) and 8-bit (C1) forms alike, so that dropping the ESC
# never leaves "[31m" behind. A string sequence (OSC, DCS, ...) missing its terminator ends at
# the end of the line rather than swallowing the rest of the text.
_ESCAPE_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"  # CSI: colours, cursor moves
    r"|(?:\x1b[\]P^_X]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"  # OSC..
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]?"  # every other ESC sequence (ESC c, ESC (B, ESC 7, ...)
)
# C0 controls except tab and newline, DEL, and C1 controls.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACE = re.compile(r"\s+")


def has_controls(text: str) -> bool:
    """Whether ``text`` holds a control character other than tab and newline (an escape
    sequence starts with one)."""
    return _CONTROL.search(text) is not None


def first_control(text: str) -> str | None:
    """The first control character of ``text`` other than tab and newline, if any."""
    match = _CONTROL.search(text)
    return match.group() if match else None


def clean(text: str) -> str:
    """``text`` safe to print: escape sequences and control characters removed (tab and newline
    kept; a carriage return becomes a newline, so it cannot overwrite a line)."""
    if not has_controls(text):
        return text
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", _ESCAPE_SEQUENCE.sub("", text))


def one_line(text: str) -> str:
    """``clean(text)`` on one line: whitespace collapsed to single spaces, other invisible
    characters dropped, ends stripped."""
    text = _SPACE.sub(" ", clean(text))
    if not text.isprintable():
        text = "".join(c for c in text if c.isprintable())
    return text.strip()


_JOINER, _EMOJI_STYLE = "\u200d", "\ufe0f"


@lru_cache(maxsize=8192)
def _char_cells(char: str) -> int:
    code = ord(char)
    if code < 0x7F:
        return 1 if code >= 0x20 else 0
    if code < 0xA0:
        return 0
    if unicodedata.category(char) in ("Mn", "Me", "Cf") or 0x1160 <= code <= 0x11FF:
        return 0  # combining marks, joiners and variation selectors, Hangul medial vowels
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


@lru_cache(maxsize=1024)
def _widens(char: str) -> bool:
    """Whether an emoji-style selector after ``char`` makes it two cells wide (❤ → ❤️)."""
    return _char_cells(char) == 1 and unicodedata.category(char) == "So"


def _widths(text: str) -> Iterator[int]:
    """Each character's cells in context: a character joined to the one before it by a
    zero-width joiner takes none (👨‍👩‍👧 is one wide glyph), an emoji-style selector widens a
    narrow symbol."""
    joined = False
    last = ""
    for char in text:
        if joined:
            joined = False
            yield 0
        elif char == _JOINER:
            joined = True
            yield 0
        elif char == _EMOJI_STYLE:
            yield 1 if last and _widens(last) else 0
            last = ""
        else:
            width = _char_cells(char)
            last = char if width else last
            yield width


def _simple(text: str) -> bool:
    return text.isascii() and text.isprintable()


def cells(text: str) -> int:
    """How many terminal columns ``text`` takes (printed on one line)."""
    return len(text) if _simple(text) else sum(_widths(text))


def _head(text: str, width: int) -> str:
    """The longest start of ``text`` that fits in ``width`` cells."""
    if _simple(text):
        return text[:width]
    used = 0
    for index, cell in enumerate(_widths(text)):
        used += cell
        if used > width:
            return text[:index]
    return text


def _tail(text: str, width: int) -> str:
    """The longest end of ``text`` that fits in ``width`` cells."""
    if _simple(text):
        return text[-width:] if width > 0 else ""
    used = 0
    widths = list(_widths(text))
    for index in range(len(text) - 1, -1, -1):
        used += widths[index]
        if used > width:
            return text[index + 1:]
    return text


def crop(text: str, width: int) -> str:
    """``text`` in at most ``width`` cells, its end replaced by '…' when cut."""
    if width <= 0:
        return ""
    head = _head(text, width)
    if len(head) == len(text):
        return text
    return _head(head, width - 1).rstrip() + ELLIPSIS


def crop_left(text: str, width: int) -> str:
    """The last ``width`` cells of ``text``, its start replaced by '…' when cut (and a word cut
    in half dropped), for text whose end matters most, such as a streaming answer."""
    if width <= 0:
        return ""
    tail = _tail(text, width)
    if len(tail) == len(text):
        return text
    keep = _tail(tail, width - 1)
    space = keep.find(" ", 0, 16)
    if space >= 0 and text[len(text) - len(keep) - 1] != " ":  # cut inside a word: drop it
        keep = keep[space:]
    return ELLIPSIS + keep.lstrip()


def fit(text: str, width: int) -> str:
    """``text`` in exactly ``width`` cells: cropped with '…', or padded with spaces."""
    text = crop(text, width)
    return text + " " * max(width - cells(text), 0)


def fit_right(text: str, width: int) -> str:
    """As ``fit``, aligned to the right (numbers in a column)."""
    text = crop(text, width)
    return " " * max(width - cells(text), 0) + text


def json_text(data: object, indent: int | None = 2) -> str:
    """``data`` as JSON (indented, or one line for ``indent=None``) that is safe on a terminal:
    json escapes C0 controls itself, and DEL and C1 controls (which it leaves alone) are escaped
    as well."""
    text = json.dumps(data, indent=indent, ensure_ascii=False)
    return _JSON_UNESCAPED.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


_JSON_UNESCAPED = re.compile(r"[\x7f-\x9f]")  # only ever inside strings in JSON text

__all__ = [
    "ELLIPSIS",
    "cells",
    "clean",
    "crop",
    "crop_left",
    "first_control",
    "fit",
    "fit_right",
    "has_controls",
    "json_text",
    "one_line",
]
