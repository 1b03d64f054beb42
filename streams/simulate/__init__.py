"""Seeded traffic simulator: realistic omnichannel touchpoints with a known ground truth.

``traffic`` is pure (it builds the records and the truth in memory); ``producer``
writes them to the raw topic. Same config, same bytes: a run can be replayed and
its outcome checked against the truth exactly.
"""
