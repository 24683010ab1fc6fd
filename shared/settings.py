"""Settings base: one frozen object built at start-up from environment variables.

Field names are the environment variable names, lower-cased
(``KAFKA_BOOTSTRAP_SERVERS`` -> ``kafka_bootstrap_servers``). Nothing reads the
environment at import time: ``create_app(settings)`` and the consumers get the
object passed in, so tests build their own.
"""

from __future__ import annotations

from typing import Literal, Self
from urllib.parse import unquote

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_KAFKA = "localhost:9092"
DEFAULT_DATABASE_URL = "postgresql+asyncpg://churnwatch:churnwatch@localhost:5432/churnwatch"


class BaseServiceSettings(BaseSettings):
    """Settings every service shares: environment, Kafka, PostgreSQL, logging."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    environment: Literal["development", "test", "production"] = "development"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True
    host: str = "127.0.0.1"

    kafka_bootstrap_servers: str = DEFAULT_KAFKA
    kafka_topic_prefix: str = Field(default="churnwatch", pattern=r"^[A-Za-z0-9._-]+$")
    kafka_topic_partitions: int = Field(default=6, ge=1, le=1024)
    kafka_replication_factor: int = Field(default=1, ge=1, le=16)
    # Topic configs given to every topic churnwatch creates (shared.kafka.topic_configs)
    # and declared in the Strimzi KafkaTopic objects (deploy/k8s/overlays/strimzi).
    # None leaves the broker's default. An existing topic whose config differs is
    # reported at start-up, never altered (docs/deploy.md, "Topic configuration").
    # min.insync.replicas: with acks=all, a write needs this many in-sync copies.
    kafka_min_insync_replicas: int | None = Field(default=None, ge=1, le=16)
    # retention.ms of the pipeline topics (events, scores, tasks, outcomes); -1: forever.
    kafka_retention_ms: int | None = Field(default=None, ge=-1)
    # retention.ms of the landing topic (events.in, billing systems' raw records).
    kafka_landing_retention_ms: int | None = Field(default=None, ge=-1)
    # retention.ms of the dead-letter topic: long enough to investigate and replay.
    kafka_dlq_retention_ms: int | None = Field(default=None, ge=-1)
    # false: the services never create topics (Strimzi's Topic Operator owns them, and
    # their Kafka users have no Create ACL); a missing topic is reported and waited for.
    kafka_create_topics: bool = True
    # Off by default: the embedded broker (Tansu) fails InitProducerId. Consumers
    # are idempotent on event_id, so duplicates from producer retries are harmless.
    # Production (Apache Kafka / Strimzi) turns it on: no duplicates from retries.
    kafka_enable_idempotence: bool = False
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_request_timeout_ms: int = Field(default=10_000, ge=500)
    # A churnwatch topic that disappears (a memory-storage broker restarted, a topic
    # deleted) is re-created with KAFKA_TOPIC_PARTITIONS, loudly (log + metric), so
    # the pipeline resumes by itself; false: refuse (ingest 503, consumers wait)
    # until an operator re-creates it. docs/faults.md, "Topics lost".
    kafka_recreate_lost_topics: bool = True
    kafka_batch_max_records: int = Field(default=500, ge=1, le=100_000)
    kafka_poll_timeout_ms: int = Field(default=200, ge=10, le=60_000)
    # How long the broker may hold a fetch that finds no new record (Kafka's
    # fetch.max.wait.ms). aiokafka's default is 500; the embedded broker (Tansu)
    # holds a fetch that long even when records arrive meanwhile, which was most
    # of the pipeline's median latency (0.25 s -> 0.05 s, docs/performance.md).
    # Apache Kafka answers as soon as records arrive; the cost of a shorter wait
    # there is only more empty fetches from idle consumers.
    kafka_fetch_max_wait_ms: int = Field(default=50, ge=0, le=60_000)
    # Python's cyclic garbage collector runs a young collection every this many
    # allocations (CPython's default is 700). A batch allocates hundreds of
    # thousands of short-lived objects that reference counting frees anyway, and
    # at 700 the collections that follow cost scoring 30 % of its time with 1M
    # stored subscribers (docs/performance.md, issue 20). 0: CPython's default.
    gc_young_threshold: int = Field(default=50_000, ge=0, le=10_000_000)

    database_url: str = DEFAULT_DATABASE_URL
    database_pool_size: int = Field(default=5, ge=1, le=100)
    # TLS to PostgreSQL, passed to asyncpg (shared.db.connect_args). Unset leaves
    # asyncpg's default (try TLS, fall back to plain), which is fine only in dev.
    database_sslmode: (
        Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None
    ) = None
    database_ssl_rootcert: str | None = None

    # API keys on every HTTP API but probes and metrics (shared.auth). Tests and
    # local experiments may turn it off; production refuses that.
    auth_enabled: bool = True
    auth_cache_ttl_s: float = Field(default=30.0, ge=0, le=3600)

    # Retention of per-message bookkeeping (shared.retention): processed-id rows
    # and published outbox rows older than this are purged; 0 keeps everything.
    retention_days: int = Field(default=30, ge=0, le=3650)
    retention_interval_s: float = Field(default=3600.0, gt=0, le=86_400)

    # OpenTelemetry traces (shared.tracing, docs/operations.md "Tracing"), under
    # OTel's own variable names. Off by default ("none"): no exporter, no spans.
    otel_traces_exporter: Literal["none", "otlp", "console"] = "none"
    # OTLP over HTTP/protobuf; the traces go to <endpoint>/v1/traces unless
    # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT names the full URL.
    otel_exporter_otlp_endpoint: str = "http://localhost:4318"
    otel_exporter_otlp_traces_endpoint: str | None = None
    # "k1=v1,k2=v2" (e.g. a hosted backend's API key header): a secret, never logged.
    otel_exporter_otlp_headers: SecretStr | None = None
    otel_exporter_otlp_timeout: int = Field(default=10_000, ge=100, le=600_000)  # ms
    # Default: churnwatch-<service>.
    otel_service_name: str | None = Field(default=None, max_length=128)
    # "k1=v1,k2=v2", e.g. k8s.pod.name=...,service.instance.id=...
    otel_resource_attributes: str = ""
    # Parent-based by default: scoring, alerting and outreach follow ingest's decision.
    otel_traces_sampler: Literal[
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    ] = "parentbased_always_on"
    otel_traces_sampler_arg: float = Field(default=1.0, ge=0, le=1)

    def otlp_traces_endpoint(self) -> str:
        """Where OTLP/HTTP traces go (OTel's rule for the signal-specific endpoint)."""
        if self.otel_exporter_otlp_traces_endpoint:
            return self.otel_exporter_otlp_traces_endpoint
        return self.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"

    def otlp_headers(self) -> dict[str, str]:
        """``OTEL_EXPORTER_OTLP_HEADERS`` as a dict."""
        secret = self.otel_exporter_otlp_headers
        return _otel_pairs(secret.get_secret_value()) if secret is not None else {}

    def otel_resource_attributes_map(self) -> dict[str, str]:
        """``OTEL_RESOURCE_ATTRIBUTES`` as a dict."""
        return _otel_pairs(self.otel_resource_attributes)

    @model_validator(mode="after")
    def _kafka_settings_agree(self) -> Self:
        """Combinations the broker or the client would only refuse later, at run time."""
        if (
            self.kafka_min_insync_replicas is not None
            and self.kafka_min_insync_replicas > self.kafka_replication_factor
        ):
            # Every acks=all write would fail with NOT_ENOUGH_REPLICAS.
            raise ValueError("KAFKA_MIN_INSYNC_REPLICAS must not exceed KAFKA_REPLICATION_FACTOR")
        # The credentials themselves are checked when a Kafka client is made
        # (shared.kafka.client_options): tools that never talk to Kafka (the
        # migration Job) share the ConfigMap but not a Kafka user.
        if self.kafka_security_protocol.startswith("SASL_") and not self.kafka_sasl_mechanism:
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs KAFKA_SASL_MECHANISM"
            )
        return self

    def missing_kafka_credentials(self) -> list[str]:
        """The settings a Kafka client still needs for SASL (empty when none are missing)."""
        if not self.kafka_security_protocol.startswith("SASL_"):
            return []
        missing = []
        if not self.kafka_sasl_username:
            missing.append("KAFKA_SASL_USERNAME")
        if not self.kafka_sasl_password or not self.kafka_sasl_password.get_secret_value():
            missing.append("KAFKA_SASL_PASSWORD")
        return missing

    @model_validator(mode="after")
    def _refuse_unsafe_production_defaults(self) -> Self:
        """In production, the local development defaults are a misconfiguration."""
        if self.environment == "production":
            unsafe = []
            if self.kafka_bootstrap_servers == DEFAULT_KAFKA:
                unsafe.append("KAFKA_BOOTSTRAP_SERVERS")
            if self.database_url == DEFAULT_DATABASE_URL:
                unsafe.append("DATABASE_URL")
            if not self.auth_enabled:
                unsafe.append("AUTH_ENABLED (must be true)")
            if unsafe:
                raise ValueError(
                    "ENVIRONMENT=production needs explicit "
                    + ", ".join(unsafe)
                    + " (the development defaults are not allowed)"
                )
        return self


def _otel_pairs(raw: str) -> dict[str, str]:
    """OTel's ``k1=v1,k2=v2`` list (URL-encoded values) as a dict; malformed items skipped."""
    pairs: dict[str, str] = {}
    for item in raw.split(","):
        name, sep, value = item.partition("=")
        if sep and name.strip():
            pairs[unquote(name.strip())] = unquote(value.strip())
    return pairs
