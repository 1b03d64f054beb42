"""``touchline erase`` end to end on 2 workers and the sink: nothing personal of the erased person
remains in worker state, in ClickHouse or in the profile lookup, a replay of their old raw events
cannot bring them back, and everybody else is untouched.

Two members browse anonymously, log in with their member id and phone, and leave a cart: A is
erased by their phone number (typed as a person would) while their cart waits and their session
is open; B is the control.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from streams.deadletter.inspect import read_to_end
from streams.deadletter.sealing import identifier_salt
from streams.identity.profile import lookup_for, stored_form
from streams.privacy.core import persons_of, suppression_key
from streams.processes import metrics_lines
from streams.tally import TopicReader
from streams.topics import IDENTITY_ASSIGNMENTS, MEMBER_FEATURES
from streams.triggers.delivery import in_holdout
from tests.conftest import T0, encoded, touchpoint
from tests.test_pipeline_e2e import _cart, _wait_until_triggers_stream_time

pytestmark = pytest.mark.e2e
MIN = 60_000
# Tables that keep no row per person: aggregate counts (their uniqExact states hold hashes of
# person ids, not the ids) and the audit log, which keeps the request (salted hashes, person ids).
NOT_PER_PERSON = {"kpi_events_hourly", "kpi_events_minute", "kpi_sessions_hourly", "kpi_dead_letters_hourly",
                  "privacy_erasures", "schema_migrations"}


def journey(tag: str, member: str, phone: str, t: int) -> list[dict[str, Any]]:
    anon = {"anonymous_id": f"cookie-{tag}"}
    return [
        touchpoint(f"{tag}1", "page_viewed", t, identifiers=anon),
        touchpoint(f"{tag}2", "product_viewed", t + MIN, identifiers=anon, properties={"product_id": "sku-1"}),
        touchpoint(f"{tag}3", "login", t + 2 * MIN, identifiers={**anon, "member_id": member, "phone": phone}),
        touchpoint(f"{tag}4", "product_added", t + 3 * MIN, identifiers=anon, properties=_cart(f"cart-{tag}")),
    ]


def _cli(stack: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **stack.settings.to_env()}, timeout=600)


def _latest_records(settings: Any, topics: Iterable[str]) -> dict[tuple[str, bytes], bytes | None]:
    """(topic, key) -> the latest value (None: a tombstone) over whole topics, read from the start."""
    return {(topic, m.key() or b""): m.value() for topic in topics for m in read_to_end(settings, topic)}


def _mentions(blob: str, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s in blob]


def test_an_erased_person_leaves_nothing_personal_and_stays_erased(stack_factory) -> None:
    stack = stack_factory(workers=2)
    members = {"A": "MERASE7", "B": "MKEEP7"}
    assert not any(in_holdout("cart_abandon", f"member_id:{m}", 0.1) for m in members.values())
    t = T0 + 10 * 60 * MIN
    a_events = journey("ea", members["A"], "139 0013 9001", t)
    b_events = journey("eb", members["B"], "13900139002", t)
    stack.produce([encoded(e) for e in a_events + b_events])
    stack.tick(t + 10 * MIN)  # carts wait (due after 30 minutes), sessions are open
    reader = TopicReader(stack.settings)
    stack.wait_for(reader, lambda tally: len(tally.event_ids) == 8)
    _wait_until_triggers_stream_time(stack, t + 10 * MIN)

    salt = identifier_salt(stack.settings)
    phone_a = stored_form("phone:+8613900139001", salt, "CN")
    ids_a = sorted(["anonymous_id:cookie-ea", f"member_id:{members['A']}", phone_a])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the sink has stored A's and B's assignments and features
        a, b = (lookup_for(stack.settings, f"member_id:{m}", open_directly=False) for m in members.values())
        if a and b and len(a["identifiers"]) == 3 and len(b["identifiers"]) == 3 and a["features"] and b["features"]:
            break
        time.sleep(0.5)
    assert a and sorted(a["identifiers"]) == ids_a, a
    assert b is not None
    persons_a = persons_of(ids_a)
    assert a["person_id"] in persons_a
    secrets = [members["A"], "cookie-ea", phone_a.split(":", 1)[1], *persons_a]
    before_b = {table: stack.query(f"SELECT count() FROM {table} WHERE person_id = '{b['person_id']}'")[0][0]
                for table in ("touchpoints_enriched", "member_snapshots", "identity_assignments")}
    assert all(before_b.values()), before_b

    # Erase A by their phone number as a person would type it.
    done = _cli(stack, "erase", "--identifier", "phone:139-0013-9001", "--reason", "test DSR-1")
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    audit = json.loads(done.stdout[done.stdout.index("{"):])
    assert audit["identifiers"] == 3 and audit["persons"] == len(persons_a)
    assert audit["rows_deleted"]["touchpoints_enriched"] == 4, audit

    # The lookup knows none of A's identifiers; B's profile is whole.
    for ident in ("phone:+8613900139001", f"member_id:{members['A']}", "anonymous_id:cookie-ea"):
        assert lookup_for(stack.settings, ident, open_directly=False) is None, ident
    b_after = lookup_for(stack.settings, f"member_id:{members['B']}", open_directly=False)
    assert b_after is not None and b_after["identifiers"] == b["identifiers"] and b_after["features"]

    # Clock past both carts' due times and both sessions' ends: B's cart fires, A's does not.
    stack.tick(t + 3 * MIN + int(stack.settings.cart_abandon_delay_s * 1000) + 60 * MIN)
    tally = stack.wait_for(reader, lambda tally: len(tally.triggers) >= 1)

    # A replay of A's old raw events and a new one: suppressed at ingest; B's new event is the barrier.
    replay = [*a_events, touchpoint("ea5", "page_viewed", t + 200 * MIN, identifiers={"member_id": members["A"]})]
    stack.produce([encoded(e) for e in replay])
    stack.produce([encoded(touchpoint("eb5", "page_viewed", t + 200 * MIN, identifiers={"member_id": members["B"]}))])
    tally = stack.wait_for(reader, lambda tally: "eb5" in tally.event_ids)
    reader.poll(timeout=1.0)
    reader.close()
    assert [tr["correlation_key"] for tr in tally.triggers.values()] == ["cart-eb"]
    assert not {"ea5"} & set(tally.event_ids)
    suppressed = sum(float(line.split()[-1]) for c in stack.supervisor.children if c.name.startswith("worker")
                     for line in metrics_lines(c.port)
                     if line.startswith("touchline_ingest_outcomes_total{") and 'outcome="suppressed"' in line)
    assert suppressed == 5

    # ClickHouse: no row of any per-person table mentions A; B's rows are all there.
    deadline = time.monotonic() + 60
    while not stack.query("SELECT count() FROM touchpoints_enriched WHERE event_id = 'eb5'")[0][0]:
        assert time.monotonic() < deadline, "B's new event never reached ClickHouse"
        time.sleep(0.3)
    tables = [r[0] for r in stack.query("SELECT name FROM system.tables WHERE database = currentDatabase() "
                                        "AND engine NOT IN ('MaterializedView', 'View')")]
    assert "member_snapshots" in tables and "identity_changes" in tables
    for table in sorted(set(tables) - NOT_PER_PERSON):
        cols = [r[0] for r in stack.query(  # what a query can read back (not aggregate states)
            f"SELECT name FROM system.columns WHERE database = currentDatabase() AND table = '{table}' "
            "AND type NOT LIKE '%AggregateFunction%'")]
        rows = stack.query(f"SELECT {', '.join(cols)} FROM {table}")
        assert not _mentions(json.dumps(rows), secrets), (table, _mentions(json.dumps(rows), secrets))
    for table, n in before_b.items():
        assert stack.query(f"SELECT count() FROM {table} WHERE person_id = '{b['person_id']}'")[0][0] >= n, table
    assert stack.query(f"SELECT count() FROM sessions WHERE person_id = '{b['person_id']}'")[0][0] >= 1
    logged = stack.query("SELECT identifier_hashes, persons, reason FROM privacy_erasures FINAL")
    assert logged == [[sorted(suppression_key(i, salt) for i in ids_a), persons_a, "test DSR-1"]]
    assert not _mentions(json.dumps(logged), secrets[:3])  # no identifier in the clear

    # Worker state (every table's changelog) and the compacted topics: A is gone, B is there.
    admin = AdminClient({"bootstrap.servers": stack.settings.kafka_bootstrap})
    prefix = stack.settings.topic_prefix
    changelogs = sorted(n for n in admin.list_topics(timeout=10).topics
                        if n.startswith(f"{prefix}-") and n.endswith("-changelog"))
    assert any("member-features" in n for n in changelogs) and any("identity-groups" in n for n in changelogs)
    compacted = [MEMBER_FEATURES.name(stack.settings), IDENTITY_ASSIGNMENTS.name(stack.settings)]
    latest = _latest_records(stack.settings, [*changelogs, *compacted])
    live = {k: v for k, v in latest.items() if v is not None}
    leaks = [(topic, key[:80]) for (topic, key), value in live.items()
             if _mentions(key.decode(errors="replace") + (value or b"").decode(errors="replace"), secrets)]
    assert not leaks, leaks
    features_topic = MEMBER_FEATURES.name(stack.settings)
    assert any(topic == features_topic and key == b["person_id"].encode() for topic, key in live)
    assert any(topic == features_topic and key.decode() in persons_a and value is None
               for (topic, key), value in latest.items())  # a tombstone for compaction on real Kafka
