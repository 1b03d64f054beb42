"""Pure mapping from output-topic records to ClickHouse rows."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from streams import avro
from streams.touchpoint.record import props as record_props


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def enriched_row(r: dict[str, Any]) -> list[Any]:
    tp = r["touchpoint"]
    props = record_props(tp)
    return [
        tp["event_id"], tp["type"], tp["channel"], _ts(tp["event_time_ms"]), _ts(tp["receive_time_ms"]),
        _ts(r["processed_at_ms"]), r["person_id"], r["member_id"], tp.get("store_id"), tp.get("source_app"),
        props.get("cart_id"), props.get("order_id"), props.get("product_id"), props.get("category"),
        props.get("revenue"), tp["historical"], r["raw_partition"], r["raw_offset"],
    ]


def change_row(r: dict[str, Any]) -> list[Any]:
    return [
        r["change_id"], r["kind"], r["from_person"], r["into_person"], r["reason"], r["identifiers"],
        r["evidence_event_id"], _ts(r["event_time_ms"]),
    ]


def trigger_row(r: dict[str, Any]) -> list[Any]:
    return [
        r["trigger_id"], r["rule"], r["person_id"], r["member_id"], r["correlation_key"],
        r["source_event_id"], _ts(r["due_at_ms"]), _ts(r["fired_at_ms"]), r["payload"],
    ]


def dead_letter_row(r: dict[str, Any]) -> list[Any]:
    return [
        r["dead_letter_id"], r["reason"], r["detail"], r["source_topic"], r["source_partition"],
        r["source_offset"], _ts(r["failed_at_ms"]), r["payload_size"], r["key_id"],
    ]


# contract name -> (table, columns, row builder)
TABLES: dict[str, tuple[str, list[str], Callable[[dict[str, Any]], list[Any]]]] = {
    avro.ENRICHED: ("touchpoints_enriched", [
        "event_id", "event_type", "channel", "event_time", "receive_time", "processed_at", "person_id",
        "member_id", "store_id", "source_app", "cart_id", "order_id", "product_id", "category", "revenue",
        "historical", "raw_partition", "raw_offset"], enriched_row),
    avro.IDENTITY_CHANGE: ("identity_changes", [
        "change_id", "kind", "from_person", "into_person", "reason", "identifiers", "evidence_event_id",
        "event_time"], change_row),
    avro.TRIGGER: ("triggers", [
        "trigger_id", "rule", "person_id", "member_id", "correlation_key", "source_event_id", "due_at",
        "fired_at", "payload"], trigger_row),
    avro.DEAD_LETTER: ("dead_letters", [
        "dead_letter_id", "reason", "detail", "source_topic", "source_partition", "source_offset",
        "failed_at", "payload_size", "key_id"], dead_letter_row),
}
