"""Reference data: loader file parsing, lookups, enrich, simulated reference files, and
``touchline load`` into real compacted topics read back by the reader and by real Faust workers."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streams import avro
from streams.kafka.broker import free_port
from streams.kafka.clients import producer
from streams.reference.enrich import enrich
from streams.reference.loader import load
from streams.reference.reader import ReferenceReader
from streams.reference.rows import KINDS, FileFormatError, parse_file, spend_key, write_file
from streams.reference.view import ReferenceData, campaign_phase, day_of
from streams.settings import Settings
from streams.simulate.journeys import PRODUCTS
from streams.simulate.reference import STORES, generate_reference, write_reference_files
from streams.simulate.traffic import START_MS, SimConfig, generate
from streams.tally import TopicReader
from streams.topics import RAW, REFERENCE_TOPICS, TopicSpec
from tests.conftest import T0, encoded, touchpoint

TOUCHLINE = Path(sys.executable).with_name("touchline")


def write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def errors_of(path: Path, kind: str) -> list[str]:
    return [str(e) for e in parse_file(path, kind).errors]


STORES_CSV = """store_id,name,city,latitude,longitude,opened_on,closed_on
S001,Jing'an flagship,Shanghai,31.2286,121.4479,2019-09-28,
S002,"Sanlitun, Taikoo Li",Beijing,39.9375,116.4550,2021-05-01,2026-01-31
"""

# --------------------------------------------------------------------------- parsing: good rows


def test_store_csv_rows_become_records(tmp_path: Path) -> None:
    parsed = parse_file(write(tmp_path / "stores.csv", STORES_CSV), "stores")
    assert parsed.errors == []
    assert [(r.line, r.key) for r in parsed.rows] == [(2, "S001"), (3, "S002")]
    assert parsed.rows[1].record == {
        "store_id": "S002", "name": "Sanlitun, Taikoo Li", "city": "Beijing", "latitude": 39.9375,
        "longitude": 116.455, "opened_on": "2021-05-01", "closed_on": "2026-01-31"}
    assert parsed.rows[0].record["closed_on"] is None


def test_product_rows_csv_and_jsonl_agree(tmp_path: Path) -> None:
    csv_text = ("product_id,name,category_path,price,currency,new_arrival,tags,launched_on\n"
                "P1,Cloud Runner,women/shoes/sneakers,599,CNY,yes,limited|couple,2026-10-25\n"
                "P2,Serum,beauty/skincare/serum,299.5,CNY,false,,\n")
    jsonl_text = (
        '{"product_id": "P1", "name": "Cloud Runner", "category_path": "women/shoes/sneakers", "price": 599,'
        ' "currency": "CNY", "new_arrival": true, "tags": ["limited", "couple"], "launched_on": "2026-10-25"}\n'
        "\n"
        '{"product_id": "P2", "name": "Serum", "category_path": "beauty/skincare/serum", "price": "299.5",'
        ' "currency": "CNY", "new_arrival": false, "launched_on": null}\n')
    a = parse_file(write(tmp_path / "products.csv", csv_text), "products")
    b = parse_file(write(tmp_path / "products.jsonl", jsonl_text), "products")
    assert a.errors == b.errors == []
    assert [r.record for r in a.rows] == [r.record for r in b.rows]
    assert a.rows[0].record == {"product_id": "P1", "name": "Cloud Runner", "category_path": "women/shoes/sneakers",
                                "price": 599.0, "currency": "CNY", "new_arrival": True, "tags": ["limited", "couple"],
                                "launched_on": "2026-10-25"}
    assert a.rows[1].record["tags"] == [] and a.rows[1].record["launched_on"] is None
    assert [r.line for r in b.rows] == [1, 3]  # blank lines are skipped but counted


def test_calendar_and_spend_rows(tmp_path: Path) -> None:
    cal = parse_file(write(tmp_path / "calendar.jsonl",
                           '{"campaign_id": "double11", "name": "Double 11", "warmup_starts_on": "2026-10-20", '
                           '"starts_on": "2026-10-31", "ends_on": "2026-11-11", "channels": "web|sms"}\n'), "calendar")
    assert cal.errors == [] and cal.rows[0].record["channels"] == ["web", "sms"]
    spend = parse_file(write(tmp_path / "spend.csv",
                             "day,channel,campaign_id,amount,currency,impressions,clicks,leads\n"
                             "2026-11-01,wechat_oa,double11,12800.50,CNY,250000,4100,380\n"
                             "2026-11-01,wechat_oa,,900,CNY,,,\n"), "spend")
    assert spend.errors == []
    assert [r.key for r in spend.rows] == ["2026-11-01|wechat_oa|double11", "2026-11-01|wechat_oa|"]
    assert spend.rows[1].record == {"day": "2026-11-01", "channel": "wechat_oa", "campaign_id": None, "amount": 900.0,
                                    "currency": "CNY", "impressions": None, "clicks": None, "leads": None}
    assert spend_key("2026-11-01", "web", None) == "2026-11-01|web|"


@pytest.mark.parametrize("name", ["stores.csv.gz", "stores.jsonl.gz"])
def test_gzip_files(tmp_path: Path, name: str) -> None:
    if name.endswith(".csv.gz"):
        text = STORES_CSV
    else:
        text = "".join(json.dumps(r.record) + "\n" for r in parse_file(write(tmp_path / "s.csv", STORES_CSV), "stores").rows)
    parsed = parse_file(write(tmp_path / name, text), "stores")
    assert parsed.errors == [] and [r.key for r in parsed.rows] == ["S001", "S002"]


def test_write_file_is_the_inverse_of_parse_file(tmp_path: Path) -> None:
    data = generate_reference(SimConfig(persons=20, events=100))
    for kind, records in data.items():
        for name in (f"{kind}.csv", f"{kind}.jsonl.gz"):
            parsed = parse_file(write_file(tmp_path / name, kind, records), kind)
            assert parsed.errors == [] and [r.record for r in parsed.rows] == records, name


# --------------------------------------------------------------------------- parsing: bad rows

STORE_HEADER = "store_id,name,city,latitude,longitude,opened_on,closed_on\n"


@pytest.mark.parametrize(("row", "message"), [
    ("S9,X,Shanghai,abc,121.4,2020-01-01,", "stores.csv:2: latitude 'abc' is not a number"),
    ("S9,X,Shanghai,91,121.4,2020-01-01,", "stores.csv:2: latitude '91' is outside -90..90"),
    ("S9,X,Shanghai,31.2,-181,2020-01-01,", "stores.csv:2: longitude '-181' is outside -180..180"),
    ("S9,X,Shanghai,31.2,nan,2020-01-01,", "stores.csv:2: longitude 'nan' is not a finite number"),
    ("S9,X,Shanghai,31.2,121.4,2020-13-01,", "stores.csv:2: opened_on '2020-13-01' is not a date (YYYY-MM-DD)"),
    ("S9,X,Shanghai,31.2,121.4,01/02/2020,", "stores.csv:2: opened_on '01/02/2020' is not a date (YYYY-MM-DD)"),
    ("S9,X,,31.2,121.4,2020-01-01,", "stores.csv:2: city is missing"),
    ("S9,X,Shanghai,31.2,121.4,2020-01-01,2019-12-31",
     "stores.csv:2: closed_on 2019-12-31 is before opened_on 2020-01-01"),
    ("S9,X,Shanghai,31.2,121.4", "stores.csv:2: 5 cells, the header has 7"),
    (",,Shanghai,x,121.4,2020-01-01,",
     "stores.csv:2: store_id is missing; name is missing; latitude 'x' is not a number"),
])
def test_bad_store_rows(tmp_path: Path, row: str, message: str) -> None:
    assert errors_of(write(tmp_path / "stores.csv", STORE_HEADER + row + "\n"), "stores") == [message]


PRODUCT_HEADER = "product_id,name,category_path,price,currency,new_arrival,tags,launched_on\n"


@pytest.mark.parametrize(("row", "message"), [
    ("P1,X,women//sneakers,1,CNY,true,,", "products.csv:2: category_path 'women//sneakers' is not a path like women/shoes/sneakers"),
    ("P1,X,women/shoes,-1,CNY,true,,", "products.csv:2: price '-1' is negative"),
    ("P1,X,women/shoes,1,yuan,true,,", "products.csv:2: currency 'yuan' is not an ISO 4217 code (e.g. CNY)"),
    ("P1,X,women/shoes,1,CNY,maybe,,", "products.csv:2: new_arrival 'maybe' is not true or false"),
])
def test_bad_product_rows(tmp_path: Path, row: str, message: str) -> None:
    assert errors_of(write(tmp_path / "products.csv", PRODUCT_HEADER + row + "\n"), "products") == [message]


@pytest.mark.parametrize(("obj", "message"), [
    ({"campaign_id": "c", "name": "C", "starts_on": "2026-11-11", "ends_on": "2026-11-01"},
     "calendar.jsonl:1: ends_on 2026-11-01 is before starts_on 2026-11-11"),
    ({"campaign_id": "c", "name": "C", "starts_on": "2026-11-01", "ends_on": "2026-11-11",
      "warmup_starts_on": "2026-11-02"}, "calendar.jsonl:1: starts_on 2026-11-01 is before warmup_starts_on 2026-11-02"),
    ({"campaign_id": "c", "name": "C", "starts_on": "2026-11-01", "ends_on": "2026-11-11", "channels": [1]},
     "calendar.jsonl:1: channels [1] is not a list of text"),
    ({"campaign_id": "c", "name": "C", "starts_on": 20261101, "ends_on": "2026-11-11"},
     "calendar.jsonl:1: starts_on 20261101 is not a date (YYYY-MM-DD)"),
    ({"campaign_id": "c", "name": "C", "starts_on": "2026-11-01", "ends_on": "2026-11-11", "budget": 5},
     "calendar.jsonl:1: unknown field(s) 'budget' (fields of calendar: campaign_id, name, starts_on, ends_on, "
     "warmup_starts_on, channels)"),
])
def test_bad_calendar_rows(tmp_path: Path, obj: dict[str, Any], message: str) -> None:
    assert errors_of(write(tmp_path / "calendar.jsonl", json.dumps(obj) + "\n"), "calendar") == [message]


@pytest.mark.parametrize(("row", "message"), [
    ("2026-11-01,web,,100,CNY,1.5,,", "spend.csv:2: impressions '1.5' is not a whole number"),
    ("2026-11-01,web,,100,CNY,-3,,", "spend.csv:2: impressions '-3' is not a whole number"),
    ("2026-11-01,Web Ads,,100,CNY,,,", "spend.csv:2: channel 'Web Ads' is not a lowercase name (letters, digits, _ or -)"),
    ("2026-11-01,web,a|b,100,CNY,,,", "spend.csv:2: campaign_id 'a|b' contains '|'"),
    ("2026-11-01,web,,,CNY,,,", "spend.csv:2: amount is missing"),
])
def test_bad_spend_rows(tmp_path: Path, row: str, message: str) -> None:
    header = "day,channel,campaign_id,amount,currency,impressions,clicks,leads\n"
    assert errors_of(write(tmp_path / "spend.csv", header + row + "\n"), "spend") == [message]


def test_jsonl_lines_that_are_not_records(tmp_path: Path) -> None:
    path = write(tmp_path / "stores.jsonl", '{"store_id": \n[1, 2]\n')
    assert errors_of(path, "stores") == ["stores.jsonl:1: not JSON: Expecting value at column 14",
                                         "stores.jsonl:2: not a JSON object but list"]


def test_repeated_key_names_the_first_line_and_the_good_rows_survive(tmp_path: Path) -> None:
    text = STORES_CSV + "S001,Again,Shanghai,31,121,2020-01-01,\n"
    parsed = parse_file(write(tmp_path / "stores.csv", text), "stores")
    assert [str(e) for e in parsed.errors] == ["stores.csv:4: key 'S001' repeats line 2"]
    assert [r.key for r in parsed.rows] == ["S001", "S002"]


def test_line_numbers_follow_quoted_multiline_cells_and_blank_lines(tmp_path: Path) -> None:
    text = STORE_HEADER + 'S1,"two\nline name",Shanghai,31,121,2020-01-01,\n\nS2,X,Shanghai,oops,121,2020-01-01,\n'
    assert errors_of(write(tmp_path / "stores.csv", text), "stores") == ["stores.csv:5: latitude 'oops' is not a number"]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("stores.csv", "store_id,name,town,latitude,longitude,opened_on\n",
     "stores.csv:1: unknown column(s) 'town'; missing column(s) 'city' (columns of stores: store_id, name, city, "
     "latitude, longitude, opened_on, closed_on)"),
    ("stores.txt", STORES_CSV, "stores.txt: unknown format; name it .csv or .jsonl (optionally .gz)"),
])
def test_whole_file_problems(tmp_path: Path, name: str, text: str, message: str) -> None:
    with pytest.raises(FileFormatError) as info:
        parse_file(write(tmp_path / name, text), "stores")
    assert str(info.value) == message


def test_not_gzip_or_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "stores.csv.gz").write_text(STORES_CSV)
    with pytest.raises(FileFormatError, match="stores.csv.gz: cannot read"):
        parse_file(tmp_path / "stores.csv.gz", "stores")
    (tmp_path / "stores.csv").write_bytes(STORE_HEADER.encode() + b"S1,\xff\xfe,Shanghai,31,121,2020-01-01,\n")
    with pytest.raises(FileFormatError, match="stores.csv: cannot read"):
        parse_file(tmp_path / "stores.csv", "stores")


def test_rejected_rows_withhold_the_whole_file_without_touching_kafka(tmp_path: Path) -> None:
    path = write(tmp_path / "stores.csv", STORES_CSV + "S3,X,Shanghai,abc,121,2020-01-01,\n")
    result = load(Settings(kafka_bootstrap="127.0.0.1:1"), path, "stores")  # nothing listens there
    assert result.withheld and (result.rows, result.loaded, result.rejected) == (2, 0, 1)
    assert result.summary().splitlines() == [
        "stores.csv -> touchline.reference.stores: 0 loaded, 1 rejected",
        "  stores.csv:4: latitude 'abc' is not a number",
        "nothing loaded: fix the rejected rows, or pass --allow-errors to load the 2 valid row(s)",
    ]


# --------------------------------------------------------------------------- lookups and enrich

CAMPAIGN = {"campaign_id": "double11", "name": "Double 11", "warmup_starts_on": "2026-10-20",
            "starts_on": "2026-10-31", "ends_on": "2026-11-11", "channels": []}
PRODUCT = {"product_id": "P1", "name": "Runner", "category_path": "women/shoes/sneakers", "price": 599.0,
           "currency": "CNY", "new_arrival": True, "tags": [], "launched_on": None}
STORE = {"store_id": "S1", "name": "A", "city": "Shanghai", "latitude": 31.0, "longitude": 121.0,
         "opened_on": "2020-01-01", "closed_on": None}


def ref_data() -> ReferenceData:
    closed = {**STORE, "store_id": "S2", "opened_on": "2019-01-01", "closed_on": "2026-01-01"}
    elsewhere = {**STORE, "store_id": "S3", "city": "Beijing"}
    spend = {"day": "2026-11-01", "channel": "web", "campaign_id": None, "amount": 10.0, "currency": "CNY",
             "impressions": None, "clicks": 3, "leads": None}
    return ReferenceData.from_records(stores=[STORE, closed, elsewhere], products=[PRODUCT],
                                      calendar=[CAMPAIGN, {**CAMPAIGN, "campaign_id": "618", "starts_on": "2026-06-01",
                                                           "ends_on": "2026-06-18", "warmup_starts_on": None}],
                                      spend=[spend])


def test_lookups() -> None:
    ref = ref_data()
    assert ref.product("P1") == PRODUCT and ref.product("nope") is None
    assert ref.store("S1") == STORE
    assert [s["store_id"] for s in ref.stores_in("shanghai ")] == ["S1", "S2"]
    assert [s["store_id"] for s in ref.stores_in("Shanghai", open_on="2026-11-01")] == ["S1"]
    assert [c["campaign_id"] for c in ref.campaigns_on("2026-10-25")] == ["double11"]
    assert ref.campaigns_on("2026-10-25", warmup=False) == []
    assert [c["campaign_id"] for c in ref.campaigns_on("2026-06-18")] == ["618"]
    assert ref.campaign("double11") == CAMPAIGN
    assert ref.spend("2026-11-01", "web")["clicks"] == 3  # type: ignore[index]
    assert ref.spend("2026-11-01", "web", "double11") is None
    assert [campaign_phase(CAMPAIGN, d) for d in ("2026-10-19", "2026-10-20", "2026-10-30", "2026-10-31",
                                                  "2026-11-11", "2026-11-12")] == \
        [None, "warmup", "warmup", "sale", "sale", None]
    assert day_of(START_MS) == "2026-11-01" and day_of(START_MS - 1) == "2026-10-31"
    assert ref.count("stores") == 3 and len(ref.all("calendar")) == 2


def test_decoded_records_are_cached_until_the_bytes_change() -> None:
    raw = {k: {} for k in KINDS}  # type: dict[str, dict[bytes, bytes]]
    ref = ReferenceData(raw)
    raw["products"][b"P1"] = avro.encode(avro.PRODUCT, PRODUCT)
    first = ref.product("P1")
    assert first is ref.product("P1")
    raw["products"][b"P1"] = avro.encode(avro.PRODUCT, {**PRODUCT, "price": 499.0})
    assert ref.product("P1")["price"] == 499.0  # type: ignore[index]
    del raw["products"][b"P1"]
    assert ref.product("P1") is None


def test_enrich_fills_missing_product_facts_in_flat_and_typed_properties() -> None:
    ref = ref_data()
    flat = {"store_id": None, "context": None,
            "properties": {"product_id": "P1", "category": None, "price": None, "currency": None, "quantity": 1}}
    out = enrich(flat, ref)
    assert out["properties"] == {"product_id": "P1", "category": "women/shoes/sneakers", "price": 599.0,
                                 "currency": "CNY", "quantity": 1}
    assert flat["properties"]["price"] is None  # the input is untouched
    typed = {"store_id": None, "context": {"city": "Wuhan"}, "properties": {
        "product": None,
        "cart": {"cart_id": "c", "product_id": "P1", "category": "kept", "price": None, "currency": "USD"},
        "order": {"order_id": "o", "products": [{"product_id": "P1", "category": None, "price": 1.0},
                                                {"product_id": "P404", "category": None, "price": None}]}}}
    out = enrich(typed, ref)
    cart, lines = out["properties"]["cart"], out["properties"]["order"]["products"]
    assert (cart["category"], cart["price"]) == ("kept", None)  # never overwrite; no mixed currencies
    assert lines[0] == {"product_id": "P1", "category": "women/shoes/sneakers", "price": 1.0}
    assert lines[1] == {"product_id": "P404", "category": None, "price": None}  # unknown product


def test_enrich_fills_city_from_store_and_leaves_complete_events_alone() -> None:
    ref = ref_data()
    out = enrich({"store_id": "S3", "context": None, "properties": None}, ref)
    assert out["context"] == {"city": "Beijing"}
    out = enrich({"store_id": "S3", "context": {"city": None, "campaign": "x"}, "properties": None}, ref)
    assert out["context"] == {"city": "Beijing", "campaign": "x"}
    complete = {"store_id": "S3", "context": {"city": "Wuhan"}, "properties": None}
    assert enrich(complete, ref) is complete
    unknown = {"store_id": "S404", "context": None, "properties": None}
    assert enrich(unknown, ref) is unknown


# --------------------------------------------------------------------------- simulated reference data


def test_simulated_reference_matches_the_simulated_traffic() -> None:
    config = SimConfig(seed=11, persons=80, events=3000)
    data = generate_reference(config)
    assert data == generate_reference(config)  # seeded
    ref = ReferenceData.from_records(**data)
    traffic = generate(config)
    events = [avro.decode_as(avro.TOUCHPOINT, r.value) for r in traffic.records if r.kind in ("event", "late")]
    assert len(data["products"]) == PRODUCTS and len(data["stores"]) == STORES
    stores_used = {e["store_id"] for e in events if e.get("store_id")}
    assert stores_used and all(ref.store(s) is not None for s in stores_used)
    seen = 0
    for e in events:
        for line in _product_lines(e):
            product = ref.product(line["product_id"])
            assert product is not None, line
            assert (product["category_path"], product["price"]) == (line["category"], line["price"])
            seen += 1
        campaign = (e.get("context") or {}).get("campaign")
        if campaign:
            assert ref.campaign(campaign) is not None
            assert campaign_phase(ref.campaign(campaign), day_of(e["event_time_ms"])) is not None  # type: ignore[arg-type]
    assert seen
    days = {day_of(e["event_time_ms"]) for e in events}
    assert days <= {s["day"] for s in data["spend"]}
    for s in data["spend"]:
        assert 0 <= s["leads"] <= s["clicks"] <= s["impressions"]


def _product_lines(event: dict[str, Any]) -> list[dict[str, Any]]:
    """Product-describing dicts of a simulated event, flat or typed properties (as enrich reads them)."""
    from streams.reference.enrich import product_lines

    return [line for line in product_lines(event)
            if line.get("product_id") and line.get("category") is not None and line.get("price") is not None]


def test_write_reference_files_load_cleanly(tmp_path: Path) -> None:
    paths = write_reference_files(tmp_path, SimConfig(persons=20, events=100), names={"spend": "spend.jsonl.gz"})
    assert {k: p.name for k, p in paths.items()} == {"stores": "stores.csv", "products": "products.csv",
                                                     "calendar": "calendar.jsonl", "spend": "spend.jsonl.gz"}
    for kind, path in paths.items():
        parsed = parse_file(path, kind)
        assert parsed.errors == [] and parsed.rows, kind


# --------------------------------------------------------------------------- on the embedded broker


def run_load(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.to_env()}
    return subprocess.run([str(TOUCHLINE), "load", *args], env=env, capture_output=True, text=True, timeout=120)


def read_topic(settings: Settings, spec: TopicSpec) -> list[tuple[bytes, bytes]]:
    """Every record of a topic, from the beginning to its end now."""
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "test-read", "enable.auto.commit": False})
    try:
        tps = [TopicPartition(spec.name(settings), p, OFFSET_BEGINNING) for p in range(spec.partitions(settings))]
        ends = {tp.partition: c.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
        c.assign(tps)
        out: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + 30
        done = {p for p, end in ends.items() if end == 0}
        while len(done) < len(tps):
            assert time.monotonic() < deadline, "topic not read to its end"
            for msg in c.consume(500, 0.2):
                assert msg.error() is None, msg.error()
                out.append((msg.key(), msg.value()))
                if msg.offset() + 1 >= ends[msg.partition()]:
                    done.add(msg.partition())
        return out
    finally:
        c.close()


@pytest.mark.e2e
def test_touchline_load_all_kinds_read_back_and_reload_is_idempotent(stack_factory: Callable[..., Any],
                                                                     tmp_path: Path) -> None:
    stack = stack_factory(workers=0, sink=False)
    s = stack.settings
    config = SimConfig(seed=3, persons=50, events=500)
    expected = generate_reference(config)
    paths = write_reference_files(tmp_path / "ref", config, names={"products": "products.csv.gz"})
    for kind, path in paths.items():
        done = run_load(s, str(path), "--kind", kind)
        assert done.returncode == 0, done.stderr + done.stdout
        assert f"{len(expected[kind])} loaded, 0 rejected" in done.stdout

    with ReferenceReader(s) as reader:
        assert reader.sync(30)
        ref = reader.data
        for kind, records in expected.items():
            assert ref.all(kind) == sorted(records, key=lambda r: KINDS[kind].key(r)), kind
        first = {kind: ref.all(kind) for kind in KINDS}
        assert ref.product("P00007") == next(p for p in expected["products"] if p["product_id"] == "P00007")
        assert [c["campaign_id"] for c in ref.campaigns_on(day_of(START_MS))] == ["double11"]

        for kind, path in paths.items():  # the same files again
            done = run_load(s, str(path), "--kind", kind)
            assert done.returncode == 0, done.stderr + done.stdout
        assert reader.sync(30)
        assert {kind: ref.all(kind) for kind in KINDS} == first

    for spec, kind in zip(REFERENCE_TOPICS, ("stores", "products", "calendar", "spend"), strict=True):
        records = read_topic(s, spec)
        n = len(expected[kind])
        # Twice the records (the embedded broker does not compact), but the same keys with the same values.
        assert len(records) >= n and len({k for k, _ in records}) == n and len(set(records)) == n, spec.suffix


@pytest.mark.e2e
def test_touchline_load_rejects_bad_rows_unless_allowed(stack_factory: Callable[..., Any], tmp_path: Path) -> None:
    s = stack_factory(workers=0, sink=False).settings
    path = write(tmp_path / "stores.csv", STORES_CSV + "S3,X,Shanghai,abc,121,2020-01-01,\n")
    done = run_load(s, str(path), "--kind", "stores")
    assert done.returncode == 1
    assert "0 loaded, 1 rejected" in done.stdout and "stores.csv:4: latitude 'abc' is not a number" in done.stdout
    assert read_topic(s, REFERENCE_TOPICS[0]) == []

    done = run_load(s, str(path), "--kind", "stores", "--allow-errors")
    assert done.returncode == 0 and "2 loaded, 1 rejected" in done.stdout
    assert sorted(k for k, _ in read_topic(s, REFERENCE_TOPICS[0])) == [b"S001", b"S002"]

    done = run_load(s, str(write(tmp_path / "stores.xlsx", "x")), "--kind", "stores")
    assert done.returncode == 2 and "unknown format" in done.stderr


# A real Touchline worker (create_app: ingest thread, every agent and the reference
# tables), plus a page that dumps what its lookups return.
WORKER = """
import sys
from faust import Worker
from streams.pipeline import create_app, reference_of
from streams.settings import Settings

s = Settings.from_env()
app = create_app(s)  # registers the reference tables with every agent
ref = reference_of(app)

@app.page("/reference-probe/")
async def probe(web, request):
    return web.json({
        "counts": {k: ref.count(k) for k in ("stores", "products", "calendar", "spend")},
        "all": {k: ref.all(k) for k in ("stores", "products", "calendar", "spend")},
        "stores_in": [r["store_id"] for r in ref.stores_in(sys.argv[1])],
        "campaigns_on": [r["campaign_id"] for r in ref.campaigns_on(sys.argv[2])],
    })

Worker(app, loglevel=s.log_level.lower(), quiet=True).execute_from_commandline()
"""


def _probe(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/reference-probe/", timeout=2) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]
    except OSError:
        return None


@pytest.mark.e2e
def test_faust_workers_read_reference_tables(stack_factory: Callable[..., Any], tmp_path: Path) -> None:
    s = stack_factory(workers=0, sink=False).settings
    config = SimConfig(seed=5, persons=50, events=500)
    expected = generate_reference(config)
    paths = write_reference_files(tmp_path / "ref", config)
    for kind in ("stores", "products", "calendar"):  # before the workers start; spend comes later
        assert run_load(s, str(paths[kind]), "--kind", kind).returncode == 0

    city, day = expected["stores"][0]["city"], day_of(START_MS)
    want_stores = sorted(r["store_id"] for r in expected["stores"] if r["city"] == city)
    workdir = Path(s.data_dir)
    workdir.mkdir(parents=True, exist_ok=True)
    procs, ports = [], []
    try:
        for wid in range(2):
            port = free_port()
            env = {**os.environ, **s.to_env(), "TOUCHLINE_WORKER_ID": str(wid),
                   "TOUCHLINE_WEB_PORT": str(port - wid), "PYTHONUNBUFFERED": "1"}
            log = open(workdir / f"ref-worker-{wid}.log", "wb")  # noqa: SIM115
            procs.append(subprocess.Popen([sys.executable, "-c", WORKER, city, day], env=env, cwd=workdir,
                                          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
            ports.append(port)

        def wait_for(check: Callable[[dict[str, Any]], bool], what: str, timeout_s: float = 90.0) -> None:
            deadline = time.monotonic() + timeout_s
            last: list[Any] = []
            while time.monotonic() < deadline:
                for p in procs:
                    assert p.poll() is None, f"worker exited; logs in {workdir}"
                last = [_probe(port) for port in ports]
                if all(x is not None and check(x) for x in last):
                    return
                time.sleep(0.2)  # between polls
            raise AssertionError(f"{what}: timed out; last: {[x and x['counts'] for x in last]}; logs in {workdir}")

        def sorted_records(kind: str) -> list[dict[str, Any]]:
            return sorted(expected[kind], key=lambda r: KINDS[kind].key(r))

        wait_for(lambda x: x["counts"] == {"stores": len(expected["stores"]), "products": len(expected["products"]),
                                           "calendar": len(expected["calendar"]), "spend": 0}, "loaded before start")
        for state in (_probe(p) for p in ports):
            assert state is not None
            for kind in ("stores", "products", "calendar"):
                assert state["all"][kind] == sorted_records(kind), kind
            assert state["stores_in"] == want_stores and state["campaigns_on"] == ["double11"]

        # The tables leave the worker's own agents working: touchpoints still come out enriched.
        prod = producer(s)
        for i in range(4):
            key, value = encoded(touchpoint(f"ref-e{i}", "page_viewed", T0 + i, identifiers={"anonymous_id": f"c{i}"}))
            prod.produce(RAW.name(s), key=key, value=value)
        assert prod.flush(10) == 0
        reader = TopicReader(s)
        try:
            deadline = time.monotonic() + 60
            while not {f"ref-e{i}" for i in range(4)} <= reader.tally.event_ids:
                assert time.monotonic() < deadline, f"touchpoints not enriched; logs in {workdir}"
                reader.poll()
        finally:
            reader.close()

        # Loaded while the workers run: reaches both, and a changed price replaces the old one.
        assert run_load(s, str(paths["spend"]), "--kind", "spend").returncode == 0
        changed = [{**p, "price": p["price"] + 1} if p["product_id"] == "P00003" else p for p in expected["products"]]
        assert run_load(s, str(write_file(tmp_path / "products2.csv", "products", changed)),
                        "--kind", "products").returncode == 0
        price = next(p["price"] for p in changed if p["product_id"] == "P00003")
        wait_for(lambda x: x["counts"]["spend"] == len(expected["spend"]) and any(
            p["product_id"] == "P00003" and p["price"] == price for p in x["all"]["products"]), "loaded while running")
        for state in (_probe(p) for p in ports):
            assert state is not None
            assert state["all"]["spend"] == sorted_records("spend")
            assert state["counts"]["products"] == len(expected["products"])
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
