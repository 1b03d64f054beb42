"""Pure core of the sharded identity graph: the graph split across partitions by identifier.

No identity partition holds the whole world. Every identifier has a *home*
(the partition of its key) and a record there, in one of two forms:

- a **root**, ``{"g": <Graph JSON>, "own": [identifiers]}``: the evidence of
  one growing group of identifiers (a connected part of the evidence graph)
  and its clustering into persons (streams/identity/graph.py);
- a **pointer**, ``{"p": <key>}``: this identifier's group is kept at that key
  (follow pointers to reach the root).

Partitions talk only by messages addressed to an identifier (``"to"``), each
handled at that identifier's home by ``step``, which reads and writes that one
record and nothing else. The transport (a Kafka topic keyed by ``"to"``, or the
simulation in the tests) delivers each partition's messages in order.

How an event travels. It is sent to the home of its strongest identifier X and
follows pointers to X's root R. R adds the event's evidence to its graph and
resolves the event's person from it (as of now). For every other identifier Y
of the event that R does not own, R asks Y's root to join it (``union``).
Roots join by the stronger key (``Rules.rank``, then value): the weaker root
sends its whole graph to the stronger (``absorb``) and becomes a pointer to it;
if the weaker is the asking side, it is told to ``yield``. Pointers only ever
point to stronger keys, so they never form a cycle, and joins are monotone: a
group never comes apart, its clustering into persons does (splits). The
messages of a join carry ``t``, the time of the event that started it, so a
change a join makes is dated by that event.

Shared identifiers (a store kiosk) would glue many people into one group. Once
a root knows an identifier is shared it stops joining through it: a ``union``
asked through a shared identifier is answered with ``shared`` and the asker
flags it, and an event skips shared identifiers when choosing where to go.
Sharing is monotone (anchors only accumulate), and all the evidence of an
identifier reaches its group before its group can know it is shared, so every
non-shared identifier's evidence ends up, complete, in one group.

Why the end result is the reference clustering, whatever the partitioning, the
order and the interleaving: evidence is a join-semilattice (``Graph.join``), so
where and in what grouping events were added does not matter once groups have
joined, and the clustering of a group is a function of its evidence.

Assignments. Whenever a root's clustering gives one of its own identifiers a
different person, it sends ``assign`` to that identifier's home, which keeps
the identifier's current person (``assign_step``): the one thing a lookup by
identifier needs, found in one place. Assignments from different roots can
cross on the way; an identifier's root only ever moves to a stronger key, so
the home keeps the assignment from the strongest root (the latest from it).

Crashes and replays. A message may be handled again (its records were written
but its offset not committed), and a crash may fall between sending a step's
messages and writing its record. So ``step`` returns its messages and its
write separately and the caller sends first, writes second; every step is
idempotent given its record (adding evidence again, absorbing again, owning
again change nothing), and a replayed step with the record unwritten re-sends
what it had sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.identity.graph import Change, Conflict, Graph, Rules, Update
from streams.identity.links import person_id_for

Record = dict[str, Any]
Msg = dict[str, Any]


@dataclass(frozen=True)
class Resolved:
    event_id: str
    person_id: str  # the event's person as of now (a later join may merge or split it)
    member_id: str | None


@dataclass
class Step:
    """What handling one message does: send ``sends`` (first), then write ``write`` to the
    record of ``key`` (None: leave it as it is)."""

    key: str
    sends: list[Msg] = field(default_factory=list)
    write: Record | None = None
    resolved: list[Resolved] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    shared: list[str] = field(default_factory=list)  # identifiers found to be shared here
    time_ms: int = 0  # the time of the event behind this step's changes (0: not known)


def event_message(event_id: str, event_time_ms: int, ids: list[str]) -> Msg:
    """The message that places an event: to its strongest identifier's home."""
    return {"k": "event", "to": ids[0], "ids": ids, "i": 0, "first": [int(event_time_ms), str(event_id)]}


def stronger(a: str, b: str, rules: Rules) -> bool:
    return (rules.rank(a), a) < (rules.rank(b), b)


def step(record: Record | None, msg: Msg, rules: Rules) -> Step:
    """Handle ``msg`` at the home of ``msg["to"]`` whose record is ``record``."""
    key = msg["to"]
    out = Step(key)
    kind = msg["k"]
    if kind == "assign":
        raise ValueError("assign messages are for assign_step, with the identifier's assignment record")
    if record is not None and "p" in record:  # not a root: pass it on towards the root
        if kind == "yield":  # this root was absorbed meanwhile: join what it became instead
            out.sends.append({"k": "union", "to": msg["into"], "y": None, "root": record["p"], "t": msg.get("t", 0)})
        else:
            out.sends.append({**msg, "to": record["p"]})
        return out
    if record is None:
        if kind == "event":
            record = {"g": Graph(rules).to_json(), "own": [key]}
        elif kind == "union":  # first seen in another group's evidence: it joins that group
            out.sends.append({**msg, "to": msg["root"]})
            out.write = {"p": msg["root"]}
            return out
        else:
            raise ValueError(f"{kind} message for {key}, which was never a root")
    handler = _HANDLERS[kind]
    handler(out, record, msg, rules)
    return out


def _event(out: Step, record: Record, msg: Msg, rules: Rules) -> None:
    """Place an event at the root of ``ids[i]`` (we followed its pointers here, so it is ours)."""
    g = Graph.from_json(record["g"], rules)
    ids, i = msg["ids"], msg["i"]
    if g.shared(ids[i]):  # it places nothing: try the next identifier at its own home
        if i + 1 < len(ids):
            out.sends.append({**msg, "to": ids[i + 1], "i": i + 1})
        else:  # only shared identifiers: a shared identifier is a person of its own
            out.resolved.append(Resolved(msg["first"][1], person_id_for(ids[0]), None))
        return
    rest = ids[i:]
    before = dict(g.person)
    update = g.observe(rest, msg["first"])
    own = {*record["own"], ids[i]}
    for y in rest[1:]:
        if y not in own and not g.shared(y):
            out.sends.append({"k": "union", "to": y, "y": y, "root": out.key, "t": msg["first"][0]})
    out.resolved.append(Resolved(msg["first"][1], update.person_id, g.members().get(update.person_id)))
    _report(out, update, msg["first"][0])
    _assign(out, g, own, before)
    out.write = {"g": g.to_json(), "own": sorted(own)}


def _report(out: Step, update: Update, time_ms: int = 0) -> None:
    out.changes, out.conflicts, out.shared, out.time_ms = update.changes, update.conflicts, update.shared, time_ms


def _union(out: Step, record: Record, msg: Msg, rules: Rules) -> None:
    """Join the group of ``msg["y"]`` (whose pointers led to this root, so it is ours) with the
    group at ``msg["root"]``; ``y`` None: a join between two roots, nothing to check."""
    asker, y, t = msg["root"], msg["y"], msg.get("t", 0)
    own = set(record["own"])
    g = None if y is None else Graph.from_json(record["g"], rules)
    if g is not None and y not in own:
        own.add(y)
        _assign(out, g, [y], {})
        out.write = {"g": record["g"], "own": sorted(own)}
    if asker == out.key:
        return
    if g is not None and g.shared(y):  # no joining through a shared identifier
        out.sends.append({"k": "shared", "to": asker, "ids": [y], "t": t})
    elif stronger(out.key, asker, rules):
        out.sends.append({"k": "yield", "to": asker, "into": out.key, "t": t})
    else:
        out.sends.append({"k": "absorb", "to": asker, "g": record["g"], "own": sorted(own), "t": t})
        out.write = {"p": asker}


def _yield(out: Step, record: Record, msg: Msg, rules: Rules) -> None:
    out.sends.append({"k": "absorb", "to": msg["into"], "g": record["g"], "own": record["own"], "t": msg.get("t", 0)})
    out.write = {"p": msg["into"]}


def _absorb(out: Step, record: Record, msg: Msg, rules: Rules) -> None:
    g = Graph.from_json(record["g"], rules)
    theirs = msg["g"]["person"]
    previous = {i: theirs[i] for i in msg["own"] if i in theirs}
    before = {**g.person, **previous}
    update = g.join(msg["g"], previous)
    _report(out, update, msg.get("t", 0))
    own = {*record["own"], *msg["own"]}
    # the absorbed identifiers learn their new root even where their person stays the same
    _assign(out, g, own, {i: p for i, p in before.items() if i not in msg["own"]})
    out.write = {"g": g.to_json(), "own": sorted(own)}


def _shared(out: Step, record: Record, msg: Msg, rules: Rules) -> None:
    g = Graph.from_json(record["g"], rules)
    if set(msg["ids"]) <= g.flags:
        return
    before = dict(g.person)
    update = g.flag_shared(msg["ids"])
    _report(out, update, msg.get("t", 0))
    _assign(out, g, record["own"], before)
    out.write = {"g": g.to_json(), "own": record["own"]}


def _assign(out: Step, g: Graph, own: Any, before: Mapping[str, str]) -> None:
    """Tell the home of each identifier of ``own`` whose person is not ``before``'s its person."""
    moved = [(i, p) for i in sorted(own) if (p := g.person.get(i)) is not None and before.get(i) != p]
    members = g.members() if moved else {}
    for ident, person in moved:
        out.sends.append({"k": "assign", "to": ident, "person": person, "member": members.get(person),
                          "root": out.key})


_HANDLERS = {"event": _event, "union": _union, "yield": _yield, "absorb": _absorb, "shared": _shared}


def assign_step(current: Record | None, msg: Msg, rules: Rules) -> Record | None:
    """The identifier's new assignment record, or None to keep ``current`` (a stale one: from a
    weaker root than the one it already heard from)."""
    if current is not None and current["root"] != msg["root"] and not stronger(msg["root"], current["root"], rules):
        return None
    new = {"person": msg["person"], "member": msg["member"], "root": msg["root"]}
    return None if new == current else new


def person_of_identifier(records: Mapping[str, Record], ident: str, rules: Rules) -> str | None:
    """The person of ``ident`` by following its pointers (for lookups and tests: reads several
    homes, so not for the stream)."""
    key, hops = ident, 0
    while True:
        record = records.get(key)
        if record is None:
            return None
        if "p" not in record:
            break
        key, hops = record["p"], hops + 1
        if hops > 10_000:
            raise RuntimeError(f"pointer chain from {ident} does not end")
    g = Graph.from_json(record["g"], rules)
    if g.shared(ident):
        return person_id_for(ident)
    return g.person.get(ident)


def change_records(step: Step, now_ms: int) -> list[dict[str, Any]]:
    """What ``step`` changed, as identity-change records (``IdentityChange`` v2, resolver
    ``graph``): merges and splits of persons, conflicts (a link refused by the rules) and
    identifiers found to be shared. A record's id depends on what changed, not on when or
    where it was found, so the same change found again (a replay, or a second root
    learning the same shared identifier) is one row downstream. The time is the event's
    that caused it where there is one, else ``now_ms``."""
    when = step.time_ms or now_ms
    out = []
    for c in step.changes:
        out.append(_change(c.kind, c.from_person, list(c.into), c.reason, [], list(c.evidence), when))
    for k in step.conflicts:
        out.append(_change("conflict", k.persons[0], [k.persons[1]], k.reason, [k.a, k.b], list(k.evidence), when))
    for ident in step.shared:
        out.append(_change("shared", person_id_for(ident), [], "linked with more distinct anchors than the "
                           "shared threshold: stops linking", [ident], [], when))
    return out


def _change(kind: str, from_person: str, into: list[str], reason: str, identifiers: list[str],
            evidence: list[str], when: int) -> dict[str, Any]:
    what = "|".join([kind, from_person, ",".join(into), ",".join(identifiers)])
    return {
        "change_id": hashlib.blake2b(what.encode(), digest_size=16).hexdigest(), "kind": kind,
        "from_person": from_person, "into_person": into[0] if into else "", "into_persons": into,
        "reason": reason, "identifiers": identifiers, "evidence_event_id": evidence[0] if evidence else "",
        "evidence_event_ids": evidence, "event_time_ms": int(when), "resolver": "graph",
    }
