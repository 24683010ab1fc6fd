"""The event contract: a valid and several invalid examples of every type."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from shared.crypto import model_phone
from shared.events import (
    EVENT_MODELS,
    SCHEMA_VERSION_KEY,
    V2_EVENT_TYPES,
    V2_FIELDS,
    ContactEvent,
    ContactPayload,
    Handset,
    OutreachTask,
    PlanAttributes,
    RiskScore,
    SubscriberEvent,
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
    "contact": {"team": "retention", "channel": "call", "reason": "price", "resolved": False},
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
    ("contact", {"team": ""}, "team"),
    ("contact", {"resolved": "maybe"}, "resolved"),
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


def _version(event_type: str) -> dict[str, int]:
    """The lowest schema_version an event of this type can have."""
    return {"schema_version": 2 if event_type in V2_EVENT_TYPES else 1}


def test_every_event_type_has_a_valid_example() -> None:
    assert set(VALID_PAYLOADS) == set(EVENT_MODELS)


@pytest.mark.parametrize("event_type", sorted(VALID_PAYLOADS))
def test_valid_event_parses_to_its_model(event_type: str) -> None:
    data = envelope(event_type, VALID_PAYLOADS[event_type], **_version(event_type))
    event = parse_event(data)
    assert isinstance(event, EVENT_MODELS[event_type])
    assert str(event.event_id) == data["event_id"]
    # JSON round trip through the wire format gives the same event.
    assert parse_event(event.model_dump_json()) == event


@pytest.mark.parametrize("event_type", sorted(VALID_PAYLOADS))
def test_model_phone_is_the_payloads_phone_field_or_none(event_type: str) -> None:
    event = parse_event(envelope(event_type, VALID_PAYLOADS[event_type], **_version(event_type)))
    expected = VALID_PAYLOADS[event_type].get("phone")
    assert model_phone(event.payload) == expected
    assert (expected is not None) == (event_type == "subscriber")


@pytest.mark.parametrize(("event_type", "change", "field"), INVALID_PAYLOADS)
def test_invalid_payload_is_rejected_naming_the_field(
    event_type: str, change: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        parse_event(
            envelope(event_type, {**VALID_PAYLOADS[event_type], **change}, **_version(event_type))
        )
    assert any(field in map(str, e["loc"]) for e in info.value.errors())


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"event_id": "not-a-uuid"}, "event_id"),
        ({"occurred_at": "2026-11-01T10:00:00"}, "occurred_at"),  # naive: no timezone
        ({"occurred_at": (NOW + timedelta(days=3)).isoformat()}, "occurred_at"),
        ({"subscriber_id": ""}, "subscriber_id"),
        ({"subscriber_id": "a b"}, "subscriber_id"),
        ({"schema_version": 3}, "schema_version"),
        ({"schema_version": "two"}, "schema_version"),
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
    assert topics.all() == ["x.events.in", "x.events", "x.scores", "x.tasks", "x.outcomes", "x.dlq"]


# --- version 2 ------------------------------------------------------------------------------

# The payload fields of version 1, as released: version 2 must keep every one of them.
V1_PAYLOAD_FIELDS: dict[str, set[str]] = {
    "cdr": {
        "service",
        "direction",
        "counterpart_network",
        "counterpart_id",
        "duration_s",
        "bytes",
        "roaming",
        "charge",
        "count",
    },
    "billing": {
        "period",
        "amount_due",
        "amount_paid",
        "plan_id",
        "previous_plan_id",
        "plan_change",
        "due_date",
    },
    "payment": {"amount", "method", "period", "late"},
    "arrears": {"overdue_amount", "days_overdue"},
    "stop_notice": {"reason", "suspension_at", "amount_to_pay", "notice_id"},
    "subscriber": {
        "tier",
        "monthly_value",
        "account_manager_id",
        "phone",
        "preferred_channel",
        "marketing_opt_out",
        "language",
        "name",
        "activated_at",
        "plan_id",
    },
    "complaint": {"category", "severity", "resolved"},
    "churn": {"kind", "competitor"},
    "reactivation": {"channel"},
}

# Every field version 2 added, set (categories with values no list knows).
V2_PAYLOADS: dict[str, dict[str, Any]] = {
    "subscriber": {
        **VALID_PAYLOADS["subscriber"],
        "handset": {
            "model": "Pixel 8 Pro",
            "acquired_at": "2024-03-01T00:00:00Z",
            "age_months": 31,
            "price_band": "flagship",
            "capabilities": ["5g", "volte", "esim"],
        },
        "lines": 4,
        "recurring_charge": "39.99",
        "credit_class": "ZZ-new-class",
        "age_band": "65+",
        "region": "north-coast",
        "contract": "two_year",
        "contract_end_at": "2027-01-31T00:00:00+01:00",
        "plan": {
            "international": True,
            "roaming": False,
            "voicemail": True,
            "data_allowance_mb": 20480.5,
            "unlimited_data": False,
        },
        "attributes": {"payment_method": "Electronic check", "paperless_billing": "Yes"},
    },
    "billing": {
        **VALID_PAYLOADS["billing"],
        "recurring_charge": "30.00",
        "overage_charge": "12.10",
    },
    "cdr": {
        **VALID_PAYLOADS["cdr"],
        "count": 42,
        "time_band": "twilight",
        "distinct_counterparts": 17,
    },
}


def _loc_msgs(info: pytest.ExceptionInfo[ValidationError]) -> dict[tuple[Any, ...], str]:
    return {tuple(e["loc"]): e["msg"] for e in info.value.errors()}


def test_v2_fields_are_the_fields_version_2_added() -> None:
    for event_type, model in EVENT_MODELS.items():
        fields = set(model.model_fields["payload"].annotation.model_fields)  # type: ignore[union-attr]
        if event_type in V2_EVENT_TYPES:
            assert event_type not in V1_PAYLOAD_FIELDS and event_type not in V2_FIELDS
            continue
        assert V1_PAYLOAD_FIELDS[event_type] <= fields, f"{event_type} lost a version 1 field"
        assert fields - V1_PAYLOAD_FIELDS[event_type] == V2_FIELDS.get(event_type, set())
    assert set(V2_FIELDS) == {"subscriber", "billing", "cdr"}
    assert {"contact"} == V2_EVENT_TYPES


@pytest.mark.parametrize("event_type", sorted(V2_PAYLOADS))
def test_every_v2_field_round_trips(event_type: str) -> None:
    payload = V2_PAYLOADS[event_type]
    assert V2_FIELDS[event_type] <= set(payload), "the example must set every version 2 field"
    event = parse_event(envelope(event_type, payload, schema_version=2))
    assert event.schema_version == 2
    assert event.payload.model_fields_set >= V2_FIELDS[event_type]
    wire = orjson.loads(event.model_dump_json())
    assert wire["schema_version"] == 2
    assert V2_FIELDS[event_type] <= set(wire["payload"])
    assert parse_event(event.model_dump_json()) == event
    assert parse_event(event.model_dump(mode="json")) == event


def test_v2_profile_values_are_typed() -> None:
    event = parse_event(envelope("subscriber", V2_PAYLOADS["subscriber"], schema_version=2))
    assert isinstance(event, SubscriberEvent)
    p = event.payload
    assert p.handset is not None and p.plan is not None
    assert p.handset.model == "Pixel 8 Pro"
    assert p.handset.acquired_at == datetime(2024, 3, 1, tzinfo=UTC)
    assert p.handset.age_months == 31
    assert p.handset.capabilities == ["5g", "volte", "esim"]
    assert p.lines == 4
    assert p.recurring_charge == Decimal("39.99")
    assert (p.credit_class, p.age_band, p.region, p.contract) == (
        "ZZ-new-class",
        "65+",
        "north-coast",
        "two_year",
    )
    assert p.contract_end_at == datetime(2027, 1, 30, 23, tzinfo=UTC)
    assert p.plan.international is True and p.plan.roaming is False
    assert p.plan.data_allowance_mb == 20480.5
    assert p.attributes == {"payment_method": "Electronic check", "paperless_billing": "Yes"}


def test_a_v2_event_without_the_new_fields_means_what_v1_means() -> None:
    v1 = parse_event(envelope("subscriber", VALID_PAYLOADS["subscriber"]))
    v2 = parse_event(envelope("subscriber", VALID_PAYLOADS["subscriber"], schema_version=2))
    assert v2.payload == v1.payload
    assert isinstance(v2, SubscriberEvent)
    assert v2.payload.handset is None and v2.payload.attributes == {}


@pytest.mark.parametrize("event_type", sorted(V1_PAYLOAD_FIELDS))
def test_v1_events_parse_and_serialise_as_before(event_type: str) -> None:
    data = envelope(event_type, VALID_PAYLOADS[event_type])
    del data["schema_version"]  # the default is 1
    event = parse_event(data)
    assert event.schema_version == 1
    wire = orjson.loads(event.model_dump_json())
    # An unset version 2 field is not written: a version 1 reader reads the result.
    assert set(wire["payload"]) == V1_PAYLOAD_FIELDS[event_type]
    assert wire["schema_version"] == 1


@pytest.mark.parametrize(
    ("event_type", "field"),
    sorted((event_type, field) for event_type, fields in V2_FIELDS.items() for field in fields),
)
def test_a_v1_event_using_a_v2_field_is_refused_at_that_field(event_type: str, field: str) -> None:
    full = V2_PAYLOADS[event_type]
    payload = {k: v for k, v in full.items() if k == field or k not in V2_FIELDS[event_type]}
    with pytest.raises(ValidationError) as info:
        parse_event(envelope(event_type, payload))
    [error] = info.value.errors()
    assert error["loc"] == (event_type, "payload", field)
    assert error["msg"] == f"{field} needs schema_version 2"
    assert error["type"] == "needs_schema_version"
    # The same event as version 2 is fine.
    assert parse_event(envelope(event_type, payload, schema_version=2)).schema_version == 2


def test_every_v2_field_a_v1_event_uses_is_named() -> None:
    payload = {**VALID_PAYLOADS["subscriber"], "lines": 2, "region": "north", "plan": {}}
    with pytest.raises(ValidationError) as info:
        parse_event(envelope("subscriber", payload))
    assert _loc_msgs(info) == {
        ("subscriber", "payload", "lines"): "lines needs schema_version 2",
        ("subscriber", "payload", "plan"): "plan needs schema_version 2",
        ("subscriber", "payload", "region"): "region needs schema_version 2",
    }


def test_a_v1_event_with_v2_fields_left_empty_is_accepted() -> None:
    # null, [] and {} carry nothing a version 1 reader would miss (producers that
    # write every optional field as null keep working).
    payload = {**VALID_PAYLOADS["subscriber"], "handset": None, "lines": None, "attributes": {}}
    event = parse_event(envelope("subscriber", payload))
    assert event.schema_version == 1
    assert set(orjson.loads(event.model_dump_json())["payload"]) == V1_PAYLOAD_FIELDS["subscriber"]


@pytest.mark.parametrize("version", [None, 1])
def test_a_v1_contact_event_is_refused_at_its_type(version: int | None) -> None:
    data = envelope("contact", VALID_PAYLOADS["contact"], schema_version=version)
    if version is None:
        del data["schema_version"]
    with pytest.raises(ValidationError) as info:
        parse_event(data)
    assert _loc_msgs(info) == {
        ("contact", "event_type"): "event type contact needs schema_version 2",
    }


def test_contact_defaults_to_care_and_takes_any_team() -> None:
    event = parse_event(envelope("contact", {}, schema_version=2))
    assert isinstance(event, ContactEvent)
    assert event.payload.team == "care"
    assert event.payload.channel is None and event.payload.resolved is None
    fraud = parse_event(envelope("contact", {"team": "fraud_desk"}, schema_version=2))
    assert fraud.payload.team == "fraud_desk"  # type: ignore[union-attr]


# (event type, payload change, where the error must be): wrong types, whatever the version.
INVALID_V2: list[tuple[str, dict[str, Any], tuple[Any, ...]]] = [
    ("subscriber", {"handset": "iphone"}, ("handset",)),
    ("subscriber", {"handset": {"model": "x", "colour": "red"}}, ("handset", "colour")),
    ("subscriber", {"handset": {"age_months": 601}}, ("handset", "age_months")),
    ("subscriber", {"handset": {"age_months": -1}}, ("handset", "age_months")),
    ("subscriber", {"handset": {"acquired_at": "last year"}}, ("handset", "acquired_at")),
    ("subscriber", {"handset": {"capabilities": "5g"}}, ("handset", "capabilities")),
    ("subscriber", {"handset": {"capabilities": ["4g"] * 17}}, ("handset", "capabilities")),
    ("subscriber", {"handset": {"capabilities": [""]}}, ("handset", "capabilities", 0)),
    ("subscriber", {"lines": -1}, ("lines",)),
    ("subscriber", {"lines": 0}, ("lines",)),
    ("subscriber", {"lines": 10_001}, ("lines",)),
    ("subscriber", {"lines": 2.5}, ("lines",)),
    ("subscriber", {"recurring_charge": "-1"}, ("recurring_charge",)),
    ("subscriber", {"credit_class": 3}, ("credit_class",)),
    ("subscriber", {"credit_class": ""}, ("credit_class",)),
    ("subscriber", {"region": "x" * 65}, ("region",)),
    ("subscriber", {"age_band": "18-24\n"}, ("age_band",)),
    ("subscriber", {"contract": ["two_year"]}, ("contract",)),
    ("subscriber", {"contract_end_at": "soon"}, ("contract_end_at",)),
    ("subscriber", {"contract_end_at": "2027-01-31T00:00:00"}, ("contract_end_at",)),
    ("subscriber", {"contract_end_at": "9999-12-31T00:00:00Z"}, ("contract_end_at",)),
    ("subscriber", {"plan": {"international": True, "sms": 1}}, ("plan", "sms")),
    ("subscriber", {"plan": {"international": "maybe"}}, ("plan", "international")),
    ("subscriber", {"plan": {"data_allowance_mb": -1}}, ("plan", "data_allowance_mb")),
    ("subscriber", {"plan": {"data_allowance_mb": "Infinity"}}, ("plan", "data_allowance_mb")),
    ("subscriber", {"attributes": {"payment method": "card"}}, ("attributes", "payment method")),
    ("subscriber", {"attributes": {"Payment": "card"}}, ("attributes", "Payment")),
    ("subscriber", {"attributes": {"payment": ""}}, ("attributes", "payment")),
    ("subscriber", {"attributes": {"payment": 1}}, ("attributes", "payment")),
    ("subscriber", {"attributes": {f"a{i}": "x" for i in range(33)}}, ("attributes",)),
    ("billing", {"recurring_charge": "-0.01"}, ("recurring_charge",)),
    ("billing", {"overage_charge": "lots"}, ("overage_charge",)),
    ("cdr", {"time_band": ""}, ("time_band",)),
    ("cdr", {"distinct_counterparts": -1}, ("distinct_counterparts",)),
    ("cdr", {"count": 3, "distinct_counterparts": 4}, ("distinct_counterparts",)),
    ("cdr", {"distinct_counterparts": 2}, ("distinct_counterparts",)),  # count defaults to 1
]


@pytest.mark.parametrize(("event_type", "change", "where"), INVALID_V2)
def test_a_wrong_v2_type_is_an_error_at_its_field(
    event_type: str, change: dict[str, Any], where: tuple[Any, ...]
) -> None:
    with pytest.raises(ValidationError) as info:
        parse_event(
            envelope(event_type, {**VALID_PAYLOADS[event_type], **change}, schema_version=2)
        )
    locs = [tuple(e["loc"]) for e in info.value.errors()]
    assert any(loc[: 2 + len(where)] == (event_type, "payload", *where) for loc in locs), locs


def test_distinct_counterparts_may_equal_count() -> None:
    payload = {**VALID_PAYLOADS["cdr"], "count": 5, "distinct_counterparts": 5}
    event = parse_event(envelope("cdr", payload, schema_version=2))
    assert event.payload.distinct_counterparts == 5  # type: ignore[union-attr]


def test_v2_models_are_frozen() -> None:
    event = parse_event(envelope("subscriber", V2_PAYLOADS["subscriber"], schema_version=2))
    assert isinstance(event, SubscriberEvent) and event.payload.handset is not None
    with pytest.raises(ValidationError, match="frozen"):
        event.payload.handset.model = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        event.payload.lines = 3  # type: ignore[misc]


def test_json_schema_shows_contact_and_the_v2_fields() -> None:
    schemas = json_schemas()
    contact = schemas["contact"]
    assert contact["properties"]["event_type"]["const"] == "contact"
    assert contact[SCHEMA_VERSION_KEY] == 2
    assert "contact" in schemas["event"]["discriminator"]["mapping"]
    for event_type, fields in V2_FIELDS.items():
        payload_ref = schemas[event_type]["properties"]["payload"]["$ref"].split("/")[-1]
        properties = schemas[event_type]["$defs"][payload_ref]["properties"]
        for field in fields:
            assert properties[field][SCHEMA_VERSION_KEY] == 2, (event_type, field)
            assert properties[field]["description"].startswith("(schema_version 2)")
        v1_fields = set(properties) - fields
        assert not any(SCHEMA_VERSION_KEY in properties[f] for f in v1_fields)
    assert schemas["subscriber"]["properties"]["schema_version"]["enum"] == [1, 2]
    defs = schemas["subscriber"]["$defs"]
    assert defs["Handset"]["additionalProperties"] is False
    assert defs["PlanAttributes"]["additionalProperties"] is False
    attributes = defs["SubscriberPayload"]["properties"]["attributes"]
    assert list(attributes["patternProperties"]) == ["^[a-z][a-z0-9_]{0,31}$"]
    assert attributes["additionalProperties"] is False


def test_the_contract_doc_documents_version_2() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "event-contract.md").read_text()
    missing = [
        f"{event_type}.{field}"
        for event_type, fields in V2_FIELDS.items()
        for field in sorted(fields)
        if f"| `{field}` (v2) |" not in doc
    ]
    for model in (Handset, PlanAttributes, ContactPayload):
        missing += [f"{model.__name__}.{f}" for f in model.model_fields if f"| `{f}` |" not in doc]
    assert not missing, f"document these in docs/event-contract.md: {missing}"
    assert "### `contact`" in doc and "needs schema_version 2" in doc
