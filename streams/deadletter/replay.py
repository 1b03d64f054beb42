"""``touchline dlq replay``: re-feed dead letters through ingestion after a fix.

A replay writes a raw record, so ingestion validates it again like any other:
a record that is now acceptable becomes an enriched event, one still bad goes
back to the dead-letter topic under its new raw coordinates. Each replayed
record carries the header ``touchline-replay-of: <dead_letter_id>``.

What is re-fed, by the dead letter's source:

- the raw topic (ingest): the original bytes, unchanged, to the same raw
  partition;
- ``collector/<source>`` (HTTP collector): the original JSON event, converted
  as the collector does: ``jsonform.from_json`` with ``source_app`` defaulting
  to the source, received at the dead letter's ``failed_at`` (a client's own
  receive time is ignored), phone and email normalised and hashed with the
  identifier salt (no raw personal data is written to a topic), then
  Avro-encoded; a conversion that still fails is reported and skipped;
- ``import/<source>`` (history importer) and anything else: not replayable
  here (re-run the import once the file or the importer is fixed).

Safe to repeat. Before sending, replay reads the raw topic from the oldest
dead letter on (offsets by time) for earlier replays, by their header. A dead
letter with a replay that did not come back as a dead letter (accepted, or
still on its way) is skipped as already replayed. The identity stage's
duplicate filter alone would not be enough: it forgets an event id once its
event time is more than ``TOUCHLINE_DEDUP_WINDOW_S`` behind stream time, and
an event dead-lettered as ``event_time_too_old`` is always that old under the
wall clock. Dead letters of the same original record (a replay that failed
again is a new dead letter of the same bytes) are sent once per run.
``force`` skips that reading and sends every selection; ingestion's duplicate
filter still drops repeats within its window.

The selection, the conversion and the plan are pure and unit-tested; ``replay``
is the thin Kafka shell.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams import avro
from streams.deadletter.inspect import (
    CannotOpen,
    Letter,
    distinct,
    open_payload,
    read_dead_letters,
    read_to_end,
    select,
    write_order,
)
from streams.deadletter.records import dead_letter_id
from streams.deadletter.sealing import Sealer, configured_salt
from streams.settings import Settings

REPLAY_HEADER = "touchline-replay-of"
# Replays are read back from this long before the oldest dead letter's write time: clock skew between hosts.
SCAN_MARGIN_MS = 10 * 60 * 1000
DELIVERY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Send:
    """One raw record to write for a dead letter."""

    dead_letter_id: str
    value: bytes
    kind: str  # "raw bytes" or "collector json"
    partition: int | None = None  # None: by key

    @property
    def key(self) -> bytes:
        return self.dead_letter_id.encode()

    @property
    def headers(self) -> list[tuple[str, str | bytes | None]]:
        return [(REPLAY_HEADER, self.dead_letter_id.encode())]


@dataclass(frozen=True)
class Skip:
    dead_letter_id: str
    outcome: str  # "not_replayable", "failed" or "already_replayed"
    why: str


@dataclass(frozen=True)
class Target:
    """Where replays go and what converting collector events needs."""

    raw_topic: str
    partitions: int
    salt: bytes | None = None  # identifier salt; None: collector events cannot be converted
    default_country: str = "+86"


@dataclass
class Plan:
    sends: list[Send] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)


# --------------------------------------------------------------------------- pure


def source_kind(source_topic: str, raw_topic: str) -> str:
    """``raw``, ``collector``, ``import`` or ``unknown``."""
    if source_topic == raw_topic or source_topic.endswith(".touchpoints.raw"):
        return "raw"
    if source_topic.startswith("collector/"):
        return "collector"
    if source_topic.startswith("import/"):
        return "import"
    return "unknown"


def unreplayable(letter: Letter, raw_topic: str) -> Skip | None:
    """Why a dead letter cannot be re-fed whatever its payload, or None."""
    kind = source_kind(letter.source, raw_topic)
    if kind == "import":
        return Skip(letter.id, "not_replayable",
                    "an import row is not a touchpoint: fix the file or the importer and run the import again")
    if kind == "unknown":
        return Skip(letter.id, "not_replayable", f"unknown source {letter.source!r}: nothing knows how to re-feed it")
    return None


def convert(letter: Letter, payload: bytes, target: Target) -> Send | Skip:
    """What to write to the raw topic for this dead letter's opened payload."""
    r = letter.record
    kind = source_kind(letter.source, target.raw_topic)
    if kind == "raw":
        p = int(r["source_partition"])
        same = letter.source == target.raw_topic and 0 <= p < target.partitions
        return Send(letter.id, payload, "raw bytes", p if same else None)
    if kind == "collector":
        return _from_collector(letter, payload, target)
    skip = unreplayable(letter, target.raw_topic)
    assert skip is not None
    return skip


def _from_collector(letter: Letter, payload: bytes, target: Target) -> Send | Skip:
    from streams.collector.core import RECEIVE_KEYS
    from streams.touchpoint.jsonform import JsonEventError, from_json
    from streams.touchpoint.normalise import normalise_identifiers

    if target.salt is None:
        return Skip(letter.id, "failed", "no identifier salt configured: set TOUCHLINE_IDENTIFIER_SALT to the "
                    "collector's and workers' (phones and emails are hashed before they reach a topic)")
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return Skip(letter.id, "failed", f"collector payload is not JSON: {exc}")
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k not in RECEIVE_KEYS}  # the collector ignores them too
    source = letter.source[len("collector/"):]
    try:
        tp = from_json(obj, received_ms=int(letter.record["failed_at_ms"]), defaults={"source_app": source})
    except JsonEventError as exc:
        return Skip(letter.id, "failed", f"still not a touchpoint ({exc.reason}): {exc.message}")
    tp["identifiers"], _ = normalise_identifiers(tp["identifiers"], target.salt, target.default_country)
    try:
        value = avro.encode(avro.TOUCHPOINT, tp)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return Skip(letter.id, "failed", f"cannot Avro-encode the converted event: {str(exc)[:300]}")
    return Send(letter.id, value, "collector json")


def root_of(letter_id: str, letters: dict[str, Letter], replays: dict[tuple[int, int], str], raw_topic: str) -> str:
    """The first dead letter of a chain: a replay that failed again is a new dead letter of the same bytes."""
    seen = {letter_id}
    current = letter_id
    while True:
        d = letters.get(current)
        if d is None or d.source != raw_topic:
            return current
        parent = replays.get((int(d.record["source_partition"]), int(d.record["source_offset"])))
        if parent is None or parent in seen:
            return current
        seen.add(parent)
        current = parent


def plan(selected: Sequence[Letter], letters: Iterable[Letter], replays: dict[tuple[int, int], str],
         target: Target, sealer: Sealer | None) -> Plan:
    """Decide, for each selected dead letter, what to send or why not.

    ``replays`` maps raw (partition, offset) to the dead letter id that raw
    record replays (its ``touchline-replay-of`` header), as read from the raw
    topic; empty when forced.
    """
    raw_topic = target.raw_topic
    by_id = {d.id: d for d in letters}
    done: dict[str, str] = {}  # root -> raw coordinates of a replay that did not come back
    for (p, o), of in sorted(replays.items()):
        if dead_letter_id(raw_topic, p, o) not in by_id:
            done.setdefault(root_of(of, by_id, replays, raw_topic), f"{raw_topic}/{p}/{o}")
    out = Plan()
    sent_roots: dict[str, str] = {}
    for d in selected:
        root = root_of(d.id, by_id, replays, raw_topic)
        if root in done:
            out.skips.append(Skip(d.id, "already_replayed", f"replayed before as {done[root]} "
                                  "(accepted, or not yet ingested)"))
            continue
        if root in sent_roots:
            out.skips.append(Skip(d.id, "already_replayed", f"the same original record as {sent_roots[root]}, "
                                  "replayed once"))
            continue
        skip = unreplayable(d, raw_topic)
        if skip is not None:
            out.skips.append(skip)
            continue
        if sealer is None:
            out.skips.append(Skip(d.id, "failed", "no dead-letter key configured"))
            continue
        try:
            payload = open_payload(sealer, d.record)
        except CannotOpen as exc:
            out.skips.append(Skip(d.id, "failed", f"cannot open: {exc}"))
            continue
        step = convert(d, payload, target)
        if isinstance(step, Send):
            sent_roots[root] = d.id
            out.sends.append(step)
        else:
            out.skips.append(step)
    return out


def replays_in(records: Iterable[tuple[int, int, list[tuple[str, bytes]] | None]]) -> dict[tuple[int, int], str]:
    """(partition, offset, headers) of raw records -> the replayed dead letter id, for replays only."""
    out = {}
    for p, o, headers in records:
        for name, value in headers or ():
            if name == REPLAY_HEADER and value is not None:
                out[(p, o)] = value.decode("utf-8", "replace")
    return out


@dataclass
class Result:
    selected: int
    dry_run: bool
    replayed: list[dict[str, Any]] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)

    def of(self, outcome: str) -> list[Skip]:
        return [s for s in self.skips if s.outcome == outcome]

    def as_json(self) -> dict[str, Any]:
        return {
            "selected": self.selected, "dry_run": self.dry_run,
            "replayed": len(self.replayed) if not self.dry_run else 0,
            "would_replay": len(self.replayed) if self.dry_run else 0,
            "already_replayed": len(self.of("already_replayed")),
            "not_replayable": len(self.of("not_replayable")),
            "failed": len(self.of("failed")),
            "records": self.replayed,
            "skipped": [{"dead_letter_id": s.dead_letter_id, "outcome": s.outcome, "why": s.why} for s in self.skips],
        }


def render(result: Result, listed: int = 20) -> str:
    j = result.as_json()
    verb = "would replay" if result.dry_run else "replayed"
    lines = [
        f"selected {j['selected']}: {verb} {len(result.replayed)}, already replayed {j['already_replayed']}, "
        f"not replayable {j['not_replayable']}, failed {j['failed']}" + (" (dry run: nothing sent)" if result.dry_run else "")
    ]
    for r in result.replayed[:listed]:
        where = f" -> {r['raw_topic']}/{r['raw_partition']}/{r['raw_offset']}" if "raw_offset" in r else ""
        lines.append(f"  {verb} {r['dead_letter_id']} ({r['kind']}){where}")
    if len(result.replayed) > listed:
        lines.append(f"  … and {len(result.replayed) - listed} more")
    for outcome in ("already_replayed", "not_replayable", "failed"):
        group = result.of(outcome)
        for s in group[:listed]:
            lines.append(f"  {outcome.replace('_', ' ')}: {s.dead_letter_id}: {s.why}")
        if len(group) > listed:
            lines.append(f"  … and {len(group) - listed} more {outcome.replace('_', ' ')}")
    if result.replayed and not result.dry_run:
        lines.append("ingestion validates them again: one still bad comes back as a new dead letter "
                     "(`touchline dlq inspect`)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- Kafka


def scan_replays(settings: Settings, since_ms: int | None) -> dict[tuple[int, int], str]:
    """Earlier replays on the raw topic (written since ``since_ms``), by their header."""
    from streams.topics import RAW

    return replays_in(
        (m.partition(), m.offset(), m.headers()) for m in read_to_end(settings, RAW.name(settings), since_ms)
    )


def replay(settings: Settings, sealer: Sealer | None, *, reasons: Sequence[str] = (), ids: Sequence[str] = (),
           sources: Sequence[str] = (), dry_run: bool = False, force: bool = False) -> Result:
    """Select dead letters, plan, and (unless a dry run) write the replays and wait for delivery."""
    from confluent_kafka import KafkaError, Message

    from streams.kafka.clients import producer
    from streams.topics import RAW

    raw = RAW.name(settings)
    read = read_dead_letters(settings)
    selected = sorted(select(distinct(read.letters), reasons=reasons, sources=sources, ids=ids),
                      key=write_order)
    replays: dict[tuple[int, int], str] = {}
    if selected and not force:
        stamps = [d.timestamp_ms for d in read.letters]
        since = None if min(stamps) <= 0 else min(stamps) - SCAN_MARGIN_MS
        replays = scan_replays(settings, since)
    target = Target(raw, settings.partitions, configured_salt(settings), settings.default_country_code)
    steps = plan(selected, read.letters, replays, target, sealer)
    result = Result(len(selected), dry_run, skips=list(steps.skips))
    missing = sorted(set(ids) - {d.id for d in read.letters})
    result.skips.extend(Skip(i, "failed", "no such dead letter on the topic") for i in missing)
    if dry_run:
        result.replayed = [{"dead_letter_id": s.dead_letter_id, "kind": s.kind} for s in steps.sends]
        return result
    if not steps.sends:
        return result
    acks: dict[str, dict[str, Any]] = {}

    def delivered(send: Send) -> Any:
        def callback(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                acks[send.dead_letter_id] = {"dead_letter_id": send.dead_letter_id, "kind": send.kind,
                                             "raw_topic": raw, "raw_partition": msg.partition(),
                                             "raw_offset": msg.offset()}
            else:
                result.skips.append(Skip(send.dead_letter_id, "failed", f"not delivered: {err}"))
        return callback

    p = producer(settings)
    for send in steps.sends:
        if send.partition is None:
            p.produce(raw, key=send.key, value=send.value, headers=send.headers, on_delivery=delivered(send))
        else:
            p.produce(raw, key=send.key, value=send.value, headers=send.headers, on_delivery=delivered(send),
                      partition=send.partition)
        p.poll(0)
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    while len(p) and time.monotonic() < deadline:
        p.flush(max(0.1, deadline - time.monotonic()))
    answered = set(acks) | {s.dead_letter_id for s in result.skips}
    for send in steps.sends:
        if send.dead_letter_id not in answered:
            result.skips.append(Skip(send.dead_letter_id, "failed",
                                     f"not acknowledged within {DELIVERY_TIMEOUT_S:.0f}s (it may still arrive)"))
    result.replayed = [acks[s.dead_letter_id] for s in steps.sends if s.dead_letter_id in acks]
    return result
