"""Prompt templates: ``{name}`` placeholders filled from run inputs, ``{{``/``}}`` for braces.

This is the safe subset of Python's format syntax. Index access, conversions and format specs
are rejected (a spec such as ``{x:>99999999}`` would let a shared plan file allocate gigabytes),
so rendering is plain concatenation.

Typed steps (``parse(..., typed=True)``): a placeholder is a reference as in ``when:``
conditions (see ``conditions``) — ``{brief}`` a run input, ``{triage}`` an upstream step's whole
answer (a typed step's object, an untyped step's text), ``{triage.owner.email}`` a field of a
typed step, and ``{triage.severity ?? "n/a"}`` with the value to use when the step was skipped
or the field is absent or null. Lists and objects render as indented ``key: value`` lines and
``- item`` bullets, never as Python's repr. ``check_references`` checks every reference against
the upstream steps' schemas. Without ``typed`` a placeholder is a bare input name, as before
typed steps existed.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from dworkers import conditions
from dworkers.conditions import MISSING, Issue, Scope
from dworkers.names import IDENTIFIER
from dworkers.text import crop

# NamedTuples rather than dataclasses: this module is imported by every command, and a
# dataclass costs about a millisecond to create at import time.


class Placeholder(NamedTuple):
    name: str  # the reference as written, without the default: "brief", "triage.severity"
    offset: int  # index of the opening brace in the template
    has_default: bool = False
    default: Any = None  # the value after '??'

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.name.split("."))


TemplateIssue = Issue
"""A problem in a template, ``offset`` its index in the template."""


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


def parse(template: str, typed: bool = False) -> ParsedTemplate:
    """Split a template into literal text and placeholders, collecting every syntax issue.
    ``typed``: placeholders are references with fields and defaults (see the module docs).

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
                start, _SYNTAX,
            )
            literal.append(token)
        elif token == "}":
            issue = TemplateIssue(
                "single '}' in prompt_template",
                "write '}}' for a literal brace, or open the placeholder with '{'",
                start, _SYNTAX,
            )
            literal.append(token)
        else:
            field = token[1:-1]
            found = _placeholder(field, start, typed)
            if isinstance(found, Placeholder):
                if literal:
                    parts.append("".join(literal))
                    literal = []
                parts.append(found)
            else:
                issue = found
        if issue is not None:
            if len(issues) == MAX_ISSUES:
                # Enough to act on; stop here so a hostile template costs no more.
                issues.append(
                    TemplateIssue(
                        f"more brace problems follow in this prompt_template "
                        f"(only the first {MAX_ISSUES} are shown)",
                        "fix these first; write '{{' and '}}' for literal braces",
                        start, _SYNTAX,
                    )
                )
                break
            issues.append(issue)
    if end < len(template):
        literal.append(template[end:])
    if literal:
        parts.append("".join(literal))
    return ParsedTemplate(tuple(parts), tuple(issues))


_SYNTAX = "template-syntax"
_PLAIN_NAME = "use a plain input name such as {base} and pass the value you need"
_FORMAT_FIRST = "write {base} and format the value before passing it"
_UNSUPPORTED = (  # (mark, what the placeholder does, how to fix it)
    (".", "uses attribute access", _PLAIN_NAME),
    ("[", "uses index access", _PLAIN_NAME),
    ("!", "has a conversion", _FORMAT_FIRST),
    (":", "has a format spec", _FORMAT_FIRST),
)


def _placeholder(field: str, offset: int, typed: bool) -> Placeholder | TemplateIssue:
    """The placeholder ``{field}`` at ``offset``, or what is wrong with it."""
    # Escaped, so a newline or control character inside the braces stays visible and the
    # message stays on one line.
    text = "{" + crop(repr(field)[1:-1], 40) + "}"
    if not field.strip():
        return TemplateIssue(
            "empty placeholder '{}' in prompt_template",
            "name the input, e.g. {brief}, or write '{{}}' for literal braces",
            offset, _SYNTAX,
        )
    reference = field.partition("??")[0] if typed else field
    for mark, what, fix in _UNSUPPORTED[typed:]:  # typed: '.' names a field
        if mark in reference:
            base = _base_name(reference, mark)
            return TemplateIssue(
                f"placeholder {text} {what}, which templates do not support",
                fix.format(base="{" + base + "}"),
                offset, _SYNTAX,
            )
    if typed:
        try:
            node = conditions.parse_reference(field)
        except conditions.ConditionSyntaxError as exc:
            return TemplateIssue(f"placeholder {text}: {exc.issue.message}", exc.issue.hint,
                                 offset, _SYNTAX)
        if isinstance(node, conditions.Default):
            return Placeholder(node.ref.text, offset, True, node.fallback.value)
        return Placeholder(node.text, offset)
    if not IDENTIFIER.match(field):
        return TemplateIssue(
            f"placeholder {text} is not a valid input name",
            "input names are letters, digits and '_', not starting with a digit",
            offset, _SYNTAX,
        )
    return Placeholder(field, offset)


def _base_name(field: str, mark: str) -> str:
    base = field.split(mark, 1)[0].strip()
    return base if IDENTIFIER.match(base) and len(base) <= 40 else "name"


@functools.lru_cache(maxsize=256)
def parsed_for_rendering(template: str) -> ParsedTemplate:
    """``parse(template, typed=True)``, once per template: a dataset run renders the same few
    prompts for every row (a parse is immutable, so it can be shared)."""
    return parse(template, typed=True)


def render(template: str, values: Mapping[str, Any]) -> str:
    """Fill a template. ``values``: run inputs as text, upstream steps by id (a typed step's
    parsed object, an untyped step's text; a skipped step left out). Callers validate first; a
    missing value without a default raises ``KeyError``."""
    parsed = parsed_for_rendering(template)
    if parsed.issues:
        raise ValueError(parsed.issues[0].message)
    return "".join(
        render_value(_filled(part, values)) if isinstance(part, Placeholder) else part
        for part in parsed.parts
    )


def _filled(placeholder: Placeholder, values: Mapping[str, Any]) -> Any:
    value = conditions.lookup(placeholder.path, values)
    if placeholder.has_default and (value is MISSING or value is None):
        return placeholder.default
    if value is MISSING:
        if placeholder.path[0] not in values:
            raise KeyError(placeholder.path[0])
        return None  # an optional field left out
    return value


MAX_RENDER_DEPTH = 64
"""Nesting rendered as lines; anything deeper is shown as compact JSON."""


def render_value(value: Any) -> str:
    """A value as a prompt shows it: text as is, numbers and true/false as JSON, nothing as
    '(none)', lists as '- item' lines and objects as 'key: value' lines, nested by indenting."""
    if isinstance(value, str):
        return value
    if value is None or value == [] or value == {}:
        return "(none)"
    if isinstance(value, dict | list):
        return "\n".join(_lines(value, "", 0))
    return _scalar_text(value)


def _scalar_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[]"
    if isinstance(value, dict):
        return "{}"
    return json.dumps(value, ensure_ascii=False)


def _lines(value: dict[str, Any] | list[Any], pad: str, depth: int) -> list[str]:
    if depth > MAX_RENDER_DEPTH:
        return [pad + json.dumps(value, ensure_ascii=False)]
    lines: list[str] = []
    items: list[tuple[str, Any]] = (
        [(f"{key}:", item) for key, item in value.items()] if isinstance(value, dict)
        else [("-", item) for item in value])
    for label, item in items:
        if isinstance(item, dict | list) and item:
            nested = _lines(item, pad + "  ", depth + 1)
            if label == "-" and isinstance(item, dict):  # "- key: value" on the bullet's line
                nested[0] = pad + "- " + nested[0][len(pad) + 2:]
                lines += nested
            else:
                lines += [pad + label, *nested]
        else:
            text = _scalar_text(item).replace("\n", "\n" + pad + "  ")
            lines.append(f"{pad}{label} {text}")
    return lines


def _as_placeholder(reference: str) -> str:
    """How a hint writes a reference in a template."""
    return "{" + reference + "}"


def check_references(parsed: ParsedTemplate, scope: Scope) -> list[Issue]:
    """Every placeholder of a typed template (``parse(..., typed=True)``) checked against what
    the step may read: a declared input, or an upstream step and a field its schema has
    (did-you-mean), with a default for a step that may be skipped. ``offset`` points at the
    placeholder's brace."""
    issues = []
    for placeholder in parsed.placeholders:
        _, issue = conditions.resolve_reference(placeholder.path, scope, placeholder.has_default,
                                      placeholder.offset, _as_placeholder)
        if issue is None:
            continue
        code = issue.code
        if code == "unknown-reference" and len(placeholder.path) == 1:
            code = "undeclared-input"
        where = f" in step {scope.step_id!r}" if scope.step_id else ""
        issues.append(Issue(f"placeholder {{{crop(placeholder.name, 60)}}}{where}: "
                            f"{issue.message}", issue.hint, placeholder.offset, code))
    return issues


def input_names(parsed: ParsedTemplate, step_ids: set[str] | frozenset[str]) -> list[str]:
    """The placeholders that name run inputs rather than steps, in order of first use (for a
    plan without ``inputs:``, whose required inputs are the names its templates use)."""
    return list(dict.fromkeys(p.name for p in parsed.placeholders
                              if p.path[0] not in step_ids and len(p.path) == 1))
