"""Member features: live per-person counters (the skeleton's first features)."""
