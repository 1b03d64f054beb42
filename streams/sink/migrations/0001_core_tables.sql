-- Core tables written by the sink. ReplacingMergeTree keyed by each record's
-- deterministic id: a replayed batch collapses onto the rows it repeats, and
-- queries that must be exact read with FINAL.
CREATE TABLE IF NOT EXISTS touchpoints_enriched (
    event_id String,
    event_type LowCardinality(String),
    channel LowCardinality(String),
    event_time DateTime64(3, 'UTC'),
    receive_time DateTime64(3, 'UTC'),
    processed_at DateTime64(3, 'UTC'),
    person_id String,
    member_id Nullable(String),
    store_id Nullable(String),
    source_app Nullable(String),
    cart_id Nullable(String),
    order_id Nullable(String),
    product_id Nullable(String),
    category Nullable(String),
    revenue Nullable(Float64),
    historical Bool,
    raw_partition UInt16,
    raw_offset UInt64
) ENGINE = ReplacingMergeTree(processed_at)
PARTITION BY toYYYYMM(event_time)
ORDER BY event_id;

CREATE TABLE IF NOT EXISTS identity_changes (
    change_id String,
    kind LowCardinality(String),
    from_person String,
    into_person String,
    reason String,
    identifiers Array(String),
    evidence_event_id String,
    event_time DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree
ORDER BY change_id;

CREATE TABLE IF NOT EXISTS triggers (
    trigger_id String,
    rule LowCardinality(String),
    person_id String,
    member_id Nullable(String),
    correlation_key String,
    source_event_id String,
    due_at DateTime64(3, 'UTC'),
    fired_at DateTime64(3, 'UTC'),
    payload Map(String, String)
) ENGINE = ReplacingMergeTree
ORDER BY trigger_id;

CREATE TABLE IF NOT EXISTS dead_letters (
    dead_letter_id String,
    reason LowCardinality(String),
    detail String,
    source_topic String,
    source_partition UInt16,
    source_offset UInt64,
    failed_at DateTime64(3, 'UTC'),
    payload_size UInt32,
    key_id String
) ENGINE = ReplacingMergeTree
ORDER BY dead_letter_id;
