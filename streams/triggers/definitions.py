"""Trigger definitions: one YAML file per trigger, validated when loaded (pure; no code in the files).

``load(BUILTIN_DIR, extra_dir)`` reads every ``*.yaml`` / ``*.yml`` file of
the directories and returns the definitions by name. A file is checked in
three steps, and every problem found is reported as ``file:line: where:
problem`` (all of them at once, in a ``DefinitionError``):

1. YAML: syntax errors and repeated keys.
2. The published JSON Schema (``schemas/triggers/trigger.schema.json``):
   keys, types, event types, channels, durations, ranges.
3. Meaning: each expression parses and type-checks against the roots it may
   use (``streams/triggers/vocabulary.py``), conditions are bool, keys are
   paths to a single value, payloads name no personal identifier, the name
   is the file's and is not defined twice. Payload values may call the
   functions of ``vocabulary.FUNCTIONS`` (``recommend(category)``); nothing
   else may. A list value (a list of strings) goes into the record as JSON.

Lines come from the composed YAML document: each JSON path of the data is
walked down the node tree to the node's mark. The file format and the
expression language are described in ``streams/triggers/README.md``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema.exceptions import ValidationError

from streams import avro
from streams.touchpoint.taxonomy import PERSONAL_IDENTIFIERS
from streams.triggers import expr
from streams.triggers.delivery import Terms
from streams.triggers.expr import Expr, ExprError
from streams.triggers.vocabulary import AS_OF_NOW, event_type, roots, signatures

BUILTIN_DIR = Path(__file__).with_name("builtin")
SCHEMA_PATH = avro.SCHEMA_DIR / "triggers" / "trigger.schema.json"
_KEY_TYPES = (expr.STRING, expr.NUMBER, expr.TIME)
_VALUE_TYPES = (*_KEY_TYPES, expr.BOOL, expr.DURATION)
_PAYLOAD_TYPES = (*_VALUE_TYPES, expr.ListOf(expr.STRING))
_PERSONAL = {("event", "identifiers", name) for name in PERSONAL_IDENTIFIERS}


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


class DefinitionError(ValueError):
    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("invalid trigger definitions:\n" + "\n".join(map(str, problems)))
        self.problems = list(problems)


@dataclass(frozen=True)
class Cancel:
    events: frozenset[str]
    key: Expr | None  # None: cancels every pending wait of the rule for the person


@dataclass(frozen=True)
class Wait:
    for_ms: int
    cancel: tuple[Cancel, ...]
    collect: Mapping[str, Expr]


@dataclass(frozen=True)
class Definition:
    name: str
    description: str
    file: str
    line: int  # of its name
    events: frozenset[str]  # empty: started by its condition on the person's features
    when: Expr | None
    key: Expr
    wait: Wait | None
    payload: Mapping[str, Expr]
    terms: Terms

    def expressions(self) -> Iterator[Expr]:
        yield from (e for e in (self.when, self.key) if e is not None)
        yield from self.payload.values()
        if self.wait:
            yield from (c.key for c in self.wait.cancel if c.key is not None)
            yield from self.wait.collect.values()

    @cached_property
    def features(self) -> frozenset[str]:
        """The feature names its expressions read."""
        return frozenset(p.names[1] for e in self.expressions() for p in e.paths()
                         if p.names[0] == "features" and len(p.names) > 1)

    @cached_property
    def reads_now(self) -> bool:
        """Whether an expression reads ``now`` (so a clock advance alone can change its outcome)."""
        return any(p.names[0] == "now" for e in self.expressions() for p in e.paths())

    @cached_property
    def changes_with_time(self) -> bool:
        """Whether time alone can change its outcome: it reads ``now`` or a feature conditions read as
        of now (``vocabulary.AS_OF_NOW``, e.g. days since the last order)."""
        return self.reads_now or bool(self.features & AS_OF_NOW.keys())

    def starts(self, context: Mapping[str, Any]) -> bool:
        """True when it starts in ``context`` (root -> value: event, features, calendar, now)."""
        if self.events and (context.get("event") or {}).get("type") not in self.events:
            return False
        return self.when is None or self.when(context) is True

    def key_of(self, context: Mapping[str, Any]) -> str | None:
        return _text(self.key(context))

    def cancels(self, event: Mapping[str, Any], pending_key: str) -> bool:
        """Whether ``event`` cancels this rule's wait pending under ``pending_key``."""
        return self.wait is not None and any(
            event.get("type") in c.events and (c.key is None or _text(c.key({"event": event})) == pending_key)
            for c in self.wait.cancel)

    def payload_of(self, context: Mapping[str, Any]) -> dict[str, str]:
        return _texts((name, e(context)) for name, e in self.payload.items())

    def evidence(self, context: Mapping[str, Any]) -> dict[str, str]:
        """The values its start condition read: why it fired."""
        return _texts((str(p), expr.evaluate(p, context)) for p in (self.when.paths() if self.when else []))


def _texts(items: Iterable[tuple[str, Any]]) -> dict[str, str]:
    """The non-null values as text (the Trigger record's payload is a map of strings)."""
    return {k: t for k, v in items if (t := _text(v)) is not None}


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):  # as collected values are: '["P1", "P2"]'
        return json.dumps(value)
    return ("true" if value else "false") if isinstance(value, bool) else repr(value)


# ---------------------------------------------------------------------------- loading

def load(*dirs: Path | str) -> dict[str, Definition]:
    """Every definition in the directories, by name; DefinitionError listing every problem."""
    found: dict[str, Definition] = {}
    problems: list[Problem] = []
    for d in map(Path, dirs):
        if not d.is_dir():
            problems.append(Problem(str(d), None, "no such directory of trigger definitions"))
            continue
        for path in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
            try:
                definition = parse(path.read_text(encoding="utf-8"), str(path))
            except DefinitionError as exc:
                problems.extend(exc.problems)
                continue
            if definition.name in found:
                first = found[definition.name]
                problems.append(Problem(definition.file, definition.line,
                                        f"trigger {definition.name!r} is already defined at {first.file}:{first.line}"))
                continue
            found[definition.name] = definition
    if problems:
        raise DefinitionError(problems)
    return found


def parse(text: str, file: str) -> Definition:
    """One definition from the text of ``file`` (named in problems; its stem must be the name)."""
    node, data = _compose(text, file)
    found = [Problem(file, line, message) for error in _validator().iter_errors(data)
             for line, message in _schema_problems(error, node)]
    if found:
        raise DefinitionError(sorted(found, key=lambda p: p.line or 0))
    return _Builder(file, text, node, data).definition()


def _compose(text: str, file: str) -> tuple[yaml.Node, Any]:
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise DefinitionError([Problem(file, mark.line + 1 if mark else None,
                                       f"not valid YAML: {exc.problem or exc.context}")]) from None
    except yaml.YAMLError as exc:
        raise DefinitionError([Problem(file, None, f"not valid YAML: {exc}")]) from None
    if node is None:
        raise DefinitionError([Problem(file, 1, "empty: a trigger definition is a YAML mapping")])
    repeated = list(_repeated_keys(node))
    if repeated:
        raise DefinitionError([Problem(file, line, message) for line, message in repeated])
    return node, data


def _repeated_keys(node: yaml.Node) -> Iterator[tuple[int, str]]:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for k, v in node.value:
            line = k.start_mark.line + 1
            if k.value in seen:
                yield line, f"key {k.value!r} repeated (first at line {seen[k.value]})"
            seen.setdefault(k.value, line)
            yield from _repeated_keys(v)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _repeated_keys(item)


def _find(node: yaml.Node, path: Sequence[Any]) -> tuple[yaml.Node | None, yaml.Node]:
    """(key node, value node) of the deepest node on ``path``."""
    key: yaml.Node | None = None
    for part in path:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            key, node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            key, node = None, node.value[part]
        else:
            break
    return key, node


def _at(node: yaml.Node, path: Sequence[Any]) -> int:
    """Line of the deepest node on ``path``: the line of its key where it has one."""
    key, found = _find(node, path)
    return int((key or found).start_mark.line) + 1


def _line_of_offset(text: str, node: yaml.Node, pos: int) -> int:
    """Line of character ``pos`` of a scalar's value. YAML folds each line break of a multi-line
    scalar into one character, so each source line holds its stripped length plus one."""
    first = node.start_mark.line + (1 if getattr(node, "style", None) in ("|", ">") else 0)
    lines = text.splitlines()[first: node.end_mark.line + 1]
    if lines and first == node.start_mark.line:
        lines[0] = lines[0][node.start_mark.column:]
    seen = 0
    for i, line in enumerate(lines):
        seen += len(line.strip()) + 1
        if pos < seen:
            return int(first) + i + 1
    return int(node.start_mark.line) + 1


def _where(path: Sequence[Any]) -> str:
    """``start.events[0]: `` for a path; nothing for the document itself."""
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return f"{where}: " if where else ""


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


def _schema_problems(error: ValidationError, node: yaml.Node) -> Iterator[tuple[int, str]]:
    """(line, message) for a schema violation, worded for the people who write the files."""
    path, kind, value, schema = list(error.absolute_path), error.validator, error.instance, error.schema
    where = _where(path)
    if kind == "additionalProperties":
        known = list(schema.get("properties", {}))
        for extra in (k for k in value if k not in known):
            yield _at(node, [*path, extra]), f"{where}unknown key {extra!r}{expr.suggest(extra, known)}" + (
                f"; known keys: {', '.join(known)}" if known else "")
    elif kind == "enum":
        options = [str(o) for o in error.validator_value]
        listed = f"; one of: {', '.join(options)}" if len(options) <= 10 else ""
        yield _at(node, path), f"{where}{value!r} is not known{expr.suggest(str(value), options)}{listed}"
    elif kind == "pattern":
        # a property name's pattern (propertyNames) is reported on that name's own line
        at = [*path, value] if "propertyNames" in error.schema_path else path
        yield _at(node, at), f"{where}{value!r} does not fit: {schema['description']}"
    elif kind == "minProperties":
        yield _at(node, path), f"{where}must not be empty"
    else:
        yield _at(node, path), f"{where}{error.message}"


def _get(data: Any, path: Sequence[Any]) -> Any:
    for part in path:
        data = data[part]
    return data


class _Builder:
    """Compiles a schema-valid document into a Definition, collecting every problem with its line."""

    def __init__(self, file: str, text: str, node: yaml.Node, data: dict[str, Any]) -> None:
        self.file, self.text, self.node, self.data = file, text, node, data
        self.problems: list[Problem] = []

    def problem(self, path: Sequence[Any], message: str, pos: int | None = None) -> None:
        """``pos``: the offset in the expression at ``path`` the problem is about."""
        line = _at(self.node, path) if pos is None else _line_of_offset(self.text, _find(self.node, path)[1], pos)
        self.problems.append(Problem(self.file, line, f"{_where(path)}{message}"))

    def expression(self, path: Sequence[Any], roots_: Mapping[str, expr.Type], want: expr.Type | None = None,
                   types: Sequence[expr.Type] = (), single_path: bool = False,
                   recorded: bool = False, functions: Mapping[str, expr.Signature] | None = None) -> Expr | None:
        """Compile the expression at ``path``; ``recorded``: its value goes into the trigger record;
        ``functions``: what it may call."""
        source = _get(self.data, path)
        try:
            e = expr.compile(source, roots_, want, functions)
        except ExprError as exc:
            self.problem(path, f"{exc.message} (column {exc.pos + 1} of {source.strip()!r})", exc.pos)
            return None
        if single_path and not isinstance(e.node, expr.Path):
            self.problem(path, f"must be a path such as event.properties.cart.cart_id, not {source!r}")
        elif types and e.type not in types:
            wanted = " or ".join(map(expr.type_name, types))
            self.problem(path, f"must be a single {wanted} value; {source!r} is a {expr.type_name(e.type)}")
        elif recorded and any(p.names[:3] in _PERSONAL for p in e.paths()):
            self.problem(path, f"{source!r} is personal data: it never goes into a trigger record")
        return e

    def fields(self, path: Sequence[Any], roots_: Mapping[str, expr.Type],
               functions: Mapping[str, expr.Signature] | None = None) -> dict[str, Expr | None]:
        section = _get(self.data, path[:-1]).get(path[-1], {})
        types = _PAYLOAD_TYPES if functions else _VALUE_TYPES
        return {name: self.expression([*path, name], roots_, types=types, recorded=True, functions=functions)
                for name in section}

    def definition(self) -> Definition:
        d = self.data
        stem = Path(self.file).stem
        if d["name"] != stem:
            self.problem(["name"], f"{d['name']!r} must be the file's name, {stem!r}")
        events = frozenset(d["start"].get("events", ()))
        start_roots = roots(with_event=bool(events))
        when = self.expression(["start", "when"], start_roots, want=expr.BOOL) if "when" in d["start"] else None
        key = self.expression(["key"], start_roots, types=_KEY_TYPES, single_path=True, recorded=True)
        payload = self.fields(["payload"], start_roots, signatures())
        wait = self.wait(d.get("wait"), key, payload)
        if self.problems:
            raise DefinitionError(self.problems)
        assert key is not None
        terms = Terms(d["name"], d["priority"], tuple(d["channels"]), expr.parse_duration(d.get("suppress_for", "0s")),
                      float(d.get("holdout", 0.0)))
        return Definition(d["name"], d["description"].strip(), self.file, _at(self.node, ["name"]), events, when, key,
                          wait, {k: v for k, v in payload.items() if v is not None}, terms)

    def wait(self, spec: dict[str, Any] | None, key: Expr | None, payload: Mapping[str, Any]) -> Wait | None:
        if spec is None:
            return None
        event_roots = {"event": event_type()}
        cancels = []
        for i, c in enumerate(spec.get("cancel", [])):
            cancel_key = None
            if "key" in c:
                cancel_key = self.expression(["wait", "cancel", i, "key"], event_roots, types=_KEY_TYPES,
                                             single_path=True)
                if cancel_key and key and key.type in _KEY_TYPES and cancel_key.type != key.type:
                    self.problem(["wait", "cancel", i, "key"], f"is a {expr.type_name(cancel_key.type)}, "
                                 f"the trigger's key a {expr.type_name(key.type)}: they never match")
            cancels.append(Cancel(frozenset(c["events"]), cancel_key))
        collect = self.fields(["wait", "collect"], event_roots)
        for name in collect.keys() & payload.keys():
            self.problem(["wait", "collect", name], f"{name!r} is also a payload field")
        return Wait(expr.parse_duration(spec["for"]), tuple(cancels),
                    {k: v for k, v in collect.items() if v is not None})
