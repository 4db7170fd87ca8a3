"""The text toolkit: what reaches a terminal is stripped of escapes and measured in cells."""

from __future__ import annotations

import pytest
from rich.cells import cell_len

from dworkers.text import cells, clean, crop, crop_left, fit, fit_right, has_controls, one_line

HOSTILE = "hi \x1b]0;TITLE\x07\x1b[2J\x1b[31mred\x1b[0m \x9b2Jx \x1bc\x1b(B\x08ok\x00\x7f"


def test_one_line_strips_whole_escape_sequences() -> None:
    assert one_line("  a\n\tb  \x1b[31mc\r\n") == "a b c"
    assert one_line(HOSTILE) == "hi red x ok"
    # an OSC without its terminator ends at the line's end, not at the end of the text
    assert one_line("a\x1b]0;title\nb") == "a b"


def test_clean_keeps_lines_and_tabs_but_no_control() -> None:
    assert clean("a\tb\nc\r\nd\re") == "a\tb\nc\nd\ne"
    cleaned = clean(HOSTILE)
    assert cleaned == "hi red x ok"
    assert not has_controls(cleaned)
    assert clean("plain text") == "plain text"


@pytest.mark.parametrize("text", ["日本語テキスト", "emoji 😀🎉 ok", "❤️ x", "e\u0301", "한국어",
                                  "👨\u200d👩\u200d👧 family", "plain", "Ünïcödé", "ｆｕｌｌ"])
def test_cells_agree_with_the_terminal_renderer(text: str) -> None:
    assert cells(text) == cell_len(text)


@pytest.mark.parametrize("width", range(0, 16))
@pytest.mark.parametrize("text", ["日本語テキストです", "a😀b🎉c😀d", "plain words here", "❤️❤️❤️❤️"])
def test_crop_and_fit_never_exceed_the_width(text: str, width: int) -> None:
    cropped = crop(text, width)
    assert cells(cropped) <= width
    assert cropped == text or cropped.endswith("…") or width == 0
    assert cells(fit(text, width)) == width
    assert cells(fit_right(text, width)) == width
    left = crop_left(text, width)
    assert cells(left) <= width
    assert left == text or left.startswith("…") or width == 0


def test_crop_examples() -> None:
    assert crop("abcdef", 4) == "abc…"
    assert crop("abc", 3) == "abc"
    assert crop("abc", 0) == ""
    assert crop("日本語テキスト", 7) == "日本語…"
    assert fit("日本", 6) == "日本  "
    assert fit_right("7", 3) == "  7"
    assert crop_left("the quick brown fox", 10) == "…brown fox"
