"""The topic registry: every topic Touchline reads or writes, declared once.

Topic creation (``touchline topics``), the agents, the sink, the simulator,
the tests and deploy/ all take names from here.

Partitioning: the raw topic is keyed by producers however they like. The
ingest stage re-routes each touchpoint to the ``ingested`` partition of its
*route key* (the device-like identifier: cookie, device, openid...), so one
cookie's events meet its identity links. The identity stage routes to the
``person-ops`` partition of the resolved person; ``featured`` keeps the same
partition numbers. Public topics are keyed by person id.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from streams import avro
from streams.settings import Settings


@dataclass(frozen=True)
class TopicSpec:
    suffix: str
    schema: str
    key: str
    description: str
    compacted: bool = False
    internal: bool = False
    partitioned: bool = True  # False: a single partition
    kept_forever: bool = False  # retention.ms=-1: never deleted by time or size

    def name(self, settings: Settings) -> str:
        return settings.topic(self.suffix)

    def partitions(self, settings: Settings) -> int:
        return settings.partitions if self.partitioned else 1


RAW = TopicSpec(
    "touchpoints.raw", avro.TOUCHPOINT, "any (producers' choice)",
    "Touchpoints from every channel, one per record, as producers write them.",
)
DEAD_LETTERS = TopicSpec(
    "touchpoints.dead-letter", avro.DEAD_LETTER, "dead_letter_id",
    "Records that could not be accepted: reason plus the encrypted original bytes.",
)
INGESTED = TopicSpec(
    "internal.ingested", avro.INGESTED_BATCH, "none: partition = hash(route key)",
    "Validated touchpoints batched per identity partition.", internal=True,
)
ENRICHED = TopicSpec(
    "touchpoints.enriched", avro.ENRICHED, "person_id",
    "Every accepted touchpoint with its person id, one per record.",
)
IDENTITY_CHANGES = TopicSpec(
    "identity.changes", avro.IDENTITY_CHANGE, "into_person",
    "Every change in who is who, with its evidence: the routing resolver's merges and the identity "
    "graph's merges, splits, conflicts and shared identifiers (field resolver).",
)
IDENTITY_WORK = TopicSpec(
    "internal.identity-graph", avro.IDENTITY_WORK, "none: partition = hash(identifier addressed)",
    "Messages between the partitions of the sharded identity graph (streams/identity/shards.py).",
    internal=True,
)
IDENTITY_ASSIGNMENTS = TopicSpec(
    "identity.assignments", avro.IDENTITY_ASSIGNMENT, "identifier",
    "The person each identifier belongs to by the identity graph (compacted).", compacted=True,
)
PERSON_OPS = TopicSpec(
    "internal.person-ops", avro.PERSON_BATCH, "none: partition = hash(person id)",
    "Events and merges batched per person partition, for the features agent.", internal=True,
)
FEATURED = TopicSpec(
    "internal.featured", avro.PERSON_BATCH, "none: same partition as person-ops",
    "Person operations after the features agent, for the triggers agent.", internal=True,
)
SESSIONS = TopicSpec(
    "sessions", avro.SESSION, "person_id",
    "Closed sessions (visits), one per record, with deterministic session ids.",
)
MEMBER_FEATURES = TopicSpec(
    "members.features", avro.MEMBER_FEATURES, "person_id",
    "Latest features snapshot per person (compacted).", compacted=True,
)
TRIGGERS = TopicSpec(
    "triggers.fired", avro.TRIGGER, "person_id",
    "Live triggers fired, one per record, with deterministic trigger ids.",
)
PRODUCT_SALES = TopicSpec(
    "products.sales", avro.PRODUCT_SALES, "partition|product_id",
    "Each product's order units per day of the last days and what is bought with it, per person-ops "
    "partition, for recommendations (compacted; every worker reads it whole).",
    compacted=True, internal=True,
)
PRIVACY_ERASURES = TopicSpec(
    "privacy.erasures", avro.ERASURE, "request_id",
    "Erasure requests (`touchline erase`): the suppression list ingest keeps out and the audit log. "
    "Kept for ever (retention.ms=-1): it is what stops replays bringing an erased person back.",
    partitioned=False, kept_forever=True,
)
ERASURE_WORK = TopicSpec(
    "internal.erasure", avro.ERASURE_WORK, "none: partition = hash(person id or identifier)",
    "An erasure request's persons and identifiers, each on the partition whose tables hold it.",
    internal=True,
)
IMPORTS_LEDGER = TopicSpec(
    "imports.ledger", avro.IMPORT_LEDGER, "file_sha256:mapping_sha256",
    "Completed `touchline import`s of history: re-importing the same file with the same mapping "
    "sends nothing (compacted).", compacted=True, partitioned=False,
)

# Reference data (``touchline load``): compacted, keyed by the natural id, one
# partition each (small tables every worker reads whole; one partition keeps
# them in load order).
REF_STORES = TopicSpec(
    "reference.stores", avro.STORE, "store_id",
    "Stores: city, location, opening date (compacted).", compacted=True, partitioned=False,
)
REF_PRODUCTS = TopicSpec(
    "reference.products", avro.PRODUCT, "product_id",
    "Product catalog: category path, price, new-arrival flag, tags (compacted).",
    compacted=True, partitioned=False,
)
REF_CAMPAIGNS = TopicSpec(
    "reference.campaigns", avro.CAMPAIGN, "campaign_id",
    "Campaign calendar (618, Double 11...) with warm-up and sale dates (compacted).",
    compacted=True, partitioned=False,
)
REF_SPEND = TopicSpec(
    "reference.spend", avro.SPEND, "day|channel|campaign_id",
    "Marketing spend per channel, campaign and day (compacted).", compacted=True, partitioned=False,
)
REFERENCE_TOPICS: tuple[TopicSpec, ...] = (REF_STORES, REF_PRODUCTS, REF_CAMPAIGNS, REF_SPEND)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    RAW, DEAD_LETTERS, INGESTED, ENRICHED, IDENTITY_CHANGES, IDENTITY_WORK, IDENTITY_ASSIGNMENTS,
    PERSON_OPS, FEATURED, SESSIONS, MEMBER_FEATURES, TRIGGERS, PRODUCT_SALES, PRIVACY_ERASURES, ERASURE_WORK,
    IMPORTS_LEDGER, *REFERENCE_TOPICS,
)


def partition_for(key: str, partitions: int) -> int:
    """Stable partition of a routing key, identical in every process and run."""
    return zlib.crc32(key.encode()) % partitions
