"""touchline dlq inspect / replay: pure selection, conversion and summary; then on the real stack."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from streams import avro
from streams.cli import build_parser, main
from streams.deadletter import records
from streams.deadletter.inspect import (
    Letter,
    TopicRead,
    matches_source,
    preview,
    read_to_end,
    render,
    safe_text,
    select,
    summarise,
)
from streams.deadletter.replay import (
    REPLAY_HEADER,
    Result,
    Send,
    Skip,
    Target,
    convert,
    plan,
    replays_in,
    root_of,
    source_kind,
)
from streams.deadletter.replay import render as render_replay
from streams.deadletter.sealing import Sealer, configured_salt, configured_sealer
from streams.kafka.clients import producer
from streams.processes import scrape_total
from streams.settings import Settings
from streams.tally import TopicReader
from streams.topics import DEAD_LETTERS, ENRICHED, RAW
from streams.touchpoint.jsonform import to_json
from streams.touchpoint.normalise import hashed
from tests.conftest import T0, encoded, touchpoint

ROOT = Path(__file__).resolve().parents[1]
RAW_TOPIC = "t1.touchpoints.raw"
KEY = bytes(range(32))
SEALER = Sealer(KEY)
OTHER = Sealer(bytes(32))
SALT = b"test-salt"
TARGET = Target(RAW_TOPIC, 4, SALT)
DAY = 86_400_000
MIN = 60_000


def letter(reason: str = "unknown_channel", payload: bytes | None = b"x", *, topic: str = RAW_TOPIC,
           partition: int = 0, offset: int = 0, failed_at: int = T0, detail: str = "why",
           sealer: Sealer = SEALER, at: tuple[int, int] = (0, 0)) -> Letter:
    """A dead letter as it comes off the topic (built, then through its Avro contract)."""
    built = records.build(sealer, reason=reason, detail=detail, topic=topic, partition=partition, offset=offset,
                          payload=payload, failed_at_ms=failed_at)
    return Letter(avro.decode_as(avro.DEAD_LETTER, avro.encode(avro.DEAD_LETTER, built)), at[0], at[1], failed_at)


def page_view(event_id: str = "e-1", t: int = T0, **kw: Any) -> dict[str, Any]:
    return touchpoint(event_id, "page_viewed", t, identifiers={"anonymous_id": "c-1"}, **kw)


# --------------------------------------------------------------------------- summary (pure)


def test_summary_counts_reasons_sources_times_and_sizes() -> None:
    letters = [
        letter("unknown_channel", b"a" * 10, offset=1, failed_at=T0, detail="unknown channel 'fax'"),
        letter("unknown_channel", b"a" * 30, offset=2, failed_at=T0 + MIN, detail="unknown channel 'fax'"),
        letter("unknown_channel", b"a" * 20, offset=3, failed_at=T0 + 2 * MIN, detail="unknown channel 'telex'"),
        letter("not_wire_format", b"", offset=4, failed_at=T0 + 3 * MIN, detail="0 bytes, need a 5-byte header"),
        letter("missing_field", b"{}", topic="collector/web", offset=0, failed_at=T0 - MIN),
    ]
    s = summarise(TopicRead("t1.touchpoints.dead-letter", letters), configured_key_id=SEALER.key_id, limit=2)
    assert s["total"] == s["on_topic"] == 5
    assert list(s["by_reason"]) == ["unknown_channel", "missing_field", "not_wire_format"]  # by count, then name
    assert {r: g["count"] for r, g in s["by_reason"].items()} == {
        "unknown_channel": 3, "missing_field": 1, "not_wire_format": 1}
    # Samples: different details first, each with its dead letter id.
    assert [x["detail"] for x in s["by_reason"]["unknown_channel"]["samples"]] == [
        "unknown channel 'fax'", "unknown channel 'telex'", "unknown channel 'fax'"]
    assert s["by_reason"]["unknown_channel"]["samples"][1]["dead_letter_id"] == f"{RAW_TOPIC}/0/3"
    assert s["by_source"] == {RAW_TOPIC: 4, "collector/web": 1}
    assert s["failed_at"]["first_ms"] == T0 - MIN and s["failed_at"]["last_ms"] == T0 + 3 * MIN
    assert s["failed_at"]["last"] == "2026-10-31T16:03:00.000Z"
    assert s["payload_bytes"] == {"min": 0, "median": 10, "max": 30, "total": 62}
    assert s["keys"] == {"configured": SEALER.key_id, "by_key": {SEALER.key_id: 5}, "other_key": 0}
    assert [x["dead_letter_id"] for x in s["latest"]] == [f"{RAW_TOPIC}/0/3", f"{RAW_TOPIC}/0/4"]
    assert not s["opened"] and "warning" not in s and all("preview" not in x for x in s["latest"])
    json.dumps(s)  # all plain data
    text = render(s)
    assert "unknown_channel" in text and "unknown channel 'telex'" in text and "collector/web" in text


def test_a_dead_letter_written_twice_counts_once() -> None:
    first = letter("unknown_channel", offset=1, at=(0, 10))
    again = letter("unknown_channel", offset=1, at=(0, 11))  # ingestion redid the slice after a crash
    s = summarise(TopicRead("dlq", [first, again, letter(offset=2)]))
    assert (s["on_topic"], s["repeated_records"], s["total"]) == (2, 1, 2)
    assert "(and 1 repeated record(s))" in render(s)


def test_summary_filters_by_reason_and_source_family() -> None:
    letters = [
        letter("unknown_channel"), letter("missing_field", topic="collector/web"),
        letter("missing_field", topic="collector/app"), letter("invalid_field", topic="import/crm"),
        letter("missing_field", topic="collectors"),
    ]
    read = TopicRead("dlq", letters)
    s = summarise(read, reasons=["missing_field"], sources=["collector"])
    assert (s["on_topic"], s["total"]) == (5, 2)
    assert s["by_source"] == {"collector/app": 1, "collector/web": 1}
    assert summarise(read, sources=["import/crm", RAW_TOPIC])["total"] == 2
    assert summarise(read, reasons=["oversize"])["total"] == 0
    assert "0 matching" in render(summarise(read, reasons=["oversize"]))
    assert matches_source("collector/web", "collector/") and not matches_source("collectors", "collector")
    assert [d.id for d in select(letters, ids=["import/crm/0/0"])] == ["import/crm/0/0"]


def test_opened_summary_previews_payloads_and_reports_other_keys() -> None:
    tp = page_view("e-avro")
    letters = [
        letter("unknown_channel", avro.encode(avro.TOUCHPOINT, tp), offset=1),
        letter("missing_field", json.dumps({"event_id": "e-json", "phone": "13800138000"}).encode(),
               topic="collector/web", offset=2),
        letter("not_wire_format", b"\x01\x02\xff" * 100, offset=3),
        letter("not_wire_format", None, offset=4),
        letter("unknown_channel", b"secret", offset=5, sealer=OTHER),
    ]
    s = summarise(TopicRead("dlq", letters), open_with=SEALER)
    assert s["opened"] and "personal data" in s["warning"]
    by_id = {x["dead_letter_id"]: x for x in s["latest"]}
    first = by_id[f"{RAW_TOPIC}/0/1"]
    assert first["kind"] == f"avro {avro.TOUCHPOINT}" and '"event_id":"e-avro"' in first["preview"]
    assert by_id["collector/web/0/2"]["kind"] == "json" and "e-json" in by_id["collector/web/0/2"]["preview"]
    junk = by_id[f"{RAW_TOPIC}/0/3"]
    assert junk["kind"] == "hex" and junk["preview"].startswith("01 02 ff") and "(300 bytes)" in junk["preview"]
    assert len(junk["preview"]) <= 300
    assert by_id[f"{RAW_TOPIC}/0/4"]["kind"] == "empty"
    other = by_id[f"{RAW_TOPIC}/0/5"]
    assert other["kind"] == "sealed" and f"sealed with key {OTHER.key_id}" in other["error"]
    assert "preview" not in other
    assert s["keys"]["other_key"] == 1 and s["keys"]["by_key"] == {SEALER.key_id: 4, OTHER.key_id: 1}
    text = render(s)
    assert "WARNING" in text and "cannot open" in text and "e-avro" in text


def test_a_tampered_dead_letter_is_reported_not_raised() -> None:
    d = letter(payload=b"hello")
    bad = Letter({**d.record, "dead_letter_id": "elsewhere/0/1"})  # the id is the associated data
    s = summarise(TopicRead("dlq", [bad]), open_with=SEALER)
    assert "authentication failed" in s["latest"][0]["error"]


def test_previews_are_short_and_printable() -> None:
    assert safe_text("a\x1b[31mred\x07\nb") == "a\\x1b[31mred\\x07\\nb"
    assert safe_text("长宁区") == "长宁区"
    cut = safe_text("x" * 1000, limit=50)
    assert len(cut) == 50 and cut.endswith("…")
    kind, text = preview(json.dumps({"name": "\u202eevil", "n": 1}).encode())
    assert kind == "json" and "\u202e" not in text and "\\u202e" in text
    assert preview(b"\xff\xfe")[0] == "hex"
    assert preview(avro.encode(avro.TOUCHPOINT, page_view()))[0] == f"avro {avro.TOUCHPOINT}"


# --------------------------------------------------------------------------- conversion (pure)


def test_raw_payloads_go_back_unchanged_to_their_partition() -> None:
    value = avro.encode(avro.TOUCHPOINT, page_view())
    d = letter("event_time_too_old", value, partition=3, offset=9)
    step = convert(d, value, TARGET)
    assert step == Send(f"{RAW_TOPIC}/3/9", value, "raw bytes", 3)
    assert step.headers == [(REPLAY_HEADER, f"{RAW_TOPIC}/3/9".encode())]
    assert step.key == f"{RAW_TOPIC}/3/9".encode()
    # Another installation's raw topic, or a partition this one lacks: same bytes, partition by key.
    elsewhere = letter("unknown_channel", value, topic="old.touchpoints.raw", partition=1)
    assert convert(elsewhere, value, TARGET).partition is None  # type: ignore[union-attr]
    assert convert(letter(partition=7), b"x", TARGET).partition is None  # type: ignore[union-attr]


def test_collector_json_is_converted_as_the_collector_does() -> None:
    event = {"event_id": "c-1", "type": "page_viewed", "timestamp": "2026-11-01T08:00:00+08:00",
             "channel": "web", "identifiers": {"anonymous_id": "cookie-1", "phone": "138 0013 8000"},
             "receive_time_ms": T0 - DAY}
    d = letter("event_time_too_old", json.dumps(event).encode(), topic="collector/web", failed_at=T0 + 5 * MIN)
    step = convert(d, json.dumps(event).encode(), TARGET)
    assert isinstance(step, Send) and step.kind == "collector json" and step.partition is None
    tp = avro.decode_as(avro.TOUCHPOINT, step.value)
    assert (tp["event_id"], tp["type"], tp["channel"]) == ("c-1", "page_viewed", "web")
    assert tp["event_time_ms"] == T0 + 8 * 3600 * 1000
    # Received when the collector dead-lettered it; a client's own receive time is ignored, as the collector does.
    assert tp["receive_time_ms"] == T0 + 5 * MIN
    assert tp["source_app"] == "web"  # the source, unless the event names one
    # No raw personal data reaches the raw topic: the phone is normalised and hashed with the salt.
    assert tp["identifiers"]["phone"] == hashed("phone", "+8613800138000", SALT)
    assert b"13800138000" not in step.value
    assert tp["identifiers"]["anonymous_id"] == "cookie-1"
    # The JSON form of a touchpoint reads back the same.
    back = convert(d, json.dumps(to_json(page_view("c-2", source_app="mini"))).encode(), TARGET)
    back_tp = avro.decode_as(avro.TOUCHPOINT, back.value)  # type: ignore[union-attr]
    assert (back_tp["event_id"], back_tp["source_app"]) == ("c-2", "mini")
    # Without the identifier salt nothing is converted.
    no_salt = convert(d, json.dumps(event).encode(), Target(RAW_TOPIC, 4))
    assert isinstance(no_salt, Skip) and no_salt.outcome == "failed" and "TOUCHLINE_IDENTIFIER_SALT" in no_salt.why


@pytest.mark.parametrize(("payload", "why"), [
    (b'{"event_id": "c-1", "type": "page_viewed", "timestamp": 1, "channel": "web", "colour": "red"}',
     "still not a touchpoint (unknown_field): unknown field(s): colour"),
    (b'{"type": "page_viewed", "timestamp": 1, "channel": "web"}', "still not a touchpoint (missing_field)"),
    (b"[1, 2]", "still not a touchpoint (invalid_json)"),
    (b"not json", "collector payload is not JSON"),
    (b"\xff", "collector payload is not JSON"),
])
def test_collector_payloads_that_still_fail_are_reported(payload: bytes, why: str) -> None:
    step = convert(letter(topic="collector/app"), payload, TARGET)
    assert isinstance(step, Skip) and step.outcome == "failed" and step.why.startswith(why), step


def test_import_rows_and_unknown_sources_are_not_replayable() -> None:
    assert source_kind(RAW_TOPIC, RAW_TOPIC) == "raw"
    assert source_kind("other.touchpoints.raw", RAW_TOPIC) == "raw"
    assert source_kind("collector/wechat", RAW_TOPIC) == "collector"
    assert source_kind("import/crm", RAW_TOPIC) == "import"
    assert source_kind("sftp-drop", RAW_TOPIC) == "unknown"
    steps = plan([letter(topic="import/crm", offset=1), letter(topic="sftp-drop", offset=2)], [], {}, TARGET, SEALER)
    assert steps.sends == [] and [s.outcome for s in steps.skips] == ["not_replayable"] * 2
    assert "run the import again" in steps.skips[0].why and "unknown source 'sftp-drop'" in steps.skips[1].why


def test_plan_reports_payloads_it_cannot_open() -> None:
    mine, theirs = letter(offset=1), letter(offset=2, sealer=OTHER)
    steps = plan([mine, theirs], [mine, theirs], {}, TARGET, SEALER)
    assert [s.dead_letter_id for s in steps.sends] == [mine.id]
    assert steps.skips == [Skip(theirs.id, "failed", f"cannot open: sealed with key {OTHER.key_id}, "
                                f"not the configured key {SEALER.key_id}")]
    steps = plan([mine], [mine], {}, TARGET, None)
    assert steps.skips[0].why == "no dead-letter key configured"


def test_plan_sends_each_original_record_once_and_never_after_a_replay_went_through() -> None:
    x = letter("event_time_too_old", b"bytes", partition=1, offset=5)  # the original
    # Replayed as raw 2/40, which failed again: dead letter y, same bytes.
    y = letter("event_time_too_old", b"bytes", partition=2, offset=40)
    replays = {(2, 40): x.id}
    assert root_of(y.id, {d.id: d for d in (x, y)}, replays, RAW_TOPIC) == x.id
    steps = plan([x, y], [x, y], replays, TARGET, SEALER)
    assert [s.dead_letter_id for s in steps.sends] == [x.id]
    assert steps.skips == [Skip(y.id, "already_replayed", f"the same original record as {x.id}, replayed once")]
    # Only y selected: still sent (its lineage has no replay that went through).
    assert [s.dead_letter_id for s in plan([y], [x, y], replays, TARGET, SEALER).sends] == [y.id]
    # A replay of y (raw 0/41) that did not come back as a dead letter: the whole chain is done.
    replays[(0, 41)] = y.id
    steps = plan([x, y], [x, y], replays, TARGET, SEALER)
    assert steps.sends == []
    assert [(s.dead_letter_id, s.outcome) for s in steps.skips] == [(x.id, "already_replayed"),
                                                                    (y.id, "already_replayed")]
    assert f"replayed before as {RAW_TOPIC}/0/41" in steps.skips[0].why
    # Replays of other dead letters change nothing; a cycle of headers cannot hang.
    z = letter(offset=6)
    assert [s.dead_letter_id for s in plan([z], [x, y, z], {(3, 1): "gone/0/0", **replays}, TARGET,
                                           SEALER).sends] == [z.id]
    loop = {(0, 7): f"{RAW_TOPIC}/0/8", (0, 8): f"{RAW_TOPIC}/0/7"}
    a, b = letter(offset=7), letter(offset=8)
    assert root_of(a.id, {a.id: a, b.id: b}, loop, RAW_TOPIC) in (a.id, b.id)


def test_replays_are_found_by_their_header() -> None:
    found = replays_in([
        (0, 1, [(REPLAY_HEADER, b"raw/0/9")]), (0, 2, None), (1, 3, [("other", b"x")]),
        (2, 4, [("touchline-control", b"clock"), (REPLAY_HEADER, b"collector/web/0/1")]),
    ])
    assert found == {(0, 1): "raw/0/9", (2, 4): "collector/web/0/1"}


def test_replay_result_json_and_text() -> None:
    r = Result(4, False, [{"dead_letter_id": "a", "kind": "raw bytes", "raw_topic": "t", "raw_partition": 1,
                           "raw_offset": 2}],
               [Skip("b", "not_replayable", "import"), Skip("c", "failed", "cannot open"),
                Skip("d", "already_replayed", "before")])
    j = r.as_json()
    assert (j["selected"], j["replayed"], j["already_replayed"], j["not_replayable"], j["failed"]) == (4, 1, 1, 1, 1)
    text = render_replay(r)
    assert text.startswith("selected 4: replayed 1, already replayed 1, not replayable 1, failed 1")
    assert "a (raw bytes) -> t/1/2" in text and "failed: c: cannot open" in text
    dry = Result(1, True, [{"dead_letter_id": "a", "kind": "raw bytes"}])
    assert dry.as_json()["would_replay"] == 1 and dry.as_json()["replayed"] == 0
    assert "would replay 1" in render_replay(dry) and "nothing sent" in render_replay(dry)


# --------------------------------------------------------------------------- CLI (no broker)


def test_cli_has_dlq_inspect_and_replay() -> None:
    args = build_parser().parse_args(["dlq", "replay", "--id", "a/0/1", "b/0/2", "--reason", "x", "--dry-run"])
    assert (args.dlq_command, args.id, args.reason, args.dry_run) == ("replay", ["a/0/1", "b/0/2"], ["x"], True)
    args = build_parser().parse_args(["dlq", "inspect", "--open", "--json", "--limit", "3", "--source", "collector"])
    assert (args.open, args.json, args.limit, args.source) == (True, True, 3, ["collector"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dlq"])


def test_replay_needs_a_selection_and_a_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TOUCHLINE_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # never contacted
    monkeypatch.setenv("TOUCHLINE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("TOUCHLINE_DEAD_LETTER_KEY", raising=False)
    with pytest.raises(SystemExit, match="say which dead letters"):
        main(["dlq", "replay"])
    with pytest.raises(SystemExit, match="no dead-letter key"):
        main(["dlq", "replay", "--all"])
    with pytest.raises(SystemExit, match="no dead-letter key"):
        main(["dlq", "inspect", "--open"])
    assert not (tmp_path / "dead-letter.key").exists()  # looking for the key never makes one


def test_configured_salt_from_settings_or_the_workers_salt_file(tmp_path: Path) -> None:
    from streams.deadletter.sealing import identifier_salt

    assert configured_salt(Settings(data_dir=str(tmp_path))) is None
    assert not (tmp_path / "identifier.salt").exists()
    assert configured_salt(Settings(data_dir=str(tmp_path), identifier_salt="pepper")) == b"pepper"
    made = identifier_salt(Settings(data_dir=str(tmp_path)))  # what a worker does
    assert configured_salt(Settings(data_dir=str(tmp_path))) == made


def test_configured_key_from_settings_or_the_workers_key_file(tmp_path: Path) -> None:
    assert configured_sealer(Settings(data_dir=str(tmp_path))) is None
    via_env = configured_sealer(Settings(data_dir=str(tmp_path), dead_letter_key=base64.b64encode(KEY).decode()))
    assert via_env is not None and via_env.key_id == SEALER.key_id
    made = Sealer.from_settings(Settings(data_dir=str(tmp_path)))  # what a worker does
    found = configured_sealer(Settings(data_dir=str(tmp_path)))
    assert found is not None and found.key_id == made.key_id


# --------------------------------------------------------------------------- on the real stack

e2e = pytest.mark.e2e


def _dlq(stack: Any, *args: str, expect_rc: int = 0) -> dict[str, Any]:
    """Run ``touchline dlq ... --json`` as a separate process with the stack's settings."""
    out = subprocess.run(
        [sys.executable, "-m", "streams.cli", "dlq", *args, "--json"], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, **stack.settings.to_env()}, timeout=180,
    )
    assert out.returncode == expect_rc, (out.returncode, out.stdout, out.stderr)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _enriched_records(settings: Settings, event_id: str) -> int:
    """Enriched records carrying this event id (every record, not distinct ids)."""
    return sum(1 for m in read_to_end(settings, ENRICHED.name(settings))
               if avro.decode_as(avro.ENRICHED, m.value())["touchpoint"]["event_id"] == event_id)


def _restart_workers(stack: Any, **overrides: Any) -> None:
    """Stop the stack's workers and start them again with changed settings (the "fix")."""
    sup = stack.supervisor
    workers = [c for c in sup.children if c.name.startswith("worker-")]
    for c in workers:
        sup.stop(c)
    sup.settings = sup.settings.with_overrides(**overrides)
    for c in workers:
        sup.start_worker(int(c.name.split("-")[1]))


@e2e
def test_replaying_a_fixed_dead_letter_produces_exactly_one_enriched_event(stack_factory) -> None:
    stack = stack_factory(workers=1, sink=False)
    s = stack.settings
    anon = {"anonymous_id": "c-late"}
    # A page view that reached the collector 40 days after it happened: beyond the 30-day horizon.
    late = touchpoint("late-1", "page_viewed", T0 - 40 * DAY, identifiers=anon, receive_time_ms=T0)
    stack.produce([encoded(late), encoded(touchpoint("ok-1", "page_viewed", T0, identifiers={"anonymous_id": "c2"}))],
                  partition=1)
    reader = TopicReader(s)
    tally = stack.wait_for(reader, lambda t: "ok-1" in t.event_ids and len(t.dead_letters) == 1)
    dl_id = f"{RAW.name(s)}/1/0"
    assert tally.dead_letters == {dl_id: "event_time_too_old"}
    assert "40.0 days old" in tally.dead_letter_records[dl_id]["detail"]

    before = _dlq(stack, "inspect")
    assert before["total"] == 1 and before["by_source"] == {RAW.name(s): 1}
    assert before["by_reason"]["event_time_too_old"]["count"] == 1
    assert before["by_reason"]["event_time_too_old"]["samples"][0]["dead_letter_id"] == dl_id

    # Nothing selected: nothing sent.
    assert _dlq(stack, "replay", "--reason", "oversize")["selected"] == 0

    # The fix: a longer horizon for live events.
    _restart_workers(stack, max_event_age_s=60 * 86400.0)
    dry = _dlq(stack, "replay", "--reason", "event_time_too_old", "--dry-run")
    assert (dry["selected"], dry["would_replay"], dry["replayed"]) == (1, 1, 0)
    first = _dlq(stack, "replay", "--reason", "event_time_too_old")
    assert (first["selected"], first["replayed"], first["failed"]) == (1, 1, 0)
    replayed = first["records"][0]
    assert (replayed["dead_letter_id"], replayed["raw_partition"]) == (dl_id, 1)  # back to its raw partition
    stack.wait_for(reader, lambda t: "late-1" in t.event_ids)

    # Again: the earlier replay went through, so nothing is sent.
    second = _dlq(stack, "replay", "--id", dl_id)
    assert (second["selected"], second["replayed"], second["already_replayed"]) == (1, 0, 1)
    # Forced: sent again, and the identity stage drops the repeated event id. A later event of the
    # same cookie (same identity partition, same person) shows the repeat was processed first.
    forced = _dlq(stack, "replay", "--id", dl_id, "--force")
    assert forced["replayed"] == 1
    stack.produce([encoded(touchpoint("after-1", "page_viewed", T0, identifiers=anon))], partition=1)
    stack.wait_for(reader, lambda t: "after-1" in t.event_ids)
    reader.close()
    assert _enriched_records(s, "late-1") == 1
    worker = next(c for c in stack.supervisor.children if c.name == "worker-0")
    assert scrape_total(worker.port, "touchline_duplicates_dropped_total") == 1  # the forced repeat
    enriched = [avro.decode_as(avro.ENRICHED, m.value()) for m in read_to_end(s, ENRICHED.name(s))]
    late_out = next(e for e in enriched if e["touchpoint"]["event_id"] == "late-1")
    assert late_out["touchpoint"]["event_time_ms"] == T0 - 40 * DAY
    assert (late_out["raw_partition"], late_out["raw_offset"]) == (1, replayed["raw_offset"])

    after = _dlq(stack, "inspect")
    assert after["total"] == 1 and {r: g["count"] for r, g in after["by_reason"].items()} == {"event_time_too_old": 1}
    assert stack.supervisor.check_alive() == []


@e2e
def test_replaying_a_still_bad_record_makes_a_new_dead_letter_and_the_worker_keeps_running(stack_factory) -> None:
    stack = stack_factory(workers=1, sink=False)
    s = stack.settings
    late = touchpoint("late-2", "page_viewed", T0 - 40 * DAY, identifiers={"anonymous_id": "c-late"},
                      receive_time_ms=T0)
    stack.produce([encoded(late)], partition=2)
    reader = TopicReader(s)
    stack.wait_for(reader, lambda t: len(t.dead_letters) == 1)
    original = f"{RAW.name(s)}/2/0"

    # No fix: the replay is validated again and dead-lettered under its new raw coordinates.
    out = _dlq(stack, "replay", "--reason", "event_time_too_old")
    assert out["replayed"] == 1
    at = out["records"][0]
    again = f"{RAW.name(s)}/{at['raw_partition']}/{at['raw_offset']}"
    tally = stack.wait_for(reader, lambda t: len(t.dead_letters) == 2)
    assert tally.dead_letters == {original: "event_time_too_old", again: "event_time_too_old"}
    stack.produce([encoded(touchpoint("ok-2", "page_viewed", T0, identifiers={"anonymous_id": "c3"}))], partition=2)
    stack.wait_for(reader, lambda t: "ok-2" in t.event_ids)
    assert "late-2" not in reader.tally.event_ids
    assert stack.supervisor.check_alive() == []

    # Both dead letters hold the same original record: a second replay sends it once.
    out = _dlq(stack, "replay", "--reason", "event_time_too_old")
    assert (out["selected"], out["replayed"], out["already_replayed"]) == (2, 1, 1)
    assert out["records"][0]["dead_letter_id"] == original
    stack.wait_for(reader, lambda t: len(t.dead_letters) == 3)
    reader.close()
    summary = _dlq(stack, "inspect", "--reason", "event_time_too_old")
    assert summary["total"] == 3 and summary["by_source"] == {RAW.name(s): 3}
    assert _enriched_records(s, "late-2") == 0


@e2e
def test_collector_import_and_foreign_key_dead_letters(stack_factory) -> None:
    from streams.collector.core import plan_batch
    from streams.ingest.validate import Policy

    stack = stack_factory(workers=1, sink=False, dead_letter_key=base64.b64encode(KEY).decode(),
                          identifier_salt=SALT.decode(), max_event_age_s=60 * 86400.0)
    s = stack.settings
    # A collector still on the 30-day horizon dead-letters a page view sent 40 days late.
    received = T0 + MIN
    body = json.dumps({"batch": [{
        "event_id": "c-9", "type": "page_viewed", "event_time_ms": received - 40 * DAY, "channel": "web",
        "identifiers": {"anonymous_id": "cookie-9", "phone": "138 0013 8000"}}]}).encode()
    batch = plan_batch(body, "web", received, Policy(salt=SALT), SEALER)
    [rejected] = batch.rejected  # type: ignore[union-attr]
    assert rejected.reason == "event_time_too_old"
    collector_id = rejected.record["dead_letter_id"]
    letters = [
        rejected.record,
        records.build(SEALER, reason="invalid_field", detail="birthday: 'soon' is not a date", topic="import/crm",
                      partition=0, offset=3, payload=b'{"member": "M1", "birthday": "soon"}', failed_at_ms=T0),
        records.build(OTHER, reason="unknown_channel", detail="unknown channel 'fax'", topic=RAW.name(s),
                      partition=0, offset=99, payload=b"secret", failed_at_ms=T0),
    ]
    p = producer(s)
    for r in letters:
        p.produce(DEAD_LETTERS.name(s), key=r["dead_letter_id"].encode(), value=avro.encode(avro.DEAD_LETTER, r))
    assert p.flush(10) == 0

    opened = _dlq(stack, "inspect", "--open")
    assert opened["total"] == 3 and opened["keys"]["other_key"] == 1
    by_id = {x["dead_letter_id"]: x for x in opened["latest"]}
    assert by_id[collector_id]["kind"] == "json" and "cookie-9" in by_id[collector_id]["preview"]
    assert "sealed with key" in by_id[f"{RAW.name(s)}/0/99"]["error"]
    text = subprocess.run([sys.executable, "-m", "streams.cli", "dlq", "inspect", "--open"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, **s.to_env()}, timeout=180)
    assert text.returncode == 0 and "WARNING" in text.stderr and "by reason:" in text.stdout

    dry = _dlq(stack, "replay", "--source", "collector", "--dry-run")
    assert dry["would_replay"] == 1
    assert list(read_to_end(s, RAW.name(s))) == []  # a dry run sends nothing
    out = _dlq(stack, "replay", "--source", "collector")
    assert out["replayed"] == 1 and out["records"][0]["kind"] == "collector json"
    reader = TopicReader(s)
    tally = stack.wait_for(reader, lambda t: "c-9" in t.event_ids)
    reader.close()
    assert tally.dead_letters.keys() == {r["dead_letter_id"] for r in letters}  # nothing new
    [raw] = list(read_to_end(s, RAW.name(s)))
    assert raw.headers() == [(REPLAY_HEADER, collector_id.encode())]
    assert b"13800138000" not in raw.value()  # hashed before it reached a topic
    tp = avro.decode_as(avro.TOUCHPOINT, raw.value())
    assert (tp["receive_time_ms"], tp["source_app"]) == (received, "web")
    assert tp["identifiers"]["phone"] == hashed("phone", "+8613800138000", SALT)
    assert _dlq(stack, "replay", "--source", "collector")["already_replayed"] == 1

    assert _dlq(stack, "replay", "--source", "import")["not_replayable"] == 1
    foreign = _dlq(stack, "replay", "--id", f"{RAW.name(s)}/0/99", "nowhere/0/0", expect_rc=1)
    assert foreign["failed"] == 2 and foreign["replayed"] == 0
    assert {x["why"].split(":")[0] for x in foreign["skipped"]} == {"cannot open", "no such dead letter on the topic"}
    assert stack.supervisor.check_alive() == []


@e2e
def test_reading_to_the_end_waits_on_nothing(broker: Any) -> None:
    """An empty or missing topic returns at once instead of waiting for records."""
    from streams.deadletter.inspect import TopicMissing
    from streams.kafka.clients import create_topics

    s = Settings(kafka_bootstrap=broker.bootstrap, topic_prefix=f"t{time.monotonic_ns() % 10**8}")
    with pytest.raises(TopicMissing):
        list(read_to_end(s, DEAD_LETTERS.name(s)))
    create_topics(s, (DEAD_LETTERS,))
    started = time.monotonic()
    assert list(read_to_end(s, DEAD_LETTERS.name(s))) == []
    assert time.monotonic() - started < 15
    # Several producer batches on one partition are all read (the embedded broker's high
    # watermark stops at the last batch's first record).
    for n in (5, 3, 1):
        p = producer(s, **{"linger.ms": 50})
        for i in range(n):
            p.produce(DEAD_LETTERS.name(s), value=b"v%d" % i, partition=0)
        assert p.flush(10) == 0
    assert len(list(read_to_end(s, DEAD_LETTERS.name(s)))) == 9
