"""``touchline run``: the whole pipeline on the embedded stack, with a summary.

Starts the embedded broker, creates the topics, migrates a fresh chDB
database, starts the workers and the sink, sends seeded simulated traffic,
shows live progress, ends time with clock ticks so pending carts come due,
waits for the outputs to settle, stops every process, and prints what the
pipeline produced beside the simulator's ground truth.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from streams.kafka.broker import EmbeddedBroker, free_port
from streams.kafka.clients import create_topics
from streams.processes import Child, Supervisor, scrape_total
from streams.settings import Settings
from streams.sink.rows import TABLES
from streams.tally import TALLY_TOPICS, TopicReader

SETTLE_TIMEOUT_S = 60.0
TALLY_TABLES = tuple(TABLES[spec].name for spec in TALLY_TOPICS)  # where the sink stores what the tally reads


def _line(started: float, t: Any, sent: int, rate: float) -> str:
    return (f"\r[{time.monotonic() - started:6.1f}s] sent {sent:>7,} | processed {len(t.event_ids):>7,} "
            f"({rate:>7,.0f}/s) | persons {t.persons:>6,} | triggers {len(t.triggers):>5,} "
            f"| dead letters {len(t.dead_letters):>4,}   ")


def run(events: int, workers: int, seed: int, persons: int, rate: float | None, shared_devices: int = 0) -> int:
    from streams.simulate.producer import produce, send_clock_ticks, settle_time_ms, write_truth
    from streams.simulate.traffic import SimConfig, generate

    base = Settings.from_env()
    if not base.embedded:
        raise SystemExit("touchline run drives the embedded stack; unset TOUCHLINE_KAFKA_BOOTSTRAP")
    run_dir = base.data_path / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # the broker is in-memory: start the database afresh too
    run_dir.mkdir(parents=True)
    print(f"touchline run: {events:,} events, {persons:,} persons, {workers} worker(s), seed {seed}")
    print(f"  logs and embedded ClickHouse under {run_dir}")
    broker = EmbeddedBroker(log_path=run_dir / "broker.log")
    sup: Supervisor | None = None
    reader: TopicReader | None = None
    interrupted = False
    try:
        broker.start()
        settings = base.with_overrides(kafka_bootstrap=broker.bootstrap, data_dir=str(run_dir), clock="manual",
                                       sink_query_port=free_port())
        print(f"  embedded broker on {broker.bootstrap}; {len(create_topics(settings))} topics created")
        _touchline(settings, "migrate")
        load_reference(settings, run_dir / "reference", SimConfig(seed=seed, events=events, persons=persons))
        sup = Supervisor(settings, run_dir / "logs")
        for i in range(workers):
            sup.start_worker(i)
        sink = sup.start_sink()
        delay_ms = int(settings.cart_abandon_delay_s * 1000)
        traffic = generate(SimConfig(seed=seed, events=events, persons=persons, cart_abandon_delay_ms=delay_ms,
                                     shared_devices=shared_devices))
        truth = traffic.truth
        write_truth(run_dir / "ground-truth.json", truth)

        sent = [0]

        def send() -> None:
            produce(settings, traffic, rate=rate, on_progress=lambda n: sent.__setitem__(0, n))
            send_clock_ticks(settings, settle_time_ms(settings, truth))  # every cart fires, every session closes
            sent[0] = truth.records_sent

        producer_thread = threading.Thread(target=send, daemon=True)
        producer_thread.start()
        reader = TopicReader(settings)
        started = last_progress = time.monotonic()
        last_count, last_tick, last_done = 0, started, -1
        tty = sys.stdout.isatty()
        expected_out = truth.events_valid_distinct + sum(truth.malformed_by_reason.values())
        while True:
            reader.poll()
            t = reader.tally
            now = time.monotonic()
            done = len(t.event_ids) + len(t.dead_letters)
            if now - last_tick >= (1.0 if tty else 5.0):
                rate_now = (len(t.event_ids) - last_count) / (now - last_tick)
                last_count, last_tick = len(t.event_ids), now
                print(_line(started, t, sent[0], rate_now), end="" if tty else "\n", flush=True)
            if done != last_done:
                last_done, last_progress = done, now
            settled = (not producer_thread.is_alive() and done >= expected_out
                       and len(t.of_rule("cart_abandon")) >= truth.abandoned_carts)
            if settled:
                break
            dead = sup.check_alive()
            if dead:
                print(f"\n  process(es) exited unexpectedly: {', '.join(dead)} (see {sup.log_dir})")
                break
            if now - last_progress > SETTLE_TIMEOUT_S:
                print(f"\n  no progress for {SETTLE_TIMEOUT_S:.0f}s: stopping")
                break
        print(_line(started, reader.tally, sent[0], 0.0))
        _wait_for_sink(sink, reader.records_read)
    except KeyboardInterrupt:
        interrupted = True
        print("\n  interrupted: stopping cleanly")
    finally:
        if reader is not None:
            reader.close()
        if sup is not None:
            sup.stop()
        broker.stop()
    if interrupted:
        return 130
    ch = json.loads(_touchline(settings, "report", "--json"))
    code = _print_summary(reader.tally if reader else None, ch, truth.to_dict())
    return max(code, _html_report(settings, run_dir / "report.html"))


def load_reference(settings: Settings, directory: Any, config: Any) -> None:
    """The simulated brand's stores, catalog, campaign calendar and spend, loaded as `touchline load` does."""
    from streams.reference.loader import load
    from streams.simulate.reference import write_reference_files

    loaded = {kind: load(settings, path, kind).loaded for kind, path in write_reference_files(directory, config).items()}
    print("  reference data loaded: " + ", ".join(f"{n:,} {kind}" for kind, n in loaded.items()))


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`touchline ARGS` in a child process with these settings, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args], env={**os.environ, **settings.to_env()},
        capture_output=True, text=True, check=False,
    )


def _touchline(settings: Settings, *args: str) -> str:
    out = _cli(settings, *args)
    if out.returncode != 0:
        raise SystemExit(f"touchline {' '.join(args)} failed:\n{out.stderr}")
    return out.stdout


def _html_report(settings: Settings, path: Path) -> int:
    """`touchline report --html` into the run directory. Every process has stopped, so it opens chDB itself."""
    out = _cli(settings, "report", "--html", str(path))
    if out.returncode != 0:
        print(f"\n  The HTML report has failed panels (or could not be written):\n{out.stderr.rstrip()}")
    if path.exists():
        print(f"\n  Open the report: {path.resolve().as_uri()}")
    return 0 if out.returncode == 0 else 1


def _wait_for_sink(sink: Child, records: int) -> None:
    """Until ClickHouse holds every record the tally read from the same topics."""
    assert sink.port is not None
    series = [f'touchline_sink_records_stored_total{{table="{t}"}}' for t in TALLY_TABLES]
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline and sink.proc.poll() is None:
        if scrape_total(sink.port, *series) >= records:  # one scrape for every table
            return
        time.sleep(0.1)
    print(f"\n  the sink did not insert all {records:,} records within {SETTLE_TIMEOUT_S:.0f}s")


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def _print_summary(tally: Any, ch: dict[str, Any], truth: dict[str, Any]) -> int:
    print("\nSummary (ClickHouse, output topics, simulator ground truth)")
    print(f"\n  Events by channel (ClickHouse: {ch['events']:,} events)")
    for channel, n in ch["events_by_channel"].items():
        print(f"    {channel:18} {n:>8,}")
    print("\n  Events by type")
    for kind, n in ch["events_by_type"].items():
        print(f"    {kind:18} {n:>8,}")
    k = ch["kpis"]
    print("\n  KPIs (definitions in README.md, same tables as the dashboards)")
    print(f"    UV {k['uv']:,} · PV {k['pv']:,} · sessions {k['sessions']:,} · bounce rate "
          f"{_pct(k['bounce_rate'])} · visit depth {k['visit_depth'] if k['visit_depth'] is not None else '-'}")
    print(f"    orders {k['orders']:,} · GMV {k['gmv']:,.2f} · AOV {k['aov'] if k['aov'] is not None else '-'}")
    print("\n  Triggers by rule")
    for rule, n in (ch["triggers_by_rule"] or {"(none)": 0}).items():
        print(f"    {rule:18} {n:>8,}")
    print("\n  Dead letters by reason")
    for reason, n in (ch["dead_letters_by_reason"] or {"(none)": 0}).items():
        print(f"    {reason:18} {n:>8,}")
    checks: list[tuple[str, Any, Any]] = [
        ("distinct events in ClickHouse", ch["events"], truth["events_valid_distinct"]),
        ("distinct events on enriched topic", len(tally.event_ids), truth["events_valid_distinct"]),
        ("persons stitched (ClickHouse)", ch["persons"], truth["expected_persons"]),
        ("persons stitched (topics)", tally.persons, truth["expected_persons"]),
        ("cart-abandon triggers", ch["triggers_by_rule"].get("cart_abandon", 0), truth["abandoned_carts"]),
        ("triggered carts = abandoned carts", sorted(t["correlation_key"] for t in tally.of_rule("cart_abandon"))
         == truth["abandoned_cart_ids"], True),
        ("orders (KPI table)", ch["kpis"]["orders"], truth["orders"]),
        ("GMV (KPI table)", round(ch["kpis"]["gmv"], 2), round(truth["revenue"], 2)),
        ("dead letters", sum(ch["dead_letters_by_reason"].values()), sum(truth["malformed_by_reason"].values())),
        ("dead letters by reason", ch["dead_letters_by_reason"], truth["malformed_by_reason"]),
    ]
    print(f"\n  Input: {truth['records_sent']:,} records = {truth['events_valid_distinct']:,} distinct events "
          f"+ {truth['duplicates']:,} duplicates + {sum(truth['malformed_by_reason'].values()):,} malformed")
    if truth.get("over_merged_humans"):
        print(f"  Shared devices: {truth['shared_devices']}; humans the skeleton identity rule over-merges "
              f"into another member: {truth['over_merged_humans']} (the identity graph of issue 6 splits them)")
    print("\n  Check against ground truth")
    ok = True
    for label, got, want in checks:
        good = got == want
        ok &= good
        print(f"    {'✓' if good else '✗'} {label:36} {got!s:>12} (expected {want})")
    print("\n  " + ("All checks agree with the simulator's ground truth." if ok else "MISMATCH: see ✗ above."))
    return 0 if ok else 1
