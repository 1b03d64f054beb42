"""Pure mapping from sink-topic records to ClickHouse rows, one Table per topic.

Each table declares the column that identifies a row (``key``). For tables
with a materialized view (events, sessions, dead letters) the sink inserts a
row only when that key is not stored yet, so the KPI views count every record
once however often a replay delivers it. Upsert tables (member snapshots,
reference data) carry the record's offset as ``version`` instead: the last
record per key wins, and a tombstone (null value) marks the key deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from streams.features.profile import DEPTH_WINDOWS
from streams.features.windows import METRICS, WINDOWS
from streams.topics import (
    DEAD_LETTERS,
    ENRICHED,
    IDENTITY_ASSIGNMENTS,
    IDENTITY_CHANGES,
    MEMBER_FEATURES,
    REF_CAMPAIGNS,
    REF_PRODUCTS,
    REF_SPEND,
    REF_STORES,
    SESSIONS,
    TRIGGERS,
    TopicSpec,
)
from streams.touchpoint.record import props as record_props

_EPOCH = datetime.fromtimestamp(0, tz=UTC)


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _day(iso: str | None) -> date | None:
    return date.fromisoformat(iso) if iso else None


def _items(tp: dict[str, Any], props: dict[str, Any]) -> int:
    """Units in an order's line items, or a cart add's quantity."""
    lines = props.get("products") or []
    if lines:
        return sum(int(line.get("quantity") or 1) for line in lines)
    if tp["type"] == "product_added":
        return int(props.get("quantity") or 1)
    return 0


def enriched_row(r: dict[str, Any], offset: int = 0) -> list[Any]:
    tp = r["touchpoint"]
    props = record_props(tp)
    ctx = tp.get("context") or {}
    return [
        tp["event_id"], tp["type"], tp["channel"], _ts(tp["event_time_ms"]), _ts(tp["receive_time_ms"]),
        _ts(r["processed_at_ms"]), r["person_id"], r["member_id"], tp.get("store_id"), tp.get("source_app"),
        props.get("cart_id"), props.get("order_id"), props.get("product_id"), props.get("category"),
        props.get("revenue"), tp["historical"], r["raw_partition"], r["raw_offset"],
        ctx.get("campaign"), ctx.get("source"), ctx.get("medium"), tp.get("referrer_id"), tp.get("guide_id"),
        ctx.get("kol_post_id"), ctx.get("page_url"), ctx.get("search_keyword"), ctx.get("city"), _items(tp, props),
    ]


def change_row(r: dict[str, Any], offset: int = 0) -> list[Any]:
    return [
        r["change_id"], r["kind"], r["from_person"], r["into_person"], r["reason"], r["identifiers"],
        r["evidence_event_id"], _ts(r["event_time_ms"]), r["into_persons"], r["evidence_event_ids"], r["resolver"],
    ]


def trigger_row(r: dict[str, Any], offset: int = 0) -> list[Any]:
    return [
        r["trigger_id"], r["rule"], r["person_id"], r["member_id"], r["correlation_key"],
        r["source_event_id"], _ts(r["due_at_ms"]), _ts(r["fired_at_ms"]), r["payload"], r["outcome"],
        r["reason"] or "", r["channel"] or "", r["handle"] or "", r["evidence"], r["event_ids"],
    ]


def dead_letter_row(r: dict[str, Any], offset: int = 0) -> list[Any]:
    return [
        r["dead_letter_id"], r["reason"], r["detail"], r["source_topic"], r["source_partition"],
        r["source_offset"], _ts(r["failed_at_ms"]), r["payload_size"], r["key_id"],
    ]


def session_row(r: dict[str, Any], offset: int = 0) -> list[Any]:
    return [
        r["session_id"], r["person_id"], r["member_id"], _ts(r["start_ms"]), _ts(r["end_ms"]), r["channel"],
        r["landing_page"], r["campaign"], r["source"], r["store_id"], r["events"], r["page_views"], r["orders"],
        r["revenue"], r["converted"], r["historical"], _ts(r["closed_at_ms"]),
    ]


# member_snapshots: v2 columns (migration 0008). Window columns follow the snapshot's names.
_WINDOW_COLS = [
    f"{metric}_{w}"
    for w in WINDOWS
    for metric in ("sessions", *(m for m in METRICS if m != "revenue_cents"), "revenue", "aov",
                   *(("visit_depth",) if w in DEPTH_WINDOWS else ()))
]
_TOUCH_COLS = {"first_touch": ("at", "entry", "channel", "campaign", "source", "medium", "search_keyword",
                               "kol_post_id", "referrer_id", "partner", "store_id"),
               "last_touch": ("at", "entry", "channel", "campaign")}
_LABELS = ("member_grid", "lifecycle", "preferred_channel")  # LowCardinality(String): '' for none
MEMBER_COLS = [
    "person_id", "member_id", "first_seen", "last_seen", "as_of", "days_since_last_visit", "days_since_last_order",
    "orders_total", "revenue_total", "first_order", "last_order", *_WINDOW_COLS, "channels",
    *(f"{touch}_{k}" for touch, keys in _TOUCH_COLS.items() for k in keys),
    "referred_by", "home_store", "home_guide", "interest_long", "interest_short", "interest_divergence",
    "interest_short_events", "interest_shift", "member_grid", "browse_without_buying", "lifecycle",
    "marketing_consent", "reachable", "preferred_channel",
    "p_alive", "expected_purchases_30d", "next_purchase",  # v3 (migration 0011)
    "city", "city_store", "city_store_opened",  # v4 (migration 0012)
    "version", "is_deleted",
]


def _opt_ts(ms: int | None) -> datetime | None:
    return None if ms is None else _ts(ms)


def _touch_values(touch: dict[str, Any] | None, keys: tuple[str, ...]) -> list[Any]:
    if touch is None:
        return [None if k not in ("entry", "channel") else "" for k in keys]
    return [_ts(touch["at_ms"]) if k == "at" else touch[k] for k in keys]


def member_row(r: dict[str, Any], offset: int = 0) -> list[Any]:
    return [
        r["person_id"], r["member_id"], _ts(r["first_seen_ms"]), _ts(r["last_seen_ms"]), _ts(r["as_of_ms"]),
        r["days_since_last_visit"], r["days_since_last_order"], r["orders_total"], r["revenue_total"],
        _opt_ts(r["first_order_ms"]), _opt_ts(r["last_order_ms"]), *(r[c] for c in _WINDOW_COLS),
        sorted(r["channels"]),
        *(v for touch, keys in _TOUCH_COLS.items() for v in _touch_values(r[touch], keys)),
        r["referred_by"], r["home_store"], r["home_guide"], r["interest_long"], r["interest_short"],
        r["interest_divergence"], r["interest_short_events"], r["interest_shift"], r["member_grid"] or "",
        r["browse_without_buying"], r["lifecycle"] or "", r["consent"].get("marketing", {}), r["reachable"],
        r["preferred_channel"] or "", r["p_alive"], r["expected_purchases_30d"], _opt_ts(r["next_purchase_ms"]),
        r["city"], r["city_store"], _opt_ts(r["city_store_opened_ms"]), offset, 0,
    ]


def member_tombstone(key: str, offset: int) -> list[Any]:
    row: dict[str, Any] = dict.fromkeys(MEMBER_COLS)
    row |= {"person_id": key, "first_seen": _EPOCH, "last_seen": _EPOCH, "as_of": _EPOCH, "orders_total": 0,
            "revenue_total": 0.0, "channels": [], "interest_long": {}, "interest_short": {},
            "interest_short_events": 0.0, "interest_shift": False, "browse_without_buying": False,
            "marketing_consent": {}, "reachable": [], "version": offset, "is_deleted": 1}
    row |= {c: 0 for c in _WINDOW_COLS if not c.startswith(("aov_", "visit_depth_"))}
    row |= {c: "" for c in (*_LABELS, "first_touch_entry", "first_touch_channel", "last_touch_entry",
                            "last_touch_channel")}
    return [row[c] for c in MEMBER_COLS]


def assignment_row(r: dict[str, Any], offset: int = 0) -> list[Any]:
    return [r["identifier"], r["person_id"], r["member_id"], r["root"], offset, 0]


def _assignment_tombstone(key: str, offset: int) -> list[Any]:
    return [key, "", None, "", offset, 1]


def store_row(r: dict[str, Any], offset: int = 0) -> list[Any]:
    return [r["store_id"], r["name"], r["city"], r["latitude"], r["longitude"], _day(r["opened_on"]),
            _day(r["closed_on"]), offset, 0]


def product_row(r: dict[str, Any], offset: int = 0) -> list[Any]:
    return [r["product_id"], r["name"], r["category_path"], r["price"], r["currency"], r["new_arrival"], r["tags"],
            _day(r["launched_on"]), offset, 0]


def campaign_row(r: dict[str, Any], offset: int = 0) -> list[Any]:
    return [r["campaign_id"], r["name"], _day(r["starts_on"]), _day(r["ends_on"]), _day(r["warmup_starts_on"]),
            r["channels"], offset, 0]


def spend_row(r: dict[str, Any], offset: int = 0) -> list[Any]:
    return [_day(r["day"]), r["channel"], r["campaign_id"] or "", r["amount"], r["currency"], r["impressions"],
            r["clicks"], r["leads"], offset, 0]


def _spend_tombstone(key: str, offset: int) -> list[Any] | None:
    day, channel, campaign = (key.split("|") + ["", "", ""])[:3]
    try:
        when = date.fromisoformat(day)
    except ValueError:
        return None  # not a key `touchline load` writes: nothing of ours to delete
    return [when, channel, campaign, 0.0, "", None, None, None, offset, 1]


def _store_tombstone(key: str, offset: int) -> list[Any]:
    return [key, "", "", 0.0, 0.0, None, None, offset, 1]


def _product_tombstone(key: str, offset: int) -> list[Any]:
    return [key, "", "", 0.0, "", False, [], None, offset, 1]


def _campaign_tombstone(key: str, offset: int) -> list[Any]:
    return [key, "", None, None, None, [], offset, 1]


@dataclass(frozen=True, eq=False)  # hashed by identity: one object per table
class Table:
    name: str
    columns: list[str]
    build: Callable[[dict[str, Any], int], list[Any]]  # (record, offset) -> row
    key: str  # the column that identifies a row
    insert_once: bool = True  # rows whose key is stored already are not inserted again
    time_column: str | None = None  # narrows the look-up of stored keys to the batch's time range
    tombstone: Callable[[str, int], list[Any] | None] | None = None  # (message key, offset) -> row of a deleted key


_STORE_COLS = ["store_id", "name", "city", "latitude", "longitude", "opened_on", "closed_on", "version", "is_deleted"]
_PRODUCT_COLS = ["product_id", "name", "category_path", "price", "currency", "new_arrival", "tags", "launched_on",
                 "version", "is_deleted"]
_CAMPAIGN_COLS = ["campaign_id", "name", "starts_on", "ends_on", "warmup_starts_on", "channels", "version",
                  "is_deleted"]

# sink topic -> table
TABLES: dict[TopicSpec, Table] = {
    ENRICHED: Table("touchpoints_enriched", [
        "event_id", "event_type", "channel", "event_time", "receive_time", "processed_at", "person_id",
        "member_id", "store_id", "source_app", "cart_id", "order_id", "product_id", "category", "revenue",
        "historical", "raw_partition", "raw_offset", "campaign", "source", "medium", "referrer_id", "guide_id",
        "kol_post_id", "page_url", "search_keyword", "city", "items"], enriched_row, "event_id",
        time_column="event_time"),
    IDENTITY_CHANGES: Table("identity_changes", [
        "change_id", "kind", "from_person", "into_person", "reason", "identifiers", "evidence_event_id",
        "event_time", "into_persons", "evidence_event_ids", "resolver"], change_row, "change_id"),
    IDENTITY_ASSIGNMENTS: Table("identity_assignments", [
        "identifier", "person_id", "member_id", "root", "version", "is_deleted"], assignment_row, "identifier",
        insert_once=False, tombstone=_assignment_tombstone),
    TRIGGERS: Table("triggers", [
        "trigger_id", "rule", "person_id", "member_id", "correlation_key", "source_event_id", "due_at",
        "fired_at", "payload", "outcome", "reason", "channel", "handle", "evidence", "event_ids"], trigger_row,
        "trigger_id"),
    DEAD_LETTERS: Table("dead_letters", [
        "dead_letter_id", "reason", "detail", "source_topic", "source_partition", "source_offset",
        "failed_at", "payload_size", "key_id"], dead_letter_row, "dead_letter_id", time_column="failed_at"),
    SESSIONS: Table("sessions", [
        "session_id", "person_id", "member_id", "start_time", "end_time", "channel", "landing_page", "campaign",
        "source", "store_id", "events", "page_views", "orders", "revenue", "converted", "historical",
        "closed_at"], session_row, "session_id", time_column="start_time"),
    MEMBER_FEATURES: Table("member_snapshots", MEMBER_COLS, member_row, "person_id",
                           insert_once=False, tombstone=member_tombstone),
    REF_STORES: Table("ref_stores", _STORE_COLS, store_row, "store_id", insert_once=False,
                      tombstone=_store_tombstone),
    REF_PRODUCTS: Table("ref_products", _PRODUCT_COLS, product_row, "product_id", insert_once=False,
                        tombstone=_product_tombstone),
    REF_CAMPAIGNS: Table("ref_campaigns", _CAMPAIGN_COLS, campaign_row, "campaign_id", insert_once=False,
                         tombstone=_campaign_tombstone),
    REF_SPEND: Table("ref_spend", [
        "day", "channel", "campaign_id", "amount", "currency", "impressions", "clicks", "leads", "version",
        "is_deleted"], spend_row, "day", insert_once=False, tombstone=_spend_tombstone),
}
