"""``touchline bench``: events per CPU-second beside the raw ceiling, in one run.

Same machine, same generated data, same embedded broker for every figure:

- ceiling: confluent-kafka ``consume(1000)`` + Avro decode of the raw topic,
  no processing, in this process (CPU from getrusage);
- pipeline with 1 and with 2 workers (plus the sink): raw events processed
  end to end (enriched, inserted into ClickHouse, and through features,
  sessions and triggers: the run ends when every event's row is stored and
  the processes have gone idle) divided by the CPU seconds (user + sys) of
  the worker and sink processes only, read from /proc before and after; the
  broker and the load generator are not counted.
- each stage within the 2-worker run: the same events divided by the CPU
  seconds the stage's own code took (touchline_stage_cpu_seconds_total: the
  thread's CPU time while an agent, or the ingest thread, runs its batch),
  the sink's process CPU, and what no stage accounts for in the workers
  (Faust's consumer, producer, changelogs and scheduling, librdkafka's
  threads): "faust and the rest". The stages run together, so this is where
  the whole pipeline's CPU goes, not each stage on a machine of its own.
- identity resolution alone: the sharded identity graph's protocol (pure
  core) over the same events in this process, partitions as in-memory queues
  of JSON messages: events per CPU-second of resolving identity, without
  Kafka or Faust around it.
- feature updates alone: the features stage's pure parts (streams/features/member.py
  over profile.py) over the same events in this process, batched as ingest batches
  them: apply, snapshot per touched person and batch, Avro encoding of what is
  published, JSON encoding of each written entry; and the profile's bytes per person.
- state bytes per person (the person-keyed tables, and member-features alone) and per
  identifier (the identity links), from the workers' own state samples after the run.

- latency at half the maximum rate (the 2-worker run's events per wall
  second): the first events of the same data produced at that rate into a
  fresh 2-worker pipeline; per event, from the raw record's Kafka timestamp
  (when the producer sent it) to the enriched record's Kafka timestamp
  (event -> enriched), to ``inserted_at``, stamped by ClickHouse when the
  row and its KPI view rows were stored (event -> visible in ClickHouse),
  and, for the decisions of trigger rules without a wait, from the raw
  record of the event that started it to the trigger record (event -> trigger).
  Same machine clock on both ends.

Results go to stdout as a table and to a JSON file for comparison between
runs. This is a benchmark, not a test: nothing here asserts a target.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer

from streams import avro
from streams.features import member, profile
from streams.identity import shards
from streams.identity.graph import identifiers_of
from streams.kafka.broker import EmbeddedBroker, free_port
from streams.kafka.clients import create_topics
from streams.pipeline import STATE_INTERVAL_S
from streams.processes import Child, Supervisor, metrics_lines, scrape_total
from streams.settings import Settings
from streams.simulate.producer import produce, send_clock_ticks
from streams.simulate.traffic import SimConfig, generate
from streams.topics import RAW, partition_for

_TICK = os.sysconf("SC_CLK_TCK")
IDLE_CORES = 0.15  # below this the worker and sink processes have nothing left to process
# Tables keyed by person id: what a person costs (the identity tables are per identifier or batch).
PERSON_TABLES = ("member-features", "session-open", "trigger-pending")
BENCH_START_MS = 1_792_598_400_000  # 2026-10-22T00:00:00+08:00: in Double 11's warm-up, its sale 9 days ahead


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def ceiling(settings: Settings, expected: int) -> dict[str, float]:
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([RAW.name(settings)])
    before = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter()
    n = 0
    while n < expected:
        for m in c.consume(1000, timeout=1.0):
            if m.error() is None and m.value() is not None:
                try:
                    avro.decode(m.value())
                except avro.WireFormatError:
                    pass
                n += 1
    after = resource.getrusage(resource.RUSAGE_SELF)
    c.close()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"events": n, "cpu_s": cpu, "wall_s": time.perf_counter() - wall, "events_per_cpu_s": n / cpu}


@contextmanager
def _stack(base: Settings, broker: EmbeddedBroker, prefix: str, workers: int,
           run_dir: Path) -> Iterator[tuple[Settings, Supervisor, Child]]:
    """Fresh topics under ``prefix``, ``workers`` workers and the sink, settled for a few seconds;
    every process stopped on leaving."""
    s = base.with_overrides(kafka_bootstrap=broker.bootstrap, topic_prefix=prefix,
                            data_dir=str(run_dir / prefix), clock="manual",
                            sink_query_port=free_port())
    create_topics(s)
    sup = Supervisor(s, run_dir / prefix / "logs")
    try:
        for i in range(workers):
            sup.start_worker(i)
        sink = sup.start_sink()
        time.sleep(8)  # group joins and recovery: idle CPU before a measured window, no wait for the first events
        yield s, sup, sink
    finally:
        sup.stop()


def pipeline(base: Settings, broker: EmbeddedBroker, traffic: Any, workers: int, run_dir: Path) -> dict[str, float]:
    with _stack(base, broker, f"bench{workers}w{uuid.uuid4().hex[:4]}", workers, run_dir) as (s, sup, sink):
        cpu0 = {c.name: _cpu_seconds(c.proc.pid) for c in sup.children}
        wall0 = time.perf_counter()
        produce(s, traffic)
        send_clock_ticks(s, traffic.truth.end_time_ms + 1)
        expected = traffic.truth.events_valid_distinct
        assert sink.port is not None
        last = time.monotonic()
        while True:
            # The sink reads the enriched topic: rows in ClickHouse imply enriched records.
            rows = int(scrape_total(sink.port, 'touchline_sink_records_stored_total{table="touchpoints_enriched"}'))
            if rows >= expected:
                break
            if time.monotonic() - last > 10:
                print(f"  {workers} worker(s): {rows:,} of {expected:,} rows in ClickHouse", flush=True)
                last = time.monotonic()
            if sup.check_alive():
                raise RuntimeError(f"bench process died: {sup.check_alive()}")
            time.sleep(0.2)
        # Rows in ClickHouse are not the end: features, sessions and triggers read behind the
        # enriched topic. The run ends when the processes go idle.
        wall = _until_idle(sup.children) - wall0
        cpu = {c.name: _cpu_seconds(c.proc.pid) - cpu0[c.name] for c in sup.children}
        workers_list = [c for c in sup.children if c.name != "sink"]
        stages = _sum_by(workers_list, "touchline_stage_cpu_seconds_total", "stage")  # CPU s per stage
        stages["sink"] = cpu["sink"]
        stages["faust and the rest"] = sum(cpu[c.name] for c in workers_list) - sum(
            v for k, v in stages.items() if k != "sink")
        state = _state(workers_list)
    total = sum(cpu.values())
    return {"workers": workers, "events": expected, "cpu_s": total, "wall_s": wall,
            "events_per_cpu_s": expected / total, "events_per_wall_s": expected / wall,
            "stage_cpu_s": stages, "state": state}


def _until_idle(children: list[Child], interval_s: float = 0.5, quiet_samples: int = 3) -> float:
    """Wait until the processes together use less than IDLE_CORES for ``quiet_samples`` intervals
    in a row; return the perf_counter time of the end of the last busy interval."""
    last = {c.name: _cpu_seconds(c.proc.pid) for c in children}
    busy_until, quiet = time.perf_counter(), 0
    while quiet < quiet_samples:
        time.sleep(interval_s)
        now = {c.name: _cpu_seconds(c.proc.pid) for c in children}
        cores = sum(now[n] - last[n] for n in now) / interval_s
        last = now
        if cores < IDLE_CORES:
            quiet += 1
        else:
            quiet, busy_until = 0, time.perf_counter()
    return busy_until


def _sum_by(workers: list[Child], metric: str, label: str) -> dict[str, float]:
    """A metric's samples summed over the workers, by one label's value."""
    out: dict[str, float] = {}
    for c in workers:
        assert c.port is not None
        for line in metrics_lines(c.port):
            if line.startswith(metric + "{"):
                value = line.split(f'{label}="', 1)[1].split('"', 1)[0]
                out[value] = out.get(value, 0.0) + float(line.split()[-1])
    return out


def _state(workers: list[Child]) -> dict[str, Any]:
    """Bytes of state per person and per identifier, from the workers' state samples
    (touchline_state_bytes, touchline_persons), once a sample taken after the run is in."""
    time.sleep(STATE_INTERVAL_S + 2)
    tables = _sum_by(workers, "touchline_state_bytes", "table")
    persons = _sum_by(workers, "touchline_persons", "stage")
    per_person = sum(tables.get(t, 0.0) for t in PERSON_TABLES)
    return {
        "table_bytes": tables, "entries": persons,
        "bytes_per_person": per_person / persons["features"] if persons.get("features") else None,
        "bytes_per_features_person": (tables.get("member-features", 0.0) / persons["features"]
                                      if persons.get("features") else None),
        "bytes_per_identifier": (tables.get("identity-links", 0.0) / persons["identity"]
                                 if persons.get("identity") else None),
        "bytes_per_graph_identifier": (
            (tables.get("identity-groups", 0.0) + tables.get("identity-assign", 0.0)) / persons["identity-graph"]
            if persons.get("identity-graph") else None),
    }


def valid_touchpoints(traffic: Any) -> list[dict[str, Any]]:
    """The traffic's valid touchpoints (late ones included), decoded: what the stages alone run on."""
    return [avro.decode(r.value)[1] for r in traffic.records if r.kind in ("event", "late")]


def identity_alone(settings: Settings, touchpoints: list[dict[str, Any]]) -> dict[str, float]:
    """The sharded identity graph's protocol alone (streams/identity/shards.py), in this process:
    every touchpoint placed by its message, each of ``settings.partitions``
    partitions a FIFO queue of JSON messages handled in turn, until no message is left. What the
    identity-graph agent adds on top (Kafka, Faust, changelogs) is not counted."""
    rules, n = settings.identity_rules(), settings.partitions
    queues: list[deque[str]] = [deque() for _ in range(n)]
    records: dict[str, Any] = {}
    assigned: dict[str, Any] = {}
    before, messages = time.process_time(), 0
    for tp in touchpoints:
        ids = identifiers_of(tp, rules)
        if ids:
            queues[partition_for(ids[0], n)].append(
                json.dumps(shards.event_message(tp["event_id"], tp["event_time_ms"], ids)))
    while any(queues):
        for queue in queues:
            for _ in range(len(queue)):
                msg = json.loads(queue.popleft())
                messages += 1
                key = msg["to"]
                if msg["k"] == "assign":
                    new = shards.assign_step(assigned.get(key), msg, rules)
                    if new is not None:
                        assigned[key] = new
                    continue
                step = shards.step(records.get(key), msg, rules)
                for m in step.sends:
                    queues[partition_for(m["to"], n)].append(json.dumps(m))
                if step.write is not None:
                    records[key] = step.write
    cpu = time.process_time() - before
    return {"events": len(touchpoints), "cpu_s": cpu, "events_per_cpu_s": len(touchpoints) / cpu,
            "messages": messages, "identifiers": len(assigned),
            "persons": len({a["person"] for a in assigned.values()}), "partitions": n}


def features_alone(settings: Settings, touchpoints: list[dict[str, Any]]) -> dict[str, float]:
    """Feature updates alone (streams/features/member.py over profile.py), in this process: the
    touchpoints in batches of ``ingest_batch_size``, each event applied to its person's
    entry, then per batch each touched person's snapshot taken at the batch's newest event time,
    Avro-encoded when it changed, and the entry JSON-encoded as its changelog record would be.
    A person is the event's member id, else its first identifier (no identity resolution here)."""
    cfg = settings.feature_settings()
    entries: dict[str, Any] = {}
    size, published, written = settings.ingest_batch_size, 0, 0
    before = time.process_time()
    for start in range(0, len(touchpoints), size):
        touched: dict[str, Any] = {}
        batch = touchpoints[start:start + size]
        for tp in batch:
            ids = tp["identifiers"]
            person = next((f"{k}:{v}" for k, v in ids.items() if v and k == "member_id"), None) or next(
                (f"{k}:{v}" for k, v in ids.items() if v), tp["event_id"])
            entry = touched.get(person) or entries.get(person) or member.empty(person, 0)
            profile.apply(entry["profile"], {"person_id": person, "member_id": ids.get("member_id"),
                                             "processed_at_ms": 0, "touchpoint": tp}, cfg)
            touched[person] = entry
        now = max(tp["event_time_ms"] for tp in batch)
        for person, entry in touched.items():
            rec = member.refresh(entry, now, cfg)
            if rec is not None:
                avro.encode(avro.MEMBER_FEATURES, rec)
                published += 1
            written += len(json.dumps(entry))
            entries[person] = entry
    cpu = time.process_time() - before
    sizes = [profile.state_bytes(e["profile"]) for e in entries.values()]
    return {"events": len(touchpoints), "cpu_s": cpu, "events_per_cpu_s": len(touchpoints) / cpu,
            "persons": len(entries), "snapshots_published": published, "changelog_bytes": written,
            "profile_bytes_mean": sum(sizes) / len(sizes), "profile_bytes_max": max(sizes)}


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    v = sorted(values)

    def at(q: float) -> float:
        return v[min(len(v) - 1, int(q * len(v)))]

    return {"n": len(v), "p50_ms": at(0.50), "p99_ms": at(0.99), "p99_9_ms": at(0.999), "max_ms": v[-1]}


def latency(base: Settings, broker: EmbeddedBroker, traffic: Any, config: SimConfig, rate: float, seconds: float,
            run_dir: Path) -> dict[str, Any]:
    """Event -> enriched, event -> visible in ClickHouse and event -> trigger (rules without a wait),
    producing at ``rate`` events/s."""
    from streams.deadletter.inspect import read_to_end
    from streams.run import load_reference
    from streams.simulate.traffic import Traffic
    from streams.sink.query import SinkNotRunning, rows
    from streams.topics import ENRICHED, TRIGGERS

    count = max(500, min(len(traffic.records), int(rate * seconds)))
    with _stack(base, broker, f"benchlat{uuid.uuid4().hex[:4]}", 2, run_dir) as (s, sup, _):
        # As `touchline run`: the brand's stores, catalog and campaign calendar, which trigger rules read.
        load_reference(s, run_dir / s.topic_prefix / "reference", config)
        produce(s, Traffic(traffic.records[:count], traffic.truth), rate=rate)
        deadline = time.monotonic() + 300
        stored = 0
        while stored < count:
            if time.monotonic() > deadline or sup.check_alive():
                raise RuntimeError(f"latency run: {stored:,} of {count:,} events stored ({sup.check_alive()} died)")
            try:
                stored = int(rows(s, "SELECT count() FROM touchpoints_enriched", open_directly=False)[0][0])
            except SinkNotRunning:
                pass
            time.sleep(0.2)
        visible = rows(s, "SELECT raw_partition, raw_offset, toUnixTimestamp64Milli(inserted_at) "
                          "FROM touchpoints_enriched", open_directly=False)
        raw = list(read_to_end(s, RAW.name(s)))
        raw_ts = {(m.partition(), m.offset()): m.timestamp()[1] for m in raw}
        to_enriched = []
        for m in read_to_end(s, ENRICHED.name(s)):
            r = avro.decode_as(avro.ENRICHED, m.value())
            sent = raw_ts.get((r["raw_partition"], r["raw_offset"]))
            if sent is not None:
                to_enriched.append(float(m.timestamp()[1] - sent))
        to_visible = [float(at - raw_ts[(p, o)]) for p, o, at in visible if (p, o) in raw_ts]
        # Triggers read behind the enriched topic: wait until the processes are idle.
        _until_idle(sup.children)
        no_wait = {name for name, d in s.trigger_definitions().items() if d.wait is None}
        to_trigger = trigger_latencies(no_wait, raw, read_to_end(s, TRIGGERS.name(s)))
    return {"rate_events_per_s": rate, "events": count, "event_to_enriched": _percentiles(to_enriched),
            "event_to_visible_in_clickhouse": _percentiles(to_visible),
            "event_to_trigger": _percentiles(to_trigger)}


def trigger_latencies(no_wait: set[str], raw_messages: Iterable[Any], trigger_messages: Iterable[Any]) -> list[float]:
    """Per trigger decision of a rule in ``no_wait`` (fired, held out or suppressed alike): from the
    raw record of the event that started it (Kafka timestamp) to the trigger record's."""
    sent: dict[str, int] = {}
    for m in raw_messages:
        try:
            sent.setdefault(avro.decode(m.value())[1]["event_id"], m.timestamp()[1])
        except Exception:  # not a touchpoint: it never starts a trigger
            continue
    out = []
    for m in trigger_messages:
        t = avro.decode_as(avro.TRIGGER, m.value())
        if t["rule"] in no_wait and t["source_event_id"] in sent:
            out.append(float(m.timestamp()[1] - sent[t["source_event_id"]]))
    return out


def bench(events: int, out_path: Path) -> dict[str, Any]:
    base = Settings.from_env()
    run_dir = base.data_path / "bench"
    run_dir.mkdir(parents=True, exist_ok=True)
    # Traffic in the warm-up of Double 11, as the campaign calendar of the reference data has it, when
    # rules timed by the calendar (browse without buying) fire without a wait.
    config = SimConfig(seed=3, events=events, persons=max(200, events // 40), start_ms=BENCH_START_MS,
                       duplicate_rate=0.0, malformed_rate=0.0, late_rate=0.0)
    traffic = generate(config)
    result: dict[str, Any] = {"events": traffic.truth.events_valid_distinct, "cpus": os.cpu_count(),
                              "python": platform.python_version(), "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with EmbeddedBroker(log_path=run_dir / "broker.log") as broker:
        s = base.with_overrides(kafka_bootstrap=broker.bootstrap, topic_prefix=f"ceil{uuid.uuid4().hex[:4]}")
        create_topics(s)
        produce(s, traffic)
        result["ceiling"] = ceiling(s, traffic.truth.records_sent)
        touchpoints = valid_touchpoints(traffic)
        result["identity_alone"] = identity_alone(base, touchpoints)
        result["features_alone"] = features_alone(base, touchpoints)
        result["pipeline_1w"] = pipeline(base, broker, traffic, 1, run_dir)
        result["pipeline_2w"] = pipeline(base, broker, traffic, 2, run_dir)
        half = result["pipeline_2w"]["events_per_wall_s"] / 2
        result["latency"] = latency(base, broker, traffic, config, half, 20.0, run_dir)
    c = result["ceiling"]["events_per_cpu_s"]
    p1, p2 = result["pipeline_1w"], result["pipeline_2w"]
    print(f"\nTouchline bench: {result['events']:,} events, {result['cpus']} CPUs\n")
    print(f"  {'what':38} {'events/CPU-s':>13} {'ratio':>7} {'events/s (wall)':>16}")
    print(f"  {'raw ceiling (consume + Avro decode)':38} {c:>13,.0f} {1.0:>7.2f} {'':>16}")
    for label, r in (("whole pipeline, 1 worker + sink", p1), ("whole pipeline, 2 workers + sink", p2)):
        print(f"  {label:38} {r['events_per_cpu_s']:>13,.0f} {r['events_per_cpu_s'] / c:>7.3f} "
              f"{r['events_per_wall_s']:>16,.0f}")
    ia = result["identity_alone"]
    print(f"  {'identity resolution alone (graph core)':38} {ia['events_per_cpu_s']:>13,.0f} "
          f"{ia['events_per_cpu_s'] / c:>7.3f} {'':>16}")
    print(f"    ({ia['partitions']} partitions in one process, {ia['messages']:,} messages, "
          f"{ia['identifiers']:,} identifiers into {ia['persons']:,} persons)")
    fa = result["features_alone"]
    print(f"  {'feature updates alone (profile core)':38} {fa['events_per_cpu_s']:>13,.0f} "
          f"{fa['events_per_cpu_s'] / c:>7.3f} {'':>16}")
    print(f"    ({fa['persons']:,} persons, {fa['snapshots_published']:,} snapshots published, profile state "
          f"{fa['profile_bytes_mean']:,.0f} bytes per person on average, {fa['profile_bytes_max']:,} at most)")
    print(f"\n  2 workers / 1 worker throughput (wall): {p2['events_per_wall_s'] / p1['events_per_wall_s']:.2f}x")
    print("\n  each stage, within the 2-worker run: events / that stage's CPU seconds")
    print(f"  {'stage':38} {'events/CPU-s':>13} {'ratio':>7} {'CPU s':>8} {'share':>7}")
    for stage, sec in sorted(p2["stage_cpu_s"].items(), key=lambda kv: -kv[1]):
        rate = p2["events"] / sec if sec > 0 else float("inf")
        label = "features (feature updates, agent)" if stage == "features" else stage
        print(f"  {label:38} {rate:>13,.0f} {rate / c:>7.3f} {sec:>8.2f} {sec / p2['cpu_s']:>7.1%}")
    st = p2["state"]
    if st["bytes_per_person"] is not None:
        print(f"\n  state: {st['bytes_per_person']:,.0f} bytes per person "
              f"({', '.join(PERSON_TABLES)}; {st['entries'].get('features', 0):,.0f} persons)")
    if st.get("bytes_per_features_person") is not None:
        print(f"  state: {st['bytes_per_features_person']:,.0f} bytes per person in member-features alone")
    if st["bytes_per_identifier"] is not None:
        print(f"  state: {st['bytes_per_identifier']:,.0f} bytes per identifier "
              f"(identity-links; {st['entries'].get('identity', 0):,.0f} identifiers)")
    if st.get("bytes_per_graph_identifier") is not None:
        print(f"  state: {st['bytes_per_graph_identifier']:,.0f} bytes per identifier in the identity graph "
              f"(identity-groups, identity-assign; {st['entries'].get('identity-graph', 0):,.0f} identifiers)")
    lat = result["latency"]
    print(f"\n  latency at half the 2-worker rate ({lat['rate_events_per_s']:,.0f} events/s, "
          f"{lat['events']:,} events), milliseconds:")
    print(f"  {'':38} {'p50':>8} {'p99':>8} {'p99.9':>8} {'max':>8}")
    for label, key in (("event -> enriched topic", "event_to_enriched"),
                       ("event -> trigger (rules with no wait)", "event_to_trigger"),
                       ("event -> visible in ClickHouse KPIs", "event_to_visible_in_clickhouse")):
        q = lat[key]
        if q["n"]:
            print(f"  {label:38} {q['p50_ms']:>8,.0f} {q['p99_ms']:>8,.0f} {q['p99_9_ms']:>8,.0f} "
                  f"{q['max_ms']:>8,.0f}  ({q['n']:,} records)")
        else:
            print(f"  {label:38} {'none in this run':>35}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    print(f"  written to {out_path}")
    return result
