-- members.features v3: the purchase model's view of each person (streams/features/profile.py
-- purchase_outlook). p_alive and expected_purchases_30d are BG/NBD for the parameters the
-- workers had loaded (null without parameters or before a first order); next_purchase is
-- midnight UTC of the expected next purchase day from the person's own order days (null
-- before a second order day). Rows stored before this migration read them as null.
ALTER TABLE member_snapshots ADD COLUMN IF NOT EXISTS p_alive Nullable(Float64);
ALTER TABLE member_snapshots ADD COLUMN IF NOT EXISTS expected_purchases_30d Nullable(Float64);
ALTER TABLE member_snapshots ADD COLUMN IF NOT EXISTS next_purchase Nullable(DateTime64(3, 'UTC'));
