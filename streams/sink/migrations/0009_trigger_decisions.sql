-- triggers.fired v2 (Trigger v2): every final decision of the trigger engine, not only sends.
-- outcome: fire (sent on channel, to handle where it is an openid), holdout (the person is in the
-- rule's hold-out group: recorded as if sent, not sent), suppressed (reason: no_consent,
-- unreachable, frequency_cap, ...). Rows written before this migration were sends.
ALTER TABLE triggers ADD COLUMN IF NOT EXISTS outcome LowCardinality(String) DEFAULT 'fire';
ALTER TABLE triggers ADD COLUMN IF NOT EXISTS reason LowCardinality(String) DEFAULT '';
ALTER TABLE triggers ADD COLUMN IF NOT EXISTS channel LowCardinality(String) DEFAULT '';
ALTER TABLE triggers ADD COLUMN IF NOT EXISTS handle String DEFAULT '';
ALTER TABLE triggers ADD COLUMN IF NOT EXISTS evidence Map(String, String);
ALTER TABLE triggers ADD COLUMN IF NOT EXISTS event_ids Array(String);

-- Trigger outcomes (0005) over sent and held-out triggers only: a suppressed trigger reached no
-- one, so no order is attributed to it. The outcome column tells sent from held out, so conversion
-- uplift is one query (README, "Trigger definitions"):
--   conversion per rule and outcome = attributed distinct trigger ids / trigger ids of that outcome.
CREATE OR REPLACE VIEW trigger_outcomes AS
SELECT argMax(t.trigger_id, t.fired_at) AS trigger_id, argMax(t.rule, t.fired_at) AS rule,
       o.person_id AS person_id, o.event_id AS order_event_id, any(o.order_id) AS order_id,
       any(o.revenue) AS revenue, any(o.event_time) AS order_time, max(t.fired_at) AS fired_at,
       argMax(t.outcome, t.fired_at) AS outcome
FROM (SELECT event_id, person_id, order_id, ifNull(revenue, 0) AS revenue, event_time
      FROM touchpoints_enriched FINAL WHERE event_type = 'order_completed') AS o
INNER JOIN (SELECT trigger_id, rule, person_id, fired_at, outcome FROM triggers FINAL
            WHERE outcome IN ('fire', 'holdout')) AS t ON o.person_id = t.person_id
WHERE t.fired_at <= o.event_time AND o.event_time < t.fired_at + toIntervalDay({window_days:UInt32})
GROUP BY o.person_id, o.event_id;
