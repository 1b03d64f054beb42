"""The identity graph on the running pipeline against a population whose truth is known
(streams/simulate/identities.py): two workers, four partitions, events shuffled."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streams import avro
from streams.collector.app import CollectorThread
from streams.identity.graph import cluster
from streams.identity.profile import lookup_for
from streams.settings import Settings
from streams.simulate.identities import Population, population
from streams.sink.query import QueryError, rows
from streams.topics import ENRICHED, IDENTITY_ASSIGNMENTS, TopicSpec
from tests.conftest import encoded

pytestmark = pytest.mark.e2e


class Reader:
    """Every record of some topics from the beginning, decoded, in offset order per partition."""

    def __init__(self, settings: Settings, *specs: TopicSpec) -> None:
        self.consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "oracle",
                                  "enable.auto.commit": False})
        self.consumer.assign([TopicPartition(s.name(settings), p, OFFSET_BEGINNING)
                              for s in specs for p in range(s.partitions(settings))])
        self.records: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def poll(self) -> int:
        got = 0
        for m in self.consumer.consume(5000, timeout=0.3):
            if m.error() is None and m.value() is not None:
                name, rec = avro.decode(m.value())
                self.records[name].append(rec)
                got += 1
        return got

    def close(self) -> None:
        self.consumer.close()


def settle(reader: Reader, pop: Population, deadline: float) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, str]]:
    """Once every event is enriched and the assignments equal the reference clustering of the
    events as the pipeline saw them (phones hashed by ingestion): (those events, the reference,
    identifier -> person as assigned)."""
    def enriched() -> int:
        return len({r["touchpoint"]["event_id"] for r in reader.records[avro.ENRICHED]})

    while enriched() < len(pop.events):
        assert time.monotonic() < deadline, f"{enriched()} of {len(pop.events)} enriched"
        reader.poll()
    seen = list({r["touchpoint"]["event_id"]: r["touchpoint"] for r in reader.records[avro.ENRICHED]}.values())
    reference, _ = cluster(seen)

    def assigned() -> dict[str, str]:
        latest: dict[str, str] = {}
        for a in reader.records[avro.IDENTITY_ASSIGNMENT]:  # offset order per identifier (keyed)
            latest[a["identifier"]] = a["person_id"]
        return latest

    while assigned() != reference:  # until the graph has settled
        assert time.monotonic() < deadline, f"{len(set(assigned().items()) ^ set(reference.items()))} differ"
        reader.poll()
    reader.close()
    return seen, reference, assigned()


def pairs(clusters: dict[str, str], ids: list[str]) -> set[tuple[str, str]]:
    by: dict[str, list[str]] = defaultdict(list)
    for i in ids:
        by[clusters[i]].append(i)
    return {(a, b) for group in by.values() for a in group for b in group if a < b}


@pytest.mark.parametrize("fault", ["none", "sigkill"])
def test_the_sharded_graph_finds_the_true_people_and_the_reference_clustering(stack_factory, fault: str) -> None:
    """``sigkill``: a worker is killed once the graph is busy, and started again."""
    pop = population(seed=7 if fault == "none" else 8, people=40, kiosk_users=4)
    stack = stack_factory(workers=2, partitions=4)
    half = len(pop.events) // 2
    stack.produce([encoded(e) for e in pop.events[:half]])
    reader = Reader(stack.settings, ENRICHED, IDENTITY_ASSIGNMENTS)
    deadline = time.monotonic() + 200
    if fault == "sigkill":
        while not reader.records[avro.IDENTITY_ASSIGNMENT]:
            assert time.monotonic() < deadline, "no assignment yet"
            reader.poll()
        [victim] = [c for c in stack.supervisor.children if c.name == "worker-1"]
        stack.supervisor.kill(victim)
        stack.supervisor.start_worker(1)
    stack.produce([encoded(e) for e in pop.events[half:]])
    seen, reference, got = settle(reader, pop, deadline)

    # Truth, in the identifiers' ingested form: pair each raw identifier with the event that carried it.
    raw = {e["event_id"]: e["identifiers"] for e in pop.events}
    truth: dict[str, str] = {}
    for tp in seen:
        for kind, value in tp["identifiers"].items():
            if value is not None:
                truth[f"{kind}:{value}"] = pop.owner[(kind, raw[tp["event_id"]][kind])]
    people = [i for i in truth if truth[i] != "kiosk"]
    true_pairs, found = pairs(truth, people), pairs(got, people)
    precision = len(true_pairs & found) / len(found)
    recall = len(true_pairs & found) / len(true_pairs)
    assert precision >= 0.999 and recall >= 0.99, (precision, recall)

    # No person holds two member ids; the kiosk is nobody's; the typed phone stays with its owner.
    members: dict[str, set[str]] = defaultdict(set)
    for ident, person in got.items():
        if ident.startswith("member_id:"):
            members[person].add(ident)
    assert all(len(m) == 1 for m in members.values())
    [kiosk] = [i for i in truth if truth[i] == "kiosk"]
    assert list(got.values()).count(got[kiosk]) == 1
    assert pop.typo is not None
    [phone] = [i for i in truth if i.startswith("phone:") and truth[i] == truth[f"member_id:{pop.typo[1]}"]]
    assert got[phone] == got[f"member_id:{pop.typo[1]}"] != got[f"member_id:{pop.typo[2]}"]


def test_a_profile_is_found_by_a_raw_phone_and_shows_only_hashed_personal_identifiers(stack_factory) -> None:
    """`touchline profile` and GET /v1/profiles over the sink's identity_assignments: the person of a
    member's phone, all their identifiers, the phone only in hashed form."""
    pop = population(seed=9, people=12, kiosk_users=3)
    stack = stack_factory(workers=1, partitions=4)
    stack.produce([encoded(e) for e in pop.events])
    assert pop.typo is not None
    phone, owner, _ = pop.typo
    deadline = time.monotonic() + 150
    _, _, got = settle(Reader(stack.settings, ENRICHED, IDENTITY_ASSIGNMENTS), pop, deadline)

    def stored() -> Any:
        try:  # through the sink only: this process must not open the embedded database
            return dict(rows(stack.settings, "SELECT identifier, person_id FROM identity_assignments FINAL "
                                             "WHERE is_deleted = 0", open_directly=False))
        except QueryError:  # the sink is still starting
            return None

    while stored() != got:
        assert time.monotonic() < deadline, "the sink never stored the settled assignments"
        time.sleep(0.3)
    wanted = sorted(stack.query(
        "SELECT identifier FROM identity_assignments FINAL WHERE person_id = "
        f"(SELECT person_id FROM identity_assignments FINAL WHERE identifier = 'member_id:{owner}')"))

    found = lookup_for(stack.settings, f"phone:{phone}", open_directly=False)
    assert found is not None and found["member_id"] == owner
    assert sorted([i] for i in found["identifiers"]) == wanted and f"member_id:{owner}" in found["identifiers"]
    assert phone not in json.dumps(found) and phone[1:] not in json.dumps(found)
    assert any(i.startswith("phone:h1:") for i in found["identifiers"])
    cli = subprocess.run([sys.executable, "-m", "streams.cli", "profile", f"phone:{phone}"], capture_output=True,
                         text=True, env={**os.environ, **stack.settings.to_env()}, timeout=120)
    assert cli.returncode == 0 and json.loads(cli.stdout) == found, cli.stderr[-2000:]

    settings = dataclasses.replace(stack.settings, collector_write_keys="web:wk-1", collector_profile_keys="crm:pk-1")
    with CollectorThread(settings) as collector:
        def get(identifier: str, key: str | None) -> tuple[int, Any]:
            url = f"{collector.url}/v1/profiles?{urllib.parse.urlencode({'identifier': identifier})}"
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        assert get(f"phone:{phone}", "pk-1") == (200, found)
        assert get(f"phone:{phone}", None)[0] == 401
        assert get(f"phone:{phone}", "wk-1")[0] == 401  # a write key does not read profiles
        assert get("member_id:nobody", "pk-1")[0] == 404
        assert get("favourite:blue", "pk-1")[0] == 400
