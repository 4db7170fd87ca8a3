"""``BasePlan`` and ``PlanStep``: the plan model, and every static check of it.

``check()`` reports all problems in one pass, each located in the plan's source file when the
plan was loaded from YAML, and says how to fix it. Everything here is linear in the plan's size.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_serializer, field_validator

from dworkers import conditions, dag, output_schema, templates
from dworkers.errors import (
    PlanNotFoundError,
    PlanValidationError,
    Problem,
    did_you_mean,
    shown,
    suggestion,
)
from dworkers.names import (
    IDENTIFIER,
    MAX_SLUG_LENGTH,
    SLUG,
    SLUG_HINT,
    json_schema_pattern,
    slug_suggestion,
    too_long,
)
from dworkers.types import SourceMap, SourcePath, WorkerRole

MAX_COMPARISONS = 200_000
""""Did you mean" compares a name with every known one; this bounds the comparisons per check,
so a plan with thousands of typos among thousands of steps does not make validation quadratic
(a small plan gets a suggestion for every typo)."""


MAX_QUESTION = 2000  # characters of an approval gate's question


def unnamed_step_id(index: int) -> str:
    """The id the loader gives a step whose own ``step_id`` is missing or not text."""
    return f"<step {index + 1}>"


def _is_unnamed(step_id: str) -> bool:
    return step_id.startswith("<step ") and step_id.endswith(">")


# Fields added after runs were first recorded count in a step's fingerprint only when set, so
# a new version of dworkers does not make every recorded step look changed on resume.
ADDED_FIELDS = ("tools", "max_tool_calls", "output_schema", "when", "output_retries")


@functools.cache
def added_field_defaults(step_class: type[BaseModel]) -> dict[str, Any]:
    """The defaults of ``ADDED_FIELDS``, worked out once per class: pydantic inspects a default
    factory's signature on every ``get_default``, and a fingerprint is taken for every step of
    every row (a third of a 100,000-row run's time, before this was kept)."""
    fields = step_class.model_fields
    return {name: fields[name].get_default(call_default_factory=True) for name in ADDED_FIELDS}


class PlanStep(BaseModel):
    """One unit of work: a worker with ``worker_role`` runs the step's prompt."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    step_id: str = Field(
        description="Unique id of the step, a lowercase slug (letters, digits, '-', '_'): it "
        "names the step's output file and is what depends_on refers to.",
        json_schema_extra={**json_schema_pattern(SLUG), "maxLength": MAX_SLUG_LENGTH},
    )
    name: str = Field(description="Human-readable name, shown in the live tree and the report.")
    description: str = Field(
        default="", description="What the step does. A step without a prompt_template gives its "
        "worker this description and the run's inputs instead.")
    worker_role: WorkerRole = Field(
        default=WorkerRole.ANALYST, description="The kind of worker that does the step: each "
        "role has its own instructions, and may have its own model in the tenant.")
    depends_on: list[str] = Field(
        default_factory=list, description="step_ids whose outputs this step needs: it starts as "
        "soon as they have all succeeded, and receives their outputs as context.",
        json_schema_extra={"uniqueItems": True})
    prompt_template: str = Field(
        default="", description="The step's prompt. {name} placeholders are filled from the "
        "run's inputs, {step} with an upstream step's answer, {step.field} with a field of a "
        "typed one ({step.field ?? 'n/a'} when that step may be skipped); {{ and }} are "
        "literal braces.")
    retry_max: int = Field(  # strict: `retry_max: yes` is a typo
        default=0, ge=0, le=100, strict=True, description="Retries after a timeout, a "
        "connection error or a 5xx answer (rate limits, 429, always wait and never count).")
    timeout_seconds: float = Field(
        default=0, ge=0, le=86_400, allow_inf_nan=False, description="Seconds one attempt "
        "may take, from sending the request to the end of the whole answer, streamed or not; 0 "
        "means the tenant's limits.timeout_seconds.")
    tools: list[str] = Field(
        default_factory=list, description="MCP tools the worker may call: 'server' (all its "
        "tools) or 'server.tool', servers declared in the tenant's mcp_servers (default: the "
        "tenant's workers.<role>.tools).", json_schema_extra={"uniqueItems": True})
    max_tool_calls: int = Field(  # strict: `max_tool_calls: lots` is a typo
        default=0, ge=0, le=10_000, strict=True, description="The most MCP tool calls this "
        "step may make; a model that asks for more fails the step. 0 means the tenant's "
        "limits.max_tool_calls.")
    # Typed steps (issue 18): what the answer holds, and when the step runs at all.
    output_schema: Any = Field(
        default=None, description="What the answer must hold, checked on every answer: the "
        "concise form (fields to types: {severity: low|medium|high, in_scope: bool, tags: "
        "[str], risk: int(1..5), 'note?': str}), a JSON Schema mapping, or a path to a .json/"
        ".yaml schema file relative to the plan. Later steps read its fields as "
        "{step.field}; a dataset run writes them to results.csv.",
        json_schema_extra={"type": ["object", "string", "null"]})
    when: str | None = Field(
        default=None, description="A condition over upstream typed fields and inputs, e.g. "
        "\"triage.in_scope and triage.severity == 'high'\" (and, or, not, == != < <= > >= in, "
        "'text', numbers, true/false/null, [lists], 'a ?? b' for a value to use when a step "
        "was skipped). False: the step is skipped with the reason, at no cost, and its "
        "dependents still run.")
    output_retries: int = Field(
        default=1, ge=0, le=10, strict=True, description="Re-asks when an answer does not fit "
        "output_schema: the model is shown its answer and the exact errors; then the step "
        "fails with them.")

    _schema_memo: tuple[Any, dict[str, Any] | None] | None = PrivateAttr(default=None)

    @field_serializer("output_schema")
    def _schema_as_data(self, value: Any) -> Any:
        if isinstance(value, type) and hasattr(value, "model_json_schema"):
            return value.model_json_schema()  # a pydantic model class (Python API)
        return value

    def answer_schema(self) -> dict[str, Any] | None:
        """The normalised JSON Schema of the answer, or ``None`` for an untyped step (or one
        whose schema ``check()`` refuses)."""
        raw = self.output_schema
        if raw is None or output_schema.is_schema_file(raw):
            return None
        memo = self._schema_memo
        if memo is None or memo[0] is not raw:  # held, so the same object is the same schema
            memo = self._schema_memo = (raw, output_schema.normalise_schema(raw)[0])
        return memo[1]

    # Approval gates (dworkers.approvals): the run stops before calling this step until a
    # person approves it.
    approve: bool | str = Field(
        default=False, description="A gate: true, or the question for the approver. Once its "
        "dependencies are done the run stops before calling this step (exit 3) until "
        "`dworkers approve RUN STEP` (then `dworkers run --resume RUN`), or `dworkers reject` "
        "skips it and everything downstream of it.",
        json_schema_extra={"anyOf": [{"type": "boolean"},
                                     {"type": "string", "minLength": 1, "maxLength": 2000}]})

    @field_validator("approve", mode="before")
    @classmethod
    def _gate(cls, value: object) -> bool | str:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and 0 < len(value.strip()) <= MAX_QUESTION:
            return value.strip()
        raise ValueError(f"must be true, false, or the question for the approver (1 to "
                         f"{MAX_QUESTION} characters of text), not {shown(str(value))[:60]}")

    def fingerprint(self) -> str:
        """A digest of the definition: a changed step (or prompt) must run again on resume."""
        import hashlib  # only runs need it: keep `dworkers list` from loading OpenSSL
        import json

        # A gate does not change what the step is asked: adding or answering one reuses answers.
        data = self.model_dump(mode="json", exclude={"approve"})
        for name, default in added_field_defaults(type(self)).items():
            if getattr(self, name) == default:
                del data[name]
        payload = json.dumps(data, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class InputSpec(BaseModel):
    """A declared plan input. An input with a ``default`` is optional."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field(default="", description="What the input is, for the people who "
                             "run the plan ('dworkers show', shell completion).")
    default: str | None = Field(default=None, description="The value when a run gives none; an "
                                "input with a default is optional.")
    type: Literal["text", "file"] = Field(
        default="text", description="'file': the value names a file or folder (a .pdf, .docx, "
        ".xlsx, .pptx, .html, .csv, .md or .txt, or a folder of them), given as '-i NAME=PATH' "
        "or a dataset column, converted to Markdown before any call.")


class BasePlan:
    """A named DAG of ``PlanStep``s.

    ``inputs`` declares the run inputs; when it is ``None`` every placeholder used by a template
    is a required input. ``source`` records where the plan was loaded from, for error locations.
    """

    def __init__(
        self,
        name: str,
        description: str = "",
        steps: Iterable[PlanStep] | None = None,
        *,
        inputs: dict[str, InputSpec] | None = None,
        source: SourceMap | None = None,
        on_truncation: Literal["keep", "fail"] | None = None,
        formats: Iterable[str] | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.inputs = inputs
        self.source = source
        # Schema files the loader read, by step index: their problems are located in them.
        self.schema_sources: dict[int, SourceMap] = {}
        # An answer cut off at the model's token limit: kept (marked) or a failure; None: as the
        # tenant says.
        self.on_truncation = on_truncation
        # The deliverables a run writes without --format; None: as the tenant says.
        self.formats = list(formats) if formats is not None else None
        self._steps: list[PlanStep] = []
        self._by_id: dict[str, PlanStep] = {}
        for step in steps or ():
            self.add_step(step)

    def __repr__(self) -> str:
        return f"BasePlan({self.name!r}, steps={len(self._steps)})"

    @property
    def steps(self) -> list[PlanStep]:
        return list(self._steps)

    def add_step(self, step: PlanStep) -> PlanStep:
        """Append a step. Duplicate ids are kept so that ``validate()`` can report them all."""
        self._steps.append(step)
        self._by_id.setdefault(step.step_id, step)
        return step

    def get_step(self, step_id: str) -> PlanStep:
        """The step with this id; ``PlanNotFoundError`` (a ``PlanError``) when there is none."""
        try:
            return self._by_id[step_id]
        except KeyError:
            raise PlanNotFoundError(self.name, step_id, list(self._by_id)) from None

    def has_step(self, step_id: str) -> bool:
        return step_id in self._by_id

    @property
    def graph(self) -> dict[str, list[str]]:
        """``{step_id: depends_on}`` in plan order (first definition wins for duplicates)."""
        return {sid: list(step.depends_on) for sid, step in self._by_id.items()}

    def placeholders(self) -> list[str]:
        """Every placeholder used by a template, in order of first use."""
        names: dict[str, None] = {}
        step_ids = frozenset(self._by_id)
        for step in self._steps:
            parsed = templates.parse(step.prompt_template, typed=True)
            names.update(dict.fromkeys(templates.input_names(parsed, step_ids)))
        return list(names)

    def required_inputs(self) -> list[str]:
        if self.inputs is None:
            return self.placeholders()
        return [name for name, spec in self.inputs.items() if spec.default is None]

    def optional_inputs(self) -> dict[str, str]:
        return {n: s.default for n, s in (self.inputs or {}).items() if s.default is not None}

    def validate(self) -> None:
        """Raise ``PlanValidationError`` listing every problem, or return quietly.

        A plan with no steps is valid here, as in the seed project (there is nothing to run);
        ``check()`` still reports it, so a plan *file* without steps is refused when loaded.
        """
        problems = [p for p in self.check() if p.code != "no-steps"]
        if problems:
            raise PlanValidationError(problems)

    def check(self) -> list[Problem]:
        """Every problem with this plan, located and sorted by position."""
        return _PlanChecker(self).run()


class _PlanChecker:
    def __init__(self, plan: BasePlan) -> None:
        self.plan = plan
        self.steps = plan._steps
        self.problems: list[Problem] = []
        self.comparisons = MAX_COMPARISONS

    def problem(
        self,
        path: SourcePath,
        message: str,
        hint: str,
        code: str,
        *,
        key: bool = False,
        at: tuple[int, int] | None = None,
    ) -> None:
        source = self.plan.source
        line = column = None
        if at is not None:
            line, column = at
        elif source is not None:
            line, column = source.at(path, key=key)
        file = source.file if source else f"<plan {self.plan.name}>"
        self.problems.append(Problem(message, hint, code, file, line, column))

    def did_you_mean(self, name: str, known: list[str]) -> str | None:
        if len(known) > self.comparisons or len(name) > MAX_SLUG_LENGTH:
            return None
        self.comparisons -= len(known)
        return did_you_mean(name, known)

    def run(self) -> list[Problem]:
        plan = self.plan
        if len(plan.name) > MAX_SLUG_LENGTH:
            self.problem(("name",), f"plan name {shown(plan.name)} is {too_long(plan.name)}",
                         "shorten it (plan names are typed on the command line)",
                         "invalid-plan-name")
        elif not SLUG.match(plan.name):
            guess = slug_suggestion(plan.name)
            self.problem(("name",), f"plan name {shown(plan.name)} is not a valid name",
                         f"{SLUG_HINT}, e.g. {guess!r}" if guess else SLUG_HINT,
                         "invalid-plan-name")
        if not self.steps:
            self.problem(("steps",), "plan has no steps", "add at least one step under 'steps:'",
                         "no-steps")
        self.check_step_ids()
        self.check_dependencies()
        self.check_cycles()
        self.check_templates()
        self.check_typed()
        return sorted(
            self.problems, key=lambda p: (p.file or "", p.line or 0, p.column or 0, p.code)
        )

    def check_step_ids(self) -> None:
        first_index: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            sid = step.step_id
            if _is_unnamed(sid):
                continue  # the loader has already reported this step's missing or bad id
            path: SourcePath = ("steps", i, "step_id")
            if len(sid) > MAX_SLUG_LENGTH:
                self.problem(path, f"step_id {shown(sid)} is {too_long(sid)}",
                             "shorten it (step ids name output files)", "invalid-step-id")
            elif not SLUG.match(sid):
                guess = slug_suggestion(sid)
                hint = f"{SLUG_HINT} (step ids name output files)"
                self.problem(path, f"step_id {shown(sid)} is not a valid id",
                             f"{hint}, e.g. {guess!r}" if guess else hint, "invalid-step-id")
            if sid in first_index:
                first = first_index[sid]
                where = self._line_of(("steps", first, "step_id")) or f" as step {first + 1}"
                self.problem(
                    path,
                    f"duplicate step_id {shown(sid)} (first defined{where})",
                    "give each step a unique step_id",
                    "duplicate-step-id",
                )
            else:
                first_index[sid] = i

    def check_dependencies(self) -> None:
        by_id = self.plan._by_id
        known: list[str] | None = None
        for i, step in enumerate(self.steps):
            seen: set[str] = set()
            for j, dep in enumerate(step.depends_on):
                path: SourcePath = ("steps", i, "depends_on", j)
                if dep == step.step_id:
                    self.problem(path, f"step {shown(dep)} depends on itself",
                                 f"remove {shown(dep)} from its depends_on", "self-dependency")
                elif dep not in by_id:
                    if known is None:
                        known = [sid for sid in by_id if not _is_unnamed(sid)]
                    guess = self.did_you_mean(dep, known)
                    hint = (suggestion(dep, guess) if guess
                            else "depends_on must name step_ids defined in this plan")
                    self.problem(
                        path,
                        f"step {shown(step.step_id)} depends on unknown step {shown(dep)}",
                        hint,
                        "unknown-dependency",
                    )
                elif dep in seen:
                    self.problem(path, f"step {shown(step.step_id)} lists {shown(dep)} twice in "
                                 "depends_on", "remove the repeated entry", "duplicate-dependency")
                seen.add(dep)

    def check_cycles(self) -> None:
        index_of: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            index_of.setdefault(step.step_id, i)
        for cycle in dag.find_cycles(self.plan.graph):
            edges = []
            for node, dep in itertools.pairwise(cycle):
                i = index_of[node]
                j = self.steps[i].depends_on.index(dep)
                edges.append((("steps", i, "depends_on", j), node, dep))
            shown_edges = edges if len(edges) <= 20 else [*edges[:19], edges[-1]]
            lines = ", ".join(f"{a} → {b}{self._line_of(p)}" for p, a, b in shown_edges)
            path = " → ".join(cycle) if len(cycle) <= 21 else (
                " → ".join(cycle[:19]) + f" → … ({len(cycle) - 21} more) → " +
                " → ".join(cycle[-2:])
            )
            self.problem(
                edges[0][0],
                f"dependency cycle {path} (→ means 'depends on': {lines})",
                "remove one of these dependencies so the steps can run in order",
                "dependency-cycle",
            )

    def check_templates(self) -> None:
        declared = self.plan.inputs
        declared_names = list(declared or {})
        for name in declared_names:
            if not IDENTIFIER.match(name):
                self.problem(("inputs", name), f"input name {shown(name)} is not valid",
                             "input names are letters, digits and '_', not starting with a digit",
                             "invalid-input-name", key=True)
        for i, step in enumerate(self.steps):
            if not step.prompt_template:
                continue
            path: SourcePath = ("steps", i, "prompt_template")
            parsed = templates.parse(step.prompt_template, typed=True)
            for issue in parsed.issues:
                self.problem(path, issue.message, issue.hint, "template-syntax",
                             at=self._inside(path, step.prompt_template, issue.offset))
            if declared is None:
                continue
            for placeholder in parsed.placeholders:
                if placeholder.name in declared or self._typed_reference(placeholder):
                    continue
                guess = self.did_you_mean(placeholder.name, declared_names)
                hint = (suggestion(placeholder.name, guess, "did you mean {{{}}}?") if guess
                        else "declare it under 'inputs:' (declared: "
                        f"{', '.join(declared_names[:10]) or 'none'})")
                self.problem(
                    path,
                    f"placeholder {{{placeholder.name}}} in step {shown(step.step_id)} is not a "
                    "declared input",
                    hint,
                    "undeclared-input",
                    at=self._inside(path, step.prompt_template, placeholder.offset),
                )

    def _typed_reference(self, placeholder: templates.Placeholder) -> bool:
        """Whether a placeholder names a step or a field (``check_typed`` checks it)."""
        return (placeholder.path[0] in self.plan._by_id or len(placeholder.path) > 1
                or placeholder.has_default)

    def check_typed(self) -> None:
        """Output schemas, then every typed reference and ``when:`` against the scope of its
        step (the upstream steps' schemas). Scopes are built only for steps that use them, so
        a plan without typed references stays linear to check."""
        plan = self.plan
        step_fields: dict[str, Any] = {}
        broken: set[str] = set()
        for i, step in enumerate(self.steps):
            if step.output_schema is None:
                continue
            file_source = plan.schema_sources.get(i)
            if file_source is None and output_schema.is_schema_file(step.output_schema):
                self.problem(("steps", i, "output_schema"), "schema file "
                             f"{shown(step.output_schema)} was not read: only a plan loaded "
                             "from a file reads schema files beside it",
                             "pass the schema itself (a mapping or a pydantic model class)",
                             "invalid-output-schema")
                broken.add(step.step_id)
                continue
            schema, problems = output_schema.normalise_schema(step.output_schema)
            for problem in problems:
                self._schema_problem(i, file_source, problem)
            if schema is None:
                broken.add(step.step_id)
            else:
                step_fields[step.step_id] = output_schema.fields(schema)
        conditional = {s.step_id for s in self.steps if s.when is not None}
        graph = plan.graph
        declared = None if plan.inputs is None else list(plan.inputs)
        for i, step in enumerate(self.steps):
            parsed = (templates.parse(step.prompt_template, typed=True)
                      if step.prompt_template else None)
            typed_refs = parsed is not None and any(
                self._typed_reference(p) for p in parsed.placeholders)
            if step.when is None and not typed_refs:
                continue
            scope = conditions.scope_for(step.step_id, graph, declared, step_fields, conditional)
            if parsed is not None and typed_refs:
                path: SourcePath = ("steps", i, "prompt_template")
                typed = templates.ParsedTemplate(
                    tuple(p for p in parsed.parts if isinstance(p, templates.Placeholder)
                          and self._typed_reference(p)), ())
                for issue in templates.check_references(typed, scope):
                    if self._about_broken(issue, broken):
                        continue
                    self.problem(path, issue.message, issue.hint, issue.code,
                                 at=self._inside(path, step.prompt_template, issue.offset))
            if step.when is not None:
                path = ("steps", i, "when")
                for issue in conditions.check_condition(step.when, scope):
                    if self._about_broken(issue, broken):
                        continue
                    self.problem(path, f"when: of step {shown(step.step_id)}: {issue.message}",
                                 issue.hint, issue.code,
                                 at=self._inside(path, step.when, issue.offset))

    @staticmethod
    def _about_broken(issue: conditions.Issue, broken: set[str]) -> bool:
        """An issue caused by an upstream schema that is itself reported as wrong."""
        return issue.code in ("unknown-field", "untyped-step") and any(
            repr(sid) in issue.message for sid in broken)

    def _schema_problem(self, index: int, file_source: SourceMap | None,
                        problem: output_schema.SchemaProblem) -> None:
        """A problem inside a step's output schema, located in the schema file when it came
        from one, else in the plan."""
        message = f"output_schema of step {shown(self.steps[index].step_id)}: {problem.message}"
        if file_source is None:
            self.problem(("steps", index, "output_schema", *problem.path), message,
                         problem.fix, "invalid-output-schema")
            return
        line, column = file_source.at(tuple(problem.path))
        self.problems.append(Problem(message, problem.fix, "invalid-output-schema",
                                     file_source.file, line, column))

    def _line_of(self, path: SourcePath) -> str:
        source = self.plan.source
        line = source.at(path)[0] if source else None
        return f" at line {line}" if line else ""

    def _inside(self, path: SourcePath, text: str, offset: int) -> tuple[int, int] | None:
        """The line and column of ``text[offset]`` in the file, when the loader recorded how
        the scalar was written; otherwise ``None`` (the problem points at the scalar)."""
        source = self.plan.source
        if source is None:
            return None
        line, column = source.at(path)
        if line is None or column is None or path not in source.values:
            return None
        style = source.styles.get(path, "")
        if style == "":  # plain, on one line: the value is exactly the source text
            return line, column + offset
        if style in ("'", '"'):  # quoted on one line without escapes (else the loader says "~")
            return line, column + 1 + offset
        if style.startswith("|") and style[1:].isdigit():  # literal block, indent recorded
            before = text.rfind("\n", 0, offset)
            return line + 1 + text.count("\n", 0, offset), int(style[1:]) + offset - before
        return None
