"""Pure cores of ingestion: identifier normalisation and hashing, duplicate filter."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.identity.dedup import Dedup
from streams.touchpoint.normalise import (
    HASH_PREFIX,
    email_normal,
    hashed,
    normalise_identifiers,
    phone_e164,
)
from streams.touchpoint.taxonomy import JUNK_VALUES

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SALT = b"salt"


@pytest.mark.parametrize(("raw", "want"), [
    ("13800138000", "+8613800138000"),
    ("138 0013 8000", "+8613800138000"),
    ("138-0013-8000", "+8613800138000"),
    ("+86 138 0013 8000", "+8613800138000"),
    ("0086 13800138000", "+8613800138000"),
    ("(021) 6234 5678", "+862162345678"),  # Shanghai landline: trunk 0 dropped
    ("+1 (415) 555-0100", "+14155550100"),
    ("12", None), ("abc", None), ("+0123456789", None), ("1" * 20, None),
])
def test_phone_numbers_become_e164(raw: str, want: str | None) -> None:
    assert phone_e164(raw) == want


def test_emails_are_trimmed_and_lower_cased() -> None:
    assert email_normal("  Li.Lei@Example.COM ") == "li.lei@example.com"
    assert email_normal("not-an-email") is None
    assert email_normal("a@b") is None


def test_the_same_person_hashes_the_same_however_it_was_typed() -> None:
    a, _ = normalise_identifiers({"phone": "138 0013 8000", "email": "LI@x.cn"}, SALT)
    b, _ = normalise_identifiers({"phone": "+8613800138000", "email": " li@x.cn"}, SALT)
    assert a == b and a["phone"].startswith(HASH_PREFIX) and a["phone"] != b["email"]
    assert "13800138000" not in a["phone"] and "li@x.cn" not in a["email"]
    other_salt, _ = normalise_identifiers({"phone": "13800138000"}, b"other")
    assert other_salt["phone"] != a["phone"]  # the salt matters: no rainbow tables
    again, _ = normalise_identifiers(a, SALT)
    assert again == a  # hashing is idempotent (replays, enriched events fed back)


@FAST
@given(st.sampled_from(sorted(JUNK_VALUES)), st.sampled_from(["anonymous_id", "device_id", "member_id", "phone"]))
def test_junk_and_unusable_identifiers_are_dropped(junk: str, kind: str) -> None:
    out, dropped = normalise_identifiers({kind: junk.upper(), "pos_card": "C1", "email": "nope"}, SALT)
    assert out[kind] is None and out["email"] is None and out["pos_card"] == "C1"
    assert set(dropped) == {kind, "email"}


def test_hash_is_keyed_by_identifier_type() -> None:
    assert hashed("phone", "x", SALT) != hashed("email", "x", SALT)


# --------------------------------------------------------------------------- duplicate filter

def test_repeats_in_later_batches_and_within_a_batch_are_dropped() -> None:
    d = Dedup(window_ms=1000, max_ids=100)
    first = d.admit(0, "b1", ["e1", "e2", "e1"], [10, 20, 10], watermark_ms=0)
    assert first.keep == [True, True, False] and first.effects is None
    assert d.record(0, "b1", "fx1") == ("0|b1", {"t": 20, "ids": ["e1", "e2"], "fx": "fx1"})
    second = d.admit(0, "b2", ["e2", "e3"], [20, 30], watermark_ms=0)
    assert second.keep == [False, True]
    assert d.record(0, "b2", "fx2") == ("0|b2", {"t": 30, "ids": ["e3"], "fx": "fx2"})
    # Other partitions are independent: routing puts one event id's repeats in one partition.
    assert d.admit(1, "b9", ["e1"], [10], watermark_ms=0).keep == [True]


def test_a_redelivered_batch_is_sent_on_again_with_the_effects_recorded_the_first_time() -> None:
    d = Dedup(window_ms=1000, max_ids=100)
    d.admit(0, "b1", ["e1", "e2"], [10, 20], watermark_ms=0)
    d.record(0, "b1", {"p": ["first decision"]})
    again = d.admit(0, "b1", ["e1", "e2"], [10, 20], watermark_ms=0)
    assert again.keep == [True, True] and again.effects == {"p": ["first decision"]}
    assert d.record(0, "b1", {"p": ["second decision"]}) is None  # the first one stands


def test_a_batch_that_introduced_nothing_records_nothing() -> None:
    d = Dedup(window_ms=1000, max_ids=100)
    d.admit(0, "b1", ["e1"], [10], watermark_ms=0)
    d.record(0, "b1", "fx")
    assert d.admit(0, "b2", ["e1"], [10], watermark_ms=0).keep == [False]
    assert d.record(0, "b2", "fx") is None


def test_state_reloaded_from_table_entries_drops_the_same_repeats() -> None:
    d = Dedup(window_ms=1000, max_ids=100)
    table: dict[str, dict] = {}
    for batch, ids in (("b1", ["e1", "e2"]), ("b2", ["e3"])):
        d.admit(2, batch, ids, [5] * len(ids), watermark_ms=0)
        entry = d.record(2, batch, f"fx-{batch}")
        assert entry is not None
        table[entry[0]] = entry[1]
    restarted = Dedup(window_ms=1000, max_ids=100)
    restarted.load(2, table.items())
    assert restarted.admit(2, "b3", ["e1", "e3", "e4"], [5, 5, 5], watermark_ms=0).keep == [False, False, True]
    redelivered = restarted.admit(2, "b1", ["e1", "e2"], [5, 5], watermark_ms=0)
    assert redelivered.keep == [True, True] and redelivered.effects == "fx-b1"


def test_entries_expire_with_stream_time_and_the_size_is_bounded() -> None:
    d = Dedup(window_ms=100, max_ids=4)
    d.admit(0, "old", ["e1"], [0], watermark_ms=0)
    later = d.admit(0, "new", ["e2"], [500], watermark_ms=500)
    assert later.expired == ["0|old"]
    assert d.admit(0, "again", ["e1"], [501], watermark_ms=500).keep == [True]  # outside the window: new
    big = d.admit(0, "big", ["a", "b", "c", "d"], [600] * 4, watermark_ms=500)
    assert d.size(0) <= 4 and "0|new" in big.expired


@FAST
@given(st.lists(st.integers(0, 30), max_size=120), st.integers(1, 10))
def test_every_distinct_id_is_kept_exactly_once_however_batched(ids: list[int], cut: int) -> None:
    d = Dedup(window_ms=10**9, max_ids=10**6)
    kept = []
    events = [f"e{i}" for i in ids]
    for n, start in enumerate(range(0, len(events), cut)):
        chunk = events[start:start + cut]
        a = d.admit(0, f"b{n}", chunk, [1] * len(chunk), watermark_ms=0)
        kept += [e for e, k in zip(chunk, a.keep, strict=True) if k]
    assert sorted(kept) == sorted(set(events))
