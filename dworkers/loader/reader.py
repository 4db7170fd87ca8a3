"""The bounded YAML reader: one untrusted file → plain values and the position of each.

Plan and tenant files are shared between people, so they are untrusted: the file size, the
nesting depth and the number of values (alias expansion included) are bounded, only YAML's safe
tags are accepted, duplicate keys are errors, and no input can raise anything but ``LoadError``.
This and the rest of ``dworkers.loader`` are the only code that imports yaml.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dworkers.errors import LoadError, shown
from dworkers.loader.problems import problem_at
from dworkers.types import SourceMap, SourcePath

MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 500_000

_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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


def _short(text: str) -> str:
    return shown(text, 40)


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

    def fail(message: str, hint: str, line: int, column: int,
             code: str = "yaml-syntax") -> LoadError:
        return LoadError([problem_at(file, (line, column), message, hint, code)])

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
        if _tab_at(text, line, column):  # YAML's own words for it vary ("cannot start any token")
            raise fail("invalid YAML: a tab in the indentation", "indent with spaces, not tabs",
                       line, column) from None
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


def _tab_at(text: str, line: int, column: int) -> bool:
    """Whether the error at ``line``:``column`` (1-based) is at a tab that indents the line."""
    lines = text.splitlines()
    if not 1 <= line <= len(lines):
        return False
    row = lines[line - 1]
    indent = row[: len(row) - len(row.lstrip(" \t"))]
    return "\t" in indent and column <= len(indent) + 1


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
        return LoadError([problem_at(file, where, message, hint, code)])

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


