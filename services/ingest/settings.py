"""Ingest settings (environment variables, see README)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import BaseServiceSettings


class IngestSettings(BaseServiceSettings):
    """Settings of the ingest service."""

    ingest_port: int = Field(default=8081, ge=1, le=65535)
    ingest_max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    ingest_max_batch_events: int = Field(default=10_000, ge=1)
    ingest_produce_timeout_s: float = Field(default=15.0, gt=0)
    ingest_retry_after_s: int = Field(default=5, ge=1)
