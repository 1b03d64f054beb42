"""The touchpoint contract: channels, event types, identifiers, validation."""
