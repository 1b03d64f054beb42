"""The numbers a person wants after a run, read back from ClickHouse.

``rows`` runs one read-only query (streams.sink.query.rows bound to the
settings), so the summary works while the sink owns chDB and after it stopped.
KPIs follow the definitions in README.md ("KPI definitions") and read the same
pre-aggregated tables as the dashboards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Rows = Callable[[str], list[list[Any]]]

# A person merged away counts as the person it was merged into.
_FINAL_PERSON = """
SELECT uniqExact(if(c.into_person = '', e.person_id, c.into_person))
FROM (SELECT person_id FROM touchpoints_enriched FINAL) AS e
LEFT JOIN (SELECT from_person, any(into_person) AS into_person
           FROM identity_changes FINAL WHERE resolver = 'route' AND kind = 'merge' GROUP BY from_person) AS c
ON e.person_id = c.from_person
"""

_EVENT_KPIS = """
SELECT uniqExactMerge(persons), sumIf(events, event_type IN ('page_viewed', 'screen_viewed')),
       sumIf(events, event_type = 'order_completed'), round(sumIf(revenue, event_type = 'order_completed'), 2)
FROM kpi_events_hourly
"""

_SESSION_KPIS = "SELECT sum(sessions), sum(bounces), sum(page_views) FROM kpi_sessions_hourly"


def _pairs(rows: Rows, sql: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in rows(sql)}


def _one(rows: Rows, sql: str) -> Any:
    return rows(sql)[0][0]


def clickhouse_summary(rows: Rows) -> dict[str, Any]:
    uv, pv, orders, gmv = rows(_EVENT_KPIS)[0]
    sessions, bounces, session_pv = (int(v) for v in rows(_SESSION_KPIS)[0])
    return {
        "events": int(_one(rows, "SELECT count() FROM touchpoints_enriched FINAL")),
        "events_by_channel": _pairs(
            rows, "SELECT channel, count() FROM touchpoints_enriched FINAL GROUP BY channel ORDER BY 2 DESC"),
        "events_by_type": _pairs(
            rows, "SELECT event_type, count() FROM touchpoints_enriched FINAL GROUP BY event_type ORDER BY 2 DESC"),
        "persons": int(_one(rows, _FINAL_PERSON)),
        "merges": int(_one(rows, "SELECT count() FROM identity_changes FINAL WHERE kind = 'merge' AND resolver = 'route'")),
        "triggers_by_rule": _pairs(rows, "SELECT rule, count() FROM triggers FINAL GROUP BY rule ORDER BY rule"),
        "dead_letters_by_reason": _pairs(
            rows, "SELECT reason, count() FROM dead_letters FINAL GROUP BY reason ORDER BY reason"),
        "kpis": {
            "uv": int(uv), "pv": int(pv), "orders": int(orders), "gmv": float(gmv),
            "aov": round(float(gmv) / int(orders), 2) if int(orders) else None,
            "sessions": sessions, "bounce_rate": round(bounces / sessions, 4) if sessions else None,
            "visit_depth": round(session_pv / sessions, 2) if sessions else None,
        },
    }
