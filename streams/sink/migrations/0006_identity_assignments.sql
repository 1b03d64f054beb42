-- The identity graph's current clustering, from identity.assignments (compacted):
-- the person each identifier belongs to. The latest record per identifier wins
-- (version = its offset); what `touchline profile` and GET /v1/profiles read.
CREATE TABLE IF NOT EXISTS identity_assignments (
    identifier String,
    person_id String,
    member_id Nullable(String),
    root String,
    version UInt64,
    is_deleted UInt8
) ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY identifier;
