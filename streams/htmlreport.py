"""``touchline report --html FILE``: the dashboards' ClickHouse panels as one self-contained HTML file.

For people without Grafana. Every ClickHouse query of every dashboard in
deploy/grafana/dashboards runs once, expanded as Grafana would expand it
(streams.dashboards.expand) over the data's own time range: the event times of
the touchpoints in ClickHouse, widened to whole buckets, with the dashboards'
``reporting_tz`` set to ``TOUCHLINE_REPORTING_TIMEZONE``.

The page needs no network. Each panel's result is embedded as JSON
(``<script type="application/json" id="data-<panel>">``); a small inline script
draws it into SVG (time series: lines with a dot per value; tables: an HTML
table, with bars when there is a label and a number; stats: big numbers). Every
dot, bar, table cell and big number carries the value it shows
(``data-value``), so a test reading the rendered page can compare what was drawn
with the query result. A Content-Security-Policy without any source but inline
code keeps the browser from loading anything, should anything ever refer out.
A panel whose query fails shows ClickHouse's error in place of its chart, and
the header says how many failed.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from streams import dashboards
from streams.settings import Settings

RunQuery = Callable[[str], dict[str, Any]]

# Bucket widths to choose from, and at most this many buckets over the time range (Grafana picks
# its interval the same way from the panel's width; 3 days of data get 1-hour buckets).
NICE_INTERVALS_S = (60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604800)
MAX_BUCKETS = 100

_TIME_RANGE_SQL = ("SELECT count(), toUnixTimestamp64Milli(min(event_time)), toUnixTimestamp64Milli(max(event_time)) "
                   "FROM touchpoints_enriched")
# A value ClickHouse returns for a Date or a DateTime (query.result_json turns them into these strings).
_TIME_VALUE = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?$")


@dataclass(frozen=True)
class TimeRange:
    time_from: datetime  # UTC, inclusive
    time_to: datetime  # UTC, inclusive ($__timeFilter's <=): where the last event's bucket ends
    interval_s: int
    events: int
    first_event: datetime | None
    last_event: datetime | None


@dataclass(frozen=True)
class Roles:
    """What each column of a result is for: the time axis, labels, or numbers to draw."""

    time: int | None
    labels: list[int]
    values: list[int]


@dataclass
class PanelResult:
    panel: dashboards.Panel
    key: str  # unique within the report: <dashboard uid>-<panel id>-<refId>
    sql: str  # as sent to ClickHouse (empty when the expansion itself failed)
    units: dict[str, str] = field(default_factory=dict)  # per-column units (the panel's byName overrides)
    result: dict[str, Any] | None = None  # {"columns", "rows"}
    error: str | None = None


@dataclass
class Section:
    uid: str
    title: str
    source: str  # the dashboard file, relative to the repository when it is inside it
    panels: list[PanelResult] = field(default_factory=list)


@dataclass
class Report:
    time_range: TimeRange
    timezone: str
    generated_at: datetime
    sections: list[Section]

    @property
    def panels(self) -> list[PanelResult]:
        return [p for s in self.sections for p in s.panels]

    @property
    def failed(self) -> list[PanelResult]:
        return [p for p in self.panels if p.error is not None]


# --- choosing the time range and running the queries -------------------------------------------
def choose_interval(span: timedelta) -> int:
    """The smallest nice bucket width that cuts ``span`` into at most MAX_BUCKETS buckets."""
    seconds = span.total_seconds()
    for interval in NICE_INTERVALS_S:
        if seconds / interval <= MAX_BUCKETS:
            return interval
    return NICE_INTERVALS_S[-1]


def _ms(value: Any) -> datetime:
    return datetime.fromtimestamp(int(value) / 1000, tz=UTC)


def time_range(run: RunQuery, now: datetime | None = None) -> TimeRange:
    """min..max event time of the touchpoints, widened to whole buckets (the last hour when there are none)."""
    count, first_ms, last_ms = run(_TIME_RANGE_SQL)["rows"][0]
    if not int(count):
        end = (now or datetime.now(UTC)).replace(second=0, microsecond=0)
        return TimeRange(end - timedelta(hours=1), end, 60, 0, None, None)
    first, last = _ms(first_ms), _ms(last_ms)
    interval = choose_interval(last - first)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    start = epoch + timedelta(seconds=(first - epoch).total_seconds() // interval * interval)
    # $__timeFilter compares with whole seconds (<= to): end where the last event's bucket ends, so an
    # event in that bucket's final second (after its whole second) is still inside
    end = epoch + timedelta(seconds=((last - epoch).total_seconds() // interval + 1) * interval)
    return TimeRange(start, end, interval, int(count), first, last)


def panel_key(panel: dashboards.Panel) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{panel.dashboard_uid}-{panel.panel_id}-{panel.ref_id}")


def field_units(board: dict[str, Any]) -> dict[int, dict[str, str]]:
    """Per panel id, the unit of each column a ``byName`` override gives one (Panel carries the default only)."""
    out: dict[int, dict[str, str]] = {}
    for p in dashboards.walk(list(board.get("panels", []))):
        for o in (p.get("fieldConfig") or {}).get("overrides", []):
            matcher = o.get("matcher") or {}
            for prop in o.get("properties", []):
                if matcher.get("id") == "byName" and prop.get("id") == "unit" and "id" in p:
                    out.setdefault(int(p["id"]), {})[str(matcher.get("options"))] = str(prop.get("value"))
    return out


def _source(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(dashboards.DASHBOARDS_DIR.parents[2]))
    except ValueError:
        return str(path)


def collect(settings: Settings, run: RunQuery, paths: Iterable[Path] | None = None,
            now: datetime | None = None) -> Report:
    """Run every ClickHouse panel query of the dashboards; a failing query is kept with its error."""
    span = time_range(run, now)
    sections = []
    for path in dashboards.dashboards() if paths is None else paths:
        board = json.loads(Path(path).read_text())
        panels = dashboards.clickhouse_panels(board)
        if not panels:
            continue
        values = {**dashboards.variables(board), "reporting_tz": settings.reporting_timezone}
        units = field_units(board)
        section = Section(board.get("uid", ""), board.get("title", Path(path).stem), _source(Path(path)))
        for panel in panels:
            result = PanelResult(panel, panel_key(panel), "", units=units.get(panel.panel_id, {}))
            try:
                result.sql = dashboards.expand(panel.raw_sql, span.time_from, span.time_to, span.interval_s, values)
                answer = run(result.sql)
                result.result = {"columns": list(answer["columns"]), "rows": [list(r) for r in answer["rows"]]}
            except Exception as exc:  # a panel's failure is shown in its place; the others still run
                result.error = f"{type(exc).__name__}: {exc}"
            section.panels.append(result)
        sections.append(section)
    return Report(span, settings.reporting_timezone, now or datetime.now(UTC), sections)


def write_report(settings: Settings, path: Path, run: RunQuery | None = None) -> Report:
    if run is None:
        from streams.sink.query import query

        def run(sql: str) -> dict[str, Any]:
            return query(settings, sql)

    report = collect(settings, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(report), encoding="utf-8")
    return report


# --- what to draw ---------------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def roles(columns: list[str], rows: list[list[Any]]) -> Roles:
    """Time column (Dates/DateTimes; the one named ``time`` first), label columns (any other text, and
    further time columns) and value columns (numbers), the way Grafana reads a ClickHouse result."""
    kinds = []
    for i in range(len(columns)):
        present = [row[i] for row in rows if row[i] is not None]
        if present and all(isinstance(v, str) and _TIME_VALUE.match(v) for v in present):
            kinds.append("time")
        elif all(_is_number(v) for v in present):
            kinds.append("number")
        else:
            kinds.append("text")
    times = [i for i, k in enumerate(kinds) if k == "time"]
    named = [i for i in times if columns[i].lower() == "time"]
    time = named[0] if named else times[0] if times else None
    labels = [i for i, k in enumerate(kinds) if k in ("text", "time") and i != time]
    values = [i for i, k in enumerate(kinds) if k == "number"]
    return Roles(time, labels, values)


def views(panel_type: str, r: Roles) -> list[str]:
    """What to draw for a panel, in page order: ``timeseries``, ``bars``, ``table``, ``stat``."""
    labelled = bool(r.labels) or r.time is not None
    if panel_type in ("stat", "gauge") and r.values:
        return ["stat"]
    if panel_type in ("timeseries", "trend", "graph") and r.time is not None and r.values:
        return ["timeseries"]
    if panel_type in ("barchart", "bargauge", "piechart") and r.values and labelled:
        return ["bars"]
    return (["bars"] if r.values and labelled else []) + ["table"]


# --- the page ---------------------------------------------------------------------------------------
def _clean(value: Any) -> Any:
    """JSON a browser parses: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def script_json(value: Any) -> str:
    """JSON safe inside <script>: no '<', '>', '&' or '/' appears literally (so no '</script>', and no
    URL in the data reads as one)."""
    text = json.dumps(_clean(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("/", "\\/"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def _local(t: datetime, tz: str) -> str:
    try:
        zone: Any = ZoneInfo(tz)
    except Exception:
        zone = UTC
    return t.astimezone(zone).strftime("%Y-%m-%d %H:%M")


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _panel_data(p: PanelResult) -> dict[str, Any]:
    assert p.result is not None
    columns, rows = p.result["columns"], p.result["rows"]
    r = roles(columns, rows)
    return {"key": p.key, "title": p.panel.title, "type": p.panel.type, "format": p.panel.format,
            "unit": p.panel.unit, "units": p.units, "sql": p.sql, "views": views(p.panel.type, r),
            "roles": {"time": r.time, "labels": r.labels, "values": r.values},
            "columns": columns, "rows": rows}


def _render_panel(p: PanelResult) -> str:
    e = html.escape
    title = p.panel.title + (f" ({p.panel.ref_id})" if p.panel.ref_id != "A" else "")
    sql = f'<details><summary>SQL</summary><pre>{e(p.sql)}</pre></details>' if p.sql else ""
    if p.error is not None:
        return (f'<article class="panel failed" id="panel-{p.key}" data-panel="{p.key}">'
                f'<h3>{e(title)}</h3><div class="error" data-error="{p.key}">'
                f'<strong>The query failed.</strong><pre>{e(p.error)}</pre></div>{sql}</article>')
    return (f'<article class="panel" id="panel-{p.key}" data-panel="{p.key}" data-type="{e(p.panel.type)}">'
            f'<h3>{e(title)}</h3><div class="chart" data-chart="{p.key}"></div>{sql}'
            f'<script type="application/json" id="data-{p.key}">{script_json(_panel_data(p))}</script>'
            f'</article>')


def render(report: Report) -> str:
    e = html.escape
    tr, tz = report.time_range, report.timezone
    panels, failed = report.panels, report.failed
    meta = {"time_from": tr.time_from.isoformat(), "time_to": tr.time_to.isoformat(),
            "interval_s": tr.interval_s, "timezone": tz, "events": tr.events,
            "panels": len(panels), "failed": len(failed), "generated_at": report.generated_at.isoformat()}
    if failed:
        status = (f'<p class="status bad" data-failed="{len(failed)}">{len(failed)} of {len(panels)} panel '
                  f'queries failed; each shows ClickHouse\'s error in place of its chart.</p>')
    else:
        status = (f'<p class="status good" data-failed="0">All {len(panels)} panel queries ran; '
                  f'each chart is drawn from its query\'s result, embedded in this file.</p>')
    if tr.first_event is not None and tr.last_event is not None:
        data_note = (f"{tr.events:,} touchpoints with event times from {_local(tr.first_event, tz)} "
                     f"to {_local(tr.last_event, tz)}")
    else:
        data_note = "ClickHouse holds no touchpoints yet, so the range is the last hour"
    nav = " · ".join(f'<a href="#dash-{e(s.uid)}">{e(s.title)}</a>' for s in report.sections)
    body = []
    for s in report.sections:
        body.append(f'<section class="dashboard" id="dash-{e(s.uid)}"><h2>{e(s.title)}</h2>'
                    f'<p class="source">Grafana dashboard <code>{e(s.uid)}</code> ({e(s.source)}); '
                    f'{len(s.panels)} ClickHouse panel(s)</p><div class="panels">'
                    + "".join(_render_panel(p) for p in s.panels) + "</div></section>")
    if not report.sections:
        body.append('<p class="empty">No dashboard has a ClickHouse panel.</p>')
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Touchline report · {e(_local(tr.time_from, tz))} to {e(_local(tr.time_to, tz))}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>Touchline report</h1>
<p class="range">Time range <strong>{e(_local(tr.time_from, tz))}</strong> to <strong>{e(_local(tr.time_to, tz))}</strong>
({e(tz)}) in {e(_duration(tr.interval_s))} buckets: {e(data_note)}.</p>
{status}
<p class="about">The ClickHouse panels of the Grafana dashboards, each query run once over this range.
Generated {e(_local(report.generated_at, tz))} ({e(tz)}). This file needs no network.</p>
<nav>{nav}</nav>
<noscript><p class="status bad">The charts are drawn by this page's own script: allow JavaScript to see them.</p></noscript>
</header>
<main>
{"".join(body)}
</main>
<script type="application/json" id="report-meta">{script_json(meta)}</script>
<script>{_JS}</script>
</body>
</html>
"""


_CSS = """
:root { --fg: #1d2330; --muted: #5b6578; --line: #d9dee8; --bg: #f6f7fa; --card: #fff; --bad: #b42318; --good: #1a7f37; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "PingFang SC",
       "Microsoft YaHei", sans-serif; color: var(--fg); background: var(--bg); }
header { padding: 20px 28px 8px; background: var(--card); border-bottom: 1px solid var(--line); }
h1 { margin: 0 0 6px; font-size: 22px; }
h2 { margin: 28px 0 4px; font-size: 18px; }
h3 { margin: 0 0 8px; font-size: 14px; }
main { padding: 0 28px 40px; }
p { margin: 4px 0; }
.about, .source, .range { color: var(--muted); }
.status { font-weight: 600; }
.status.bad { color: var(--bad); }
.status.good { color: var(--good); }
nav { margin: 10px 0 6px; }
nav a { color: inherit; }
.panels { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 14px; margin-top: 10px; }
.panel { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 12px 14px; min-width: 0; }
.panel.failed { border-color: var(--bad); }
.error { color: var(--bad); }
.error pre, details pre { white-space: pre-wrap; word-break: break-word; font-size: 12px; }
details { margin-top: 8px; color: var(--muted); }
svg.plot { width: 100%; height: auto; display: block; }
svg.plot text { font-size: 12px; fill: var(--muted); }
svg.plot .grid { stroke: var(--line); stroke-width: 1; }
svg.plot .axis { stroke: #9aa3b5; stroke-width: 1; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; margin-top: 4px; font-size: 12px; color: var(--muted); }
.legend i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; vertical-align: -1px; }
.tablewrap { max-height: 420px; overflow: auto; margin-top: 8px; }
table { border-collapse: collapse; width: 100%; font-size: 12px; }
th, td { padding: 3px 8px; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
th { position: sticky; top: 0; background: var(--card); }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.stats { display: flex; flex-wrap: wrap; gap: 10px 28px; }
.stat .value { font-size: 34px; font-weight: 600; font-variant-numeric: tabular-nums; }
.stat .label { color: var(--muted); font-size: 12px; }
.nodata { color: var(--muted); padding: 24px 0; text-align: center; }
"""

# Draws every panel from its JSON block. DOM calls only (createElementNS, textContent): no text from
# the data is ever parsed as markup. The SVG namespace below is a name, not something fetched.
_JS = r"""
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var meta = JSON.parse(document.getElementById("report-meta").textContent);
  var COLORS = ["#5794f2", "#73bf69", "#f2cc0c", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#96d98d",
                "#fade2a", "#ffb357", "#ff7383", "#ca95e5", "#3274d9", "#37872d", "#e0b400", "#fa6400"];
  var stamp;
  try {
    stamp = new Intl.DateTimeFormat("sv-SE", {timeZone: meta.timezone, year: "numeric", month: "2-digit",
      day: "2-digit", hour: "2-digit", minute: "2-digit", hourCycle: "h23"});
  } catch (e) {
    stamp = new Intl.DateTimeFormat("sv-SE", {timeZone: "UTC", year: "numeric", month: "2-digit",
      day: "2-digit", hour: "2-digit", minute: "2-digit", hourCycle: "h23"});
  }
  var DATE = /^\d{4}-\d{2}-\d{2}$/;
  var DATETIME = /^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)(Z|[+-]\d{2}:?\d{2})?$/;

  function timeMs(s) {  /* ClickHouse's times come without a zone when they are UTC */
    if (DATE.test(s)) return Date.parse(s + "T00:00:00Z");
    var m = DATETIME.exec(s);
    if (!m) return NaN;
    var frac = m[2].replace(/(\.\d{3})\d+$/, "$1");
    return Date.parse(m[1] + "T" + frac + (m[3] || "Z"));
  }
  function fmtTime(s) {
    if (typeof s !== "string") return String(s);
    if (DATE.test(s)) return s;
    var t = timeMs(s);
    return isNaN(t) ? s : stamp.format(new Date(t));
  }
  function grouped(v, digits, least) {
    return v.toLocaleString("en-US", {minimumFractionDigits: least || 0, maximumFractionDigits: digits});
  }
  function digitsFor(v) { var a = Math.abs(v); return a >= 1000 ? 0 : a >= 1 ? 2 : a === 0 ? 0 : 4; }
  var CURRENCY = {currencyCNY: "¥", currencyJPY: "¥", currencyUSD: "$", currencyEUR: "€", currencyGBP: "£"};
  function fmtNum(v, unit) {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return String(v);
    var u = unit || "";
    if (u === "percentunit") return grouped(v * 100, 1) + "%";
    if (u === "percent") return grouped(v, 1) + "%";
    if (u.indexOf("currency") === 0) return (CURRENCY[u] || u.slice(8) + " ") + grouped(v, 2, 2);
    if (u === "bytes" || u === "decbytes") {
      var k = u === "bytes" ? 1024 : 1000, names = ["B", "kB", "MB", "GB", "TB"], i = 0;
      while (Math.abs(v) >= k && i < names.length - 1) { v /= k; i++; }
      return grouped(v, 1) + " " + names[i];
    }
    var suffix = {s: " s", ms: " ms", reqps: " /s", ops: " /s", short: "", none: "", locale: "", "": ""};
    return grouped(v, digitsFor(v)) + (u in suffix ? suffix[u] : " " + u);
  }
  function raw(v) { return typeof v === "string" ? v : JSON.stringify(v); }
  function unitOf(d, c) { var u = (d.units || {})[d.columns[c]]; return u === undefined ? d.unit : u; }

  function svg(name, attrs, parent) {
    var e = document.createElementNS(SVG, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function text(parent, x, y, s, anchor) {
    var t = svg("text", {x: x, y: y, "text-anchor": anchor || "start"}, parent);
    t.textContent = s;
    return t;
  }
  function tag(name, cls, s, parent) {
    var e = document.createElement(name);
    if (cls) e.className = cls;
    if (s !== undefined && s !== null) e.textContent = s;
    if (parent) parent.appendChild(e);
    return e;
  }
  function mark(e, d, kind, attrs) {
    e.setAttribute("class", "mark");
    e.setAttribute("data-panel", d.key);
    e.setAttribute("data-kind", kind);
    for (var k in attrs) if (attrs[k] !== undefined) e.setAttribute(k, attrs[k]);
    return e;
  }
  function ticks(lo, hi, n) {  /* round numbers covering [lo, hi] */
    var span = hi - lo, step = Math.pow(10, Math.floor(Math.log10(span / n)));
    var err = span / n / step;
    step *= err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1;
    var out = [], start = Math.floor(lo / step) * step, end = Math.ceil(hi / step) * step;
    for (var v = start; v <= end + step / 2; v += step) out.push(Math.round(v / step) * step);
    return out;
  }
  function labelsOf(d, row) { return d.roles.labels.map(function (c) { return row[c]; }); }
  function seriesName(d, labels, field) {
    var parts = labels.map(function (l) { return l === null ? "–" : fmtTime(l); });
    if (!parts.length || d.roles.values.length > 1) parts.unshift(field);
    return parts.join(" · ");
  }
  function legend(box, series) {
    var div = tag("div", "legend", null, box);
    series.forEach(function (s) {
      var item = tag("span", null, null, div);
      var swatch = tag("i", null, null, item);
      swatch.style.background = s.color;
      item.appendChild(document.createTextNode(s.name));
    });
  }

  function timeseries(box, d) {
    var series = [], byKey = {};
    d.rows.forEach(function (row) {
      var labels = labelsOf(d, row), t = timeMs(row[d.roles.time]);
      if (isNaN(t)) return;
      d.roles.values.forEach(function (c) {
        var v = row[c];
        if (typeof v !== "number") return;
        var k = JSON.stringify([labels, c]);
        if (!(k in byKey)) {
          byKey[k] = {name: seriesName(d, labels, d.columns[c]), labels: labels, field: d.columns[c],
                      color: COLORS[series.length % COLORS.length], points: []};
          series.push(byKey[k]);
        }
        byKey[k].points.push({t: t, time: row[d.roles.time], v: v, unit: unitOf(d, c)});
      });
    });
    if (!series.length) { tag("div", "nodata", "No values in this time range.", box); return; }
    var all = [].concat.apply([], series.map(function (s) { return s.points; }));
    var t0 = Math.min.apply(null, all.map(function (p) { return p.t; }));
    var t1 = Math.max.apply(null, all.map(function (p) { return p.t; }));
    if (t1 === t0) { t0 -= meta.interval_s * 500; t1 += meta.interval_s * 500; }
    var lo = Math.min(0, Math.min.apply(null, all.map(function (p) { return p.v; })));
    var hi = Math.max(0, Math.max.apply(null, all.map(function (p) { return p.v; })));
    if (hi === lo) hi = lo + 1;
    var yt = ticks(lo, hi, 4);
    lo = yt[0]; hi = yt[yt.length - 1];
    var W = 640, H = 250, L = 70, R = 10, T = 10, B = 24;
    var x = function (t) { return L + (t - t0) / (t1 - t0) * (W - L - R); };
    var y = function (v) { return H - B - (v - lo) / (hi - lo) * (H - T - B); };
    var plot = svg("svg", {viewBox: "0 0 " + W + " " + H, class: "plot", role: "img",
                           "aria-label": d.title, "data-panel": d.key, "data-view": "timeseries"}, box);
    yt.forEach(function (v) {
      svg("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid"}, plot);
      text(plot, L - 6, y(v) + 4, fmtNum(v, unitOf(d, d.roles.values[0])), "end");
    });
    for (var i = 0; i <= 4; i++) {  /* MM-DD HH:MM in the reporting time zone */
      var t = t0 + (t1 - t0) * i / 4;
      text(plot, x(t), H - 6, stamp.format(new Date(t)).slice(5), i === 0 ? "start" : i === 4 ? "end" : "middle");
    }
    svg("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis"}, plot);
    series.forEach(function (s) {
      s.points.sort(function (a, b) { return a.t - b.t; });
      svg("polyline", {fill: "none", stroke: s.color, "stroke-width": 1.6,
        points: s.points.map(function (p) { return x(p.t).toFixed(1) + "," + y(p.v).toFixed(1); }).join(" ")}, plot);
      s.points.forEach(function (p) {
        var c = mark(svg("circle", {cx: x(p.t).toFixed(2), cy: y(p.v).toFixed(2), r: 2.4, fill: s.color}, plot),
                     d, "point", {"data-time": p.time, "data-labels": JSON.stringify(s.labels),
                                  "data-field": s.field, "data-value": String(p.v)});
        svg("title", {}, c).textContent = s.name + " · " + fmtTime(p.time) + ": " + fmtNum(p.v, p.unit);
      });
    });
    legend(box, series);
  }

  function bars(box, d) {
    var c = d.roles.values[0], names = d.roles.labels.length ? d.roles.labels : [d.roles.time];
    var items = [];
    d.rows.forEach(function (row) {
      if (typeof row[c] !== "number") return;
      items.push({labels: labelsOf(d, row), time: d.roles.time === null ? undefined : row[d.roles.time],
                  name: names.map(function (n) { return row[n] === null ? "–" : fmtTime(row[n]); }).join(" · "),
                  v: row[c]});
    });
    if (!items.length) { tag("div", "nodata", "No values in this time range.", box); return; }
    var lo = Math.min(0, Math.min.apply(null, items.map(function (i) { return i.v; })));
    var hi = Math.max(0, Math.max.apply(null, items.map(function (i) { return i.v; })));
    if (hi === lo) hi = lo + 1;
    var W = 640, L = 190, R = 90, row = 20, T = 4, H = T + items.length * row + 4;
    var x = function (v) { return L + (v - lo) / (hi - lo) * (W - L - R); };
    var plot = svg("svg", {viewBox: "0 0 " + W + " " + H, class: "plot", role: "img",
                           "aria-label": d.title + ": " + d.columns[c], "data-panel": d.key, "data-view": "bars"}, box);
    items.forEach(function (it, i) {
      var top = T + i * row, name = it.name.length > 28 ? it.name.slice(0, 27) + "…" : it.name;
      text(plot, L - 8, top + 14, name, "end");
      var r = mark(svg("rect", {x: x(Math.min(0, it.v)).toFixed(2), y: top + 3,
                                width: Math.max(Math.abs(x(it.v) - x(0)), 0.5).toFixed(2), height: row - 6,
                                fill: COLORS[0], rx: 2}, plot),
                   d, "bar", {"data-time": it.time, "data-labels": JSON.stringify(it.labels),
                              "data-field": d.columns[c], "data-value": String(it.v)});
      svg("title", {}, r).textContent = it.name + ": " + fmtNum(it.v, unitOf(d, c));
      text(plot, x(Math.max(0, it.v)) + 6, top + 14, fmtNum(it.v, unitOf(d, c)));
    });
    tag("div", "legend", d.columns[c] + (d.roles.values.length > 1 ? " (the first number column)" : ""), box);
  }

  function table(box, d) {
    var wrap = tag("div", "tablewrap", null, box), t = tag("table", null, null, wrap);
    t.setAttribute("data-panel", d.key);
    t.setAttribute("data-view", "table");
    var tr = tag("tr", null, null, tag("thead", null, null, t));
    d.columns.forEach(function (name) { tag("th", null, name, tr); });
    var body = tag("tbody", null, null, t);
    d.rows.forEach(function (row, i) {
      var r = tag("tr", null, null, body);
      row.forEach(function (v, j) {
        var shown = typeof v === "number" ? fmtNum(v, unitOf(d, j)) : v === null ? "–" : j === d.roles.time ? fmtTime(v)
                    : typeof v === "string" ? v : JSON.stringify(v);
        var cell = mark(tag("td", typeof v === "number" ? "num" : null, shown, r), d, "cell",
                        {"data-row": i, "data-col": j});
        cell.className = typeof v === "number" ? "mark num" : "mark";
        if (v === null) cell.setAttribute("data-null", "");
        else cell.setAttribute("data-value", raw(v));
      });
    });
  }

  function stat(box, d) {
    var shown = [], last = {};
    d.rows.forEach(function (row) {
      var labels = labelsOf(d, row);
      d.roles.values.forEach(function (c) {
        if (typeof row[c] !== "number") return;
        var item = {labels: labels, field: d.columns[c], v: row[c], unit: unitOf(d, c),
                    time: d.roles.time === null ? undefined : row[d.roles.time]};
        if (d.roles.time === null) { shown.push(item); return; }
        var k = JSON.stringify([labels, c]);  /* per series, the value at its latest time (Grafana: last not null) */
        if (!(k in last)) { last[k] = item; shown.push(item); }
        else if (timeMs(item.time) >= timeMs(last[k].time)) { shown[shown.indexOf(last[k])] = item; last[k] = item; }
      });
    });
    if (!shown.length) { tag("div", "nodata", "No values in this time range.", box); return; }
    var wrap = tag("div", "stats", null, box);
    shown.forEach(function (it) {
      var s = tag("div", "stat", null, wrap);
      mark(tag("div", null, fmtNum(it.v, it.unit), s), d, "stat",
           {"data-time": it.time, "data-labels": JSON.stringify(it.labels), "data-field": it.field,
            "data-value": String(it.v)}).className = "mark value";
      tag("div", "label", seriesName(d, it.labels, it.field), s);
    });
  }

  var DRAW = {timeseries: timeseries, bars: bars, table: table, stat: stat};
  var drawn = 0, broken = 0;
  document.querySelectorAll('script[type="application/json"][id^="data-"]').forEach(function (block) {
    var d = JSON.parse(block.textContent);
    var box = document.querySelector('[data-chart="' + d.key + '"]');
    try {
      if (!d.rows.length) tag("div", "nodata", "No data in this time range.", box).setAttribute("data-nodata", d.key);
      else d.views.forEach(function (v) { DRAW[v](box, d); });
      box.setAttribute("data-rendered", d.views.join(" "));
      drawn++;
    } catch (e) {
      broken++;
      tag("div", "error", "The chart could not be drawn: " + e, box);
      box.setAttribute("data-render-error", String(e));
    }
  });
  document.body.setAttribute("data-drawn", String(drawn));
  document.body.setAttribute("data-broken", String(broken));
})();
"""
