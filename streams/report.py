"""The numbers a person wants after a run, read back from ClickHouse."""

from __future__ import annotations

from typing import Any

# A person merged away counts as the person it was merged into.
_FINAL_PERSON = """
SELECT uniqExact(if(c.into_person = '', e.person_id, c.into_person))
FROM (SELECT person_id FROM touchpoints_enriched FINAL) AS e
LEFT JOIN (SELECT from_person, any(into_person) AS into_person
           FROM identity_changes FINAL GROUP BY from_person) AS c
ON e.person_id = c.from_person
"""


def _pairs(client: Any, sql: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in client.query(sql).result_rows}


def clickhouse_summary(client: Any) -> dict[str, Any]:
    return {
        "events": int(client.query("SELECT count() FROM touchpoints_enriched FINAL").result_rows[0][0]),
        "events_by_channel": _pairs(
            client, "SELECT channel, count() FROM touchpoints_enriched FINAL GROUP BY channel ORDER BY 2 DESC"),
        "events_by_type": _pairs(
            client, "SELECT event_type, count() FROM touchpoints_enriched FINAL GROUP BY event_type ORDER BY 2 DESC"),
        "persons": int(client.query(_FINAL_PERSON).result_rows[0][0]),
        "merges": int(client.query("SELECT count() FROM identity_changes FINAL WHERE kind = 'merge'").result_rows[0][0]),
        "triggers_by_rule": _pairs(client, "SELECT rule, count() FROM triggers FINAL GROUP BY rule ORDER BY rule"),
        "dead_letters_by_reason": _pairs(
            client, "SELECT reason, count() FROM dead_letters FINAL GROUP BY reason ORDER BY reason"),
    }
