"""The only module that reads YAML: plan and tenant files → models, with source positions.

Plan and tenant files are shared between people, so they are untrusted: the file size, the
nesting depth and the number of values (alias expansion included) are bounded, only YAML's safe
tags are accepted, duplicate keys are errors, and no input can raise anything but ``LoadError``,
``PlanValidationError`` or ``TenantValidationError``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from dworkers.errors import (
    LoadError,
    PlanValidationError,
    Problem,
    TenantValidationError,
    did_you_mean,
    shown,
)
from dworkers.plans.base import BasePlan, InputSpec, PlanStep, slug_suggestion, unnamed_step_id
from dworkers.types import ROLE_NAMES, SourceMap, SourcePath

if TYPE_CHECKING:
    from dworkers.tenants.config import TenantConfig

MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 500_000

_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _PlanDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    inputs: dict[str, InputSpec | None] | None = None
    steps: list[Any]


_TAG = "tag:yaml.org,2002:"
_STR, _MAP, _SEQ, _MERGE = _TAG + "str", _TAG + "map", _TAG + "seq", _TAG + "merge"
# The only tags a file may name explicitly; others (!!python/object, !!binary, !!set, ...) are
# refused before anything is constructed.
_SCALAR_TAGS = frozenset(_TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp"))
_SPACES = re.compile(" *")
_NODE_START = (yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent)


class _Located(Exception):
    """A problem found while reading, at a 1-based line and column."""

    def __init__(self, message: str, hint: str, code: str, where: tuple[int, int]) -> None:
        super().__init__(message)
        self.message, self.hint, self.code, self.where = message, hint, code, where


class _Replay:
    """An alias recorded inside an anchored value: it replays ``events[start:end]``."""

    __slots__ = ("end", "start", "start_mark")

    def __init__(self, start: int, end: int, start_mark: Any) -> None:
        self.start, self.end, self.start_mark = start, end, start_mark


def _where(event: Any) -> tuple[int, int]:
    mark = event.start_mark
    return mark.line + 1, mark.column + 1


def _short(text: str, limit: int = 40) -> str:
    text = repr(text)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


class _Reader:
    """Builds plain Python values straight from the parser's events, recording positions.

    This replaces PyYAML's composer so that every bound is enforced *while* reading: the number
    of values (alias expansion included: an alias replays the events recorded for its anchor,
    and each replayed value counts) and the nesting depth. A billion-laughs file or a huge flat
    list is refused after ``MAX_VALUES`` values instead of being composed in full first.
    Scalars are resolved with SafeLoader's implicit resolvers and built by SafeLoader's own
    constructors; only the tags in ``_SCALAR_TAGS`` (plus plain maps and sequences) exist.
    """

    def __init__(self, loader: yaml.SafeLoader, source: SourceMap, text: str) -> None:
        self.loader = loader
        self.get_event: Callable[[], Any] = loader.get_event
        self.source = source
        self.text = text
        self.budget = MAX_VALUES
        self.resolvers: dict[Any, list[tuple[str, Any]]] = loader.yaml_implicit_resolvers
        self.constructors: dict[Any, Any] = loader.yaml_constructors
        self.recorded: list[Any] = []  # live events while at least one anchor is open
        self.open: dict[int, tuple[str, int]] = {}  # id(start event) -> (anchor, first index)
        self.open_names: list[str] = []
        self.anchors: dict[str, tuple[int, int]] = {}  # anchor -> its events in ``recorded``
        self.replaying: list[Any] = []  # iterators over recorded events, innermost last
        self.alias_at: Any = None

    # -- events ------------------------------------------------------------------------

    def next(self) -> Any:
        if self.replaying:
            return next(self.replaying[-1])
        event = self.get_event()
        if isinstance(event, yaml.AliasEvent) and self.open:
            self.recorded.append(_Replay(*self._anchor(event), event.start_mark))
            return event
        if isinstance(event, _NODE_START) and event.anchor is not None:
            self.open[id(event)] = (event.anchor, len(self.recorded))
            self.open_names.append(event.anchor)
        if self.open:
            self.recorded.append(event)
        return event

    def _done(self, event: Any) -> None:
        """``event``'s value is complete: if it opened an anchor, the anchor is now defined."""
        if self.open and id(event) in self.open:
            name, first = self.open.pop(id(event))
            self.open_names.remove(name)
            self.anchors[name] = (first, len(self.recorded))

    def _anchor(self, event: Any) -> tuple[int, int]:
        if isinstance(event, _Replay):
            return event.start, event.end
        name = event.anchor
        if name in self.anchors:
            return self.anchors[name]
        if name in self.open_names:
            raise _Located(f"alias *{name} is used inside the value it refers to",
                           "a value cannot contain itself: copy the part you need",
                           "recursive-alias", _where(event))
        raise _Located(f"alias *{name} is not defined", f"define it first with '&{name}'",
                       "undefined-alias", _where(event))

    def _replay(self, event: Any, path: SourcePath) -> Any:
        """The value an alias refers to, built again at ``path``."""
        start, end = self._anchor(event)
        if not self.replaying:
            self.alias_at = event  # the alias in the file that this expansion started from
        self.replaying.append(iter(self.recorded[start:end]))
        try:
            return self.build(self.next(), path)
        finally:
            self.replaying.pop()

    # -- values ------------------------------------------------------------------------

    def document(self) -> Any:
        """The single document of the stream; ``_Located`` if there is none or more than one."""
        self.get_event()  # StreamStartEvent
        event = self.get_event()
        if isinstance(event, yaml.StreamEndEvent):
            raise _Located("file is empty", "write a YAML mapping (see the examples in plans/)",
                           "empty-file", (1, 1))
        data = self.build(self.next(), ())
        self.get_event()  # DocumentEndEvent
        event = self.get_event()
        if not isinstance(event, yaml.StreamEndEvent):
            raise _Located("file holds more than one YAML document",
                           "keep one document: remove this '---' and what follows",
                           "yaml-syntax", _where(event))
        return data

    def build(self, event: Any, path: SourcePath) -> Any:
        self.budget -= 1
        if self.budget < 0 or len(path) > MAX_DEPTH:
            self._too_big(event, path)
        mark = event.start_mark
        values = self.source.values
        if path not in values:
            values[path] = (mark.line + 1, mark.column + 1)
        kind = type(event)
        if kind is yaml.ScalarEvent:  # the common case first: this loop is the loader's cost
            if event.style or event.end_mark.line != mark.line:
                self._style(event, path)
            value = self._scalar(event)
        elif kind is yaml.MappingStartEvent:
            self._check_tag(event, _MAP, "a mapping")
            value = self._mapping(path)
        elif kind is yaml.SequenceStartEvent:
            self._check_tag(event, _SEQ, "a list")
            value = self._sequence(path)
        else:  # an alias: build the anchored value again, here
            self.source.styles.setdefault(path, "*")
            return self._replay(event, path)
        if event.anchor is not None:
            self._done(event)
        return value

    def _style(self, event: Any, path: SourcePath) -> None:
        """Record how a scalar is written, so that problems inside it (a bad placeholder in a
        template) can point at their own column: "" plain on one line, "'" or '"' quoted on
        one line without escapes, "|N" a literal block indented by N, "~" anything else."""
        style, start, end = event.style or "", event.start_mark, event.end_mark
        span = end.index - start.index
        exact = "~"
        if start.line == end.line and style in ("'", '"') and span == len(event.value) + 2:
            exact = style
        elif style == "|":
            exact = self._block_indent(start.index, event.value)
        self.source.styles.setdefault(path, exact)

    def _block_indent(self, index: int, value: str) -> str:
        text = self.text
        first = value.lstrip("\n")
        skipped = len(value) - len(first)
        line_start = text.find("\n", index) + 1
        for _ in range(skipped):  # blank lines kept at the start of the block
            line_start = text.find("\n", line_start) + 1
        if line_start <= 0 or not first:
            return "~"
        raw = _SPACES.match(text, line_start).end() - line_start  # type: ignore[union-attr]
        indent = raw - (len(first) - len(first.lstrip(" ")))
        return f"|{indent}" if indent > 0 else "~"

    def _too_big(self, event: Any, path: SourcePath) -> None:
        if self.budget < 0:
            if self.replaying:  # point at the alias in the file, not inside what it repeats
                event = self.alias_at
                raise _Located(f"file expands to more than {MAX_VALUES:,} values "
                               f"(alias *{event.anchor} here repeats too much)",
                               "simplify the file: an alias counts every value it repeats",
                               "too-large", _where(event))
            raise _Located(f"file expands to more than {MAX_VALUES:,} values",
                           "simplify the file", "too-large", _where(event))
        raise _Located(f"values nested more than {MAX_DEPTH} levels deep",
                       "flatten the structure", "too-large", _where(event))

    def _sequence(self, path: SourcePath) -> list[Any]:
        items: list[Any] = []
        while True:
            event = self.next()
            if isinstance(event, yaml.SequenceEndEvent):
                return items
            items.append(self.build(event, (*path, len(items))))

    def _mapping(self, path: SourcePath) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_at: dict[str, tuple[int, int]] = {}
        merges: list[tuple[Any, SourceMap, Any]] = []
        while True:
            event = self.next()
            if isinstance(event, yaml.MappingEndEvent):
                break
            key, where = self._key(event)
            value_event = self.next()
            if key is None:  # a merge key: '<<: *defaults'
                merges.append(self._merge_value(value_event, path))
                continue
            if key in first_at:
                raise _Located(f"duplicate key {_short(key)} (first at line {first_at[key][0]})",
                               "keep one of them", "duplicate-key", where)
            first_at[key] = where
            self.source.keys.setdefault((*path, key), where)
            result[key] = self.build(value_event, (*path, key))
        return self._merge(result, merges, path) if merges else result

    def _key(self, event: Any) -> tuple[str | None, tuple[int, int]]:
        """A mapping key as text (``None`` for a merge key) and where it is."""
        where = _where(event)
        if isinstance(event, yaml.AliasEvent | _Replay):
            start, end = self._anchor(event)
            event = self.recorded[start] if end > start else event
        if not isinstance(event, yaml.ScalarEvent):
            raise _Located("mapping keys must be plain names, not lists or mappings",
                           "write the key as a plain word followed by ':'", "invalid-key", where)
        self._check_tag(event, _STR, "a key")
        if event.tag is None and event.implicit[0] and event.value == "<<":
            return None, where
        self._done(event)
        return event.value, where

    def _scalar(self, event: Any) -> Any:
        tag = event.tag
        if tag is None or tag == "!":
            if tag is not None or not event.implicit[0]:
                return event.value  # quoted, block or '!'-tagged: always text
            value = event.value
            if value.isdigit() and value.isascii() and len(value) < 19 and (
                value[0] != "0" or value == "0"  # YAML 1.1 reads 012 as octal
            ):
                return int(value)  # the common number, without the resolver's regexes
            tag = _STR
            for candidate, pattern in self.resolvers.get(value[:1], ()):
                if pattern.match(value):
                    tag = candidate
                    break
            if tag not in _SCALAR_TAGS or tag == _STR:
                return value  # '<<', '=' and the like are plain text outside a key
        elif tag not in _SCALAR_TAGS:
            self._check_tag(event, _STR, "a value")
        if tag == _STR:
            return event.value
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
        try:
            return self.constructors[tag](self.loader, node)
        except (ValueError, TypeError, OverflowError, yaml.YAMLError) as exc:
            kind = tag.rsplit(":", 1)[-1]
            detail = str(exc).split("\n", 1)[0].split(";", 1)[0]
            raise _Located(f"invalid {kind} {_short(event.value)}: {detail}",
                           "quote it to use it as text", "invalid-value", _where(event)) from None

    def _check_tag(self, event: Any, expected: str, what: str) -> None:
        tag = event.tag
        if tag is None or tag == "!" or tag == expected or (
            expected == _STR and tag in _SCALAR_TAGS
        ):
            return
        shown = "!!" + tag[len(_TAG):] if tag.startswith(_TAG) else tag
        raise _Located(f"YAML tag {_short(shown)} is not allowed on {what}",
                       "only plain YAML is allowed: remove the '!' tag", "unsafe-tag",
                       _where(event))

    def _merge_value(self, event: Any, path: SourcePath) -> tuple[Any, SourceMap, Any]:
        """Build the value of a merge key on its own, with its positions kept apart."""
        outer, self.source = self.source, SourceMap(self.source.file)
        try:
            value = self.build(event, (*path, "<<"))
        finally:
            merged_source, self.source = self.source, outer
        parts = value if isinstance(value, list) else [value]
        if not parts or not all(isinstance(part, dict) for part in parts):
            raise _Located("'<<' must merge a mapping or a list of mappings",
                           "write '<<: *name' where '&name' marks a mapping", "invalid-merge",
                           _where(event))
        return value, merged_source, event

    def _merge(self, explicit: dict[str, Any], merges: list[tuple[Any, SourceMap, Any]],
               path: SourcePath) -> dict[str, Any]:
        """YAML merge keys: explicit keys win, then earlier merged mappings over later ones."""
        merged: dict[str, Any] = {}
        for value, merged_source, _event in merges:
            parts = value if isinstance(value, list) else [value]
            chosen: dict[str, int] = {}
            for index, part in enumerate(parts):
                for key, item in part.items():
                    if key not in explicit and key not in merged:
                        merged[key] = item
                        chosen[key] = index
            # Move the positions of the chosen values to where they now live.
            listed = isinstance(value, list)
            _relocate(merged_source.values, self.source.values, path, chosen, listed)
            _relocate(merged_source.keys, self.source.keys, path, chosen, listed)
            _relocate(merged_source.styles, self.source.styles, path, chosen, listed)
        return {**merged, **explicit}


_V = TypeVar("_V")


def _relocate(found: dict[SourcePath, _V], target: dict[SourcePath, _V], path: SourcePath,
              chosen: dict[str, int], listed: bool) -> None:
    """Positions recorded under ``(*path, "<<", [index,] key, ...)`` → ``(*path, key, ...)``,
    for the keys that were taken from that merged mapping."""
    base = len(path) + 1
    for where_path, where in found.items():
        rest = where_path[base:]
        index: str | int = 0
        if listed:
            if not rest:
                continue
            index, rest = rest[0], rest[1:]
        if rest and chosen.get(str(rest[0])) == index:
            target.setdefault((*path, *rest), where)


def read_yaml(path: Path | str, text: str | None = None) -> tuple[Any, SourceMap]:
    """Parse one YAML document into plain values and a ``SourceMap``; raise ``LoadError``.

    Only YAML's plain data types are built; every problem is located as file:line:column.
    """
    file = str(path)
    source = SourceMap(file)
    if text is None:
        text = _read_text(Path(path), file)

    def fail(message: str, hint: str, line: int | None, column: int | None,
             code: str = "yaml-syntax") -> LoadError:
        return LoadError([Problem(message, hint, code, file, line, column)])

    loader: yaml.SafeLoader | None = None
    try:
        loader = _SafeLoader(text)
        data = _Reader(loader, source, text).document()
    except _Located as exc:
        raise fail(exc.message, exc.hint, *exc.where, exc.code) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = (exc.problem or exc.context or "invalid YAML").split("\n", 1)[0]
        line = mark.line + 1 if mark else 1
        column = mark.column + 1 if mark else 1
        if "nesting depth" in what:  # libyaml's own limit, met while looking ahead
            raise fail("values nested too deeply", _syntax_hint(what), line, column,
                       "too-large") from None
        raise fail(f"invalid YAML: {what}", _syntax_hint(what), line, column) from None
    except yaml.reader.ReaderError as exc:
        line, column = _text_position(text, exc.position, in_bytes=_SafeLoader is not
                                      yaml.SafeLoader)
        raise fail(f"invalid character {chr(exc.character)!r}"
                   f" ({exc.reason})", "remove it, or save the file as plain UTF-8 text", line,
                   column, "invalid-character") from None
    except UnicodeError as exc:  # text given as a str with lone surrogates
        start = getattr(exc, "start", 0)
        raise fail("text is not valid Unicode", "save the file as UTF-8",
                   *_text_position(text, start), "not-utf8") from None
    except yaml.YAMLError as exc:
        first = str(exc).split("\n", 1)[0]
        raise fail(f"invalid YAML: {first}", "check the file is valid YAML", 1, 1) from None
    except RecursionError:
        raise fail("values nested too deeply", f"nest at most {MAX_DEPTH} levels", 1, 1,
                   "too-large") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, source


def _syntax_hint(what: str) -> str:
    if "\\t" in what or "tab" in what:
        return "indent with spaces, not tabs"
    if "nesting depth" in what:
        return f"flatten the structure: nest at most {MAX_DEPTH} levels"
    if "mapping values are not allowed" in what:
        return "quote values that contain ': ' (e.g. description: \"a: b\")"
    if "could not find expected ':'" in what:
        return "write each entry as 'key: value', and close any quote you opened"
    return "check the indentation and quoting here (quote values containing ': ' or ' #')"


def _text_position(text: str, offset: int, *, in_bytes: bool = False) -> tuple[int, int]:
    """1-based line and column of a character (or UTF-8 byte) offset into ``text``."""
    prefix = text.encode("utf-8", "surrogatepass")[:offset].decode("utf-8", "replace") \
        if in_bytes else text[:offset]
    line = prefix.count("\n") + 1
    return line, len(prefix) - (prefix.rfind("\n") + 1) + 1


def _read_text(path: Path, file: str) -> str:
    def fail(message: str, hint: str, code: str, where: tuple[int, int] | None = None
             ) -> LoadError:
        line, column = where or (None, None)
        return LoadError([Problem(message, hint, code, file, line, column)])

    try:
        if path.is_dir():
            raise fail("is a directory, not a file", "name a .yaml file", "not-a-file")
        if path.exists() and not path.is_file():  # a FIFO or a device would block or never end
            raise fail("is not a regular file", "name a .yaml file", "not-a-file")
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise fail("file not found", "check the path", "not-found") from None
    except OSError as exc:
        raise fail(f"cannot read file: {exc.strerror}", "check the path and permissions",
                   "unreadable") from None
    except ValueError:  # e.g. a NUL character in the path
        raise fail("invalid file name", "check the path", "not-found") from None
    if len(raw) > MAX_FILE_BYTES:
        line = raw.count(b"\n", 0, MAX_FILE_BYTES) + 1
        column = MAX_FILE_BYTES - raw.rfind(b"\n", 0, MAX_FILE_BYTES)
        raise fail(f"file is larger than {MAX_FILE_BYTES // 1024 // 1024} MiB "
                   "(the limit is reached here)", "split the plan or remove unused content",
                   "too-large", (line, column))
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        prefix = raw[: exc.start].decode("utf-8-sig", "replace")
        line = prefix.count("\n") + 1
        column = len(prefix) - (prefix.rfind("\n") + 1) + 1
        raise fail(f"file is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                   f"{exc.start})", "save it as UTF-8", "not-utf8", (line, column)) from None


FileKind = Literal["plan", "tenant"]


def detect_kind(data: Any) -> FileKind:
    """Plans have ``steps``; anything else with ``id`` or ``models`` is a tenant."""
    if isinstance(data, dict) and "steps" not in data and ("id" in data or "models" in data):
        return "tenant"
    return "plan"


def load_plan(path: Path | str, text: str | None = None) -> BasePlan:
    """Load and fully validate a plan file; raise with every problem found."""
    data, source = read_yaml(path, text)
    return plan_from_data(data, source)


def plan_from_data(data: Any, source: SourceMap) -> BasePlan:
    """A validated plan from loaded values; raise with every problem found, in one pass."""
    problems: list[Problem] = []
    if not isinstance(data, dict):
        raise LoadError([_not_a_mapping(source, "plan", "name, description, inputs and steps")])
    top = {key: value for key, value in data.items() if key != "steps"}
    raw_steps = data.get("steps")
    try:
        document = _PlanDocument.model_validate({**top, "steps": []})
    except ValidationError as exc:
        problems += _problems(exc, source, (), _PlanDocument, "the plan")
        document = _partial_document(top, exc, source)
    if "steps" not in data:
        problems.append(_located(source, (), "plan has no 'steps' list",
                                 "add 'steps:' with at least one step", "missing-key"))
        raw_steps = []
    elif not isinstance(raw_steps, list):
        problems.append(_located(source, ("steps",), "'steps' must be a list of steps",
                                 "write each step on its own line as '- step_id: ...'",
                                 "invalid-type"))
        raw_steps = []
    inputs = None
    if document.inputs is not None:
        inputs = {name: spec or InputSpec() for name, spec in document.inputs.items()}
    plan = BasePlan(document.name, document.description, inputs=inputs, source=source)
    for i, raw in enumerate(raw_steps):
        plan.add_step(_step(raw, i, source, problems))
    checked = plan.check()
    if problems:  # "no steps" is already said when 'steps' is missing or not a list
        checked = [p for p in checked if p.code != "no-steps" or raw_steps == data.get("steps")]
    problems += checked
    if problems:
        raise PlanValidationError(_sorted(problems))
    return plan


def _partial_document(top: dict[str, Any], exc: ValidationError, source: SourceMap) -> Any:
    """What is usable of a plan's top-level keys, so the step checks still run in this pass."""
    bad = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
    kept = {k: v for k, v in top.items() if k not in bad and k in _PlanDocument.model_fields}
    name = kept.get("name")
    if not isinstance(name, str):
        name = slug_suggestion(Path(source.file).stem) or "plan"
    try:
        return _PlanDocument.model_validate({**kept, "name": name, "steps": []})
    except ValidationError:  # pragma: no cover - every remaining key validated on its own
        return _PlanDocument.model_construct(name=name, description="", inputs=None, steps=[])


def _step(raw: Any, index: int, source: SourceMap, problems: list[Problem]) -> PlanStep:
    path: SourcePath = ("steps", index)
    if not isinstance(raw, dict):
        problems.append(_located(source, path, f"step {index + 1} must be a mapping "
                                 f"(got {_describe(raw)})",
                                 "write it as '- step_id: ...' with name, worker_role, ... "
                                 "indented below", "invalid-type"))
        return PlanStep.model_construct(step_id=unnamed_step_id(index), name="", depends_on=[])
    try:
        return PlanStep.model_validate(raw)
    except ValidationError as exc:
        step_id = raw.get("step_id")
        label = f"step {shown(step_id)}" if isinstance(step_id, str) else f"step {index + 1}"
        problems += _problems(exc, source, path, PlanStep, label)
    # Keep what is usable so the graph checks still run and report the rest in the same pass.
    depends_on = raw.get("depends_on")
    if not isinstance(depends_on, list) or not all(isinstance(d, str) for d in depends_on):
        depends_on = []
    template = raw.get("prompt_template")
    return PlanStep.model_construct(
        step_id=step_id if isinstance(step_id, str) else unnamed_step_id(index),
        name=str(raw.get("name", "")),
        depends_on=depends_on,
        prompt_template=template if isinstance(template, str) else "",
    )


def load_tenant(path: Path | str, text: str | None = None) -> TenantConfig:
    """Load and fully validate a tenant file; raise with every problem found."""
    data, source = read_yaml(path, text)
    return tenant_from_data(data, source)


def tenant_from_data(data: Any, source: SourceMap) -> TenantConfig:
    """A validated tenant from loaded values; raise with every problem found, in one pass."""
    from dworkers.tenants.config import TenantConfig  # listing plans never needs tenants

    if not isinstance(data, dict):
        raise LoadError([_not_a_mapping(source, "tenant", "id, name, context and models")])
    problems: list[Problem] = []
    try:
        tenant = TenantConfig.model_validate(data)
    except ValidationError as exc:
        problems += _problems(exc, source, (), TenantConfig, "the tenant")
        # Check what is left too (model names, allowed models), so one pass finds everything.
        try:
            tenant = TenantConfig.model_validate(_without_errors(data, exc))
        except ValidationError:
            raise TenantValidationError(_sorted(problems)) from None
    tenant._source = source
    problems += tenant.check()
    if problems:
        raise TenantValidationError(_sorted(problems))
    return tenant


def _without_errors(data: dict[str, Any], exc: ValidationError) -> dict[str, Any]:
    """``data`` minus every value pydantic rejected (copied along the way; ``id`` kept valid),
    so the rest can still be validated and checked."""
    result = dict(data)
    for error in exc.errors():
        loc = [part for part in error["loc"] if part != "[key]"]
        if error["type"] == "missing" or not loc:
            continue
        parent: Any = result
        for part in loc[:-1]:
            child = parent.get(part) if isinstance(parent, dict) else None
            if not isinstance(child, dict):
                parent = None
                break
            parent[part] = parent = dict(child)
        if isinstance(parent, dict):
            parent.pop(loc[-1], None)
    if not isinstance(result.get("id"), str):
        result["id"] = "tenant"
    return result


def load_any(path: Path | str) -> BasePlan | TenantConfig:
    data, source = read_yaml(path)
    if detect_kind(data) == "tenant":
        return tenant_from_data(data, source)
    return plan_from_data(data, source)


# --- turning pydantic's errors into located problems with a fix ---------------------------


def _located(source: SourceMap, path: SourcePath, message: str, hint: str, code: str,
             *, key: bool = False) -> Problem:
    line, column = source.at(path, key=key)
    return Problem(message, hint, code, source.file, line, column)


def _not_a_mapping(source: SourceMap, kind: str, keys: str) -> Problem:
    return _located(source, (), f"a {kind} file must be a YAML mapping",
                    f"start with top-level keys such as {keys}", "invalid-type")


def _sorted(problems: list[Problem]) -> list[Problem]:
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


def _problems(
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
            hint = (f"did you mean {guess!r}?" if guess
                    else f"allowed keys: {', '.join(allowed)}" if allowed else "remove it")
            where = owner if len(loc) == 1 else (
                f"{'.'.join(str(part) for part in loc[:-1])} of {owner}")
            found.append(_located(source, path, f"unknown key {shown(name)} in {where}", hint,
                                  "unknown-key", key=True))
        elif kind == "missing":
            inside = ".".join(str(p) for p in loc[:-1])
            message = f"{owner} is missing required key {loc[-1]!r}" + (
                f" in {inside}" if inside else "")
            found.append(_located(source, path[:-1], message, f"add '{loc[-1]}: ...'",
                                  "missing-key"))
        elif kind == "enum" or key_error:
            text = str(value)
            guess = did_you_mean(text, ROLE_NAMES) if len(text) <= 100 else None
            hint = (f"did you mean {guess!r}? " if guess else "") + (
                f"valid roles: {', '.join(ROLE_NAMES)}")
            found.append(_located(source, path, f"unknown worker role {shown(value)} in {owner}",
                                  hint, "unknown-role", key=key_error))
        elif kind in _SIGNS:
            ctx = error.get("ctx", {})
            bound = next(iter(ctx.values()), "")
            if isinstance(bound, float) and bound.is_integer():
                bound = int(bound)
            sign = _SIGNS[kind]
            hint = {"≥": f"use {bound} or more", ">": f"use more than {bound}",
                    "≤": f"use at most {bound}", "<": f"use less than {bound}"}[sign]
            found.append(_located(source, path, f"{field} must be {sign} {bound} "
                                  f"(got {_describe(value)})", hint, "out-of-range"))
        elif kind in _TYPE_WORDS:
            word, hint = _TYPE_WORDS[kind]
            if kind == "list_type" and isinstance(value, str) and len(value) <= 40:
                hint = f"write a list: [{value}]"
            found.append(_located(source, path, f"{field} must be {word} "
                                  f"(got {_describe(value)})", hint, "invalid-type"))
        else:
            found.append(_located(source, path, f"{field}: {error['msg']}",
                                  "see the format in the README", "invalid-value"))
    return found


def _describe(value: Any) -> str:
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
