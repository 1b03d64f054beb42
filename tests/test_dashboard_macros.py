"""streams.dashboards.expand against the plugin's own expectations.

The literal outputs below are those of grafana-clickhouse-datasource v4.20.0's
pkg/macros/macros_test.go (TestInterpolate, TestInterpolateNestedMacros,
TestInterpolateBackslashEscapedStringLiterals and the per-macro tests), plus
the Grafana template-variable step the plugin's frontend runs first."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from streams import dashboards
from streams.dashboards import clickhouse_panels, expand

FROM = datetime(2014, 11, 12, 11, 45, 26, 123000, tzinfo=UTC)  # 1415792726.123
TO = datetime(2015, 11, 12, 11, 45, 26, 456000, tzinfo=UTC)  # 1447328726.456


def x(sql: str, interval_s: float = 60, variables: dict[str, str] | None = None) -> str:
    return expand(sql, FROM, TO, interval_s, variables or {})


@pytest.mark.parametrize(("sql", "want"), [
    ("select * from foo where $__timeFilter(cast(sth as timestamp))",
     "select * from foo where cast(sth as timestamp) >= toDateTime(1415792726) AND cast(sth as timestamp) <= toDateTime(1447328726)"),
    ("select * from foo where $__timeFilter(cast(sth as timestamp) )",
     "select * from foo where cast(sth as timestamp) >= toDateTime(1415792726) AND cast(sth as timestamp) <= toDateTime(1447328726)"),
    ("select * from foo where $__timeFilter_ms(cast(sth as timestamp))",
     "select * from foo where cast(sth as timestamp) >= fromUnixTimestamp64Milli(1415792726123) AND cast(sth as timestamp) <= fromUnixTimestamp64Milli(1447328726456)"),
    ("select * from foo where ( date >= $__fromTime and date <= $__toTime ) limit 100",
     "select * from foo where ( date >= toDateTime(1415792726) and date <= toDateTime(1447328726) ) limit 100"),
    ("select * from foo where ( date >= $__fromTime_ms ) and ( date <= $__toTime_ms ) limit 100",
     "select * from foo where ( date >= fromUnixTimestamp64Milli(1415792726123) ) and ( date <= fromUnixTimestamp64Milli(1447328726456) ) limit 100"),
    ("$__dateFilter(dateCol)", "dateCol >= toDate('2014-11-12') AND dateCol <= toDate('2015-11-12')"),
    ("$__dateTimeFilter(dateCol, timeCol)",
     "(dateCol >= toDate('2014-11-12') AND dateCol <= toDate('2015-11-12')) AND (timeCol >= toDateTime(1415792726) AND timeCol <= toDateTime(1447328726))"),
    ("$__dt(d,t)", "(d >= toDate('2014-11-12') AND d <= toDate('2015-11-12')) AND (t >= toDateTime(1415792726) AND t <= toDateTime(1447328726))"),
    ("$__timeFrom(ts) $__timeTo(ts)", "ts >= toDateTime(1415792726) ts <= toDateTime(1447328726)"),
    ("$__timeGroup(ts, 5m) $__timeGroup(ts, '1h')",
     "toStartOfInterval(toDateTime(ts), INTERVAL 300 second) toStartOfInterval(toDateTime(ts), INTERVAL 3600 second)"),
    # nested macros expand innermost first (v4.20.0, macropro v1.0.1)
    ("SELECT $__timeInterval($__fromTime) AS from_time",
     "SELECT toStartOfInterval(toDateTime(toDateTime(1415792726)), INTERVAL 60 second) AS from_time"),
    ("SELECT $__timeInterval_ms($__fromTime_ms)",
     "SELECT toStartOfInterval(toDateTime64(fromUnixTimestamp64Milli(1415792726123), 3), INTERVAL 60000 millisecond)"),
    ("select * from foo where $__timeFilter(coalesce(closed_at, $__toTime))",
     "select * from foo where coalesce(closed_at, toDateTime(1447328726)) >= toDateTime(1415792726) AND coalesce(closed_at, toDateTime(1447328726)) <= toDateTime(1447328726)"),
    # ClickHouse backslash escapes do not open a comment
    (r"select * from foo where msg = 'it\'s -- fine' and $__fromTime",
     r"select * from foo where msg = 'it\'s -- fine' and toDateTime(1415792726)"),
    (r"select * from foo where msg = 'a\'/*x' and $__toTime", r"select * from foo where msg = 'a\'/*x' and toDateTime(1447328726)"),
    ("select * from foo where msg = 'it''s' and $__fromTime", "select * from foo where msg = 'it''s' and toDateTime(1415792726)"),
])
def test_plugin_cases(sql: str, want: str) -> None:
    assert x(sql) == want


def test_intervals() -> None:
    assert x("$__timeInterval(col)", 20) == "toStartOfInterval(toDateTime(col), INTERVAL 20 second)"
    assert x("$__timeInterval_ms(col)", 20) == "toStartOfInterval(toDateTime64(col, 3), INTERVAL 20000 millisecond)"
    assert x("$__interval_s", 20) == "20"
    assert x("$__interval_s $__interval_ms $__interval", 300) == "300 300000 5m"
    # below a second: seconds clamp to 1 (truncated), milliseconds stay
    assert x("$__interval_s $__timeInterval(c) $__interval_ms $__interval", 0.25) == \
        "1 toStartOfInterval(toDateTime(c), INTERVAL 1 second) 250 250ms"
    assert x("$__interval_s", 90.9) == "90"


def test_comments_blanked_and_macros_inside_them_ignored() -> None:
    assert x("SELECT 1 -- $__fromTime\nFROM t /* $__toTime */ WHERE $__timeFilter(a)") == \
        "SELECT 1 " + " " * len("-- $__fromTime") + "\nFROM t " + " " * len("/* $__toTime */") + \
        " WHERE a >= toDateTime(1415792726) AND a <= toDateTime(1447328726)"
    assert x("SELECT '-- $__fromTime'") == "SELECT '-- toDateTime(1415792726)'"  # inside a literal: expanded
    assert x("SELECT 1 /* unterminated $__toTime") == "SELECT 1 " + " " * len("/* unterminated $__toTime")
    assert x("SELECT 1 -- 时区") == "SELECT 1 " + " " * len("-- 时区".encode())  # one space per byte


def test_unknown_macros_and_longer_names_are_left_alone() -> None:
    assert x("$__unknown(a) $__fromTimeX $__conditionalAll(1=1, $v)") == \
        "$__unknown(a) $__fromTimeX $__conditionalAll(1=1, $v)"


def test_wrong_arity_is_an_error() -> None:
    for sql in ("$__timeFilter()", "$__timeFilter(a, b)", "$__dateFilter", "$__timeInterval(a,b)", "$__dt(a)",
                "$__timeGroup(ts)", "$__timeGroup(ts, nope)"):
        with pytest.raises(ValueError):
            x(sql)


def test_variables_then_macros() -> None:
    sql = "SELECT toDate($__timeInterval(t), '${reporting_tz}'), '$reporting_tz', [[reporting_tz]], $other, ${c:csv}"
    assert x(sql, 3600, {"reporting_tz": "Asia/Shanghai", "c": "web"}) == (
        "SELECT toDate(toStartOfInterval(toDateTime(t), INTERVAL 3600 second), 'Asia/Shanghai'), "
        "'Asia/Shanghai', Asia/Shanghai, $other, web")
    assert dashboards.replace_variables("IN ($ch)", {"ch": ["web", "app"]}) == "IN ('web','app')"


def test_seconds_truncate_and_zones_convert() -> None:
    shanghai = timezone(timedelta(hours=8))
    t0 = datetime(2025, 3, 2, 0, 30, 0, 999000, tzinfo=shanghai)  # 2025-03-01T16:30:00.999Z
    t1 = datetime(2025, 3, 2, 7, 59, 59, 999000, tzinfo=shanghai)  # 2025-03-01T23:59:59.999Z
    got = expand("$__timeFilter(c) | $__timeFilter_ms(c) | $__dateFilter(d)", t0, t1, 60, {})
    assert got == ("c >= toDateTime(1740846600) AND c <= toDateTime(1740873599) | "
                   "c >= fromUnixTimestamp64Milli(1740846600999) AND c <= fromUnixTimestamp64Milli(1740873599999) | "
                   "d >= toDate('2025-03-01') AND d <= toDate('2025-03-01')")  # UTC dates, not Shanghai's
    naive = expand("$__fromTime", datetime(2025, 3, 1, 16, 30), t1, 60, {})
    assert naive == "toDateTime(1740846600)"


def test_clickhouse_panels_reads_targets_and_rows(tmp_path) -> None:
    ch = {"type": "grafana-clickhouse-datasource", "uid": "touchline-clickhouse"}
    prom = {"type": "prometheus", "uid": "touchline-prometheus"}
    dash = {"uid": "d", "panels": [
        {"id": 1, "type": "stat", "title": "A", "datasource": ch, "fieldConfig": {"defaults": {"unit": "percentunit"}},
         "targets": [{"refId": "A", "rawSql": "SELECT 1", "format": 1}]},
        {"id": 2, "type": "timeseries", "title": "P", "datasource": prom, "targets": [{"expr": "up"}]},
        {"id": 3, "type": "row", "title": "R", "collapsed": True, "panels": [
            {"id": 4, "type": "timeseries", "title": "B", "datasource": ch,
             "targets": [{"refId": "A", "datasource": ch, "rawSql": "SELECT 2", "format": 0}]}]},
    ], "templating": {"list": [{"name": "reporting_tz", "type": "constant", "query": "Asia/Shanghai",
                                "current": {"value": "Asia/Shanghai"}}]}}
    panels = clickhouse_panels(dash)
    assert [(p.panel_id, p.title, p.type, p.raw_sql, p.format, p.unit) for p in panels] == [
        (1, "A", "stat", "SELECT 1", "table", "percentunit"), (4, "B", "timeseries", "SELECT 2", "time_series", None)]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(dash))
    assert clickhouse_panels(path) == panels
    assert dashboards.variables(path) == {"reporting_tz": "Asia/Shanghai"}
    assert dashboards.dashboards(tmp_path) == [path]
    assert all(p.suffix == ".json" for p in dashboards.dashboards())
