"""The only module that reads YAML: plan and tenant files → models, with source positions.

Plan and tenant files are shared between people, so they are untrusted: the file size, the
nesting depth and the number of values (alias expansion included) are bounded, only YAML's safe
tags are accepted, duplicate keys are errors, and no input can raise anything but ``LoadError``,
``PlanValidationError`` or ``TenantValidationError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from dworkers.errors import (
    LoadError,
    PlanValidationError,
    Problem,
    TenantValidationError,
    did_you_mean,
)
from dworkers.plans.base import BasePlan, InputSpec, PlanStep
from dworkers.tenants.config import TenantConfig
from dworkers.types import ROLE_NAMES, SourceMap, SourcePath

MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 1_000_000

_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _PlanDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    inputs: dict[str, InputSpec | None] | None = None
    steps: list[Any]


class _TooBig(Exception):
    def __init__(self, message: str, node: yaml.Node) -> None:
        super().__init__(message)
        self.node = node


class _DuplicateKey(Exception):
    def __init__(self, key: str, node: yaml.Node, first: yaml.Node) -> None:
        super().__init__(key)
        self.key, self.node, self.first = key, node, first


def _position(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Builder:
    """Turns a composed YAML node tree into plain Python values, recording positions."""

    def __init__(self, loader: yaml.SafeLoader, source: SourceMap) -> None:
        self.loader = loader
        self.source = source
        self.budget = MAX_VALUES

    def build(self, node: yaml.Node, path: SourcePath = ()) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise _TooBig(f"file expands to more than {MAX_VALUES:,} values", node)
        if len(path) > MAX_DEPTH:
            raise _TooBig(f"values nested more than {MAX_DEPTH} levels deep", node)
        self.source.values.setdefault(path, _position(node))
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)  # resolves YAML merge keys (<<)
            result: dict[str, Any] = {}
            key_nodes: dict[str, yaml.Node] = {}
            for key_node, value_node in node.value:
                key = self._key(key_node)
                if key in key_nodes:
                    raise _DuplicateKey(key, key_node, key_nodes[key])
                key_nodes[key] = key_node
                self.source.keys.setdefault((*path, key), _position(key_node))
                result[key] = self.build(value_node, (*path, key))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        self.source.styles.setdefault(path, node.style or "")
        return self.loader.construct_object(node, deep=True)

    def _key(self, node: yaml.Node) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise _TooBig("mapping keys must be plain names, not lists or mappings", node)
        value = self.loader.construct_object(node)
        return value if isinstance(value, str) else str(value)


def read_yaml(path: Path | str, text: str | None = None) -> tuple[Any, SourceMap]:
    """Parse one YAML document into plain values and a ``SourceMap``; raise ``LoadError``."""
    file = str(path)
    source = SourceMap(file)
    if text is None:
        text = _read_text(Path(path), file)

    def fail(message: str, hint: str, line: int | None = None, column: int | None = None,
             code: str = "yaml-syntax") -> LoadError:
        return LoadError([Problem(message, hint, code, file, line, column)])

    loader = _SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise fail("file is empty", "write a YAML mapping (see the examples in plans/)", 1, 1,
                       "empty-file")
        data = _Builder(loader, source).build(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "invalid YAML"
        hint = "check the indentation and quoting here (quote values containing ': ' or '#')"
        if "could not determine a constructor" in what:
            hint = "only plain YAML is allowed: remove the '!' tag"
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        raise fail(f"invalid YAML: {what}", hint, line, column) from None
    except yaml.YAMLError as exc:
        raise fail(f"invalid YAML: {exc}", "check the file is valid YAML", 1, 1) from None
    except _DuplicateKey as exc:
        first_line = _position(exc.first)[0]
        raise fail(f"duplicate key {exc.key!r} (first at line {first_line})",
                   "keep one of them", *_position(exc.node), code="duplicate-key") from None
    except _TooBig as exc:
        raise fail(exc.args[0], "simplify the file", *_position(exc.node), code="too-large") from None
    except RecursionError:
        raise fail(f"values nested too deeply", f"nest at most {MAX_DEPTH} levels", 1, 1,
                   "too-large") from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise fail(f"invalid value: {exc}", "check the value's syntax", 1, 1, "invalid-value") from None
    finally:
        loader.dispose()
    return data, source


def _read_text(path: Path, file: str) -> str:
    def fail(message: str, hint: str, code: str) -> LoadError:
        return LoadError([Problem(message, hint, code, file)])

    try:
        if path.is_dir():
            raise fail("is a directory, not a file", "name a .yaml file", "not-a-file")
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise fail("file not found", "check the path", "not-found") from None
    except OSError as exc:
        raise fail(f"cannot read file: {exc.strerror}", "check the path and permissions",
                   "unreadable") from None
    if len(raw) > MAX_FILE_BYTES:
        raise fail(f"file is larger than {MAX_FILE_BYTES // 1024 // 1024} MiB",
                   "split the plan or remove unused content", "too-large")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise fail(f"file is not UTF-8 text (byte {exc.start})", "save it as UTF-8",
                   "not-utf8") from None


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
    problems: list[Problem] = []
    if not isinstance(data, dict):
        raise LoadError([_not_a_mapping(source, "plan", "name, description, inputs and steps")])
    top = {key: value for key, value in data.items() if key != "steps"}
    raw_steps = data.get("steps")
    try:
        document = _PlanDocument.model_validate({**top, "steps": []})
    except ValidationError as exc:
        problems += _problems(exc, source, (), _PlanDocument)
        document = _PlanDocument.model_construct(
            name=str(top.get("name", Path(source.file).stem)),
            description=str(top.get("description", "")),
            inputs=None,
            steps=[],
        )
    if "steps" not in data:
        problems.append(_located(source, (), "plan has no 'steps' list",
                                 "add 'steps:' with at least one step", "missing-key"))
        raw_steps = []
    elif not isinstance(raw_steps, list):
        problems.append(_located(source, ("steps",), "'steps' must be a list of steps",
                                 "write each step as '- step_id: ...'", "invalid-type"))
        raw_steps = []
    inputs = None
    if document.inputs is not None:
        inputs = {name: spec or InputSpec() for name, spec in document.inputs.items()}
    plan = BasePlan(document.name, document.description, inputs=inputs, source=source)
    for i, raw in enumerate(raw_steps):
        plan.add_step(_step(raw, i, source, problems))
    problems += plan.check()
    if problems:
        raise PlanValidationError(_sorted(problems))
    return plan


def _step(raw: Any, index: int, source: SourceMap, problems: list[Problem]) -> PlanStep:
    path: SourcePath = ("steps", index)
    if not isinstance(raw, dict):
        problems.append(_located(source, path, "a step must be a mapping",
                                 "write it as '- step_id: ...' with name, worker_role, ...",
                                 "invalid-type"))
        return PlanStep.model_construct(step_id=f"<step {index + 1}>", name="", depends_on=[])
    try:
        return PlanStep.model_validate(raw)
    except ValidationError as exc:
        problems += _problems(exc, source, path, PlanStep)
    # Keep what is usable so the graph checks still run and report the rest in the same pass.
    step_id = raw.get("step_id")
    depends_on = raw.get("depends_on")
    if not isinstance(depends_on, list) or not all(isinstance(d, str) for d in depends_on):
        depends_on = []
    template = raw.get("prompt_template")
    return PlanStep.model_construct(
        step_id=step_id if isinstance(step_id, str) else f"<step {index + 1}>",
        name=str(raw.get("name", "")),
        depends_on=depends_on,
        prompt_template=template if isinstance(template, str) else "",
    )


def load_tenant(path: Path | str, text: str | None = None) -> TenantConfig:
    """Load and fully validate a tenant file; raise with every problem found."""
    data, source = read_yaml(path, text)
    return tenant_from_data(data, source)


def tenant_from_data(data: Any, source: SourceMap) -> TenantConfig:
    if not isinstance(data, dict):
        raise LoadError([_not_a_mapping(source, "tenant", "id, name, context and models")])
    try:
        tenant = TenantConfig.model_validate(data)
    except ValidationError as exc:
        raise TenantValidationError(_sorted(_problems(exc, source, (), TenantConfig))) from None
    tenant._source = source
    problems = tenant.check()
    if problems:
        raise TenantValidationError(_sorted(problems))
    return tenant


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
    return sorted(problems, key=lambda p: (p.line or 0, p.column or 0, p.code))


_TYPE_WORDS = {
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
}


def _problems(
    exc: ValidationError, source: SourceMap, base: SourcePath, model: type[BaseModel]
) -> list[Problem]:
    found = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        if loc and loc[-1] == "[key]":
            loc = loc[:-1]
            key_error = True
        else:
            key_error = False
        path: SourcePath = (*base, *loc)  # type: ignore[misc]
        field = ".".join(str(part) for part in loc) or "file"
        kind = error["type"]
        value = error.get("input")
        if kind == "extra_forbidden":
            name = str(loc[-1])
            allowed = _allowed_keys(model, loc[:-1])
            guess = did_you_mean(name, allowed)
            hint = f"did you mean {guess!r}?" if guess else f"allowed keys: {', '.join(allowed)}"
            found.append(_located(source, path, f"unknown key {name!r}", hint, "unknown-key",
                                  key=True))
        elif kind == "missing":
            where = ".".join(str(p) for p in loc[:-1])
            message = f"missing required key {loc[-1]!r}" + (f" in {where}" if where else "")
            found.append(_located(source, path[:-1], message, f"add '{loc[-1]}: ...'",
                                  "missing-key", key=True))
        elif kind == "enum" or key_error:
            guess = did_you_mean(str(value), ROLE_NAMES)
            hint = (f"did you mean {guess!r}? " if guess else "") + f"valid roles: {', '.join(ROLE_NAMES)}"
            found.append(_located(source, path, f"unknown worker role {value!r}", hint,
                                  "unknown-role", key=key_error))
        elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
            ctx = error.get("ctx", {})
            bound = next(iter(ctx.values()), "")
            sign = {"greater_than_equal": "≥", "greater_than": ">",
                    "less_than_equal": "≤", "less_than": "<"}[kind]
            hint = "use 0 for the default" if sign in ("≥", ">") else f"use at most {bound}"
            found.append(_located(source, path, f"{field} must be {sign} {bound} (got {value!r})",
                                  hint, "out-of-range"))
        elif kind in _TYPE_WORDS:
            found.append(_located(source, path,
                                  f"{field} must be {_TYPE_WORDS[kind]} (got {_describe(value)})",
                                  "quote text values; write lists as [a, b]", "invalid-type"))
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
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _allowed_keys(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The field names accepted at ``loc`` inside ``model``, for "did you mean"."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            current = _model_of(field.annotation) if field else None
        else:
            current = None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_of(annotation: Any) -> Any:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None
