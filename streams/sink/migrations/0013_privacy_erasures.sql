-- The audit of erasures (privacy.erasures records of kind erase; streams/sink/erasure.py):
-- one row per request, written by the sink after it deleted every row of the request's
-- persons. Holds no identifier in the clear: identifiers as salted hashes, persons as
-- their pseudonymous ids. rows_deleted: rows counted (every stored version) and deleted
-- per table. The sink writes a request's row once (a redelivered record is recognised);
-- should two rows of one request ever meet, version (the total of rows deleted) keeps
-- the one that deleted most, never a later one that found nothing left. A starting
-- sink reads its erased persons back from here, to keep dropping their rows.
CREATE TABLE IF NOT EXISTS privacy_erasures (
    request_id String,
    requested_at DateTime64(3, 'UTC'),
    erased_at DateTime64(3, 'UTC'),
    identifier_hashes Array(String),
    persons Array(String),
    reason String,
    rows_deleted Map(String, UInt64),
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY request_id;
