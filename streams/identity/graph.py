"""Pure core of the identity graph: evidence in, clusters out, the same in any order.

Evidence. Identifiers seen together on one event are linked: every pair of an
event's identifiers is an edge that remembers the earliest event that showed
the pair (event time, event id) and a short digest of each distinct event that
did, up to ``Rules.edge_cap`` of them (the smallest digests, a bottom-k sketch:
the count is exact up to the cap): an edge's strength is how many it holds, so
it saturates at the cap. Changes and conflicts cite the earliest events of the
edges behind them. Each identifier remembers the anchors (identifiers of the
types in ``Rules.anchors``, member ids by default) it was seen with, up to one
more than ``Rules.shared_threshold`` (the smallest). Junk values
(streams/touchpoint/taxonomy.py) and ``Rules.blocklist`` never become
identifiers.

Every piece of evidence is a minimum or a capped set union, so evidence is a
join-semilattice: adding an event twice changes nothing, and two graphs'
evidence can be joined (``Graph.join``) in any order and grouping with the
same result. That is what lets the graph be split across partitions and put
back together (streams/identity/shards.py), and lets a replay after a crash
apply an event again harmlessly.

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

Erasure (``Graph.without``): the graph becomes the one built from the same
events with the erased identifiers taken out of each event, exactly, as far as
the evidence it holds goes (see ``without``); an identifier shared only through
an erased member stops being shared, the one exception to "once shared stays
shared" (flags learned from elsewhere stay: that evidence is not here).

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

import copy
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.identity.links import person_id_for
from streams.touchpoint.taxonomy import is_junk

DIGEST_HEX = 12  # an edge counts distinct events by 48-bit digests of their ids
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
    edge_cap: int = 8  # distinct events counted per edge (an edge's strength saturates here)
    evidence_ids: int = 3  # event ids reported with a change or conflict

    @classmethod
    def parse(cls, priority: str = "", limits: str = "", shared_threshold: int = 2, blocklist: str = "") -> Rules:
        """Rules from their settings' text (TOUCHLINE_IDENTITY_*): ``priority`` a comma list of
        identifier types, strongest first (empty: the default order); ``limits`` ``type=N`` pairs
        overriding the default limits; ``blocklist`` ``type:value`` identifiers that never link.
        Raises ValueError naming what is wrong."""
        order = tuple(t.strip() for t in priority.split(",") if t.strip()) or DEFAULT_PRIORITY
        unknown = sorted(set(order) - set(DEFAULT_PRIORITY))
        if unknown or len(set(order)) != len(order):
            raise ValueError(f"identity priority: unknown or repeated types {unknown or list(order)}; "
                             f"known: {', '.join(DEFAULT_PRIORITY)}")
        caps = dict(DEFAULT_LIMITS)
        for item in (i.strip() for i in limits.split(",") if i.strip()):
            kind, sep, n = item.partition("=")
            if not sep or kind.strip() not in DEFAULT_PRIORITY or not n.strip().isdigit() or int(n) < 1:
                raise ValueError(f"identity limits: {item!r} is not type=N with a known type and N >= 1")
            caps[kind.strip()] = int(n)
        if shared_threshold < 1:
            raise ValueError("identity shared threshold must be at least 1")
        blocked = frozenset(b.strip() for b in blocklist.split(",") if b.strip())
        bad = sorted(b for b in blocked if b.split(":", 1)[0] not in DEFAULT_PRIORITY or ":" not in b)
        if bad:
            raise ValueError(f"identity blocklist: {bad} are not type:value with a known type")
        return cls(priority=order, limits=caps, shared_threshold=shared_threshold, blocklist=blocked)

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


def _digest(event_id: str) -> str:
    """What an edge keeps of an event: 12 hex digits of a digest of its id."""
    return hashlib.blake2b(event_id.encode(), digest_size=DIGEST_HEX // 2).hexdigest()


def _upgraded(state: Mapping[str, Any], cap: int) -> Mapping[str, Any]:
    """A group's JSON in the current form. Groups written before edge digests kept each node as
    {"first", "anchors", "nbrs"} and raw event ids on the edges; a group is written whole, so
    its first node tells which form it is in."""
    nodes = state["nodes"]
    if not isinstance(next(iter(nodes.values()), None), dict):
        return state
    return {**state, "nodes": {i: n["anchors"] for i, n in nodes.items()},
            "edges": {k: {"first": e["first"], "ev": _capped((), map(_digest, e["ev"]), cap)}
                      for k, e in state["edges"].items()}}


def _capped(a: Iterable[str], b: Iterable[str], cap: int) -> list[str]:
    """The ``cap`` smallest of the union: a join that is idempotent, commutative, associative."""
    return sorted(set(a) | set(b))[:cap]


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
    persons: tuple[str, str] = ("", "")  # the persons a and b were left in


@dataclass
class Update:
    person_id: str  # the event's person after it was added
    changes: list[Change] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    shared: list[str] = field(default_factory=list)  # identifiers this update found to be shared


class Graph:
    """The evidence and its clustering; ``add`` one event at a time, in any order."""

    def __init__(self, rules: Rules | None = None) -> None:
        self.rules = rules or Rules()
        self.nodes: dict[str, list[str]] = {}  # identifier -> the anchors it was seen with
        self.edges: dict[str, dict[str, Any]] = {}  # "a\tb" -> {"first": [t, event id], "ev": [event digests]}
        self.nbrs: dict[str, list[str]] = {}  # identifier -> linked identifiers (from the edges; not stored)
        self.flags: set[str] = set()  # identifiers known to be shared from evidence held elsewhere
        self.person: dict[str, str] = {}  # identifier -> person id
        self.refused: dict[str, str] = {}  # edge key -> why it links nothing (conflicts reported once)

    def to_json(self) -> dict[str, Any]:
        """The whole state as JSON-ready dicts and lists (what a table's changelog can hold)."""
        return {"nodes": self.nodes, "edges": self.edges, "flags": sorted(self.flags),
                "person": self.person, "refused": self.refused}

    @classmethod
    def from_json(cls, state: Mapping[str, Any], rules: Rules | None = None) -> Graph:
        g = cls(rules)
        # the graph changes its own copy, never the state it came from
        state = copy.deepcopy(_upgraded(state, g.rules.edge_cap))
        g.nodes, g.edges = state["nodes"], state["edges"]
        g.nbrs = {i: [] for i in g.nodes}
        g._link(g.edges)
        g.flags = set(state.get("flags", ()))
        g.person, g.refused = state["person"], state["refused"]
        return g

    # ----------------------------------------------------------------- evidence

    def shared(self, identifier: str) -> bool:
        if identifier in self.flags:
            return True
        anchors = self.nodes.get(identifier)
        return anchors is not None and len(anchors) > self.rules.shared_threshold

    def _link(self, keys: Iterable[str]) -> None:
        for key in keys:
            a, b = key.split("\t")
            self.nbrs.setdefault(a, []).append(b)
            self.nbrs.setdefault(b, []).append(a)

    def _node(self, ident: str, anchors: Iterable[str]) -> None:
        # one more than the threshold is enough to know the identifier is shared
        self.nodes[ident] = _capped(self.nodes.get(ident, ()), anchors, self.rules.shared_threshold + 1)
        self.nbrs.setdefault(ident, [])

    def _edge(self, key: str, first: list[Any], ev: Iterable[str]) -> None:
        edge = self.edges.get(key)
        if edge is None:
            self._link([key])
            self.edges[key] = {"first": first, "ev": _capped((), ev, self.rules.edge_cap)}
        else:
            edge["first"] = min(edge["first"], first)
            edge["ev"] = _capped(edge["ev"], ev, self.rules.edge_cap)

    def _observe(self, ids: list[str], first: list[Any]) -> None:
        anchors = [i for i in ids if _kind(i) in self.rules.anchors]
        for ident in ids:
            self._node(ident, (a for a in anchors if a != ident))
        digest = [_digest(first[1])]
        for x in range(len(ids)):
            for y in range(x + 1, len(ids)):
                self._edge(_edge_key(ids[x], ids[y]), first, digest)

    # ----------------------------------------------------------------- clustering

    def _component(self, start: str, seen: set[str]) -> list[str]:
        """Identifiers reachable from ``start`` through identifiers that are not shared."""
        out, stack = [], [start]
        seen.add(start)
        while stack:
            ident = stack.pop()
            out.append(ident)
            for nb in self.nbrs[ident]:
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

        keys = {_edge_key(a, b) for a in component for b in self.nbrs[a] if b in members}

        def strength(key: str) -> tuple[Any, ...]:
            a, b = key.split("\t")
            e = self.edges[key]
            return (-len(e["ev"]), min(rules.rank(a), rules.rank(b)), max(rules.rank(a), rules.rank(b)),
                    e["first"], key)

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
        return self.observe(ids, [int(event["event_time_ms"]), str(event["event_id"])])

    def observe(self, ids: list[str], first: list[Any]) -> Update:
        """Add the evidence of an event with identifiers ``ids`` (strongest first) and
        ``first`` = [event time, event id]."""
        was_shared = {i for i in ids if self.shared(i)}
        self._observe(ids, first)
        newly_shared = [i for i in ids if self.shared(i) and i not in was_shared]
        changes, conflicts = self._recluster([*ids, *newly_shared], newly_shared)
        return Update(self.person_of(ids), changes, conflicts, newly_shared)

    def join(self, other: Mapping[str, Any], previous: Mapping[str, str] | None = None) -> Update:
        """Join another graph's evidence (its ``to_json``) into this one and cluster again.

        ``previous``: identifier -> person as it stood where those identifiers were
        clustered before (by default this graph's own view); changes are reported
        against it."""
        other = _upgraded(other, self.rules.edge_cap)
        was_shared = {i for i in self.nodes if self.shared(i)}
        for ident, anchors in other["nodes"].items():
            self._node(ident, anchors)
        for key, edge in other["edges"].items():
            self._edge(key, edge["first"], edge["ev"])
        self.flags |= set(other.get("flags", ()))
        for key, reason in other["refused"].items():
            self.refused.setdefault(key, reason)  # a conflict reported there is not reported again
        newly_shared = sorted(i for i in self.nodes if self.shared(i) and i not in was_shared)
        changes, conflicts = self._recluster(sorted(other["nodes"]), newly_shared, previous)
        return Update("", changes, conflicts, newly_shared)

    def flag_shared(self, idents: Iterable[str]) -> Update:
        """Mark identifiers as shared on evidence held elsewhere (they stop linking here)."""
        newly_shared = sorted(i for i in set(idents) if i in self.nodes and not self.shared(i))
        self.flags |= set(idents)
        changes, conflicts = self._recluster(newly_shared, newly_shared)
        return Update("", changes, conflicts, newly_shared)

    def without(self, idents: Iterable[str]) -> Update:
        """Forget identifiers (an erasure): the graph becomes the one built from the same events
        with these identifiers removed from each event (an event keeps its other identifiers).

        Their nodes go, with every edge that has an end among them (and its refusal), their
        places in other identifiers' anchor lists, their flags and their persons; then the
        components they were in are clustered again from their remaining neighbours (an
        identifier that stops being shared is one of those: only an erased neighbour takes an
        anchor off its list, and only erased identifiers lose their flags).
        Exact for the evidence this graph holds: an edge between two remaining identifiers comes
        from the events holding both, which keep both, so its first event and digests (and their
        cap) stand as they are; an identifier's anchors are the anchor-type identifiers it has an
        edge with (both come from the same events), so a list that had an erased anchor is read
        again from the remaining edges, past the cap it was kept to. Flags (``flag_shared``:
        sharing known from evidence held elsewhere) stay: whether the erasure ends them is not
        known here. Returns the persons that changed (reason: the erasure) and new conflicts."""
        erased = set(idents)  # read twice (nodes, flags): a generator would leave the flags
        gone = {i for i in erased if i in self.nodes}
        self.flags -= erased
        touched: set[str] = set()
        for x in gone:
            for nb in self.nbrs.pop(x):
                key = _edge_key(x, nb)
                self.edges.pop(key, None)
                self.refused.pop(key, None)
                if nb not in gone:
                    self.nbrs[nb].remove(x)
                    touched.add(nb)
            del self.nodes[x]
            self.person.pop(x, None)
        cap = self.rules.shared_threshold + 1
        for ident in touched:
            if any(a in gone for a in self.nodes[ident]):
                self.nodes[ident] = _capped((), (b for b in self.nbrs[ident] if _kind(b) in self.rules.anchors), cap)
        changes, conflicts = self._recluster(sorted(touched), [], cause="erasure: identifiers forgotten, "
                                             "the remaining evidence regrouped")
        return Update("", changes, conflicts, [])

    def _recluster(self, touched: list[str], newly_shared: list[str],
                   previous: Mapping[str, str] | None = None,
                   cause: str | None = None) -> tuple[list[Change], list[Conflict]]:
        """Cluster again the components of ``touched`` (and the pieces a newly shared
        identifier leaves); return the persons that changed and the new conflicts.
        ``cause``: the reason given to every change found (an erasure's), else each change's
        reason is told by what happened (``_changes``)."""
        starts = [i for i in touched if not self.shared(i)]
        for ident in newly_shared:
            starts += [nb for nb in self.nbrs[ident] if not self.shared(nb)]
        new: dict[str, str] = {}
        refused: list[tuple[str, str, str]] = []
        seen: set[str] = set()
        for start in starts:
            if start in seen:
                continue
            persons, why = self._cluster(self._component(start, seen))
            new.update(persons)
            refused += why
        for ident in [*touched, *newly_shared]:
            if self.shared(ident):
                new[ident] = person_id_for(ident)
        before = self.person if previous is None else {**self.person, **previous}
        old = {ident: before[ident] for ident in new if ident in before}
        self.person.update(new)
        conflicts = []
        for a, b, reason in refused:
            key = _edge_key(a, b)
            if self.refused.get(key) != reason:
                self.refused[key] = reason
                conflicts.append(Conflict(a, b, reason, (self.edges[key]["first"][1],),
                                          (self.person.get(a, ""), self.person.get(b, ""))))
        return self._changes(old, new, newly_shared, cause), conflicts

    def person_of(self, ids: list[str]) -> str:
        """The person of an event with these identifiers (strongest first)."""
        for ident in ids:
            if not self.shared(ident):
                return self.person[ident]
        return self.person[ids[0]]

    def _changes(self, old: dict[str, str], new: dict[str, str], newly_shared: list[str],
                 cause: str | None = None) -> list[Change]:
        """Old persons whose identifiers now belong to other persons: merges and splits
        (``cause``: the reason of them all, else each one's is told by what happened)."""
        became: dict[str, set[str]] = {}
        for ident, before in old.items():
            became.setdefault(before, set()).add(new[ident])
        changes = []
        for before, after in sorted(became.items()):
            if after == {before}:
                continue
            evidence = self._evidence([i for i, p in old.items() if p == before and new[i] != before])
            if len(after) == 1:
                changes.append(Change("merge", before, tuple(after), cause or "linked by identifiers seen together",
                                      evidence))
            else:
                reason = cause or ("shared identifier stopped linking: " + ", ".join(sorted(newly_shared))
                                 if newly_shared else "weaker evidence gave way")
                changes.append(Change("split", before, tuple(sorted(after - {before})), reason, evidence))
        return changes

    def _evidence(self, moved: list[str]) -> tuple[str, ...]:
        """The earliest events of the links of the identifiers that changed person (a few, smallest
        ids first): what joined them to their new person, or what held them to the old one. Never
        empty as evidence grows: an identifier that changes person has a link (a lone identifier is
        its own person); after an erasure (``without``) it can be, when the erased links were all
        it had."""
        ev = {self.edges[_edge_key(ident, nb)]["first"][1] for ident in moved for nb in self.nbrs[ident]}
        return tuple(sorted(ev)[: self.rules.evidence_ids])

    def members(self) -> dict[str, str]:
        """Person -> the member id (value) among its identifiers, for persons that have one."""
        return {p: ident.split(":", 1)[1] for ident, p in self.person.items() if _kind(ident) == "member_id"}

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
