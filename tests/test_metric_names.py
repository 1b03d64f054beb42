"""Prometheus naming rules for every metric in streams/metrics.py, and its helpers (fast, no network).

Rules: the ``touchline_`` prefix; counters end in ``_total`` and nothing else does;
times are in seconds and sizes in bytes (no ``_ms``, ``_milliseconds``, ``_kb``...);
histograms carry their unit; no label names a person, member, event or other
unbounded id.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from streams import metrics
from streams.pipeline import table_sizes

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"Counter", "Gauge", "Histogram", "Summary"}
HISTOGRAM_UNITS = ("_seconds", "_bytes", "_rows", "_records")  # what a histogram may measure
TIME_WORDS = {"time", "latency", "duration", "delay", "age", "elapsed", "wait"}
FORBIDDEN_LABEL = re.compile(r"^(person|member|event_id|trigger_id|dead_letter_id|session_id|cart_id|order_id)|_id$")
NOT_BASE_UNITS = re.compile(r"_(ms|millis|milliseconds|us|ns|minutes|hours|days|kb|mb|gb|kib|mib|gib)(_|$)")


def declared() -> list[tuple[str, str, list[str], int]]:
    """(kind, name as written, label names, line) of every metric constructor call in streams/metrics.py."""
    tree = ast.parse((ROOT / "streams/metrics.py").read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in KINDS:
            name = node.args[0]
            assert isinstance(name, ast.Constant) and isinstance(name.value, str), ast.dump(node)
            labels_node = node.args[2] if len(node.args) > 2 else next(
                (k.value for k in node.keywords if k.arg == "labelnames"), None)
            labels = [] if labels_node is None else ast.literal_eval(labels_node)
            found.append((node.func.id, name.value, list(labels), node.lineno))
    return found


def test_metrics_module_declares_metrics() -> None:
    """The AST walk below sees every metric the module holds (so the rules cover them all)."""
    objects = {v._name for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)}
    names = [name.removesuffix("_total") for _, name, _, _ in declared()]
    assert sorted(names) == sorted(objects) and len(names) >= 25


@pytest.mark.parametrize("kind,name,labels,line", declared(), ids=[d[1] for d in declared()])
def test_metric_follows_the_naming_rules(kind: str, name: str, labels: list[str], line: int) -> None:
    where = f"streams/metrics.py:{line} {name}"
    assert re.fullmatch(r"touchline_[a-z][a-z0-9_]*[a-z0-9]", name), where
    assert (kind == "Counter") == name.endswith("_total"), f"{where}: only counters end in _total"
    assert not NOT_BASE_UNITS.search(name), f"{where}: use base units (seconds, bytes)"
    if kind == "Histogram":
        assert name.endswith(HISTOGRAM_UNITS), f"{where}: a histogram's name ends in its unit"
    if TIME_WORDS & set(name.split("_")):
        assert name.endswith(("_seconds", "_seconds_total")), f"{where}: times are in seconds"
    for label in labels:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", label) and label != "le", f"{where}: label {label}"
        assert not FORBIDDEN_LABEL.search(label), f"{where}: label {label!r} is unbounded (an id)"


def test_every_dashboard_metric_is_declared() -> None:
    names = {name.removesuffix("_total") for _, name, _, _ in declared()}
    for path in sorted((ROOT / "deploy/grafana/dashboards").glob("*.json")):
        for expr in re.findall(r'"expr": "((?:[^"\\]|\\.)*)"', path.read_text()):
            for used in re.findall(r"\btouchline_\w+", expr):
                base = re.sub(r"_(total|bucket|count|sum)$", "", used)
                assert base in names, f"{path.name}: {used} is not in streams/metrics.py"


@pytest.mark.parametrize("amounts", [[], [0.0], [0.05, 0.05, 3.0, 1e9], [i / 7 for i in range(200)]])
def test_observe_many_equals_observe_in_a_loop(amounts: list[float]) -> None:
    registry = CollectorRegistry()
    buckets = (0.05, 0.1, 1.0, 10.0)
    fast = Histogram("fast_seconds", "", ["stage"], buckets=buckets, registry=registry)
    slow = Histogram("slow_seconds", "", ["stage"], buckets=buckets, registry=registry)
    metrics.observe_many(fast.labels("x"), amounts)
    slow_child = slow.labels("x")
    for a in amounts:
        slow_child.observe(a)

    def samples(name: str) -> list[tuple[str, dict[str, str], float]]:
        return [(s.name.removeprefix(name), s.labels, s.value) for m in registry.collect()
                if m.name == name for s in m.samples if not s.name.endswith("_created")]

    assert samples("fast_seconds") == samples("slow_seconds")


def test_observe_many_falls_back_to_observe() -> None:
    seen: list[float] = []

    class Plain:
        def observe(self, amount: float) -> None:
            seen.append(amount)

    metrics.observe_many(Plain(), [1.0, 2.0])
    assert seen == [1.0, 2.0]


def test_lag_records() -> None:
    assert metrics.lag_records(100, 60) == 40
    assert metrics.lag_records(100, 100) == 0
    assert metrics.lag_records(100, 120) == 0  # a stale high watermark never gives a negative lag
    assert metrics.lag_records(100, None) == 100  # nothing committed: the group starts at the beginning
    assert metrics.lag_records(100, None, low_watermark=30) == 70
    assert metrics.lag_records(100, -1001, low_watermark=-1001) == 100  # librdkafka's "invalid offset"


def test_stream_time_gauge_takes_milliseconds_and_exports_seconds() -> None:
    metrics.STREAM_TIME.labels("test-stage", "0").set(1_793_462_400_123)
    value = metrics._STREAM_TIME_SECONDS.labels("test-stage", "0")._value.get()
    assert value == pytest.approx(1_793_462_400.123)
    metrics._STREAM_TIME_SECONDS.remove("test-stage", "0")


def test_table_sizes_count_every_key_and_estimate_bytes_per_partition() -> None:
    table = {f"p{i}": {"n": i, "pad": "x" * (i % 3)} for i in range(1000)}

    def partition_of(key: str) -> int:
        return int(key[1:]) % 4

    sizes = asyncio.run(table_sizes(table, partition_of, {0, 1, 2}, chunk=100))
    assert set(sizes) == {0, 1, 2}  # partition 3 is not held here
    for part, (count, size) in sizes.items():
        keys = [k for k in table if partition_of(k) == part]
        assert count == len(keys) == 250
        exact = sum(len(json.dumps(k)) + len(json.dumps(table[k])) for k in keys)
        assert abs(size - exact) <= 0.1 * exact
    assert asyncio.run(table_sizes({}, partition_of, {5})) == {5: (0, 0)}


def test_counters_gauges_and_histograms_are_the_only_kinds() -> None:
    kinds = {type(v) for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)}
    assert kinds <= {Counter, Gauge, Histogram}
