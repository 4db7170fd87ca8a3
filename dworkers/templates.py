"""Prompt templates: ``{name}`` placeholders filled from run inputs, ``{{``/``}}`` for braces.

This is the safe subset of Python's format syntax: a placeholder is a bare identifier. Attribute
and index access, conversions and format specs are rejected (a spec such as ``{x:>99999999}``
would let a shared plan file allocate gigabytes), so rendering is plain concatenation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

from dworkers.names import IDENTIFIER
from dworkers.text import crop

# NamedTuples rather than dataclasses: this module is imported by every command, and a
# dataclass costs about a millisecond to create at import time.


class Placeholder(NamedTuple):
    name: str
    offset: int  # index of the opening brace in the template


class TemplateIssue(NamedTuple):
    message: str
    hint: str
    offset: int


class ParsedTemplate(NamedTuple):
    parts: tuple[str | Placeholder, ...]
    issues: tuple[TemplateIssue, ...]

    @property
    def placeholders(self) -> list[Placeholder]:
        return [part for part in self.parts if isinstance(part, Placeholder)]

    @property
    def names(self) -> list[str]:
        """Distinct placeholder names in order of first use."""
        return list(dict.fromkeys(p.name for p in self.placeholders))


MAX_ISSUES = 20
"""Syntax issues reported per template; parsing stops after one more."""


_TOKEN = re.compile(r"\{\{|\}\}|\{[^{}]*\}|[{}]")


def parse(template: str) -> ParsedTemplate:
    """Split a template into literal text and placeholders, collecting every syntax issue.

    One regular-expression scan, so linear in the template's length even for hostile input
    such as "{a{a{a...".
    """
    parts: list[str | Placeholder] = []
    issues: list[TemplateIssue] = []
    literal: list[str] = []
    end = 0
    for match in _TOKEN.finditer(template):
        start = match.start()
        if start > end:
            literal.append(template[end:start])
        end = match.end()
        token = match.group()
        issue: TemplateIssue | None = None
        if token == "{{" or token == "}}":
            literal.append(token[0])
            continue
        if token == "{":
            issue = TemplateIssue(
                "unclosed '{' in prompt_template",
                "close the placeholder as {name}, or write '{{' for a literal brace",
                start,
            )
            literal.append(token)
        elif token == "}":
            issue = TemplateIssue(
                "single '}' in prompt_template",
                "write '}}' for a literal brace, or open the placeholder with '{'",
                start,
            )
            literal.append(token)
        else:
            field = token[1:-1]
            issue = _field_issue(field, start)
            if issue is None:
                if literal:
                    parts.append("".join(literal))
                    literal = []
                parts.append(Placeholder(field, start))
        if issue is not None:
            if len(issues) == MAX_ISSUES:
                # Enough to act on; stop here so a hostile template costs no more.
                issues.append(
                    TemplateIssue(
                        f"more brace problems follow in this prompt_template "
                        f"(only the first {MAX_ISSUES} are shown)",
                        "fix these first; write '{{' and '}}' for literal braces",
                        start,
                    )
                )
                break
            issues.append(issue)
    if end < len(template):
        literal.append(template[end:])
    if literal:
        parts.append("".join(literal))
    return ParsedTemplate(tuple(parts), tuple(issues))


_PLAIN_NAME = "use a plain input name such as {base} and pass the value you need"
_FORMAT_FIRST = "write {base} and format the value before passing it"
_UNSUPPORTED = (  # (mark, what the placeholder does, how to fix it)
    (".", "uses attribute access", _PLAIN_NAME),
    ("[", "uses index access", _PLAIN_NAME),
    ("!", "has a conversion", _FORMAT_FIRST),
    (":", "has a format spec", _FORMAT_FIRST),
)


def _field_issue(field: str, offset: int) -> TemplateIssue | None:
    # Escaped, so a newline or control character inside the braces stays visible and the
    # message stays on one line.
    text = "{" + crop(repr(field)[1:-1], 40) + "}"
    if not field.strip():
        return TemplateIssue(
            "empty placeholder '{}' in prompt_template",
            "name the input, e.g. {brief}, or write '{{}}' for literal braces",
            offset,
        )
    for mark, what, fix in _UNSUPPORTED:
        if mark in field:
            base = _base_name(field, mark)
            return TemplateIssue(
                f"placeholder {text} {what}, which templates do not support",
                fix.format(base="{" + base + "}"),
                offset,
            )
    if not IDENTIFIER.match(field):
        return TemplateIssue(
            f"placeholder {text} is not a valid input name",
            "input names are letters, digits and '_', not starting with a digit",
            offset,
        )
    return None


def _base_name(field: str, mark: str) -> str:
    base = field.split(mark, 1)[0].strip()
    return base if IDENTIFIER.match(base) and len(base) <= 40 else "name"


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill a template. Callers validate first; a missing value raises ``KeyError``."""
    parsed = parse(template)
    if parsed.issues:
        raise ValueError(parsed.issues[0].message)
    return "".join(
        values[part.name] if isinstance(part, Placeholder) else part for part in parsed.parts
    )
