"""deploy/ cannot be run here (no Docker engine): cross-check it against the code.

Fast, no network. Parses deploy/docker-compose.yml, the Prometheus, Grafana and
ClickHouse configuration and the dashboard, and checks them against Settings, the
topic registry and the names below.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import tomllib
import xml.etree.ElementTree as ET
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from streams.settings import ENV_PREFIX, Settings
from streams.topics import ALL_TOPICS

# --- Names the code provides; update here when the code changes. -----------------
# `touchline` subcommands, as streams/cli.py's parser defines them; keep the two in step.
CLI_SUBCOMMANDS = {"run", "worker", "sink", "simulate", "migrate", "topics", "broker", "report", "bench", "faults", "load", "schemas", "collect", "import", "dlq", "profile", "fit-purchase-model", "erase"}
# ClickHouse tables (streams/sink/migrations) dashboards may read -> columns they may use.
CLICKHOUSE_TABLES = {
    "kpi_events_hourly": {"hour", "channel", "store_id", "event_type", "events", "revenue", "items", "persons",
                          "member_persons"},
    "kpi_events_minute": {"minute", "channel", "events"},
    "kpi_sessions_hourly": {"hour", "channel", "sessions", "bounces", "page_views", "converted"},
    "kpi_persons": {"person_id", "first_seen", "first_touch", "first_referrer", "first_order", "orders", "revenue"},
    "kpi_dead_letters_hourly": {"hour", "reason", "dead_letters"},
    "touchpoints_enriched": {"event_type", "person_id", "event_time", "store_id"},
    "sessions": {"session_id", "person_id", "start_time", "end_time"},
    "ref_spend": {"day", "channel", "campaign_id", "amount", "clicks", "is_deleted"},
    "identity_changes": {"kind", "identifiers", "resolver", "event_time", "reason"},
    "identity_assignments": {"person_id", "member_id", "is_deleted"},
    "member_snapshots": {"person_id", "member_id", "lifecycle", "member_grid", "browse_without_buying",
                         "interest_shift", "last_seen", "is_deleted", "p_alive", "expected_purchases_30d"},
    "member_segments": {"person_id", "as_of", "version", "lifecycle", "member_grid", "browse_without_buying",
                        "interest_shift"},
    "triggers": {"trigger_id", "rule", "channel", "outcome", "reason", "fired_at"},
    # a parameterized view (migrations 0005, 0009): window_days is its parameter
    "trigger_outcomes": {"trigger_id", "revenue", "window_days"},
}
# Base tables are ReplacingMergeTree: a query must read them with FINAL to count a replayed row once.
CLICKHOUSE_FINAL_TABLES = {"touchpoints_enriched", "sessions", "ref_spend", "identity_changes", "identity_assignments",
                           "member_snapshots", "member_segments", "triggers"}
# Prometheus metrics (streams/metrics.py) -> labels dashboards may group by.
METRICS = {
    "touchline_ingest_outcomes_total": {"channel", "type", "outcome", "reason"},
    "touchline_dead_letters_total": {"reason"},
    "touchline_consumer_lag_records": {"group", "topic", "partition"},
    "touchline_event_processing_seconds_bucket": {"stage", "le"},
    "touchline_trigger_latency_seconds_bucket": {"rule", "le"},
    "touchline_triggers_fired_total": {"rule"},
    "touchline_stage_batch_seconds_bucket": {"stage", "le"},
    "touchline_stage_cpu_seconds_total": {"stage"},
    "touchline_persons": {"stage", "partition"},
    "touchline_state_bytes": {"table", "partition"},
    "touchline_stream_time_seconds": {"stage", "partition"},
    "touchline_sink_rows_written_total": {"table"},
    "touchline_sink_insert_seconds_bucket": {"table", "le"},
    "touchline_sink_batch_rows_bucket": {"table", "le"},
    "touchline_sink_insert_retries_total": {"table"},
    "touchline_sink_insert_failures_total": {"table"},
    "touchline_sink_duplicate_rows_total": {"table"},
}
PROMETHEUS_BUILTIN = {"up": {"job", "instance"}}
SQL_WORDS = {"SELECT", "FROM", "WHERE", "GROUP", "BY", "ORDER", "AS", "AND", "OR", "NOT", "IS",
             "NULL", "IN", "LIMIT", "ASC", "DESC", "FINAL", "JOIN", "ON", "LEFT", "INNER", "FULL", "OUTER",
             "CROSS", "USING"}
CLICKHOUSE_HTTP_PORT = 8123  # clickhouse-server's default http_port (not overridden)
PROMETHEUS_PORT = 9090  # Prometheus' default --web.listen-address (not overridden)
# ----------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SETTINGS_ENV = {f"{ENV_PREFIX}{f.name.upper()}" for f in dataclasses.fields(Settings)}


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def interpolate(value: Any) -> str:
    """Compose variable substitution as `docker compose` would do it with an .env
    that sets the required (`${X:?msg}`) variables and nothing else."""
    def sub(m: re.Match[str]) -> str:
        op, arg = m.group(2) or "", m.group(3) or ""
        if op.endswith("?"):
            return base64.b64encode(bytes(32)).decode()  # stands for the operator's value
        return arg if op.endswith("-") else ""
    return re.sub(r"\$\{([A-Z0-9_]+)(?:(:?[-?])([^}]*))?\}", sub, str(value))


def env(service: str) -> dict[str, str]:
    return {k: interpolate(v) for k, v in (services()[service].get("environment") or {}).items()}


def touchline_services() -> list[str]:
    return [name for name, svc in services().items() if "build" in svc]


def subcommands(service: str) -> list[str]:
    return re.findall(r"\btouchline\s+([a-z][a-z-]*)", " ".join(services()[service]["command"]))


def settings_of(service: str) -> Settings:
    return Settings.from_env(env(service))


def host_port(address: str) -> tuple[str, int]:
    parts = urlsplit(address if "//" in address else f"//{address}")
    assert parts.hostname and parts.port, address
    return parts.hostname, parts.port


def clickhouse_users() -> dict[str, ET.Element]:
    root = ET.parse(DEPLOY / "clickhouse/users.d/touchline.xml").getroot()
    return {user.tag: user for user in root.find("users")}


def password_matches(user: str, password: str) -> bool:
    stored = clickhouse_users()[user].findtext("password_sha256_hex")
    return stored == hashlib.sha256(password.encode()).hexdigest()


def datasources() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/datasources.yml").read_text())
    uids = [ds["uid"] for ds in doc["datasources"]]
    assert len(uids) == len(set(uids)), f"duplicate datasource uids: {uids}"
    return {ds["uid"]: ds for ds in doc["datasources"]}


def dashboard_panels() -> list[dict[str, Any]]:
    panels = []
    for path in sorted((DEPLOY / "grafana/dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            panels += [panel, *panel.get("panels", [])]
    return [p for p in panels if p["type"] != "row"]


def queries(ds_type: str) -> list[dict[str, Any]]:
    return [t for p in dashboard_panels() for t in p["targets"] if t["datasource"]["type"] == ds_type]


def test_every_image_is_pinned() -> None:
    images = [svc["image"] for svc in services().values()]
    images += re.findall(r"^FROM\s+(\S+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag and tag != "latest" and re.search(r"\d", tag), image
    assert re.match(r"python:3\.11\.\d+-slim", images[-1]), images[-1]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert {services()[s]["image"] for s in touchline_services()} == {f"touchline:{version}"}
    plugins = services()["grafana"]["environment"]["GF_PLUGINS_PREINSTALL_SYNC"].split(",")
    assert all(re.fullmatch(r"[a-z0-9-]+@\d+\.\d+\.\d+", p) for p in plugins), plugins


def test_touchline_env_names_are_settings_fields() -> None:
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        used = set(re.findall(r"\bTOUCHLINE_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
        assert used <= SETTINGS_ENV, f"{path.relative_to(ROOT)}: {sorted(used - SETTINGS_ENV)}"
    for name in touchline_services():
        assert set(env(name)) <= SETTINGS_ENV
        settings = settings_of(name)  # parses and validates, as the process will
        assert not settings.embedded and settings.dead_letter_key and settings.store == "rocksdb://"


def test_service_urls_point_at_compose_services() -> None:
    kafka_env = env("kafka")
    for name in touchline_services():
        s = settings_of(name)
        host, port = host_port(s.kafka_bootstrap)
        assert host in services() and f"//{host}:{port}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
        host, port = host_port(s.schema_registry_url)
        assert host in services() and env(host)["SCHEMA_REGISTRY_LISTENERS"].endswith(f":{port}")
        url = urlsplit(s.clickhouse_url)
        assert (url.hostname, url.port) == ("clickhouse", CLICKHOUSE_HTTP_PORT)
        assert url.username and url.password and password_matches(url.username, url.password)
    registry_store = env("schema-registry")["SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS"]
    assert f"//{settings_of('touchline-init').kafka_bootstrap}" in registry_store


def test_prometheus_scrapes_every_touchline_process() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    scraped = set()
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for target in (t for sc in job["static_configs"] for t in sc["targets"]):
            host, port = host_port(target)
            assert host == "localhost" or host in services(), target
            scraped.add((host, port))
    expected = set()
    for name in touchline_services():
        s, cmds = settings_of(name), subcommands(name)
        if "worker" in cmds:
            expected.add((name, s.web_port + s.worker_id))
        if "sink" in cmds:
            expected.add((name, s.sink_metrics_port))
    assert expected and expected <= scraped
    assert {t for t in scraped if t[0].startswith("touchline")} == expected


def test_grafana_datasources_point_at_services() -> None:
    ds = datasources()
    prom = [d for d in ds.values() if d["type"] == "prometheus"]
    assert len(prom) == 1 and host_port(prom[0]["url"]) == ("prometheus", PROMETHEUS_PORT)
    [ch] = [d for d in ds.values() if d["type"] == "grafana-clickhouse-datasource"]
    data = ch["jsonData"]
    assert (data["host"], data["port"], data["protocol"]) == ("clickhouse", CLICKHOUSE_HTTP_PORT, "http")
    assert password_matches(data["username"], ch["secureJsonData"]["password"])
    plugins = services()["grafana"]["environment"]["GF_PLUGINS_PREINSTALL_SYNC"]
    assert "grafana-clickhouse-datasource@" in plugins


def test_grafana_clickhouse_user_is_read_only() -> None:
    root = ET.parse(DEPLOY / "clickhouse/users.d/touchline.xml").getroot()
    user = clickhouse_users()[datasources()["touchline-clickhouse"]["jsonData"]["username"]]
    profile = root.find(f"profiles/{user.findtext('profile')}")
    assert profile is not None and profile.findtext("readonly") == "1"
    # the plugin sets max_execution_time on every query
    assert profile.find("constraints/max_execution_time/changeable_in_readonly") is not None
    grants = [q.text or "" for q in user.findall("grants/query")]
    assert grants and all(re.fullmatch(r"GRANT SELECT ON \w+\.\*", g) for g in grants), grants


def test_dashboard_panels_use_provisioned_datasources() -> None:
    ds = datasources()
    panels = dashboard_panels()
    assert panels
    for panel in panels:
        for ref in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert ref["uid"] in ds and ds[ref["uid"]]["type"] == ref["type"], panel["title"]


def test_dashboard_sql_reads_only_known_tables_and_columns() -> None:
    used = set()
    for query in queries("grafana-clickhouse-datasource"):
        sql = re.sub(r"'(?:[^'\\]|\\.)*'", "''", query["rawSql"])  # string literals name no column
        tables = set(re.findall(r"\b(?:FROM|JOIN)\s+([A-Za-z_][\w.]*)", sql, re.I))
        for table in tables & CLICKHOUSE_FINAL_TABLES:
            reads = re.findall(rf"\b(?:FROM|JOIN)\s+{table}\b(?:\s+AS\s+\w+)?(\s+FINAL\b)?", sql, re.I)
            assert all(reads), f"{table} without FINAL in {sql}"
        assert tables and tables <= set(CLICKHOUSE_TABLES), sql
        # bare identifiers that are not functions, macros, keywords, aliases or tables
        names = set(re.findall(r"(?<![$\w.])([A-Za-z_]\w*)\b(?!\s*\()", sql))
        names -= SQL_WORDS | set(re.findall(r"\bAS\s+(\w+)", sql, re.I)) | tables
        columns = set().union(*(CLICKHOUSE_TABLES[t] for t in tables))
        assert names <= columns, f"unknown columns {sorted(names - columns)} in {sql}"
        used |= tables
    assert used == set(CLICKHOUSE_TABLES)


def test_clickhouse_dashboards_pin_the_plugin_and_the_reporting_time_zone() -> None:
    from streams import dashboards

    plugins = services()["grafana"]["environment"]["GF_PLUGINS_PREINSTALL_SYNC"].split(",")
    assert f"grafana-clickhouse-datasource@{dashboards.PLUGIN_VERSION}" in plugins  # the macros it expands
    home = env("grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith("/etc/grafana/dashboards/") and (DEPLOY / "grafana/dashboards" / Path(home).name).is_file()
    boards = [json.loads(p.read_text()) for p in dashboards.dashboards()]
    assert len({b["uid"] for b in boards}) == len(boards)
    for board in boards:
        ids = [p["id"] for p in dashboards.walk(board["panels"])]
        assert len(ids) == len(set(ids)), board["uid"]
        if dashboards.clickhouse_panels(board):
            tz = Settings().reporting_timezone
            [var] = [v for v in board["templating"]["list"] if v["name"] == "reporting_tz"]
            assert (var["type"], var["query"], var["current"]["value"], board["timezone"]) == ("constant", tz, tz, tz)
            descriptions = {p["id"]: p.get("description", "") for p in dashboards.walk(board["panels"])}
            for panel in dashboards.clickhouse_panels(board):
                if (panel.dashboard_uid, panel.panel_id) in NOW_PANELS:
                    assert "not limited by the time range" in descriptions[panel.panel_id].lower(), panel.title
                    continue
                assert "$__timeFilter" in panel.raw_sql or "$__fromTime" in panel.raw_sql, panel.title


# Panels that show the state now, whatever the time range (and say so in their description).
NOW_PANELS = {("touchline-identity", 7), ("touchline-identity", 8), ("touchline-members", 7), ("touchline-members", 8),
              ("touchline-members", 9), ("touchline-members", 10)}


def test_dashboard_promql_uses_known_metrics() -> None:
    known = METRICS | PROMETHEUS_BUILTIN
    used = set()
    for query in queries("prometheus"):
        expr = query["expr"]
        names = set(re.findall(r"\b(touchline_\w+|up)\b(?=\s*[\[{)])", expr))
        assert names and names <= set(known), expr
        for labels in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            for label in (x.strip() for x in labels.split(",")):
                assert any(label in known[n] for n in names), expr
        used |= names
    assert set(METRICS) <= used


def test_touchline_commands_are_cli_subcommands() -> None:
    commands = {name: subcommands(name) for name in touchline_services()}
    assert all(cmds and set(cmds) <= CLI_SUBCOMMANDS for cmds in commands.values()), commands
    assert commands["touchline-init"] == ["topics", "migrate"]
    workers = [n for n, cmds in commands.items() if cmds == ["worker"]]
    assert len(workers) >= 2 and [n for n, cmds in commands.items() if cmds == ["sink"]]
    ids = [settings_of(n).worker_id for n in workers]
    assert sorted(ids) == list(range(len(workers))), ids
    for name in touchline_services():
        if name != "touchline-init":
            dep = services()[name]["depends_on"]["touchline-init"]
            assert dep["condition"] == "service_completed_successfully"


def test_topic_settings_agree_between_init_workers_and_sink() -> None:
    keys = ("partitions", "topic_prefix", "replication_factor", "kafka_bootstrap",
            "schema_registry_url", "clickhouse_url", "dead_letter_key")
    seen = {k: {getattr(settings_of(n), k) for n in touchline_services()} for k in keys}
    assert all(len(v) == 1 for v in seen.values()), seen
    assert settings_of("touchline-init").replication_factor <= 1  # one Kafka node
    cluster_id = env("kafka")["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_bind_mounts_exist_and_dashboards_are_mounted() -> None:
    mounts = {}
    for name, svc in services().items():
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
                mounts[target] = DEPLOY / source
    doc = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/dashboards.yml").read_text())
    for provider in doc["providers"]:
        assert list(mounts[provider["options"]["path"]].glob("*.json")), provider


def test_readme_lists_every_registry_topic() -> None:
    readme = (DEPLOY / "README.md").read_text()
    s = settings_of("touchline-init")
    for spec in ALL_TOPICS:
        assert f"`{spec.name(s)}` | {spec.partitions(s)} |" in readme, spec.name(s)
    assert "touchline topics" in readme and "exactly_once" in readme
