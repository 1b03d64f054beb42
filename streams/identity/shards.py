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

Erasure (GDPR). ``touchline erase`` sends ``forget_message(I, ids)`` to the home
of every identifier I of the erased person, ``ids`` all the request's erased
identifiers, once none of the person's events is in flight any more (ingest
suppresses them and the graph's messages for them have settled); other people's
events may be. A forget follows I's pointers to the root, where
``Graph.without`` takes the erased identifiers' evidence out and the rest is
clustered again (the identifiers whose person changes get ``assign`` as after
any change, and the changes are reported like merges and splits, with the
erasure as their reason). A non-shared identifier's evidence is all in its
group's root, so one root forgets all of it, and afterwards the clustering is
the one of the events without the erased identifiers, with one exception:
shared stays shared where its evidence had spread. A root that tells an asker
an identifier is shared (the asker keeps its own evidence of it) or passes an
event over it (that evidence is left out) flags it, and flags stay through an
erasure: the root cannot see the evidence held elsewhere, so an identifier
flagged anywhere stays shared even if the erasure left it with too few anchors.
An identifier shared only by the anchors in its own root, never told, is judged
again there, exactly.

What goes: each erased identifier's assignment (the home deletes it: ``Step.
unassign``, a tombstone on identity.assignments), its place in ``own``, and the
record at its home when that record is a pointer that no other identifier's
pointer goes through (a pointer lists the ``own`` of the group it was when it
became one, and then every identifier whose route came to pass through it: the
``y`` of a union and the ``own`` of an absorb it forwards, as a later pointer or
a later absorbed root leads there; only if they are all erased) or a root with
nothing of its own left.
What stays, keyed by an erased identifier, holding nothing of it: (1) a root
whose group still has other identifiers (the key is where their pointers lead;
they keep their evidence), (2) a pointer that was the root of a group with other
identifiers (their pointers may pass through it) or that was written before
pointers listed their group. And the evidence of a *shared* identifier that is
erased stays in the groups it was told to (only its own root's is forgotten).

Assignments after an erasure: every root an identifier ever had is on its chain
of pointers (a group moves only by being absorbed, leaving a pointer), every hop
a forget passes sends ``unassign`` for all the request's identifiers to their
homes, after every ``assign`` it sent while it was a root, and the root stops
owning them, so the last word any home hears about an erased identifier is an
``unassign``. (A forget that finds a record already gone stops there: another
forget of the same request went on from there already, with the same ``ids``.)

What an erasure needs of the transport: the erased person's messages handled
*and committed* before the forgets come (a crash replays everything since the
last commit; a replayed event or union of an erased identifier, handled again
after its forget, would bring its evidence back at a home with no record), so
``touchline erase`` waits a commit interval after the drain; sending the same
forgets again later is harmless (idempotent) and heals such a replay.

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
    record of ``key`` (None: leave it as it is) or, for an erasure, delete that record
    (``delete``) and ``key``'s assignment (``unassign``, as ``unassign_step`` says)."""

    key: str
    sends: list[Msg] = field(default_factory=list)
    write: Record | None = None
    resolved: list[Resolved] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    shared: list[str] = field(default_factory=list)  # identifiers found to be shared here
    time_ms: int = 0  # the time of the event behind this step's changes (0: not known)
    delete: bool = False  # delete the record of ``key`` (instead of writing): an erasure
    unassign: bool = False  # delete ``key``'s assignment (identity-assign; a tombstone downstream)


def event_message(event_id: str, event_time_ms: int, ids: list[str]) -> Msg:
    """The message that places an event: to its strongest identifier's home."""
    return {"k": "event", "to": ids[0], "ids": ids, "i": 0, "first": [int(event_time_ms), str(event_id)]}


def forget_message(to: str, ids: list[str]) -> Msg:
    """The message that erases identifiers ``ids`` (every erased identifier of the request),
    one to each erased identifier's home (``to``)."""
    return {"k": "forget", "to": to, "ids": sorted(set(ids))}


def stronger(a: str, b: str, rules: Rules) -> bool:
    return (rules.rank(a), a) < (rules.rank(b), b)


def step(record: Record | None, msg: Msg, rules: Rules) -> Step:
    """Handle ``msg`` at the home of ``msg["to"]`` whose record is ``record``."""
    key = msg["to"]
    out = Step(key)
    kind = msg["k"]
    if kind in ("assign", "unassign"):
        raise ValueError(f"{kind} messages are for {kind}_step, with the identifier's assignment record")
    if kind == "forget":
        _forget(out, record, msg, rules)
        return out
    if record is not None and "p" in record:  # not a root: pass it on towards the root
        if kind == "yield":  # this root was absorbed meanwhile: join what it became instead
            out.sends.append({"k": "union", "to": msg["into"], "y": None, "root": record["p"], "t": msg.get("t", 0)})
        else:
            out.sends.append({**msg, "to": record["p"]})
            # whose pointers now go through here: a union's ``y`` (its pointer was written towards
            # where the union was sent), an absorbed group's ``own`` (their root points here
            # now); listed, so that an erasure does not delete this pointer under them
            if kind == "union":
                through = {msg["y"]} - {None}
            elif kind == "absorb":
                through = set(msg["own"])
            else:
                through = set()
            if through and "own" in record:
                have = set(record["own"])
                if not through <= have:
                    out.write = {"p": record["p"], "own": sorted(have | through)}
        return out
    if record is None:
        if kind == "event":
            record = {"g": Graph(rules).to_json(), "own": [key]}
        elif kind == "union" and (msg["y"] != key or msg["root"] == key):
            # on its way to a root that was erased since: nothing left to join. Never so without
            # an erasure: past y's home a union goes only to keys that have a record (a pointer's
            # target, the root that asked), written before the union reaches them (it comes after
            # the step that wrote it in that partition's log, and after it again on a replay);
            # the tests assert that no union is dropped where nothing was erased
            return out
        elif kind == "union":  # first seen in another group's evidence: it joins that group
            out.sends.append({**msg, "to": msg["root"]})
            out.write = {"p": msg["root"], "own": [key]}
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
        if ids[i] not in g.flags:  # this event's evidence of it is left out: see _forget
            g.flags.add(ids[i])
            out.write = {"g": g.to_json(), "own": record["own"]}
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
        if y not in g.flags:  # the asker keeps its evidence of y: see _forget
            g.flags.add(y)
            out.write = {"g": g.to_json(), "own": sorted(own)}
    elif stronger(out.key, asker, rules):
        out.sends.append({"k": "yield", "to": asker, "into": out.key, "t": t})
    else:
        out.sends.append({"k": "absorb", "to": asker, "g": record["g"], "own": sorted(own), "t": t})
        # the pointer carries the group's full own list (a storage cost per pointer; see step)
        out.write = {"p": asker, "own": sorted(own)}


def _yield(out: Step, record: Record, msg: Msg, rules: Rules) -> None:
    out.sends.append({"k": "absorb", "to": msg["into"], "g": record["g"], "own": record["own"], "t": msg.get("t", 0)})
    # the pointer carries the group's full own list (a storage cost per pointer; see step)
    out.write = {"p": msg["into"], "own": record["own"]}


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


def _forget(out: Step, record: Record | None, msg: Msg, rules: Rules) -> None:
    """Erase ``msg["ids"]`` on the way from the home of one of them to its root (see the module
    docstring, Erasure)."""
    key, ids = out.key, msg["ids"]
    erased = set(ids)
    out.unassign = key in erased
    if record is None:  # erased here already (a replay, or another of the request's forgets came by)
        return
    # after every assignment this record sent while it was a root: the homes delete theirs again
    out.sends += [{"k": "unassign", "to": i} for i in ids if i != key]
    listed = set(record.get("own", ()))
    if "p" in record:
        out.sends.append({**msg, "to": record["p"]})
        # a pointer may be passed through by the pointers of what was its group; with none of
        # them left (or written before pointers listed them) it goes, else it stays, bare
        if key in erased and listed and listed <= erased:
            out.delete = True
        return
    own = [i for i in record["own"] if i not in erased]
    if not own:  # nothing of this group is left to route here: what it still holds is dead
        out.delete = True
        return
    # nothing of the request here (forgotten already: a replay, or another of its forgets came
    # this way): read from the record as it is, the group not parsed
    if not erased & (set(record["g"]["nodes"]) | set(record["g"].get("flags", ())) | listed):
        return
    g = Graph.from_json(record["g"], rules)
    before = dict(g.person)
    update = g.without(ids)
    _report(out, update)
    _assign(out, g, own, before)
    out.write = {"g": g.to_json(), "own": own}


_HANDLERS = {"event": _event, "union": _union, "yield": _yield, "absorb": _absorb, "shared": _shared}


def assign_step(current: Record | None, msg: Msg, rules: Rules) -> Record | None:
    """The identifier's new assignment record, or None to keep ``current`` (a stale one: from a
    weaker root than the one it already heard from)."""
    if current is not None and current["root"] != msg["root"] and not stronger(msg["root"], current["root"], rules):
        return None
    new = {"person": msg["person"], "member": msg["member"], "root": msg["root"]}
    return None if new == current else new


def unassign_step(current: Record | None) -> bool:
    """Whether an ``unassign`` message (or a step's ``Step.unassign``) deletes the identifier's
    assignment ``current``, from whatever root it came: yes if it has one (none: a replay, the
    deletion went out already). An erasure's last word about an identifier (module docstring)."""
    return current is not None


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
