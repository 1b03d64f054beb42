"""The trigger expression language: parsed, type-checked and evaluated here, never ``eval``-ed.

Grammar (keywords are lower case; ``#`` starts nothing, there are no comments)::

    expr       := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := sum [ ("==" | "!=" | "<" | "<=" | ">" | ">=") sum
                      | ["not"] "in" (list | sum) ]
    sum        := atom (("+" | "-") atom)*
    atom       := literal | call | path | "(" expr ")"
    call       := NAME "(" [expr ("," expr)*] ")"   e.g. recommend(features.interest_category)
    list       := "[" [literal ("," literal)*] "]"
    literal    := ["-"] NUMBER | ["-"] DURATION | STRING | "true" | "false" | "null"
    path       := NAME ("." NAME)*           e.g. event.properties.cart.cart_id

``NUMBER`` is ``42`` or ``0.6``; ``DURATION`` a whole number and a unit, ``ms``,
``s``, ``m``, ``h``, ``d`` or ``w`` (``30m``, ``7d``), worth milliseconds;
``STRING`` is quoted with ``'`` or ``"``, a backslash escaping the next
character. A path starts at a root the caller names (the trigger definitions
give ``event``, ``features``, ``calendar`` and ``now``) and walks record
fields and map keys.

A call names a function of the registry the caller passes (``compile``'s
``functions``: name -> ``Signature``, its parameter types and result type);
the trigger definitions allow them in payloads only (``FUNCTIONS`` there:
``recommend(category)``, a list of product ids). Arguments are checked
against the parameters (``null`` fits any); an unknown function, or a call
where the caller allows none, is an ``ExprError`` at the name. Evaluation
looks the function up by name in the context's ``CALLS`` entry (a mapping
name -> Python callable the caller supplies); a function missing there, or an
argument that is null, makes the call null.

Types, checked before anything runs (``compile``): ``number``, ``string``,
``bool``, ``time`` (epoch milliseconds), ``duration`` (milliseconds), lists,
maps and records. ``time ± duration`` is a time, ``time - time`` a duration,
``duration ± duration`` a duration, ``number ± number`` a number. Comparisons
take two operands of one type (ordering: numbers, strings, times, durations);
``x in [..]`` takes a list of literals of x's type, or a path to a list of
them; ``null`` may only be compared with ``==`` / ``!=`` (a presence test).
An unknown root or field, a type mismatch or a syntax error is an
``ExprError`` carrying the offset in the source.

Evaluation reads plain dicts. A missing field is null. Any other comparison
or sum with a null operand is *unknown*, and ``and`` / ``or`` / ``not``
follow three-valued logic (as SQL does): ``unknown and false`` is false,
``unknown or true`` true, ``not unknown`` unknown. A condition starts a
trigger only when it is true, so missing data never fires one. A value of
the wrong type at run time also reads as unknown.
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

# ---------------------------------------------------------------------------- types

NUMBER, STRING, BOOL, TIME, DURATION, NULL = "number", "string", "bool", "time", "duration", "null"
SCALARS = (NUMBER, STRING, BOOL, TIME, DURATION)


@dataclass(frozen=True)
class ListOf:
    item: Type


@dataclass(frozen=True)
class MapOf:
    value: Type


@dataclass(frozen=True, eq=False)  # compared by identity: its field mapping is not hashable
class Record:
    name: str
    fields: Mapping[str, Type]


Type = str | ListOf | MapOf | Record


def type_name(t: Type) -> str:
    if isinstance(t, ListOf):
        return f"list of {type_name(t.item)}"
    if isinstance(t, MapOf):
        return f"map of {type_name(t.value)}"
    if isinstance(t, Record):
        return f"record {t.name}"
    return t


class ExprError(ValueError):
    """A syntax or type error at ``pos`` (0-based offset into the source)."""

    def __init__(self, message: str, pos: int) -> None:
        super().__init__(f"{message} (column {pos + 1})")
        self.message, self.pos = message, pos


# ---------------------------------------------------------------------------- durations

UNITS_MS = {"w": 604_800_000, "d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}
DURATION_RE = re.compile(r"([0-9]+)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> int:
    """Milliseconds of ``30m``, ``7d``...; ValueError for anything else."""
    m = DURATION_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not a duration like 30m, 12h or 7d")
    return int(m.group(1)) * UNITS_MS[m.group(2)]


def format_duration(ms: int) -> str:
    """The shortest spelling ``parse_duration`` reads back as ``ms``."""
    if ms < 0:
        return "-" + format_duration(-ms)
    if ms == 0:
        return "0s"
    unit = next(u for u, size in UNITS_MS.items() if ms % size == 0)
    return f"{ms // UNITS_MS[unit]}{unit}"


# ---------------------------------------------------------------------------- syntax tree

@dataclass(frozen=True)
class Literal:
    value: Any
    type: str
    pos: int = field(default=0, compare=False)

    def __str__(self) -> str:
        if self.type == STRING:
            return "'" + self.value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        if self.type == DURATION:
            return format_duration(self.value)
        if self.type in (BOOL, NULL):
            return {True: "true", False: "false", None: "null"}[self.value]
        return repr(self.value)


@dataclass(frozen=True)
class Path:
    names: tuple[str, ...]
    pos: int = field(default=0, compare=False)

    def __str__(self) -> str:
        return ".".join(self.names)


@dataclass(frozen=True)
class ListLit:
    items: tuple[Literal, ...]
    pos: int = field(default=0, compare=False)

    def __str__(self) -> str:
        return "[" + ", ".join(map(str, self.items)) + "]"


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Node, ...]
    pos: int = field(default=0, compare=False)

    def __str__(self) -> str:
        return f"{self.name}({', '.join(map(str, self.args))})"


@dataclass(frozen=True)
class Signature:
    """A function's parameter types and result type, for type checking calls."""

    params: tuple[Type, ...]
    result: Type


CALLS = "()"  # the context entry holding name -> callable (no root can be named so)


@dataclass(frozen=True)
class Not:
    operand: Node
    pos: int = field(default=0, compare=False)

    def __str__(self) -> str:
        return f"not {_sub(self.operand)}"


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and" | "or"
    operands: tuple[Node, ...]
    pos: int = field(default=0, compare=False)

    def __str__(self) -> str:
        return f" {self.op} ".join(map(_sub, self.operands))


@dataclass(frozen=True)
class Binary:
    op: str  # a comparison (==, !=, <, <=, >, >=) or a sum (+, -)
    left: Node
    right: Node
    pos: int = field(default=0, compare=False)

    def __str__(self) -> str:
        return f"{_sub(self.left)} {self.op} {_sub(self.right)}"


@dataclass(frozen=True)
class In:
    left: Node
    right: Node  # a ListLit or a list-valued expression
    negated: bool
    pos: int = field(default=0, compare=False)

    def __str__(self) -> str:
        return f"{_sub(self.left)} {'not in' if self.negated else 'in'} {_sub(self.right)}"


Node = Literal | Path | ListLit | Call | Not | BoolOp | Binary | In
N = TypeVar("N", bound=Node)


def _sub(node: Node) -> str:
    """A child as source: bare when atomic, else in parentheses (so parsing it back gives the same tree)."""
    return str(node) if isinstance(node, Literal | Path | ListLit | Call) else f"({node})"


# ---------------------------------------------------------------------------- lexer

KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false", "null"})
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<duration>[0-9]+(?:ms|s|m|h|d|w)(?![A-Za-z0-9_]))
  | (?P<number>[0-9]+(?:\.[0-9]+)?(?![A-Za-z0-9_.]))
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<op>==|!=|<=|>=|[<>()\[\],+-])
  | (?P<malformed>[0-9][\w.]*)
""", re.VERBOSE)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


@dataclass(frozen=True)
class _Token:
    kind: str  # duration number string name op keyword end
    text: str
    pos: int


def _tokens(source: str) -> Iterator[_Token]:
    pos = 0
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None:
            raise ExprError(f"unexpected {source[pos]!r}", pos)
        kind = m.lastgroup or ""
        if kind == "malformed":
            raise ExprError(f"{m.group()!r} is neither a number (42, 0.5) nor a duration (30m, 7d)", pos)
        if kind != "space":
            if kind == "name" and m.group() in KEYWORDS:
                kind = "keyword"
            yield _Token(kind, m.group(), pos)
        pos = m.end()
    yield _Token("end", "", len(source))


# ---------------------------------------------------------------------------- parser

_COMPARISONS = ("==", "!=", "<=", ">=", "<", ">")


class _Parser:
    def __init__(self, source: str) -> None:
        self.tokens = list(_tokens(source))
        self.i = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def take(self, *texts: str) -> _Token | None:
        if self.tok.kind in ("op", "keyword") and self.tok.text in texts:
            self.i += 1
            return self.tokens[self.i - 1]
        return None

    def expect(self, text: str) -> None:
        if self.take(text) is None:
            raise ExprError(f"expected {text!r}, found {self.tok.text or 'the end'!r}", self.tok.pos)

    def parse(self) -> Node:
        node = self.expr()
        if self.tok.kind != "end":
            raise ExprError(f"unexpected {self.tok.text!r}", self.tok.pos)
        return node

    def expr(self) -> Node:
        return self.bool_op("or", self.conjunction)

    def conjunction(self) -> Node:
        return self.bool_op("and", self.negation)

    def bool_op(self, op: str, operand: Callable[[], Node]) -> Node:
        first = operand()
        operands = [first]
        while self.take(op):
            operands.append(operand())
        return first if len(operands) == 1 else BoolOp(op, tuple(operands), first.pos)

    def negation(self) -> Node:
        tok = self.take("not")
        return Not(self.negation(), tok.pos) if tok else self.comparison()

    def comparison(self) -> Node:
        left = self.sum()
        tok = self.take(*_COMPARISONS)
        if tok:
            return Binary(tok.text, left, self.sum(), tok.pos)
        start = self.tok.pos
        negated = self.take("not") is not None
        if negated or self.tok.text == "in":
            self.expect("in")
            right = self.list() if self.tok.text == "[" else self.sum()
            return In(left, right, negated, start)
        return left

    def sum(self) -> Node:
        node = self.atom()
        while tok := self.take("+", "-"):
            node = Binary(tok.text, node, self.atom(), tok.pos)
        return node

    def atom(self) -> Node:
        tok = self.tok
        if self.take("("):
            node = self.expr()
            self.expect(")")
            return node
        if tok.kind == "name":
            self.i += 1
            if "." not in tok.text and self.take("("):
                return Call(tok.text, self.items(self.expr, ")"), tok.pos)
            return Path(tuple(tok.text.split(".")), tok.pos)
        if tok.text == "[":
            raise ExprError("a list goes after 'in'", tok.pos)
        return self.literal()

    def list(self) -> ListLit:
        start = self.tok.pos
        self.expect("[")
        return ListLit(self.items(self.literal, "]"), start)

    def items(self, item: Callable[[], N], close: str) -> tuple[N, ...]:
        """``item ("," item)*`` up to ``close`` (taken), or none; after the opening bracket."""
        if self.take(close):
            return ()
        found = [item()]
        while self.take(","):
            found.append(item())
        self.expect(close)
        return tuple(found)

    def literal(self) -> Literal:
        tok = self.tok
        if self.take("-"):
            lit = self.literal()
            if lit.type not in (NUMBER, DURATION) or lit.pos != tok.pos + 1:
                raise ExprError("'-' goes right before a number or a duration", tok.pos)
            return Literal(-lit.value, lit.type, tok.pos)
        self.i += 1
        if tok.kind == "number":
            return Literal(float(tok.text) if "." in tok.text else int(tok.text), NUMBER, tok.pos)
        if tok.kind == "duration":
            return Literal(parse_duration(tok.text), DURATION, tok.pos)
        if tok.kind == "string":
            return Literal(_ESCAPE.sub(r"\1", tok.text[1:-1]), STRING, tok.pos)
        if tok.kind == "keyword" and tok.text in ("true", "false", "null"):
            value = {"true": True, "false": False, "null": None}[tok.text]
            return Literal(value, NULL if value is None else BOOL, tok.pos)
        raise ExprError(f"expected a value, found {tok.text or 'the end'!r}", tok.pos)


def parse(source: str) -> Node:
    """The syntax tree of ``source``; ExprError on a syntax error."""
    return _Parser(source).parse()


# ---------------------------------------------------------------------------- type checking

_SUMS: dict[tuple[str, str, str], str] = {
    ("+", NUMBER, NUMBER): NUMBER, ("-", NUMBER, NUMBER): NUMBER,
    ("+", TIME, DURATION): TIME, ("+", DURATION, TIME): TIME, ("-", TIME, DURATION): TIME,
    ("-", TIME, TIME): DURATION,
    ("+", DURATION, DURATION): DURATION, ("-", DURATION, DURATION): DURATION,
}
_SUM_OPS = ("+", "-")
_ORDERED = (NUMBER, STRING, TIME, DURATION)


def check(node: Node, roots: Mapping[str, Type], functions: Mapping[str, Signature] | None = None) -> Type:
    """The type of ``node`` given the types of the roots (and the ``functions`` a call may name);
    ExprError where it does not type."""
    if isinstance(node, Literal):
        return node.type
    if isinstance(node, Call):
        return _call_type(node, roots, functions)
    if isinstance(node, Path):
        return _path_type(node, roots)
    if isinstance(node, ListLit):
        types = {i.type for i in node.items}
        if len(types) > 1 or NULL in types:
            raise ExprError(f"a list holds literals of one type, not {' and '.join(sorted(types))}", node.pos)
        return ListOf(types.pop() if types else NULL)
    if isinstance(node, Not | BoolOp):
        for operand in (node.operand,) if isinstance(node, Not) else node.operands:
            _expect(operand, roots, BOOL, f"'{'not' if isinstance(node, Not) else node.op}'", functions)
        return BOOL
    left, right = check(node.left, roots, functions), check(node.right, roots, functions)
    if isinstance(node, In):
        if not isinstance(right, ListOf):
            raise ExprError(f"'in' needs a list, not {type_name(right)}", node.right.pos)
        if left not in SCALARS or right.item not in (left, NULL):
            raise ExprError(f"cannot look for {type_name(left)} in a {type_name(right)}", node.pos)
        return BOOL
    if node.op in _SUM_OPS:
        result = _SUMS.get((node.op, left, right)) if isinstance(left, str) and isinstance(right, str) else None
        if result is None:
            raise ExprError(f"cannot compute {type_name(left)} {node.op} {type_name(right)}", node.pos)
        return result
    if NULL in (left, right):
        if node.op not in ("==", "!="):
            raise ExprError(f"null can only be compared with == or !=, not {node.op}", node.pos)
        return BOOL
    if left != right or left not in SCALARS:
        raise ExprError(f"cannot compare {type_name(left)} with {type_name(right)}", node.pos)
    if node.op not in ("==", "!=") and left not in _ORDERED:
        raise ExprError(f"{type_name(left)} values have no order: use == or !=", node.pos)
    return BOOL


def _call_type(node: Call, roots: Mapping[str, Type], functions: Mapping[str, Signature] | None) -> Type:
    if not functions:
        raise ExprError(f"no function can be called here, not {node.name!r}", node.pos)
    sig = functions.get(node.name)
    if sig is None:
        raise ExprError(f"unknown function {node.name!r}{suggest(node.name, functions)}; known: "
                        f"{', '.join(sorted(functions))}", node.pos)
    if len(node.args) != len(sig.params):
        raise ExprError(f"{node.name}() takes {len(sig.params)} argument(s), not {len(node.args)}", node.pos)
    for i, (arg, want) in enumerate(zip(node.args, sig.params, strict=True), start=1):
        got = check(arg, roots, functions)
        if got != want and got != NULL:
            raise ExprError(f"{node.name}() argument {i} needs {type_name(want)}, not {type_name(got)}: {arg}",
                            arg.pos)
    return sig.result


def _expect(node: Node, roots: Mapping[str, Type], want: Type, where: str,
            functions: Mapping[str, Signature] | None = None) -> None:
    got = check(node, roots, functions)
    if got != want:
        raise ExprError(f"{where} needs {type_name(want)}, not {type_name(got)}: {node}", node.pos)


def _path_type(node: Path, roots: Mapping[str, Type]) -> Type:
    root, *rest = node.names
    if root not in roots:
        raise ExprError(f"unknown name {root!r}{suggest(root, roots)}; known: {', '.join(roots)}", node.pos)
    t, pos = roots[root], node.pos + len(root) + 1
    for i, name in enumerate(rest):
        where = ".".join(node.names[: i + 1])
        if isinstance(t, Record):
            if name not in t.fields:
                raise ExprError(f"{where} has no field {name!r}{suggest(name, t.fields)}", pos)
            t = t.fields[name]
        elif isinstance(t, MapOf):
            t = t.value
        else:
            raise ExprError(f"{where} is a {type_name(t)}, it has no field {name!r}", pos)
        pos += len(name) + 1
    return t


def suggest(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or nothing."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------------------- evaluation

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "+": operator.add, "-": operator.sub,
}


def evaluate(node: Node, context: Mapping[str, Any]) -> Any:
    """The value of a checked tree over ``context`` (root name -> value); None is null / unknown."""
    if isinstance(node, Literal):
        return node.value
    if isinstance(node, Path):
        value: Any = context
        for name in node.names:
            value = value.get(name) if isinstance(value, Mapping) else None
        return value
    if isinstance(node, ListLit):
        return [i.value for i in node.items]
    if isinstance(node, Call):
        fn = (context.get(CALLS) or {}).get(node.name)
        args = [evaluate(a, context) for a in node.args]
        return None if fn is None or None in args else fn(*args)
    if isinstance(node, Not):
        value = _truth(evaluate(node.operand, context))
        return None if value is None else not value
    if isinstance(node, BoolOp):
        values = [_truth(evaluate(o, context)) for o in node.operands]
        decisive = node.op == "or"  # true decides an "or", false an "and"
        if decisive in values:
            return decisive
        return None if None in values else not decisive
    if isinstance(node, Binary) and node.op in ("==", "!=") and NULL in (_null(node.left), _null(node.right)):
        present = evaluate(node.right if _null(node.left) else node.left, context) is not None
        return present if node.op == "!=" else not present
    left, right = evaluate(node.left, context), evaluate(node.right, context)
    if left is None or right is None:
        return None
    try:
        if isinstance(node, In):
            return (left in right) != node.negated if isinstance(right, list) else None
        return _OPS[node.op](left, right)
    except TypeError:
        return None


def _null(node: Node) -> str | None:
    return NULL if isinstance(node, Literal) and node.type == NULL else None


def _truth(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def paths(node: Node) -> Iterator[Path]:
    """Every path in the tree, left to right."""
    if isinstance(node, Path):
        yield node
    elif isinstance(node, Not):
        yield from paths(node.operand)
    elif isinstance(node, BoolOp):
        for o in node.operands:
            yield from paths(o)
    elif isinstance(node, Binary | In):
        yield from paths(node.left)
        yield from paths(node.right)
    elif isinstance(node, Call):
        for a in node.args:
            yield from paths(a)


# ---------------------------------------------------------------------------- compiled expressions

@dataclass(frozen=True)
class Expr:
    """A parsed and type-checked expression, callable on a context."""

    source: str
    node: Node
    type: Type

    def __call__(self, context: Mapping[str, Any]) -> Any:
        return evaluate(self.node, context)

    def paths(self) -> list[Path]:
        return list(paths(self.node))


def compile(source: str, roots: Mapping[str, Type], want: Type | None = None,
            functions: Mapping[str, Signature] | None = None) -> Expr:
    """Parse and type-check ``source``; with ``want``, its type must be that. ``functions``: the
    functions a call may name (none by default)."""
    try:
        node = parse(source)
        t = check(node, roots, functions)
    except RecursionError:
        raise ExprError("nested too deeply", 0) from None
    if want is not None and t != want:
        raise ExprError(f"needs {type_name(want)}, but this is {type_name(t)}", node.pos)
    return Expr(source, node, t)
