-- members.features v4: the person's city and a store in it (streams/features/profile.py).
-- city is the context.city of the person's latest event carrying one; city_store the
-- person's home store if it is open in that city, else the most recently opened store
-- open there, from the store reference table as the worker held it at the snapshot;
-- city_store_opened is that store's opened_on at local midnight (+08:00) as a UTC
-- instant. Null when unknown or no store; rows stored before this migration read null.
ALTER TABLE member_snapshots ADD COLUMN IF NOT EXISTS city Nullable(String);
ALTER TABLE member_snapshots ADD COLUMN IF NOT EXISTS city_store Nullable(String);
ALTER TABLE member_snapshots ADD COLUMN IF NOT EXISTS city_store_opened Nullable(DateTime64(3, 'UTC'));
