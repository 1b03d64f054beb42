"""Member features: each person's live profile (windows, touches, interest, segments), published on members.features."""
