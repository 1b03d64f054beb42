"""``touchline import``: mapping validation, file formats, casts, ids, time zones (pure), and on the
real embedded broker with a real worker: POS receipts imported as historical events with hashed
phones, re-imports that add nothing, every example touchpoint through the importer, and no
cart-abandon trigger from history."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from streams import avro
from streams.clock import ManualClock
from streams.deadletter.sealing import Sealer
from streams.importer import ledger
from streams.importer.convert import Converted, Converter, Failure
from streams.importer.files import ExportFile, FileFormatError
from streams.importer.mapping import Mapping, MappingError, loads
from streams.importer.progress import Progress
from streams.importer.service import ImportResult, run_import
from streams.ingest.service import policy_from
from streams.ingest.validate import Policy, Rejected, clean
from streams.processes import scrape_total
from streams.settings import Settings
from streams.tally import TopicReader
from streams.topics import DEAD_LETTERS, ENRICHED, IMPORTS_LEDGER, RAW
from streams.touchpoint import jsonform, record
from streams.touchpoint.normalise import HASH_PREFIX, hashed
from tests.conftest import T0, encoded, touchpoint
from tests.test_schemas import current_touchpoints

POLICY = Policy(salt=b"test-salt")
IMPORTED_AT = T0 + 30 * 86_400_000  # the importer's clock: a month after the receipts
SHANGHAI = ZoneInfo("Asia/Shanghai")

POS_MAPPING = """
source = "pos-receipts"
timezone = "Asia/Shanghai"

[constants]
channel = "store_pos"

[columns]
event_id = "receipt_no"
type = "txn_type"
timestamp = "txn_time"
store_id = "store"
guide_id = "cashier"
identifiers.phone = "member_phone"
identifiers.pos_card = "card_no"
properties.order_id = "receipt_no"
properties.total = "amount"
properties.currency = "currency"

[types]
SALE = "order_completed"
RETURN = "order_refunded"
"""

HEADER = ["receipt_no", "store", "cashier", "member_phone", "card_no", "txn_type", "txn_time", "amount", "currency"]
RECEIPTS = [
    ["R-0001", "SH-001", "G-17", "138 0013 8000", "PC-55012", "SALE", "2026-11-01 10:15:00", "899.00", "CNY"],
    ["R-0002", "SH-001", "G-17", "139-1234-5678", "", "SALE", "2026-11-01 10:42:10", "99.00", "CNY"],
    ["R-0003", "SH-002", "G-03", "13800138000", "PC-55012", "RETURN", "2026-11-02 18:05:33", "-899.00", "CNY"],
    ["R-0004", "SH-002", "G-03", "+86 137 0000 1111", "", "VOID", "2026-11-02 19:00:00", "0", "CNY"],
]
BAD_RECEIPT = ["R-0005", "SH-002", "G-03", "13600002222", "", "SALE", "2026-11-02 19:10:00", "12.5x", "CNY"]
RAW_PHONES = ("13800138000", "138 0013 8000", "139-1234-5678", "13912345678", "13700001111", "137 0000 1111",
              "13600002222")


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    import csv

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def write(path: Path, text: str) -> Path:
    path.write_bytes(gzip.compress(text.encode()) if path.name.endswith(".gz") else text.encode())
    return path


def jsonl_text(objs: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs)


def convert_file(path: Path, mapping: Mapping, received_ms: int = IMPORTED_AT,
                 policy: Policy = POLICY) -> list[Converted | Failure]:
    converter = Converter(mapping, policy)
    export = ExportFile(path, columns=mapping.source_columns, delimiter=mapping.csv_delimiter,
                        encoding=mapping.csv_encoding)
    return [converter.convert(row, received_ms) for row in export.rows()]


def accepted(outcomes: list[Converted | Failure]) -> list[dict[str, Any]]:
    bad = [o for o in outcomes if isinstance(o, Failure)]
    assert not bad, bad
    return [o.touchpoint for o in outcomes if isinstance(o, Converted)]


def shanghai_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=SHANGHAI).timestamp() * 1000)


# --------------------------------------------------------------------------- the mapping


def test_the_pos_mapping_parses_with_unquoted_dotted_keys() -> None:
    m = loads(POS_MAPPING)
    assert m.source == "pos-receipts" and m.timezone == "Asia/Shanghai"
    assert m.columns["identifiers.phone"] == "member_phone" and m.constants == {"channel": "store_pos"}
    assert m.types == {"SALE": "order_completed", "RETURN": "order_refunded"}
    # The digest ignores layout and comments, not content.
    assert loads("# a comment\n" + POS_MAPPING).digest == m.digest
    assert loads(POS_MAPPING.replace("store_pos", "web")).digest != m.digest


BASE = 'source = "s"\ntimezone = "UTC"\n[constants]\nchannel = "web"\n'
TOP = 'source = "s"\ntimezone = "UTC"\n'  # then top-level keys, then CHANNEL
CHANNEL = '[constants]\nchannel = "web"\n'


@pytest.mark.parametrize(("text", "needle"), [
    (BASE + '[columns]\ntype = "t"\ntimestamp = "ts"\ncolour = "c"', "unknown target field 'colour'"),
    (BASE + '[columns]\ntype = "t"\ntimestamp = "ts"\n"identifiers.fax" = "f"', "unknown target field 'identifiers.fax'"),
    (BASE + '[columns]\ntype = "t"\ntimestamp = "ts"\n"context.mood" = "m"', "unknown target field 'context.mood'"),
    (BASE + '[columns]\ntype = "t"\ntimestamp = "ts"\n"properties.colour" = "c"', "no event type has a property 'colour'"),
    (TOP + 'type = "order_completed"\n' + CHANNEL + '[columns]\ntimestamp = "ts"\n"properties.cart_idx" = "c"',
     "order_completed has no property 'cart_idx'"),
    (BASE + '[columns]\ntype = "t"\ntimestamp = "ts"\n[types]\nSALE = "order_complete"',
     "[types] 'SALE' = 'order_complete': unknown taxonomy type"),
    ('source = "s"\ntimezone = "Mars/Olympus"\n[constants]\nchannel = "web"\n[columns]\ntype = "t"\ntimestamp = "ts"',
     "unknown time zone 'Mars/Olympus'"),
    ('source = "s"\n[constants]\nchannel = "web"\n[columns]\ntype = "t"\ntimestamp = "ts"', "timezone: required"),
    ('timezone = "UTC"\n[constants]\nchannel = "web"\n[columns]\ntype = "t"\ntimestamp = "ts"', "source: required"),
    (BASE + '[columns]\ntimestamp = "ts"', "no event type"),
    (BASE + '[columns]\ntype = "t"', "the event time is required"),
    ('source = "s"\ntimezone = "UTC"\n[columns]\ntype = "t"\ntimestamp = "ts"', "channel: map a column"),
    ('source = "s"\ntimezone = "UTC"\n[constants]\nchannel = "fax"\n[columns]\ntype = "t"\ntimestamp = "ts"',
     "'fax' is not a channel"),
    (TOP + 'type = "order_done"\n' + CHANNEL + '[columns]\ntimestamp = "ts"', "type: 'order_done' is not a taxonomy type"),
    (TOP + 'colour = "red"\n' + CHANNEL + '[columns]\ntype = "t"\ntimestamp = "ts"', "unknown key(s) colour"),
    (TOP + 'timestamp_format = "fancy"\n' + CHANNEL + '[columns]\ntype = "t"\ntimestamp = "ts"', "timestamp_format"),
    (BASE + '[columns]\ntype = "t"\ntimestamp = "ts"\nevent_id = 3', "must be a source column name"),
    (TOP + 'keep_event_ids = true\n' + CHANNEL + '[columns]\ntype = "t"\ntimestamp = "ts"', "keep_event_ids = true needs"),
    ("source = ", "not valid TOML"),
])
def test_mapping_errors_are_clear(text: str, needle: str) -> None:
    with pytest.raises(MappingError) as err:
        loads(text)
    assert needle in str(err.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(MappingError) as err:
        loads('source = "s"\ntimezone = "Nowhere/Land"\n[columns]\ncolour = "c"\n[types]\nX = "nope"')
    message = str(err.value)
    for needle in ("unknown time zone", "unknown target field 'colour'", "unknown taxonomy type", "channel"):
        assert needle in message


# --------------------------------------------------------------------------- formats


def _parquet(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    """The receipts as a typed Parquet export: times as naive timestamps, amounts as doubles."""
    cols: dict[str, list[Any]] = {h: [r[i] for r in rows] for i, h in enumerate(header)}
    if "txn_time" in cols:
        cols["txn_time"] = [datetime.fromisoformat(v) for v in cols["txn_time"]]
        cols["amount"] = [float(v) for v in cols["amount"]]
        cols["card_no"] = [v or None for v in cols["card_no"]]
    table = pa.table({k: pa.array(v, type=pa.timestamp("s")) if k == "txn_time" else pa.array(v)
                      for k, v in cols.items()})
    pq.write_table(table, path, row_group_size=2)
    return path


@pytest.mark.parametrize("name", ["r.csv", "r.csv.gz", "r.jsonl", "r.ndjson.gz", "r.parquet"])
def test_every_format_gives_the_same_touchpoints(tmp_path: Path, name: str) -> None:
    rows = RECEIPTS[:3]
    m = loads(POS_MAPPING)
    if name.endswith(".parquet"):
        path = _parquet(tmp_path / name, HEADER, rows)
    elif ".csv" in name:
        path = write(tmp_path / name, csv_text(HEADER, rows))
    else:
        path = write(tmp_path / name, jsonl_text([dict(zip(HEADER, r, strict=True)) for r in rows]))
    got = accepted(convert_file(path, m))
    reference = accepted(convert_file(write(tmp_path / "ref.csv", csv_text(HEADER, rows)), m))
    assert got == reference
    first = got[0]
    assert first["event_id"] == "pos-receipts:R-0001" and first["type"] == "order_completed"
    assert first["event_time_ms"] == shanghai_ms("2026-11-01T10:15:00")  # naive time read in Asia/Shanghai
    assert first["receive_time_ms"] == IMPORTED_AT and first["historical"] is True
    assert (first["channel"], first["store_id"], first["guide_id"]) == ("store_pos", "SH-001", "G-17")
    assert first["identifiers"]["phone"] == hashed("phone", "+8613800138000", POLICY.salt)
    assert first["identifiers"]["pos_card"] == "PC-55012"
    assert record.props(first)["total"] == 899.0 and record.props(first)["order_id"] == "R-0001"
    assert got[2]["type"] == "order_refunded" and record.props(got[2])["total"] == -899.0
    # Both spellings of one phone hash to the same identifier.
    assert got[2]["identifiers"]["phone"] == first["identifiers"]["phone"]


def test_progress_is_reported_as_bytes_read(tmp_path: Path) -> None:
    rnd = random.Random(1)
    rows = [[f"R-{i:05d}", "S", "G", str(rnd.randrange(10**10, 10**11)), f"{rnd.getrandbits(64):x}", "SALE",
             "2026-11-01 10:00:00", str(rnd.random()), "CNY"] for i in range(20000)]
    m = loads(POS_MAPPING)
    for name in ("big.csv", "big.csv.gz"):
        export = ExportFile(write(tmp_path / name, csv_text(HEADER, rows)), columns=m.source_columns)
        seen = [export.fraction_read() for i, _ in enumerate(export.rows()) if i % 2000 == 0]
        assert seen == sorted(seen) and 0 < seen[1] < 1, seen
        assert export.fraction_read() == pytest.approx(1.0, abs=0.01)


def test_whole_file_problems(tmp_path: Path) -> None:
    m = loads(POS_MAPPING)
    with pytest.raises(FileFormatError, match="unknown format"):
        ExportFile(write(tmp_path / "r.xlsx", "x"), columns=m.source_columns)
    with pytest.raises(FileFormatError, match="'currency', 'member_phone', 'txn_time', 'txn_type' named in the mapping are not in the header"):
        list(ExportFile(write(tmp_path / "r.csv", "receipt_no,store\nR1,S1\n"), columns=m.source_columns).rows())
    with pytest.raises(FileFormatError, match="not a complete gzip file"):
        list(ExportFile(write(tmp_path / "x.csv", "a,b\n").rename(tmp_path / "x.csv.gz"), columns=[]).rows())
    with pytest.raises(FileFormatError, match="not in the file"):
        list(ExportFile(_parquet(tmp_path / "p.parquet", HEADER[:3], [r[:3] for r in RECEIPTS]),
                        columns=m.source_columns).rows())


# --------------------------------------------------------------------------- times, types, casts


def _one(tmp_path: Path, mapping: str, header: list[str], row: list[str]) -> Converted | Failure:
    return convert_file(write(tmp_path / "one.csv", csv_text(header, [row])), loads(mapping))[0]


SIMPLE = 'source = "web"\ntimezone = "{tz}"\n{extra}\n[constants]\nchannel = "web"\n[columns]\n' \
         'event_id = "id"\ntype = "ev"\ntimestamp = "at"\n"identifiers.anonymous_id" = "cookie"\n{columns}'


def simple(tz: str = "Asia/Shanghai", extra: str = "", columns: str = "") -> str:
    return SIMPLE.format(tz=tz, extra=extra, columns=columns)


@pytest.mark.parametrize(("tz", "fmt", "value", "expected"), [
    ("Asia/Shanghai", "iso", "2026-11-01 10:15:00", shanghai_ms("2026-11-01T10:15:00")),
    ("UTC", "iso", "2026-11-01 10:15:00", shanghai_ms("2026-11-01T10:15:00") + 8 * 3_600_000),
    ("America/New_York", "iso", "2026-11-01T10:15:00", shanghai_ms("2026-11-01T10:15:00") + 13 * 3_600_000),
    ("UTC", "iso", "2026-11-01T10:15:00+08:00", shanghai_ms("2026-11-01T10:15:00")),  # explicit zone wins
    ("UTC", "iso", "1793500000000", 1793500000000),  # epoch ms
    ("UTC", "epoch_s", "1793500000", 1793500000000),
    ("UTC", "epoch_ms", "1793500000123", 1793500000123),
    ("Asia/Shanghai", "%Y/%m/%d %H:%M", "2026/11/01 10:15", shanghai_ms("2026-11-01T10:15:00")),
])
def test_naive_timestamps_are_read_in_the_mappings_zone(tmp_path: Path, tz: str, fmt: str, value: str,
                                                        expected: int) -> None:
    out = _one(tmp_path, simple(tz, f'timestamp_format = "{fmt}"'), ["id", "ev", "at", "cookie"],
               ["e1", "page_viewed", value, "c-1"])
    assert isinstance(out, Converted), out
    assert out.touchpoint["event_time_ms"] == expected


@pytest.mark.parametrize(("name", "kind", "custom_name"), [
    ("page_viewed", "page_viewed", None),
    ("Page", "page_viewed", None),  # Segment names
    ("Order Completed", "order_completed", None),
    ("PAGE_VIEW", "page_viewed", None),  # [types]
    ("Wishlist Added", "custom", "Wishlist Added"),  # neither: a custom event named after it
    ("VOID", "custom", "VOID"),
    ("AR", "custom", "AR"),  # [types] mapped to custom keeps the source name
])
def test_event_names_resolve_to_types_and_unknown_names_become_custom(tmp_path: Path, name: str, kind: str,
                                                                      custom_name: str | None) -> None:
    mapping = simple(columns='"properties.order_id" = "order"\n[types]\nPAGE_VIEW = "page_viewed"\nAR = "custom"')
    out = _one(tmp_path, mapping, ["id", "ev", "at", "cookie", "order"],
               ["e1", name, "2026-11-01 10:00:00", "c-1", "O-1"])
    assert isinstance(out, Converted), out
    assert out.touchpoint["type"] == kind
    if custom_name:
        assert record.props(out.touchpoint) == {"event_name": custom_name, "attributes": {"order_id": "O-1"}}
    elif kind == "order_completed":
        assert record.props(out.touchpoint)["order_id"] == "O-1"
    else:
        assert out.touchpoint["properties"] is None  # page_viewed has no order_id: left out


def test_the_receipts_void_row_is_a_custom_event(tmp_path: Path) -> None:
    outs = accepted(convert_file(write(tmp_path / "r.csv", csv_text(HEADER, RECEIPTS)), loads(POS_MAPPING)))
    void = outs[3]
    assert void["type"] == "custom" and void["historical"] is True
    assert record.props(void) == {"event_name": "VOID",
                                  "attributes": {"order_id": "R-0004", "total": "0", "currency": "CNY"}}


CART = simple(extra='type = "product_added"').replace('type = "ev"\n', "") + (
    '"properties.cart_id" = "cart"\n"properties.product_id" = "sku"\n"properties.price" = "price"\n'
    '"properties.quantity" = "qty"\n"context.consent" = "consent"\n')
CART_HEADER = ["id", "at", "cookie", "cart", "sku", "price", "qty", "consent"]


@pytest.mark.parametrize(("price", "qty", "expected"), [
    ("299", "2", (299.0, 2)),
    (" 299.50 ", "2.0", (299.5, 2)),
    ("1e3", "1_000", (1000.0, 1000)),
    ("", "", (None, None)),  # empty cells are no value
])
def test_csv_strings_are_cast_to_the_schemas_types(tmp_path: Path, price: str, qty: str, expected: tuple[Any, Any]) -> None:
    out = _one(tmp_path, CART, CART_HEADER, ["e1", "2026-11-01 10:00:00", "c-1", "k-1", "P1", price, qty,
                                             '{"sms": true, "email": false}'])
    assert isinstance(out, Converted), out
    props = record.props(out.touchpoint)
    assert (props["price"], props["quantity"]) == expected
    assert out.touchpoint["context"]["consent"] == {"sms": True, "email": False}


@pytest.mark.parametrize(("price", "qty", "consent", "needle"), [
    ("12.5x", "1", "", "one.csv:2: column 'price' -> properties.price: '12.5x' is not a number"),
    ("1", "2.5", "", "one.csv:2: column 'qty' -> properties.quantity: '2.5' is not a whole number"),
    ("1", "99999999999", "", "column 'qty' -> properties.quantity: '99999999999' is out of range for an int"),
    ("nan", "1", "", "is not a finite number"),
    ("1", "1", "{sms", "column 'consent' -> context.consent: '{sms' is not JSON"),
])
def test_cast_errors_name_file_line_and_column(tmp_path: Path, price: str, qty: str, consent: str,
                                               needle: str) -> None:
    out = _one(tmp_path, CART, CART_HEADER, ["e1", "2026-11-01 10:00:00", "c-1", "k-1", "P1", price, qty, consent])
    assert isinstance(out, Failure)
    assert out.reason == "invalid_field" and needle in out.detail, out.detail


def test_rows_ingestion_would_reject_fail_with_its_reason(tmp_path: Path) -> None:
    header = ["id", "ev", "at", "cookie"]
    rows = [
        ["e1", "page_viewed", "2026-11-01 10:00:00", "guest"],  # junk identifier only
        ["e2", "page_viewed", "2099-01-01 00:00:00", "c-1"],  # after the import: not history
        ["", "page_viewed", "2026-11-01 10:00:00", "c-1"],
        ["e4", "page_viewed", "yesterday", "c-1"],
        ["e5", "product_added", "2026-11-01 10:00:00", "c-1"],  # no cart id
        ["e6", "page_viewed", "2020-01-01 00:00:00", "c-1"],  # years old: history may be
    ]
    path = write(tmp_path / "w.csv", csv_text(header, rows) + "e7,too,many,cells,here\n")
    outs = convert_file(path, loads(simple()))
    reasons = [(o.reason, o.detail.split(":")[1]) if isinstance(o, Failure) else "ok" for o in outs]
    assert reasons == [("no_identifier", "2"), ("event_time_future", "3"), ("missing_field", "4"),
                       ("invalid_field", "5"), ("missing_field", "6"), "ok", ("malformed_row", "8")]


def test_jsonl_whole_objects_nested_paths_and_bad_lines(tmp_path: Path) -> None:
    mapping = loads("""
source = "crm"
timezone = "Asia/Shanghai"
[columns]
event_id = "id"
type = "event"
timestamp = "ts"
channel = "meta.channel"
identifiers = "ids"
"identifiers.phone" = "contact.phone"
properties = "props"
""")
    lines = [
        {"id": 1, "event": "signed_up", "ts": "2026-11-01T10:00:00", "meta": {"channel": "app"},
         "ids": {"member_id": 123, "device_id": "d-1"}, "contact": {"phone": "13800138000"},
         "props": {"method": "sms_code", "is_new_member": True}},
        {"id": 2, "event": "ar_try_on", "ts": "2026-11-01T10:05:00", "meta": {"channel": "app"},
         "ids": {"device_id": "d-1"}, "props": {"seconds": 35, "liked": True}},
    ]
    path = write(tmp_path / "crm.jsonl.gz", jsonl_text(lines) + "{not json\n[1, 2]\n\n")
    outs = convert_file(path, mapping)
    signed, custom = (o.touchpoint for o in outs[:2] if isinstance(o, Converted))
    assert signed["event_id"] == "crm:1" and signed["channel"] == "app"
    assert signed["identifiers"]["member_id"] == "123"  # numbers in identifiers become text
    assert signed["identifiers"]["phone"].startswith(HASH_PREFIX)
    assert record.props(signed) == {"method": "sms_code", "is_new_member": True}
    assert record.props(custom) == {"event_name": "ar_try_on", "attributes": {"seconds": 35, "liked": True}}
    assert [(o.reason, o.detail.split(" ")[0]) for o in outs[2:] if isinstance(o, Failure)] == [
        ("invalid_json", "crm.jsonl.gz:3:"), ("invalid_json", "crm.jsonl.gz:4:")]


# --------------------------------------------------------------------------- event ids

NO_IDS = simple().replace('event_id = "id"\n', "") + '"properties.product_id" = "sku"\n'
ID_HEADER = ["ev", "at", "cookie", "sku"]
ID_ROWS = [
    ["product_viewed", "2026-11-01 10:00:00", "c-1", "P1"],
    ["product_viewed", "2026-11-01 10:00:00", "c-1", "P1"],  # the same row twice: two views
    ["product_viewed", "2026-11-01 10:00:00", "c-1", "P1"],
    ["product_viewed", "2026-11-01 10:01:00", "c-1", "P2"],
    ["page_viewed", "2026-11-01 10:02:00", "c-2", ""],
]


def _ids(path: Path, mapping: str = NO_IDS) -> list[str]:
    return [t["event_id"] for t in accepted(convert_file(path, loads(mapping)))]


def test_derived_ids_are_stable_across_row_order_and_re_exports(tmp_path: Path) -> None:
    ids = _ids(write(tmp_path / "a.csv", csv_text(ID_HEADER, ID_ROWS)))
    assert len(set(ids)) == len(ids) == 5  # identical rows stay distinct
    assert all(i.startswith("web:") for i in ids)
    assert _ids(write(tmp_path / "b.csv", csv_text(ID_HEADER, ID_ROWS))) == ids  # same file again
    shuffled = ID_ROWS[:]
    random.Random(3).shuffle(shuffled)
    # Re-exported: rows in another order, columns in another order, an extra column nobody maps.
    header = ["exported_at", "sku", "cookie", "at", "ev"]
    re_export = [["2026-12-01", r[3], r[2], r[1], r[0]] for r in shuffled]
    assert set(_ids(write(tmp_path / "c.csv", csv_text(header, re_export)))) == set(ids)
    assert set(_ids(write(tmp_path / "d.jsonl", jsonl_text([dict(zip(ID_HEADER, r, strict=True)) for r in shuffled])))) == set(ids)
    # Another source names other events.
    assert not set(_ids(write(tmp_path / "e.csv", csv_text(ID_HEADER, ID_ROWS)), NO_IDS.replace('"web"', '"erp"', 1))) & set(ids)
    # One row fewer: the others keep their ids.
    assert set(_ids(write(tmp_path / "f.csv", csv_text(ID_HEADER, ID_ROWS[1:])))) < set(ids)


def test_mapped_ids_are_prefixed_by_the_source_unless_kept(tmp_path: Path) -> None:
    header, row = ["id", "ev", "at", "cookie"], ["e-9", "page_viewed", "2026-11-01 10:00:00", "c-1"]
    assert _ids(write(tmp_path / "a.csv", csv_text(header, [row])), simple()) == ["web:e-9"]
    kept = simple(extra="keep_event_ids = true")
    assert _ids(write(tmp_path / "b.csv", csv_text(header, [row])), kept) == ["e-9"]


# --------------------------------------------------------------------------- progress


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_progress_redraws_a_few_times_a_second_on_a_terminal_and_once_off_it() -> None:
    clock, out = _Clock(), io.StringIO()
    bar = Progress(out, "importing r.csv", tty=True, monotonic=clock)
    for i in range(1000):  # 1000 rows over 2 seconds
        clock.t = i * 0.002
        bar.update(i + 1, i / 1000)
    assert 5 <= bar.redraws <= 9
    bar.finish(1000)
    assert out.getvalue().count("\r") == bar.redraws + 1 and out.getvalue().endswith("\n")
    assert "100.0%" in out.getvalue().splitlines()[-1] and "1,000 rows" in out.getvalue()

    quiet = io.StringIO()
    bar = Progress(quiet, "importing r.csv", tty=False, monotonic=clock)
    for i in range(1000):
        bar.update(i + 1, i / 1000)
    assert quiet.getvalue() == ""
    bar.finish(1000)
    assert quiet.getvalue().count("\n") == 1 and "\r" not in quiet.getvalue()


def test_dry_run_needs_no_broker(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path / "var"), kafka_bootstrap="127.0.0.1:1")
    path = write(tmp_path / "r.csv", csv_text(HEADER, RECEIPTS + [BAD_RECEIPT]))
    mapping = write(tmp_path / "pos.toml", POS_MAPPING)
    err = io.StringIO()
    result = run_import(settings, path, mapping, dry_run=True, clock=ManualClock(IMPORTED_AT), stderr=err)
    assert (result.rows, result.accepted, dict(result.rejected)) == (5, 4, {"invalid_field": 1})
    assert "dry run" in result.summary() and result.file_sha256 in result.summary()
    assert err.getvalue().count("\n") == 1  # not a terminal: the final progress line only


# --------------------------------------------------------------------------- on the embedded broker


def _topic_bytes(settings: Settings, prefix: str) -> list[bytes]:
    """Every key, value and header of every record of every topic whose name starts with ``prefix``."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    topics = {name: len(meta.partitions) for name, meta in admin.list_topics(timeout=10).topics.items()
              if name.startswith(prefix)}
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"{prefix}-bytes",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    ends = {}
    for topic, n in topics.items():
        for p in range(n):
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[(topic, p)] = high
    c.assign([TopicPartition(t, p, OFFSET_BEGINNING) for (t, p) in ends])
    out: list[bytes] = []
    position: dict[tuple[str, int], int] = {}
    deadline = time.monotonic() + 60
    while any(position.get(tp, 0) < end for tp, end in ends.items()):
        assert time.monotonic() < deadline, "could not read every topic to its end"
        for m in c.consume(1000, timeout=0.5):
            tp = (m.topic() or "", m.partition() or 0)
            if m.error() is not None:
                if m.error().code() == KafkaError._PARTITION_EOF:  # compacted topics may have gaps
                    position[tp] = max(position.get(tp, 0), m.offset() or 0)
                continue
            position[tp] = (m.offset() or 0) + 1
            out += [m.key() or b"", m.value() or b""] + [v or b"" for _, v in (m.headers() or [])]
    c.close()
    assert len(out) > 0
    return out


def _end_offsets(settings: Settings, topic: str, partitions: int) -> int:
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "ends"})
    try:
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions))
    finally:
        c.close()


def _enriched_records(settings: Settings) -> list[dict[str, Any]]:
    """Every record on the enriched topic (repeats included)."""
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "enriched-all",
                  "enable.auto.commit": False})
    parts = range(ENRICHED.partitions(settings))
    ends = {p: c.get_watermark_offsets(TopicPartition(ENRICHED.name(settings), p), timeout=10)[1] for p in parts}
    c.assign([TopicPartition(ENRICHED.name(settings), p, OFFSET_BEGINNING) for p in parts if ends[p] > 0])
    out, seen, deadline = [], dict.fromkeys(parts, 0), time.monotonic() + 30
    while any(seen[p] < ends[p] for p in parts):
        assert time.monotonic() < deadline
        for m in c.consume(1000, timeout=0.5):
            if m.error() is None:
                seen[m.partition() or 0] = (m.offset() or 0) + 1
                out.append(avro.decode_as(avro.ENRICHED, m.value() or b""))
    c.close()
    return out


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.to_env()}
    return subprocess.run([sys.executable, "-m", "streams.cli", "import", *args], env=env, capture_output=True,
                          text=True, timeout=180)


def _wait(reader: TopicReader, stack: Any, done: Callable[[Any], bool]) -> Any:
    return stack.wait_for(reader, done, timeout_s=120)


@pytest.mark.e2e
def test_pos_receipts_import_once_with_hashed_phones_and_re_imports_add_nothing(
        stack_factory: Callable[..., Any], tmp_path: Path) -> None:
    stack = stack_factory(workers=1, sink=False)
    s: Settings = stack.settings
    path = write(tmp_path / "receipts-2026-11.csv.gz", csv_text(HEADER, RECEIPTS + [BAD_RECEIPT]))
    mapping = write(tmp_path / "pos.toml", POS_MAPPING)
    err = io.StringIO()
    result = run_import(s, path, mapping, clock=ManualClock(IMPORTED_AT), stderr=err)
    assert (result.rows, result.accepted, dict(result.rejected)) == (5, 4, {"invalid_field": 1})
    assert "import of receipts-2026-11.csv.gz" in result.summary() and "100.0%" in err.getvalue()

    reader = TopicReader(s)
    tally = _wait(reader, stack, lambda t: len(t.event_ids) == 4 and len(t.dead_letters) == 1)
    enriched = {r["touchpoint"]["event_id"]: r["touchpoint"] for r in _enriched_records(s)}
    assert sorted(enriched) == [f"pos-receipts:R-000{i}" for i in range(1, 5)]
    salt = policy_from(s).salt
    for row in RECEIPTS:
        tp = enriched[f"pos-receipts:{row[0]}"]
        assert tp["historical"] is True and tp["receive_time_ms"] == IMPORTED_AT
        assert tp["event_time_ms"] == shanghai_ms(row[6].replace(" ", "T"))  # the original time
        digits = "".join(ch for ch in row[3] if ch.isdigit())
        assert tp["identifiers"]["phone"] == hashed("phone", "+86" + digits[-11:], salt)
    # Two spellings of one phone and one pos card: one person.
    assert tally.person_of_event["pos-receipts:R-0001"] == tally.person_of_event["pos-receipts:R-0003"]

    (dl_id, reason), = tally.dead_letters.items()
    letter = tally.dead_letter_records[dl_id]
    assert reason == "invalid_field" and "receipts-2026-11.csv.gz:6: column 'amount'" in letter["detail"]
    assert letter["source_topic"] == f"import/pos-receipts/{result.file_sha256[:16]}"
    assert (letter["source_partition"], letter["source_offset"]) == (-1, 5)
    opened = Sealer.from_settings(s).open(letter["nonce"], letter["payload_encrypted"], dl_id.encode())
    assert json.loads(opened) == dict(zip(HEADER, BAD_RECEIPT, strict=True))  # the original row, sealed

    # No raw phone number in any byte of any topic of this stack (changelogs included).
    blob = b"\n".join(_topic_bytes(s, s.topic_prefix))
    for phone in RAW_PHONES:
        assert phone.encode() not in blob, phone

    # The ledger remembers the import...
    entry = ledger.find(s, ledger.import_key(result.file_sha256, loads(POS_MAPPING).digest))
    assert entry is not None and (entry["rows"], entry["accepted"], entry["rejected_by_reason"]) == (
        5, 4, {"invalid_field": 1})

    # ...so importing the same file again (through the command) sends nothing.
    raw_before = _end_offsets(s, RAW.name(s), s.partitions)
    dlq_before = _end_offsets(s, DEAD_LETTERS.name(s), s.partitions)
    again = _cli(s, str(path), "--mapping", str(mapping))
    assert again.returncode == 0, again.stderr
    assert "already imported on" in again.stdout and "nothing to do" in again.stdout
    assert _end_offsets(s, RAW.name(s), s.partitions) == raw_before
    assert _end_offsets(s, DEAD_LETTERS.name(s), s.partitions) == dlq_before

    # --force sends it all again; the pipeline drops the repeated event ids.
    worker = next(c for c in stack.supervisor.children if c.name.startswith("worker"))
    forced = _cli(s, str(path), "--mapping", str(mapping), "--force")
    assert forced.returncode == 0, forced.stderr
    assert "forced" in forced.stdout
    assert _end_offsets(s, RAW.name(s), s.partitions) == raw_before + 4
    deadline = time.monotonic() + 120
    while scrape_total(worker.port, "touchline_duplicates_dropped_total") < 4:
        assert time.monotonic() < deadline, "the forced re-import was never dropped as duplicates"
        assert not stack.supervisor.check_alive()
        time.sleep(0.1)
    records = _enriched_records(s)
    assert len(records) == 4 and {r["touchpoint"]["event_id"] for r in records} == set(enriched)
    reader.close()


@pytest.mark.e2e
def test_every_example_touchpoint_goes_through_the_importer_unchanged(stack_factory: Callable[..., Any],
                                                                       tmp_path: Path) -> None:
    stack = stack_factory(workers=1, sink=False)
    s: Settings = stack.settings
    examples = [avro.decode_as(avro.TOUCHPOINT, avro.encode(avro.TOUCHPOINT, tp)) for tp in current_touchpoints()]
    path = write(tmp_path / "examples.jsonl", jsonl_text([jsonform.to_json(tp) for tp in examples]))
    mapping = write(tmp_path / "json-form.toml", """
source = "examples"
timezone = "Asia/Shanghai"
keep_event_ids = true

[columns]
event_id = "event_id"
type = "type"
event_time_ms = "event_time_ms"
channel = "channel"
source_app = "source_app"
store_id = "store_id"
guide_id = "guide_id"
referrer_id = "referrer_id"
identifiers = "identifiers"
context = "context"
properties = "properties"
""")
    imported_at = max(tp["event_time_ms"] for tp in examples) + 86_400_000
    result = run_import(s, path, mapping, clock=ManualClock(imported_at), stderr=io.StringIO())
    assert (result.rows, result.accepted, dict(result.rejected)) == (len(examples), len(examples), {})

    reader = TopicReader(s)
    _wait(reader, stack, lambda t: len(t.event_ids) == len(examples))
    reader.close()
    got = {r["touchpoint"]["event_id"]: r["touchpoint"] for r in _enriched_records(s)}
    policy = policy_from(s)
    for tp in examples:
        expected = clean(tp, policy)
        assert not isinstance(expected, Rejected)
        assert got[tp["event_id"]] == {**expected, "historical": True, "receive_time_ms": imported_at}, tp["type"]


@pytest.mark.e2e
def test_an_imported_cart_never_fires_a_cart_abandon_trigger(stack_factory: Callable[..., Any],
                                                              tmp_path: Path) -> None:
    stack = stack_factory(workers=1, sink=False)
    s: Settings = stack.settings
    path = write(tmp_path / "web.csv", csv_text(["id", "at", "cookie", "cart", "sku", "price", "qty", "consent"],
                                                [["h-1", "2026-11-01 08:00:00", "c-hist", "k-hist", "P1", "299", "1", ""]]))
    mapping = write(tmp_path / "web.toml", CART)
    added_ms = shanghai_ms("2026-11-01T08:00:00")
    result = run_import(s, path, mapping, clock=ManualClock(IMPORTED_AT), stderr=io.StringIO())
    assert result.accepted == 1
    live = touchpoint("live-1", "product_added", added_ms, identifiers={"anonymous_id": "c-live"},
                      properties={"cart_id": "k-live", "product_id": "P1", "price": 299.0, "quantity": 1})
    stack.produce([encoded(live)])  # the same add, live
    stack.tick(added_ms + int(s.cart_abandon_delay_s * 1000) + 1)  # past both carts' due time

    reader = TopicReader(s)
    tally = _wait(reader, stack, lambda t: len(t.event_ids) == 2 and len(t.triggers) >= 1)
    reader.poll(timeout=1.0)
    reader.close()
    assert [t["correlation_key"] for t in tally.triggers.values()] == ["k-live"]
    assert {r["touchpoint"]["event_id"]: r["touchpoint"]["historical"] for r in _enriched_records(s)} == {
        "web:h-1": True, "live-1": False}


def test_import_result_summary_for_an_already_imported_file() -> None:
    entry = ledger.entry(file_sha256="ab" * 32, mapping_sha256="cd" * 32, file_name="r.csv", file_bytes=10,
                         source="pos", imported_at_ms=T0, rows=5, accepted=4, rejected_by_reason={"x": 1},
                         forced=False)
    assert entry["import_key"] == f"{'ab' * 32}:{'cd' * 32}" and entry["rejected"] == 1
    assert avro.decode_as(IMPORTS_LEDGER.schema, ledger.encode(entry)[1]) == entry
    text = ImportResult("r.csv", "ab" * 32, "pos", already=entry).summary()
    assert text.startswith("r.csv: already imported on 2026-10-31 16:00:00 UTC") and "nothing to do" in text


def test_the_readme_worked_example_imports_as_it_says(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Importing history", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```")[1::2]  # the fenced blocks' contents
    csv_block = next(b for b in blocks if b.startswith("\nreceipt_no,"))
    toml_block = next(b for b in blocks if b.startswith("toml\n"))
    path = write(tmp_path / "pos-receipts-2026-11.csv", csv_block.lstrip("\n"))
    mapping = write(tmp_path / "pos-receipts.toml", toml_block[len("toml\n"):])
    result = run_import(Settings(data_dir=str(tmp_path / "var")), path, mapping, dry_run=True,
                        clock=ManualClock(IMPORTED_AT), stderr=io.StringIO())
    assert (result.rows, result.accepted, dict(result.rejected)) == (5, 4, {"invalid_field": 1})
    assert result.first_rejections == ["invalid_field: pos-receipts-2026-11.csv:6: column 'amount' -> "
                                       "properties.total: '12.5x' is not a number"]
    assert "pos-receipts-2026-11.csv:6: column 'amount' -> properties.total: '12.5x' is not a number" in section
