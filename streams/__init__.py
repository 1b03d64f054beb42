"""Touchline: a real-time omnichannel customer-data pipeline."""

__version__ = "0.1.0"
