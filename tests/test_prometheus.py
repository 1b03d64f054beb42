"""A real Prometheus scrapes the running stack and evaluates every dashboard query.

Two workers and the sink run on the embedded broker (``stack_factory``). A
Prometheus server (Debian's package; ``make prometheus`` installs it) is started
on a free loopback port with deploy/prometheus/prometheus.yml's jobs pointed at
the stack's processes, scraping every second. It starts before the traffic, so
every rate covers it. The traffic holds a cart that fires a cart-abandon
trigger, a resent event (a duplicate) and malformed records (dead letters).

Then every Prometheus target of every dashboard under deploy/grafana/dashboards/
is queried: it must succeed and return at least one finite sample. Grafana's
macros are substituted first: ``$__rate_interval`` by RATE_INTERVAL (longer than
the whole test, so each rate covers all of its traffic) and ``$__interval`` by
INTERVAL. Some values are checked against what was sent.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.kafka.broker import free_port
from streams.tally import TopicReader
from streams.topics import FEATURED, INGESTED, PERSON_OPS, RAW
from streams.triggers.definitions import BUILTIN_DIR, load
from tests.conftest import T0, encoded, touchpoint

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
MIN = 60_000
RATE_INTERVAL = "2m"  # stands for Grafana's $__rate_interval
INTERVAL = "5s"  # stands for Grafana's $__interval


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL with Grafana's macros substituted) of every Prometheus target."""
    found = []
    for path in sorted((ROOT / "deploy/grafana/dashboards").glob("*.json")):
        panels = json.loads(path.read_text())["panels"]
        for panel in [q for p in panels for q in (p, *p.get("panels", []))]:
            for target in panel.get("targets", []):
                if target["datasource"]["type"] == "prometheus":
                    expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
                    expr = expr.replace("$__interval", INTERVAL)
                    assert "$" not in expr, f"{path.name} {panel['title']}: unsubstituted macro in {expr}"
                    found.append((path.name, panel["title"], expr))
    return found


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return data["result"]

    def value(self, expr: str) -> float | None:
        """The single sample of ``expr``, or None when it has none."""
        result = self.query(expr)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def by(self, expr: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}

    def wait_until(self, what: str, read: Callable[[], Any], ok: Callable[[Any], bool],
                   timeout_s: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            seen = read()
            if ok(seen):
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last seen: {seen!r}")
            time.sleep(0.25)


@contextmanager
def prometheus_server(tmp_path: Path, targets: dict[str, list[int]]) -> Iterator[Prometheus]:
    """A Prometheus scraping 127.0.0.1:<port> for each job of deploy/prometheus/prometheus.yml."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run `make prometheus` (Debian package prometheus)")
    deploy = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = [job for job in deploy["scrape_configs"] if job["job_name"].startswith("touchline-")]
    assert {job["job_name"] for job in jobs} == set(targets), "a deploy job has no process here (or the reverse)"
    for job in jobs:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{port}" for port in targets[job["job_name"]]]}]
        job["scrape_interval"] = job["scrape_timeout"] = "1s"
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": jobs}
    home = tmp_path / "prometheus"
    home.mkdir()
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(home / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={home / 'prometheus.yml'}", f"--storage.tsdb.path={home / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    try:
        prom = Prometheus(f"http://127.0.0.1:{port}")
        expected = sum(len(ports) for ports in targets.values())

        def health() -> list[str]:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited {proc.returncode}: {(home / 'prometheus.log').read_text()}")
            try:
                active = prom.get("/api/v1/targets", state="active")["activeTargets"]
            except OSError:  # not listening yet
                return []
            return [t["health"] for t in active]

        prom.wait_until("every target up", health, lambda h: h == ["up"] * expected)
        yield prom
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()


def _cart(cart_id: str) -> dict[str, object]:
    return {"cart_id": cart_id, "product_id": "sku-1", "price": 399.0, "quantity": 1}


def _abandoner(tag: str, member: str, t0: int) -> list[dict[str, Any]]:
    """Browse anonymously, log in (the anonymous person merges into the member), add to cart, leave."""
    anon = {"anonymous_id": f"cookie-{tag}"}
    return [
        touchpoint(f"{tag}1", "page_viewed", t0, identifiers=anon),
        touchpoint(f"{tag}2", "login", t0 + 1 * MIN, identifiers={**anon, "member_id": member}),
        touchpoint(f"{tag}3", "product_added", t0 + 2 * MIN, identifiers=anon, properties=_cart(f"cart-{tag}")),
    ]


def test_every_dashboard_query_returns_data_from_a_real_prometheus(stack_factory, tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert any(name == "pipeline-health.json" for name, _, _ in queries)
    stack = stack_factory(workers=2)
    children = stack.supervisor.children
    targets = {
        "touchline-worker": [c.port for c in children if c.name.startswith("worker") and c.port],
        "touchline-sink": [c.port for c in children if c.name == "sink" and c.port],
    }
    assert len(targets["touchline-worker"]) == 2 and len(targets["touchline-sink"]) == 1
    delay = int(stack.settings.cart_abandon_delay_s * 1000)

    # Two rounds: a series first seen with its first increment shows no rate, so the
    # first round makes every series exist and the second one moves them all.
    t1 = T0
    round1 = [*_abandoner("a", "M100", t1),
              touchpoint("b1", "page_viewed", t1 + MIN, channel="app", identifiers={"anonymous_id": "device-b"})]
    t2 = t1 + 2 * MIN + delay + MIN
    round2 = [*_abandoner("c", "M300", t2),
              touchpoint("d1", "page_viewed", t2, channel="mini_program", identifiers={"anonymous_id": "openid-d"})]
    good = round1 + round2
    repeat = round1[-1]  # sent again in round 2: a duplicate
    malformed1 = [(b"k", b"\x00\x01")]  # not_wire_format
    malformed2 = [
        (b"k", b'{"json": true}'),  # not_wire_format
        encoded(touchpoint("x1", "page_viewed", t2, channel="fax", identifiers={"anonymous_id": "c2"})),
    ]
    malformed = malformed1 + malformed2

    with prometheus_server(tmp_path, targets) as prom:
        reader = TopicReader(stack.settings)

        def sink_rows() -> dict[str, float]:
            return prom.by("sum by (table) (touchline_sink_rows_written_total)", "table")

        stack.produce([encoded(e) for e in round1] + malformed1)
        stack.tick(t1 + 2 * MIN + delay + 1)
        stack.wait_for(reader, lambda t: len(t.event_ids) == len(round1) and len(t.triggers) == 1
                       and len(t.dead_letters) == len(malformed1))
        prom.wait_until("round 1 in ClickHouse, as Prometheus sees it", sink_rows, lambda rows: rows.get(
            "touchpoints_enriched") == len(round1) and rows.get("triggers") == 1 and rows.get("dead_letters") == 1)

        stack.produce([encoded(e) for e in round2] + malformed2 + [encoded(repeat)])
        stack.tick(t2 + 2 * MIN + delay + 1)
        tally = stack.wait_for(reader, lambda t: len(t.event_ids) == len(good) and len(t.triggers) == 2
                               and len(t.dead_letters) == len(malformed))
        reader.close()

        # Values, once Prometheus has scraped the final counts (each process's on its own schedule).
        def expect(expr: str, wanted: Any, label: str | None = None) -> None:
            read = (lambda: prom.by(expr, label)) if label else (lambda: prom.value(expr))
            prom.wait_until(f"{expr} == {wanted}", read, lambda seen: seen == wanted)

        expect('sum(touchline_ingest_outcomes_total{outcome="dead_letter"})', len(malformed))
        expect("sum by (reason) (touchline_dead_letters_total)", {"not_wire_format": 2, "unknown_channel": 1}, "reason")
        expect('sum(touchline_ingest_outcomes_total{outcome="duplicate"})', 1)
        expect('sum(touchline_ingest_outcomes_total{outcome="accepted"})', len(good) + 1)
        expect('sum by (stage) (touchline_event_processing_seconds_count{stage=~"identity|features|triggers"})',
               {"identity": len(good), "features": len(good), "triggers": len(good)}, "stage")
        # Every loaded rule's series exists from the start (at 0); the two carts were decided.
        rules = dict.fromkeys(load(BUILTIN_DIR), 0) | {"cart_abandon": 2}
        expect("sum by (rule) (touchline_triggers_fired_total)", rules, "rule")
        expect("sum by (rule) (touchline_trigger_latency_seconds_count)", {"cart_abandon": 2}, "rule")
        prom.wait_until("sink rows", sink_rows, lambda rows: rows.get("dead_letters") == len(malformed)
                        and rows.get("triggers") == 2 and rows.get("touchpoints_enriched") == len(good))

        # Gauges sampled on timers: persons every 10 s, lag every 5 s.
        persons = tally.persons  # each cookie merged into its member: M100, M300, device-b, openid-d
        assert persons == 4
        expect('sum(touchline_persons{stage="features"})', persons)
        expect('count(touchline_persons{stage="features"})', stack.settings.partitions)  # each held once
        expect('sum(touchline_persons{stage="triggers"})', persons)  # each entry keeps the person's features
        expect('sum(touchline_persons{stage="identity"})', 4)  # route keys: four anonymous ids
        state = prom.by("sum by (table) (touchline_state_bytes)", "table")
        assert {"identity-links", "identity-dedup", "member-features", "trigger-pending"} <= set(state)
        assert all(state[t] > 0 for t in ("identity-links", "member-features", "trigger-pending")), state
        lag_topics = {spec.name(stack.settings) for spec in (RAW, INGESTED, PERSON_OPS, FEATURED)}
        prom.wait_until("consumer lag drained",
                        lambda: prom.by("sum by (topic) (touchline_consumer_lag_records)", "topic"),
                        lambda lag: lag_topics <= set(lag) and all(v == 0 for v in lag.values()))
        assert prom.by('up{job=~"touchline-.*"}', "instance") == {
            f"127.0.0.1:{port}": 1.0 for ports in targets.values() for port in ports}

        # Every dashboard query, as Grafana would send it.
        failures = []
        for dashboard, title, expr in queries:
            result = prom.query(expr)
            values = [float(r["value"][1]) for r in result]
            if not values or not all(math.isfinite(v) for v in values):
                failures.append(f"{dashboard} / {title}: {expr} -> {result}")
        assert not failures, "\n".join(failures)
