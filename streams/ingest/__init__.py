"""Ingestion: raw bytes in, validated batches and dead letters out."""
