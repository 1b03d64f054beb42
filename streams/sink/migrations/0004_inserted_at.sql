-- When ClickHouse stored each event (and so when the KPI views counted it):
-- stamped by ClickHouse at insert, never sent by the sink. `make bench`
-- measures freshness (produced -> visible) from it.
ALTER TABLE touchpoints_enriched ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC') DEFAULT now64(3);
