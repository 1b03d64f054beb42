"""The traffic simulator: deterministic, valid where it says so, and its ground truth holds.

Everything here is pure (no broker). Facts are re-derived from the decoded
records themselves, not from the generator's bookkeeping, so a bug in the
generator's counting cannot hide behind a matching bug in its truth.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import avro
from streams.identity import links as identity_links
from streams.ingest import validate
from streams.simulate import journeys
from streams.simulate.producer import write_truth
from streams.simulate.traffic import MALFORMED, SimConfig, SimRecord, Traffic, generate
from streams.touchpoint.record import props
from streams.touchpoint.taxonomy import CHANNELS, EVENT_TYPES, is_junk
from streams.triggers import cart_abandon

POLICY = validate.Policy(salt=b"test-salt")

SMALL = SimConfig(persons=60, events=3000, malformed_rate=0.02, late_rate=0.03, duplicate_rate=0.02)
SHARED = SimConfig(persons=60, events=3000, malformed_rate=0.02, late_rate=0.03, duplicate_rate=0.02,
                   shared_devices=3, cart_rate=0.5, cart_abandon_rate=0.5)
VALID = ("event", "late")
MINUTE = 60_000


@cache
def small() -> Traffic:
    return generate(SMALL)


@cache
def shared() -> Traffic:
    return generate(SHARED)


def owners(config: SimConfig) -> tuple[dict[str, int], dict[int, str | None]]:
    """(event id -> human, human -> member id): who really did what, which records cannot say.

    ``generate`` simulates journeys first with a fresh rng of the seed, so a
    second ``Journeys`` run of the same config replays the same people.
    """
    j = journeys.Journeys(config, random.Random(config.seed))
    j.run()
    return dict(j.owner), {h.idx: h.member_id for h in j.humans}


def rule_links(events: list[dict[str, Any]]) -> dict[str, str]:
    links: dict[str, str] = {}
    for e in events:  # first identify carrying both a cookie and a member id wins
        ids = e["identifiers"]
        if e["type"] in ("identify", "login", "signed_up") and ids["member_id"] and ids["anonymous_id"]:
            links.setdefault(ids["anonymous_id"], ids["member_id"])
    return links


def decoded(traffic: Traffic) -> list[tuple[SimRecord, dict[str, Any]]]:
    """(record, event) for every valid, distinct record, in send order."""
    return [(r, avro.decode_as(avro.TOUCHPOINT, r.value)) for r in traffic.records if r.kind in VALID]


def persons_by_rule(events: list[dict[str, Any]]) -> int:
    """The skeleton identity rule, written the simple way: collect links, then resolve."""
    links = rule_links(events)
    persons = set()
    for e in events:
        ids = e["identifiers"]
        if ids["member_id"]:
            persons.add(("member", ids["member_id"]))
        elif ids["anonymous_id"] in links:
            persons.add(("member", links[ids["anonymous_id"]]))
        else:
            persons.add(("key", validate.route_key(ids)))
    return len(persons)


def test_same_config_gives_identical_bytes_and_truth() -> None:
    a, b = generate(SMALL), generate(SMALL)
    assert a.records == b.records
    assert a.truth == b.truth
    other = generate(SimConfig(seed=SMALL.seed + 1, persons=60, events=3000))
    assert [r.value for r in other.records[:50]] != [r.value for r in a.records[:50]]


def test_valid_records_decode_pass_checks_and_use_the_taxonomy() -> None:
    for rec, event in decoded(small()):
        assert validate.check(event, POLICY) is None, event
        assert event["type"] in EVENT_TYPES and event["channel"] in CHANNELS
        assert rec.key == str(validate.route_key(event["identifiers"])).encode()
        assert 0 <= event["receive_time_ms"] - event["event_time_ms"]
        if rec.kind == "event":
            assert event["receive_time_ms"] - event["event_time_ms"] <= 3000


def test_duplicates_are_exact_resends_of_earlier_valid_records() -> None:
    sent: set[bytes] = set()
    for rec in small().records:
        if rec.kind == "duplicate":
            assert rec.value in sent
        elif rec.kind in VALID:
            assert rec.value not in sent
            sent.add(rec.value)


def test_every_malformed_record_gets_its_dead_letter_reason() -> None:
    truth = small().truth
    bad = [r for r in small().records if r.kind == "malformed"]
    reasons: Counter[str] = Counter()
    for rec in bad:
        outcome = validate.accept(rec.value, POLICY)
        assert isinstance(outcome, validate.Rejected), rec
        reasons[outcome.reason] += 1
    assert dict(reasons) == truth.malformed_by_reason
    assert set(reasons) == {reason for _, reason in MALFORMED}  # every variant shows up


def test_late_records_are_views_10_to_60_minutes_behind_the_stream() -> None:
    now = None
    late = 0
    for rec, event in decoded(small()):
        t = event["event_time_ms"]
        if rec.kind == "late":
            late += 1
            assert event["type"] in ("page_viewed", "product_viewed")
            assert now is not None and 10 * MINUTE <= now - t <= 60 * MINUTE
        else:
            now = t if now is None else max(now, t)
            assert now == t  # on-time records are sent in event-time order
    assert late == small().truth.late > 0


def test_counts_add_up() -> None:
    traffic = small()
    truth, kinds = traffic.truth, Counter(r.kind for r in traffic.records)
    events = [e for _, e in decoded(traffic)]
    assert truth.records_sent == len(traffic.records) == (
        truth.events_valid_distinct + truth.duplicates + truth.malformed
    )
    assert truth.events_valid_distinct == len({e["event_id"] for e in events}) == len(events)
    assert (kinds["late"], kinds["duplicate"], kinds["malformed"]) == (truth.late, truth.duplicates, truth.malformed)
    assert truth.events_by_type == dict(Counter(e["type"] for e in events))
    assert truth.events_by_channel == dict(Counter(e["channel"] for e in events))
    assert truth.orders == truth.events_by_type["order_completed"]
    assert truth.end_time_ms == max(e["event_time_ms"] for e in events)
    assert truth.abandoned_carts == len(truth.abandoned_cart_ids) > 0
    assert truth.carts == len({props(e)["cart_id"] for e in events if e["type"] == "product_added"})
    assert abs(truth.events_valid_distinct - SMALL.events) < 50  # stops once the target is reached
    assert json.loads(json.dumps(truth.to_dict())) == truth.to_dict()


@pytest.mark.parametrize("which", ["small", "shared"])
def test_abandoned_carts_are_really_abandoned_and_others_convert_within_10_minutes(which: str) -> None:
    traffic, config = (small(), SMALL) if which == "small" else (shared(), SHARED)
    events = [e for _, e in decoded(traffic)]
    links = rule_links(events)

    def person(e: dict[str, Any]) -> str:
        ids = e["identifiers"]
        return str(ids["member_id"] or links.get(ids["anonymous_id"]) or validate.route_key(ids))

    adds: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e["type"] == "product_added":
            adds.setdefault(props(e)["cart_id"], []).append(e)
    by_cart = {(e["type"], props(e).get("cart_id")) for e in events}
    orders = [e for e in events if e["type"] == "order_completed"]
    abandoned = set(traffic.truth.abandoned_cart_ids)
    assert abandoned <= set(adds)
    for cart_id, cart in adds.items():
        last = max(e["event_time_ms"] for e in cart)
        who = {person(e) for e in cart}
        assert len(who) == 1
        if cart_id in abandoned:
            assert ("checkout_started", cart_id) not in by_cart and ("order_completed", cart_id) not in by_cart
            assert not [o for o in orders if person(o) in who
                        and last < o["event_time_ms"] <= last + config.cart_abandon_delay_ms]
        else:
            (order,) = [o for o in orders if props(o)["cart_id"] == cart_id]
            assert last < order["event_time_ms"] <= last + 10 * MINUTE


@pytest.mark.parametrize("which", ["small", "shared"])
def test_members_fill_carts_only_when_logged_in(which: str) -> None:
    events = [e for _, e in decoded(small() if which == "small" else shared())]
    logged_in_devices = {e["identifiers"]["anonymous_id"] for e in events
                         if e["identifiers"]["anonymous_id"] and e["identifiers"]["member_id"]}
    carts = [e for e in events if e["type"] in ("product_added", "checkout_started")]
    assert carts
    for e in carts:
        ids = e["identifiers"]
        assert ids["anonymous_id"]  # carts happen in device sessions
        # a member's cart carries the member id; an anonymous cart's device never logs in
        assert ids["member_id"] or ids["anonymous_id"] not in logged_in_devices


def test_expected_persons_follows_the_skeleton_identity_rule() -> None:
    traffic = small()
    events = [e for _, e in decoded(traffic)]
    assert traffic.truth.expected_persons == persons_by_rule(events)
    assert traffic.truth.members <= traffic.truth.expected_persons


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), persons=st.integers(1, 40), events=st.integers(0, 400),
       shared_devices=st.integers(0, 3))
def test_any_small_config_is_consistent(seed: int, persons: int, events: int, shared_devices: int) -> None:
    config = SimConfig(seed=seed, persons=persons, events=events, duplicate_rate=0.05,
                       late_rate=0.05, malformed_rate=0.05, shared_devices=min(shared_devices, persons // 2))
    traffic = generate(config)
    assert traffic.records == generate(config).records
    truth = traffic.truth
    valid = decoded(traffic)
    assert all(validate.check(e, POLICY) is None for _, e in valid)
    assert truth.records_sent == len(traffic.records) == truth.events_valid_distinct + truth.duplicates + truth.malformed
    assert truth.expected_persons == persons_by_rule([e for _, e in valid])
    expected = Counter(MALFORMED[k % len(MALFORMED)][1] for k in range(truth.malformed))
    reasons = Counter(validate.accept(r.value, POLICY).reason for r in traffic.records if r.kind == "malformed")  # type: ignore[union-attr]
    assert reasons == expected == Counter(truth.malformed_by_reason)


def test_junk_identifier_record_really_is_junk() -> None:
    junk = [avro.decode_as(avro.TOUCHPOINT, r.value) for r in small().records if r.kind == "malformed"
            and r.key is None and r.value[:1] == b"\x00" and isinstance(validate.accept(r.value, POLICY), validate.Rejected)
            and validate.accept(r.value, POLICY).detail.startswith("no usable identifier")]  # type: ignore[union-attr]
    assert junk and all(all(is_junk(v) for v in e["identifiers"].values()) for e in junk)


def test_nested_records_name_every_schema_field() -> None:
    """Events spell out every optional field; this keeps them honest when a schema grows."""
    def names(record: str) -> tuple[str, ...]:
        schema = json.loads((avro.SCHEMA_DIR / f"com.touchline.touchpoint.{record}.avsc").read_text())
        return tuple(f["name"] for f in schema["fields"])

    assert names("Identifiers") == journeys.ID_FIELDS


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        SimConfig(cart_abandon_rate=1.5)
    with pytest.raises(ValueError):
        SimConfig(channel_mix={"fax": 1.0})
    with pytest.raises(ValueError):
        SimConfig(shared_devices=-1)
    with pytest.raises(ValueError):
        SimConfig(persons=5, shared_devices=3)  # each shared device needs two members


def test_write_truth_is_json(tmp_path: Path) -> None:
    path = tmp_path / "out" / "truth.json"
    write_truth(path, small().truth)
    assert json.loads(path.read_text()) == small().truth.to_dict()


def humans_per_cookie(events: list[dict[str, Any]], owner: dict[str, int]) -> defaultdict[str, set[int]]:
    """anonymous_id -> the humans who really produced events with it."""
    users: defaultdict[str, set[int]] = defaultdict(set)
    for e in events:
        if e["identifiers"]["anonymous_id"]:
            users[e["identifiers"]["anonymous_id"]].add(owner[e["event_id"]])
    return users


def test_no_shared_devices_by_default() -> None:
    truth = small().truth
    assert SimConfig().shared_devices == 0
    assert truth.shared_devices == 0 and truth.over_merged_humans == 0
    events = [e for _, e in decoded(small())]
    users = humans_per_cookie(events, owners(SMALL)[0])
    assert all(len(humans) == 1 for humans in users.values())  # every cookie is one human's


def test_every_shared_device_is_used_by_two_or_more_humans_two_of_whom_log_in() -> None:
    events = [e for _, e in decoded(shared())]
    owner, member_of = owners(SHARED)
    assert set(owner) == {e["event_id"] for e in events}
    users: defaultdict[str, set[int]] = defaultdict(set)
    logins: defaultdict[str, set[str]] = defaultdict(set)
    for e in events:
        ids = e["identifiers"]
        if ids["anonymous_id"]:
            users[ids["anonymous_id"]].add(owner[e["event_id"]])
            if e["type"] == "identify":
                logins[ids["anonymous_id"]].add(ids["member_id"])
    shared_cookies = {anon for anon, humans in users.items() if len(humans) >= 2}
    assert len(shared_cookies) == shared().truth.shared_devices == SHARED.shared_devices
    for anon in shared_cookies:
        assert len(logins[anon]) >= 2  # at least two members log in on it...
        assert logins[anon] <= {member_of[h] for h in users[anon]}  # ...and they are among its users
    assert {anon for anon, members in logins.items() if len(members) >= 2} == shared_cookies
    assert any(len(users[anon]) > 2 for anon in shared_cookies)  # some have a third human


def test_expected_persons_and_over_merge_follow_the_rule_with_shared_devices() -> None:
    traffic = shared()
    events = [e for _, e in decoded(traffic)]
    assert traffic.truth.expected_persons == persons_by_rule(events)
    links = rule_links(events)
    owner, member_of = owners(SHARED)
    wrong = set()
    for e in events:
        ids = e["identifiers"]
        person = ids["member_id"] or links.get(ids["anonymous_id"])
        if person is not None and person != member_of[owner[e["event_id"]]]:
            wrong.add(owner[e["event_id"]])
    # each shared device gives at least its second member's anonymous browsing to the first
    assert len(wrong) == traffic.truth.over_merged_humans >= SHARED.shared_devices


def test_carts_on_shared_devices_carry_the_member_id() -> None:
    events = [e for _, e in decoded(shared())]
    users = humans_per_cookie(events, owners(SHARED)[0])
    carts = [e for e in events if props(e).get("cart_id")
             and len(users[e["identifiers"]["anonymous_id"]]) >= 2]
    assert carts  # the config is busy enough to put carts on shared devices
    assert all(e["identifiers"]["member_id"] for e in carts)


@pytest.mark.parametrize("which", ["small", "shared"])
def test_pipeline_cores_fire_exactly_the_abandoned_carts(which: str) -> None:
    """The real identity resolver and cart-abandon core, fed in send order, fire exactly the truth's carts."""
    traffic, config = (small(), SMALL) if which == "small" else (shared(), SHARED)
    table: dict[str, dict[str, Any]] = {}
    states: dict[str, dict[str, Any]] = {}
    for _, e in decoded(traffic):
        res = identity_links.resolve(e, str(validate.route_key(e["identifiers"])), table)
        state = states.setdefault(res.person_id, cart_abandon.empty(res.person_id, 0))
        cart_abandon.on_event(state, {"touchpoint": e, "member_id": res.member_id}, config.cart_abandon_delay_ms)
    fired = [t["correlation_key"] for s in states.values() for t in cart_abandon.fire_due(s, 2**62)]
    assert sorted(fired) == traffic.truth.abandoned_cart_ids


@pytest.mark.parametrize("seed", [1, 7, 13])
def test_the_identity_population_is_valid_and_its_truth_is_what_the_rules_can_find(seed: int) -> None:
    """streams/simulate/identities.py: every event passes ingestion, and the identity graph's
    reference clustering of its events groups the identifiers exactly as the truth does (each
    true link has evidence, the kiosk links nobody, the typed phone stays with its owner)."""
    from streams.identity.graph import Graph, cluster
    from streams.simulate.identities import population

    pop = population(seed, people=30)
    policy = validate.Policy(salt=b"test")
    assert not [r for e in pop.events
                if isinstance(r := validate.accept(avro.encode(avro.TOUCHPOINT, e), policy), validate.Rejected)]
    reference, _ = cluster(pop.events)
    truth = {f"{k}:{v}": who for (k, v), who in pop.owner.items()}
    assert set(reference) == set(truth)
    groups: dict[str, set[str]] = defaultdict(set)
    found: dict[str, set[str]] = defaultdict(set)
    for ident, who in truth.items():
        if who != "kiosk":
            groups[who].add(ident)
            found[reference[ident]].add(ident)
    assert sorted(map(sorted, groups.values())) == sorted(map(sorted, found.values()))
    g = Graph()
    for e in pop.events:
        g.add(e)
    assert all(g.shared(f"device_id:{k}") for k in pop.kiosks)
    assert pop.typo is not None
    phone, owner, other = pop.typo
    assert reference[f"phone:{phone}"] == reference[f"member_id:{owner}"] != reference[f"member_id:{other}"]
