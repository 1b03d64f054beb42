"""The identity graph's pure core (streams/identity/graph.py): hand-made cases for each rule,
and property tests that the clustering depends on the set of events only."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.identity.graph import Graph, Rules, cluster, identifiers_of
from streams.identity.links import person_id_for

T0 = 1_793_462_400_000
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ev(event_id: str, t: int = 0, **identifiers: str) -> dict[str, Any]:
    return {"event_id": event_id, "event_time_ms": T0 + t, "identifiers": identifiers}


def test_junk_blocklisted_and_unknown_identifiers_never_link() -> None:
    rules = Rules(blocklist=frozenset({"phone:+8613800000000"}))
    e = ev("e1", anonymous_id="c1", member_id="undefined", phone="+8613800000000", device_id="000-000",
           favourite_colour="blue")
    assert identifiers_of(e, rules) == ["anonymous_id:c1"]


def test_a_login_merges_the_cookie_person_into_the_member_person() -> None:
    g = Graph()
    assert g.add(ev("e1", 0, anonymous_id="c1")).person_id == person_id_for("anonymous_id:c1")
    login = g.add(ev("e2", 10, anonymous_id="c1", member_id="M1"))
    member = person_id_for("member_id:M1")
    assert login.person_id == member
    [change] = login.changes
    assert (change.kind, change.from_person, change.into, change.evidence) == (
        "merge", person_id_for("anonymous_id:c1"), (member,), ("e2",))
    assert g.add(ev("e3", 20, anonymous_id="c1")).person_id == member  # later anonymous events follow


def test_two_member_ids_never_merge_and_the_weaker_evidence_gives_way() -> None:
    g = Graph()
    for i in range(3):  # member A uses the phone three times
        g.add(ev(f"a{i}", i, member_id="A", phone="p1"))
    typo = g.add(ev("b0", 5, member_id="B", phone="p1"))  # typed once onto B's order
    assert typo.person_id == person_id_for("member_id:B")
    assert g.person["phone:p1"] == person_id_for("member_id:A")
    [conflict] = typo.conflicts
    assert {conflict.a, conflict.b} == {"member_id:B", "phone:p1"} and "member_id" in conflict.reason
    assert typo.changes == []
    # The same evidence in the other order gives the same answer.
    h = Graph()
    h.add(ev("b0", 5, member_id="B", phone="p1"))
    changes = [h.add(ev(f"a{i}", i, member_id="A", phone="p1")).changes for i in range(3)]
    assert h.person == g.person
    assert any(c.kind == "split" for cs in changes for c in cs)  # the phone left B when A outweighed it


def test_a_kiosk_seen_with_too_many_members_is_shared_and_its_merges_are_undone() -> None:
    g = Graph(Rules(shared_threshold=2))
    g.add(ev("k0", 0, anonymous_id="kiosk"))
    g.add(ev("k1", 1, anonymous_id="kiosk", member_id="M1"))
    assert g.person["anonymous_id:kiosk"] == person_id_for("member_id:M1")
    g.add(ev("k2", 2, anonymous_id="kiosk", member_id="M2"))  # refused: M1 holds it
    third = g.add(ev("k3", 3, anonymous_id="kiosk", member_id="M3"))
    assert g.shared("anonymous_id:kiosk")
    kiosk = person_id_for("anonymous_id:kiosk")
    assert third.person_id == person_id_for("member_id:M3")  # the member, not the kiosk
    assert g.person["anonymous_id:kiosk"] == kiosk
    assert [(c.kind, c.from_person, c.into) for c in third.changes] == [
        ("split", person_id_for("member_id:M1"), (kiosk,))]
    assert "anonymous_id:kiosk" in third.changes[0].reason
    assert g.add(ev("k4", 4, anonymous_id="kiosk")).person_id == kiosk  # anonymous use stays anonymous


def test_limits_per_type_keep_the_strongest_phones() -> None:
    g = Graph(Rules(limits={"member_id": 1, "phone": 2}))
    for phone, uses in (("p1", 3), ("p2", 2), ("p3", 1)):
        for i in range(uses):
            g.add(ev(f"{phone}-{i}", i, member_id="M1", phone=phone))
    member = person_id_for("member_id:M1")
    assert [g.person[f"phone:{p}"] == member for p in ("p1", "p2", "p3")] == [True, True, False]


# --------------------------------------------------------------------------- properties

POOLS = {"member_id": 4, "phone": 4, "wechat_unionid": 3, "device_id": 3, "anonymous_id": 6}


@st.composite
def event_sets(draw: Any) -> list[dict[str, Any]]:
    n = draw(st.integers(1, 40))
    events = []
    for i in range(n):
        kinds = draw(st.lists(st.sampled_from(sorted(POOLS)), min_size=1, max_size=3, unique=True))
        ids = {k: f"{k[0]}{draw(st.integers(0, POOLS[k] - 1))}" for k in kinds}
        events.append(ev(f"e{i:03d}", draw(st.integers(0, 50)), **ids))
    return events


def plain_reference(events: list[dict[str, Any]], rules: Rules) -> dict[str, str]:
    """The rules written out once more, as plainly as possible, sharing no code with the core:
    identifier -> person id."""
    def kind(i: str) -> str:
        return i.split(":", 1)[0]

    ids_of = {e["event_id"]: identifiers_of(e, rules) for e in events}
    anchors: dict[str, set[str]] = {}
    edges: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for e in events:
        ids = ids_of[e["event_id"]]
        for i in ids:
            anchors.setdefault(i, set()).update(a for a in ids if kind(a) in rules.anchors and a != i)
        for a in ids:
            for b in ids:
                if a < b:
                    edges.setdefault((a, b), []).append((e["event_time_ms"], e["event_id"]))
    shared = {i for i, a in anchors.items() if len(a) > rules.shared_threshold}
    clusters = {i: {i} for i in anchors}  # identifier -> its cluster (one shared set object)
    usable = [(a, b) for (a, b) in edges if a not in shared and b not in shared]
    # an edge's strength: its distinct events, counted up to the cap
    usable.sort(key=lambda ab: (-min(len(set(edges[ab])), rules.edge_cap), min(rules.rank(ab[0]), rules.rank(ab[1])),
                                max(rules.rank(ab[0]), rules.rank(ab[1])), min(edges[ab]), ab))
    for a, b in usable:
        ca, cb = clusters[a], clusters[b]
        if ca is cb:
            continue
        union = ca | cb
        if any(n > rules.limit(k) for k, n in Counter(kind(i) for i in union).items()):
            continue
        for i in union:
            clusters[i] = union
    return {i: person_id_for(min(c, key=lambda x: (rules.rank(x), x))) for i, c in clusters.items()}


def _rules_hold(g: Graph) -> None:
    for person, idents in g.clusters().items():
        counts = Counter(i.split(":", 1)[0] for i in idents)
        for kind, n in counts.items():
            assert n <= g.rules.limit(kind), (person, kind, n)
        assert counts["member_id"] <= 1
        if len(idents) > 1:
            assert not any(g.shared(i) for i in idents)


def small_rules(threshold: int, cap: int = 8) -> Rules:
    return Rules(shared_threshold=threshold, edge_cap=cap, limits={
        "member_id": 1, "phone": 2, "wechat_unionid": 1, "device_id": 2, "anonymous_id": 3})


@PROPERTY
@given(event_sets(), st.randoms(use_true_random=False), st.integers(1, 3), st.integers(1, 4))
def test_any_arrival_order_gives_the_reference_clustering(
    events: list[dict[str, Any]], rnd: Any, threshold: int, cap: int,
) -> None:
    """Any order, with some events delivered twice (a replay), gives the reference's clustering;
    small edge caps make strengths saturate."""
    rules = small_rules(threshold, cap)
    reference, by_event = cluster(events, rules)
    assert reference == plain_reference(events, rules)
    for _ in range(2):
        order = events + rnd.sample(events, len(events) // 3)
        rnd.shuffle(order)
        g = Graph(rules)
        for e in order:
            g.add(e)
        assert g.person == reference
        assert {e["event_id"]: g.person_of(identifiers_of(e, rules)) for e in events} == by_event
        _rules_hold(g)


@PROPERTY
@given(event_sets(), st.randoms(use_true_random=False), st.integers(1, 3), st.integers(1, 5))
def test_graphs_built_apart_and_joined_give_the_reference_clustering(
    events: list[dict[str, Any]], rnd: Any, threshold: int, parts: int,
) -> None:
    """Evidence is a join-semilattice: events spread over several graphs (some in more than
    one), joined in any order, some joined twice, cluster exactly like one graph of them all."""
    rules = small_rules(threshold, 3)
    graphs = [Graph(rules) for _ in range(parts)]
    for e in events:
        for g in rnd.sample(graphs, min(parts, rnd.choice([1, 1, 2]))):
            g.add(e)
    order = graphs + rnd.sample(graphs, parts // 2)
    rnd.shuffle(order)
    whole = Graph(rules)
    for g in order:
        whole.join(json.loads(json.dumps(g.to_json())))
    assert whole.person == cluster(events, rules)[0]
    _rules_hold(whole)


def test_an_identifier_flagged_shared_stops_linking_and_its_merges_are_undone() -> None:
    g = Graph()
    g.add(ev("e1", 0, member_id="M1", device_id="tablet"))
    assert g.person["device_id:tablet"] == person_id_for("member_id:M1")
    update = g.flag_shared(["device_id:tablet"])
    assert g.person["device_id:tablet"] == person_id_for("device_id:tablet")
    assert [(c.kind, c.from_person) for c in update.changes] == [("split", person_id_for("member_id:M1"))]
    assert g.flag_shared(["device_id:tablet"]).changes == []  # flagging again changes nothing


@PROPERTY
@given(event_sets(), st.integers(1, 3))
def test_every_person_change_is_reported_as_a_merge_or_split(events: list[dict[str, Any]], threshold: int) -> None:
    """What follows the graph (features, pending triggers) learns of every identifier that changed
    person, and of nothing else."""
    g = Graph(Rules(shared_threshold=threshold))
    for e in events:
        before = dict(g.person)
        update = g.add(e)
        moved = {i: (was, g.person[i]) for i, was in before.items() if g.person[i] != was}
        reported = {(c.from_person, into) for c in update.changes for into in c.into}
        assert set(moved.values()) <= reported
        for c in update.changes:
            assert any(was == c.from_person for was, _ in moved.values()), c
            if c.kind == "merge":
                assert len(c.into) == 1 and c.from_person not in g.person.values()
            else:
                assert len(c.into) >= 1 and c.reason
        assert update.person_id == g.person_of(identifiers_of(e, g.rules))


@PROPERTY
@given(event_sets(), st.data())
def test_the_state_survives_its_json_changelog_mid_stream(events: list[dict[str, Any]], data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(events)))
    g = Graph()
    for e in events[:cut]:
        g.add(e)
    restored = Graph.from_json(json.loads(json.dumps(g.to_json())))
    for e in events[cut:]:
        restored.add(e)
    assert restored.person == cluster(events)[0]


def test_an_event_without_usable_identifiers_is_refused() -> None:
    with pytest.raises(ValueError):
        Graph().add(ev("e1", anonymous_id="null"))


def test_rules_come_from_settings_and_bad_ones_are_refused_at_start() -> None:
    from streams.settings import Settings, SettingsError

    rules = Settings.from_env({"TOUCHLINE_IDENTITY_LIMITS": "phone=1, email=2",
                               "TOUCHLINE_IDENTITY_SHARED_THRESHOLD": "5",
                               "TOUCHLINE_IDENTITY_BLOCKLIST": "phone:h1:abc,device_id:kiosk-1"}).identity_rules()
    assert (rules.limit("phone"), rules.limit("email"), rules.limit("member_id")) == (1, 2, 1)
    assert rules.shared_threshold == 5
    assert identifiers_of(ev("e1", device_id="kiosk-1", anonymous_id="c1"), rules) == ["anonymous_id:c1"]
    assert Rules.parse(priority="phone,member_id").rank("phone:x") == 0
    for env, word in ((("TOUCHLINE_IDENTITY_LIMITS", "phone=0"), "phone=0"),
                      (("TOUCHLINE_IDENTITY_LIMITS", "shoe_size=2"), "shoe_size"),
                      (("TOUCHLINE_IDENTITY_PRIORITY", "member_id,member_id"), "repeated"),
                      (("TOUCHLINE_IDENTITY_BLOCKLIST", "nokind"), "nokind"),
                      (("TOUCHLINE_IDENTITY_SHARED_THRESHOLD", "0"), "at least 1")):
        with pytest.raises(SettingsError, match=word):
            Settings.from_env(dict([env]))


def test_a_group_written_before_edge_digests_reads_the_same() -> None:
    """Groups in changelogs from before digests: nodes {"first", "anchors", "nbrs"}, raw event ids."""
    events = [ev(f"a{i}", i, member_id="A", phone="p1") for i in range(3)] + [ev("b0", 5, member_id="B", phone="p1")]
    new = Graph()
    for e in events:
        new.add(e)
    key = "member_id:A\tphone:p1"
    old = new.to_json()
    old = {**old, "nodes": {i: {"first": [T0, "a0"], "anchors": a, "nbrs": new.nbrs[i]} for i, a in old["nodes"].items()},
           "edges": {key: {**old["edges"][key], "ev": ["a0", "a1", "a2"]},
                     "member_id:B\tphone:p1": {**old["edges"]["member_id:B\tphone:p1"], "ev": ["b0"]}}}
    read = Graph.from_json(old)
    assert read.to_json() == new.to_json() and read.nbrs == new.nbrs
    assert read.add(ev("a1", 1, member_id="A", phone="p1")).changes == []  # a1 again: already counted
    assert read.edges[key]["ev"] == new.edges[key]["ev"]


# --------------------------------------------------------------------------- erasure


def stripped(events: list[dict[str, Any]], erased: set[str], rules: Rules) -> list[dict[str, Any]]:
    """The events as if ``erased`` had never been seen: each keeps its other identifiers, and one
    left with none is gone."""
    out = []
    for e in events:
        ids = {k: v for k, v in e["identifiers"].items() if f"{k}:{v}" not in erased}
        if identifiers_of({**e, "identifiers": ids}, rules):
            out.append({**e, "identifiers": ids})
    return out


def built(events: list[dict[str, Any]], rules: Rules) -> Graph:
    g = Graph(rules)
    for e in events:
        g.add(e)
    return g


def _same_evidence(g: Graph, h: Graph) -> None:
    assert (g.nodes, g.edges, g.person, g.flags) == (h.nodes, h.edges, h.person, h.flags)
    assert {i: sorted(n) for i, n in g.nbrs.items()} == {i: sorted(n) for i, n in h.nbrs.items()}


def test_erasing_a_member_with_their_phone_and_cookie_leaves_another_member_as_they_were() -> None:
    rules = Rules()
    events = [ev("a1", 0, member_id="A", phone="pa", anonymous_id="ca"), ev("a2", 1, member_id="A", anonymous_id="ca"),
              ev("a3", 2, anonymous_id="ca"), ev("b1", 3, member_id="B", phone="pb", anonymous_id="cb"),
              ev("b2", 4, anonymous_id="cb", phone="pa")]  # B's cookie once seen with A's phone
    g = built(events, rules)
    b = person_id_for("member_id:B")
    assert g.person["phone:pa"] == person_id_for("member_id:A") and g.person["anonymous_id:cb"] == b
    erased = {"member_id:A", "phone:pa", "anonymous_id:ca"}
    update = g.without(erased)
    assert update.changes == [] and update.conflicts == []  # all of A went; B is as it was
    _same_evidence(g, built(stripped(events, erased, rules), rules))
    assert g.clusters() == {b: {"member_id:B", "phone:pb", "anonymous_id:cb"}}
    assert not any(i in json.dumps(g.to_json()) for i in erased)
    assert g.without(erased).changes == [] and g.to_json() == built(stripped(events, erased, rules), rules).to_json()


def test_a_kiosk_shared_by_four_members_stops_being_shared_when_one_is_erased_at_threshold_three() -> None:
    """Shared means seen with more distinct anchors than the threshold: 4 > 3 is shared, 3 is not.
    The kiosk's anchor list is kept to 4 (threshold + 1); erasing one is read again from its edges."""
    rules = Rules(shared_threshold=3)
    events = [ev(f"k{i}", i, member_id=f"M{i}", device_id="kiosk") for i in range(1, 5)]
    events += [ev("m2", 9, member_id="M2", device_id="kiosk"), ev("x", 10, member_id="M5", device_id="kiosk")]
    g = built(events[:4] + events[4:5], rules)
    assert g.shared("device_id:kiosk")
    update = g.without({"member_id:M1"})
    assert not g.shared("device_id:kiosk")
    # M2 used it twice: the strongest link now, the kiosk is M2's again
    assert g.person["device_id:kiosk"] == person_id_for("member_id:M2")
    assert [(c.kind, c.from_person, c.into) for c in update.changes] == [
        ("merge", person_id_for("device_id:kiosk"), (person_id_for("member_id:M2"),))]
    assert "erasure" in update.changes[0].reason
    # its links to M3 and M4 are refused now; M3's was reported already (before it was shared)
    assert [(c.a, c.b) for c in update.conflicts] == [("device_id:kiosk", "member_id:M4")]
    assert {"device_id:kiosk\tmember_id:M3", "device_id:kiosk\tmember_id:M4"} <= set(g.refused)
    _same_evidence(g, built(stripped(events[:5], {"member_id:M1"}, rules), rules))
    # with a fifth member the list was full (4) and one more was left out of it: still shared
    h = built(events, rules)
    h.without({"member_id:M1"})
    assert h.shared("device_id:kiosk") and h.nodes["device_id:kiosk"] == sorted(
        f"member_id:M{i}" for i in (2, 3, 4, 5))
    _same_evidence(h, built(stripped(events, {"member_id:M1"}, rules), rules))


def test_a_flag_learned_from_elsewhere_stays_through_an_erasure() -> None:
    g = built([ev("e1", 0, member_id="M1", device_id="tablet"), ev("e2", 1, member_id="M2", device_id="tablet")],
              Rules(shared_threshold=1))
    g.flag_shared(["device_id:tablet"])
    g.without({"member_id:M1"})
    assert g.shared("device_id:tablet") and g.flags == {"device_id:tablet"}
    g.without({"device_id:tablet"})
    assert g.flags == set() and "device_id:tablet" not in g.nodes


@PROPERTY
@given(event_sets(), st.data(), st.integers(1, 3), st.integers(1, 4))
def test_a_graph_without_identifiers_is_the_graph_of_the_events_without_them(
    events: list[dict[str, Any]], data: st.DataObject, threshold: int, cap: int,
) -> None:
    """Nodes, edges (first events, digests, capped), anchors, clustering: all equal to the graph
    built from the events with the erased identifiers taken out; forgetting again changes nothing."""
    rules = small_rules(threshold, cap)
    g = built(events, rules)
    erased = set(data.draw(st.lists(st.sampled_from(sorted(g.nodes)), min_size=1, max_size=5)))
    before = dict(g.person)
    update = g.without(erased)
    reference = stripped(events, erased, rules)
    _same_evidence(g, built(reference, rules))
    assert g.person == cluster(reference, rules)[0] == plain_reference(reference, rules)
    _rules_hold(g)
    moved = {(before[i], p) for i, p in g.person.items() if before[i] != p}
    assert moved <= {(c.from_person, into) for c in update.changes for into in c.into}
    again = g.without(erased)
    assert (again.changes, again.conflicts) == ([], []) and g.person == cluster(reference, rules)[0]
