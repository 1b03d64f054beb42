"""Pure core of the identity graph: evidence in, clusters out, the same in any order.

Evidence. Identifiers seen together on one event are linked: every pair of an
event's identifiers is an edge that remembers how many distinct events showed
the pair, the earliest of them (event time, event id) and a few of their ids.
Each identifier remembers the earliest event that carried it and the anchors
(identifiers of the types in ``Rules.anchors``, member ids by default) it was
seen with. Junk values (streams/touchpoint/taxonomy.py) and ``Rules.blocklist``
never become identifiers.

Clustering, a function of the evidence alone:

1. An identifier seen with more distinct anchors than ``Rules.shared_threshold``
   is *shared* (a store kiosk, a family tablet): it links nothing and is a
   person of its own. Anchors only accumulate, so an identifier once shared
   stays shared, and the merges made through it are undone (a split).
2. The remaining edges are taken strongest first: more events first, then the
   edge whose stronger identifier type ranks higher in ``Rules.priority``, then
   the earlier evidence, then the identifiers themselves. Two clusters are
   joined along an edge unless the union would hold more identifiers of some
   type than ``Rules.limits`` allows (one member id, a few phones, ...): then
   the edge is refused and reported as a conflict, so the weaker evidence gives
   way (a phone typed once onto member B's order stays with member A, who used
   it many times).
3. A cluster's person id derives from its strongest identifier (by
   ``Rules.priority``, then value): a member's person is the member id's, as
   long as the member exists, whatever else joins; an anonymous cookie's
   person is merged into it at login. Two runs over the same events agree on
   every id.

An event belongs to the person of its highest-priority identifier that is not
shared (or, with only shared ones, of its highest-priority identifier).

The graph is kept incrementally (``Graph.add``): only the connected components
an event touches (and the pieces of a component split by a newly shared
identifier) are clustered again, with the same canonical procedure, so the
result always equals ``cluster`` run over every event at once (the reference
the property tests compare against). Every change of a person is reported as a
merge (all of a person's identifiers now belong to another person) or a split
(they now belong to several).

State is plain dicts and lists, so it can live in a table's JSON changelog.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.identity.links import person_id_for
from streams.touchpoint.taxonomy import is_junk

DEFAULT_PRIORITY = (
    "member_id", "pos_card", "wechat_unionid", "phone", "email", "platform_buyer_id",
    "wechat_openid", "device_id", "anonymous_id",
)
DEFAULT_LIMITS = {
    "member_id": 1, "pos_card": 2, "wechat_unionid": 1, "phone": 3, "email": 3,
    "platform_buyer_id": 5, "wechat_openid": 10, "device_id": 10, "anonymous_id": 100,
}


@dataclass(frozen=True)
class Rules:
    priority: tuple[str, ...] = DEFAULT_PRIORITY  # identifier types, strongest first
    limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))  # per type per person
    anchors: tuple[str, ...] = ("member_id",)  # types whose distinct values are distinct people
    shared_threshold: int = 2  # seen with more distinct anchors than this: shared
    blocklist: frozenset[str] = frozenset()  # "type:value" that never link, besides junk values
    evidence_ids: int = 3  # event ids kept per edge

    def rank(self, identifier: str) -> int:
        kind = identifier.split(":", 1)[0]
        return self.priority.index(kind) if kind in self.priority else len(self.priority)

    def limit(self, kind: str) -> int:
        return self.limits.get(kind, 1 << 30)


def identifiers_of(event: Mapping[str, Any], rules: Rules) -> list[str]:
    """The event's usable identifiers as ``type:value``, strongest first."""
    out = []
    for kind, value in (event.get("identifiers") or {}).items():
        if value is None or kind not in rules.priority or is_junk(str(value)):
            continue
        ident = f"{kind}:{value}"
        if ident not in rules.blocklist:
            out.append(ident)
    return sorted(set(out), key=lambda i: (rules.rank(i), i))


def _kind(identifier: str) -> str:
    return identifier.split(":", 1)[0]


def _edge_key(a: str, b: str) -> str:
    return f"{a}\t{b}" if a < b else f"{b}\t{a}"


@dataclass(frozen=True)
class Change:
    kind: str  # merge | split
    from_person: str
    into: tuple[str, ...]  # merge: the one survivor; split: the persons it became
    reason: str
    evidence: tuple[str, ...]  # event ids behind it


@dataclass(frozen=True)
class Conflict:
    a: str
    b: str
    reason: str
    evidence: tuple[str, ...]


@dataclass
class Update:
    person_id: str  # the event's person after it was added
    changes: list[Change] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)


class Graph:
    """The evidence and its clustering; ``add`` one event at a time, in any order."""

    def __init__(self, rules: Rules | None = None) -> None:
        self.rules = rules or Rules()
        # identifier -> {"first": [t, event id], "anchors": [...], "nbrs": [...]}
        self.nodes: dict[str, dict[str, Any]] = {}
        self.edges: dict[str, dict[str, Any]] = {}  # "a\tb" -> {"n", "first": [t, id], "ev": [...]}
        self.person: dict[str, str] = {}  # identifier -> person id
        self.refused: dict[str, str] = {}  # edge key -> why it links nothing (conflicts reported once)

    def to_json(self) -> dict[str, Any]:
        """The whole state as JSON-ready dicts and lists (what a table's changelog can hold)."""
        return {"nodes": self.nodes, "edges": self.edges, "person": self.person, "refused": self.refused}

    @classmethod
    def from_json(cls, state: Mapping[str, Any], rules: Rules | None = None) -> Graph:
        g = cls(rules)
        g.nodes, g.edges = dict(state["nodes"]), dict(state["edges"])
        g.person, g.refused = dict(state["person"]), dict(state["refused"])
        return g

    # ----------------------------------------------------------------- evidence

    def shared(self, identifier: str) -> bool:
        node = self.nodes.get(identifier)
        return node is not None and len(node["anchors"]) > self.rules.shared_threshold

    def _observe(self, ids: list[str], first: list[Any]) -> None:
        rules = self.rules
        anchors = [i for i in ids if _kind(i) in rules.anchors]
        for ident in ids:
            node = self.nodes.get(ident)
            if node is None:
                node = self.nodes[ident] = {"first": first, "anchors": [], "nbrs": []}
            elif first < node["first"]:
                node["first"] = first
            if len(node["anchors"]) <= rules.shared_threshold:  # beyond it, one more changes nothing
                node["anchors"] = sorted(set(node["anchors"]) | {a for a in anchors if a != ident})
        for x in range(len(ids)):
            for y in range(x + 1, len(ids)):
                a, b = sorted((ids[x], ids[y]))
                key = _edge_key(a, b)
                edge = self.edges.get(key)
                if edge is None:
                    self.edges[key] = {"n": 1, "first": first, "ev": [first[1]]}
                    self.nodes[a]["nbrs"].append(b)
                    self.nodes[b]["nbrs"].append(a)
                    continue
                if first[1] in edge["ev"]:
                    continue  # the same event again
                edge["n"] += 1
                edge["first"] = min(edge["first"], first)
                edge["ev"] = sorted([*edge["ev"], first[1]])[: self.rules.evidence_ids]

    # ----------------------------------------------------------------- clustering

    def _component(self, start: str, seen: set[str]) -> list[str]:
        """Identifiers reachable from ``start`` through identifiers that are not shared."""
        out, stack = [], [start]
        seen.add(start)
        while stack:
            ident = stack.pop()
            out.append(ident)
            for nb in self.nodes[ident]["nbrs"]:
                if nb not in seen and not self.shared(nb):
                    seen.add(nb)
                    stack.append(nb)
        return out

    def _cluster(self, component: list[str]) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
        """Canonical clustering of one component: identifier -> person, and refused edges."""
        rules = self.rules
        members = set(component)
        parent = {i: i for i in component}
        counts: dict[str, dict[str, int]] = {i: {_kind(i): 1} for i in component}

        def find(i: str) -> str:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        keys = {_edge_key(a, b) for a in component for b in self.nodes[a]["nbrs"] if b in members}

        def strength(key: str) -> tuple[Any, ...]:
            a, b = key.split("\t")
            e = self.edges[key]
            return (-e["n"], min(rules.rank(a), rules.rank(b)), max(rules.rank(a), rules.rank(b)), e["first"], key)

        refused = []
        for key in sorted(keys, key=strength):
            a, b = key.split("\t")
            ra, rb = find(a), find(b)
            if ra == rb:
                continue
            joined = dict(counts[ra])
            for kind, n in counts[rb].items():
                joined[kind] = joined.get(kind, 0) + n
            over = sorted(k for k, n in joined.items() if n > rules.limit(k))
            if over:
                refused.append((a, b, f"would give one person more {', '.join(over)} than allowed"))
                continue
            if (rules.rank(ra), ra) > (rules.rank(rb), rb):
                ra, rb = rb, ra
            parent[rb] = ra  # the root stays the cluster's strongest identifier
            counts[ra] = joined
        return {i: person_id_for(find(i)) for i in component}, refused

    # ----------------------------------------------------------------- the stream

    def add(self, event: Mapping[str, Any]) -> Update:
        """Add one event's evidence; return its person and the persons that changed."""
        ids = identifiers_of(event, self.rules)
        if not ids:
            raise ValueError(f"event {event.get('event_id')} has no usable identifier")
        first = [int(event["event_time_ms"]), str(event["event_id"])]
        was_shared = {i for i in ids if self.shared(i)}
        self._observe(ids, first)
        newly_shared = [i for i in ids if self.shared(i) and i not in was_shared]

        starts = [i for i in ids if not self.shared(i)]
        for ident in newly_shared:
            starts += [nb for nb in self.nodes[ident]["nbrs"] if not self.shared(nb)]
        old = {}
        new: dict[str, str] = {}
        refused: list[tuple[str, str, str]] = []
        seen: set[str] = set()
        for start in starts:
            if start in seen:
                continue
            component = self._component(start, seen)
            persons, why = self._cluster(component)
            new.update(persons)
            refused += why
        for ident in [*ids, *newly_shared]:
            if self.shared(ident):
                new[ident] = person_id_for(ident)
        for ident in new:
            if ident in self.person:
                old[ident] = self.person[ident]
        self.person.update(new)

        update = Update(self.person_of(ids))
        update.changes = self._changes(old, new, newly_shared)
        for a, b, reason in refused:
            key = _edge_key(a, b)
            if self.refused.get(key) != reason:
                self.refused[key] = reason
                update.conflicts.append(Conflict(a, b, reason, tuple(self.edges[key]["ev"])))
        return update

    def person_of(self, ids: list[str]) -> str:
        """The person of an event with these identifiers (strongest first)."""
        for ident in ids:
            if not self.shared(ident):
                return self.person[ident]
        return self.person[ids[0]]

    def _changes(self, old: dict[str, str], new: dict[str, str], newly_shared: list[str]) -> list[Change]:
        """Old persons whose identifiers now belong to other persons: merges and splits."""
        became: dict[str, set[str]] = {}
        for ident, before in old.items():
            became.setdefault(before, set()).add(new[ident])
        changes = []
        for before, after in sorted(became.items()):
            if after == {before}:
                continue
            evidence = self._evidence(new, before, after)
            if len(after) == 1:
                changes.append(Change("merge", before, tuple(after), "linked by identifiers seen together",
                                      evidence))
            else:
                reason = ("shared identifier stopped linking: " + ", ".join(sorted(newly_shared))
                          if newly_shared else "weaker evidence gave way")
                changes.append(Change("split", before, tuple(sorted(after - {before})), reason, evidence))
        return changes

    def _evidence(self, new: dict[str, str], before: str, after: set[str]) -> tuple[str, ...]:
        """Event ids of the edges among the re-clustered identifiers of the persons in ``after``
        and ``before`` (a few, smallest first)."""
        members = {i for i, p in new.items() if p in after or p == before}
        ev: set[str] = set()
        for ident in members:
            for nb in self.nodes[ident]["nbrs"]:
                if nb in members:
                    ev.update(self.edges[_edge_key(ident, nb)]["ev"])
        return tuple(sorted(ev)[: self.rules.evidence_ids])

    def clusters(self) -> dict[str, set[str]]:
        """Person -> identifiers."""
        out: dict[str, set[str]] = {}
        for ident, person in self.person.items():
            out.setdefault(person, set()).add(ident)
        return out


def cluster(events: Iterable[Mapping[str, Any]], rules: Rules | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Reference: every event's evidence first, then one clustering of the whole graph.

    Returns (identifier -> person, event id -> person)."""
    g = Graph(rules)
    events = list(events)
    for event in events:
        ids = identifiers_of(event, g.rules)
        if ids:
            g._observe(ids, [int(event["event_time_ms"]), str(event["event_id"])])
    person: dict[str, str] = {}
    seen: set[str] = set()
    for ident in sorted(g.nodes):
        if g.shared(ident):
            person[ident] = person_id_for(ident)
        elif ident not in seen:
            person.update(g._cluster(g._component(ident, seen))[0])
    g.person = person
    by_event = {}
    for event in events:
        ids = identifiers_of(event, g.rules)
        if ids:
            by_event[str(event["event_id"])] = g.person_of(ids)
    return person, by_event
