"""Pure parts of erasure (streams/privacy/core.py, the ingest batcher's suppression): fast, no network."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams import avro
from streams.clock import ManualClock
from streams.identity.links import person_id_for
from streams.identity.profile import stored_form
from streams.ingest.batcher import IngestBatcher, RawRecord
from streams.ingest.validate import Policy
from streams.privacy.agent import erase_ops
from streams.privacy.core import Suppressions, persons_of, suppression_key, work_by_partition
from streams.topics import partition_for
from tests.conftest import T0, touchpoint

SALT = b"privacy-test-salt"
POLICY = Policy(salt=SALT)


def test_suppression_keys_are_salted_hashes_of_the_stored_identifier() -> None:
    key = suppression_key("member_id:M1", SALT)
    assert key == suppression_key("member_id:M1", SALT) and len(key) == 32
    assert "M1" not in key
    assert key != suppression_key("member_id:M1", b"another-salt")
    assert key != suppression_key("member_id:M2", SALT)
    assert key != suppression_key("pos_card:M1", SALT)  # the type is part of what is hashed


def _raw(offset: int, event: dict) -> RawRecord:
    return RawRecord(0, offset, avro.encode(avro.TOUCHPOINT, event))


def test_ingest_drops_events_carrying_a_suppressed_identifier_however_it_was_typed() -> None:
    phone = stored_form("phone:+86 138-0013-8000", SALT, "CN")  # hashed as ingest hashes it
    sup = Suppressions(SALT)
    sup.add({"identifier_hashes": [suppression_key(phone, SALT)]})
    batcher = IngestBatcher(4, ManualClock(), manual_clock=True, policy=POLICY, suppressions=sup)
    events = [
        touchpoint("e1", "page_viewed", T0, identifiers={"anonymous_id": "c-1", "phone": "13800138000"}),
        touchpoint("e2", "page_viewed", T0 + 5, identifiers={"anonymous_id": "c-2"}),
        touchpoint("e3", "signed_up", T0 + 9, identifiers={"member_id": "M9", "phone": "+8613800138000"}),
    ]
    routed = batcher.route([_raw(i, e) for i, e in enumerate(events)])
    kept = [item["touchpoint"]["event_id"] for items in routed.by_partition.values() for item in items]
    assert kept == ["e2"] and routed.suppressed == 2 and not routed.dead
    assert routed.outcomes[("web", "page_viewed", "suppressed", "erased")] == 1
    assert routed.outcomes[("web", "signed_up", "suppressed", "erased")] == 1
    assert batcher.raw_times[0] == T0 + 9  # time still moves with a suppressed event


def test_an_empty_list_suppresses_nothing_and_junk_values_never_match() -> None:
    sup = Suppressions(SALT)
    tp = {"identifiers": {"anonymous_id": "unknown", "member_id": None}}
    assert not sup.blocks(tp)
    sup.add({"identifier_hashes": [suppression_key("anonymous_id:unknown", SALT)]})
    assert not sup.blocks(tp)


def test_persons_of_covers_every_person_id_the_identifiers_found() -> None:
    ids = ["anonymous_id:c-1", "member_id:M1"]
    assert persons_of(ids) == sorted({person_id_for("anonymous_id:c-1"), person_id_for("member_id:M1")})


@settings(max_examples=50, deadline=None)
@given(persons=st.sets(st.text("abcdef0123", min_size=1, max_size=6), max_size=8),
       ids=st.sets(st.text("abcdef0123", min_size=1, max_size=6).map(lambda v: f"anonymous_id:{v}"), max_size=8),
       n=st.integers(1, 8))
def test_each_key_goes_to_the_one_partition_that_holds_it(persons: set[str], ids: set[str], n: int) -> None:
    work = work_by_partition("r1", persons, ids, n)
    assert sorted(p for w in work.values() for p in w["persons"]) == sorted(persons)
    assert sorted(i for w in work.values() for i in w["identifiers"]) == sorted(ids)
    for part, w in work.items():
        assert all(partition_for(p, n) == part for p in w["persons"])
        assert all(partition_for(i, n) == part for i in w["identifiers"])
        assert w["erased_identifiers"] == sorted(ids) and w["erased_persons"] == sorted(persons)
        assert w["request_id"] == "r1"
        assert w["persons"] or w["identifiers"]  # no empty work
        avro.encode(avro.ERASURE_WORK, w)  # the contract holds it


def test_the_erase_batch_is_a_hand_over_shaped_person_batch() -> None:
    batch = erase_ops("r1", 3, ["p-a", "p-b"])
    assert batch["source_partition"] == -1 and batch["batch_id"] == "erase/r1/3"
    assert [(op["kind"], op["person_id"]) for op in batch["ops"]] == [("erase", "p-a"), ("erase", "p-b")]
    assert avro.decode_as(avro.PERSON_BATCH, avro.encode(avro.PERSON_BATCH, batch)) == batch


def test_dedup_forgets_the_recorded_decisions_that_name_an_erased_person() -> None:
    from streams.identity.dedup import Dedup

    d = Dedup(window_ms=10**9, max_ids=1000)
    d.admit(0, "b1", ["e1", "e2"], [T0, T0], T0)
    d.record(0, "b1", {"p": [["p-a", "M1"], ["p-b", None]], "m": []})
    d.admit(0, "b2", ["e3"], [T0], T0)
    d.record(0, "b2", {"p": [["p-b", None]], "m": [["p-c", "p-b", "anonymous_id:c", "M2", "e3", T0]]})
    assert d.scrub(0, {"p-a"}) == [("0|b1", {"t": T0, "ids": ["e1", "e2"], "fx": None})]
    assert d.scrub(0, {"p-a"}) == []  # done once
    assert d.scrub(0, {"p-c"}) == [("0|b2", {"t": T0, "ids": ["e3"], "fx": None})]  # named by a merge
    again = d.admit(0, "b1", ["e1", "e2"], [T0, T0], T0)  # redelivered: kept, decided anew
    assert again.keep == [True, True] and again.effects is None
    assert d.admit(0, "b9", ["e1"], [T0], T0).keep == [False]  # still a repeat
