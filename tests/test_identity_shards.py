"""The sharded identity graph's protocol (streams/identity/shards.py), run on a simulated
transport: partitions with Kafka-like logs, handled in random interleavings, with crashes
that replay everything since the last commit and lose the write of the step in hand.
Whatever happens, the end state is the reference clustering of the events."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from streams.identity import shards
from streams.identity.graph import Graph, Rules, cluster, identifiers_of
from streams.identity.links import person_id_for
from tests.test_identity_graph import T0, built, ev, event_sets, small_rules, stripped

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ERASURES = settings(PROPERTY, report_multiple_bugs=False)


class Network:
    """Partitions, each a log of messages read in order by one handler that commits now and
    then; a crash rewinds the handler to its last commit (every message since is handled
    again) after sending, but not writing, the step it was in."""

    def __init__(self, partitions: int, rules: Rules, rnd: random.Random, crash: float = 0.0) -> None:
        self.n, self.rules, self.rnd, self.crash = partitions, rules, rnd, crash
        self.records: list[dict[str, Any]] = [{} for _ in range(partitions)]
        self.assigned: list[dict[str, Any]] = [{} for _ in range(partitions)]  # identifier -> assignment
        self.logs: list[list[dict[str, Any]]] = [[] for _ in range(partitions)]
        self.position = [0] * partitions
        self.committed = [0] * partitions
        self.resolved: dict[str, list[str]] = {}
        self.changes: list[Any] = []
        self.published: dict[str, dict[str, Any]] = {}  # identity-change records by change id
        self.dropped: list[dict[str, Any]] = []  # unions dropped on the way (shards.step)
        self.handled = 0  # messages handled (replays included), bounded by run's limit
        self.crashes = 0

    def home(self, key: str) -> int:
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "big") % self.n

    def send(self, msg: dict[str, Any]) -> None:
        self.logs[self.home(msg["to"])].append(msg)

    def run(self, limit: int = 100_000) -> None:
        while True:
            ready = [p for p in range(self.n) if self.position[p] < len(self.logs[p])]
            if not ready:
                return
            p = self.rnd.choice(ready)
            msg = self.logs[p][self.position[p]]
            assert self.home(msg["to"]) == p
            self.handled += 1  # every message, assignments too: a run that does not end fails here
            if self.handled >= limit:
                raise AssertionError(f"the protocol does not settle: {self.handled} messages handled, "
                                     f"{len(self.in_flight())} in flight, e.g. {self.in_flight()[:8]}")
            if msg["k"] in ("assign", "unassign"):
                current = self.assigned[p].get(msg["to"])
                if self.rnd.random() < self.crash:
                    self.position[p] = self.committed[p]
                    continue
                if msg["k"] == "unassign":
                    if shards.unassign_step(current):
                        del self.assigned[p][msg["to"]]
                elif (new := shards.assign_step(current, msg, self.rules)) is not None:
                    self.assigned[p][msg["to"]] = new
                self.position[p] += 1
                if self.rnd.random() < 0.3:  # the assignments' handler commits too (else a long run
                    self.committed[p] = self.position[p]  # of them, crashing now and then, never ends)
                continue
            out = shards.step(self.records[p].get(msg["to"]), msg, self.rules)
            if msg["k"] == "union" and msg["to"] not in self.records[p] and not out.sends and out.write is None:
                self.dropped.append(msg)  # addressed to a root that is gone: only after an erasure
            for m in out.sends:
                self.send(m)
            for r in out.resolved:
                self.resolved.setdefault(r.event_id, []).append(r.person_id)
            self.changes += out.changes
            self.published.update((r["change_id"], r) for r in shards.change_records(out, now_ms=0))
            if self.rnd.random() < self.crash:  # crash after sending, before writing
                self.crashes += 1
                self.position[p] = self.committed[p]
                continue
            if out.delete:
                self.records[p].pop(out.key, None)
            elif out.write is not None:
                self.records[p][out.key] = out.write
            if out.unassign and shards.unassign_step(self.assigned[p].get(out.key)):
                del self.assigned[p][out.key]
            self.position[p] += 1
            if self.rnd.random() < 0.3:
                self.committed[p] = self.position[p]

    def in_flight(self) -> list[dict[str, Any]]:
        """The messages not handled yet (kinds and addresses, without the graphs they carry)."""
        return [{k: v for k, v in m.items() if k != "g"}
                for p in range(self.n) for m in self.logs[p][self.position[p]:]]

    def person(self, ident: str) -> str | None:
        everything = {k: v for part in self.records for k, v in part.items()}
        return shards.person_of_identifier(everything, ident, self.rules)

    def roots(self) -> list[dict[str, Any]]:
        return [r for part in self.records for r in part.values() if "g" in r]


def feed(net: Network, events: list[dict[str, Any]]) -> None:
    for e in events:
        ids = identifiers_of(e, net.rules)
        if ids:
            net.send(shards.event_message(e["event_id"], e["event_time_ms"], ids))


def check_end_state(net: Network, events: list[dict[str, Any]]) -> None:
    reference, by_event = cluster(events, net.rules)
    assert net.dropped == []  # no erasure: no union may be dropped (its root is never gone)
    assert {i: net.person(i) for i in reference} == reference
    # and each identifier's home knows its person, by itself
    assigned = {i: a["person"] for part in net.assigned for i, a in part.items()}
    assert assigned == reference
    # Every event was resolved, and every person an event was given that no longer exists
    # was reported merged or split away (what follows identity learns of every change).
    assert set(net.resolved) == set(by_event)
    final = set(reference.values())
    reported = {c.from_person for c in net.changes}
    for event_id, persons in net.resolved.items():
        for p in persons:
            assert p in final or p in reported, (event_id, p)
    # Each identifier's evidence is in one root (its group), never split between two.
    owners: dict[str, int] = {}
    for r in net.roots():
        for ident in r["own"]:
            owners[ident] = owners.get(ident, 0) + 1
    assert owners == dict.fromkeys(reference, 1)
    check_change_records(net, events)


def check_change_records(net: Network, events: list[dict[str, Any]]) -> None:
    """The identity-change records tell every shared identifier and every link refused in the
    final clustering; each merge has one survivor and each split at least one other side."""
    g = Graph(net.rules)
    for e in events:
        g.add(e)
    records = list(net.published.values())
    assert {i for r in records if r["kind"] == "shared" for i in r["identifiers"]} == {
        i for i in g.nodes if g.shared(i)}
    conflicts = {tuple(sorted(r["identifiers"])) for r in records if r["kind"] == "conflict"}
    refused = set()  # links the final clustering does not make between identifiers that link
    for key in g.edges:
        x, y = sorted(key.split("\t"))
        if not g.shared(x) and not g.shared(y) and g.person[x] != g.person[y]:
            refused.add((x, y))
    assert refused <= conflicts
    for r in records:
        assert r["resolver"] == "graph" and r["event_time_ms"] >= T0  # dated by an event
        if r["kind"] == "merge":
            assert r["into_persons"] == [r["into_person"]] != [r["from_person"]] and r["evidence_event_ids"]
        elif r["kind"] == "split":
            assert r["into_persons"] and r["from_person"] not in r["into_persons"]


@PROPERTY
@given(event_sets(), st.integers(1, 5), st.integers(1, 3), st.integers(1, 4), st.integers(0, 2**32))
def test_any_partitioning_and_interleaving_ends_in_the_reference_clustering(
    events: list[dict[str, Any]], partitions: int, threshold: int, cap: int, seed: int,
) -> None:
    rnd = random.Random(seed)  # the interleaving (a seed: the simulation draws thousands of times)
    net = Network(partitions, small_rules(threshold, cap), rnd)
    order = events[:]
    rnd.shuffle(order)
    feed(net, order)
    net.run()
    check_end_state(net, events)


# A root that had placed a5 with d0 as its own person p(d0) absorbs d0's real group, where a5 does
# not follow d0: a5 alone leaves p(d0), a change once reported without evidence.
PROVISIONAL_PERSON = [
    ev("e000", 38, member_id="m3", wechat_unionid="w2", device_id="d0"),
    ev("e001", 7, phone="p0"),
    ev("e002", 23, wechat_unionid="w2", anonymous_id="a0"),
    ev("e003", 24, member_id="m3", anonymous_id="a3", phone="p3"),
    ev("e004", 41, member_id="m2"),
    ev("e005", 14, wechat_unionid="w1", phone="p3"),
    ev("e006", 49, member_id="m3"),
    ev("e007", 24, device_id="d2", wechat_unionid="w0", anonymous_id="a1"),
    ev("e008", 47, phone="p0", member_id="m0", wechat_unionid="w1"),
    ev("e009", 29, anonymous_id="a2", device_id="d0", phone="p3"),
    ev("e010", 44, wechat_unionid="w1", phone="p0", member_id="m0"),
    ev("e011", 17, anonymous_id="a3", wechat_unionid="w0", phone="p3"),
    ev("e012", 13, anonymous_id="a5", device_id="d0", wechat_unionid="w1"),
    ev("e013", 2, device_id="d1"),
    ev("e014", 9, member_id="m0"),
    ev("e015", 24, wechat_unionid="w1", member_id="m1"),
    ev("e016", 18, member_id="m0"),
    ev("e017", 2, wechat_unionid="w1", device_id="d1", phone="p3"),
    ev("e018", 23, member_id="m2"),
    ev("e019", 23, anonymous_id="a2"),
]


@PROPERTY
@given(event_sets(), st.integers(2, 4), st.integers(1, 3), st.integers(0, 2**32))
@example(PROVISIONAL_PERSON, 3, 1, 8832)
def test_crashes_and_replays_change_nothing(
    events: list[dict[str, Any]], partitions: int, threshold: int, seed: int,
) -> None:
    rnd = random.Random(seed)
    net = Network(partitions, small_rules(threshold, 3), rnd, crash=0.15)
    order = events[:]
    rnd.shuffle(order)
    feed(net, order + rnd.sample(order, len(order) // 4))  # some events sent twice, too
    net.run()
    check_end_state(net, events)


def test_a_kiosk_stops_gluing_people_together_once_it_is_known_shared() -> None:
    """Members who each used the kiosk end as their own persons, and a member who uses it after
    it is known shared never joins the kiosk's group at all."""
    rules = Rules(shared_threshold=2)
    net = Network(4, rules, random.Random(3))
    events = [ev(f"k{i}", i, member_id=f"M{i}", anonymous_id="kiosk") for i in range(3)]
    feed(net, events)
    net.run()
    assert net.person("anonymous_id:kiosk") == person_id_for("anonymous_id:kiosk")
    late = ev("k9", 9, member_id="M9", anonymous_id="kiosk")
    feed(net, [late])
    net.run()
    check_end_state(net, [*events, late])
    [m9] = [r for r in net.roots() if "member_id:M9" in r["own"]]
    assert m9["own"] == ["member_id:M9"]
    assert net.resolved["k9"] == [person_id_for("member_id:M9")]


def test_a_login_on_another_partition_merges_the_cookie_history_into_the_member() -> None:
    rules = Rules()
    net = Network(4, rules, random.Random(1))
    member = "member_id:M1"
    c = next(c for c in ("c1", "c2", "c3", "c4") if net.home(f"anonymous_id:{c}") != net.home(member))
    cookie = f"anonymous_id:{c}"  # homed on another partition than the member: the case worth testing
    feed(net, [ev("e1", 0, anonymous_id=c), ev("e2", 1, anonymous_id=c)])
    net.run()
    assert net.person(cookie) == person_id_for(cookie)
    feed(net, [ev("e3", 2, anonymous_id=c, member_id="M1")])
    net.run()
    assert net.person(cookie) == person_id_for(member)
    assert [(c.kind, c.from_person, c.into) for c in net.changes] == [
        ("merge", person_id_for(cookie), (person_id_for(member),))]
    # the member's root holds the cookie's evidence, the cookie's home points at it
    [root] = net.roots()
    assert root["own"] == sorted([cookie, member])
    assert Graph.from_json(root["g"]).edges[f"{cookie}\t{member}"]["first"] == [T0 + 2, "e3"]


def test_the_bench_runs_the_protocol_to_the_reference_clustering() -> None:
    """`make bench`'s "identity resolution alone" resolves the simulated traffic completely: its
    identifiers and persons are those of the reference clustering of the same events."""
    from streams.bench import identity_alone, valid_touchpoints
    from streams.settings import Settings
    from streams.simulate.traffic import SimConfig, generate

    traffic = generate(SimConfig(seed=5, events=600, persons=40, duplicate_rate=0.0, malformed_rate=0.0,
                                 late_rate=0.0, shared_devices=1))
    settings = Settings()
    events = valid_touchpoints(traffic)
    got = identity_alone(settings, events)
    reference, _ = cluster(events, settings.identity_rules())
    assert got["events"] == len(events) and got["messages"] >= len(events)
    assert (got["identifiers"], got["persons"]) == (len(reference), len(set(reference.values())))


# --------------------------------------------------------------------------- erasure


def erase(net: Network, erased: set[str], rnd: random.Random, twice: bool = False) -> None:
    """What `touchline erase` sends: a forget to each erased identifier's home (some twice)."""
    ids = sorted(erased)
    msgs = [shards.forget_message(i, ids) for i in ids]
    if twice:
        msgs += rnd.sample(msgs, max(1, len(msgs) // 2))
    rnd.shuffle(msgs)
    for m in msgs:
        net.send(m)
    net.run()


def everything(net: Network) -> dict[str, dict[str, Any]]:
    return {k: v for part in net.records for k, v in part.items()}


def kept_after_erasure(records: dict[str, dict[str, Any]], erased: set[str]) -> set[str]:
    """The records keyed by an erased identifier that an erasure keeps (the module docstring): a
    root whose group has other identifiers, a pointer whose group (when it became one) had, or
    one that lists no group (written before pointers listed them)."""
    return {x for x in erased if x in records and ("own" not in records[x] or set(records[x]["own"]) - erased)}


def check_after_erasure(net: Network, events: list[dict[str, Any]], erased: set[str],
                        before: dict[str, dict[str, Any]], shared_before: set[str]) -> Graph:
    """The end state after erasing ``erased``: the reference of the events without them, except that
    an identifier flagged shared somewhere stays shared (and was shared before); nothing of the
    erased identifiers anywhere but the keys the module docstring lists."""
    rules = net.rules
    flagged = {i for r in net.roots() for i in r["g"]["flags"]}
    assert flagged <= shared_before - erased
    reference = built(stripped(events, erased, rules), rules)
    reference.flag_shared(flagged)
    assert {i: net.person(i) for i in reference.nodes} == reference.person
    assigned = {i: a["person"] for part in net.assigned for i, a in part.items()}
    assert assigned == reference.person  # no assignment of an erased identifier is left
    owners: dict[str, int] = {}
    for r in net.roots():
        for ident in r["own"]:
            owners[ident] = owners.get(ident, 0) + 1
        text = json.dumps(r["g"])
        assert not [x for x in erased if json.dumps(x)[1:-1] in text], "erased evidence left"
    assert owners == dict.fromkeys(reference.nodes, 1)
    records = everything(net)
    assert set(records) & erased == kept_after_erasure(before, erased)
    return reference


@ERASURES
@given(event_sets(), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2**32), st.booleans(), st.booleans())
def test_an_erasure_leaves_the_clustering_of_the_events_without_the_erased_identifiers(
    events: list[dict[str, Any]], partitions: int, threshold: int, seed: int, partial: bool, crash: bool,
) -> None:
    """A person of the reference clustering (or some of their identifiers) erased after the graph
    settled, forgets handled in any interleaving, some twice, with crashes and replays: the end
    state is that of the events without them (shared stays shared where it had spread); events
    of the others coming again afterwards change nothing."""
    rnd = random.Random(seed)
    rules = small_rules(threshold, 3)
    net = Network(partitions, rules, rnd, crash=0.1 if crash else 0.0)
    order = events[:]
    rnd.shuffle(order)
    feed(net, order)
    net.run()
    full = built(events, rules)
    shared_before = {i for i in full.nodes if full.shared(i)}
    persons = sorted(p for p, ids in full.clusters().items() if not ids & shared_before)
    assume(persons)
    erased = set(full.clusters()[rnd.choice(persons)])
    if partial:
        erased = set(rnd.sample(sorted(erased), rnd.randint(1, len(erased))))
    before = everything(net)
    net.committed = net.position[:]  # what the erasure waits for (shards module docstring)
    erase(net, erased, rnd, twice=True)
    check_after_erasure(net, events, erased, before, shared_before)
    rest = stripped(events, erased, rules)
    feed(net, rnd.sample(rest, len(rest) // 2))
    net.run()
    check_after_erasure(net, events, erased, before, shared_before)
