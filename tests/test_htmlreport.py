"""`touchline report --html`: one self-contained HTML file drawn from the dashboards' ClickHouse queries.

Fast tests render fake panels and read the page as text (nothing refers out; data and labels are
escaped; a failed query shows its error). The browser tests (e2e) open the page in headless
Chromium (Debian's `chromium`, `make chromium`), read the DOM after the page's script drew the
charts, and compare the value on every dot, bar, cell and big number with the query result: a fake
one, then the real dashboards over a stack's ClickHouse, re-queried through `stack.query`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from streams import dashboards, htmlreport
from streams.cli import main
from streams.settings import Settings
from streams.sink import query as ch
from tests.conftest import T0, _live_pids_under, encoded, touchpoint

SVG_NS = "http://www.w3.org/2000/svg"
MIN = 60_000
HOUR = 3_600_000
NASTY = "<b>shop & </script><script>alert(1)</script>"  # a label that must stay text


# --- a fake dashboard and a fake ClickHouse -------------------------------------------------------
def _target(sql: str, fmt: int) -> dict[str, Any]:
    return {"refId": "A", "datasource": {"type": "grafana-clickhouse-datasource", "uid": "touchline-clickhouse"},
            "format": fmt, "rawSql": sql}


def _panel(pid: int, kind: str, title: str, sql: str, fmt: int = 1, unit: str | None = None,
           units: dict[str, str] | None = None) -> dict[str, Any]:
    overrides = [{"matcher": {"id": "byName", "options": name}, "properties": [{"id": "unit", "value": u}]}
                 for name, u in (units or {}).items()]
    return {"id": pid, "type": kind, "title": title, "targets": [_target(sql, fmt)],
            "datasource": {"type": "grafana-clickhouse-datasource", "uid": "touchline-clickhouse"},
            "fieldConfig": {"defaults": {"unit": unit} if unit else {}, "overrides": overrides}}


FAKE_DASHBOARD = {
    "uid": "fake-kpis", "title": "Fake KPIs <&>",
    "templating": {"list": [{"name": "reporting_tz", "type": "constant", "query": "UTC",
                             "current": {"value": "UTC"}}]},
    "panels": [
        {"id": 1, "type": "row", "title": "Business", "panels": []},
        _panel(2, "timeseries", "Events/s by channel", "SELECT $__timeInterval(event_time) AS time, channel, "
               "count() / $__interval_s AS events_per_s FROM touchpoints_enriched WHERE $__timeFilter(event_time) "
               "GROUP BY time, channel ORDER BY time", fmt=0, unit="reqps"),
        _panel(3, "table", "GMV by store", "SELECT store_id, sum(revenue) AS gmv, count() AS orders "
               "FROM touchpoints_enriched WHERE $__timeFilter(event_time) GROUP BY store_id", unit="short",
               units={"gmv": "currencyCNY"}),
        _panel(4, "stat", "Persons", "SELECT uniqExact(person_id) AS persons, uniqExact(member_id) AS members, "
               "members / persons AS member_share FROM touchpoints_enriched WHERE $__timeFilter(event_time)",
               units={"member_share": "percentunit"}),
        _panel(5, "timeseries", "Daily orders", "SELECT toDate(event_time, '${reporting_tz}') AS day, count() "
               "AS orders FROM touchpoints_enriched WHERE $__timeFilter(event_time) GROUP BY day", fmt=1),
        _panel(6, "barchart", "Broken <panel>", "SELECT nope FROM nowhere WHERE $__timeFilter(t)"),
        _panel(7, "timeseries", "Empty", "SELECT $__timeInterval(fired_at) AS time, count() AS n FROM triggers "
               "WHERE $__timeFilter(fired_at) GROUP BY time", fmt=0),
    ],
}
FIRST_MS, LAST_MS = T0 + 5 * MIN + 123, T0 + 71 * HOUR + 30 * MIN  # about 3 days: 1 h buckets
RESULTS: dict[str, dict[str, Any]] = {
    "events_per_s": {"columns": ["time", "channel", "events_per_s"], "rows": [
        ["2026-10-31 16:00:00", "web", 0.5], ["2026-10-31 16:00:00", NASTY, 0.25],
        ["2026-10-31 17:00:00", "web", 1 / 3], ["2026-10-31 19:00:00", "web", 2.0e-7]]},
    "gmv": {"columns": ["store_id", "gmv", "orders"], "rows": [
        ["S001", 1234.5, 3], [NASTY, 99.99, 1], [None, 0.0, 0], ["https://example.com/x?a=1&b=2", 7.0, 1]]},
    "persons": {"columns": ["persons", "members", "member_share"], "rows": [[12, 7, 7 / 12]]},
    "day": {"columns": ["day", "orders"], "rows": [["2026-11-01", 4], ["2026-11-02", 9]]},
    "fired_at": {"columns": ["time", "n"], "rows": []},
}


class FakeClickHouse:
    def __init__(self) -> None:
        self.sql: list[str] = []

    def __call__(self, sql: str) -> dict[str, Any]:
        self.sql.append(sql)
        if sql == htmlreport._TIME_RANGE_SQL:
            return {"columns": ["count()", "min", "max"], "rows": [[120, FIRST_MS, LAST_MS]]}
        if "nowhere" in sql:
            raise RuntimeError("Code: 60. DB::Exception: Unknown table expression identifier 'nowhere' <here>")
        for marker, result in RESULTS.items():
            if marker in sql:
                return result
        raise AssertionError(sql)


@pytest.fixture
def fake_dir(tmp_path: Path) -> Path:
    d = tmp_path / "dashboards"
    d.mkdir()
    (d / "fake.json").write_text(json.dumps(FAKE_DASHBOARD))
    (d / "no-clickhouse.json").write_text(json.dumps({"uid": "prom", "title": "Prometheus only", "panels": [
        {"id": 1, "type": "timeseries", "title": "up", "datasource": {"type": "prometheus", "uid": "p"},
         "targets": [{"refId": "A", "expr": "up"}]}]}))
    return d


def _fake_report(fake_dir: Path) -> tuple[htmlreport.Report, FakeClickHouse, str]:
    fake = FakeClickHouse()
    report = htmlreport.collect(Settings(reporting_timezone="Asia/Shanghai"), fake,
                                dashboards.dashboards(fake_dir), now=datetime(2026, 11, 22, tzinfo=UTC))
    return report, fake, htmlreport.render(report)


def _blocks(page: str) -> dict[str, dict[str, Any]]:
    found = re.findall(r'<script type="application/json" id="data-([\w-]+)">(.*?)</script>', page, re.S)
    return {key: json.loads(text) for key, text in found}


# --- fast: the page as text ---------------------------------------------------------------------------
def test_nothing_in_the_page_refers_out(fake_dir: Path) -> None:
    _, _, page = _fake_report(fake_dir)
    refs = re.findall(r"""\b(src|href|action|srcset|poster|data)\s*=\s*["']?([^"'\s>]*)""", page, re.I)
    assert refs and all(name.lower() == "href" and value.startswith("#") for name, value in refs), refs
    assert not re.search(r"url\s*\(|@import|<link|<img|<iframe|<object|<embed", page, re.I)
    assert re.findall(r"[a-z]+://\S*", page, re.I) == [f'{SVG_NS}";']  # a namespace name, never fetched
    assert "//" not in page.replace(SVG_NS, "")  # not even protocol-relative, nor a URL in the data
    assert "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; " in page


def test_every_panel_embeds_its_query_result_and_labels_stay_text(fake_dir: Path) -> None:
    report, _, page = _fake_report(fake_dir)
    blocks = _blocks(page)
    assert set(blocks) == {p.key for p in report.panels if p.error is None}
    for p in report.panels:
        if p.result is not None:
            assert blocks[p.key]["rows"] == p.result["rows"] and blocks[p.key]["sql"] == p.sql
    # the nasty label survives the round trip, but never appears as markup
    assert blocks["fake-kpis-3-A"]["rows"][1][0] == NASTY
    assert "<b>" not in page and "alert(1)</script>" not in page
    assert page.count("<script") == page.count("</script>") == len(blocks) + 2  # + the meta block + the code
    assert "<h2>Fake KPIs &lt;&amp;&gt;</h2>" in page and "<h3>Broken &lt;panel&gt;</h3>" in page


def test_a_failed_query_shows_its_error_and_is_counted(fake_dir: Path) -> None:
    report, _, page = _fake_report(fake_dir)
    assert [p.key for p in report.failed] == ["fake-kpis-6-A"]
    assert 'data-failed="1">1 of 6 panel queries failed' in page
    assert "Unknown table expression identifier &#x27;nowhere&#x27; &lt;here&gt;" in page
    assert 'data-error="fake-kpis-6-A"' in page and 'id="data-fake-kpis-6-A"' not in page
    ok = htmlreport.render(htmlreport.Report(report.time_range, "UTC", report.generated_at,
                                             [htmlreport.Section("s", "S", "s.json", report.panels[:1])]))
    assert 'data-failed="0">All 1 panel queries ran' in ok


def test_queries_are_expanded_over_the_data_time_range(fake_dir: Path) -> None:
    report, fake, page = _fake_report(fake_dir)
    tr = report.time_range
    assert tr.interval_s == 3600  # 71.4 hours in at most 100 buckets
    assert tr.time_from == datetime(2026, 10, 31, 16, tzinfo=UTC)  # T0 (Shanghai midnight) floored to the hour
    assert tr.time_to == datetime(2026, 11, 3, 16, tzinfo=UTC)  # the end of the last event's hour
    assert (tr.first_event, tr.last_event) == (datetime.fromtimestamp(FIRST_MS / 1000, UTC),
                                               datetime.fromtimestamp(LAST_MS / 1000, UTC))
    assert fake.sql[0] == htmlreport._TIME_RANGE_SQL and len(fake.sql) == 7  # the range, then 6 panels
    for sql in fake.sql[1:]:
        assert "$" not in sql and f"<= toDateTime({int(tr.time_to.timestamp())})" in sql
    assert "toDate(event_time, 'Asia/Shanghai')" in fake.sql[4]  # reporting_tz is the setting, not the default
    assert "INTERVAL 3600 second" in fake.sql[1] and "count() / 3600 AS" in fake.sql[1]
    meta = json.loads(re.search(r'id="report-meta">(.*?)</script>', page).group(1))  # type: ignore[union-attr]
    assert meta | {"generated_at": None} == {
        "time_from": "2026-10-31T16:00:00+00:00", "time_to": "2026-11-03T16:00:00+00:00", "interval_s": 3600,
        "timezone": "Asia/Shanghai", "events": 120, "panels": 6, "failed": 1, "generated_at": None}
    assert "Time range <strong>2026-11-01 00:00</strong> to <strong>2026-11-04 00:00</strong>" in page


def test_interval_and_empty_range() -> None:
    assert [htmlreport.choose_interval(timedelta(seconds=s)) for s in (0, 6000, 6001, 3 * 86400, 10**9)] == \
        [60, 60, 300, 3600, 604800]
    empty = htmlreport.time_range(lambda sql: {"columns": [], "rows": [[0, 0, 0]]},
                                  now=datetime(2026, 11, 22, 10, 30, 15, tzinfo=UTC))
    assert (empty.time_from, empty.time_to, empty.events) == (
        datetime(2026, 11, 22, 9, 30, tzinfo=UTC), datetime(2026, 11, 22, 10, 30, tzinfo=UTC), 0)


def test_roles_and_views() -> None:
    r = htmlreport.roles(["time", "channel", "n", "day"],
                         [["2026-11-01 00:00:00", "web", 1, "2026-11-01"], ["2026-11-01 01:00:00.5", None, 2.5, None]])
    assert (r.time, r.labels, r.values) == (0, [1, 3], [2])
    assert htmlreport.views("timeseries", r) == ["timeseries"]
    assert htmlreport.views("table", r) == ["bars", "table"]
    assert htmlreport.views("stat", r) == ["stat"]
    text_only = htmlreport.roles(["a"], [["x"]])
    assert htmlreport.views("stat", text_only) == htmlreport.views("timeseries", text_only) == ["table"]
    numbers = htmlreport.roles(["a", "b"], [[1, 2]])
    assert (numbers.time, numbers.labels, numbers.values) == (None, [], [0, 1])
    assert htmlreport.views("table", numbers) == ["table"]


def test_field_units_come_from_by_name_overrides() -> None:
    board = {"panels": [{"id": 1, "type": "row", "panels": [_panel(2, "table", "t", "SELECT 1", units={"gmv": "currencyCNY"})]},
                        _panel(3, "stat", "s", "SELECT 1", unit="short", units={"rate": "percentunit"})]}
    assert htmlreport.field_units(board) == {2: {"gmv": "currencyCNY"}, 3: {"rate": "percentunit"}}


def test_cli_writes_the_file_and_exits_1_when_a_panel_failed(fake_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    import streams.sink.query

    fake = FakeClickHouse()
    monkeypatch.setattr(streams.sink.query, "query", lambda settings, sql: fake(sql))
    monkeypatch.setattr(dashboards, "DASHBOARDS_DIR", fake_dir)
    monkeypatch.setenv("TOUCHLINE_DATA_DIR", str(tmp_path / "var"))
    out = tmp_path / "out" / "report.html"
    assert main(["report", "--html", str(out)]) == 1
    printed = capsys.readouterr()
    assert f"wrote {out}: 5 of 6 panels drawn from 1 dashboard(s), 1 failed" in printed.out
    assert "panel 'Broken <panel>' (fake-kpis-6-A) failed: RuntimeError: Code: 60." in printed.err
    assert out.read_text().startswith("<!DOCTYPE html>")

    def unreachable(settings: Settings, sql: str) -> dict[str, Any]:
        raise streams.sink.query.QueryError("no ClickHouse here")

    monkeypatch.setattr(streams.sink.query, "query", unreachable)
    assert main(["report", "--html", str(out)]) == 2
    assert "touchline report: no ClickHouse here" in capsys.readouterr().err


# --- the page in a browser ------------------------------------------------------------------------------
class Dom(HTMLParser):
    """What the page's script drew: every element marked with a value, the chart boxes, the data blocks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.marks: list[tuple[str, dict[str, str]]] = []
        self.charts: dict[str, dict[str, str]] = {}
        self.nodata: set[str] = set()
        self.body: dict[str, str] = {}
        self.blocks: dict[str, dict[str, Any]] = {}
        self._block: str | None = None
        self._mark: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "mark" in a.get("class", "").split():
            self.marks.append((tag, a))
            self._mark = a
            a["#text"] = ""
        if "data-chart" in a:
            self.charts[a["data-chart"]] = a
        if "data-nodata" in a:
            self.nodata.add(a["data-nodata"])
        if tag == "body":
            self.body = a
        if tag == "script" and a.get("type") == "application/json" and a.get("id", "").startswith("data-"):
            self._block = a["id"][len("data-"):]

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "div", "circle", "rect"):
            self._mark = None

    def handle_data(self, data: str) -> None:
        if self._mark is not None:
            self._mark["#text"] += data
        if self._block is not None:
            self.blocks[self._block] = json.loads(data)
            self._block = None

    def of(self, key: str, kind: str) -> list[dict[str, str]]:
        return [a for _, a in self.marks if a["data-panel"] == key and a["data-kind"] == kind]


def render_in_chromium(page: Path, workdir: Path, timeout_s: float = 90.0) -> Dom:
    """The DOM after the page loaded in headless Chromium; the browser must exit and leave nothing behind."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed: run `make chromium` (Debian package chromium)")
    profile = workdir / "chromium-profile"
    proc = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--disable-background-networking", f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this test started, nothing else
        proc.communicate()
        raise AssertionError(f"chromium did not exit within {timeout_s:.0f}s") from None
    deadline = time.monotonic() + 10
    while _live_pids_under(str(profile)) and time.monotonic() < deadline:
        time.sleep(0.1)  # helper processes exit just after the browser
    left = _live_pids_under(str(profile))
    if left:
        os.killpg(proc.pid, signal.SIGKILL)
    assert not left, f"chromium left processes behind: {left}"
    assert proc.returncode == 0 and out.lstrip().startswith("<!DOCTYPE html>"), err[-3000:]
    dom = Dom()
    dom.feed(out)
    return dom


def _norm(v: Any) -> Any:
    """Comparable values: floats to 12 significant digits (sums of floats may differ in the last bits between
    two runs of the same query), lists as tuples."""
    if isinstance(v, float):
        return float(f"{v:.12g}")
    if isinstance(v, list | tuple):
        return tuple(_norm(x) for x in v)
    return v


def _bag(items: Any) -> Counter[Any]:
    return Counter(_norm(list(i)) for i in items)


def assert_drawn_from(dom: Dom, key: str, rows: list[list[Any]]) -> int:
    """The panel was drawn, from `rows` (the query result): returns how many marks carry a value."""
    data = dom.blocks[key]
    assert _bag(data["rows"]) == _bag(rows), f"{key}: the embedded result is not the query's"
    chart = dom.charts[key]
    assert "data-render-error" not in chart and chart.get("data-rendered") == " ".join(data["views"]), (key, chart)
    if not rows:
        assert key in dom.nodata and not [m for _, m in dom.marks if m["data-panel"] == key]
        return 0
    roles, columns = data["roles"], data["columns"]
    t, labels, values = roles["time"], roles["labels"], roles["values"]

    def drawn(marks: list[dict[str, str]], with_time: bool) -> Counter[Any]:
        return _bag([*([m["data-time"]] if with_time else []), json.loads(m["data-labels"]), m["data-field"],
                     float(m["data-value"])] for m in marks)

    count = 0
    for view in data["views"]:
        if view == "timeseries":
            marks = dom.of(key, "point")
            want = [[r[t], [r[i] for i in labels], columns[c], r[c]]
                    for r in rows for c in values if isinstance(r[c], int | float)]
            assert drawn(marks, True) == _bag(want), key
            assert all(float(m["cx"]) >= 0 and float(m["cy"]) >= 0 for m in marks)
        elif view == "bars":
            marks = dom.of(key, "bar")
            c = values[0]
            want = [[[r[i] for i in labels], columns[c], r[c]] for r in rows if isinstance(r[c], int | float)]
            assert drawn(marks, False) == _bag(want), key
            assert all(float(m["width"]) > 0 for m in marks)
        elif view == "table":
            marks = dom.of(key, "cell")
            table: dict[int, dict[int, Any]] = {}
            for m in marks:
                i, j = int(m["data-row"]), int(m["data-col"])
                embedded = data["rows"][i][j]
                table.setdefault(i, {})[j] = (None if "data-null" in m else m["data-value"]
                                              if isinstance(embedded, str) else json.loads(m["data-value"]))
            assert _bag([row[j] for j in sorted(row)] for row in table.values()) == _bag(rows), key
            assert all(len(row) == len(columns) for row in table.values())
        elif view == "stat":
            marks = dom.of(key, "stat")
            # one big number per series: its only value, or (over time) one of its values
            want_all = _bag([r[t] if t is not None else None, [r[i] for i in labels], columns[c], r[c]]
                            for r in rows for c in values if isinstance(r[c], int | float))
            series = {(json.dumps([r[i] for i in labels]), c)
                      for r in rows for c in values if isinstance(r[c], int | float)}
            assert len(marks) == len(series) or t is None and len(marks) == sum(want_all.values()), key
            for m in marks:
                got = _norm([m["data-time"] if t is not None else None, json.loads(m["data-labels"]),
                             m["data-field"], float(m["data-value"])])
                assert want_all[got] > 0, (key, m)
        else:
            raise AssertionError(f"{key}: unknown view {view}")
        assert marks, f"{key}: {view} drew nothing from {len(rows)} row(s)"
        count += len(marks)
    return count


@pytest.mark.e2e
def test_fake_report_renders_in_chromium_with_the_values_it_was_given(fake_dir: Path, tmp_path: Path) -> None:
    report, _, page = _fake_report(fake_dir)
    path = tmp_path / "report.html"
    path.write_text(page)
    dom = render_in_chromium(path, tmp_path)
    assert dom.body.get("data-broken") == "0" and dom.body.get("data-drawn") == "5"
    for p in report.panels:
        if p.result is not None:
            assert_drawn_from(dom, p.key, p.result["rows"])
    # the nasty label is drawn as text: a bar, a cell and a series of dots carry it verbatim
    assert any(json.loads(m["data-labels"]) == [NASTY] for m in dom.of("fake-kpis-3-A", "bar"))
    assert any(m["data-value"] == NASTY for m in dom.of("fake-kpis-3-A", "cell"))
    assert len(dom.of("fake-kpis-2-A", "point")) == 4 and len(dom.of("fake-kpis-4-A", "stat")) == 3
    # units: the panel's default, and per column where an override names one
    cells = {(m["data-row"], m["data-col"]): m["#text"] for m in dom.of("fake-kpis-3-A", "cell")}
    assert (cells["0", "1"], cells["0", "2"], cells["1", "1"]) == ("¥1,234.50", "3", "¥99.99")
    assert [m["#text"] for m in dom.of("fake-kpis-4-A", "stat")] == ["12", "7", "58.3%"]
    assert {m["#text"] for m in dom.of("fake-kpis-2-A", "point")} >= {"web · 2026-11-01 00:00: 0.5 /s"}


# --- the real dashboards over a real stack ---------------------------------------------------------------
def _journeys() -> list[dict[str, Any]]:
    """Four persons over three hours on four channels: browsing, a login, carts (one abandoned) and orders."""
    a, b, c, d = ({"anonymous_id": f"cookie-report-{n}"} for n in "abcd")
    cart = {"cart_id": "cart-R1", "product_id": "sku-1", "price": 399.0, "quantity": 1}
    return [
        touchpoint("r-a1", "page_viewed", T0, identifiers=a),
        touchpoint("r-a2", "product_viewed", T0 + 2 * MIN, identifiers=a, properties={"product_id": "sku-1"}),
        touchpoint("r-a3", "login", T0 + 3 * MIN, identifiers={**a, "member_id": "M-R1"}),
        touchpoint("r-a4", "product_added", T0 + 4 * MIN, identifiers=a, properties=cart),  # abandoned
        touchpoint("r-b1", "screen_viewed", T0 + 20 * MIN, channel="app", identifiers=b),
        touchpoint("r-b2", "order_completed", T0 + 25 * MIN, channel="app", identifiers=b,
                   properties={"order_id": "o-R1", "revenue": 258.5}),
        touchpoint("r-c1", "page_viewed", T0 + 70 * MIN, channel="mini_program", identifiers=c),
        touchpoint("r-c2", "order_completed", T0 + 75 * MIN, channel="store_pos", identifiers=c, store_id="S001",
                   properties={"order_id": "o-R2", "revenue": 1200.0}),
        touchpoint("r-d1", "page_viewed", T0 + 2 * HOUR + 59 * MIN, identifiers=d),
        touchpoint("r-d2", "page_viewed", T0 + 3 * HOUR, identifiers=d),
        touchpoint("r-b3", "order_completed", T0 + 3 * HOUR + 5 * MIN, channel="store_pos", identifiers=b,
                   store_id="S002", properties={"order_id": "o-R3", "revenue": 99.9}),
    ]


def _wait_stored(stack: Any, events: int, timeout_s: float = 120.0) -> None:
    """Until the sink stored every event, the abandoned cart's trigger and the closed sessions. Asked through
    the sink only: opening chDB here while the sink starts would race it for the database."""
    sql = ("SELECT (SELECT count() FROM touchpoints_enriched FINAL), (SELECT count() FROM triggers FINAL), "
           "(SELECT count() FROM sessions FINAL)")
    deadline, got = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        assert not stack.supervisor.check_alive(), f"died; logs in {stack.supervisor.log_dir}"
        try:
            got = ch.rows(stack.settings, sql, open_directly=False)[0]
        except ch.QueryError:  # not listening yet (SinkNotRunning), or not migrated yet (it does so lazily)
            got = None
        if got is not None and got[0] == events and got[1] >= 1 and got[2] >= 4:
            return
        time.sleep(0.3)
    raise AssertionError(f"ClickHouse holds {got} (events, triggers, sessions)")


@pytest.mark.e2e
def test_report_of_a_stack_renders_in_chromium_with_clickhouse_values(stack_factory, tmp_path: Path) -> None:
    stack = stack_factory(workers=2)
    events = _journeys()
    stack.produce([encoded(e) for e in events])
    last = max(e["event_time_ms"] for e in events)
    s = stack.settings
    stack.tick(last + int(max(s.cart_abandon_delay_s, s.session_timeout_s) * 1000) + 1)
    _wait_stored(stack, len(events))
    stack.stop_sink()  # the report opens chDB itself, in its own process

    path = tmp_path / "report" / "report.html"
    out = subprocess.run([sys.executable, "-m", "streams.cli", "report", "--html", str(path)],
                         env={**os.environ, **s.to_env()}, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"wrote {path}" in out.stdout and "failed" not in out.stdout

    dom = render_in_chromium(path, tmp_path)
    meta = json.loads(re.search(r'id="report-meta">(.*?)</script>', path.read_text()).group(1))  # type: ignore[union-attr]
    assert meta["failed"] == 0 and meta["events"] == len(events) and meta["timezone"] == s.reporting_timezone
    first, last_ms = stack.query("SELECT toUnixTimestamp64Milli(min(event_time)), "
                                 "toUnixTimestamp64Milli(max(event_time)) FROM touchpoints_enriched")[0]
    assert (first, last_ms) == (T0, last)
    time_from, time_to = datetime.fromisoformat(meta["time_from"]), datetime.fromisoformat(meta["time_to"])
    assert time_from <= datetime.fromtimestamp(T0 / 1000, UTC) and datetime.fromtimestamp(last / 1000, UTC) <= time_to

    panels = [(path_, p) for path_ in dashboards.dashboards() for p in dashboards.clickhouse_panels(path_)]
    assert panels and dom.body.get("data-drawn") == str(len(panels)) and dom.body.get("data-broken") == "0"
    with_marks = 0
    for board, panel in panels:
        key = htmlreport.panel_key(panel)
        sql = dashboards.expand(panel.raw_sql, time_from, time_to, meta["interval_s"],
                                {**dashboards.variables(board), "reporting_tz": s.reporting_timezone})
        assert dom.blocks[key]["sql"] == sql  # the dashboard's own query, expanded as Grafana would
        rows = stack.query(sql)  # a separate process opens chDB, as the report did
        with_marks += assert_drawn_from(dom, key, rows) > 0
    assert with_marks >= len(panels) // 2, "most panels should have data from these journeys"
    assert _live_pids_under(str(tmp_path / "chromium-profile")) == []
