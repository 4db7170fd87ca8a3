"""Markdown as document structure: headings, paragraphs of styled spans, bullet and numbered
lists, tables, code, quotes and rules, for the .docx and .pdf writers to lay out.

Parsed with markdown-it-py (CommonMark plus tables), which accepts any text at all: a model's
answer that is not valid Markdown becomes paragraphs, never an error. Raw HTML stays text.
Text is made safe for XML on the way in (control characters, escape sequences and lone
surrogates removed), so no answer can break a written document."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from dworkers.text import clean

if TYPE_CHECKING:
    from markdown_it import MarkdownIt
    from markdown_it.token import Token

_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_NOT_XML = re.compile(r"[\ud800-\udfff\ufffe\uffff]")


def xml_safe(text: str) -> str:
    """``text`` without what XML (and so .docx and PDF text) cannot hold."""
    return _NOT_XML.sub("", clean(text))


@dataclass(frozen=True, slots=True)
class Span:
    """A run of text in one style; ``link`` is its target, if it is a link."""

    text: str
    bold: bool = False
    italic: bool = False
    code: bool = False
    link: str = ""


Spans = tuple[Span, ...]


@dataclass(frozen=True, slots=True)
class Heading:
    level: int
    spans: Spans


@dataclass(frozen=True, slots=True)
class Paragraph:
    spans: Spans


@dataclass(frozen=True, slots=True)
class ListBlock:
    ordered: bool
    start: int
    items: list[list[Block]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TableBlock:
    """Rows of cells, the first row the header; every row as wide as the widest."""

    rows: list[list[Spans]]


@dataclass(frozen=True, slots=True)
class CodeBlock:
    text: str


@dataclass(frozen=True, slots=True)
class QuoteBlock:
    blocks: list[Block]


@dataclass(frozen=True, slots=True)
class RuleBlock:
    pass


Block = Heading | Paragraph | ListBlock | TableBlock | CodeBlock | QuoteBlock | RuleBlock


@lru_cache(maxsize=1)
def _markdown_parser() -> MarkdownIt:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])


def parse_blocks(markdown: str) -> list[Block]:
    """``markdown`` as blocks. Never raises on any text."""
    text = xml_safe(markdown)
    parser = _markdown_parser()
    tokens = parser.parse(text)
    if any(token.level >= parser.options["maxNesting"] - 1 for token in tokens):
        # Past its nesting bound markdown-it drops the rest of the text: keep every word as
        # plain paragraphs instead.
        return [Paragraph((Span(chunk.strip()),)) for chunk in _BLANK_LINE.split(text)
                if chunk.strip()]
    blocks, _ = _read_blocks(tokens, 0, "")
    return blocks


def plain_text(spans: Spans) -> str:
    return "".join(span.text for span in spans)


def _read_blocks(tokens: list[Token], index: int, closing: str) -> tuple[list[Block], int]:
    """Blocks from ``tokens[index:]`` up to the token of type ``closing``; returns them and the
    index after it."""
    blocks: list[Block] = []
    while index < len(tokens):
        token = tokens[index]
        kind = token.type
        if kind == closing:
            return blocks, index + 1
        if kind in ("heading_open", "paragraph_open"):
            inline = tokens[index + 1] if index + 1 < len(tokens) else None
            spans = _read_spans(inline) if inline is not None and inline.type == "inline" else ()
            if kind == "heading_open":
                blocks.append(Heading(int(token.tag[1:] or 1), spans))
            elif spans:
                blocks.append(Paragraph(spans))
            index += 3
        elif kind in ("bullet_list_open", "ordered_list_open"):
            block, index = _read_list(tokens, index)
            blocks.append(block)
        elif kind == "blockquote_open":
            inner, index = _read_blocks(tokens, index + 1, "blockquote_close")
            blocks.append(QuoteBlock(inner))
        elif kind in ("fence", "code_block"):
            blocks.append(CodeBlock(token.content.rstrip("\n")))
            index += 1
        elif kind == "hr":
            blocks.append(RuleBlock())
            index += 1
        elif kind == "table_open":
            table, index = _read_table(tokens, index + 1)
            blocks.append(table)
        elif kind == "inline":
            blocks.append(Paragraph(_read_spans(token)))
            index += 1
        else:
            index += 1
    return blocks, index


def _read_list(tokens: list[Token], index: int) -> tuple[ListBlock, int]:
    opening = tokens[index]
    ordered = opening.type == "ordered_list_open"
    start = opening.attrs.get("start", 1) if ordered else 1
    block = ListBlock(ordered, start if isinstance(start, int) else 1)
    closing = opening.type.replace("_open", "_close")
    index += 1
    while index < len(tokens) and tokens[index].type != closing:
        if tokens[index].type == "list_item_open":
            item, index = _read_blocks(tokens, index + 1, "list_item_close")
            block.items.append(item)
        else:
            index += 1
    return block, index + 1


def _read_table(tokens: list[Token], index: int) -> tuple[TableBlock, int]:
    rows: list[list[Spans]] = []
    while index < len(tokens) and tokens[index].type != "table_close":
        kind = tokens[index].type
        if kind == "tr_open":
            rows.append([])
        elif kind == "inline" and rows:
            rows[-1].append(_read_spans(tokens[index]))
        index += 1
    width = max((len(row) for row in rows), default=0)
    return TableBlock([row + [()] * (width - len(row)) for row in rows]), index + 1


def _read_spans(inline: Token) -> Spans:
    bold = italic = 0
    links: list[str] = []
    spans: list[Span] = []

    def append_text(text: str, code: bool = False) -> None:
        span = Span(text, bold > 0, italic > 0, code, links[-1] if links else "")
        last = spans[-1] if spans else None
        if last is not None and (last.bold, last.italic, last.code, last.link) == (
                span.bold, span.italic, span.code, span.link):
            spans[-1] = Span(last.text + text, span.bold, span.italic, span.code, span.link)
        else:
            spans.append(span)

    for child in inline.children or []:
        kind = child.type
        if kind in ("text", "html_inline"):
            append_text(child.content)
        elif kind == "code_inline":
            append_text(child.content, code=True)
        elif kind == "softbreak":
            append_text(" ")
        elif kind == "hardbreak":
            append_text("\n")
        elif kind in ("strong_open", "strong_close"):
            bold += 1 if kind == "strong_open" else -1
        elif kind in ("em_open", "em_close"):
            italic += 1 if kind == "em_open" else -1
        elif kind == "link_open":
            links.append(_link_target(child.attrs.get("href")))
        elif kind == "link_close" and links:
            links.pop()
        elif kind == "image":
            append_text(child.content)
    return tuple(span for span in spans if span.text)


def _link_target(href: Any) -> str:
    """Only web and mail links become links in a deliverable; others stay text."""
    if isinstance(href, str) and href.startswith(("http://", "https://", "mailto:")):
        return href
    return ""
