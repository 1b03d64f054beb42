-- identity.changes v2: the identity graph's changes (resolver = 'graph': merges,
-- splits, conflicts, shared identifiers) beside the routing resolver's merges
-- (resolver = 'route', what rows written before this migration were).
ALTER TABLE identity_changes ADD COLUMN IF NOT EXISTS into_persons Array(String);
ALTER TABLE identity_changes ADD COLUMN IF NOT EXISTS evidence_event_ids Array(String);
ALTER TABLE identity_changes ADD COLUMN IF NOT EXISTS resolver LowCardinality(String) DEFAULT 'route';
