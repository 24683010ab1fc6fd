"""Ingest settings (environment variables, see README)."""

from __future__ import annotations

from pydantic import Field

from shared.crypto import PhoneKeySettings
from shared.settings import BaseServiceSettings


class IngestSettings(PhoneKeySettings, BaseServiceSettings):
    """Settings of the ingest service (PHONE_KEY seals phones before they reach Kafka)."""

    ingest_port: int = Field(default=8081, ge=1, le=65535)
    ingest_max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    ingest_max_batch_events: int = Field(default=10_000, ge=1)
    ingest_produce_timeout_s: float = Field(default=15.0, gt=0)
    ingest_retry_after_s: int = Field(default=5, ge=1)
    # The events topic is checked (exists, KAFKA_TOPIC_PARTITIONS partitions) before
    # producing, with a verdict cached this long, and again after the broker's acks.
    ingest_topic_check_ttl_s: float = Field(default=1.0, ge=0, le=60)
    ingest_topic_check_interval_s: float = Field(default=5.0, gt=0, le=600)
    # Bounds every metadata request of the check (and so /readyz): shorter than the
    # readiness probe's own timeout.
    ingest_topic_check_timeout_s: float = Field(default=1.0, gt=0, le=10)
    # After a failed topic check (broker down, topic missing), refuse until the
    # topics have checked fine for this long: every service re-creates lost topics
    # within about a second, and Tansu acknowledged events into a topic that a
    # racing creator then replaced (measured: tests/test_faults.py).
    ingest_topic_settle_s: float = Field(default=2.0, ge=0, le=60)
    # The Kafka entry point (services/ingest/landing.py, docs/kafka-producers.md).
    ingest_landing_enabled: bool = True
    ingest_landing_consumer_group: str = "churnwatch-ingest-landing"
    ingest_landing_max_record_bytes: int = Field(default=1024 * 1024, ge=1024)
