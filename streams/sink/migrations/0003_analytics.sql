-- Analytics: what the KPIs need from each event, sessions, member snapshots,
-- reference data, and the pre-aggregated KPI tables behind the dashboards.
--
-- Exactness under replays: the sink inserts a row into a table with a
-- materialized view only if its id (event_id, session_id, dead_letter_id) is
-- not there yet (streams/sink/service.py), so every view sees each event once;
-- the base tables also collapse repeats on their ids (ReplacingMergeTree).
--
-- Time: KPI tables are bucketed by UTC minute and hour. Days and hours of the
-- reporting time zone (TOUCHLINE_REPORTING_TIMEZONE, default Asia/Shanghai)
-- are taken at query time with toDate(hour, tz) / toStartOfHour(hour, tz),
-- which is exact for zones whose offset is a whole number of hours.

ALTER TABLE touchpoints_enriched ADD COLUMN IF NOT EXISTS campaign Nullable(String);
ALTER TABLE touchpoints_enriched ADD COLUMN IF NOT EXISTS source Nullable(String);
ALTER TABLE touchpoints_enriched ADD COLUMN IF NOT EXISTS medium Nullable(String);
ALTER TABLE touchpoints_enriched ADD COLUMN IF NOT EXISTS referrer_id Nullable(String);
ALTER TABLE touchpoints_enriched ADD COLUMN IF NOT EXISTS guide_id Nullable(String);
ALTER TABLE touchpoints_enriched ADD COLUMN IF NOT EXISTS kol_post_id Nullable(String);
ALTER TABLE touchpoints_enriched ADD COLUMN IF NOT EXISTS page_url Nullable(String);
ALTER TABLE touchpoints_enriched ADD COLUMN IF NOT EXISTS search_keyword Nullable(String);
ALTER TABLE touchpoints_enriched ADD COLUMN IF NOT EXISTS city Nullable(String);
ALTER TABLE touchpoints_enriched ADD COLUMN IF NOT EXISTS items UInt32 DEFAULT 0;

CREATE TABLE IF NOT EXISTS sessions (
    session_id String,
    person_id String,
    member_id Nullable(String),
    start_time DateTime64(3, 'UTC'),
    end_time DateTime64(3, 'UTC'),
    channel LowCardinality(String),
    landing_page Nullable(String),
    campaign Nullable(String),
    source Nullable(String),
    store_id Nullable(String),
    events UInt32,
    page_views UInt32,
    orders UInt32,
    revenue Float64,
    converted Bool,
    historical Bool,
    closed_at DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(start_time)
ORDER BY session_id;

-- Latest features snapshot per person (members.features, compacted). A
-- tombstone (person merged away) is a row with is_deleted = 1.
CREATE TABLE IF NOT EXISTS member_snapshots (
    person_id String,
    member_id Nullable(String),
    events UInt64,
    page_views UInt64,
    product_views UInt64,
    cart_adds UInt64,
    orders UInt64,
    revenue Float64,
    first_seen DateTime64(3, 'UTC'),
    last_seen DateTime64(3, 'UTC'),
    merged_from Array(String),
    version UInt64,
    is_deleted UInt8
) ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY person_id;

-- Reference data (reference.* topics). version = the record's offset in its
-- one-partition topic, so the last load wins.
CREATE TABLE IF NOT EXISTS ref_stores (
    store_id String,
    name String,
    city String,
    latitude Float64,
    longitude Float64,
    opened_on Nullable(Date),
    closed_on Nullable(Date),
    version UInt64,
    is_deleted UInt8
) ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY store_id;

CREATE TABLE IF NOT EXISTS ref_products (
    product_id String,
    name String,
    category_path String,
    price Float64,
    currency LowCardinality(String),
    new_arrival Bool,
    tags Array(String),
    launched_on Nullable(Date),
    version UInt64,
    is_deleted UInt8
) ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY product_id;

CREATE TABLE IF NOT EXISTS ref_campaigns (
    campaign_id String,
    name String,
    starts_on Nullable(Date),
    ends_on Nullable(Date),
    warmup_starts_on Nullable(Date),
    channels Array(String),
    version UInt64,
    is_deleted UInt8
) ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY campaign_id;

CREATE TABLE IF NOT EXISTS ref_spend (
    day Date,
    channel LowCardinality(String),
    campaign_id String,  -- '' for always-on spend
    amount Float64,
    currency LowCardinality(String),
    impressions Nullable(UInt64),
    clicks Nullable(UInt64),
    leads Nullable(UInt64),
    version UInt64,
    is_deleted UInt8
) ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (day, channel, campaign_id);

-- Events per UTC hour, channel, store, event type and campaign.
CREATE TABLE IF NOT EXISTS kpi_events_hourly (
    hour DateTime('UTC'),
    channel LowCardinality(String),
    store_id String,
    event_type LowCardinality(String),
    campaign String,
    events SimpleAggregateFunction(sum, UInt64),
    revenue SimpleAggregateFunction(sum, Float64),
    items SimpleAggregateFunction(sum, UInt64),
    persons AggregateFunction(uniqExact, String),
    member_persons AggregateFunction(uniqExact, String)
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, channel, store_id, event_type, campaign);

CREATE MATERIALIZED VIEW IF NOT EXISTS kpi_events_hourly_mv TO kpi_events_hourly AS
SELECT toStartOfHour(e.event_time) AS hour, e.channel AS channel, ifNull(e.store_id, '') AS store_id,
       e.event_type AS event_type, ifNull(e.campaign, '') AS campaign, count() AS events,
       sum(ifNull(e.revenue, 0)) AS revenue, sum(e.items) AS items, uniqExactState(e.person_id) AS persons,
       uniqExactStateIf(e.person_id, e.member_id IS NOT NULL) AS member_persons
FROM touchpoints_enriched AS e
GROUP BY hour, channel, store_id, event_type, campaign;

-- Events per UTC minute, channel and event type (recent activity, freshness).
CREATE TABLE IF NOT EXISTS kpi_events_minute (
    minute DateTime('UTC'),
    channel LowCardinality(String),
    event_type LowCardinality(String),
    events SimpleAggregateFunction(sum, UInt64),
    revenue SimpleAggregateFunction(sum, Float64),
    persons AggregateFunction(uniqExact, String)
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMMDD(minute)
ORDER BY (minute, channel, event_type);

CREATE MATERIALIZED VIEW IF NOT EXISTS kpi_events_minute_mv TO kpi_events_minute AS
SELECT toStartOfMinute(e.event_time) AS minute, e.channel AS channel, e.event_type AS event_type,
       count() AS events, sum(ifNull(e.revenue, 0)) AS revenue, uniqExactState(e.person_id) AS persons
FROM touchpoints_enriched AS e
GROUP BY minute, channel, event_type;

-- Sessions per UTC hour of their first event, channel, store and campaign.
CREATE TABLE IF NOT EXISTS kpi_sessions_hourly (
    hour DateTime('UTC'),
    channel LowCardinality(String),
    store_id String,
    campaign String,
    sessions SimpleAggregateFunction(sum, UInt64),
    bounces SimpleAggregateFunction(sum, UInt64),
    events SimpleAggregateFunction(sum, UInt64),
    page_views SimpleAggregateFunction(sum, UInt64),
    converted SimpleAggregateFunction(sum, UInt64),
    persons AggregateFunction(uniqExact, String)
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, channel, store_id, campaign);

CREATE MATERIALIZED VIEW IF NOT EXISTS kpi_sessions_hourly_mv TO kpi_sessions_hourly AS
SELECT toStartOfHour(s.start_time) AS hour, s.channel AS channel, ifNull(s.store_id, '') AS store_id,
       ifNull(s.campaign, '') AS campaign, count() AS sessions, countIf(s.events = 1) AS bounces,
       sum(s.events) AS events, sum(s.page_views) AS page_views, countIf(s.converted) AS converted,
       uniqExactState(s.person_id) AS persons
FROM sessions AS s
GROUP BY hour, channel, store_id, campaign;

-- One row per person: first touch (channel, campaign, source, store; ties
-- broken by event id), first referrer, first order and orders.
CREATE TABLE IF NOT EXISTS kpi_persons (
    person_id String,
    first_seen SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    first_touch AggregateFunction(argMin, Tuple(String, String, String, String), Tuple(DateTime64(3, 'UTC'), String)),
    first_referrer AggregateFunction(argMinIf, String, Tuple(DateTime64(3, 'UTC'), String), UInt8),
    first_order SimpleAggregateFunction(min, Nullable(DateTime64(3, 'UTC'))),
    orders SimpleAggregateFunction(sum, UInt64),
    revenue SimpleAggregateFunction(sum, Float64)
) ENGINE = AggregatingMergeTree
ORDER BY person_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS kpi_persons_mv TO kpi_persons AS
SELECT e.person_id AS person_id, min(e.event_time) AS first_seen,
       argMinState((e.channel, ifNull(e.campaign, ''), ifNull(e.source, ''), ifNull(e.store_id, '')),
                   (e.event_time, e.event_id)) AS first_touch,
       argMinIfState(ifNull(e.referrer_id, ''), (e.event_time, e.event_id), toUInt8(e.referrer_id IS NOT NULL))
           AS first_referrer,
       minIfOrNull(e.event_time, e.event_type = 'order_completed') AS first_order,
       countIf(e.event_type = 'order_completed') AS orders,
       sumIf(ifNull(e.revenue, 0), e.event_type = 'order_completed') AS revenue
FROM touchpoints_enriched AS e
GROUP BY person_id;

-- Dead letters per UTC hour and reason.
CREATE TABLE IF NOT EXISTS kpi_dead_letters_hourly (
    hour DateTime('UTC'),
    reason LowCardinality(String),
    dead_letters SimpleAggregateFunction(sum, UInt64)
) ENGINE = AggregatingMergeTree
ORDER BY (hour, reason);

CREATE MATERIALIZED VIEW IF NOT EXISTS kpi_dead_letters_hourly_mv TO kpi_dead_letters_hourly AS
SELECT toStartOfHour(d.failed_at) AS hour, d.reason AS reason, count() AS dead_letters
FROM dead_letters AS d
GROUP BY hour, reason;

-- Rows stored before this migration (the sink is stopped while migrating).
INSERT INTO kpi_events_hourly
SELECT toStartOfHour(event_time) AS hour, channel, ifNull(store_id, '') AS store_id, event_type,
       ifNull(campaign, '') AS campaign, count(), sum(ifNull(revenue, 0)), sum(items),
       uniqExactState(person_id), uniqExactStateIf(person_id, member_id IS NOT NULL)
FROM touchpoints_enriched FINAL
GROUP BY hour, channel, store_id, event_type, campaign;

INSERT INTO kpi_events_minute
SELECT toStartOfMinute(event_time) AS minute, channel, event_type, count(), sum(ifNull(revenue, 0)),
       uniqExactState(person_id)
FROM touchpoints_enriched FINAL
GROUP BY minute, channel, event_type;

INSERT INTO kpi_persons
SELECT person_id, min(event_time),
       argMinState((channel, ifNull(campaign, ''), ifNull(source, ''), ifNull(store_id, '')), (event_time, event_id)),
       argMinIfState(ifNull(referrer_id, ''), (event_time, event_id), toUInt8(referrer_id IS NOT NULL)),
       minIfOrNull(event_time, event_type = 'order_completed'),
       countIf(event_type = 'order_completed'), sumIf(ifNull(revenue, 0), event_type = 'order_completed')
FROM touchpoints_enriched FINAL
GROUP BY person_id;

INSERT INTO kpi_dead_letters_hourly
SELECT toStartOfHour(failed_at) AS hour, reason, count()
FROM dead_letters FINAL
GROUP BY hour, reason;
