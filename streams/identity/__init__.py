"""Identity: which person is behind each touchpoint."""
