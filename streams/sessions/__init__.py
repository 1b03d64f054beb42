"""Sessions: each person's visits, cut by event-time inactivity, closed on stream time."""
