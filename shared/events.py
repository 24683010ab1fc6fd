"""The event contract: what the billing system publishes and what services exchange.

Every subscriber event is an envelope (``event_id``, ``event_type``,
``subscriber_id``, ``occurred_at``, ``source``, ``schema_version``) with a typed
``payload``. ``event_type`` is the discriminator, so one ``TypeAdapter`` parses
any event and rejects an unknown type with a clear error. JSON Schema for every
type is generated from these models (``churnwatch schemas``) and served by
ingest at ``GET /v1/schemas``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

# Events further in the future than this are refused: clock skew between the
# billing system and us is minutes, not days, and a year-3000 timestamp would
# poison every time-decayed feature. Stop-notices schedule a suspension in the
# future, but their `occurred_at` is when the notice was issued.
MAX_FUTURE_SKEW = timedelta(hours=1)

SubscriberId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"),
]
"""Operator subscriber id: opaque, 1-64 chars of letters, digits and ``._:-``."""

PhoneNumber = Annotated[str, StringConstraints(pattern=r"^\+[1-9][0-9]{6,14}$")]
"""A phone number in E.164 form (``+`` then 7-15 digits)."""

Money = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=4)]
"""A non-negative amount in the operator's currency."""

Period = Annotated[str, StringConstraints(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$")]
"""A billing period as ``YYYY-MM``."""

Label = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]*$")]
"""Free text from the billing system without control characters: a NUL cannot be
stored by PostgreSQL, and a newline or an escape sequence has no business in an id
or a name (it would forge log lines and break CSV exports)."""

# Times outside this range are typos or sentinels (0001-01-01, 9999-12-31): they
# would poison time-decayed features, and date arithmetic near the ends overflows.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)


def _plausible(value: datetime) -> datetime:
    if not EARLIEST <= value < LATEST:
        raise PydanticCustomError(
            "implausible_time",
            "time must be from {earliest} up to {latest}",
            {"earliest": EARLIEST.date().isoformat(), "latest": LATEST.date().isoformat()},
        )
    return value


Instant = Annotated[AwareDatetime, AfterValidator(_plausible)]
"""A timezone-aware time between 1970 and 2100."""


class _Model(BaseModel):
    """Base for contract models: strict about unknown fields, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Tier(StrEnum):
    """Customer value tier; every tier but ``standard`` has an account manager."""

    DIAMOND = "diamond"
    GOLD = "gold"
    SILVER = "silver"
    VIP_GUEST = "vip_guest"
    STANDARD = "standard"

    @property
    def is_vip(self) -> bool:
        """True for the tiers served by an account manager."""
        return self is not Tier.STANDARD


class Channel(StrEnum):
    """How outreach reaches a subscriber."""

    SMS = "sms"
    CALL = "call"


# --- payloads -----------------------------------------------------------------


class CdrPayload(_Model):
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

    @field_validator("duration_s")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and v != v:  # NaN
            raise ValueError("duration_s must be a number")
        return v


class BillingPayload(_Model):
    """A monthly bill."""

    period: Period
    amount_due: Money
    amount_paid: Money = Decimal(0)
    plan_id: Label = Field(min_length=1, max_length=64)
    previous_plan_id: Label | None = Field(default=None, max_length=64)
    plan_change: Literal["none", "upgrade", "downgrade"] = "none"
    due_date: Instant | None = None


class PaymentPayload(_Model):
    """A payment received from the subscriber."""

    amount: Money
    method: Literal["cash", "card", "bank_transfer", "direct_debit", "voucher", "other"] = "other"
    period: Period | None = None
    late: bool = False


class ArrearsPayload(_Model):
    """The subscriber owes money past its due date."""

    overdue_amount: Money
    days_overdue: int = Field(ge=0, le=3650)


class StopNoticePayload(_Model):
    """A scheduled suspension for unpaid bills."""

    reason: Literal["arrears", "credit_limit", "fraud", "other"] = "arrears"
    suspension_at: Instant
    amount_to_pay: Money
    notice_id: Label | None = Field(default=None, max_length=64)


class SubscriberPayload(_Model):
    """The subscriber's profile; the latest one wins."""

    tier: Tier = Tier.STANDARD
    monthly_value: Money = Decimal(0)
    account_manager_id: Label | None = Field(default=None, max_length=64)
    phone: PhoneNumber | None = None
    preferred_channel: Channel = Channel.SMS
    marketing_opt_out: bool = False
    language: str = Field(default="en", pattern=r"^[a-z]{2}$")
    name: Label | None = Field(default=None, max_length=128)
    activated_at: Instant | None = None
    plan_id: Label | None = Field(default=None, max_length=64)


class ComplaintPayload(_Model):
    """A complaint raised by the subscriber."""

    category: Literal["network", "billing", "service", "device", "other"] = "other"
    severity: Literal["low", "medium", "high"] = "medium"
    resolved: bool = False


class ChurnPayload(_Model):
    """The subscriber left: the label the model learns from."""

    kind: Literal["port_out", "cancellation"]
    competitor: Label | None = Field(default=None, max_length=64)


class ReactivationPayload(_Model):
    """A churned subscriber came back."""

    channel: Label | None = Field(default=None, max_length=64)


# --- envelopes ----------------------------------------------------------------


class _Envelope(_Model):
    event_id: uuid.UUID = Field(description="Set by the producer; the idempotency key.")
    subscriber_id: SubscriberId
    occurred_at: Instant = Field(
        description="When it happened (timezone-aware); at most 1 hour in the future."
    )
    source: Label = Field(default="billing", min_length=1, max_length=64)
    schema_version: Literal[1] = 1


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
    "churn": ChurnEvent,
    "reactivation": ReactivationEvent,
}

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(data: bytes | str | dict[str, Any], *, check_clock: bool = True) -> Event:
    """Parse and validate one event from JSON bytes/text or a decoded dict.

    Raises ``pydantic.ValidationError`` on anything that is not a valid event.
    ``check_clock`` also refuses an ``occurred_at`` more than ``MAX_FUTURE_SKEW``
    ahead of our clock: ingest checks it on arrival; consumers of events that
    ingest already accepted skip it (it is a third of their parsing time).
    """
    event = (
        EVENT_ADAPTER.validate_python(data)
        if isinstance(data, dict)
        else EVENT_ADAPTER.validate_json(data)
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


# --- messages between services ------------------------------------------------


class ScoreReason(_Model):
    """One reason behind a risk score: a stable code, its text, and its weight."""

    code: str = Field(max_length=64, description="Stable, e.g. COMPETITOR_CALLS_UP.")
    text_en: str
    text_zh: str
    contribution: float = Field(description="Log-odds this reason adds to the score.")


class RiskScore(_Model):
    """Published by scoring on the scores topic when a subscriber's score moved.

    At most one per subscriber per handled batch, and only when the band changed
    or the score moved at least SCORING_PUBLISH_MIN_DELTA since the last one.
    """

    message_type: Literal["risk_score"] = "risk_score"
    score_id: uuid.UUID = Field(description="Deterministic: derived from the triggering event.")
    subscriber_id: SubscriberId
    score: float = Field(ge=0, le=1)
    previous_score: float | None = Field(default=None, ge=0, le=1)
    band: Literal["high", "medium", "low"]
    model_version: str
    reasons: list[ScoreReason] = Field(default_factory=list, max_length=10)
    cause_event_id: uuid.UUID
    event_time: AwareDatetime
    scored_at: AwareDatetime


class TaskKind(StrEnum):
    """What an outreach task is for."""

    PRE_SUSPENSION_REMINDER = "pre_suspension_reminder"
    RETENTION = "retention"
    WIN_BACK = "win_back"
    CARE = "care"


class OutreachTask(_Model):
    """Published by alerting on the tasks topic; outreach stores and works it."""

    message_type: Literal["outreach_task"] = "outreach_task"
    task_id: uuid.UUID = Field(
        description="Deterministic: same rule, subscriber and cause, same id."
    )
    kind: TaskKind
    channel: Channel
    rule: str | None = Field(
        default=None, max_length=64, description="The alerting rule that made it."
    )
    subscriber_id: SubscriberId
    tier: Tier = Tier.STANDARD
    monthly_value: Money | None = None
    phone: PhoneNumber | None = None
    language: str = Field(default="en", pattern=r"^[a-z]{2}$")
    account_manager_id: str | None = Field(default=None, max_length=64)
    queue: str | None = Field(
        default=None,
        max_length=80,
        description="Call queue: 'am:<account manager id>' or a shared queue such as 'general'.",
    )
    template: str | None = Field(
        default=None, max_length=64, description="SMS template name; unset means the kind's."
    )
    marketing: bool = Field(
        default=False,
        description="A marketing message (offers): opt-out, quiet hours and caps apply.",
    )
    priority: float = Field(default=50, ge=0, description="Higher is more urgent.")
    risk: float | None = Field(default=None, ge=0, le=1, description="Churn risk when it fired.")
    not_before: AwareDatetime | None = Field(default=None, description="Do not act before this.")
    due_at: AwareDatetime | None = Field(default=None, description="Act before this time.")
    reasons: list[str] = Field(default_factory=list, max_length=10)
    reason_codes: list[str] = Field(default_factory=list, max_length=10)
    params: dict[str, str] = Field(default_factory=dict, description="Template variables.")
    cause_event_id: uuid.UUID
    created_at: AwareDatetime


class TaskAction(StrEnum):
    """What a task update asks outreach to do."""

    CANCEL = "cancel"
    CLOSE = "close"
    REROUTE = "reroute"


class UpdateCause(StrEnum):
    """Why alerting changes a task: stable codes for reports (the KPI needs ``paid``)."""

    PAID = "paid"
    CHURNED = "churned"
    SUPERSEDED = "superseded"
    REACTIVATED = "reactivated"
    CAPACITY = "capacity"
    OTHER = "other"


class TaskUpdate(_Model):
    """Published by alerting on the tasks topic to change a task it published before.

    ``cancel`` stops a task not yet done (a payment arrived before the
    suspension, the subscriber churned); ``close`` records an outcome (a
    reactivation wins a subscriber back) and stops the task if it was not done
    yet; ``reroute`` moves a queued call to another queue (a manager's day is
    full). Keyed by subscriber like the task, so it always follows the task.
    """

    message_type: Literal["task_update"] = "task_update"
    update_id: uuid.UUID = Field(description="Deterministic: same cause, same id.")
    task_id: uuid.UUID
    subscriber_id: SubscriberId
    action: TaskAction
    reason: str = Field(max_length=200)
    cause: UpdateCause = Field(
        default=UpdateCause.OTHER, description="Why, as a stable code (paid, churned, ...)."
    )
    outcome: str | None = Field(
        default=None, max_length=32, description="For close: e.g. won_back."
    )
    queue: str | None = Field(
        default=None, max_length=80, description="For reroute: the new queue."
    )
    at: AwareDatetime


class CallOutcome(StrEnum):
    """What an account manager's call achieved."""

    RETAINED = "retained"
    OFFER_ACCEPTED = "offer_accepted"
    NOT_INTERESTED = "not_interested"
    UNREACHABLE = "unreachable"
    CALLBACK = "callback"


class TaskOutcome(_Model):
    """Published by outreach on the outcomes topic: a task's final state or a call's outcome.

    One per final state (``delivered``, ``failed``, ``cancelled``, ``expired``,
    ``completed``) and one per recorded call outcome; ``outcome_id`` is
    derived from the task, the status and the outcome, so a republished
    message is recognisable.
    """

    message_type: Literal["task_outcome"] = "task_outcome"
    outcome_id: uuid.UUID = Field(description="Deterministic: task, status and outcome.")
    task_id: uuid.UUID
    subscriber_id: SubscriberId
    kind: TaskKind
    channel: Channel
    rule: str | None = Field(default=None, max_length=64)
    tier: Tier = Tier.STANDARD
    status: str = Field(max_length=16, description="The task's state after the change.")
    outcome: str | None = Field(
        default=None, max_length=32, description="Call outcome, or a close's (won_back)."
    )
    reason: str | None = Field(default=None, max_length=500)
    at: AwareDatetime


TaskMessage = Annotated[OutreachTask | TaskUpdate, Field(discriminator="message_type")]
"""Anything on the tasks topic, discriminated on ``message_type``."""

TASK_MESSAGE_ADAPTER: TypeAdapter[OutreachTask | TaskUpdate] = TypeAdapter(TaskMessage)


TASK_NAMESPACE = uuid.UUID("5b0e7a52-6f0e-4c55-9d1c-2f8a3c1e9b11")


def derive_id(*parts: object) -> uuid.UUID:
    """A deterministic UUID (v5) from the parts: same cause, same id, on every replay."""
    return uuid.uuid5(TASK_NAMESPACE, "|".join(str(p) for p in parts))


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
