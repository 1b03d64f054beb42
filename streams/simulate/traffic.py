"""Seeded omnichannel traffic and its ground truth: what goes into the raw topic, what must come out.

Pure: no Kafka here (``producer`` sends the records). ``generate`` simulates
people's journeys (``journeys``), encodes them as the raw topic's Confluent-framed
Touchpoints in send order, and mixes in the noise real collectors see: exact
resends, late page/product views, and malformed records of each dead-letter
reason. Same config, same bytes, so a run's output can be checked exactly
against the returned ``GroundTruth``.

Shared devices (``shared_devices``, off by default) make the skeleton identity
rule over-merge: a cookie used by several members is linked to the first one
who identifies on it, and everyone's anonymous events there become that
member's. The ground truth follows the rule exactly (``expected_persons``) and
says how many humans it wrongly attributes (``over_merged_humans``).

Counting convention: a late record is a valid, distinct event sent out of
order, so ``records_sent = events_valid_distinct + duplicates + malformed`` and
``late`` is a subset of ``events_valid_distinct``.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from streams import avro
from streams.ingest.validate import route_key
from streams.simulate.journeys import ID_FIELDS, MINUTE_MS, Journeys
from streams.touchpoint.taxonomy import CHANNELS, IDENTIFY_TYPES, is_junk

START_MS = 1_793_462_400_000  # 2026-11-01T00:00:00+08:00
DEFAULT_CHANNEL_MIX = {
    "web": 0.25, "app": 0.2, "mini_program": 0.15, "wechat_oa": 0.08, "store_pos": 0.1,
    "marketplace": 0.08, "customer_service": 0.04, "partner": 0.03, "sms": 0.035, "email": 0.035,
}
LATE_TYPES = frozenset({"page_viewed", "product_viewed"})
LATE_MIN_MS, LATE_MAX_MS = 10 * MINUTE_MS, 60 * MINUTE_MS
DUPLICATE_MAX_LAG = 500  # a resend follows its original within this many records
# Malformed variants, used in turn, with the dead-letter reason ingest must give each.
MALFORMED = (
    ("random_bytes", "not_wire_format"),
    ("wrong_magic", "not_wire_format"),
    ("unknown_schema", "unknown_schema"),
    ("truncated", "avro_decode_error"),
    ("unknown_channel", "unknown_channel"),
    ("junk_identifiers", "no_identifier"),
)


@dataclass(frozen=True)
class SimConfig:
    seed: int = 7
    persons: int = 500  # humans
    events: int = 20000  # approximate number of valid touchpoints; journeys stop once reached
    member_share: float = 0.6
    devices_per_person: int = 3  # each human has 1..this many devices
    channel_mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CHANNEL_MIX))
    login_rate: float = 0.5  # a member logs in during a device session
    cart_rate: float = 0.3  # a cart-eligible device session fills a cart
    cart_abandon_rate: float = 0.3
    duplicate_rate: float = 0.01
    late_rate: float = 0.01
    malformed_rate: float = 0.005
    start_ms: int = START_MS
    days: int = 3
    cart_abandon_delay_ms: int = 1_800_000
    # Devices (cookies) each used by two members who log in on them, half the
    # time by one more human too (a family tablet, a store kiosk); needs two
    # members per device, fewer are realised if the seed has too few members.
    shared_devices: int = 0
    # A hot key: one in-store kiosk (a single web cookie, never logged in) that
    # produces this share of all valid events, spread over the run. 0: no kiosk
    # and no random draw, the output is the same as without the option.
    hot_key_share: float = 0.0

    def __post_init__(self) -> None:
        if self.persons < 1 or self.events < 0 or self.devices_per_person < 1 or self.days < 1:
            raise ValueError("persons, devices_per_person and days must be >= 1, events >= 0")
        if not 0.0 <= self.hot_key_share < 1.0:
            raise ValueError("hot_key_share must be within [0, 1)")
        if not 0 <= 2 * self.shared_devices <= self.persons:
            raise ValueError("shared_devices must be >= 0 and each needs two of the persons")
        for name in ("member_share", "login_rate", "cart_rate", "cart_abandon_rate",
                     "duplicate_rate", "late_rate", "malformed_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        unknown = set(self.channel_mix) - CHANNELS
        if unknown or not any(w > 0 for w in self.channel_mix.values()):
            raise ValueError(f"channel_mix needs positive weights on known channels (unknown: {unknown})")


@dataclass(frozen=True)
class SimRecord:
    key: bytes | None
    value: bytes
    kind: str  # event | duplicate | late | malformed


@dataclass
class GroundTruth:
    seed: int
    start_ms: int
    end_time_ms: int  # latest event time of any valid event
    records_sent: int  # = events_valid_distinct + duplicates + malformed
    events_valid_distinct: int  # includes the late ones
    duplicates: int
    late: int
    malformed: int
    malformed_by_reason: dict[str, int]
    events_by_channel: dict[str, int]
    events_by_type: dict[str, int]
    humans: int
    members: int
    active_humans: int  # humans with at least one valid event
    expected_persons: int
    identity_links: int  # route keys (cookies) linked to a member by an identify
    shared_devices: int  # cookies two or more members identified on (realised, not just configured)
    over_merged_humans: int  # humans some of whose events the skeleton rule gives to another member
    carts: int
    abandoned_carts: int
    abandoned_cart_ids: list[str]
    orders: int  # order_completed events, all channels
    revenue: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Traffic:
    records: list[SimRecord]
    truth: GroundTruth


def generate(config: SimConfig | None = None) -> Traffic:
    """Simulate traffic for ``config``; same config, byte-identical records."""
    config = config or SimConfig()
    rng = random.Random(config.seed)
    journeys = Journeys(config, rng)
    ordered = _place_late(journeys.run(), rng, config.late_rate)
    base = [SimRecord(_key(ev), avro.encode(avro.TOUCHPOINT, ev), kind) for ev, kind in ordered]

    after: defaultdict[int, list[SimRecord]] = defaultdict(list)  # base index -> records sent after it
    n = len(base)
    duplicates = sorted(rng.sample(range(n), min(n, round(config.duplicate_rate * n))))
    for i in duplicates:
        after[min(n - 1, i + rng.randint(1, DUPLICATE_MAX_LAG))].append(SimRecord(base[i].key, base[i].value, "duplicate"))
    reasons: Counter[str] = Counter()
    for k in range(round(config.malformed_rate * n) if n else 0):
        variant, reason = MALFORMED[k % len(MALFORMED)]
        src = rng.randrange(n)
        after[rng.randrange(-1, n)].append(_malformed(variant, ordered[src][0], base[src].value, rng))
        reasons[reason] += 1
    records = list(after[-1])
    for i, rec in enumerate(base):
        records.append(rec)
        records.extend(after[i])

    events = [ev for ev, _ in ordered]
    persons, links = _skeleton_persons(events)
    members_on: defaultdict[str, set[str]] = defaultdict(set)  # cookie -> members identifying on it
    for e in events:
        ids = e["identifiers"]
        if e["type"] in IDENTIFY_TYPES and not is_junk(ids["anonymous_id"]) and not is_junk(ids["member_id"]):
            members_on[ids["anonymous_id"]].add(ids["member_id"])
    truth = GroundTruth(
        seed=config.seed, start_ms=config.start_ms,
        end_time_ms=max((e["event_time_ms"] for e in events), default=config.start_ms),
        records_sent=len(records), events_valid_distinct=n,
        duplicates=len(duplicates),
        late=sum(1 for _, kind in ordered if kind == "late"), malformed=sum(reasons.values()),
        malformed_by_reason=dict(sorted(reasons.items())),
        events_by_channel=dict(sorted(Counter(e["channel"] for e in events).items())),
        events_by_type=dict(sorted(Counter(e["type"] for e in events).items())),
        humans=config.persons, members=sum(1 for h in journeys.humans if h.member_id),
        active_humans=len(journeys.active), expected_persons=persons, identity_links=len(links),
        shared_devices=sum(1 for m in members_on.values() if len(m) >= 2),
        over_merged_humans=_over_merged(events, links, journeys),
        carts=journeys.carts, abandoned_carts=len(journeys.abandoned),
        abandoned_cart_ids=sorted(journeys.abandoned), orders=journeys.orders,
        revenue=round(journeys.revenue, 2),
    )
    return Traffic(records, truth)


def _key(event: dict[str, Any]) -> bytes | None:
    rk = route_key(event["identifiers"])
    return None if rk is None else rk.encode()


def _place_late(events: list[dict[str, Any]], rng: random.Random, rate: float) -> list[tuple[dict[str, Any], str]]:
    """Send order: by event time, except some page/product views held back 10-60 minutes.

    A held-back view is sent when the stream has moved on by its lateness; if no
    other event lies in that window (a quiet night) it is sent on time instead,
    so every late record is really 10-60 minutes behind the latest event sent.
    """
    candidates = [i for i, e in enumerate(events) if e["type"] in LATE_TYPES]
    chosen = sorted(rng.sample(candidates, min(len(candidates), round(rate * len(events)))))
    send_at = {i: events[i]["event_time_ms"] + rng.randint(LATE_MIN_MS, LATE_MAX_MS) for i in chosen}
    while True:
        order = sorted(range(len(events)), key=lambda i: (send_at.get(i, events[i]["event_time_ms"]), i))
        now, on_time = -1, []
        for i in order:
            t = events[i]["event_time_ms"]
            if i not in send_at:
                now = max(now, t)
            elif now - t < LATE_MIN_MS:
                on_time.append(i)
        if not on_time:  # sending more on time only raises `now` for the others: one retry suffices
            break
        for i in on_time:
            del send_at[i]
    for i, at in send_at.items():
        events[i]["receive_time_ms"] = at + rng.randint(0, 3000)  # it reached the collector late
    return [(events[i], "late" if i in send_at else "event") for i in order]


def _malformed(variant: str, event: dict[str, Any], value: bytes, rng: random.Random) -> SimRecord:
    """One bad record, built from a valid event (and its bytes) where the variant needs one."""
    key = _key(event)
    if variant == "random_bytes":
        data = rng.randbytes(rng.randint(1, 40))
        if len(data) >= 5 and data[0] == avro.MAGIC:
            data = b"\xff" + data[1:]
        return SimRecord(None, data, "malformed")
    if variant == "wrong_magic":
        return SimRecord(key, bytes([rng.randint(1, 255)]) + value[1:], "malformed")
    if variant == "unknown_schema":
        known = {c.schema_id for c in avro.iter_contracts()}
        schema_id = rng.getrandbits(31)
        while schema_id in known:
            schema_id = rng.getrandbits(31)
        return SimRecord(key, bytes([avro.MAGIC]) + schema_id.to_bytes(4, "big") + value[5:], "malformed")
    if variant == "truncated":
        return SimRecord(key, value[: rng.randint(6, len(value) - 1)], "malformed")
    bad = {**event, "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4))}
    if variant == "unknown_channel":
        bad["channel"] = "fax"
        assert bad["channel"] not in CHANNELS
    else:  # junk identifiers: a placeholder cookie and nothing else
        bad["identifiers"] = {name: None for name in ID_FIELDS} | {"anonymous_id": "undefined"}
        key = None
    return SimRecord(key, avro.encode(avro.TOUCHPOINT, bad), "malformed")


def _skeleton_persons(events: list[dict[str, Any]]) -> tuple[int, dict[str, str]]:
    """(persons, route key -> member links) the skeleton identity rule ends with, events in send order.

    An event belongs to its member id; else to the member its route key was
    linked to by an identify/login/signed_up carrying both (first link wins);
    else to its route key. Route keys linked by the end are the member's.
    """
    links: dict[str, str] = {}
    members: set[str] = set()
    keys: set[str] = set()
    for e in events:
        ids, rk = e["identifiers"], route_key(e["identifiers"])
        assert rk is not None  # generated events always carry a usable identifier
        member = None if is_junk(ids["member_id"]) else ids["member_id"]
        if member is not None:
            members.add(member)
            if e["type"] in IDENTIFY_TYPES and not rk.startswith("member_id:"):
                links.setdefault(rk, member)
        elif rk in links:
            members.add(links[rk])
        else:
            keys.add(rk)
    return len(members) + len(keys - links.keys()), links


def _over_merged(events: list[dict[str, Any]], links: dict[str, str], journeys: Journeys) -> int:
    """Humans with an event the skeleton rule attributes to a member other than themselves.

    An event's final person under the rule: its member id; else the member its
    route key is linked to by the end (an anonymous person founded before the
    link is merged into that member); else its route key's own person. Only a
    shared device gives one human's events to another member.
    """
    wrong: set[int] = set()
    for e in events:
        ids = e["identifiers"]
        member = None if is_junk(ids["member_id"]) else ids["member_id"]
        person = member or links.get(str(route_key(ids)))
        human = journeys.humans[journeys.owner[e["event_id"]]]
        if person is not None and person != human.member_id:
            wrong.add(human.idx)
    return len(wrong)
