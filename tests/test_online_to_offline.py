"""The built-in online_to_offline rule end to end on 2 workers, over the features it reads: the
person's city (context.city of their latest event carrying one) and city_store (an open store in
that city, from the store reference table loaded before the workers start).

Three members sign up on the web, each with a phone and marketing consent for phone calls (the
store guide's consent channel, streams/triggers/delivery.py), in this order of event time, all
on one route key so they arrive in order: consent (no city yet), then what gives them a city.

- A: signs up in Shanghai. Shanghai has S-SH-1 (opened 2020-01-01) and S-SH-2 (2025-06-01), A has
  no home store, so city_store is the latest opened, S-SH-2; A is new. One trigger, fired on
  store_guide, payload store_id S-SH-2 and city Shanghai.
- B: visits S-SH-1 (store_pos; enrichment fills context.city Shanghai from the store) before a
  web page in Shanghai: channels.store_pos is set from the first snapshot that has a city, so none.
- C: signs up in Lhasa, which has no store yet: city_store is null, so none. S-LS-1 opens there on
  11-05 (local day): the triggers stage judges the city store again at every clock advance, and
  C's daily recheck (UTC midnights) on 11-05 at 00:00 UTC, 08:00 in Lhasa's store calendar, finds
  it open. That is within quiet hours (until 09:00, Shanghai time, C's zone by default): deferred,
  the trigger goes out at 01:00 UTC, with store S-LS-1. The published snapshots are unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streams.reference import loader
from streams.reference.rows import write_file
from streams.tally import TopicReader
from streams.triggers.delivery import in_holdout
from tests.conftest import T0, encoded, touchpoint
from tests.panels import settled
from tests.test_pipeline_e2e import _wait_until_triggers_stream_time
from tests.test_triggers_e2e import MIN, D, H, advance

pytestmark = pytest.mark.e2e
RULE = "online_to_offline"
STORES = [
    {"store_id": "S-SH-1", "name": "Shanghai Jing'an", "city": "Shanghai", "latitude": 31.22, "longitude": 121.45,
     "opened_on": "2020-01-01", "closed_on": None},
    {"store_id": "S-SH-2", "name": "Shanghai Pudong", "city": "Shanghai", "latitude": 31.23, "longitude": 121.52,
     "opened_on": "2025-06-01", "closed_on": None},
    {"store_id": "S-HZ-1", "name": "Hangzhou West Lake", "city": "Hangzhou", "latitude": 30.25,
     "longitude": 120.16, "opened_on": "2021-03-01", "closed_on": None},
    {"store_id": "S-LS-1", "name": "Lhasa Barkhor", "city": "Lhasa", "latitude": 29.65, "longitude": 91.13,
     "opened_on": "2026-11-05", "closed_on": None},
]


def events_of(member_id: str, phone: str, t: int, then: list[tuple[str, str, dict[str, Any]]]) -> list[dict]:
    """Consent to marketing phone calls on the web (no city), then ``then`` (kind, channel, fields)
    a minute apart; all with the member id, a phone and one anonymous id (one route key: in order)."""
    ids = {"anonymous_id": f"cookie-{member_id}", "member_id": member_id, "phone": phone}
    out = [touchpoint(f"{member_id}-consent", "consent_given", t, "web", identifiers=ids,
                      properties={"consent_channel": "phone_call", "purpose": "marketing"})]
    for i, (kind, channel, fields) in enumerate(then, start=1):
        out.append(touchpoint(f"{member_id}-{i}", kind, t + i * MIN, channel, identifiers=ids, **fields))
    return out


def test_online_newcomers_in_a_city_with_a_store_are_handed_to_it(stack_factory, tmp_path: Path) -> None:
    stack = stack_factory(workers=0, max_event_age_s=400 * 86400.0)
    stores = write_file(tmp_path / "stores.jsonl", "stores", STORES)
    assert loader.load(stack.settings, stores, "stores").loaded == 4  # before the workers start
    for i in range(2):
        stack.supervisor.start_worker(i)
    assert not any(in_holdout(RULE, f"member_id:{m}", 0.1) for m in ("MA1", "MC1"))  # sent, not held out

    t = T0 + 10 * H  # 10:00 on 2026-11-01 in Shanghai: outside quiet hours
    online = events_of("MA1", "13800138001", t, [("signed_up", "web", {"context": {"city": "Shanghai"}})])
    seen_in_store = events_of("MB1", "13800138002", t, [
        ("store_visited", "store_pos", {"store_id": "S-SH-1"}),
        ("page_viewed", "web", {"context": {"city": "Shanghai"}}),
    ])
    no_store = events_of("MC1", "13800138003", t, [("signed_up", "web", {"context": {"city": "Lhasa"}})])
    events = online + seen_in_store + no_store
    stack.produce([encoded(e) for e in events])
    end = t + H
    stack.tick(end)
    reader = TopicReader(stack.settings)
    stack.wait_for(reader, lambda tally: len(tally.event_ids) == len(events) and tally.of_rule(RULE))
    _wait_until_triggers_stream_time(stack, end)
    reader.poll(timeout=1.0)
    tally = reader.tally

    assert not tally.dead_letters
    person = {m: tally.person_of_event[f"{m}-1"] for m in ("MA1", "MB1", "MC1")}
    fired = tally.of_rule(RULE)
    assert len(fired) == 1 and all(n == 1 for n in tally.trigger_records.values())
    trigger = fired[0]
    assert (trigger["person_id"], trigger["member_id"], trigger["correlation_key"], trigger["outcome"],
            trigger["channel"], trigger["handle"]) == (person["MA1"], "MA1", "S-SH-2", "fire", "store_guide", None)
    assert trigger["payload"] == {"store_id": "S-SH-2", "city": "Shanghai"}
    assert trigger["source_event_id"] == ""  # started by features, not by an event

    # The published features, as the sink stores them (migration 0012) for the profile lookup.
    query = ("SELECT person_id, city, city_store, toString(city_store_opened), home_store "
             "FROM member_snapshots FINAL WHERE NOT is_deleted ORDER BY person_id")
    want = sorted([[person["MA1"], "Shanghai", "S-SH-2", "2025-05-31 16:00:00.000", None],  # local midnight
                   [person["MB1"], "Shanghai", "S-SH-1", "2019-12-31 16:00:00.000", "S-SH-1"],  # home store
                   [person["MC1"], "Lhasa", None, None, None]])
    settled(stack.settings, query, lambda rows: rows == want, "member snapshots", timeout_s=60)

    # S-LS-1 opens on 11-05 (local day, 2026-11-04T16:00Z). Stream time passes each UTC midnight, as a
    # running clock would: C is rechecked at each, the store is first open at 11-05 00:00 UTC (08:00
    # local: quiet hours, deferred to 09:00 local), and the trigger goes out at 01:00 UTC.
    utc_midnight = T0 + 8 * H  # 2026-11-01T08:00+08:00 is 11-01 00:00 UTC
    for day in (1, 2, 3, 4):
        advance(stack, utc_midnight + day * D)
    reader.poll(timeout=1.0)
    assert len(reader.tally.of_rule(RULE)) == 1, "deferred by quiet hours, nothing published yet"
    advance(stack, utc_midnight + 4 * D + H)
    stack.wait_for(reader, lambda tally: len(tally.of_rule(RULE)) == 2)
    reader.close()
    [late] = [r for r in reader.tally.of_rule(RULE) if r["person_id"] == person["MC1"]]
    assert (late["correlation_key"], late["outcome"], late["channel"], late["payload"]) == (
        "S-LS-1", "fire", "store_guide", {"store_id": "S-LS-1", "city": "Lhasa"})
    assert (late["due_at_ms"], late["fired_at_ms"]) == (utc_midnight + 4 * D, utc_midnight + 4 * D + H)
    assert all(n == 1 for n in reader.tally.trigger_records.values())
