"""Erasure of a person on request (personal-information law, GDPR): ``touchline erase``."""
