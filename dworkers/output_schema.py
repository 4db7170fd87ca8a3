"""Typed step answers: what ``output_schema`` may say, and checking a model's answer against it.

A step's ``output_schema`` is written in one of three forms, all normalised
(``normalise_schema``) to one JSON Schema in a supported subset:

* **JSON Schema**, inline in the plan or in a ``.json``/``.yaml`` file beside it (the loader
  reads the file and passes its data here). A mapping is read as JSON Schema when it has a
  top-level ``properties``, ``$schema``, ``$ref``, ``$defs`` or ``anyOf`` key, or a ``type``
  whose value is a JSON Schema type name (``object``, ``string`` ...).
* **The concise form**, for the common case — field names mapped to what they hold::

      severity: low|medium|high        # an enum of strings
      in_scope: bool                   # str (or text, string), int, number (or float), bool
      risk: int(1..5)                  # a range: int(1..), number(..0.5), str(..200) for length
      tags: [str]                      # a list of strings
      findings:                        # a list of objects
        - control: str
          risk: int
      owner:                           # a nested object
        name: str
        email?: str                    # '?' after a name: the field may be left out

  Every field is required unless its name ends in ``?``, and no other field is allowed.
* **A pydantic model class** (Python API only): its ``model_json_schema()``, with ``$defs`` and
  ``$ref`` resolved.

The supported JSON Schema subset: ``type`` (a name or a list of names), ``enum``, ``const``,
``anyOf``; objects with ``properties``, ``required``, ``additionalProperties`` (true, false or a
schema); strings with ``minLength``/``maxLength``; integers and numbers with ``minimum``,
``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``; arrays with ``items``, ``minItems``,
``maxItems``; local ``$ref`` into ``$defs``/``definitions`` (not recursive). Annotations
(``title``, ``description``, ``default``, ``examples``, ``format``, ``$comment`` ...) are kept for
the model and not enforced, as JSON Schema itself specifies. Any other keyword (``pattern``,
``oneOf``, ``allOf`` ...) is a located problem, never silently ignored: an answer would
otherwise be accepted that the author meant to refuse. ``pattern`` in particular is left out
because a regular expression run on every model answer could take exponential time. The top
level must be an object, so that later steps can name its fields (``{triage.severity}``).

At run time ``validate_answer`` parses and checks every answer with a small validator for this
subset (no jsonschema dependency), bounded in size and depth, and reports each error as
(JSON path, expected, got); ``reask_message`` turns them into the one re-ask a model gets.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from dworkers.errors import did_you_mean
from dworkers.names import IDENTIFIER
from dworkers.text import crop

if TYPE_CHECKING:
    from random import Random

Schema = dict[str, Any]
SourcePath = tuple[str | int, ...]

MAX_SCHEMA_DEPTH = 16
"""Nesting levels of a schema (objects in lists in objects ...)."""
MAX_SCHEMA_NODES = 2_000
"""Sub-schemas in one schema, ``$ref`` targets counted each time they are used."""
MAX_ANSWER_CHARS = 1_000_000
"""Longest answer parsed; a longer one is an error, not a slow parse."""
MAX_VALUE_DEPTH = 64
"""Deepest nesting accepted in an answer."""
MAX_MINIMUMS = {"minLength": 10_000, "minItems": 100}
"""Largest ``minLength``/``minItems`` accepted: a mock answer must be able to meet them."""
MAX_MOCK_PARTS = 50_000
"""Values built for one mock answer, beyond which the schema is refused as too big to mock."""
MAX_ERRORS = 20
"""Validation errors reported per answer."""
MAX_REASK_ANSWER_CHARS = 6_000
"""How much of a bad answer is quoted back in the re-ask."""

JSON_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "format", "$comment", "$schema", "$id",
    "deprecated", "readOnly", "writeOnly",
})
KEYWORDS = frozenset({
    "type", "enum", "const", "anyOf", "properties", "required", "additionalProperties", "items",
    "minItems", "maxItems", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "$ref", "$defs", "definitions",
})
_UNSUPPORTED_FIXES = {
    "pattern": "describe the format in 'description', or use 'enum' for a fixed set of values",
    "oneOf": "use 'anyOf'",
    "allOf": "merge the schemas into one",
    "not": "list the allowed values with 'enum'",
    "patternProperties": "name the fields under 'properties'",
    "prefixItems": "use one 'items' schema for every item",
    "uniqueItems": "check uniqueness in a later step",
}
_TYPE_WORDS = {
    "str": "string", "string": "string", "text": "string", "int": "integer",
    "integer": "integer", "float": "number", "number": "number", "bool": "boolean",
    "boolean": "boolean",
}
_RANGE = re.compile(r"(\w+)\s*\((.*)\)\Z")


class SchemaProblem(NamedTuple):
    """Something wrong in what the user wrote; ``path`` leads from the ``output_schema`` value
    (or the schema file's top) to the offending key, for ``file:line:col``."""

    path: SourcePath
    message: str
    fix: str

    @property
    def pointer(self) -> str:
        return json_path(self.path)


class AnswerError(NamedTuple):
    """One way an answer does not fit its schema."""

    path: str  # "$.findings[0].risk"
    expected: str
    got: str

    def render(self) -> str:
        return f"{self.path}: expected {self.expected}, got {self.got}"


class FieldInfo(NamedTuple):
    """A field later steps may name: its JSON types, its allowed values, and whether it may be
    absent or null (``optional``)."""

    types: frozenset[str]
    enum: tuple[Any, ...] | None
    optional: bool


def json_path(path: Sequence[str | int]) -> str:
    """``("findings", 0, "risk")`` → ``$.findings[0].risk``."""
    text = "$"
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif IDENTIFIER.match(part):
            text += f".{part}"
        else:
            text += f"[{json.dumps(part)}]"
    return text


# --- the accepted forms -------------------------------------------------------------------------


def is_schema_file(value: object) -> bool:
    """Whether an ``output_schema`` value names a schema file the loader should read."""
    return isinstance(value, str) and value.lower().endswith((".json", ".yaml", ".yml"))


def looks_like_json_schema(raw: Mapping[str, Any]) -> bool:
    """Whether a mapping is JSON Schema rather than the concise form (see the module docs)."""
    if any(key in raw for key in ("properties", "$schema", "$ref", "$defs", "anyOf")):
        return True
    kind = raw.get("type")
    return kind in JSON_TYPES or (isinstance(kind, list) and bool(kind)
                                  and all(k in JSON_TYPES for k in kind))


def normalise_schema(raw: object) -> tuple[Schema | None, list[SchemaProblem]]:
    """Any accepted form (already loaded from its file) → a self-contained JSON Schema with no
    ``$ref``; or ``None`` and every problem found, located in what the user wrote."""
    if isinstance(raw, type) and hasattr(raw, "model_json_schema"):
        return from_pydantic(raw)
    if isinstance(raw, str):
        return None, [SchemaProblem(
            (), f"output_schema {crop(raw, 60)!r} is neither a schema nor a schema file",
            "write the fields (e.g. {severity: low|medium|high}), a JSON Schema mapping, or a "
            "path ending in .json or .yaml")]
    if not isinstance(raw, Mapping):
        return None, [SchemaProblem(
            (), "output_schema must be a mapping",
            "write the fields, e.g. {severity: low|medium|high, in_scope: bool}")]
    if not looks_like_json_schema(raw):
        return concise_schema(raw)
    problems = check_schema(raw)
    if problems:
        return None, problems
    return resolve_refs(dict(raw)), []


def from_pydantic(model: type) -> tuple[Schema | None, list[SchemaProblem]]:
    """A pydantic model class's JSON Schema, normalised."""
    schema = model.model_json_schema()  # type: ignore[attr-defined]
    problems = check_schema(schema)
    if problems:
        return None, problems
    return resolve_refs(schema), []


def concise_schema(spec: Mapping[str, Any]) -> tuple[Schema | None, list[SchemaProblem]]:
    """The concise form (see the module docs) → JSON Schema."""
    problems: list[SchemaProblem] = []
    schema = _concise_object(spec, (), problems, [0])
    return (None, problems) if problems else (schema, [])


def _concise_object(spec: Mapping[Any, Any], path: SourcePath, problems: list[SchemaProblem],
                    count: list[int]) -> Schema:
    properties: Schema = {}
    required: list[str] = []
    if not spec:
        problems.append(SchemaProblem(path, "an object needs at least one field",
                                      "name its fields, e.g. {summary: str}"))
    for key, value in spec.items():
        name = str(key)
        optional = name.endswith("?")
        name = name.removesuffix("?")
        if not IDENTIFIER.match(name):
            problems.append(SchemaProblem(
                (*path, key), f"field name {crop(name, 40)!r} is not valid",
                "field names are letters, digits and '_', not starting with a digit, so that "
                "later steps can write {step.field}"))
            continue
        properties[name] = _concise_value(value, (*path, key), problems, count)
        if not optional:
            required.append(name)
    schema: Schema = {"type": "object", "properties": properties,
                      "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _concise_value(value: object, path: SourcePath, problems: list[SchemaProblem],
                   count: list[int]) -> Schema:
    count[0] += 1
    if len(path) > MAX_SCHEMA_DEPTH or count[0] > MAX_SCHEMA_NODES:
        if count[0] <= MAX_SCHEMA_NODES + 1:
            problems.append(_too_big(path))
        count[0] = MAX_SCHEMA_NODES + 2
        return {}
    if isinstance(value, Mapping):
        return _concise_object(value, path, problems, count)
    if isinstance(value, list):
        if len(value) != 1:
            problems.append(SchemaProblem(
                path, f"a list is written with one item type, not {len(value)}",
                "write [str] for a list of strings, or one '- field: type' mapping for a list "
                "of objects"))
            return {"type": "array"}
        return {"type": "array", "items": _concise_value(value[0], (*path, 0), problems, count)}
    if not isinstance(value, str) or isinstance(value, bool):
        problems.append(SchemaProblem(
            path, f"{crop(repr(value), 40)} is not a field type",
            "write a type (str, int, number, bool), an enum (low|medium|high), a list ([str]) "
            "or nested fields"))
        return {}
    return _concise_word(value.strip(), path, problems)


def _concise_word(word: str, path: SourcePath, problems: list[SchemaProblem]) -> Schema:
    if "|" in word:
        values = [v.strip() for v in word.split("|")]
        if any(not v for v in values):
            problems.append(SchemaProblem(path, f"empty value in enum {crop(word, 60)!r}",
                                          "separate the values with single '|': low|medium|high"))
        return {"type": "string", "enum": list(dict.fromkeys(v for v in values if v))}
    if word in _TYPE_WORDS:
        return {"type": _TYPE_WORDS[word]}
    ranged = _RANGE.match(word)
    if ranged and _TYPE_WORDS.get(ranged.group(1)) in ("integer", "number", "string"):
        bounds = ranged.group(2).split("..")
        if len(bounds) == 2:
            return _concise_range(_TYPE_WORDS[ranged.group(1)], bounds[0].strip(),
                                  bounds[1].strip(), path, problems)
        problems.append(SchemaProblem(path, f"range {crop(ranged.group(2), 40)!r} has no "
                                      "'..' between its bounds",
                                      "write a range as int(1..5), number(0..1) or str(..200)"))
        return {}
    guess = did_you_mean(word.lower(), list(_TYPE_WORDS))
    problems.append(SchemaProblem(
        path, f"unknown field type {crop(word, 40)!r}",
        (f"did you mean {guess!r}? " if guess else "")
        + "types are str, int, number, bool; an enum is written low|medium|high"))
    return {}


def _concise_range(kind: str, low: str, high: str, path: SourcePath,
                   problems: list[SchemaProblem]) -> Schema:
    bounds: list[float | int | None] = []
    for text in (low, high):
        try:
            number = None if not text else (int(text) if kind != "number" else float(text))
        except ValueError:
            number = None
            problems.append(SchemaProblem(path, f"range bound {text!r} is not a "
                                          f"{'whole ' if kind != 'number' else ''}number",
                                          "write a range as int(1..5), number(0..1) or "
                                          "str(..200)"))
        if isinstance(number, float) and not math.isfinite(number):
            problems.append(SchemaProblem(path, f"range bound {text!r} is not finite",
                                          "write a finite number"))
            number = None
        bounds.append(number)
    low_bound, high_bound = bounds
    if low_bound is not None and high_bound is not None and low_bound > high_bound:
        problems.append(SchemaProblem(path, f"range {low}..{high} is empty",
                                      "write the smaller bound first"))
    names = ("minLength", "maxLength") if kind == "string" else ("minimum", "maximum")
    schema: Schema = {"type": kind}
    for name, bound in zip(names, bounds, strict=True):
        if bound is not None:
            if kind == "string" and bound < 0:
                problems.append(SchemaProblem(path, "a length cannot be negative",
                                              "write str(..200) or str(1..200)"))
            schema[name] = bound
    return schema


# --- checking a JSON Schema ---------------------------------------------------------------------


def _too_big(path: SourcePath) -> SchemaProblem:
    return SchemaProblem(path, f"output_schema is nested deeper than {MAX_SCHEMA_DEPTH} levels "
                         f"or has more than {MAX_SCHEMA_NODES} parts",
                         "simplify it: a later step can ask for the details")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | bool) or _is_number(value)


def check_schema(schema: object) -> list[SchemaProblem]:
    """Every problem in a JSON Schema: keywords outside the supported subset, malformed
    values, contradictions (``minimum`` above ``maximum``), unknown or recursive ``$ref``s, and a
    top level that is not an object. Paths lead into ``schema`` as written."""
    if not isinstance(schema, Mapping):
        return [SchemaProblem((), "a JSON Schema must be a mapping",
                              "write e.g. {type: object, properties: {...}}")]
    checker = _SchemaChecker(schema)
    checker.node(schema, (), 0)
    for key in ("$defs", "definitions"):
        defs = schema.get(key)
        if defs is not None and not isinstance(defs, Mapping):
            checker.add((key,), f"'{key}' must map names to schemas", "")
        elif defs:
            for name, sub in defs.items():
                checker.node(sub, (key, name), 1)
    if not checker.problems:
        try:
            root = resolve_refs(dict(schema))
        except _TooBig:
            return [SchemaProblem((), f"output_schema expands to more than {MAX_SCHEMA_NODES} "
                                  "parts through its $refs", "simplify it")]
        if root.get("type") != "object":
            checker.add((), "the top level of output_schema must be an object",
                        "wrap the value in a field: {type: object, properties: {value: ...}, "
                        "required: [value]}")
    return checker.problems


class _SchemaChecker:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.problems: list[SchemaProblem] = []
        self.count = 0

    def add(self, path: SourcePath, message: str, fix: str) -> None:
        if len(self.problems) < MAX_ERRORS:
            self.problems.append(SchemaProblem(path, message, fix))

    def node(self, node: object, path: SourcePath, depth: int) -> None:
        self.count += 1
        if depth > MAX_SCHEMA_DEPTH or self.count > MAX_SCHEMA_NODES:
            if self.count <= MAX_SCHEMA_NODES + 1:
                self.add(path, *_too_big(path)[1:])
            self.count = MAX_SCHEMA_NODES + 2
            return
        if not isinstance(node, Mapping):
            self.add(path, f"a schema must be a mapping, not {crop(repr(node), 40)}",
                     "write e.g. {type: string}")
            return
        for key in node:
            if key in KEYWORDS or key in ANNOTATIONS:
                continue
            if key in ("$defs", "definitions") and path:
                self.add((*path, key), f"'{key}' is only supported at the top of the schema",
                         "move it to the top level")
                continue
            text = str(key)
            fix = _UNSUPPORTED_FIXES.get(text)
            guess = None if fix else did_you_mean(text, sorted(KEYWORDS | ANNOTATIONS))
            self.add((*path, key), f"keyword {crop(text, 40)!r} is not supported in "
                     "output_schema",
                     fix or (f"did you mean {guess!r}?" if guess else
                             "remove it; supported: type, enum, const, anyOf, properties, "
                             "required, additionalProperties, items, min/maxItems, "
                             "min/maxLength, minimum, maximum, exclusiveMinimum/Maximum, $ref"))
        if "$ref" in node:
            self.ref(node["$ref"], (*path, "$ref"))
        self.types(node, path)
        self.values(node, path)
        self.bounds(node, path)
        self.children(node, path, depth)

    def ref(self, ref: object, path: SourcePath) -> None:
        target = _ref_target(self.root, ref)
        if target is None:
            self.add(path, f"$ref {crop(repr(ref), 60)} names no schema under $defs",
                     "write '#/$defs/Name' with Name defined under '$defs' at the top")
        elif _ref_is_recursive(self.root, str(ref)):
            self.add(path, f"$ref {ref!r} is recursive, which output_schema does not support",
                     "limit the nesting to a fixed depth")

    def types(self, node: Mapping[str, Any], path: SourcePath) -> None:
        kind = node.get("type")
        if kind is None:
            return
        kinds = kind if isinstance(kind, list) else [kind]
        if not kinds:
            self.add((*path, "type"), "'type' is an empty list", "name at least one type")
        for i, name in enumerate(kinds):
            where = (*path, "type", i) if isinstance(kind, list) else (*path, "type")
            if name not in JSON_TYPES:
                guess = _TYPE_WORDS.get(str(name)) or did_you_mean(str(name), JSON_TYPES)
                self.add(where, f"type {crop(repr(name), 40)} is not a JSON Schema type",
                         f"did you mean {guess!r}?" if guess else
                         "use one of: " + ", ".join(JSON_TYPES))
        if isinstance(kind, list) and len(set(map(str, kinds))) != len(kinds):
            self.add((*path, "type"), "'type' lists a type twice", "list each type once")

    def values(self, node: Mapping[str, Any], path: SourcePath) -> None:
        if "enum" in node:
            enum = node["enum"]
            if not isinstance(enum, list) or not enum:
                self.add((*path, "enum"), "'enum' must be a non-empty list of values",
                         "write e.g. enum: [low, medium, high]")
            else:
                for i, value in enumerate(enum):
                    if not _is_scalar(value):
                        self.add((*path, "enum", i), "enum values must be text, numbers, "
                                 "true, false or null", "list plain values")
                if all(map(_is_scalar, enum)) and not any(_fits_rest(v, node) for v in enum):
                    self.add((*path, "enum"), "no enum value has the declared type and limits",
                             "make the values match 'type' (and its limits), or remove 'type'")
        if "const" in node:
            if not _is_scalar(node["const"]):
                self.add((*path, "const"), "'const' must be text, a number, true, false or null",
                         "write a plain value")
            elif not _fits_rest(node["const"], node):
                self.add((*path, "const"), "'const' does not have the declared type and limits",
                         "make them agree")
        if "anyOf" in node:
            options = node["anyOf"]
            if not isinstance(options, list) or not options:
                self.add((*path, "anyOf"), "'anyOf' must be a non-empty list of schemas",
                         "write e.g. anyOf: [{type: string}, {type: 'null'}]")
            beside = sorted(k for k in node if k in KEYWORDS and k not in ("anyOf", "$defs",
                                                                         "definitions"))
            if beside:
                self.add((*path, beside[0]), f"'{beside[0]}' beside 'anyOf' is not supported",
                         "move it into each option of 'anyOf'")

    def bounds(self, node: Mapping[str, Any], path: SourcePath) -> None:
        for low, high in (("minLength", "maxLength"), ("minItems", "maxItems")):
            for key in (low, high):
                if key in node and not _is_count(node[key]):
                    self.add((*path, key), f"'{key}' must be a whole number ≥ 0",
                             f"write e.g. {key}: 1")
            limit = MAX_MINIMUMS[low]
            if _is_count(node.get(low)) and node[low] > limit:
                self.add((*path, low), f"'{low}' {node[low]} is over the limit of {limit}",
                         "ask for less; a later step can ask for more")
            if _is_count(node.get(low)) and _is_count(node.get(high)) and node[low] > node[high]:
                self.add((*path, low), f"'{low}' {node[low]} is above '{high}' {node[high]}",
                         "nothing could satisfy both; swap or fix them")
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in node and not _is_number(node[key]):
                self.add((*path, key), f"'{key}' must be a number", f"write e.g. {key}: 0")
        if _number_range_is_empty(node):
            self.add(path, "no number satisfies its minimum and maximum together",
                     "widen the range")

    def children(self, node: Mapping[str, Any], path: SourcePath, depth: int) -> None:
        properties = node.get("properties")
        if properties is not None:
            if not isinstance(properties, Mapping):
                self.add((*path, "properties"), "'properties' must map field names to schemas",
                         "write e.g. properties: {severity: {type: string}}")
                properties = {}
            for name, sub in properties.items():
                self.node(sub, (*path, "properties", name), depth + 1)
        required = node.get("required")
        if required is not None:
            if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
                self.add((*path, "required"), "'required' must be a list of field names",
                         "write e.g. required: [severity]")
            else:
                properties = properties or {}
                known = list(properties)
                for i, name in enumerate(required):
                    if name not in properties:
                        guess = did_you_mean(name, known)
                        self.add((*path, "required", i),
                                 f"required field {crop(name, 40)!r} is not under 'properties'",
                                 f"did you mean {guess!r}?" if guess else
                                 "declare it under 'properties' or remove it")
        extra = node.get("additionalProperties")
        if extra is not None and not isinstance(extra, bool):
            self.node(extra, (*path, "additionalProperties"), depth + 1)
        if "items" in node:
            if isinstance(node["items"], list):
                self.add((*path, "items"), "a list of item schemas (tuple form) is not "
                         "supported", "use one schema for every item")
            else:
                self.node(node["items"], (*path, "items"), depth + 1)
        options = node.get("anyOf")
        if isinstance(options, list):
            for i, sub in enumerate(options):
                self.node(sub, (*path, "anyOf", i), depth + 1)


def _fits_rest(value: object, node: Mapping[str, Any]) -> bool:
    """Whether a value listed in ``enum``/``const`` meets the rest of its schema node."""
    rest = {k: v for k, v in node.items() if k in KEYWORDS and k not in (
        "enum", "const", "anyOf", "$ref", "$defs", "definitions")}
    return not validate_value(value, rest)[1]


def _declared_types(node: Mapping[str, Any]) -> frozenset[str] | None:
    kind = node.get("type")
    if kind is None:
        return None
    return frozenset(kind if isinstance(kind, list) else [kind])


def _number_range_is_empty(node: Mapping[str, Any]) -> bool:
    low, low_open = _bound(node, "minimum", "exclusiveMinimum", max)
    high, high_open = _bound(node, "maximum", "exclusiveMaximum", min)
    if low is not None and high is not None and (
            low > high or (low == high and (low_open or high_open))):
        return True
    if _declared_types(node) == frozenset({"integer"}):
        first, last = _integer_range(node)
        return first is not None and last is not None and first > last
    return False


def _integer_range(node: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The smallest and largest whole numbers the bounds of ``node`` allow."""
    low, low_open = _bound(node, "minimum", "exclusiveMinimum", max)
    high, high_open = _bound(node, "maximum", "exclusiveMaximum", min)
    first = None if low is None else (math.floor(low) + 1 if low_open else math.ceil(low))
    last = None if high is None else (math.ceil(high) - 1 if high_open else math.floor(high))
    return first, last


def _bound(node: Mapping[str, Any], closed: str, open_: str,
           pick: Any) -> tuple[float | None, bool]:
    """The tighter of a closed and an open bound, and whether it is the open one."""
    candidates = [(node[k], k == open_) for k in (closed, open_) if _is_number(node.get(k))]
    if not candidates:
        return None, False
    value = pick(v for v, _ in candidates)
    return value, any(o for v, o in candidates if v == value)


def _ref_target(root: Mapping[str, Any], ref: object) -> Any:
    """The schema a local ``$ref`` names (``#/$defs/Name``), or ``None``. Any other reference,
    ``#`` itself included (always recursive), names nothing here."""
    if not isinstance(ref, str):
        return None
    for prefix in ("#/$defs/", "#/definitions/"):
        if ref.startswith(prefix):
            defs = root.get(prefix[2:-1])
            name = ref[len(prefix):]
            if isinstance(defs, Mapping) and name in defs:
                return defs[name]
    return None


def _refs_in(node: object, depth: int = 0) -> list[str]:
    """The ``$ref`` strings anywhere in ``node`` (bounded like every schema walk)."""
    if depth > MAX_SCHEMA_DEPTH:
        return []
    found: list[str] = []
    if isinstance(node, Mapping):
        if isinstance(node.get("$ref"), str):
            found.append(node["$ref"])
        for key, value in node.items():
            if key not in ("$defs", "definitions"):
                found += _refs_in(value, depth + 1)
    elif isinstance(node, list):
        for value in node:
            found += _refs_in(value, depth + 1)
    return found


def _ref_is_recursive(root: Mapping[str, Any], start: str) -> bool:
    seen: set[str] = set()
    stack = [start]
    while stack:
        ref = stack.pop()
        target = _ref_target(root, ref)
        for inner in _refs_in(target):
            if inner == start:
                return True
            if inner not in seen and len(seen) < MAX_SCHEMA_NODES:
                seen.add(inner)
                stack.append(inner)
    return False


class _TooBig(Exception):
    """A schema whose ``$ref``s expand beyond ``MAX_SCHEMA_NODES`` parts."""


def resolve_refs(schema: Mapping[str, Any]) -> Schema:
    """``schema`` with every local ``$ref`` replaced by its target and ``$defs`` dropped.
    Call it on a schema ``check_schema`` passed (so refs exist, are not recursive, and do not
    expand beyond ``MAX_SCHEMA_NODES`` parts: raises ``_TooBig`` otherwise)."""
    budget = [MAX_SCHEMA_NODES]

    def inline(node: Any, depth: int) -> Any:
        if depth > MAX_SCHEMA_DEPTH * 2 or not isinstance(node, Mapping):
            return node
        budget[0] -= 1
        if budget[0] < 0:
            raise _TooBig
        if "$ref" in node:
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return {**inline(_ref_target(schema, node["$ref"]), depth + 1),
                    **inline(rest, depth + 1)}
        result = {k: v for k, v in node.items() if k not in ("$defs", "definitions")}
        if isinstance(node.get("properties"), Mapping):
            result["properties"] = {name: inline(sub, depth + 1)
                                    for name, sub in node["properties"].items()}
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), Mapping):
                result[key] = inline(node[key], depth + 1)
        if isinstance(node.get("anyOf"), list):
            result["anyOf"] = [inline(sub, depth + 1) for sub in node["anyOf"]]
        return result

    resolved: Schema = inline(schema, 0)
    return resolved


# --- fields later steps may name ----------------------------------------------------------------


def fields(schema: Mapping[str, Any]) -> dict[str, FieldInfo]:
    """Every dotted path a later step may name (``severity``, ``owner.email``) with its types
    and allowed values. Paths go through objects only: a list is read whole."""
    found: dict[str, FieldInfo] = {}
    _collect_fields(schema, "", False, found, 0)
    return found


def _branches(schema: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    options = schema.get("anyOf")
    if isinstance(options, list):
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        return [b for o in options for b in _branches({**rest, **o})]
    return [schema]


def field_info(schema: Mapping[str, Any], optional: bool = False) -> FieldInfo:
    """The types and allowed values of one (sub-)schema."""
    types: set[str] = set()
    enum: list[Any] | None = []
    for branch in _branches(schema):
        values = branch.get("enum", [branch["const"]] if "const" in branch else None)
        declared = _declared_types(branch)
        if values is None:
            enum = None
            types |= declared if declared is not None else set(JSON_TYPES)
        else:
            values = [v for v in values if declared is None or json_types(v) & declared]
            if enum is not None:
                enum += [v for v in values if v not in enum]
            types |= {t for v in values for t in json_types(v)}
    if "integer" in types:
        types.add("number")
    return FieldInfo(frozenset(types), tuple(enum) if enum is not None else None,
                     optional or "null" in types)


def _collect_fields(schema: Mapping[str, Any], prefix: str, optional: bool,
                    found: dict[str, FieldInfo], depth: int) -> None:
    if depth > MAX_SCHEMA_DEPTH or len(found) > MAX_SCHEMA_NODES:
        return
    branches = _branches(schema)
    nullable = len(branches) > 1 and any("null" in (_declared_types(b) or ()) for b in branches)
    for branch in branches:
        properties = branch.get("properties")
        if not isinstance(properties, Mapping):
            continue
        required = set(branch.get("required") or ())
        for name, sub in properties.items():
            path = f"{prefix}{name}"
            info = field_info(sub, optional or nullable or name not in required)
            if path in found:  # the same field in two anyOf branches: either may come
                old = found[path]
                enum = (None if old.enum is None or info.enum is None
                        else tuple(dict.fromkeys(old.enum + info.enum)))
                info = FieldInfo(old.types | info.types, enum, old.optional or info.optional)
            found[path] = info
            _collect_fields(sub, path + ".", info.optional, found, depth + 1)


# --- answers ------------------------------------------------------------------------------------


def json_types(value: object) -> frozenset[str]:
    """The JSON Schema types ``value`` is an instance of."""
    if value is None:
        return frozenset({"null"})
    if isinstance(value, bool):
        return frozenset({"boolean"})
    if isinstance(value, int):
        return frozenset({"integer", "number"})
    if isinstance(value, float):
        return frozenset({"integer", "number"}) if value.is_integer() else frozenset({"number"})
    if isinstance(value, str):
        return frozenset({"string"})
    if isinstance(value, list):
        return frozenset({"array"})
    if isinstance(value, dict):
        return frozenset({"object"})
    return frozenset()


def json_equal(left: object, right: object) -> bool:
    """Equality as JSON means it: ``1 == 1.0``, but ``true`` is not ``1``."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if _is_number(left) and _is_number(right):
        return bool(left == right)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(json_equal, left, right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    return type(left) is type(right) and left == right


def shown_value(value: object, width: int = 60) -> str:
    """A value as JSON, cut to ``width`` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return crop(text.replace("\n", "\\n"), width)


def describe_schema(schema: Mapping[str, Any]) -> str:
    """What a schema expects, for people and models: 'one of "low", "medium"',
    'integer ≥ 1 and ≤ 5', 'list of at least 1 item'."""
    branches = _branches(schema)
    if len(branches) > 1:
        return " or ".join(dict.fromkeys(describe_schema(b) for b in branches))
    if "const" in schema:
        return shown_value(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(shown_value(v, 30) for v in schema["enum"][:12])
    kinds = sorted(_declared_types(schema) or (), key=JSON_TYPES.index)
    names = {"object": "object", "array": "list", "string": "text", "integer": "integer",
             "number": "number", "boolean": "true or false", "null": "null"}
    text = " or ".join(names[k] for k in kinds) or "any value"
    if kinds == ["array"] and isinstance(schema.get("items"), Mapping):
        text = f"list of ({describe_schema(schema['items'])})" if "anyOf" in schema["items"] else \
            f"list of {describe_schema(schema['items'])}"
    elif kinds == ["object"] and isinstance(schema.get("properties"), Mapping):
        field_names = list(schema["properties"])
        more = " ..." if len(field_names) > 8 else ""
        text = "object with " + ", ".join(field_names[:8]) + more
    limits = []
    for key, word in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"),
                      ("exclusiveMaximum", "<")):
        if key in schema:
            limits.append(f"{word} {schema[key]}")
    for key, word in (("minLength", "at least {} characters"),
                      ("maxLength", "at most {} characters"),
                      ("minItems", "at least {} items"), ("maxItems", "at most {} items")):
        if key in schema:
            limits.append(word.format(schema[key]))
    return text + (" " + " and ".join(limits) if limits else "")


MAX_CHECK_STEPS = 1_000_000
"""Schema-and-value pairs checked per answer: nested ``anyOf`` could otherwise make checking
one answer take exponential time."""


class _Validator:
    def __init__(self, steps: list[int] | None = None, quiet: bool = False) -> None:
        self.errors: list[AnswerError] = []
        self.steps = steps if steps is not None else [MAX_CHECK_STEPS]
        self.quiet = quiet  # an anyOf option's trial: only whether it failed matters

    def fail(self, path: SourcePath, expected: str, got: str) -> None:
        if self.quiet:
            self.errors.append(_FAILED)
        elif len(self.errors) < MAX_ERRORS:
            self.errors.append(AnswerError(json_path(path), expected, got))

    def check(self, value: Any, schema: Mapping[str, Any], path: SourcePath) -> Any:
        """``value`` checked against ``schema``; returns it with integral floats made ints
        where the schema asks for an integer."""
        self.steps[0] -= 1
        if self.steps[0] < 0:  # out of steps: fail everywhere; validate_value says why
            self.fail(path, "", "")
            return value
        options = schema.get("anyOf")
        if isinstance(options, list):  # check_schema allows only annotations beside it
            for option in options:
                trial = _Validator(self.steps, quiet=True)
                result = trial.check(value, option, path)
                if not trial.errors:
                    return result
            self.fail(path, self.expected(schema), self.shown(value))
            return value
        if "const" in schema and not json_equal(value, schema["const"]):
            self.fail(path, self.expected(schema), self.shown(value))
            return value
        if "enum" in schema and not any(json_equal(value, v) for v in schema["enum"]):
            self.fail(path, self.expected(schema), self.shown(value))
            return value
        declared = _declared_types(schema)
        have = json_types(value)
        if declared is not None and not (have & declared):
            self.fail(path, self.expected(schema), self.shown(value))
            return value
        if isinstance(value, float) and declared and "integer" in declared and \
                "number" not in declared:
            value = int(value)
        if isinstance(value, str):
            self.length(value, schema, path, "Length", "characters")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            self.number(value, schema, path)
        elif isinstance(value, list):
            self.length(value, schema, path, "Items", "items")
            items = schema.get("items")
            if isinstance(items, Mapping):
                value = [self.check(v, items, (*path, i)) for i, v in enumerate(value)]
        elif isinstance(value, dict):
            value = self.object(value, schema, path)
        return value

    def expected(self, schema: Mapping[str, Any]) -> str:
        return "" if self.quiet else describe_schema(schema)

    def shown(self, value: Any) -> str:
        return "" if self.quiet else shown_value(value)

    def length(self, value: str | list[Any], schema: Mapping[str, Any], path: SourcePath,
               suffix: str, unit: str) -> None:
        low, high = schema.get("min" + suffix), schema.get("max" + suffix)
        if (low is not None and len(value) < low) or (high is not None and len(value) > high):
            self.fail(path, self.expected(schema),
                      "" if self.quiet else f"{shown_value(value, 40)} ({len(value)} {unit})")

    def number(self, value: float, schema: Mapping[str, Any], path: SourcePath) -> None:
        tests = (("minimum", operator.ge), ("maximum", operator.le),
                 ("exclusiveMinimum", operator.gt), ("exclusiveMaximum", operator.lt))
        if any(key in schema and not test(value, schema[key]) for key, test in tests):
            self.fail(path, self.expected(schema), self.shown(value))

    def object(self, value: dict[str, Any], schema: Mapping[str, Any],
               path: SourcePath) -> dict[str, Any]:
        properties: Mapping[str, Any] = schema.get("properties") or {}
        for name in schema.get("required") or ():
            if name not in value:
                self.fail((*path, name), self.expected(properties.get(name, {})),
                          "nothing (the field is missing)")
        extra = schema.get("additionalProperties", True)
        result: dict[str, Any] = {}
        for name, item in value.items():
            if name in properties:
                result[name] = self.check(item, properties[name], (*path, name))
            elif extra is False:
                allowed = ", ".join(list(properties)[:12]) or "none"
                self.fail((*path, name), f"no field {name!r} (allowed: {allowed})",
                          self.shown(item))
                result[name] = item
            elif isinstance(extra, Mapping):
                result[name] = self.check(item, extra, (*path, name))
            else:
                result[name] = item
        return result


_FAILED = AnswerError("", "", "")
"""What a quiet validator records: a failure nobody will read."""

_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?[ \t]*```", re.DOTALL)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {crop(text, 20)} is too large")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` levels (iterative: no recursion limit)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack += [(v, depth + 1) for v in item.values()]
        elif isinstance(item, list):
            stack += [(v, depth + 1) for v in item]
    return False


def parse_answer(text: str) -> tuple[Any, AnswerError | None]:
    """The JSON value in a model's answer: the whole answer, else the one fenced block
    (```json ... ```), else the object that starts at the first '{' after leading prose. Prose
    after a complete value is let go ("Let me know if ..."), as prose before it is, unless it
    holds JSON punctuation (a second object, a stray brace): that answer is ambiguous. Nothing
    is guessed beyond that (no repair of broken JSON: the re-ask fixes it with the model's
    own knowledge of what it meant)."""
    if len(text) > MAX_ANSWER_CHARS:
        return None, AnswerError("$", f"JSON of at most {MAX_ANSWER_CHARS} characters",
                                 f"{len(text)} characters")
    if not text.strip():
        return None, AnswerError("$", "a JSON object", "an empty answer")
    decoder = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
    candidates = [text.strip()]
    fences = _FENCE.findall(text)
    if len(fences) == 1:
        candidates.append(fences[0].strip())
    brace = text.find("{")
    if brace > 0:
        candidates.append(text[brace:].strip())
    first_error = ""
    for candidate in candidates:
        try:
            value, end = decoder.raw_decode(candidate)
        except (ValueError, RecursionError) as exc:
            first_error = first_error or _json_problem(exc)
            continue
        if not _closing_prose(candidate[end:]):
            first_error = first_error or f"text after the JSON value at character {end + 1}"
            continue
        if _deeper_than(value, MAX_VALUE_DEPTH):
            return None, AnswerError("$", f"JSON nested at most {MAX_VALUE_DEPTH} levels deep",
                                     "deeper nesting")
        return value, None
    return None, AnswerError("$", "a JSON object", f"text that is not JSON ({first_error})"
                             if first_error else "an empty answer")


def _closing_prose(rest: str) -> bool:
    """Whether what follows a complete JSON value is nothing, or words that cannot be part
    of it: no brackets or braces anywhere, and no comma, colon or quote right after it."""
    rest = rest.strip()
    return not rest or (not any(mark in rest for mark in "{}[]")
                        and not rest.startswith((",", ":", '"')))


def _json_problem(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return crop(str(exc), 80)


def validate_answer(text: str, schema: Mapping[str, Any]) -> tuple[Any, list[AnswerError]]:
    """Parse a model's answer and check it against a normalised schema: the value (integral
    numbers made ints where the schema asks for integers) and ``[]``, or ``None`` and every
    error found (at most ``MAX_ERRORS``)."""
    value, problem = parse_answer(text)
    if problem is not None:
        return None, [problem]
    return validate_value(value, schema)


def validate_value(value: Any, schema: Mapping[str, Any]) -> tuple[Any, list[AnswerError]]:
    """``validate_answer`` for a value already parsed (from a cache or a Python caller)."""
    if _deeper_than(value, MAX_VALUE_DEPTH):
        return None, [AnswerError("$", f"JSON nested at most {MAX_VALUE_DEPTH} levels deep",
                                  "deeper nesting")]
    validator = _Validator()
    checked = validator.check(value, schema, ())
    if validator.steps[0] < 0:
        return None, [AnswerError("$", "an answer simple enough to check",
                                  f"more than {MAX_CHECK_STEPS} checks")]
    return (None, validator.errors) if validator.errors else (checked, [])


def reask_message(answer: str, errors: Sequence[AnswerError]) -> str:
    """The one follow-up a model gets when its answer does not fit: the answer, each error
    with its JSON path, and what to send instead."""
    quoted = answer if len(answer) <= MAX_REASK_ANSWER_CHARS else (
        answer[:MAX_REASK_ANSWER_CHARS] + f"\n… ({len(answer) - MAX_REASK_ANSWER_CHARS} more "
        "characters)")
    fence = "````" if "```" in quoted else "```"
    lines = [
        "Your answer does not match the required JSON schema.",
        "",
        "Your answer was:",
        fence,
        quoted,
        fence,
        "",
        "What is wrong with it:",
        *(f"- {error.render()}" for error in errors),
        "",
        "Reply with the corrected JSON only: one JSON object that matches the schema, with no "
        "text before or after it.",
    ]
    return "\n".join(lines)


def response_format(schema: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The ``response_format`` that asks a model for ``schema`` natively (OpenAI's shape, which
    litellm passes on or translates). Not ``strict``: strict mode refuses schemas with
    optional fields or ranges, and every answer is validated here anyway."""
    safe_name = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "answer"
    return {"type": "json_schema",
            "json_schema": {"name": safe_name, "schema": dict(schema), "strict": False}}


def instructions(schema: Mapping[str, Any]) -> str:
    """What the task says when the schema cannot be asked for natively (JSON mode), and what
    reminds a model of it otherwise."""
    return ("Answer with one JSON object, and nothing else, that matches this JSON Schema:\n"
            "```json\n" + json.dumps(schema, indent=2, ensure_ascii=False) + "\n```")


# --- mock answers -------------------------------------------------------------------------------


def mock_value(schema: Mapping[str, Any], seed: int | str = 0) -> Any:
    """A deterministic value that fits ``schema`` (for ``--mock``): the same seed gives the
    same value. Raises ``ValueError`` for a schema nothing fits (``check_schema`` reports the
    common contradictions before a run)."""
    import random  # only mock runs need it

    budget = [MAX_MOCK_PARTS]
    value = _mock(schema, random.Random(str(seed)), "value", budget)
    if budget[0] < 0:
        raise ValueError("this schema asks for too many values to mock")
    _, errors = validate_value(value, schema)
    if errors:
        raise ValueError(f"no mock value fits this schema: {errors[0].render()}")
    return value


def _mock(schema: Mapping[str, Any], rng: Random, label: str, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        return None
    if isinstance(schema.get("anyOf"), list):
        branches = _branches(schema)
        order = list(range(len(branches)))
        rng.shuffle(order)
        order.sort(key=lambda i: "null" in (_declared_types(branches[i]) or ()))  # real first
        for i in order:
            candidate = _mock(branches[i], rng, label, budget)
            if not validate_value(candidate, branches[i])[1]:
                return candidate
        return None
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        fitting = [v for v in schema["enum"] if _fits_rest(v, schema)]
        return rng.choice(fitting) if fitting else schema["enum"][0]
    kinds = [k for k in JSON_TYPES if k in (_declared_types(schema) or ("object",))]
    rng.shuffle(kinds)
    kinds.sort(key=lambda k: k == "null")  # a real value when there is a choice
    for kind in kinds:
        candidate = _mock_of_type(kind, schema, rng, label, budget)
        if len(kinds) == 1 or not validate_value(candidate, schema)[1]:
            return candidate
    return None


def _mock_of_type(kind: str, schema: Mapping[str, Any], rng: Random, label: str,
                  budget: list[int]) -> Any:
    if kind == "object":
        properties: Mapping[str, Any] = schema.get("properties") or {}
        value = {name: _mock(sub, rng, name, budget) for name, sub in properties.items()}
        for name in schema.get("required") or ():
            value.setdefault(name, f"mock {name}")
        return value
    if kind == "array":
        low = schema.get("minItems", 0)
        count = max(low, min(2, schema.get("maxItems", 2)))
        items = schema.get("items")
        return [_mock(items, rng, label, budget) if isinstance(items, Mapping)
                else f"mock {label}" for _ in range(count)]
    if kind == "string":
        text = f"mock {label} {rng.randint(1, 999)}"
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        text = text.ljust(low, "x")
        return text[:high] if high is not None else text
    if kind in ("integer", "number"):
        return _mock_number(schema, rng, kind == "integer")
    if kind == "boolean":
        return rng.random() < 0.5
    return None


def _mock_number(schema: Mapping[str, Any], rng: Random, whole: bool) -> float | int:
    if whole:
        first, last = _integer_range(schema)
        if first is None:
            first = (last if last is not None else 11) - 10
        if last is None:
            last = first + 10
        return rng.randint(first, max(first, min(last, first + 100)))
    low, low_open = _bound(schema, "minimum", "exclusiveMinimum", max)
    high, high_open = _bound(schema, "maximum", "exclusiveMaximum", min)
    if low is None and high is None:
        return round(rng.uniform(0, 10), 2)
    if low is None:
        return float(high) - 1 - rng.random()  # type: ignore[arg-type]
    if high is None:
        return float(low) + 1 + rng.random()
    middle = low + (high - low) / 2
    return middle if low_open or high_open or low == high else low + (high - low) * rng.random()
