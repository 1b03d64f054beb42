"""Thin wrappers over the Kafka clients and the embedded broker."""
