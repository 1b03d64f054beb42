-- Segment history for the Members dashboard. member_snapshots keeps each person's latest
-- snapshot only; member_segments keeps the segments of every snapshot published on
-- members.features, by person and stream time (as_of), so a day's sizes can be read back.
-- A snapshot is published only when a value changed (lifecycle boundaries included), so a
-- person's state on a day is their latest snapshot at or before that day's end: days without
-- a snapshot carry the previous one over. A replayed snapshot lands on the same
-- (person_id, as_of) and collapses (the later offset, version, wins). A tombstone (the person
-- was merged into another) comes in as a row with is_deleted = 1 and as_of at the epoch: no
-- time travels with it, so readers leave such a person out of every day before a later
-- snapshot of theirs (README, Members dashboard).
CREATE TABLE IF NOT EXISTS member_segments (
    person_id String,
    as_of DateTime64(3, 'UTC'),
    lifecycle LowCardinality(String),
    member_grid LowCardinality(String),
    browse_without_buying Bool,
    interest_shift Bool,
    is_deleted UInt8,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (person_id, as_of);

CREATE MATERIALIZED VIEW IF NOT EXISTS member_segments_mv TO member_segments AS
SELECT s.person_id AS person_id, s.as_of AS as_of, s.lifecycle AS lifecycle, s.member_grid AS member_grid,
       s.browse_without_buying AS browse_without_buying, s.interest_shift AS interest_shift,
       s.is_deleted AS is_deleted, s.version AS version
FROM member_snapshots AS s;

-- History starts with each person's snapshot stored when this migration ran.
INSERT INTO member_segments (person_id, as_of, lifecycle, member_grid, browse_without_buying, interest_shift,
                             is_deleted, version)
SELECT person_id, as_of, lifecycle, member_grid, browse_without_buying, interest_shift, is_deleted, version
FROM member_snapshots FINAL WHERE is_deleted = 0;
