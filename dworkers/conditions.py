"""``when:`` conditions: a small expression language over upstream typed fields and inputs.

    when: "triage.in_scope and triage.severity in ['high', 'critical']"

* References: ``step.field.subfield`` (a typed field of an upstream step), ``step`` (an untyped
  upstream step's text, or a typed step's whole object), ``name`` (a run input, as text).
* Literals: ``'text'`` or ``"text"`` (``\\`` escapes the next character), numbers (``3``,
  ``-0.5``, ``1e3``), ``true``, ``false``, ``null``, and lists of them (``['a', 'b']``).
* Operators, loosest first: ``or``; ``and``; ``not``; ``==`` ``!=`` ``<`` ``<=`` ``>`` ``>=``
  ``in`` ``not in`` (one per comparison: ``a < b < c`` is written with ``and``); ``??``.
  ``in`` tests membership of a list, or of text in text.
* ``ref ?? literal``: the value to use when the step was skipped (its own ``when:`` was false),
  the field is absent, or it is null. A step whose ``when:`` may be false may be skipped, so a
  reference to it must say what to use instead (``triage.severity ?? 'low'``), and
  ``check_condition`` insists. Templates use the same syntax: ``{triage.severity ?? "n/a"}``.

Parsing is a hand-written tokenizer and recursive-descent parser (no ``eval``), bounded in
length (``MAX_CONDITION_CHARS``) and nesting (``MAX_NESTING``); every problem carries the offset
of its place in the expression, so ``validate`` can point at ``file:line:col``. ``check_condition``
type-checks an expression against the upstream schemas before any call; ``evaluate`` is total on
any values (a model's answer cannot make it raise). Comparisons follow JSON: ``1 == 1.0``,
``true != 1``; ordering compares two numbers or two texts, anything else is false.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, NamedTuple

from dworkers.errors import did_you_mean, suggestion
from dworkers.output_schema import JSON_TYPES, FieldInfo, json_equal, json_types, shown_value
from dworkers.text import crop

MAX_CONDITION_CHARS = 2_000
"""Longest ``when:`` expression."""
MAX_NESTING = 32
"""Deepest nesting of parentheses, lists and ``not``."""


class Issue(NamedTuple):
    """A problem in an expression or a reference: ``offset`` is its index in the text."""

    message: str
    hint: str
    offset: int
    code: str = "invalid-condition"

    @property
    def column(self) -> int:
        return self.offset + 1


class Scope(NamedTuple):
    """What a step's condition or template may name.

    ``inputs``: the declared run inputs (``None``: the plan declares none, so any name that is
    not a step is an input). ``steps``: the upstream steps (dependencies, direct or not) and
    their fields (``None`` for a step without ``output_schema``). ``others``: the plan's other
    steps (named to say they are not upstream). ``may_skip``: upstream steps that may be
    skipped (they have a ``when:``). ``step_id``: the step being checked."""

    inputs: Collection[str] | None
    steps: Mapping[str, Mapping[str, FieldInfo] | None]
    others: Collection[str] = ()
    may_skip: Collection[str] = ()
    step_id: str = ""


def scope_for(step_id: str, graph: Mapping[str, Collection[str]],
              inputs: Collection[str] | None,
              step_fields: Mapping[str, Mapping[str, FieldInfo] | None],
              conditional: Collection[str]) -> Scope:
    """The ``Scope`` of one step of a plan: ``graph`` maps each step to its ``depends_on``,
    ``step_fields`` each typed step to ``output_schema.fields(...)``, ``conditional`` names the
    steps that have a ``when:``."""
    upstream: dict[str, None] = {}
    stack = list(graph.get(step_id, ()))
    while stack:  # iterative: a long chain of steps needs no recursion
        dependency = stack.pop()
        if dependency not in upstream and dependency in graph:
            upstream[dependency] = None
            stack += graph[dependency]
    ordered = [s for s in graph if s in upstream]
    return Scope(inputs, {s: step_fields.get(s) for s in ordered},
                 [s for s in graph if s not in upstream], [s for s in ordered if s in conditional],
                 step_id)


# --- syntax tree --------------------------------------------------------------------------------


class Ref(NamedTuple):
    path: tuple[str, ...]
    offset: int

    @property
    def text(self) -> str:
        return ".".join(self.path)


class Lit(NamedTuple):
    value: Any  # str, int, float, bool, None, or a list of those
    offset: int


class Default(NamedTuple):
    ref: Ref
    fallback: Lit
    offset: int  # of the ``??``


class Not(NamedTuple):
    operand: Node
    offset: int


class Logic(NamedTuple):
    """``a and b and c``: one node for the whole chain, so a long chain nests no deeper."""

    op: str  # "and" | "or"
    operands: tuple[Node, ...]
    offset: int  # of the first operand


class Compare(NamedTuple):
    op: str  # "==" "!=" "<" "<=" ">" ">=" "in" "not in"
    left: Node
    right: Node
    offset: int  # of the operator


Node = Ref | Lit | Default | Not | Logic | Compare


class Token(NamedTuple):
    kind: str  # "name" "string" "number" "op" "end", or the keyword itself
    text: str
    value: Any
    offset: int


class ConditionSyntaxError(ValueError):
    """An expression that does not parse; ``issue`` says where and why."""

    def __init__(self, issue: Issue) -> None:
        super().__init__(f"column {issue.column}: {issue.message}")
        self.issue = issue


# --- tokenizer ----------------------------------------------------------------------------------

KEYWORDS = {"and", "or", "not", "in", "true", "false", "null"}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_][A-Za-z0-9_-]*)*")
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_OPERATORS = ("==", "!=", "<=", ">=", "??", "<", ">", "(", ")", "[", "]", ",")
_WRONG_OPERATORS = {
    "&&": "write 'and'", "||": "write 'or'", "!": "write 'not'", "=": "write '==' to compare",
    "'": "", '"': "",
}


def tokenize(text: str) -> Iterator[Token]:
    """The tokens of ``text``, ending with an ``end`` token; raises ``ConditionSyntaxError``."""
    i, size = 0, len(text)
    while True:
        while i < size and text[i] in " \t\r\n":
            i += 1
        if i == size:
            yield Token("end", "", None, i)
            return
        char = text[i]
        if char in "'\"":
            value, end = _string(text, i)
            yield Token("string", text[i:end], value, i)
            i = end
            continue
        number = _NUMBER.match(text, i)
        name = _NAME.match(text, i)
        if number and (not name or number.end() >= name.end()):
            literal = number.group()
            value_ = float(literal) if any(c in literal for c in ".eE") else int(literal)
            if isinstance(value_, float) and value_ in (float("inf"), float("-inf")):
                raise ConditionSyntaxError(Issue(f"number {crop(literal, 20)} is too large",
                                                 "write a smaller number", i))
            yield Token("number", literal, value_, i)
            i = number.end()
            continue
        if name:
            word = name.group()
            yield Token(word if word in KEYWORDS else "name", word, word, i)
            i = name.end()
            continue
        operator = next((op for op in _OPERATORS if text.startswith(op, i)), None)
        if operator:
            yield Token("op", operator, operator, i)
            i += len(operator)
            continue
        wrong = next((op for op in ("&&", "||", "!", "=") if text.startswith(op, i)), None)
        shown = crop(repr(wrong or char)[1:-1], 10)
        raise ConditionSyntaxError(Issue(
            f"unexpected {shown!r} in condition",
            _WRONG_OPERATORS.get(wrong or "", "") or "conditions use names, 'text', numbers, "
            "==, !=, <, <=, >, >=, in, and, or, not, ?? and parentheses", i))


def _string(text: str, start: int) -> tuple[str, int]:
    quote = text[start]
    parts: list[str] = []
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            parts.append(text[i + 1])
            i += 2
            continue
        if char == quote:
            return "".join(parts), i + 1
        parts.append(char)
        i += 1
    raise ConditionSyntaxError(Issue(f"text starting here has no closing {quote}",
                                     f"end it with {quote}", start))


# --- parser -------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = list(tokenize(text))
        self.index = 0
        self.depth = 0

    @property
    def token(self) -> Token:
        return self.tokens[self.index]

    def take(self) -> Token:
        token = self.tokens[self.index]
        self.index = min(self.index + 1, len(self.tokens) - 1)
        return token

    def at(self, *texts: str) -> bool:
        return self.token.kind != "string" and self.token.text in texts

    def fail(self, message: str, hint: str, token: Token | None = None) -> ConditionSyntaxError:
        return ConditionSyntaxError(Issue(message, hint, (token or self.token).offset))

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.fail(f"condition nested deeper than {MAX_NESTING} levels",
                            "simplify it")

    def expression(self) -> Node:
        self.nest()
        node = self.logic("or", self.logic_and)
        self.depth -= 1
        return node

    def logic_and(self) -> Node:
        return self.logic("and", self.negation)

    def logic(self, op: str, operand: Any) -> Node:
        operands: list[Node] = [operand()]
        while self.token.kind == op:
            self.take()
            operands.append(operand())
        return operands[0] if len(operands) == 1 else Logic(op, tuple(operands),
                                                              operands[0].offset)

    def negation(self) -> Node:
        if self.token.kind == "not":
            at = self.take().offset
            self.nest()
            node = Not(self.negation(), at)
            self.depth -= 1
            return node
        return self.comparison()

    def comparison(self) -> Node:
        left = self.defaulted()
        op_token = self.token
        if self.at("==", "!=", "<", "<=", ">", ">=") or op_token.kind == "in":
            op = self.take().text
        elif op_token.kind == "not" and self.tokens[self.index + 1].kind == "in":
            self.take()
            self.take()
            op = "not in"
        else:
            return left
        node = Compare(op, left, self.defaulted(), op_token.offset)
        if self.at("==", "!=", "<", "<=", ">", ">=") or self.token.kind == "in":
            raise self.fail("comparisons cannot be chained",
                            "join two comparisons with 'and': a < b and b < c")
        return node

    def defaulted(self) -> Node:
        node = self.primary()
        if not self.at("??"):
            return node
        at = self.take()
        if not isinstance(node, Ref):
            raise self.fail("'??' follows a reference such as triage.severity",
                            "write step.field ?? 'value'", at)
        if self.token.kind not in ("string", "number", "true", "false", "null") and \
                not self.at("["):
            raise self.fail("after '??' comes the value to use instead: text, a number, "
                            "true, false, null or a list", "write e.g. triage.severity ?? 'low'")
        fallback = self.primary()
        assert isinstance(fallback, Lit)  # a literal's first token starts only a literal
        return Default(node, fallback, at.offset)

    def primary(self) -> Node:
        token = self.token
        if token.kind in ("string", "number"):
            self.take()
            return Lit(token.value, token.offset)
        if token.kind in ("true", "false", "null"):
            self.take()
            return Lit({"true": True, "false": False, "null": None}[token.kind], token.offset)
        if token.kind == "name":
            self.take()
            return Ref(tuple(token.text.split(".")), token.offset)
        if self.at("("):
            self.take()
            node = self.expression()
            if not self.at(")"):
                raise self.fail("'(' is never closed", "add ')'", token)
            self.take()
            return node
        if self.at("["):
            return self.list_literal()
        if token.kind == "end":
            raise self.fail("condition ends too early", "finish it, e.g. triage.severity == "
                            "'high'")
        raise self.fail(f"unexpected {crop(token.text, 20)!r}",
                        "expected a name, 'text', a number, true, false, a list or '('")

    def list_literal(self) -> Lit:
        start = self.take()
        self.nest()
        items: list[Any] = []
        while not self.at("]"):
            item = self.primary()
            if not isinstance(item, Lit) or isinstance(item.value, list):
                raise self.fail("a list holds plain values: text, numbers, true, false, null",
                                "write e.g. ['high', 'critical']", self.tokens[self.index - 1])
            items.append(item.value)
            if self.at(","):
                self.take()
            elif not self.at("]"):
                raise self.fail("expected ',' or ']' in the list", "write e.g. ['a', 'b']")
        self.take()
        self.depth -= 1
        return Lit(items, start.offset)


def parse_condition(text: str) -> Node:
    """The syntax tree of a condition; raises ``ConditionSyntaxError``."""
    if len(text) > MAX_CONDITION_CHARS:
        raise ConditionSyntaxError(Issue(
            f"condition is {len(text)} characters long, over the limit of "
            f"{MAX_CONDITION_CHARS}", "move the logic into a typed step's answer", 0))
    parser = _Parser(text)
    node = parser.expression()
    if parser.token.kind != "end":
        raise parser.fail(f"unexpected {crop(parser.token.text, 20)!r} after a complete "
                          "condition", "join conditions with 'and' or 'or'")
    return node


def parse_reference(text: str) -> Ref | Default:
    """A template placeholder's content: ``step.field`` or ``step.field ?? literal``; raises
    ``ConditionSyntaxError``."""
    if _NAME.fullmatch(text) and not _NUMBER.fullmatch(text) and text not in KEYWORDS:
        return Ref(tuple(text.split(".")), 0)  # the common case, without a tokenizer
    parser = _Parser(text)
    node = parser.defaulted()
    if not isinstance(node, Ref | Default) or parser.token.kind != "end":
        raise parser.fail("a placeholder holds one reference, optionally with '?? value'",
                          'write e.g. {triage.severity ?? "n/a"}')
    return node


def walk(node: Node) -> Iterator[Node]:
    """Every node of a tree, parents first."""
    stack: list[Node] = [node]
    while stack:
        item = stack.pop()
        yield item
        if isinstance(item, Default):
            stack += [item.fallback, item.ref]
        elif isinstance(item, Not):
            stack.append(item.operand)
        elif isinstance(item, Logic):
            stack += reversed(item.operands)
        elif isinstance(item, Compare):
            stack += [item.right, item.left]


def references(node: Node) -> list[Ref]:
    """The references in a tree, in order."""
    return [item for item in walk(node) if isinstance(item, Ref)]


# --- resolving references -----------------------------------------------------------------------

ANY = FieldInfo(frozenset(JSON_TYPES), None, True)
TEXT = FieldInfo(frozenset({"string"}), None, False)
OBJECT = FieldInfo(frozenset({"object"}), None, False)
BOOLEAN = FieldInfo(frozenset({"boolean"}), None, False)


def _as_written(reference: str) -> str:
    return reference


def resolve_reference(path: tuple[str, ...], scope: Scope, has_default: bool, offset: int,
            written: Callable[[str], str] = _as_written) -> tuple[FieldInfo, Issue | None]:
    """What a reference names, or why it cannot: the checks ``validate`` runs on every
    ``when:`` and ``{placeholder}``. ``written`` shows a reference as the user writes it in
    hints (a template wraps it in braces)."""
    root, rest = path[0], path[1:]
    text = ".".join(path)
    if (scope.inputs is not None and root in scope.inputs) or (
            scope.inputs is None and root not in scope.steps and root not in scope.others):
        if rest:
            return ANY, Issue(f"{root!r} is a run input (text); it has no field {rest[0]!r}",
                              f"write {written(root)} alone", offset, "input-has-no-fields")
        return TEXT, None
    if root in scope.steps:
        return _resolve_step(root, rest, scope, has_default, offset, written)
    if root == scope.step_id:
        return ANY, Issue(f"step {root!r} cannot read its own answer: it has none yet",
                          "name an upstream step or an input", offset, "not-upstream")
    if root in scope.others:
        where = f"step {scope.step_id!r}" if scope.step_id else "this step"
        return ANY, Issue(f"step {root!r} is not upstream of {where}, so {text} has no value "
                          "when it runs", f"add {root!r} to depends_on", offset, "not-upstream")
    known = [*(scope.inputs or ()), *scope.steps]
    guess = did_you_mean(root, known)
    if root in ("True", "False", "None"):
        hint = f"write {'null' if root == 'None' else root.lower()} in lowercase"
    elif guess:
        hint = suggestion(root, written(".".join((guess, *rest))), "did you mean {}?")
    else:
        hint = "name an input or an upstream step (known: " + (
            ", ".join(known[:10]) or "none") + ")"
    return ANY, Issue(f"{root!r} is neither a declared input nor an upstream step", hint,
                      offset, "unknown-reference")


def _resolve_step(root: str, rest: tuple[str, ...], scope: Scope, has_default: bool,
                  offset: int, written: Callable[[str], str]) -> tuple[FieldInfo, Issue | None]:
    fields = scope.steps[root]
    text = ".".join((root, *rest))
    if root in scope.may_skip and not has_default:
        return ANY, Issue(f"step {root!r} may be skipped (it has a when: condition), so {text} "
                          "needs a value to use instead", f"write {written(text + ' ?? ...')}"
                          ", e.g. " + written(f"{text} ?? 'n/a'"), offset, "may-be-skipped")
    if not rest:
        return (TEXT if fields is None else OBJECT), None
    if fields is None:
        return ANY, Issue(f"step {root!r} has no output_schema, so {text} names no field",
                          f"give {root!r} an output_schema with a field {rest[0]!r}, or write "
                          f"{written(root)} for its whole answer", offset, "untyped-step")
    name = ".".join(rest)
    if name in fields:
        return fields[name], None
    for cut in range(len(rest) - 1, 0, -1):
        prefix = ".".join(rest[:cut])
        info = fields.get(prefix)
        if info is None:
            continue
        if "array" in info.types:
            return ANY, Issue(f"{root}.{prefix} is a list; a single item of it cannot be named",
                              f"name the whole list, {written(f'{root}.{prefix}')}", offset,
                              "unknown-field")
        if "object" in info.types and not any(f.startswith(prefix + ".") for f in fields):
            return ANY, None  # an object without declared fields: anything may be in it
        break
    guess = did_you_mean(name, list(fields))
    listed = ", ".join(list(fields)[:12])
    return ANY, Issue(f"step {root!r} has no field {name!r}",
                      suggestion(name, written(f"{root}.{guess}"), "did you mean {}?") if guess
                      else f"its fields: {listed}", offset, "unknown-field")


# --- type checking ------------------------------------------------------------------------------


def _kinds(info: FieldInfo) -> frozenset[str]:
    """Types as comparisons see them: integers are numbers, and a field that may be absent
    may be null."""
    kinds = frozenset("number" if t == "integer" else t for t in info.types)
    return kinds | {"null"} if info.optional else kinds


def _literal_info(value: Any) -> FieldInfo:
    if isinstance(value, list):
        return FieldInfo(frozenset({"array"}), None, False)
    return FieldInfo(json_types(value), (value,), value is None)


def describe_field(info: FieldInfo, with_values: bool = True) -> str:
    """'one of "low", "medium", "high"', 'true or false', 'text' ... (``with_values``: name
    the allowed values rather than their kind)."""
    if with_values and info.enum is not None and len(info.enum) <= 12:
        return "one of " + ", ".join(shown_value(v, 30) for v in info.enum)
    names = {"string": "text", "number": "a number", "boolean": "true or false",
             "array": "a list", "object": "an object", "null": "null"}
    return " or ".join(names[k] for k in sorted(_kinds(info), key=JSON_TYPES.index))


class _TypeChecker:
    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.issues: list[Issue] = []

    def add(self, message: str, hint: str, offset: int, code: str = "condition-type") -> None:
        self.issues.append(Issue(message, hint, offset, code))

    def infer(self, node: Node) -> FieldInfo:
        if isinstance(node, Lit):
            return _literal_info(node.value)
        if isinstance(node, Ref):
            info, issue = resolve_reference(node.path, self.scope, False, node.offset)
            if issue:
                self.issues.append(issue)
            return info
        if isinstance(node, Default):
            return self.defaulted(node)
        if isinstance(node, Not):
            self.truth(node.operand, "not")
            return BOOLEAN
        if isinstance(node, Logic):
            for operand in node.operands:
                self.truth(operand, node.op)
            return BOOLEAN
        self.compare(node)
        return BOOLEAN

    def defaulted(self, node: Default) -> FieldInfo:
        info, issue = resolve_reference(node.ref.path, self.scope, True, node.ref.offset)
        if issue:
            self.issues.append(issue)
            return ANY
        fallback = _literal_info(node.fallback.value)
        if node.fallback.value is not None and info is not ANY and \
                not (_kinds(fallback) & _kinds(info)):
            self.add(f"the value used instead of {node.ref.text} is "
                     f"{describe_field(fallback, False)}"
                     f", but {node.ref.text} is {describe_field(info)}",
                     "use a value of the same kind", node.fallback.offset)
        enum = None if info.enum is None or fallback.enum is None else \
            tuple(dict.fromkeys((*info.enum, *fallback.enum)))
        return FieldInfo(info.types | fallback.types, enum, False)

    def truth(self, node: Node, op: str) -> None:
        info = self.infer(node)
        if info is ANY or "boolean" in info.types:
            return
        name = _name_of(node)
        self.add(f"{name} is {describe_field(info)}, not true or false, so '{op}' cannot use it",
                 f"compare it, e.g. {name} == ..." if isinstance(node, Ref | Default) else
                 "use a comparison here", node.left.offset if isinstance(node, Compare)
                 else node.offset)

    def compare(self, node: Compare) -> None:
        left, right = self.infer(node.left), self.infer(node.right)
        if left is ANY or right is ANY:
            return
        if node.op in ("in", "not in"):
            self.membership(node, left, right)
        elif node.op in ("==", "!="):
            self.equality(node.left, left, node.right, right, node.offset)
        else:
            kinds = _kinds(left) & _kinds(right) - {"null"}
            if not kinds & {"number", "string"}:
                self.add(f"'{node.op}' orders two numbers or two texts, not "
                         f"{describe_field(left)} and {describe_field(right)}",
                         "compare numbers, or use == and in", node.offset)
            elif kinds == {"string"} and any(
                    info.enum is not None and not isinstance(side, Lit)
                    for side, info in ((node.left, left), (node.right, right))):
                self.add(f"'{node.op}' would order these values alphabetically",
                         "list the values you mean: x in ['medium', 'high']", node.offset)

    def equality(self, left_node: Node, left: FieldInfo, right_node: Node, right: FieldInfo,
                 offset: int) -> None:
        if not (_kinds(left) & _kinds(right)):
            hint = "compare values of the same kind"
            if "boolean" in _kinds(left) and "string" in _kinds(right):
                hint = f"write {_name_of(left_node)} == true (or false)"
            self.add(f"{_name_of(left_node)} is {_describe(left_node, left)} but "
                     f"{_name_of(right_node)} is {_describe(right_node, right)}: they are never "
                     "equal",
                     hint, offset)
            return
        for field_node, field, literal_node in ((left_node, left, right_node),
                                                (right_node, right, left_node)):
            if isinstance(literal_node, Lit) and not isinstance(field_node, Lit):
                self.in_enum(field_node, field, literal_node.value, literal_node.offset)

    def in_enum(self, node: Node, info: FieldInfo, value: Any, offset: int) -> None:
        if info.enum is None or value is None or any(json_equal(value, v) for v in info.enum):
            return
        text_values = [v for v in info.enum if isinstance(v, str)]
        guess = did_you_mean(value, text_values) if isinstance(value, str) else None
        self.add(f"{shown_value(value)} is not a value of {_name_of(node)} "
                 f"({describe_field(info)})",
                 f"did you mean {shown_value(guess)}?" if guess else
                 "use one of the values its schema allows", offset, "not-in-enum")

    def membership(self, node: Compare, left: FieldInfo, right: FieldInfo) -> None:
        if isinstance(node.right, Lit) and isinstance(node.right.value, list):
            for item in node.right.value:
                item_info = _literal_info(item)
                if not (_kinds(left) & _kinds(item_info)):
                    self.add(f"{shown_value(item)} is {describe_field(item_info, False)} but "
                             f"{_name_of(node.left)} is {describe_field(left)}",
                             "list values of the same kind", node.right.offset)
                    return
                self.in_enum(node.left, left, item, node.right.offset)
            return
        if "array" in right.types:
            return
        if "string" in right.types and "string" in left.types:
            return  # text in text
        self.add(f"'{node.op}' needs a list or text on its right, not {describe_field(right)}",
                 "write e.g. x in ['a', 'b']", node.offset)


def _describe(node: Node, info: FieldInfo) -> str:
    return describe_field(info, not isinstance(node, Lit))


def _name_of(node: Node) -> str:
    if isinstance(node, Ref):
        return node.text
    if isinstance(node, Default):
        return node.ref.text
    if isinstance(node, Lit):
        return shown_value(node.value, 30)
    return "this part"


def check_condition(text: object, scope: Scope) -> list[Issue]:
    """Every problem with a ``when:`` expression: syntax, references (unknown, not upstream,
    a field that does not exist, a skippable step without ``??``), types (a boolean compared
    with text, a value outside an enum, ordering of non-numbers), and a result that is not
    true or false. ``text`` is what the plan holds (YAML may give ``when: true`` a bool)."""
    if not isinstance(text, str) or not text.strip():
        return [Issue(f"when: must be a condition written as text, not {crop(repr(text), 30)}",
                      "write e.g. when: \"triage.in_scope and triage.severity == 'high'\"", 0,
                      "condition-syntax")]
    try:
        node = parse_condition(text)
    except ConditionSyntaxError as exc:
        return [Issue(exc.issue.message, exc.issue.hint, exc.issue.offset, "condition-syntax")]
    checker = _TypeChecker(scope)
    result = checker.infer(node)
    if result is not ANY and "boolean" not in result.types:
        checker.add(f"when: must be true or false, but {_name_of(node)} is "
                    f"{describe_field(result)}", f"compare it, e.g. {_name_of(node)} == ...",
                    node.offset)
    return sorted(dict.fromkeys(checker.issues), key=lambda issue: issue.offset)


# --- evaluation ---------------------------------------------------------------------------------


class _Missing:
    """A reference with no value: its step was skipped, or the field is absent."""

    def __repr__(self) -> str:
        return "missing"


MISSING: Any = _Missing()


def lookup(path: tuple[str, ...], values: Mapping[str, Any]) -> Any:
    """The value a reference names in ``values`` (inputs as text, typed steps as their parsed
    objects, untyped steps as text; a skipped step absent), or ``MISSING``."""
    value = values.get(path[0], MISSING)
    for key in path[1:]:
        if not isinstance(value, dict) or key not in value:
            return MISSING
        value = value[key]
    return value


def _value(node: Node, values: Mapping[str, Any]) -> Any:
    if isinstance(node, Lit):
        return node.value
    if isinstance(node, Ref):
        found = lookup(node.path, values)
        return None if found is MISSING else found
    if isinstance(node, Default):
        found = lookup(node.ref.path, values)
        return node.fallback.value if found is MISSING or found is None else found
    if isinstance(node, Not):
        return _value(node.operand, values) is not True
    if isinstance(node, Logic):
        outcomes = (_value(operand, values) is True for operand in node.operands)
        return all(outcomes) if node.op == "and" else any(outcomes)
    return _compare(node.op, _value(node.left, values), _value(node.right, values))


def _compare(op: str, left: Any, right: Any) -> bool:
    if op in ("==", "!="):
        return json_equal(left, right) == (op == "==")
    if op in ("in", "not in"):
        if isinstance(right, list):
            found = any(json_equal(left, item) for item in right)
        elif isinstance(right, str) and isinstance(left, str):
            found = left in right
        else:
            return False
        return found == (op == "in")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (left, right))
    if not numbers and not (isinstance(left, str) and isinstance(right, str)):
        return False
    order = {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}
    return bool(order[op])


def evaluate(condition: str | Node, values: Mapping[str, Any]) -> bool:
    """Whether a condition holds. Only ``true`` counts as true; a missing value compares as
    null. Raises ``ConditionSyntaxError`` for text that does not parse (check it first)."""
    node = parse_condition(condition) if isinstance(condition, str) else condition
    return _value(node, values) is True


def explain(condition: str, values: Mapping[str, Any]) -> str:
    """Why a condition came out as it did, for the tree, ``run.json`` and the report:
    ``when: triage.severity == 'high' is false (triage.severity = "low")``."""
    node = parse_condition(condition)
    outcome = "true" if evaluate(node, values) else "false"
    shown = []
    for ref in dict.fromkeys(references(node)):
        found = lookup(ref.path, values)
        shown.append(f"{ref.text} = " + ("(skipped)" if found is MISSING and ref.path[0]
                                         not in values else "(none)" if found is MISSING
                                         else shown_value(found, 40)))
    facts = f" ({', '.join(dict.fromkeys(shown))})" if shown else ""
    return f"when: {crop(condition, 120)} is {outcome}{facts}"
