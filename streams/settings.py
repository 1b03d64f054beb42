"""Every setting Touchline reads, in one place, from ``TOUCHLINE_*`` variables.

Defaults start the embedded stack: no Kafka bootstrap means "the embedded
Tansu broker" (started by ``touchline run`` or ``touchline broker``), and the
ClickHouse URL points at an embedded chDB database under ``var/``. Pointing the
same code at real Kafka, a Schema Registry and a ClickHouse server is a matter
of setting ``TOUCHLINE_KAFKA_BOOTSTRAP``, ``TOUCHLINE_SCHEMA_REGISTRY_URL`` and
``TOUCHLINE_CLICKHOUSE_URL`` (see deploy/).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from streams.features.config import DEFAULTS as _FEATURES

ENV_PREFIX = "TOUCHLINE_"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SettingsError(ValueError):
    """A TOUCHLINE_* variable holds a value Touchline cannot use."""


@dataclass(frozen=True)
class Settings:
    # Kafka
    kafka_bootstrap: str = ""  # empty: use the embedded broker
    # How long a consumer's fetch may wait at the broker for records (every consumer: Faust's and
    # the librdkafka ones). The embedded broker answers a waiting fetch only when this runs out,
    # records or not, so each hop of the pipeline waits half of it on average; real Kafka answers
    # as soon as records arrive, and a longer wait there only saves idle fetches.
    kafka_fetch_wait_ms: int = 20
    topic_prefix: str = "touchline"
    partitions: int = 4
    replication_factor: int = 1
    schema_registry_url: str = ""  # empty: fixed, deterministic schema ids
    # State and storage
    data_dir: str = "var"
    clickhouse_url: str = ""  # empty: chdb:///<data_dir>/chdb
    # ClickHouse cluster (remote_servers name) the migrations target: Replicated
    # local tables + Distributed tables under the plain names, DDL ON CLUSTER.
    # Empty: one node (a server or chDB). Not with chdb://.
    clickhouse_cluster: str = ""
    store: str = "memory://"  # Faust table store; rocksdb:// for local disk
    # Processing
    ingest_batch_size: int = 2000
    allowed_lateness_s: float = 0.0
    cart_abandon_delay_s: float = 1800.0  # the cart_abandon trigger's wait (overrides its definition's)
    recommend_days: int = 30  # recommend(category): best sellers by units ordered in this many UTC days
    recommend_count: int = 6  # recommend(category): at most this many products
    triggers_dir: str = ""  # a directory of trigger definitions (*.yaml) besides the built-in ones; empty: none
    session_timeout_s: float = 1800.0  # a session ends after this much inactivity (event time)
    # "wall": the ingest watermark follows the system clock (production).
    # "manual": time only moves with event times and clock-tick records on the
    # raw topic (simulations and tests drive it).
    clock: str = "wall"
    dead_letter_key: str = ""  # base64 AES-256 key; empty: a key file under data_dir
    # Ingestion
    identifier_salt: str = ""  # salt of phone/email hashes; empty: a salt file under data_dir
    default_country_code: str = "+86"  # for phone numbers without one
    max_record_bytes: int = 65536  # larger raw records are dead-lettered as oversize
    max_future_skew_s: float = 86400.0  # event time may be this far after receive time
    max_event_age_s: float = 30 * 86400.0  # live events older than this are rejected (imports are exempt)
    dedup_window_s: float = 86400.0  # a repeated event id within this much stream time is dropped
    dedup_max_ids: int = 1_000_000  # per identity partition; the oldest batches go first
    # Identity graph rules (streams/identity/graph.py); every worker must run with the same ones
    identity_priority: str = ""  # identifier types, strongest first, comma-separated; empty: the default order
    identity_limits: str = ""  # "phone=3,email=3": per type per person, over the defaults
    identity_shared_threshold: int = 2  # seen with more member ids than this: shared, links nothing
    identity_blocklist: str = ""  # "type:value,...": identifiers that never link, besides junk values
    # Member features (streams/features/config.py FeatureSettings: each feature_X is its field X).
    # The half-lives, interest_depth, max_categories and top_places shape the kept state: changing
    # them takes effect for new events and does not rebuild what is kept.
    feature_long_half_life_days: float = _FEATURES.long_half_life_days
    feature_short_half_life_days: float = _FEATURES.short_half_life_days
    feature_interest_depth: int = _FEATURES.interest_depth
    feature_max_categories: int = _FEATURES.max_categories
    feature_shift_threshold: float = _FEATURES.shift_threshold
    feature_shift_min_events: float = _FEATURES.shift_min_events
    feature_top_places: int = _FEATURES.top_places
    feature_grid_window: str = _FEATURES.grid_window
    feature_grid_high_orders: int = _FEATURES.grid_high_orders
    feature_grid_high_aov: float = _FEATURES.grid_high_aov
    feature_browse_window: str = _FEATURES.browse_window
    feature_browse_min_engagements: int = _FEATURES.browse_min_engagements
    feature_new_days: int = _FEATURES.new_days
    feature_at_risk_days: int = _FEATURES.at_risk_days
    feature_lapsed_days: int = _FEATURES.lapsed_days
    # Purchase model (streams/features/purchase_model.py): the params.json `touchline
    # fit-purchase-model` writes; empty: no parameters (P(alive) and expected purchases null).
    # Workers look at it again at most this often (worker clock) and use a changed file's
    # parameters from then on, without a restart; 0: at every batch.
    purchase_model_params: str = ""
    purchase_model_check_s: float = 60.0
    # Sink
    sink_batch_rows: int = 20000
    sink_flush_interval_s: float = 1.0
    sink_query_port: int = 9465  # read-only SQL endpoint on 127.0.0.1 while the sink owns chDB
    # Fault seam for tests (tests/test_sink_e2e.py): the sink's first N insert
    # attempts fail as if ClickHouse were down (0 in production).
    sink_fault_failed_inserts: int = 0
    # Analytics
    reporting_timezone: str = "Asia/Shanghai"  # days and hours of every KPI; the purchase model's days
    # Processes
    worker_id: int = 0
    web_port: int = 6066  # Faust web (and /metrics) of worker N is web_port + N
    sink_metrics_port: int = 9464
    log_level: str = "WARNING"
    # HTTP collector (`touchline collect`)
    collector_port: int = 8088  # POST /v1/batch, /healthz and /metrics
    collector_write_keys: str = ""  # "source:key,source2:key2"; a source may have several keys
    collector_max_body_bytes: int = 512 * 1024  # larger request bodies get 413
    collector_max_batch: int = 500  # more events in one batch get 400
    collector_profile_keys: str = ""  # "reader:key,...": who may GET /v1/profiles; empty: not served
    collector_delivery_timeout_s: float = 10.0  # Kafka must acknowledge within this, else 503

    @property
    def embedded(self) -> bool:
        return not self.kafka_bootstrap

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()

    @property
    def clickhouse_dsn(self) -> str:
        if self.clickhouse_url:
            return self.clickhouse_url
        return f"chdb://{self.data_path / 'chdb'}"

    def topic(self, suffix: str) -> str:
        return f"{self.topic_prefix}.{suffix}"

    def group(self, role: str) -> str:
        """Consumer group of a role; prefixed so deployments sharing a cluster never mix."""
        return f"{self.topic_prefix}-{role}"

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The environment a child process needs to see these same settings."""
        return {f"{ENV_PREFIX}{f.name.upper()}": str(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f"{ENV_PREFIX}{f.name.upper()}")
            if raw is None:
                continue
            kind: Any = type(f.default)
            try:
                values[f.name] = kind(raw)
            except ValueError as exc:
                raise SettingsError(
                    f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a valid {kind.__name__}"
                ) from exc
        settings = cls(**values)
        settings.validate()
        return settings

    def identity_rules(self) -> Any:
        """The identity graph's rules (streams.identity.graph.Rules) from the TOUCHLINE_IDENTITY_* settings."""
        from streams.identity.graph import Rules

        try:
            return Rules.parse(self.identity_priority, self.identity_limits, self.identity_shared_threshold,
                               self.identity_blocklist)
        except ValueError as exc:
            raise SettingsError(f"{ENV_PREFIX}IDENTITY_*: {exc}") from None

    def feature_settings(self) -> Any:
        """Member features' knobs (streams.features.config.FeatureSettings) from the TOUCHLINE_FEATURE_* settings."""
        from streams.features.config import FeatureSettings

        try:
            return FeatureSettings(**{f.name: getattr(self, f"feature_{f.name}") for f in fields(FeatureSettings)
                                      if f.name != "day_zone"}, day_zone=self.reporting_timezone)
        except ValueError as exc:
            raise SettingsError(f"{ENV_PREFIX}FEATURE_* or {ENV_PREFIX}REPORTING_TIMEZONE: {exc}") from None

    def purchase_model(self, clock: Any) -> Any:
        """The BG/NBD parameters of TOUCHLINE_PURCHASE_MODEL_PARAMS, read now and re-read when the
        file changes (streams.features.purchase_model.PurchaseModel on ``clock``); a file that is
        there but unusable is a SettingsError."""
        from streams.features.bgnbd import ParamsError
        from streams.features.purchase_model import PurchaseModel

        try:
            return PurchaseModel(self.purchase_model_params, clock, round(self.purchase_model_check_s * 1000)).start()
        except ParamsError as exc:
            raise SettingsError(f"{ENV_PREFIX}PURCHASE_MODEL_PARAMS: {exc}") from None

    def trigger_definitions(self) -> Any:
        """The trigger definitions: the built-in ones and those of TOUCHLINE_TRIGGERS_DIR, checked
        (streams.triggers.definitions; a DefinitionError names each problem's file and line)."""
        from streams.triggers import definitions

        try:
            return definitions.load(definitions.BUILTIN_DIR, *([self.triggers_dir] if self.triggers_dir else []))
        except definitions.DefinitionError as exc:
            raise SettingsError(str(exc)) from None

    def validate(self) -> None:
        self.identity_rules()
        self.feature_settings()
        if self.clock not in ("wall", "manual"):
            raise SettingsError(f"{ENV_PREFIX}CLOCK must be 'wall' or 'manual', not {self.clock!r}")
        if self.purchase_model_check_s < 0:
            raise SettingsError(f"{ENV_PREFIX}PURCHASE_MODEL_CHECK_S must be >= 0, not {self.purchase_model_check_s}")
        if self.partitions < 1:
            raise SettingsError(f"{ENV_PREFIX}PARTITIONS must be at least 1")
        if self.kafka_fetch_wait_ms < 0:
            raise SettingsError(f"{ENV_PREFIX}KAFKA_FETCH_WAIT_MS must be >= 0, not {self.kafka_fetch_wait_ms}")
        url = self.clickhouse_dsn
        if not url.startswith(("chdb://", "http://", "https://")):
            raise SettingsError(
                f"{ENV_PREFIX}CLICKHOUSE_URL must start with chdb://, http:// or https://, not {url!r}"
            )
        if self.clickhouse_cluster:
            if url.startswith("chdb://"):
                raise SettingsError(
                    f"{ENV_PREFIX}CLICKHOUSE_CLUSTER={self.clickhouse_cluster!r} needs a ClickHouse server: "
                    f"embedded chDB ({url}) has no clusters. Set {ENV_PREFIX}CLICKHOUSE_URL to a node of "
                    f"the cluster (http(s)://...), or leave {ENV_PREFIX}CLICKHOUSE_CLUSTER empty"
                )
            if not _IDENTIFIER.fullmatch(self.clickhouse_cluster):
                raise SettingsError(
                    f"{ENV_PREFIX}CLICKHOUSE_CLUSTER must be a cluster name of remote_servers "
                    f"(letters, digits, _), not {self.clickhouse_cluster!r}"
                )
