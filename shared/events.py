"""The event contract: what the billing system publishes to ingest.

Every subscriber event is an envelope (``event_id``, ``event_type``,
``subscriber_id``, ``occurred_at``, ``source``, ``schema_version``) with a typed
``payload``. ``event_type`` is the discriminator, so one ``TypeAdapter`` parses
any event and rejects an unknown type with a clear error. JSON Schema for every
type is generated from these models (``churnwatch schemas``) and served by
ingest at ``GET /v1/schemas``.

Version 2 of the contract adds optional fields (``V2_FIELDS``) and the
``contact`` type (``V2_EVENT_TYPES``). They need ``schema_version: 2``: a
version 1 event that uses one is refused, so a producer never believes it sent
something a version 1 reader would ignore. Every version 1 event is accepted as
before, and its wire form (``model_dump_json``) is unchanged: a version 2 field
left unset is not written out.

The value types (``Money``, ``Instant``, ``Category``, ...) live in
``shared.contract_types`` and the messages between services (``RiskScore``,
``OutreachTask``, ...) in ``shared.messages``; both are re-exported here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from shared.contract_types import EARLIEST as EARLIEST
from shared.contract_types import LATEST as LATEST
from shared.contract_types import Category as Category
from shared.contract_types import Channel as Channel
from shared.contract_types import ContractModel
from shared.contract_types import Instant as Instant
from shared.contract_types import Label as Label
from shared.contract_types import Money as Money
from shared.contract_types import Period as Period
from shared.contract_types import PhoneNumber as PhoneNumber
from shared.contract_types import SubscriberId as SubscriberId
from shared.contract_types import Tier as Tier
from shared.crypto import SealedPhone, is_encrypted, model_phone
from shared.messages import TASK_MESSAGE_ADAPTER as TASK_MESSAGE_ADAPTER
from shared.messages import TASK_NAMESPACE as TASK_NAMESPACE
from shared.messages import CallOutcome as CallOutcome
from shared.messages import OutreachTask as OutreachTask
from shared.messages import RiskScore as RiskScore
from shared.messages import ScoreReason as ScoreReason
from shared.messages import TaskAction as TaskAction
from shared.messages import TaskKind as TaskKind
from shared.messages import TaskMessage as TaskMessage
from shared.messages import TaskOutcome as TaskOutcome
from shared.messages import TaskUpdate as TaskUpdate
from shared.messages import UpdateCause as UpdateCause
from shared.messages import derive_id as derive_id

# Events further in the future than this are refused: clock skew between the
# billing system and us is minutes, not days, and a year-3000 timestamp would
# poison every time-decayed feature. Stop-notices schedule a suspension in the
# future, but their `occurred_at` is when the notice was issued.
MAX_FUTURE_SKEW = timedelta(hours=1)

SCHEMA_VERSION_KEY: Final = "x-schema-version"
"""JSON Schema keyword on what version 2 added (fields and the ``contact`` type)."""

AttributeName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
"""A key of ``SubscriberPayload.attributes``: snake_case, 1-32 chars."""


def _absent(value: object) -> bool:
    """True for the value of a version 2 field that was not given (None, [] or {})."""
    return value is None or (isinstance(value, list | dict) and not value)


def _since_v2(
    *,
    description: str,
    empty: Callable[[], list[Any] | dict[Any, Any]] | None = None,
    schema_extra: dict[str, Any] | None = None,
    **constraints: Any,
) -> Any:
    """A field added by version 2: optional, and left out of the wire form while absent.

    Leaving it out keeps a version 1 event's JSON byte for byte what it was, so a
    consumer still on version 1 reads what a version 2 ingest produced. ``empty``
    (``list`` or ``dict``) makes the default an empty one instead of None;
    ``schema_extra`` adds keywords to the field's JSON Schema.
    """
    default: dict[str, Any] = {"default_factory": empty} if empty else {"default": None}
    return Field(
        **default,
        description=f"(schema_version 2) {description}",
        exclude_if=_absent,
        json_schema_extra={SCHEMA_VERSION_KEY: 2, **(schema_extra or {})},
        **constraints,
    )


def _error(loc: tuple[str | int, ...], what: str, value: object) -> InitErrorDetails:
    return {
        "type": PydanticCustomError(
            "needs_schema_version",
            "{what} needs schema_version {version}",
            {"what": what, "version": 2},
        ),
        "loc": loc,
        "input": value,
    }


# --- payloads -----------------------------------------------------------------


class CdrPayload(ContractModel):
    """A call detail record: one voice call, SMS or data session, or a summary of several.

    ``count`` lets a history import carry a period's usage as one record
    (e.g. 42 calls totalling 3,100 s) instead of one event per call.
    """

    service: Literal["voice", "sms", "data"]
    direction: Literal["outgoing", "incoming"]
    counterpart_network: Literal["own", "competitor", "international"] = "own"
    counterpart_id: Label | None = Field(
        default=None,
        max_length=128,
        description="Hashed/opaque id of the other party (for distinct-contact counts); "
        "never a raw phone number.",
    )
    duration_s: float | None = Field(default=None, ge=0, le=86_400 * 31)
    bytes: int | None = Field(default=None, ge=0)
    roaming: bool = False
    charge: Money = Decimal(0)
    count: int = Field(default=1, ge=1, le=1_000_000)
    time_band: Category | None = _since_v2(
        description="When in the day or week: day, evening, night, weekend, peak, off_peak, "
        "... (any label)."
    )
    distinct_counterparts: int | None = _since_v2(
        description="For a summary record: how many distinct other parties it covers "
        "(at most count).",
        ge=0,
        le=1_000_000,
    )

    @field_validator("duration_s")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and v != v:  # NaN
            raise ValueError("duration_s must be a number")
        return v

    @field_validator("distinct_counterparts")
    @classmethod
    def _counterparts_within_count(cls, v: int | None, info: ValidationInfo) -> int | None:
        # A field validator, not a model one: it runs only when the field is given,
        # so the usual CDR (the bulk of the stream) pays nothing for it.
        count = info.data.get("count")  # absent when count itself was invalid
        if v is not None and count is not None and v > count:
            raise PydanticCustomError(
                "counterparts_above_count",
                "distinct_counterparts ({distinct}) must not exceed count ({count})",
                {"distinct": v, "count": count},
            )
        return v


class BillingPayload(ContractModel):
    """A monthly bill."""

    period: Period
    amount_due: Money
    amount_paid: Money = Decimal(0)
    plan_id: Label = Field(min_length=1, max_length=64)
    previous_plan_id: Label | None = Field(default=None, max_length=64)
    plan_change: Literal["none", "upgrade", "downgrade"] = "none"
    due_date: Instant | None = None
    recurring_charge: Money | None = _since_v2(
        description="The part of amount_due that is the monthly recurring (plan) charge."
    )
    overage_charge: Money | None = _since_v2(
        description="The part of amount_due for usage beyond the plan."
    )


class PaymentPayload(ContractModel):
    """A payment received from the subscriber."""

    amount: Money
    method: Literal["cash", "card", "bank_transfer", "direct_debit", "voucher", "other"] = "other"
    period: Period | None = None
    late: bool = False


class ArrearsPayload(ContractModel):
    """The subscriber owes money past its due date."""

    overdue_amount: Money
    days_overdue: int = Field(ge=0, le=3650)


class StopNoticePayload(ContractModel):
    """A scheduled suspension for unpaid bills."""

    reason: Literal["arrears", "credit_limit", "fraud", "other"] = "arrears"
    suspension_at: Instant
    amount_to_pay: Money
    notice_id: Label | None = Field(default=None, max_length=64)


class Handset(ContractModel):
    """The subscriber's handset (version 2): every field optional."""

    model: Category | None = Field(default=None, description="Make and model, e.g. 'Pixel 8'.")
    acquired_at: Instant | None = Field(default=None, description="When it was bought.")
    age_months: int | None = Field(
        default=None, ge=0, le=600, description="Its age in months at the event's occurred_at."
    )
    price_band: Category | None = Field(
        default=None, description="e.g. low, mid, high, flagship (any label)."
    )
    capabilities: list[Category] = Field(
        default_factory=list, max_length=16, description="e.g. 4g, 5g, volte, esim (any labels)."
    )


class PlanAttributes(ContractModel):
    """What the subscriber's plan includes (version 2): every field optional."""

    international: bool | None = Field(default=None, description="An international calling plan.")
    roaming: bool | None = Field(default=None, description="Roaming included or enabled.")
    voicemail: bool | None = Field(default=None, description="A voicemail plan.")
    data_allowance_mb: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="Monthly data allowance in MB."
    )
    unlimited_data: bool | None = Field(default=None, description="Unlimited data.")


class SubscriberPayload(ContractModel):
    """The subscriber's profile; the latest one wins."""

    tier: Tier = Tier.STANDARD
    monthly_value: Money = Decimal(0)
    account_manager_id: Label | None = Field(default=None, max_length=64)
    phone: PhoneNumber | SealedPhone | None = Field(
        default=None,
        description="E.164 (+ and 7-15 digits) when sent to ingest. On Kafka it is sealed "
        "('v2:<key id>:<base64url>', opaque: only outreach opens it); ingest refuses a "
        "sealed value.",
    )
    preferred_channel: Channel = Channel.SMS
    marketing_opt_out: bool = False
    language: str = Field(default="en", pattern=r"^[a-z]{2}$")
    name: Label | None = Field(default=None, max_length=128)
    activated_at: Instant | None = None
    plan_id: Label | None = Field(default=None, max_length=64)
    handset: Handset | None = _since_v2(description="The handset.")
    lines: int | None = _since_v2(
        description="Lines or members on the account (family plan size).", ge=1, le=10_000
    )
    recurring_charge: Money | None = _since_v2(description="The monthly recurring (plan) charge.")
    credit_class: Category | None = _since_v2(description="Credit class (any label).")
    age_band: Category | None = _since_v2(description="Age band, e.g. 18-24, 65+ (any label).")
    region: Category | None = _since_v2(description="Region or service area (any label).")
    contract: Category | None = _since_v2(
        description="Contract type, e.g. month_to_month, one_year, two_year (any label)."
    )
    contract_end_at: Instant | None = _since_v2(description="When the commitment ends.")
    plan: PlanAttributes | None = _since_v2(description="What the plan includes.")
    attributes: dict[AttributeName, Category] = _since_v2(
        description="Other operator attributes (payment_method, paperless_billing, ...): "
        "snake_case keys, at most 32.",
        empty=dict,
        max_length=32,
        # The generated schema lists the key pattern under patternProperties, which
        # alone lets any other key through; ingest refuses them, so say so.
        schema_extra={"additionalProperties": False},
    )


class ComplaintPayload(ContractModel):
    """A complaint raised by the subscriber."""

    category: Literal["network", "billing", "service", "device", "other"] = "other"
    severity: Literal["low", "medium", "high"] = "medium"
    resolved: bool = False


class ContactPayload(ContractModel):
    """The subscriber contacted the operator (version 2); not necessarily a complaint."""

    team: Category = Field(
        default="care",
        description="Who handled it: care, retention (the retention or cancellation desk), "
        "technical, billing, sales, ... (any label).",
    )
    channel: Category | None = Field(
        default=None, description="call, shop, chat, app, email, ... (any label)."
    )
    reason: Category | None = Field(default=None, description="Why they got in touch (any label).")
    resolved: bool | None = Field(default=None, description="Resolved in that contact.")


class ChurnPayload(ContractModel):
    """The subscriber left: the label the model learns from."""

    kind: Literal["port_out", "cancellation"]
    competitor: Label | None = Field(default=None, max_length=64)


class ReactivationPayload(ContractModel):
    """A churned subscriber came back."""

    channel: Label | None = Field(default=None, max_length=64)


# --- envelopes ----------------------------------------------------------------


class _Envelope(ContractModel):
    event_id: uuid.UUID = Field(description="Set by the producer; the idempotency key.")
    subscriber_id: SubscriberId
    occurred_at: Instant = Field(
        description="When it happened (timezone-aware); at most 1 hour in the future."
    )
    source: Label = Field(default="billing", min_length=1, max_length=64)
    schema_version: Literal[1, 2] = Field(
        default=1,
        description="2 for an event that uses a type or a field of version 2, else 1.",
    )

    if TYPE_CHECKING:
        # Every concrete event declares both; the version gate reads them.
        event_type: str
        payload: ContractModel

    @model_validator(mode="after")
    def _version_gate(self) -> Self:
        # Every event passes here, so the common case (nothing of version 2) is
        # decided with one set test before anything else is looked at.
        if self.schema_version == 1 and (
            self.event_type in V2_EVENT_TYPES
            or not self.payload.model_fields_set.isdisjoint(V2_FIELDS.get(self.event_type, ()))
        ):
            _refuse_v2_in_v1(self)
        return self


def _refuse_v2_in_v1(event: _Envelope) -> None:
    """Raise if a version 1 event uses a version 2 type or sets a version 2 field.

    A version 1 reader would silently drop what version 2 added; refusing it
    tells the producer to send ``schema_version: 2``. An explicit null (or an
    empty list or object) carries nothing a version 1 reader could miss, so it
    is accepted.
    """
    errors: list[InitErrorDetails] = []
    if event.event_type in V2_EVENT_TYPES:
        errors.append(_error(("event_type",), f"event type {event.event_type}", event.event_type))
    payload = event.payload
    for name in sorted(V2_FIELDS.get(event.event_type, frozenset()) & payload.model_fields_set):
        value = getattr(payload, name)
        if not _absent(value):
            errors.append(_error(("payload", name), name, value))
    if errors:
        raise ValidationError.from_exception_data(type(event).__name__, errors)


class CdrEvent(_Envelope):
    """Usage: a call, SMS or data session."""

    event_type: Literal["cdr"]
    payload: CdrPayload


class BillingEvent(_Envelope):
    """A monthly bill."""

    event_type: Literal["billing"]
    payload: BillingPayload


class PaymentEvent(_Envelope):
    """A payment."""

    event_type: Literal["payment"]
    payload: PaymentPayload


class ArrearsEvent(_Envelope):
    """Money overdue."""

    event_type: Literal["arrears"]
    payload: ArrearsPayload


class StopNoticeEvent(_Envelope):
    """A scheduled suspension."""

    event_type: Literal["stop_notice"]
    payload: StopNoticePayload


class SubscriberEvent(_Envelope):
    """A subscriber profile (new or changed)."""

    event_type: Literal["subscriber"]
    payload: SubscriberPayload


class ComplaintEvent(_Envelope):
    """A complaint."""

    event_type: Literal["complaint"]
    payload: ComplaintPayload


class ContactEvent(_Envelope):
    """The subscriber contacted the operator: care, the retention desk, ... (version 2)."""

    model_config = ConfigDict(json_schema_extra={SCHEMA_VERSION_KEY: 2})

    event_type: Literal["contact"]
    payload: ContactPayload


class ChurnEvent(_Envelope):
    """A port-out or cancellation."""

    event_type: Literal["churn"]
    payload: ChurnPayload


class ReactivationEvent(_Envelope):
    """A churned subscriber reactivated."""

    event_type: Literal["reactivation"]
    payload: ReactivationPayload


Event = Annotated[
    CdrEvent
    | BillingEvent
    | PaymentEvent
    | ArrearsEvent
    | StopNoticeEvent
    | SubscriberEvent
    | ComplaintEvent
    | ContactEvent
    | ChurnEvent
    | ReactivationEvent,
    Field(discriminator="event_type"),
]
"""Any subscriber event, discriminated on ``event_type``."""

EVENT_MODELS: dict[str, type[_Envelope]] = {
    "cdr": CdrEvent,
    "billing": BillingEvent,
    "payment": PaymentEvent,
    "arrears": ArrearsEvent,
    "stop_notice": StopNoticeEvent,
    "subscriber": SubscriberEvent,
    "complaint": ComplaintEvent,
    "contact": ContactEvent,
    "churn": ChurnEvent,
    "reactivation": ReactivationEvent,
}


def _v2_fields(model: Any) -> frozenset[str]:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return frozenset()
    return frozenset(
        name
        for name, info in model.model_fields.items()
        if isinstance(info.json_schema_extra, dict)
        and info.json_schema_extra.get(SCHEMA_VERSION_KEY) == 2
    )


V2_EVENT_TYPES: frozenset[str] = frozenset({"contact"})
"""Event types that need ``schema_version: 2`` whatever their payload."""

V2_FIELDS: dict[str, frozenset[str]] = {
    name: fields
    for name, model in EVENT_MODELS.items()
    if (fields := _v2_fields(model.model_fields["payload"].annotation))
}
"""Event type -> the payload fields version 2 added to it (they need ``schema_version: 2``).

Only types that exist in version 1 are listed; a ``V2_EVENT_TYPES`` type is
version 2 as a whole.
"""

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(data: bytes | str | dict[str, Any], *, check_clock: bool = True) -> Event:
    """Parse and validate one event from JSON bytes/text or a decoded dict.

    Raises ``pydantic.ValidationError`` on anything that is not a valid event.
    ``check_clock`` also refuses an ``occurred_at`` more than ``MAX_FUTURE_SKEW``
    ahead of our clock: ingest checks it on arrival; consumers of events that
    ingest already accepted skip it (it is a third of their parsing time). On
    arrival a phone must also be the plain number: ingest seals it itself, and a
    sealed value from a client would be one that no key opens.
    """
    event = (
        EVENT_ADAPTER.validate_python(data)
        if isinstance(data, dict)
        else EVENT_ADAPTER.validate_json(data)
    )
    phone = model_phone(event.payload)
    if check_clock and isinstance(phone, str) and is_encrypted(phone):
        raise ValidationError.from_exception_data(
            "Event",
            [
                {
                    "type": PydanticCustomError(
                        "sealed_phone", "phone must be the plain E.164 number; ingest seals it"
                    ),
                    "loc": ("payload", "phone"),
                    "input": "(sealed)",
                }
            ],
        )
    if check_clock and event.occurred_at - datetime.now(UTC) > MAX_FUTURE_SKEW:
        raise ValidationError.from_exception_data(
            "Event",
            [
                {
                    "type": PydanticCustomError(
                        "future_time",
                        "occurred_at is more than {skew} in the future",
                        {"skew": str(MAX_FUTURE_SKEW)},
                    ),
                    "loc": ("occurred_at",),
                    "input": event.occurred_at.isoformat(),
                }
            ],
        )
    return event


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every event type, plus the union and the inter-service messages."""
    schemas: dict[str, dict[str, Any]] = {
        name: model.model_json_schema() for name, model in EVENT_MODELS.items()
    }
    schemas["event"] = EVENT_ADAPTER.json_schema()
    schemas["risk_score"] = RiskScore.model_json_schema()
    schemas["outreach_task"] = OutreachTask.model_json_schema()
    schemas["task_update"] = TaskUpdate.model_json_schema()
    schemas["task_outcome"] = TaskOutcome.model_json_schema()
    return schemas
