-- Trigger outcomes: the orders a person placed after a trigger fired for
-- them, within a window given at query time (days), e.g.
--   SELECT rule, count(), sum(revenue) FROM trigger_outcomes(window_days = 7) GROUP BY rule
-- An order counts for the latest trigger fired before it within the window
-- (last touch), so no order is attributed twice. Persons as resolved when
-- the events were processed. Computed from triggers and touchpoints_enriched
-- at query time: nothing to backfill, replays cannot double it.
CREATE VIEW IF NOT EXISTS trigger_outcomes AS
SELECT argMax(t.trigger_id, t.fired_at) AS trigger_id, argMax(t.rule, t.fired_at) AS rule,
       o.person_id AS person_id, o.event_id AS order_event_id, any(o.order_id) AS order_id,
       any(o.revenue) AS revenue, any(o.event_time) AS order_time, max(t.fired_at) AS fired_at
FROM (SELECT event_id, person_id, order_id, ifNull(revenue, 0) AS revenue, event_time
      FROM touchpoints_enriched FINAL WHERE event_type = 'order_completed') AS o
INNER JOIN (SELECT trigger_id, rule, person_id, fired_at FROM triggers FINAL) AS t ON o.person_id = t.person_id
WHERE t.fired_at <= o.event_time AND o.event_time < t.fired_at + toIntervalDay({window_days:UInt32})
GROUP BY o.person_id, o.event_id;
