"""Prompt templates: ``{name}`` placeholders filled from run inputs, ``{{``/``}}`` for braces.

This is the safe subset of Python's format syntax: a placeholder is a bare identifier. Attribute
and index access, conversions and format specs are rejected (a spec such as ``{x:>99999999}``
would let a shared plan file allocate gigabytes), so rendering is plain concatenation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True, slots=True)
class Placeholder:
    name: str
    offset: int  # index of the opening brace in the template


@dataclass(frozen=True, slots=True)
class TemplateIssue:
    message: str
    hint: str
    offset: int


@dataclass(frozen=True, slots=True)
class ParsedTemplate:
    parts: tuple[str | Placeholder, ...]
    issues: tuple[TemplateIssue, ...]

    @property
    def placeholders(self) -> list[Placeholder]:
        return [part for part in self.parts if isinstance(part, Placeholder)]

    @property
    def names(self) -> list[str]:
        """Distinct placeholder names in order of first use."""
        return list(dict.fromkeys(p.name for p in self.placeholders))


def parse(template: str) -> ParsedTemplate:
    """Split a template into literal text and placeholders, collecting every syntax issue."""
    parts: list[str | Placeholder] = []
    issues: list[TemplateIssue] = []
    literal: list[str] = []
    i, n = 0, len(template)
    while i < n:
        char = template[i]
        if char == "{":
            if i + 1 < n and template[i + 1] == "{":
                literal.append("{")
                i += 2
                continue
            close = template.find("}", i + 1)
            nested = template.find("{", i + 1)
            if close == -1 or (nested != -1 and nested < close):
                issues.append(
                    TemplateIssue(
                        "unclosed '{' in prompt_template",
                        "close the placeholder as {name}, or write '{{' for a literal brace",
                        i,
                    )
                )
                literal.append("{")
                i += 1
                continue
            field = template[i + 1 : close]
            issue = _field_issue(field, i)
            if issue:
                issues.append(issue)
            else:
                if literal:
                    parts.append("".join(literal))
                    literal = []
                parts.append(Placeholder(field, i))
            i = close + 1
        elif char == "}":
            if i + 1 < n and template[i + 1] == "}":
                literal.append("}")
                i += 2
                continue
            issues.append(
                TemplateIssue(
                    "single '}' in prompt_template",
                    "write '}}' for a literal brace, or open the placeholder with '{'",
                    i,
                )
            )
            literal.append("}")
            i += 1
        else:
            # Copy the run of ordinary characters in one slice: templates can be long.
            stop = n
            for brace in (template.find("{", i), template.find("}", i)):
                if brace != -1:
                    stop = min(stop, brace)
            literal.append(template[i:stop])
            i = stop
    if literal:
        parts.append("".join(literal))
    return ParsedTemplate(tuple(parts), tuple(issues))


def _field_issue(field: str, offset: int) -> TemplateIssue | None:
    text = "{" + field + "}"
    if not field.strip():
        return TemplateIssue(
            "empty placeholder '{}' in prompt_template",
            "name the input, e.g. {brief}, or write '{{}}' for literal braces",
            offset,
        )
    for mark, what in ((".", "attribute access"), ("[", "index access")):
        if mark in field:
            base = field.split(mark, 1)[0]
            return TemplateIssue(
                f"placeholder {text} uses {what}, which templates do not support",
                f"use a plain input name such as {{{base}}} and pass the value you need",
                offset,
            )
    for mark, what in (("!", "a conversion"), (":", "a format spec")):
        if mark in field:
            base = field.split(mark, 1)[0]
            return TemplateIssue(
                f"placeholder {text} has {what}, which templates do not support",
                f"write {{{base}}} and format the value before passing it",
                offset,
            )
    if not _IDENTIFIER.match(field):
        return TemplateIssue(
            f"placeholder {text} is not a valid input name",
            "input names are letters, digits and '_', not starting with a digit",
            offset,
        )
    return None


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill a template. Callers validate first; a missing value raises ``KeyError``."""
    parsed = parse(template)
    if parsed.issues:
        raise ValueError(parsed.issues[0].message)
    return "".join(
        values[part.name] if isinstance(part, Placeholder) else part for part in parsed.parts
    )
