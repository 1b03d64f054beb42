"""Child process of tests/test_cluster.py: the migrations on chDB, single-node or in cluster form.

    python tests/chdb_cluster_child.py single|one-shard|two-shards|replicated DATA_DIR [PROFILE_SETTINGS_JSON]

chDB is ClickHouse in-process (one engine per process, hence a child). It has no
Keeper and no DDL queue, but it does read a server config: remote_servers (a
cluster of shards on "localhost", which it serves in-process), macros and an
in-memory test Keeper. So the cluster form runs here with two changes, made by
``Declustered`` below and nowhere else: ``ON CLUSTER c`` is dropped (the DDL runs
on the one engine instead of every node) and ``Replicated*MergeTree(path,
replica, args)`` becomes ``*MergeTree(args)`` (replicas cannot take inserts
here). The Replicated statements are also created as written, in a database of
their own, against the test Keeper and the macros. Every cluster statement goes
through ClickHouse's own parser (formatQuery).

Then the sink's writer (the real ClickHouseWriter, migrating through ``migrate(...,
cluster)``) inserts rows of every sink table through the plain (Distributed)
names, twice (the insert-once look-up must find them all), and every report and
dashboard query runs. Prints one JSON document.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_schemas import latest_examples  # noqa: E402

from streams.dashboards import clickhouse_panels, dashboards, expand, variables  # noqa: E402
from streams.report import clickhouse_summary  # noqa: E402
from streams.sink import clickhouse  # noqa: E402
from streams.sink.rows import TABLES, Table  # noqa: E402
from streams.sink.service import ClickHouseWriter, new_rows  # noqa: E402

CLUSTER = "touchline"
CONFIG = """<clickhouse>
  <tcp_port>9000</tcp_port>
  <zookeeper><implementation>testkeeper</implementation></zookeeper>
  <macros><shard>1</shard><replica>ch-s1-r1</replica></macros>
  <remote_servers><touchline>{shards}</touchline></remote_servers>
</clickhouse>
"""
# Shards on two names of this host: both are this engine (is_local), so a Distributed insert
# still writes each row once, but a read sees it twice. Two shards make ClickHouse plan every
# query as distributed (e.g. it refuses double-distributed JOINs); values are compared on one shard.
SHARD = "<shard><internal_replication>true</internal_replication><replica><host>{host}</host><port>9000</port></replica></shard>"
HOSTS = {"one-shard": ["localhost"], "two-shards": ["localhost", "127.0.0.1"]}


class Declustered:
    """The cluster form on one engine: see the module docstring."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.commands: list[str] = []

    def command(self, sql: str) -> Any:
        self.commands.append(sql)
        if sql.startswith("SYSTEM SYNC REPLICA"):
            return None
        return self.inner.command(declustered(sql))

    def query(self, sql: str, **kw: Any) -> Any:
        result = self.inner.query(sql, **kw)
        if "FROM system.tables" in sql and "schema_migrations" in sql:  # the layout check sees the cluster's engine
            result.result_rows[:] = [[f"Replicated{e}"] for [e] in result.result_rows]
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def declustered(sql: str) -> str:
    sql = re.sub(rf" ON CLUSTER {CLUSTER}\b", "", sql)
    return re.sub(r"\bReplicated(\w*MergeTree)\('[^']*', '[^']*'(?:, )?", r"\1(", sql)


def sample_rows(table: Table) -> list[list[Any]]:
    """Every example of the table's contract, and for events, sessions, triggers and dead letters
    many more with their own ids, persons and times."""
    spec = next(s for s, t in TABLES.items() if t is table)
    rows = [table.build(r, i) for i, r in enumerate(latest_examples(spec.schema))]
    col = {c: i for i, c in enumerate(table.columns)}
    t0 = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    more: list[list[Any]] = []
    if table.name == "touchpoints_enriched":
        types = ["page_viewed", "product_viewed", "product_added", "checkout_started", "order_completed"]
        for i in range(400):
            r = copy.deepcopy(rows[i % len(rows)])
            r[col["event_id"]] = f"e-{i:05d}"
            r[col["person_id"]] = f"p-{i % 37:03d}"
            r[col["member_id"]] = f"m-{i % 37:03d}" if i % 3 else None
            r[col["event_type"]] = types[i % len(types)]
            r[col["channel"]] = ["web", "app", "store", "mini_program"][i % 4]
            r[col["store_id"]] = f"s-{i % 3}" if i % 4 == 2 else None
            r[col["campaign"]] = "double11" if i % 5 == 1 else None
            r[col["revenue"]] = float(10 + i % 90) if types[i % len(types)] == "order_completed" else None
            r[col["items"]] = 1 + i % 4
            r[col["event_time"]] = datetime.fromtimestamp(t0 + i * 911.5, UTC)
            more.append(r)
    elif table.name == "sessions":
        for i in range(120):
            r = copy.deepcopy(rows[0])
            r[col["session_id"]] = f"sess-{i:04d}"
            r[col["person_id"]] = f"p-{i % 37:03d}"
            r[col["start_time"]] = datetime.fromtimestamp(t0 + i * 2903, UTC)
            r[col["end_time"]] = datetime.fromtimestamp(t0 + i * 2903 + 600, UTC)
            r[col["events"]] = 1 + i % 5
            r[col["page_views"]] = i % 4
            r[col["converted"]] = i % 6 == 0
            more.append(r)
    elif table.name == "triggers":
        for i in range(40):
            r = copy.deepcopy(rows[0])
            r[col["trigger_id"]] = f"t-{i:04d}"
            r[col["rule"]] = ["cart_abandoned", "welcome"][i % 2]
            r[col["person_id"]] = f"p-{i % 37:03d}"
            r[col["fired_at"]] = datetime.fromtimestamp(t0 + i * 5003, UTC)
            more.append(r)
    elif table.name == "dead_letters":
        for i in range(50):
            r = copy.deepcopy(rows[0])
            r[col["dead_letter_id"]] = f"dl-{i:04d}"
            r[col["reason"]] = ["schema_invalid", "oversize", "unknown_channel"][i % 3]
            r[col["failed_at"]] = datetime.fromtimestamp(t0 + i * 3607, UTC)
            more.append(r)
    if table.tombstone is not None:
        tomb = table.tombstone("2026-11-11|web|c" if table.name == "ref_spend" else "k", 99)
        more += [tomb] if tomb is not None else []
    return rows + more


def canonical(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (int, str, bool)) or value is None:
        return value
    return str(value)


def main() -> None:
    mode, data_dir = sys.argv[1], Path(sys.argv[2])
    if mode == "replicated":
        return replicated_only(data_dir)
    profile: dict[str, str] = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    out: dict[str, Any] = {"mode": mode}
    if mode == "single":
        client: Any = clickhouse.connect(f"chdb://{data_dir / 'chdb'}")
        cluster = ""
    else:
        import clickhouse_connect

        config = data_dir / "config.xml"
        data_dir.mkdir(parents=True, exist_ok=True)
        config.write_text(CONFIG.format(shards="".join(SHARD.format(host=h) for h in HOSTS[mode])))
        inner = clickhouse_connect.get_client(interface="chdb", path=str(data_dir / "chdb"),
                                              chdb_options={"config-file": str(config)})
        client, cluster = Declustered(inner), CLUSTER

    writer = ClickHouseWriter("chdb://unused", connect=lambda _dsn: client, cluster=cluster)
    writer.client()  # the sink's own path: connect, then migrate(client, cluster)
    out["migrated_again"] = clickhouse.migrate(client, cluster)
    out["tables"] = sorted(map(list, client.query(
        "SELECT name, engine FROM system.tables WHERE database = currentDatabase()").result_rows))

    inserted, found_again = {}, {}
    for table in TABLES.values():
        rows = sample_rows(table)
        if table.insert_once:  # the sink's path: the look-up of stored keys, then the insert
            fresh = new_rows(table, rows, lambda keys, span, t=table: writer.stored_keys(t, keys, span))
            writer.insert(table.name, table.columns, fresh)
            again = new_rows(table, rows, lambda keys, span, t=table: writer.stored_keys(t, keys, span))
            inserted[table.name], found_again[table.name] = len(fresh), len(rows) - len(again)
        else:
            writer.insert(table.name, table.columns, rows)
            inserted[table.name] = found_again[table.name] = len(rows)
    out["inserted"], out["found_again"] = inserted, found_again

    settings = {k: v for k, v in profile.items()}

    def rows_of(sql: str, extra: dict[str, str] | None = None) -> list[list[Any]]:
        return [list(r) for r in client.query(sql, settings={**settings, **(extra or {})}).result_rows]

    out["report"] = canonical(clickhouse_summary(rows_of))
    out["counts"] = {t.name: rows_of(f"SELECT count() FROM {t.name} FINAL")[0][0] for t in TABLES.values()}
    out["kpi_rows"] = {name: rows_of(f"SELECT count() FROM {name}")[0][0] for name, engine in out["tables"]
                       if name.startswith("kpi_") and engine != "MaterializedView"}
    views = {}
    for name, query in client.query("SELECT name, as_select FROM system.tables WHERE database = currentDatabase() "
                                    "AND engine = 'View'").result_rows:
        # a parameterised view gets 7 for each parameter ({name:Type})
        params = ", ".join(f"{p} = 7" for p in dict.fromkeys(re.findall(r"\{(\w+):\w+\}", query)))
        views[name] = canonical(rows_of(f"SELECT * FROM {name}{f'({params})' if params else ''} ORDER BY ALL"))
    out["views"] = views
    panels, refused = {}, []
    start, end = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    for path in dashboards():
        for panel in clickhouse_panels(path):
            sql = expand(panel.raw_sql, start, end, 86_400, variables(path))
            key = f"{panel.dashboard_uid}/{panel.panel_id}/{panel.ref_id}"
            panels[key] = canonical(rows_of(sql))
            if mode == "two-shards":
                try:
                    rows_of(sql, {"distributed_product_mode": "deny"})
                except Exception as exc:  # noqa: BLE001 - which panels need the profile's setting
                    refused.append([key, str(exc).split("(", 1)[0][:200]])
    out["panels"], out["refused_without_profile"] = panels, refused

    if mode != "single":
        out["parsed"] = parse_all(client.inner)
    print(json.dumps(out, sort_keys=True), flush=True)


def replicated_only(data_dir: Path) -> None:
    import clickhouse_connect

    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "config.xml"
    config.write_text(CONFIG.format(shards=SHARD.format(host="localhost")))
    client = clickhouse_connect.get_client(interface="chdb", path=str(data_dir / "chdb"),
                                           chdb_options={"config-file": str(config)})
    print(json.dumps({"replicas": create_replicated(client)}), flush=True)
    # Closing an engine holding replicated tables on the test Keeper hangs chDB's shutdown;
    # the output is complete, so end here, before the client is released.
    os.kill(os.getpid(), signal.SIGKILL)


def parse_all(inner: Any) -> int:
    """Every cluster statement, as written, through ClickHouse's parser."""
    stmts = [*clickhouse.migrations_table_statements(CLUSTER)]
    stmts += [s for _, _, plan in clickhouse.plan(CLUSTER) for s in plan]
    for stmt in stmts:
        literal = "'" + stmt.replace("\\", "\\\\").replace("'", "\\'") + "'"
        inner.query(f"SELECT formatQuery({literal})")
    return len(stmts)


def create_replicated(inner: Any) -> list[list[str]]:
    """The Replicated tables as written (less ON CLUSTER) in a database of their own: engine
    arguments and macros checked by ClickHouse against the test Keeper."""
    inner.command("CREATE DATABASE IF NOT EXISTS replicated_check")
    creates = [clickhouse.migrations_table_statements(CLUSTER)[0]]
    creates += [s for _, _, plan in clickhouse.plan(CLUSTER) for s in plan
                if s.startswith("CREATE TABLE") and " AS " not in s.split("(", 1)[0]]
    for stmt in creates:
        stmt = re.sub(r"^(CREATE TABLE IF NOT EXISTS )(\w+) ON CLUSTER \w+", r"\1replicated_check.\2", stmt)
        inner.command(stmt)
    return sorted(map(list, inner.query(
        "SELECT table, engine, zookeeper_path, replica_name FROM system.replicas "
        "WHERE database = 'replicated_check'").result_rows))


if __name__ == "__main__":
    main()
