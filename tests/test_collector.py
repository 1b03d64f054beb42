"""The HTTP collector: pure request logic, then over real HTTP against the embedded broker."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from streams import avro
from streams.clock import ManualClock
from streams.collector.app import CollectorThread
from streams.collector.core import (
    HttpError,
    Limits,
    Plan,
    WriteKeyError,
    WriteKeys,
    collector_dead_letter_id,
    event_bytes,
    plan_batch,
)
from streams.deadletter.sealing import Sealer
from streams.ingest.service import policy_from
from streams.ingest.validate import Policy, Rejected, clean
from streams.kafka.broker import free_port
from streams.settings import Settings
from streams.topics import DEAD_LETTERS, ENRICHED, RAW
from streams.touchpoint import jsonform
from streams.touchpoint.normalise import HASH_PREFIX
from tests.conftest import T0
from tests.test_schemas import current_touchpoints

MIN = 60_000
KEYS = "web:wk-web-3f9a,app:wk-app-77c1,app:wk-app-rotated"
POLICY = Policy(salt=b"collector-test-salt", max_record_bytes=4096)
SEALER = Sealer(bytes(range(32)))

# Distinctive personal data, in several spellings: none may reach any topic.
PHONES = ["139 8765 4321", "+86-139-8765-4321", "0086 13987654321", "(139) 8765-4321", "13987654321"]
EMAILS = ["Wang.Distinctive@Example.ORG", "  wang.distinctive@example.org "]
NEEDLES = [p.encode() for p in PHONES] + [b"+8613987654321", b"87654321", b"wang.distinctive"]


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def ev(event_id: str, kind: str = "page_viewed", t: int = T0, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"event_id": event_id, "type": kind, "event_time_ms": t, "channel": "web",
                           "identifiers": {"anonymous_id": f"c-{event_id}"}}
    out.update(fields)
    return out


def mixed_batch() -> list[Any]:
    """Good events and bad ones, with the reason each must get (None: accepted)."""
    cart = {"cart_id": "k-1", "product_id": "P1", "price": 299, "quantity": 1}
    return [
        (ev("good-page"), None),
        ({"messageId": "good-segment", "type": "track", "event": "Product Added", "timestamp": "2026-11-01T00:01:00+08:00",
          "channel": "web", "anonymousId": "c-seg", "userId": "M1", "properties": cart, "integrations": {}}, None),
        (ev("good-order", "order_completed", T0 + MIN, identifiers={"member_id": "M1", "phone": PHONES[0], "email": EMAILS[0]},
            properties={"order_id": "o-1", "revenue": 598}), None),
        (ev("bad-type", "product_added", properties={**cart, "quantity": "2"}), "invalid_field"),
        (ev("bad-ids-type", identifiers=["c-1"]), "invalid_field"),
        (ev("bad-unknown", colour="red"), "unknown_field"),
        (ev("bad-missing", "product_added", properties={"cart_id": "k-1"}), "missing_field"),
        ({"type": "page_viewed", "event_time_ms": T0, "channel": "web", "identifiers": {"anonymous_id": "c"}}, "missing_field"),
        (ev("bad-junk", identifiers={"anonymous_id": "undefined", "member_id": "0", "device_id": "00000000-0000"}), "no_identifier"),
        (ev("bad-future", t=T0 + 3 * 24 * 3600_000), "event_time_future"),
        (ev("bad-channel", channel="fax"), "unknown_channel"),
        (42, "invalid_json"),
        (ev("bad-pii", identifiers={"phone": 13987654321, "email": EMAILS[1]}), "invalid_field"),
        (ev("bad-oversize", "custom", properties={"event_name": "big", "attributes": {"blob": "x" * 5000}}), "oversize"),
    ]


# --------------------------------------------------------------------------- pure core

def test_write_keys_parse_and_authenticate() -> None:
    keys = WriteKeys.parse(KEYS)
    assert keys.sources == {"web", "app"}
    assert keys.source_for(basic("wk-web-3f9a")) == "web"
    assert keys.source_for("Bearer wk-app-77c1") == keys.source_for("bearer  wk-app-rotated ") == "app"
    for header in (None, "", "Bearer", "Bearer nope", basic("nope"), basic(""), "Basic !!!notbase64",
                   "Token wk-web-3f9a", "wk-web-3f9a", basic("wk-web-3f9") , basic("wk-web-3f9ax")):
        assert keys.source_for(header) is None, header
    assert WriteKeys.parse("").sources == frozenset()
    for bad in ("web", "web:", ":key", "we b:key", "web:k,app:k"):
        with pytest.raises(WriteKeyError):
            WriteKeys.parse(bad)


def test_plan_of_a_mixed_batch() -> None:
    batch = mixed_batch()
    body = json.dumps({"batch": [e for e, _ in batch]}).encode()
    plan = plan_batch(body, "web", T0 + 5 * MIN, POLICY, SEALER)
    assert isinstance(plan, Plan)
    response = plan.response()
    assert response["accepted"] + response["rejected"] == len(batch)
    assert [r["index"] for r in response["results"]] == list(range(len(batch)))
    for (event, reason), result in zip(batch, response["results"], strict=True):
        assert result.get("reason") == reason, (event if not isinstance(event, dict) else event.get("event_id"), result)
        assert result["status"] == ("accepted" if reason is None else "rejected")
        if isinstance(event, dict):
            assert result["event_id"] == event.get("event_id", event.get("messageId"))
    for a in plan.accepted:
        tp = avro.decode_as(avro.TOUCHPOINT, a.value)
        assert tp["source_app"] == "web" and tp["receive_time_ms"] == T0 + 5 * MIN
        assert a.key.decode() in (f"anonymous_id:{tp['identifiers']['anonymous_id']}", f"member_id:{tp['identifiers']['member_id']}")
    order = avro.decode_as(avro.TOUCHPOINT, plan.accepted[2].value)
    assert order["identifiers"]["phone"].startswith(HASH_PREFIX) and order["identifiers"]["email"].startswith(HASH_PREFIX)
    for d in plan.rejected:
        original = batch[d.index][0]
        payload = SEALER.open(d.record["nonce"], d.record["payload_encrypted"], d.record["dead_letter_id"].encode())
        assert json.loads(payload) == original and d.record["payload_size"] == len(payload)
        assert d.record["reason"] == d.reason and d.record["detail"] == d.message
        assert (d.record["source_topic"], d.record["source_partition"], d.record["source_offset"]) == ("collector/web", 0, d.index)
        assert d.record["dead_letter_id"] == collector_dead_letter_id("web", d.event_id, event_bytes(original))
    messages = json.dumps(response).encode() + b"".join(json.dumps(d.record["detail"]).encode() for d in plan.rejected)
    for needle in NEEDLES:
        assert needle not in messages  # a type error names the field, not the number
    assert "identifiers.phone: <redacted> is not a string" in plan.rejected[-2].message


def test_retried_events_keep_their_dead_letter_id_and_different_events_differ() -> None:
    one = json.dumps({"batch": [ev("x", channel="fax")]}).encode()
    a, b = plan_batch(one, "web", T0, POLICY, SEALER), plan_batch(one, "web", T0 + 1, POLICY, SEALER)
    assert isinstance(a, Plan) and isinstance(b, Plan)
    assert a.rejected[0].record["dead_letter_id"] == b.rejected[0].record["dead_letter_id"]
    other = plan_batch(json.dumps({"batch": [ev("x", channel="tv")]}).encode(), "web", T0, POLICY, SEALER)
    assert isinstance(other, Plan) and other.rejected[0].record["dead_letter_id"] != a.rejected[0].record["dead_letter_id"]
    app = plan_batch(one, "app", T0, POLICY, SEALER)
    assert isinstance(app, Plan) and app.rejected[0].record["dead_letter_id"].startswith("collector/app/x/")


def test_batch_defaults_and_receive_time() -> None:
    body = json.dumps({
        "batch": [ev("a", receive_time_ms=T0 + 10**9, context={"city": "Hangzhou"}), ev("b", source_app="pos-17"),
                  {**ev("c"), "receivedAt": "2030-01-01T00:00:00Z", "writeKey": "wk-web-3f9a"}],
        "sentAt": "2026-11-01T00:00:00Z", "context": {"campaign": "double11", "city": "Shanghai"}, "store_id": "S-1",
        "writeKey": "wk-web-3f9a", "integrations": {"All": True},
    }).encode()
    plan = plan_batch(body, "web", T0 + MIN, POLICY, SEALER)
    assert isinstance(plan, Plan) and plan.rejected == []
    a, b, c = (avro.decode_as(avro.TOUCHPOINT, x.value) for x in plan.accepted)
    assert (a["context"]["campaign"], a["context"]["city"], b["context"]["city"]) == ("double11", "Hangzhou", "Shanghai")
    assert (a["source_app"], b["source_app"], a["store_id"]) == ("web", "pos-17", "S-1")
    assert {a["receive_time_ms"], b["receive_time_ms"], c["receive_time_ms"]} == {T0 + MIN}  # the collector's clock


@pytest.mark.parametrize(("body", "status", "error"), [
    (b"x" * 101, 413, "body_too_large"),
    (b"not json", 400, "invalid_json"),
    (b"\xff\xfe{", 400, "invalid_json"),
    (b'{"batch": [NaN]}', 400, "invalid_json"),
    (b"[1]", 400, "invalid_batch"),
    (b"{}", 400, "invalid_batch"),
    (b'{"batch": {"a": 1}}', 400, "invalid_batch"),
    (b'{"batch": [], "events": []}', 400, "invalid_batch"),
    (b'{"batch": [], "context": "x"}', 400, "invalid_batch"),
    (b'{"batch": [1, 2, 3, 4]}', 400, "batch_too_large"),
    (b"[" * 50 + b"]" * 50, 400, "invalid_batch"),
])
def test_request_errors(body: bytes, status: int, error: str) -> None:
    got = plan_batch(body, "web", T0, POLICY, SEALER, Limits(max_body_bytes=100, max_batch=3))
    assert isinstance(got, HttpError) and (got.status, got.error) == (status, error), got


def test_empty_batch_is_fine() -> None:
    plan = plan_batch(b'{"batch": []}', "web", T0, POLICY, SEALER)
    assert isinstance(plan, Plan) and plan.response() == {"accepted": 0, "rejected": 0, "results": []}


# --------------------------------------------------------------------------- over HTTP

def post(url: str, body: bytes, auth: str | None = None, path: str = "/v1/batch") -> tuple[int, dict[str, Any], Any]:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    request = urllib.request.Request(url + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(get(url + "/metrics")[1]):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def read_topics(settings: Settings, topics: list[str]) -> dict[str, list[Any]]:
    """Every record now on the given topics (read up to each partition's end offset)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"collector-test-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(timeout=10)
        ends, assigned = {}, []
        for topic in topics:
            for p in metadata.topics[topic].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                if high > low:
                    ends[(topic, p)] = high
                    assigned.append(TopicPartition(topic, p, low))
        out: dict[str, list[Any]] = {t: [] for t in topics}
        if not assigned:
            return out
        consumer.assign(assigned)
        deadline = time.monotonic() + 30
        while ends and time.monotonic() < deadline:
            for m in consumer.consume(1000, timeout=0.5):
                if m.error() is not None:
                    continue
                out[m.topic()].append(m)
                if m.offset() + 1 >= ends.get((m.topic(), m.partition()), 0):
                    ends.pop((m.topic(), m.partition()), None)
        assert not ends, f"could not read to the end of {sorted(ends)}"
        return out
    finally:
        consumer.close()


@pytest.fixture
def topics_only(stack_factory: Any) -> Settings:
    """A fresh topic prefix on the session broker (no workers)."""
    return stack_factory(workers=0, sink=False).settings


@pytest.fixture
def collector(topics_only: Settings) -> Iterator[CollectorThread]:
    settings = topics_only.with_overrides(collector_write_keys=KEYS, max_record_bytes=4096,
                                          collector_max_body_bytes=64 * 1024, collector_max_batch=50)
    with CollectorThread(settings, ManualClock(T0 + 5 * MIN)) as running:
        yield running


@pytest.mark.e2e
def test_mixed_batch_over_http_lands_on_raw_and_dead_letter_topics(collector: CollectorThread) -> None:
    settings = collector.settings
    batch = mixed_batch()
    before = scrape(collector.url)
    status, body, _ = post(collector.url, json.dumps({"batch": [e for e, _ in batch]}).encode(), basic("wk-web-3f9a"))
    assert status == 200, body
    assert [r.get("reason") for r in body["results"]] == [reason for _, reason in batch]
    good = [e.get("event_id", e.get("messageId")) for e, reason in batch if reason is None]
    assert body["accepted"] == len(good) and body["accepted"] + body["rejected"] == len(batch)

    # Acknowledged means on Kafka: read right away, no waiting.
    got = read_topics(settings, [RAW.name(settings), DEAD_LETTERS.name(settings)])
    raw = [(m.key(), avro.decode_as(avro.TOUCHPOINT, m.value())) for m in got[RAW.name(settings)]]
    assert sorted(tp["event_id"] for _, tp in raw) == sorted(good)
    for key, tp in raw:
        assert tp["receive_time_ms"] == T0 + 5 * MIN and tp["source_app"] == "web"
        assert clean(tp, policy_from(settings)) == tp  # ingestion's own cleaning changes nothing
        assert key.decode().split(":", 1)[0] in ("anonymous_id", "member_id")
    dead = [avro.decode_as(avro.DEAD_LETTER, m.value()) for m in got[DEAD_LETTERS.name(settings)]]
    assert len(dead) == body["rejected"]
    sealer = Sealer.from_settings(settings)
    rejected = {r["index"]: r for r in body["results"] if r["status"] == "rejected"}
    for record in dead:
        index = record["source_offset"]
        assert record["source_topic"] == "collector/web" and record["reason"] == rejected[index]["reason"]
        assert record["detail"] == rejected[index]["message"]
        opened = sealer.open(record["nonce"], record["payload_encrypted"], record["dead_letter_id"].encode())
        assert json.loads(opened) == batch[index][0]
    assert sorted(r["source_offset"] for r in dead) == sorted(rejected)

    after = scrape(collector.url)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("touchline_collector_requests_total", source="web", status="200") == 1
    assert delta("touchline_collector_events_total", source="web", channel="web", type="page_viewed",
                 outcome="accepted", reason="") == 1
    assert delta("touchline_collector_events_total", source="web", channel="unknown", type="page_viewed",
                 outcome="dead_letter", reason="unknown_channel") == 1
    assert delta("touchline_dead_letters_total", reason="event_time_future") == 1
    events = sum(v for (name, labels), v in after.items() if name == "touchline_collector_events_total"
                 and dict(labels)["source"] == "web") - sum(
        v for (name, labels), v in before.items() if name == "touchline_collector_events_total" and dict(labels)["source"] == "web")
    assert events == len(batch)


@pytest.mark.e2e
def test_auth_limits_and_bad_bodies_over_http(collector: CollectorThread) -> None:
    one = json.dumps({"batch": [ev("auth-1")]}).encode()
    for auth in (None, basic("wrong"), "Bearer wrong", "Basic ???", basic("wk-app-77c1x")):
        status, body, headers = post(collector.url, one, auth)
        assert (status, body["error"]) == (401, "unauthorized"), auth
        assert headers["WWW-Authenticate"].startswith("Basic")
    status, body, _ = post(collector.url, one, "Bearer wk-app-rotated")
    assert (status, body["accepted"]) == (200, 1)
    status, body, _ = post(collector.url, json.dumps({"batch": [ev("big", context={"page_url": "x" * 70000})]}).encode(),
                           basic("wk-web-3f9a"))
    assert (status, body["error"]) == (413, "body_too_large")
    status, body, _ = post(collector.url, b"<html>not json</html>", basic("wk-web-3f9a"))
    assert (status, body["error"]) == (400, "invalid_json")
    status, body, _ = post(collector.url, json.dumps({"batch": [ev(f"n{i}") for i in range(51)]}).encode(),
                           basic("wk-web-3f9a"))
    assert (status, body["error"]) == (400, "batch_too_large")
    # A chunked body has no Content-Length: the limit holds while reading.
    conn = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=30)
    try:
        conn.request("POST", "/v1/batch", body=iter([b'{"batch": [', b" " * 70000, b"]}"]),
                     headers={"Authorization": basic("wk-web-3f9a")}, encode_chunked=True)
        resp = conn.getresponse()
        assert (resp.status, json.loads(resp.read())["error"]) == (413, "body_too_large")
    finally:
        conn.close()
    assert get(collector.url + "/healthz") == (200, '{"status": "ok"}')
    assert get(collector.url + "/v1/batch")[0] == 405
    # Nothing but the one authorised event reached Kafka.
    settings = collector.settings
    got = read_topics(settings, [RAW.name(settings), DEAD_LETTERS.name(settings)])
    assert [avro.decode_as(avro.TOUCHPOINT, m.value())["source_app"] for m in got[RAW.name(settings)]] == ["app"]
    assert got[DEAD_LETTERS.name(settings)] == []
    metrics = scrape(collector.url)
    assert metrics[("touchline_collector_requests_total", (("source", "unknown"), ("status", "401")))] >= 5


def _all_topic_bytes(settings: Settings) -> list[bytes]:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    topics = sorted(t for t in admin.list_topics(timeout=10).topics if t.startswith(settings.topic_prefix))
    assert RAW.name(settings) in topics and DEAD_LETTERS.name(settings) in topics
    out = []
    for records in read_topics(settings, topics).values():
        for m in records:
            out.append((m.key() or b"") + (m.value() or b"") + b"".join(v or b"" for _, v in m.headers() or []))
    return out


@pytest.mark.e2e
def test_no_raw_phone_or_email_reaches_any_topic(stack_factory: Any) -> None:
    stack = stack_factory(workers=1, sink=False)
    settings = stack.settings.with_overrides(collector_write_keys=KEYS)
    events = []
    for i, phone in enumerate(PHONES):
        email = EMAILS[i % len(EMAILS)]
        events.append(ev(f"pii-ok-{i}", "login", T0 + i, identifiers={"anonymous_id": f"c-pii-{i}", "phone": phone,
                                                                       "email": email, "member_id": "M-pii"}))
        events.append(ev(f"pii-bad-{i}", "login", T0 + i, channel="fax", identifiers={"phone": phone, "email": email}))
    events.append(ev("pii-typed", identifiers={"phone": 13987654321, "email": EMAILS[0]}))
    events.append(ev("pii-future", t=T0 + 10 * 24 * 3600_000, identifiers={"phone": PHONES[1]}))
    with CollectorThread(settings, ManualClock(T0 + MIN)) as running:
        status, body, _ = post(running.url, json.dumps({"batch": events}).encode(), "Bearer wk-web-3f9a")
    assert status == 200 and body["accepted"] == len(PHONES) and body["rejected"] == len(PHONES) + 2
    for needle in NEEDLES:
        assert needle not in json.dumps(body).encode()
    # Wait until ingestion and the identity stage have published every accepted event.
    accepted = {r["event_id"] for r in body["results"] if r["status"] == "accepted"}
    deadline = time.monotonic() + 90
    seen: set[str] = set()
    while seen != accepted and time.monotonic() < deadline:
        got = read_topics(settings, [ENRICHED.name(settings)])[ENRICHED.name(settings)]
        seen = {avro.decode_as(avro.ENRICHED, m.value())["touchpoint"]["event_id"] for m in got}
        assert not stack.supervisor.check_alive(), "the worker died"
    assert seen == accepted
    records = _all_topic_bytes(settings)
    assert len(records) >= 2 * len(events)
    for data in records:
        lowered = data.lower()
        for needle in NEEDLES:
            assert needle.lower() not in lowered, needle


@pytest.mark.e2e
def test_every_example_goes_through_the_collector_and_comes_out_enriched(stack_factory: Any) -> None:
    stack = stack_factory(workers=1, sink=False)
    settings = stack.settings.with_overrides(collector_write_keys=KEYS)
    policy = policy_from(settings)
    examples = sorted((avro.decode_as(avro.TOUCHPOINT, avro.encode(avro.TOUCHPOINT, tp)) for tp in current_touchpoints()),
                      key=lambda tp: tp["receive_time_ms"])
    clock = ManualClock()
    with CollectorThread(settings, clock) as running:
        for tp in examples:
            clock.advance_to(tp["receive_time_ms"])  # the collector stamps receive time with its clock
            status, body, _ = post(running.url, json.dumps({"batch": [jsonform.to_json(tp)]}).encode(), basic("wk-app-77c1"))
            assert (status, body["accepted"]) == (200, 1), (tp["type"], body)
    expected = {}
    for tp in examples:
        cleaned = clean(tp, policy)
        assert not isinstance(cleaned, Rejected)
        expected[tp["event_id"]] = {**cleaned, "source_app": tp["source_app"] or "app"}
    deadline = time.monotonic() + 90
    enriched: dict[str, dict[str, Any]] = {}
    while set(enriched) != set(expected) and time.monotonic() < deadline:
        for m in read_topics(settings, [ENRICHED.name(settings)])[ENRICHED.name(settings)]:
            record = avro.decode_as(avro.ENRICHED, m.value())
            enriched[record["touchpoint"]["event_id"]] = record["touchpoint"]
        assert not stack.supervisor.check_alive(), "the worker died"
    assert set(enriched) == set(expected)
    for event_id, tp in expected.items():
        assert enriched[event_id] == tp, event_id
    assert {tp["type"] for tp in enriched.values()} == {tp["type"] for tp in examples}


def test_kafka_unavailable_gives_503_and_retry(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens here
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{closed}", topic_prefix="t-down", data_dir=str(tmp_path),
                        collector_write_keys=KEYS, collector_delivery_timeout_s=0.5)
    with CollectorThread(settings, ManualClock(T0 + MIN)) as running:
        started = time.monotonic()
        status, body, headers = post(running.url, json.dumps({"batch": [ev("down-1"), ev("down-2", channel="fax")]}).encode(),
                                     basic("wk-web-3f9a"))
        assert (status, body["error"], body["retry"]) == (503, "kafka_unavailable", True), body
        assert headers["Retry-After"] == "1"
        assert time.monotonic() - started < 10
        assert scrape(running.url)[("touchline_collector_requests_total", (("source", "web"), ("status", "503")))] >= 1
        assert get(running.url + "/healthz")[0] == 200


@pytest.mark.e2e
def test_touchline_collect_serves_and_stops_on_sigterm(topics_only: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, **topics_only.with_overrides(collector_write_keys=KEYS, collector_port=port).to_env(),
           "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "collect.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "collect"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if get(url + "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        status, body, _ = post(url, json.dumps({"batch": [ev("cli-1")]}).encode(), basic("wk-web-3f9a"))
        assert (status, body["accepted"]) == (200, 1), body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "collector listening on 0.0.0.0:" in log.read_text()
    got = read_topics(topics_only, [RAW.name(topics_only)])[RAW.name(topics_only)]
    assert [avro.decode_as(avro.TOUCHPOINT, m.value())["event_id"] for m in got] == ["cli-1"]


@pytest.mark.e2e
def test_collect_refuses_to_start_without_write_keys(topics_only: Settings) -> None:
    env = {**os.environ, **topics_only.with_overrides(collector_port=free_port()).to_env()}
    done = subprocess.run([sys.executable, "-m", "streams.cli", "collect"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and "TOUCHLINE_COLLECTOR_WRITE_KEYS is empty" in done.stderr
