"""Settings, logging and errors: the plumbing every service shares."""

from __future__ import annotations

import io
import json
import logging

import pytest
from pydantic import ValidationError

from services.ingest.settings import IngestSettings
from services.outreach.settings import OutreachSettings
from shared.db import to_async_url
from shared.logging import JsonFormatter, PiiFilter, mask_phone, mask_subscriber


def test_settings_come_from_the_environment_and_are_frozen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("INGEST_MAX_BATCH_EVENTS", "7")
    settings = IngestSettings()
    assert settings.kafka_bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.ingest_max_batch_events == 7
    with pytest.raises(ValidationError):
        settings.ingest_port = 1  # type: ignore[misc]


def test_production_refuses_development_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "KAFKA_BOOTSTRAP_SERVERS",
        "DATABASE_URL",
        "SMS_GATEWAY_TOKEN",
        "SMS_RECEIPT_SECRET",
    ):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValidationError, match="KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL"):
        IngestSettings(environment="production")
    explicit = {
        "environment": "production",
        "kafka_bootstrap_servers": "kafka:9092",
        "database_url": "postgresql+asyncpg://u:p@db/churnwatch",
    }
    key = "cmVhbC1rZXktcmVhbC1rZXktcmVhbC1rZXktMzJieXQ="  # 32 bytes, base64
    # Ingest seals phones: production refuses the development PHONE_KEY there too.
    assert IngestSettings(**explicit, phone_key=key).environment == "production"
    with pytest.raises(ValidationError, match="SMS_GATEWAY_TOKEN"):
        OutreachSettings(**explicit, phone_key=key)
    with pytest.raises(ValidationError, match="SMS_RECEIPT_SECRET"):
        OutreachSettings(**explicit, sms_gateway_token="real", phone_key=key)
    real = {"sms_gateway_token": "real", "sms_receipt_secret": "also-real"}
    with pytest.raises(ValidationError, match="OUTREACH_PHONE_KEY"):
        OutreachSettings(**explicit, **real)
    assert OutreachSettings(**explicit, **real, outreach_phone_key=key).environment == "production"
    with pytest.raises(ValidationError, match="AUTH_ENABLED"):
        IngestSettings(**explicit, auth_enabled=False)


def test_plain_postgres_urls_get_the_asyncpg_driver() -> None:
    assert to_async_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert to_async_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert to_async_url("postgresql+asyncpg://u@h/db") == "postgresql+asyncpg://u@h/db"


def test_logs_are_json_without_phone_numbers_or_raw_subscriber_ids() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(PiiFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.pii")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info(
            "sending to +447700900123 now (%s)",
            "+15550001234",
            extra={"subscriber_id": "S-42", "to": "+15550009999"},
        )
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    text = stream.getvalue()
    for secret in ("447700900123", "15550001234", "15550009999", "S-42"):
        assert secret not in text
    assert line["subscriber_id"] == mask_subscriber("S-42")
    assert line["msg"] == "sending to ***23 now (***34)"
    assert mask_phone("call 07700900123 or +44 7700 900123") == "call ***23 or ***23"
    # Dates, times and UUIDs are not phone numbers: ids stay searchable in logs.
    kept = "task 123e4567-e89b-12d3-a456-426614174000 at 2026-11-25T10:00:00"
    assert mask_phone(kept) == kept


def test_the_offset_ledger_refuses_acks_that_do_not_move_a_partition_forward() -> None:
    from shared.kafka import OffsetLedger

    ledger = OffsetLedger()
    assert ledger.observe("t", 0, 0)
    assert ledger.observe("t", 0, 50)  # the next batch
    assert ledger.observe("t", 1, 0)  # another partition has its own log
    # A broker that lost its log (memory storage restarted, topic re-created)
    # acknowledges at offset 0 again: nothing proves the records are held.
    assert not ledger.observe("t", 0, 0)
    assert not ledger.observe("t", 0, 0)  # Tansu's phantom acks all say 0
    assert ledger.observe("t", 0, 1)  # the new log moving forward is trusted again
