"""The cluster form of the migrations (streams/sink/cluster.py) and `touchline migrate` on a cluster.

Fast, no ClickHouse server: there is none here, and chDB has no clusters. The
rewrite is checked statement by statement for every shipped migration (so a new
migration file is covered the day it lands), against expected SQL written out
below, and `migrate` against a recording client.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from streams.cli import main
from streams.settings import Settings, SettingsError
from streams.sink import clickhouse
from streams.sink.cluster import ClusterRewriteError, cluster_statements, local_name
from streams.sink.rows import TABLES

CLUSTER = "touchline"
MIGRATIONS = clickhouse.migrations()
IDS = [name for _, name, _ in MIGRATIONS]


def kind(stmt: str) -> str:
    for k, pattern in [("table", r"CREATE\s+TABLE\b"), ("view", r"CREATE\s+MATERIALIZED\s+VIEW\b"),
                       ("plain_view", r"CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\b"), ("alter", r"ALTER\s+TABLE\b"),
                       ("insert", r"INSERT\s+INTO\b")]:
        if re.match(pattern, stmt, re.I):
            return k
    return "other"


def created_name(stmt: str) -> str:
    m = re.match(r"CREATE\s+(?:MATERIALIZED\s+VIEW|TABLE)\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", stmt, re.I)
    assert m, stmt
    return m.group(1)


def first_order_by(stmt: str) -> str:
    body = "\n".join(line.split("--")[0] for line in stmt.splitlines())
    m = re.search(r"\bORDER\s+BY\s+\(?\s*([^,)\s]+)", body, re.I)
    assert m, stmt
    return m.group(1)


def rewrite_all() -> list[tuple[str, list[str]]]:
    """(single-node statement, its cluster statements) over every migration, in order."""
    return [(s, cluster_statements([s], CLUSTER)) for _, _, sql in MIGRATIONS for s in clickhouse.statements(sql)]


# --- every shipped migration -------------------------------------------------------------


@pytest.mark.parametrize(("version", "name", "sql"), MIGRATIONS, ids=IDS)
def test_every_statement_of_every_migration_has_a_cluster_form(version: int, name: str, sql: str) -> None:
    single = clickhouse.statements(sql)
    assert single
    out = cluster_statements(single, CLUSTER)  # raises for a form it does not know
    assert out == [c for s in single for c in cluster_statements([s], CLUSTER)]  # statement by statement
    for stmt in single:
        assert kind(stmt) != "other", f"{name}: a new kind of statement: {stmt[:80]}"


@pytest.mark.parametrize(("version", "name", "sql"), MIGRATIONS, ids=IDS)
def test_each_form_is_rewritten_as_documented(version: int, name: str, sql: str) -> None:
    on = f" ON CLUSTER {CLUSTER}"
    for stmt in clickhouse.statements(sql):
        out = cluster_statements([stmt], CLUSTER)
        k = kind(stmt)
        if k == "table":
            table = created_name(stmt)
            local = f"{table}_local"
            engine = re.search(r"(?<=ENGINE = )(\w+)(\(([^()]*)\))?", stmt)
            assert engine and engine.group(1).endswith("MergeTree") and len(out) == 2, stmt
            args = "".join(f", {a}" for a in [engine.group(3)] if a)
            replicated = (f"Replicated{engine.group(1)}('/clickhouse/tables/{{shard}}/{{database}}/{local}', "
                          f"'{{replica}}'{args})")
            # the local table: the statement as written, renamed, ON CLUSTER, with the replicated engine
            assert out[0] == stmt.replace(f" {table} ", f" {local}{on} ", 1).replace(engine.group(0), replicated, 1)
            assert out[1] == (f"CREATE TABLE IF NOT EXISTS {table}{on} AS {local} ENGINE = Distributed({CLUSTER}, "
                              f"currentDatabase(), {local}, cityHash64({first_order_by(stmt)}))")
        elif k == "view":
            m = re.search(r"\bTO\s+(\w+)\s+AS\b.*\bFROM\s+(\w+)", stmt, re.S)
            assert m and len(out) == 1, stmt
            view = created_name(stmt)
            want = (stmt.replace(f" {view} ", f" {view}{on} ", 1).replace(f"TO {m.group(1)} ", f"TO {m.group(1)}_local ", 1)
                    .replace(f"FROM {m.group(2)} ", f"FROM {m.group(2)}_local ", 1))
            assert out == [want]
        elif k == "alter":
            m = re.match(r"ALTER\s+TABLE\s+(\w+)(.*)", stmt, re.S)
            assert m
            assert out == [f"ALTER TABLE {m.group(1)}_local{on}{m.group(2)}", f"ALTER TABLE {m.group(1)}{on}{m.group(2)}"]
        elif k == "insert":
            assert out == [stmt]  # backfills read and write the Distributed tables
        elif k == "plain_view":  # query-time views read the Distributed tables, created on every node
            name = re.match(r"CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", stmt).group(1)  # type: ignore[union-attr]
            assert out == [stmt.replace(f" {name} ", f" {name}{on} ", 1)]


def test_the_cluster_keeps_every_single_node_name_and_adds_replicated_local_tables() -> None:
    single_tables, single_views, engines, views = set(), set(), {}, {}
    for stmt, out in rewrite_all():
        if kind(stmt) == "table":
            single_tables.add(created_name(stmt))
        elif kind(stmt) == "view":
            single_views.add(created_name(stmt))
        for c in out:
            if kind(c) == "table":
                engines[created_name(c)] = re.search(r"ENGINE\s*=\s*(\w+)", c).group(1)  # type: ignore[union-attr]
            elif kind(c) == "view":
                views[created_name(c)] = c
    assert single_tables and single_views
    # the sink, the dashboards and report keep their names: the Distributed tables
    assert {t for t, e in engines.items() if e == "Distributed"} == single_tables
    assert {t for t, e in engines.items() if e != "Distributed"} == {local_name(t) for t in single_tables}
    assert all(engines[local_name(t)].startswith("Replicated") and engines[local_name(t)].endswith("MergeTree")
               for t in single_tables)
    assert set(views) == single_views
    for view, sql in views.items():  # views fire on each shard's local inserts and write local tables
        target = re.search(r"\bTO\s+(\w+)", sql).group(1)  # type: ignore[union-attr]
        sources = re.findall(r"\bFROM\s+(\w+)", sql)
        assert target.endswith("_local") and engines[target].startswith("Replicated"), view
        assert sources and all(s.endswith("_local") and engines[s].startswith("Replicated") for s in sources), view
    for stmt, out in rewrite_all():
        if kind(stmt) == "alter":  # every ALTER reaches the local table and then the Distributed one
            targets = [re.match(r"ALTER TABLE (\w+) ON CLUSTER touchline ", c).group(1) for c in out]  # type: ignore[union-attr]
            assert len(targets) == 2 and engines[targets[0]].startswith("Replicated"), stmt
            assert targets[1] == targets[0].removesuffix("_local") and engines[targets[1]] == "Distributed"
        if kind(stmt) == "insert":
            names = re.findall(r"\b(?:INTO|FROM)\s+(\w+)", out[0])
            assert names and all(engines[n] == "Distributed" for n in names), stmt


def test_every_ddl_runs_on_the_whole_cluster_and_only_ddl_does() -> None:
    for _, out in rewrite_all():
        for c in out:
            assert (f" ON CLUSTER {CLUSTER} " in c) == (kind(c) != "insert"), c
            assert c.count("ON CLUSTER") <= 1, c


# --- golden: concrete statements, the expected SQL written out ----------------------------


def statement(name: str, start: str) -> str:
    [found] = [s for _, n, sql in MIGRATIONS if n == name for s in clickhouse.statements(sql) if s.startswith(start)]
    return found


def test_golden_identity_changes() -> None:
    stmt = statement("0001_core_tables.sql", "CREATE TABLE IF NOT EXISTS identity_changes ")
    assert cluster_statements([stmt], "touchline") == [
        """CREATE TABLE IF NOT EXISTS identity_changes_local ON CLUSTER touchline (
    change_id String,
    kind LowCardinality(String),
    from_person String,
    into_person String,
    reason String,
    identifiers Array(String),
    evidence_event_id String,
    event_time DateTime64(3, 'UTC')
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/identity_changes_local', '{replica}')
ORDER BY change_id""",
        "CREATE TABLE IF NOT EXISTS identity_changes ON CLUSTER touchline AS identity_changes_local "
        "ENGINE = Distributed(touchline, currentDatabase(), identity_changes_local, cityHash64(change_id))",
    ]


def test_golden_ref_spend_keeps_engine_arguments_and_comments_and_shards_by_the_first_key_column() -> None:
    stmt = statement("0003_analytics.sql", "CREATE TABLE IF NOT EXISTS ref_spend ")
    assert cluster_statements([stmt], "touchline") == [
        """CREATE TABLE IF NOT EXISTS ref_spend_local ON CLUSTER touchline (
    day Date,
    channel LowCardinality(String),
    campaign_id String,  -- '' for always-on spend
    amount Float64,
    currency LowCardinality(String),
    impressions Nullable(UInt64),
    clicks Nullable(UInt64),
    leads Nullable(UInt64),
    version UInt64,
    is_deleted UInt8
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/ref_spend_local', '{replica}', version, is_deleted)
ORDER BY (day, channel, campaign_id)""",
        "CREATE TABLE IF NOT EXISTS ref_spend ON CLUSTER touchline AS ref_spend_local "
        "ENGINE = Distributed(touchline, currentDatabase(), ref_spend_local, cityHash64(day))",
    ]


def test_golden_view_alter_and_backfill() -> None:
    view = statement("0003_analytics.sql", "CREATE MATERIALIZED VIEW IF NOT EXISTS kpi_dead_letters_hourly_mv ")
    assert cluster_statements([view], "touchline") == [
        """CREATE MATERIALIZED VIEW IF NOT EXISTS kpi_dead_letters_hourly_mv ON CLUSTER touchline TO kpi_dead_letters_hourly_local AS
SELECT toStartOfHour(d.failed_at) AS hour, d.reason AS reason, count() AS dead_letters
FROM dead_letters_local AS d
GROUP BY hour, reason"""]
    alter = statement("0002_dead_letter_coordinates.sql", "ALTER TABLE dead_letters MODIFY COLUMN source_partition ")
    assert cluster_statements([alter], "touchline") == [
        "ALTER TABLE dead_letters_local ON CLUSTER touchline MODIFY COLUMN source_partition Int32",
        "ALTER TABLE dead_letters ON CLUSTER touchline MODIFY COLUMN source_partition Int32",
    ]
    backfill = statement("0003_analytics.sql", "INSERT INTO kpi_dead_letters_hourly")
    assert cluster_statements([backfill], "touchline") == ["""INSERT INTO kpi_dead_letters_hourly
SELECT toStartOfHour(failed_at) AS hour, reason, count()
FROM dead_letters FINAL
GROUP BY hour, reason"""]


def test_forms_beyond_the_shipped_ones() -> None:
    out = cluster_statements([
        "CREATE TABLE t (a String, b UInt8 DEFAULT 1) ENGINE = MergeTree() PARTITION BY b ORDER BY a SETTINGS index_granularity = 1024",
        "ALTER TABLE t ADD COLUMN c Map(String, String) AFTER b, COMMENT COLUMN a 'the key, really', DROP COLUMN IF EXISTS z",
        "CREATE MATERIALIZED VIEW v TO s AS SELECT t.a AS a, count() AS n FROM t GROUP BY t.a",
        "INSERT INTO s (a, n) SELECT a, count() FROM t GROUP BY a",
    ], "c1")
    assert out == [
        "CREATE TABLE t_local ON CLUSTER c1 (a String, b UInt8 DEFAULT 1) ENGINE = ReplicatedMergeTree("
        "'/clickhouse/tables/{shard}/{database}/t_local', '{replica}') PARTITION BY b ORDER BY a SETTINGS index_granularity = 1024",
        "CREATE TABLE t ON CLUSTER c1 AS t_local ENGINE = Distributed(c1, currentDatabase(), t_local, cityHash64(a))",
        "ALTER TABLE t_local ON CLUSTER c1 ADD COLUMN c Map(String, String) AFTER b, COMMENT COLUMN a 'the key, really', "
        "DROP COLUMN IF EXISTS z",
        "ALTER TABLE t ON CLUSTER c1 ADD COLUMN c Map(String, String) AFTER b, COMMENT COLUMN a 'the key, really', "
        "DROP COLUMN IF EXISTS z",
        "CREATE MATERIALIZED VIEW v ON CLUSTER c1 TO s_local AS SELECT t_local.a AS a, count() AS n FROM t_local "
        "GROUP BY t_local.a",
        "INSERT INTO s (a, n) SELECT a, count() FROM t GROUP BY a",
    ]
    # ORDER BY an expression, a comment and a string holding keywords and brackets
    [_, dist] = cluster_statements(["CREATE TABLE IF NOT EXISTS x (k String DEFAULT 'ORDER BY (', d Date) "
                                    "ENGINE = ReplacingMergeTree -- ORDER BY nothing\nORDER BY (toYYYYMM(d), k)"], "c")
    assert dist.endswith("cityHash64(toYYYYMM(d)))")


@pytest.mark.parametrize("stmt", [
    "DROP TABLE touchpoints_enriched",
    "RENAME TABLE a TO b",
    "CREATE TABLE t (a UInt8) ENGINE = Memory",
    "CREATE TABLE t (a UInt8) ENGINE = ReplicatedMergeTree('/p', 'r') ORDER BY a",
    "CREATE TABLE t (a UInt8) ENGINE = MergeTree ORDER BY tuple()",
    "CREATE TABLE t (a UInt8) ENGINE = MergeTree PRIMARY KEY a",
    "CREATE TABLE db.t (a UInt8) ENGINE = MergeTree ORDER BY a",
    "CREATE TABLE t ON CLUSTER c (a UInt8) ENGINE = MergeTree ORDER BY a",
    "CREATE TABLE t AS u",
    "ALTER TABLE t DELETE WHERE a = 1",
    "ALTER TABLE t ADD COLUMN b UInt8, MODIFY TTL d + INTERVAL 1 DAY",
    "ALTER TABLE t ADD INDEX i a TYPE minmax",
    "ALTER TABLE t ON CLUSTER c ADD COLUMN b UInt8",
    "CREATE MATERIALIZED VIEW v TO s AS SELECT a FROM t JOIN u USING (a)",
    "CREATE MATERIALIZED VIEW v TO s AS SELECT a FROM t WHERE a IN (SELECT a FROM u)",
    "CREATE MATERIALIZED VIEW v TO s AS SELECT a FROM db.t",
    "CREATE MATERIALIZED VIEW v ENGINE = MergeTree ORDER BY a AS SELECT a FROM t",
    "INSERT INTO t VALUES (1)",
    "OPTIMIZE TABLE t FINAL",
])
def test_forms_it_was_not_taught_are_refused_by_name(stmt: str) -> None:
    with pytest.raises(ClusterRewriteError, match="cannot rewrite for a cluster") as err:
        cluster_statements(["CREATE TABLE ok (a UInt8) ENGINE = MergeTree ORDER BY a", stmt], CLUSTER)
    assert " ".join(stmt.split())[:60] in str(err.value)


@pytest.mark.parametrize("name", ["", "a-b", "1x", "x y", "c; DROP"])
def test_cluster_names_are_identifiers(name: str) -> None:
    with pytest.raises(ClusterRewriteError):
        cluster_statements(["INSERT INTO a SELECT 1"], name)


# --- migrate() and `touchline migrate` ----------------------------------------------------


class Recorder:
    """A client that records what migrate runs; system.tables holds ``engine`` for schema_migrations."""

    def __init__(self, engine: str | None = None) -> None:
        self.engine = engine
        self.commands: list[str] = []
        self.records: list[list[Any]] = []

    def command(self, sql: str) -> None:
        self.commands.append(sql)
        if sql.startswith("CREATE TABLE IF NOT EXISTS schema_migrations") and self.engine is None:
            self.engine = "ReplicatedMergeTree" if "ON CLUSTER" in sql else "MergeTree"

    def query(self, sql: str) -> Any:
        class Result:
            result_rows: list[Any] = []
        result = Result()
        if "system.tables" in sql:
            result.result_rows = [[self.engine]] if self.engine else []
        elif sql == "SELECT version FROM schema_migrations":
            result.result_rows = [[v] for v, _ in self.records]
        return result

    def insert(self, table: str, rows: list[list[Any]], column_names: list[str]) -> None:
        assert table == "schema_migrations" and column_names == ["version", "name"]
        self.records += rows


def test_migrate_on_a_cluster_runs_the_cluster_form_once() -> None:
    client = Recorder()
    applied = clickhouse.migrate(client, CLUSTER)
    assert applied == IDS
    table = client.commands[0]
    assert table == ("CREATE TABLE IF NOT EXISTS schema_migrations ON CLUSTER touchline (version UInt32, name String, "
                     "applied_at DateTime DEFAULT now()) ENGINE = ReplicatedMergeTree("
                     "'/clickhouse/tables/{database}/schema_migrations', '{replica}') ORDER BY version")
    assert client.commands[1] == "SYSTEM SYNC REPLICA schema_migrations"
    assert client.commands[2:] == [s for _, _, stmts in clickhouse.plan(CLUSTER) for s in stmts]
    assert client.records == [[v, n] for v, n, _ in MIGRATIONS]
    client.commands.clear()
    assert clickhouse.migrate(client, CLUSTER) == []  # idempotent: only the table and the sync again
    assert client.commands == clickhouse.migrations_table_statements(CLUSTER)


def test_migrate_on_one_node_is_unchanged() -> None:
    client = Recorder()
    assert clickhouse.migrate(client) == IDS
    assert client.commands == [
        "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, applied_at DateTime DEFAULT now()) "
        "ENGINE = MergeTree ORDER BY version",
        *(s for _, _, sql in MIGRATIONS for s in clickhouse.statements(sql))]


def test_migrate_refuses_a_database_of_the_other_layout() -> None:
    with pytest.raises(clickhouse.MigrationError, match="migrated as a single node"):
        clickhouse.migrate(Recorder("MergeTree"), CLUSTER)
    with pytest.raises(clickhouse.MigrationError, match="migrated for a cluster"):
        clickhouse.migrate(Recorder("ReplicatedMergeTree"))


def test_migrate_rewrites_every_migration_before_running_any(monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = clickhouse.migrations()
    monkeypatch.setattr(clickhouse, "migrations", lambda: [*shipped, (99, "0099_new.sql", "DROP TABLE sessions")])
    client = Recorder()
    with pytest.raises(ClusterRewriteError, match="0099_new.sql: cannot rewrite .*DROP TABLE sessions"):
        clickhouse.migrate(client, CLUSTER)
    assert client.commands == [] and client.records == []
    assert clickhouse.migrate(Recorder()) == [*IDS, "0099_new.sql"]  # one node: any SQL, as written


def test_migrate_print_shows_the_statements_without_connecting(capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clickhouse, "connect", lambda dsn: pytest.fail("--print connected"))
    for argv, cluster in [(["migrate", "--print"], ""), (["migrate", "--print", "--cluster", CLUSTER], CLUSTER)]:
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert out == clickhouse.script(cluster)
        want = [*clickhouse.migrations_table_statements(cluster)]
        for version, name, stmts in clickhouse.plan(cluster):
            want += [*stmts, f"INSERT INTO schema_migrations (version, name) VALUES ({version}, '{name}')"]
        assert clickhouse.statements(out) == want  # the script splits back into exactly what migrate runs
        assert ("ON CLUSTER" in out) == bool(cluster)
    with pytest.raises(SystemExit, match="--cluster goes with --print"):
        main(["migrate", "--cluster", CLUSTER])
    with pytest.raises(SystemExit, match="cluster name must be an identifier"):
        main(["migrate", "--print", "--cluster", "no-such"])


# --- the setting ----------------------------------------------------------------------------


def test_cluster_setting() -> None:
    url = "http://u:p@ch-s1-r1:8123/default"
    s = Settings.from_env({"TOUCHLINE_CLICKHOUSE_URL": url, "TOUCHLINE_CLICKHOUSE_CLUSTER": CLUSTER})
    assert s.clickhouse_cluster == CLUSTER
    assert Settings.from_env(s.to_env()) == s
    assert Settings.from_env({}).clickhouse_cluster == ""
    with pytest.raises(SettingsError, match="TOUCHLINE_CLICKHOUSE_CLUSTER='touchline' needs a ClickHouse server"):
        Settings.from_env({"TOUCHLINE_CLICKHOUSE_CLUSTER": CLUSTER})  # the default URL is chDB
    with pytest.raises(SettingsError, match="chDB"):
        Settings.from_env({"TOUCHLINE_CLICKHOUSE_URL": "chdb:///tmp/x", "TOUCHLINE_CLICKHOUSE_CLUSTER": CLUSTER})
    with pytest.raises(SettingsError, match="letters, digits"):
        Settings.from_env({"TOUCHLINE_CLICKHOUSE_URL": url, "TOUCHLINE_CLICKHOUSE_CLUSTER": "a b"})


def test_a_plain_view_is_created_on_the_cluster_over_the_distributed_tables() -> None:
    sql = "CREATE VIEW IF NOT EXISTS v AS SELECT x FROM t FINAL WHERE y < {n:UInt32}"
    assert cluster_statements([sql], "touchline") == [
        "CREATE VIEW IF NOT EXISTS v ON CLUSTER touchline AS SELECT x FROM t FINAL WHERE y < {n:UInt32}"]


# --- the cluster form on chDB (child processes) ---------------------------------------------
# chDB has no Keeper or DDL queue but serves a cluster of shards on "localhost" in-process:
# tests/chdb_cluster_child.py runs the cluster form there (less ON CLUSTER, Replicated engines as
# plain ones), with the sink's own writer, and every report and dashboard query.

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CLUSTER_DIR = DEPLOY / "clickhouse" / "cluster"


def profile_settings(profile: str) -> dict[str, str]:
    """The settings deploy/clickhouse/cluster/users.d/cluster.xml adds to a profile."""
    root = ET.parse(CLUSTER_DIR / "users.d" / "cluster.xml").getroot()
    node = root.find(f"profiles/{profile}")
    assert node is not None, profile
    return {child.tag: (child.text or "").strip() for child in node}


@pytest.fixture(scope="module")
def chdb_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("chdb-cluster")
    profile = json.dumps(profile_settings("default"))
    procs = {mode: subprocess.Popen([sys.executable, str(ROOT / "tests" / "chdb_cluster_child.py"), mode,
                                     str(base / mode), profile], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, cwd=ROOT)
             for mode in ("single", "one-shard", "two-shards", "replicated")}
    out = {}
    for mode, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=240)
        # "replicated" ends itself with SIGKILL once it has printed (chDB hangs closing replicated tables)
        assert proc.returncode == (-signal.SIGKILL if mode == "replicated" else 0), f"{mode}: {stderr[-3000:]}"
        out[mode] = json.loads(stdout)
    return out


def test_on_one_shard_the_cluster_form_answers_every_query_as_one_node(chdb_runs: dict[str, Any]) -> None:
    single, one = chdb_runs["single"], chdb_runs["one-shard"]
    engines = dict(one["tables"])
    assert all(engines[name] == "Distributed" and engines[local_name(name)] != "Distributed"
               for name, engine in single["tables"] if engine not in ("MaterializedView", "View")
               and name != "schema_migrations")
    assert one["migrated_again"] == single["migrated_again"] == []  # the sink migrated first; nothing is left
    # the sink's writer: every row inserted through the Distributed tables, every key found again
    assert one["inserted"] == single["inserted"] and one["found_again"] == one["inserted"]
    assert one["counts"] == single["counts"] and min(one["counts"].values()) >= 1
    assert one["kpi_rows"] == {**single["kpi_rows"], **{local_name(k): v for k, v in single["kpi_rows"].items()}}
    assert one["report"] == single["report"] and one["report"]["kpis"]["orders"] > 0
    assert set(single["views"]) == {"trigger_outcomes"}
    assert one["views"] == single["views"] and all(single["views"].values())
    assert one["panels"] == single["panels"] and len(single["panels"]) >= 10


def test_on_two_shards_every_query_runs_with_the_cluster_profile(chdb_runs: dict[str, Any]) -> None:
    """Two shards make ClickHouse plan queries as distributed. Both are this one engine, so a
    read sees every row twice: only that the queries run is checked here."""
    single, two = chdb_runs["single"], chdb_runs["two-shards"]
    assert set(two["panels"]) == set(single["panels"]) and set(two["views"]) == set(single["views"])
    assert two["counts"] == {k: 2 * v for k, v in single["counts"].items()}
    assert two["found_again"] == two["inserted"]
    # without the profile's distributed_product_mode, the panels that JOIN two Distributed tables fail
    assert profile_settings("default")["distributed_product_mode"] == "global"
    assert {key for key, _ in two["refused_without_profile"]} == {
        "touchline-business-kpis/4/A", "touchline-business-kpis/10/A", "touchline-stores-channels/6/A"}
    assert all("Double-distributed IN/JOIN subqueries is denied" in err for _, err in two["refused_without_profile"])


def test_every_cluster_statement_parses_and_the_replicated_tables_take_the_macros(chdb_runs: dict[str, Any]) -> None:
    plan = [s for _, _, stmts in clickhouse.plan(CLUSTER) for s in stmts]
    assert chdb_runs["one-shard"]["parsed"] == len(clickhouse.migrations_table_statements(CLUSTER)) + len(plan)
    locals_ = {created_name(s) for s in plan if kind(s) == "table" and created_name(s).endswith("_local")}
    replicas = {table: (engine, path, replica) for table, engine, path, replica in chdb_runs["replicated"]["replicas"]}
    assert set(replicas) == locals_ | {"schema_migrations"}
    for table, (engine, path, replica) in replicas.items():
        assert engine.startswith("Replicated") and replica == "ch-s1-r1", table
        shard = "" if table == "schema_migrations" else "1/"  # the migrations table is on every node
        assert path == f"/clickhouse/tables/{shard}replicated_check/{table}", table


def test_the_sinks_keys_are_the_sharding_keys() -> None:
    """A record's key decides its shard, so a replayed record lands where the first copy is and
    the base tables' ReplacingMergeTree collapses them there."""
    dist = {created_name(c): c for _, out in rewrite_all() for c in out if "ENGINE = Distributed(" in c}
    for table in TABLES.values():
        assert dist[table.name].endswith(f"cityHash64({table.key}))"), table.name


# --- deploy/docker-compose.cluster.yml and deploy/clickhouse/cluster/ ------------------------


def compose(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / name).read_text())


def cluster_services() -> dict[str, dict[str, Any]]:
    return compose("docker-compose.cluster.yml")["services"]


def clickhouse_nodes() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in cluster_services().items() if s["image"].startswith("clickhouse/clickhouse-server:")}


def keeper_nodes() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in cluster_services().items() if s["image"].startswith("clickhouse/clickhouse-keeper:")}


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> file in deploy/ of each bind mount."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            out[target] = (DEPLOY / source).resolve()
    return out


def xml(path: Path) -> ET.Element:
    return ET.parse(path).getroot()


def test_cluster_compose_parses_with_two_shards_of_two_replicas_and_three_keepers() -> None:
    nodes, keepers = clickhouse_nodes(), keeper_nodes()
    assert len(nodes) == 4 and len(keepers) == 3
    server_image = compose("docker-compose.yml")["services"]["clickhouse"]["image"]
    assert {s["image"] for s in nodes.values()} == {server_image}
    assert {s["image"].rsplit(":", 1)[1] for s in keepers.values()} == {server_image.rsplit(":", 1)[1]}
    for name, service in {**nodes, **keepers}.items():
        assert service["hostname"] == name
        for target, source in mounts(service).items():
            assert source.is_file(), f"{name}: {source}"
            if target.endswith(".xml"):
                xml(source)  # parses
    for name in nodes:
        assert set(nodes[name]["depends_on"]) == set(keepers)
        assert "system.zookeeper" in " ".join(nodes[name]["healthcheck"]["test"])  # healthy = has a Keeper session
    # the single-node name stays, on exactly one node: the DSN and Grafana's datasource are unchanged
    assert len(aliased()) == 1


def test_every_node_has_the_cluster_config_and_its_own_macros() -> None:
    nodes = clickhouse_nodes()
    remote = xml(CLUSTER_DIR / "config.d" / "cluster.xml")
    [cluster] = list(remote.find("remote_servers"))  # type: ignore[arg-type]
    assert cluster.findtext("secret")  # inter-node queries run as their user, not `default`
    topology = {}
    for number, shard in enumerate(cluster.findall("shard"), start=1):
        assert shard.findtext("internal_replication") == "true"
        for replica in shard.findall("replica"):
            topology[replica.findtext("host")] = (str(number), replica.findtext("port"))
    assert set(topology) == set(nodes) and len(cluster.findall("shard")) == 2
    seen_replicas = set()
    for name, service in nodes.items():
        files = mounts(service)
        assert files["/etc/clickhouse-server/config.d/cluster.xml"] == CLUSTER_DIR / "config.d" / "cluster.xml"
        assert files["/etc/clickhouse-server/users.d/cluster.xml"] == CLUSTER_DIR / "users.d" / "cluster.xml"
        assert files["/etc/clickhouse-server/users.d/touchline.xml"] == DEPLOY / "clickhouse" / "users.d" / "touchline.xml"
        assert files["/etc/clickhouse-server/config.d/touchline.xml"] == DEPLOY / "clickhouse" / "config.d" / "touchline.xml"
        macros = xml(files["/etc/clickhouse-server/config.d/macros.xml"]).find("macros")
        assert macros is not None, name
        shard, replica = macros.findtext("shard"), macros.findtext("replica")
        assert (shard, topology[name][1]) == (topology[name][0], "9000"), name  # its shard in remote_servers
        assert replica == name  # unique across the cluster: schema_migrations is replicated on every node
        seen_replicas.add(replica)
    assert len(seen_replicas) == len(nodes)
    # the statements use exactly the macros the nodes define
    used = set(re.findall(r"\{(\w+)\}", " ".join(s for _, _, stmts in clickhouse.plan(CLUSTER) for s in stmts)))
    assert used == {"shard", "database", "replica"}


def test_keepers_form_one_quorum_and_the_nodes_know_them() -> None:
    servers, rafts = {}, []
    for name, service in keeper_nodes().items():
        config = xml(mounts(service)["/etc/clickhouse-keeper/keeper_config.xml"])
        ks = config.find("keeper_server")
        assert ks is not None and ks.find("server_id").get("from_env") == "KEEPER_SERVER_ID"  # type: ignore[union-attr]
        servers[name] = (service["environment"]["KEEPER_SERVER_ID"], ks.findtext("tcp_port"))
        rafts.append({s.findtext("hostname"): s.findtext("id") for s in ks.findall("raft_configuration/server")})
    # one Raft configuration: every keeper service, each with the id its container sets
    assert all(raft == {n: sid for n, (sid, _) in servers.items()} for raft in rafts)
    assert len({sid for sid, _ in servers.values()}) == len(servers)
    nodes_config = xml(CLUSTER_DIR / "config.d" / "cluster.xml")
    zookeeper = {(n.findtext("host"), n.findtext("port")) for n in nodes_config.findall("zookeeper/node")}
    assert zookeeper == {(name, port) for name, (_, port) in servers.items()}


def test_touchline_services_use_the_cluster_and_the_rest_is_the_single_node_stack() -> None:
    main, clustered = compose("docker-compose.yml")["services"], cluster_services()
    [cluster_name] = [c.tag for c in xml(CLUSTER_DIR / "config.d" / "cluster.xml").find("remote_servers")]  # type: ignore[union-attr]
    nodes = set(clickhouse_nodes())
    assert set(clustered) == (set(main) - {"clickhouse"}) | nodes | set(keeper_nodes())
    for name, service in main.items():
        if name == "clickhouse":
            continue
        other = dict(clustered[name])
        if "build" in service:  # the Touchline services: the same, plus the cluster
            env = {k: str(v) for k, v in other.pop("environment").items()}
            assert env == {**{k: str(v) for k, v in service["environment"].items()},
                           "TOUCHLINE_CLICKHOUSE_CLUSTER": cluster_name}
            s = Settings.from_env({k: v for k, v in env.items() if k != "TOUCHLINE_DEAD_LETTER_KEY"})
            assert s.clickhouse_cluster == cluster_name and urlsplit(s.clickhouse_url).hostname == "clickhouse"
            service = {k: v for k, v in service.items() if k != "environment"}
        if "clickhouse" in (service.get("depends_on") or {}):  # waits for every node instead
            deps, want = other.pop("depends_on"), service["depends_on"]
            service = {k: v for k, v in service.items() if k != "depends_on"}
            if isinstance(want, dict):
                assert deps == {**{k: v for k, v in want.items() if k != "clickhouse"},
                                **{n: want["clickhouse"] for n in nodes}}, name
            else:
                assert deps == [d for d in want if d != "clickhouse"] + aliased(), name
        assert other == service, name


def aliased() -> list[str]:
    """The nodes answering to `clickhouse`, the single-node name."""
    return [n for n, s in clickhouse_nodes().items()
            if "clickhouse" in (s.get("networks") or {}).get("default", {}).get("aliases", [])]


def test_cluster_profile_settings_are_for_profiles_the_users_have() -> None:
    users = xml(DEPLOY / "clickhouse" / "users.d" / "touchline.xml")
    profiles = {u.findtext("profile") for u in users.find("users")}  # type: ignore[union-attr]
    added = {p.tag for p in xml(CLUSTER_DIR / "users.d" / "cluster.xml").find("profiles")}  # type: ignore[union-attr]
    assert added == profiles == {"default", "grafana"}
    for profile in added:
        assert profile_settings(profile)["distributed_product_mode"] == "global"
    assert profile_settings("default")["distributed_foreground_insert"] == "1"
