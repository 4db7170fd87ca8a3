"""pydantic's errors → located problems, each ``file:line:col: what is wrong — how to fix``.

``problem_at`` is the one place a position becomes a ``Problem``; ``from_validation_error``
words each kind of pydantic error for a plan or tenant author, with "did you mean" for typos.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from dworkers.errors import Problem, did_you_mean, shown, suggestion
from dworkers.text import first_control
from dworkers.types import ROLE_NAMES, SourceMap, SourcePath


def problem_at(file: str, where: tuple[int | None, int | None] | None, message: str, hint: str,
               code: str) -> Problem:
    """A problem at a 1-based (line, column) of ``file``; ``None`` when the position is unknown.
    Every located problem the loader reports is made here."""
    line, column = where or (None, None)
    return Problem(message, hint, code, file, line, column)


def located(source: SourceMap, path: SourcePath, message: str, hint: str, code: str,
            *, key: bool = False) -> Problem:
    """A problem at the value (or, with ``key``, the mapping key) at ``path`` of a loaded file."""
    return problem_at(source.file, source.at(path, key=key), message, hint, code)


MAX_CONTROL_PROBLEMS = 20


def control_characters(data: Any, source: SourceMap) -> list[Problem]:
    """A problem for each text value holding a control character other than tab and newline
    (as YAML's "\\e" or "\\x1b" escapes write them): printed, an escape code could clear a
    user's screen or retitle the window, so plan and tenant files may not carry them."""
    found: list[Problem] = []
    stack: list[tuple[SourcePath, Any]] = [((), data)]
    while stack and len(found) < MAX_CONTROL_PROBLEMS:
        path, value = stack.pop()
        if isinstance(value, str):
            control = first_control(value)
            if control is not None:
                found.append(located(
                    source, path, f"control character {control!r} in "
                    f"{'.'.join(map(str, path)) or 'the file'}",
                    "remove it: escape codes and other control characters are not allowed",
                    "control-character"))
        elif isinstance(value, dict):
            stack += [((*path, key), item) for key, item in reversed(value.items())]
        elif isinstance(value, list):
            stack += [((*path, i), item) for i, item in reversed(list(enumerate(value)))]
    return found


def not_a_mapping(source: SourceMap, kind: str, keys: str) -> Problem:
    return located(source, (), f"a {kind} file must be a YAML mapping",
                    f"start with top-level keys such as {keys}", "invalid-type")


def in_order(problems: list[Problem]) -> list[Problem]:
    """By position; a value shared through an alias or merge key is reported once."""
    unique = dict.fromkeys(problems)
    return sorted(unique, key=lambda p: (p.line or 0, p.column or 0, p.code))


_TYPE_WORDS = {
    "string_type": ("text", "write text (quote it if it looks like a number, date or true/false)"),
    "int_type": ("a whole number", "write a whole number such as 2"),
    "int_parsing": ("a whole number", "write a whole number such as 2"),
    "int_from_float": ("a whole number", "write a whole number such as 2"),
    "float_type": ("a number", "write a number such as 300"),
    "float_parsing": ("a number", "write a number such as 300"),
    "finite_number": ("a finite number", "write a number such as 300"),
    "list_type": ("a list", "write a list such as [a, b]"),
    "dict_type": ("a mapping", "write indented 'key: value' lines below it"),
    "model_type": ("a mapping", "write indented 'key: value' lines below it"),
    "model_attributes_type": ("a mapping", "write indented 'key: value' lines below it"),
    "bool_type": ("true or false", "write true or false"),
    "bool_parsing": ("true or false", "write true or false"),
}
_SIGNS = {"greater_than_equal": "≥", "greater_than": ">", "less_than_equal": "≤",
          "less_than": "<"}


def from_validation_error(
    exc: ValidationError,
    source: SourceMap,
    base: SourcePath,
    model: type[BaseModel],
    owner: str,
) -> list[Problem]:
    """pydantic's errors for the object at ``base`` (``owner`` names it) as located problems."""
    found = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        key_error = bool(loc) and loc[-1] == "[key]"
        if key_error:
            loc = loc[:-1]
        path: SourcePath = (*base, *loc)
        field = ".".join(str(part) for part in loc) or "value"
        kind = error["type"]
        value = error.get("input")
        if kind == "extra_forbidden":
            name = str(loc[-1])
            allowed = _allowed_keys(model, loc[:-1])
            guess = did_you_mean(name, allowed) if len(name) <= 100 else None
            hint = (suggestion(name, guess) if guess
                    else f"allowed keys: {', '.join(allowed)}" if allowed else "remove it")
            where = owner if len(loc) == 1 else (
                f"{'.'.join(str(part) for part in loc[:-1])} of {owner}")
            found.append(located(source, path, f"unknown key {shown(name)} in {where}", hint,
                                  "unknown-key", key=True))
        elif kind == "missing":
            inside = ".".join(str(p) for p in loc[:-1])
            message = f"{owner} is missing required key {loc[-1]!r}" + (
                f" in {inside}" if inside else "")
            found.append(located(source, path[:-1], message, f"add '{loc[-1]}: ...'",
                                  "missing-key"))
        elif kind == "enum" or key_error:
            text = str(value)
            guess = did_you_mean(text, ROLE_NAMES) if len(text) <= 100 else None
            hint = (suggestion(text, guess) + " " if guess else "") + (
                f"valid roles: {', '.join(ROLE_NAMES)}")
            found.append(located(source, path, f"unknown worker role {shown(value)} in {owner}",
                                  hint, "unknown-role", key=key_error))
        elif kind in _SIGNS:
            ctx = error.get("ctx", {})
            bound = next(iter(ctx.values()), "")
            if isinstance(bound, float) and bound.is_integer():
                bound = int(bound)
            sign = _SIGNS[kind]
            hint = {"≥": f"use {bound} or more", ">": f"use more than {bound}",
                    "≤": f"use at most {bound}", "<": f"use less than {bound}"}[sign]
            found.append(located(source, path, f"{field} must be {sign} {bound} "
                                  f"(got {describe(value)})", hint, "out-of-range"))
        elif kind in _TYPE_WORDS:
            word, hint = _TYPE_WORDS[kind]
            if kind == "list_type" and isinstance(value, str) and len(value) <= 40:
                hint = f"write a list: [{value}]"
            found.append(located(source, path, f"{field} must be {word} "
                                  f"(got {describe(value)})", hint, "invalid-type"))
        else:
            said = str(error["msg"]).removeprefix("Value error, ")  # a validator's own words
            found.append(located(source, path, f"{field}: {said}",
                                  "see the format in the README", "invalid-value"))
    return found


def describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "true" if value else "false"
    return shown(value, 40)


def _allowed_keys(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The field names accepted at ``loc`` inside ``model``, for "did you mean"."""
    current: Any = model
    for part in loc:
        current = _child(current, part)
        if current is None:
            return []
    found = _model_of(current)
    return list(found.model_fields) if found is not None else []


def _child(annotation: Any, part: Any) -> Any:
    """The annotation of ``part`` (a field name, dict key or list index) inside ``annotation``."""
    import typing

    found = _model_of(annotation)
    if found is not None:
        field = found.model_fields.get(str(part))
        return field.annotation if field else None
    for option in (annotation, *typing.get_args(annotation)):
        origin = typing.get_origin(option)
        if origin is dict:
            return typing.get_args(option)[1]
        if origin is list:
            return typing.get_args(option)[0]
    return None


def _model_of(annotation: Any) -> type[BaseModel] | None:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (dict, list):
        return None
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None
