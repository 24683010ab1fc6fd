"""The event contract: a valid and several invalid examples of every type."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from shared.events import (
    EVENT_MODELS,
    OutreachTask,
    RiskScore,
    derive_id,
    json_schemas,
    parse_event,
)
from shared.topics import Topics

NOW = datetime.now(UTC).replace(microsecond=0)

VALID_PAYLOADS: dict[str, dict[str, Any]] = {
    "cdr": {
        "service": "voice",
        "direction": "outgoing",
        "counterpart_network": "competitor",
        "duration_s": 95,
        "roaming": False,
        "charge": "0.35",
    },
    "billing": {
        "period": "2026-10",
        "amount_due": "42.10",
        "amount_paid": "0",
        "plan_id": "P-20",
        "plan_change": "downgrade",
        "previous_plan_id": "P-40",
    },
    "payment": {"amount": "42.10", "method": "card"},
    "arrears": {"overdue_amount": "42.10", "days_overdue": 17},
    "stop_notice": {
        "reason": "arrears",
        "suspension_at": (NOW + timedelta(days=2)).isoformat(),
        "amount_to_pay": "42.10",
    },
    "subscriber": {
        "tier": "gold",
        "monthly_value": "120",
        "account_manager_id": "AM-1",
        "phone": "+447700900123",
        "preferred_channel": "call",
        "marketing_opt_out": True,
    },
    "complaint": {"category": "network", "severity": "high"},
    "churn": {"kind": "port_out", "competitor": "OtherTel"},
    "reactivation": {},
}

# (event type, payload change, the field the error must name)
INVALID_PAYLOADS: list[tuple[str, dict[str, Any], str]] = [
    ("cdr", {"service": "fax"}, "service"),
    ("cdr", {"duration_s": -1}, "duration_s"),
    ("cdr", {"counterpart_network": "mars"}, "counterpart_network"),
    ("billing", {"period": "2026-13"}, "period"),
    ("billing", {"amount_due": "-5"}, "amount_due"),
    ("payment", {"amount": "abc"}, "amount"),
    ("arrears", {"days_overdue": -3}, "days_overdue"),
    ("stop_notice", {"suspension_at": "2026-12-01T10:00:00"}, "suspension_at"),
    ("subscriber", {"tier": "platinum"}, "tier"),
    ("subscriber", {"phone": "0800 123"}, "phone"),
    ("complaint", {"severity": "apocalyptic"}, "severity"),
    ("churn", {"kind": "moved_house"}, "kind"),
    ("reactivation", {"unexpected": 1}, "unexpected"),
]


def envelope(event_type: str, payload: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    data = {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "subscriber_id": "S-1",
        "occurred_at": NOW.isoformat(),
        "source": "billing",
        "schema_version": 1,
        "payload": payload,
    }
    data.update(overrides)
    return data


def test_every_event_type_has_a_valid_example() -> None:
    assert set(VALID_PAYLOADS) == set(EVENT_MODELS)


@pytest.mark.parametrize("event_type", sorted(VALID_PAYLOADS))
def test_valid_event_parses_to_its_model(event_type: str) -> None:
    data = envelope(event_type, VALID_PAYLOADS[event_type])
    event = parse_event(data)
    assert isinstance(event, EVENT_MODELS[event_type])
    assert str(event.event_id) == data["event_id"]
    # JSON round trip through the wire format gives the same event.
    assert parse_event(event.model_dump_json()) == event


@pytest.mark.parametrize(("event_type", "change", "field"), INVALID_PAYLOADS)
def test_invalid_payload_is_rejected_naming_the_field(
    event_type: str, change: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        parse_event(envelope(event_type, {**VALID_PAYLOADS[event_type], **change}))
    assert any(field in map(str, e["loc"]) for e in info.value.errors())


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"event_id": "not-a-uuid"}, "event_id"),
        ({"occurred_at": "2026-11-01T10:00:00"}, "occurred_at"),  # naive: no timezone
        ({"occurred_at": (NOW + timedelta(days=3)).isoformat()}, "occurred_at"),
        ({"subscriber_id": ""}, "subscriber_id"),
        ({"subscriber_id": "a b"}, "subscriber_id"),
        ({"schema_version": 2}, "schema_version"),
        ({"extra_field": 1}, "extra_field"),
    ],
)
def test_invalid_envelope_is_rejected(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_event(envelope("payment", VALID_PAYLOADS["payment"], **overrides))
    assert any(field in map(str, e["loc"]) for e in info.value.errors())


def test_unknown_event_type_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        parse_event(envelope("teleport", {}))
    assert "event_type" in str(info.value) or "teleport" in str(info.value)


def test_money_keeps_decimal_precision() -> None:
    event = parse_event(envelope("payment", {"amount": "0.1"}))
    assert event.payload.amount == Decimal("0.1")  # type: ignore[union-attr]


def test_json_schema_for_every_type_and_message() -> None:
    schemas = json_schemas()
    messages = {"event", "risk_score", "outreach_task", "task_update", "task_outcome"}
    assert set(EVENT_MODELS) | messages == set(schemas)
    assert schemas["stop_notice"]["properties"]["event_type"]["const"] == "stop_notice"
    assert "subscriber_id" in schemas["cdr"]["required"]


def test_derived_ids_are_deterministic_and_distinct() -> None:
    cause = uuid.uuid4()
    assert derive_id("reminder", cause) == derive_id("reminder", cause)
    assert derive_id("reminder", cause) != derive_id("retention", cause)


def test_messages_between_services_validate() -> None:
    score = RiskScore(
        score_id=uuid.uuid4(),
        subscriber_id="S-1",
        score=0.8,
        previous_score=0.2,
        band="high",
        model_version="prior-v1",
        reasons=[
            {
                "code": "STOP_NOTICE",
                "text_en": "suspension scheduled",
                "text_zh": "因欠费即将停机",
                "contribution": 1.2,
            }
        ],
        cause_event_id=uuid.uuid4(),
        event_time=NOW,
        scored_at=NOW,
    )
    assert RiskScore.model_validate_json(score.model_dump_json()) == score
    with pytest.raises(ValidationError):
        OutreachTask.model_validate({"task_id": str(uuid.uuid4()), "kind": "retention"})


def test_topics_are_named_under_the_prefix() -> None:
    topics = Topics("x")
    assert topics.all() == ["x.events", "x.scores", "x.tasks", "x.outcomes", "x.dlq"]
