"""``touchline dlq inspect``: what is on the dead-letter topic, and why.

The topic is read from the beginning to its current end: every partition is
assigned (no group membership, no commits), so inspecting changes nothing for
anyone. The summary is pure (``summarise``) and the reading is a thin shell
(``read_dead_letters``), so the summary is unit-tested on built records.

Payloads stay sealed unless asked (``open_with``): then each listed dead letter
gets a short preview (decoded Avro or JSON when possible, else hex), with
every non-printable character escaped and the text cut to a few hundred
characters. Previews may show personal data: the caller prints a warning.
A dead letter sealed with another key, or that fails authentication, is
reported as such; it never stops the summary.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag

from streams import avro
from streams.deadletter.sealing import Sealer
from streams.settings import Settings

PREVIEW_CHARS = 300
SAMPLES_PER_REASON = 3
OPEN_WARNING = "payloads are opened: previews may show personal data (phones, emails, names); do not paste them anywhere"


@dataclass(frozen=True)
class Letter:
    """One dead letter as read from the topic (the DeadLetter record plus where it sits)."""

    record: dict[str, Any]
    partition: int = 0  # on the dead-letter topic
    offset: int = 0
    timestamp_ms: int = 0  # the Kafka record's timestamp (when it was written)

    @property
    def id(self) -> str:
        return str(self.record["dead_letter_id"])

    @property
    def reason(self) -> str:
        return str(self.record["reason"])

    @property
    def source(self) -> str:
        return str(self.record["source_topic"])


@dataclass
class TopicRead:
    topic: str
    letters: list[Letter] = field(default_factory=list)
    unreadable: list[dict[str, Any]] = field(default_factory=list)  # records that are not DeadLetters


# --------------------------------------------------------------------------- pure


def write_order(letter: Letter) -> tuple[int, int, int, int]:
    """Sort key: oldest written first (Kafka timestamp, then failure time, then topic position)."""
    return letter.timestamp_ms, letter.record["failed_at_ms"], letter.partition, letter.offset


def matches_source(source_topic: str, wanted: str) -> bool:
    """``wanted`` names a source exactly, or a family: ``collector`` matches ``collector/web``."""
    return source_topic == wanted or source_topic.startswith(wanted.rstrip("/") + "/")


def distinct(letters: Iterable[Letter]) -> list[Letter]:
    """One record per dead letter id, the first written.

    Ids repeat: ingestion is at-least-once (a crash before its commit writes a
    slice's dead letters again) and the collector names a retried event's
    dead letter the same.
    """
    seen: dict[str, Letter] = {}
    for d in letters:
        seen.setdefault(d.id, d)
    return list(seen.values())


def select(letters: Iterable[Letter], *, reasons: Sequence[str] = (), sources: Sequence[str] = (),
           ids: Sequence[str] = ()) -> list[Letter]:
    """The dead letters matching every given filter (each filter: any of its values)."""
    return [
        d for d in letters
        if (not reasons or d.reason in reasons)
        and (not sources or any(matches_source(d.source, s) for s in sources))
        and (not ids or d.id in ids)
    ]


class CannotOpen(Exception):
    """A payload that the configured key cannot open; the message says why."""


def open_payload(sealer: Sealer, record: dict[str, Any]) -> bytes:
    """The original bytes of a dead letter, or CannotOpen."""
    if record["key_id"] != sealer.key_id:
        raise CannotOpen(f"sealed with key {record['key_id']}, not the configured key {sealer.key_id}")
    try:
        return sealer.open(record["nonce"], record["payload_encrypted"], str(record["dead_letter_id"]).encode())
    except InvalidTag:
        raise CannotOpen("authentication failed: the sealed bytes or their id were altered") from None


def safe_text(text: str, limit: int = PREVIEW_CHARS) -> str:
    """Printable on any terminal: control and other non-printable characters escaped, cut to ``limit``."""
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def _hex(payload: bytes, limit: int) -> str:
    shown = payload[: max(1, (limit - 20) // 3)]  # "xx " per byte, room for the size
    return shown.hex(" ") + (f" … ({len(payload)} bytes)" if len(shown) < len(payload) else "")


def preview(payload: bytes, limit: int = PREVIEW_CHARS) -> tuple[str, str]:
    """(kind, text): a short, printable look at a payload; kinds: ``avro <contract>``, ``json``, ``hex``, ``empty``."""
    if not payload:
        return "empty", ""
    try:
        name, decoded = avro.decode(payload)
    except avro.WireFormatError:
        pass
    else:
        if name == avro.TOUCHPOINT:
            from streams.touchpoint.jsonform import to_json

            try:
                decoded = to_json(decoded)
            except (KeyError, TypeError, ValueError):
                pass
        text = json.dumps(decoded, ensure_ascii=False, separators=(",", ":"), default=repr)
        return f"avro {name}", safe_text(text, limit)
    try:
        parsed = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "hex", _hex(payload, limit)
    return "json", safe_text(json.dumps(parsed, ensure_ascii=False, separators=(",", ":")), limit)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _samples(group: list[Letter], n: int) -> list[dict[str, Any]]:
    """Up to n examples, different details first."""
    picked: list[Letter] = []
    seen: set[str] = set()
    for d in group:
        if d.record["detail"] not in seen:
            seen.add(d.record["detail"])
            picked.append(d)
        if len(picked) == n:
            break
    for d in group:
        if len(picked) == n:
            break
        if d not in picked:
            picked.append(d)
    return [{"dead_letter_id": d.id, "detail": safe_text(d.record["detail"])} for d in picked]


def summarise(read: TopicRead, *, reasons: Sequence[str] = (), sources: Sequence[str] = (),
              open_with: Sealer | None = None, configured_key_id: str | None = None,
              limit: int = 10, samples: int = SAMPLES_PER_REASON) -> dict[str, Any]:
    """The summary of the dead letters matching the filters, as plain JSON-able data.

    ``limit`` dead letters (the latest written) are listed one by one; with
    ``open_with`` each gets a preview of its payload or the reason it cannot
    be opened.
    """
    unique = distinct(read.letters)
    chosen = select(unique, reasons=reasons, sources=sources)
    key_id = open_with.key_id if open_with is not None else configured_key_id
    by_reason: dict[str, list[Letter]] = {}
    for d in chosen:
        by_reason.setdefault(d.reason, []).append(d)
    sources_count = Counter(d.source for d in chosen)
    keys = Counter(str(d.record["key_id"]) for d in chosen)
    sizes = [int(d.record["payload_size"]) for d in chosen]
    times = [int(d.record["failed_at_ms"]) for d in chosen]
    summary: dict[str, Any] = {
        "topic": read.topic,
        "on_topic": len(unique),
        "repeated_records": len(read.letters) - len(unique),  # the same dead letter id written again
        "unreadable": read.unreadable,
        "filters": {"reason": list(reasons), "source": list(sources)},
        "total": len(chosen),
        "by_reason": {
            r: {"count": len(g), "samples": _samples(g, samples)}
            for r, g in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        },
        "by_source": dict(sorted(sources_count.items(), key=lambda kv: (-kv[1], kv[0]))),
        "failed_at": None if not times else {
            "first_ms": min(times), "last_ms": max(times), "first": iso(min(times)), "last": iso(max(times)),
        },
        "payload_bytes": None if not sizes else {
            "min": min(sizes), "median": int(statistics.median(sizes)), "max": max(sizes), "total": sum(sizes),
        },
        "keys": {
            "configured": key_id,
            "by_key": dict(keys.most_common()),
            "other_key": 0 if key_id is None else sum(n for k, n in keys.items() if k != key_id),
        },
        "opened": open_with is not None,
        "latest": [],
    }
    if open_with is not None:
        summary["warning"] = OPEN_WARNING
    latest = sorted(chosen, key=write_order)
    for d in latest[-limit:] if limit > 0 else []:
        item: dict[str, Any] = {
            "dead_letter_id": d.id, "reason": d.reason, "source": d.source,
            "failed_at": iso(int(d.record["failed_at_ms"])), "payload_size": int(d.record["payload_size"]),
            "key_id": d.record["key_id"], "detail": safe_text(d.record["detail"]),
        }
        if open_with is not None:
            try:
                item["kind"], item["preview"] = preview(open_payload(open_with, d.record))
            except CannotOpen as exc:
                item["kind"], item["error"] = "sealed", str(exc)
        summary["latest"].append(item)
    return summary


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def render(summary: dict[str, Any]) -> str:
    """The summary for a person at a terminal."""
    lines = []
    filters = [f"{k} {', '.join(v)}" for k, v in summary["filters"].items() if v]
    matching = f", {summary['total']} matching {'; '.join(filters)}" if filters else ""
    repeats = f" (and {summary['repeated_records']} repeated record(s))" if summary["repeated_records"] else ""
    lines.append(f"{summary['topic']}: {summary['on_topic']} dead letter(s){repeats}{matching}")
    if summary["unreadable"]:
        lines.append(f"  {len(summary['unreadable'])} record(s) on the topic are not dead letters "
                     f"(first at partition {summary['unreadable'][0]['partition']} "
                     f"offset {summary['unreadable'][0]['offset']})")
    if not summary["total"]:
        return "\n".join(lines)
    t, b = summary["failed_at"], summary["payload_bytes"]
    lines.append(f"failed between {t['first']} and {t['last']}")
    lines.append(f"payloads: {_size(b['min'])} to {_size(b['max'])} (median {_size(b['median'])}, "
                 f"total {_size(b['total'])})")
    lines.append("")
    lines.append("by reason:")
    width = max(len(r) for r in summary["by_reason"])
    for reason, group in summary["by_reason"].items():
        lines.append(f"  {reason:<{width}}  {group['count']:>7}")
        for s in group["samples"]:
            lines.append(f"      e.g. {s['dead_letter_id']}: {s['detail']}")
    lines.append("")
    lines.append("by source:")
    width = max(len(s) for s in summary["by_source"])
    for source, n in summary["by_source"].items():
        lines.append(f"  {source:<{width}}  {n:>7}")
    keys = summary["keys"]
    if keys["configured"] is None:
        lines.append(f"\nsealed with key(s): {', '.join(f'{k} ({n})' for k, n in keys['by_key'].items())}")
    elif keys["other_key"]:
        lines.append(f"\n{keys['other_key']} sealed with another key than the configured {keys['configured']}: "
                     f"{', '.join(f'{k} ({n})' for k, n in keys['by_key'].items() if k != keys['configured'])}")
    if summary["latest"]:
        lines.append("")
        lines.append(f"latest {len(summary['latest'])}:")
        for item in summary["latest"]:
            lines.append(f"  {item['dead_letter_id']}  {item['reason']}  {item['failed_at']}  "
                         f"{_size(item['payload_size'])}  {safe_text(item['detail'], 100)}")
            if "preview" in item:
                lines.append(f"      {item['kind']}: {item['preview']}")
            elif "error" in item:
                lines.append(f"      cannot open: {item['error']}")
    if summary.get("warning"):
        lines.append("")
        lines.append(f"WARNING: {summary['warning']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- keys and Kafka


class TopicMissing(RuntimeError):
    pass


def read_to_end(settings: Settings, topic: str, since_ms: int | None = None,
                idle_s: float = 0.3, stall_s: float = 60.0) -> Iterator[Any]:
    """Every record of ``topic`` (or those written since ``since_ms``, epoch ms)
    up to the end it had when reading began.

    All partitions are assigned (no consumer group membership, nothing
    committed). The end is each partition's high watermark, then whatever
    arrives without waiting: the embedded broker reports the high watermark
    as the first offset of the last batch plus one, so the rest of that batch
    lies past it.
    """
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": f"{settings.group('dlq-reader')}-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "enable.auto.offset.store": False,
        "fetch.wait.max.ms": settings.kafka_fetch_wait_ms,
    })
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise TopicMissing(f"no topic {topic} (create it with `touchline topics`)")
        starts: dict[int, int] = {}
        if since_ms is not None:
            found = consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in meta.partitions],
                                               timeout=10)
            starts = {tp.partition: tp.offset if tp.offset >= 0 else 1 << 62 for tp in found}
        ends: dict[int, int] = {}
        assign = []
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            start = max(low, starts.get(p, low))
            if high > start:
                ends[p] = high
                assign.append(TopicPartition(topic, p, start))
        if not assign:
            return
        consumer.assign(assign)
        deadline = time.monotonic() + stall_s
        positions: dict[int, int] = {}
        while True:
            msgs = consumer.consume(1000, timeout=idle_s)
            if msgs:
                deadline = time.monotonic() + stall_s
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(err)
                yield m
            positions = {tp.partition: tp.offset for tp in consumer.position(assign)}
            reached = all(positions.get(p, -1) >= end for p, end in ends.items())
            if reached and not msgs:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: nothing arrived for {stall_s:.0f}s short of its end "
                                   f"(at {positions}, end {ends})")
    finally:
        consumer.close()


def read_dead_letters(settings: Settings) -> TopicRead:
    from streams.topics import DEAD_LETTERS

    topic = DEAD_LETTERS.name(settings)
    out = TopicRead(topic)
    for m in read_to_end(settings, topic):
        try:
            record = avro.decode_as(avro.DEAD_LETTER, m.value())
        except avro.WireFormatError as exc:
            out.unreadable.append({"partition": m.partition(), "offset": m.offset(), "reason": exc.reason})
            continue
        out.letters.append(Letter(record, m.partition(), m.offset(), m.timestamp()[1]))
    return out
