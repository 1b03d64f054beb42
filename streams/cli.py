"""``touchline``: one command, one subcommand per process or chore."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from streams.features import fit_cli
from streams.settings import Settings, SettingsError


def _settings() -> Settings:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise SystemExit(f"touchline: {exc}") from exc
    if settings.schema_registry_url:
        from streams import avro

        avro.use_registry(settings.schema_registry_url)  # schema ids from the registry, in every process
    return settings


def _need_broker(s: Settings) -> None:
    if not s.kafka_bootstrap:
        raise SystemExit(
            "touchline: TOUCHLINE_KAFKA_BOOTSTRAP is not set. Start one with `touchline broker`, "
            "or use `touchline run`, which starts the embedded broker itself."
        )


def cmd_broker(args: argparse.Namespace) -> int:
    from streams.kafka.broker import EmbeddedBroker

    broker = EmbeddedBroker(port=args.port).start()
    print(f"embedded broker listening: TOUCHLINE_KAFKA_BOOTSTRAP={broker.bootstrap}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    broker.stop()
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from streams.kafka.clients import create_topics
    from streams.topics import ALL_TOPICS

    s = _settings()
    _need_broker(s)
    created = set(create_topics(s))
    for spec in ALL_TOPICS:
        mark = "created" if spec.name(s) in created else "exists"
        print(f"{spec.name(s):40} {spec.partitions(s):3} partitions  {mark:8} {spec.description}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from streams.sink.clickhouse import MigrationError, connect, migrate, script
    from streams.sink.cluster import ClusterRewriteError

    s = _settings()
    if args.cluster is not None and not args.print:
        raise SystemExit("touchline: --cluster goes with --print; to migrate a cluster set TOUCHLINE_CLICKHOUSE_CLUSTER "
                         "(the sink migrates too, and must use the same layout)")
    try:
        if args.print:
            print(script(s.clickhouse_cluster if args.cluster is None else args.cluster), end="")
            return 0
        applied = migrate(connect(s.clickhouse_dsn), s.clickhouse_cluster)
    except (ClusterRewriteError, MigrationError) as exc:
        raise SystemExit(f"touchline: {exc}") from exc
    target = s.clickhouse_dsn + (f" (cluster {s.clickhouse_cluster})" if s.clickhouse_cluster else "")
    print(f"{len(applied)} migration(s) applied to {target}: {', '.join(applied) or 'up to date'}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from faust import Worker

    from streams.pipeline import create_app

    s = _settings()
    if args.id is not None:
        s = s.with_overrides(worker_id=args.id)
    _need_broker(s)
    try:
        app = create_app(s)
    except SettingsError as exc:  # e.g. an invalid trigger definition: file:line of each problem
        raise SystemExit(f"touchline: {exc}") from exc
    from streams import avro

    avro.preload()  # every schema parsed before the first record, not on it
    worker = Worker(app, loglevel=s.log_level.lower(), quiet=True)
    # No terminal spinner: to spin it on every log record, Faust sets the root logger to DEBUG, and
    # then every debug call of aiokafka and Faust (one per message sent) builds a record that the
    # handlers drop -- about 6% of a busy worker's CPU (py-spy, `touchline bench`).
    worker.spinner = None
    worker.execute_from_commandline()  # returns only on shutdown (SIGTERM/SIGINT)
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    from prometheus_client import start_http_server

    from streams.sink.query import QueryServer
    from streams.sink.service import ClickHouseWriter, Sink, writer_for

    s = _settings()
    _need_broker(s)
    # connects (and migrates, in the cluster form when one is set) on first use, retried like inserts
    writer = ClickHouseWriter(s.clickhouse_dsn, cluster=s.clickhouse_cluster)
    start_http_server(s.sink_metrics_port, addr="0.0.0.0")
    server = QueryServer(writer, s.sink_query_port).start()
    sink = Sink(s, writer_for(s, writer))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: sink.stop_event.set())
    try:
        sink.run()
    finally:
        server.stop()
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from streams.simulate.producer import produce, send_clock_ticks, settle_time_ms, write_truth
    from streams.simulate.traffic import SimConfig, generate
    from streams.topics import RAW

    s = _settings()
    _need_broker(s)
    traffic = generate(SimConfig(seed=args.seed, events=args.events, persons=args.persons,
                                 cart_abandon_delay_ms=int(s.cart_abandon_delay_s * 1000)))
    produce(s, traffic, rate=args.rate)
    if args.tick:
        send_clock_ticks(s, settle_time_ms(s, traffic.truth))
    if args.truth:
        write_truth(args.truth, traffic.truth)
    print(f"sent {traffic.truth.records_sent} records to {RAW.name(s)}")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from streams.reference.loader import LoadError, load
    from streams.reference.rows import FileFormatError

    s = _settings()
    _need_broker(s)
    try:
        result = load(s, args.file, args.kind, allow_errors=args.allow_errors)
    except (FileFormatError, OSError) as exc:
        print(f"touchline load: {exc}", file=sys.stderr)
        return 2
    except LoadError as exc:
        print(f"touchline load: {exc}", file=sys.stderr)
        return 1
    print(result.summary())
    return 1 if result.withheld else 0


def cmd_collect(args: argparse.Namespace) -> int:
    from streams.collector.app import serve
    from streams.collector.core import WriteKeyError

    s = _settings()
    if args.port is not None:
        s = s.with_overrides(collector_port=args.port)
    _need_broker(s)
    try:
        return serve(s)
    except WriteKeyError as exc:
        raise SystemExit(f"touchline collect: {exc}") from exc


def cmd_dlq(args: argparse.Namespace) -> int:
    from streams.deadletter import inspect, replay
    from streams.deadletter.sealing import configured_sealer

    s = _settings()
    _need_broker(s)
    sealer = configured_sealer(s)
    no_key = ("touchline dlq: no dead-letter key: set TOUCHLINE_DEAD_LETTER_KEY, or TOUCHLINE_DATA_DIR to the "
              "directory holding the workers' dead-letter.key")
    try:
        if args.dlq_command == "inspect":
            if args.open and sealer is None:
                raise SystemExit(no_key)
            summary = inspect.summarise(
                inspect.read_dead_letters(s), reasons=args.reason or (), sources=args.source or (),
                open_with=sealer if args.open else None, configured_key_id=sealer.key_id if sealer else None,
                limit=args.limit,
            )
            if args.open:
                print(f"WARNING: {inspect.OPEN_WARNING}", file=sys.stderr)
            print(json.dumps(summary, ensure_ascii=False) if args.json else inspect.render(summary))
            return 0
        if not (args.reason or args.id or args.source or args.all):
            raise SystemExit("touchline dlq replay: say which dead letters: --reason, --source, --id (or --all)")
        if sealer is None:
            raise SystemExit(no_key)
        result = replay.replay(s, sealer, reasons=args.reason or (), ids=args.id or (), sources=args.source or (),
                               dry_run=args.dry_run, force=args.force)
        print(json.dumps(result.as_json(), ensure_ascii=False) if args.json else replay.render(result))
        return 1 if result.of("failed") else 0
    except (inspect.TopicMissing, TimeoutError) as exc:
        print(f"touchline dlq: {exc}", file=sys.stderr)
        return 2


def cmd_import(args: argparse.Namespace) -> int:
    from streams.importer.files import FileFormatError
    from streams.importer.mapping import MappingError
    from streams.importer.service import DeliveryFailed, run_import

    s = _settings()
    if not args.dry_run:
        _need_broker(s)
    try:
        result = run_import(s, args.file, args.mapping, force=args.force, dry_run=args.dry_run)
    except (MappingError, FileFormatError, OSError) as exc:
        print(f"touchline import: {exc}", file=sys.stderr)
        return 2
    except (DeliveryFailed, TimeoutError) as exc:
        print(f"touchline import: {exc}; no ledger entry was written, run it again", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from streams.report import clickhouse_summary
    from streams.sink.query import rows

    s = _settings()
    if args.html:
        from pathlib import Path

        from streams.htmlreport import write_report
        from streams.sink.query import QueryError

        path = Path(args.html).resolve()
        try:
            report = write_report(s, path)
        except (QueryError, OSError) as exc:  # the time range could not be read, or the file not written
            print(f"touchline report: {exc}", file=sys.stderr)
            return 2
        for p in report.failed:
            print(f"touchline report: panel {p.panel.title!r} ({p.key}) failed: {p.error}", file=sys.stderr)
        print(f"wrote {path}: {len(report.panels) - len(report.failed)} of {len(report.panels)} panels drawn "
              f"from {len(report.sections)} dashboard(s)" + (f", {len(report.failed)} failed" if report.failed else ""))
        return 1 if report.failed else 0
    summary = clickhouse_summary(lambda sql: rows(s, sql))
    print(json.dumps(summary, indent=None if args.json else 2))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from streams.identity.profile import BadIdentifier, lookup_for
    from streams.sink.query import QueryError

    try:
        found = lookup_for(_settings(), args.identifier)
    except (BadIdentifier, QueryError) as exc:
        print(f"touchline profile: {exc}", file=sys.stderr)
        return 2
    if found is None:
        print(f"touchline profile: no person holds {args.identifier.split(':', 1)[0]}:…", file=sys.stderr)
        return 1
    print(json.dumps(found, indent=2))
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    from streams.identity.profile import BadIdentifier
    from streams.privacy.erase import EraseError, main
    from streams.sink.query import QueryError

    s = _settings()
    _need_broker(s)
    try:
        main(s, args.identifier, args.reason, args.timeout)
    except BadIdentifier as exc:
        print(f"touchline erase: {exc}", file=sys.stderr)
        return 2
    except (EraseError, QueryError) as exc:
        print(f"touchline erase: not finished, run it again (every step is safe to repeat): {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from streams import avro

    if args.freeze:
        written = avro.freeze()
        print("\n".join(f"froze {w}" for w in written) or "every schema is frozen: nothing changed")
        return 0
    for name in avro.all_contract_names():
        versions = avro.versions(name)
        latest = versions[-1][0] if versions else 0
        changed = not versions or versions[-1][1] != avro.inlined(name)
        note = "  (changed since: run `touchline schemas --freeze`)" if changed else ""
        print(f"{name:48} v{latest:<3} id {avro.contract(name).schema_id:>10}{note}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from streams.run import run

    return run(events=args.events, workers=args.workers, seed=args.seed, persons=args.persons, rate=args.rate,
               shared_devices=args.shared_devices)


def cmd_faults(args: argparse.Namespace) -> int:
    from pathlib import Path

    from streams.faults import SCENARIOS, main

    return main(args.scenario or list(SCENARIOS), args.events, args.seed, Path(args.output))


def cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from streams.bench import bench

    bench(args.events, Path(args.output))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="touchline",
        description="Touchline: real-time omnichannel customer-data pipeline. "
        "Settings come from TOUCHLINE_* environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the whole pipeline on the embedded stack with simulated traffic, then a summary")
    p.add_argument("--events", type=int, default=20000, help="simulated touchpoints to send (default 20000)")
    p.add_argument("--workers", type=int, default=2, help="Faust worker processes (default 2)")
    p.add_argument("--persons", type=int, default=500, help="simulated humans (default 500)")
    p.add_argument("--seed", type=int, default=7, help="simulator seed (default 7)")
    p.add_argument("--rate", type=float, default=None, help="records per second to send (default: as fast as possible)")
    p.add_argument("--shared-devices", type=int, default=0,
                   help="cookies shared by several humans (family tablet, kiosk); default 0")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("worker", help="one Faust worker: ingest, identity, features and triggers agents")
    p.add_argument("--id", type=int, default=None, help="worker number (web port = TOUCHLINE_WEB_PORT + id)")
    p.set_defaults(func=cmd_worker)

    sub.add_parser("sink", help="the ClickHouse sink process").set_defaults(func=cmd_sink)

    p = sub.add_parser("simulate", help="send seeded, simulated omnichannel traffic to the raw topic")
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--persons", type=int, default=500)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rate", type=float, default=None, help="records per second (default: unlimited)")
    p.add_argument("--tick", action="store_true", help="end with clock ticks past the last cart-abandon delay and session timeout")
    p.add_argument("--truth", default=None, help="write the simulator's ground truth to this JSON file")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("profile", help="the person holding an identifier: their identifiers (personal ones hashed) "
                       "and merge history")
    p.add_argument("identifier", help="type:value, e.g. phone:+8613800001234 or member_id:M100")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("erase", help="erase a person on request (personal-information law, GDPR): identity links, "
                                     "features, pending triggers, ClickHouse rows; their identifiers are suppressed "
                                     "so replays cannot bring them back; an audit row records it")
    p.add_argument("--identifier", required=True, metavar="TYPE:VALUE", help="any identifier of the person")
    p.add_argument("--reason", default="", help="kept in the audit log: ticket number, legal basis")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the pipeline (default 300)")
    p.set_defaults(func=cmd_erase)

    p = sub.add_parser("schemas", help="list the Avro contracts with their versions and fixed schema ids")
    p.add_argument("--freeze", action="store_true", help="write a new version file for each changed schema")
    p.set_defaults(func=cmd_schemas)

    p = sub.add_parser("migrate", help="apply ClickHouse migrations (idempotent)")
    p.add_argument("--print", action="store_true",
                   help="print the statements instead of running them (no connection); the cluster form when "
                        "TOUCHLINE_CLICKHOUSE_CLUSTER (or --cluster) is set")
    p.add_argument("--cluster", metavar="NAME", default=None,
                   help="with --print: show the form for this cluster (default TOUCHLINE_CLICKHOUSE_CLUSTER)")
    p.set_defaults(func=cmd_migrate)
    sub.add_parser("topics", help="create the Kafka topics of the registry (idempotent)").set_defaults(func=cmd_topics)

    p = sub.add_parser("broker", help="run the embedded Kafka-protocol broker in the foreground")
    p.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("bench", help="events per CPU-second of the pipeline beside the raw ceiling")
    p.add_argument("--events", type=int, default=60000)
    p.add_argument("--output", default="var/bench/latest.json", help="JSON results file")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("faults", help="fault scenarios (worker kills, rebalance, sink outage, garbage, hot key) "
                                      "compared with a fault-free run; exit 1 on any difference")
    p.add_argument("scenario", nargs="*", help="scenario names (default: all)")
    p.add_argument("--events", type=int, default=3000)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--output", default="var/faults/latest.json", help="JSON results file")
    p.set_defaults(func=cmd_faults)

    p = sub.add_parser("load", help="load a reference file (stores, products, calendar, spend) onto its compacted topic")
    p.add_argument("file", help="CSV with a header or JSON Lines, optionally .gz (see README: Reference data)")
    p.add_argument("--kind", required=True, choices=["stores", "products", "calendar", "spend"])
    p.add_argument("--allow-errors", action="store_true",
                   help="load the valid rows even if some are rejected (default: load nothing, exit 1)")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("collect", help="the HTTP collector: POST /v1/batch of JSON touchpoints to the raw topic")
    p.add_argument("--port", type=int, default=None, help="port (default TOUCHLINE_COLLECTOR_PORT, 8088)")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("dlq", help="dead letters: inspect what was rejected and why; replay them after a fix")
    dlq = p.add_subparsers(dest="dlq_command", required=True)
    q = dlq.add_parser("inspect", help="summarise the dead-letter topic: reasons, sources, times, sizes")
    q.add_argument("--reason", action="append", help="only this reason (repeatable)")
    q.add_argument("--source", action="append",
                   help="only this source topic, or a family of them: collector, import/crm (repeatable)")
    q.add_argument("--open", action="store_true",
                   help="decrypt payloads with the configured key and preview them (may show personal data)")
    q.add_argument("--json", action="store_true", help="the summary as one line of JSON")
    q.add_argument("--limit", type=int, default=10, help="latest dead letters listed one by one (default 10)")
    q = dlq.add_parser("replay", help="re-feed dead letters through ingestion (after a fix); safe to repeat")
    q.add_argument("--reason", action="append", help="replay dead letters with this reason (repeatable)")
    q.add_argument("--id", action="extend", nargs="+", metavar="DEAD_LETTER_ID", help="replay these dead letters")
    q.add_argument("--source", action="append", help="replay dead letters from this source (repeatable)")
    q.add_argument("--all", action="store_true", help="replay every dead letter")
    q.add_argument("--dry-run", action="store_true", help="decrypt and convert, send nothing")
    q.add_argument("--force", action="store_true",
                   help="send even dead letters replayed before (skips reading the raw topic for earlier replays)")
    q.add_argument("--json", action="store_true", help="the outcome as one line of JSON")
    p.set_defaults(func=cmd_dlq)

    p = sub.add_parser("import", help="import history (ERP, CRM, POS, web exports) as historical touchpoints")
    p.add_argument("file", help="CSV, JSON Lines (.jsonl/.ndjson; either optionally .gz) or Parquet")
    p.add_argument("--mapping", required=True, help="TOML mapping of columns to fields (see README: Importing history)")
    p.add_argument("--force", action="store_true", help="import even if the ledger says this file was imported")
    p.add_argument("--dry-run", action="store_true", help="read, convert and count; send nothing (needs no broker)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("report", help="print the KPI summary from ClickHouse, or write the dashboards as an HTML file")
    p.add_argument("--json", action="store_true", help="one line of JSON")
    p.add_argument("--html", metavar="FILE", default=None,
                   help="write the dashboards' ClickHouse panels over the data's time range to FILE: one "
                        "self-contained HTML page (no network needed); exits 1 if a panel's query failed")
    p.set_defaults(func=cmd_report)
    fit_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
