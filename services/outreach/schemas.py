"""Outreach API bodies, and the task states."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from shared.events import CallOutcome, Channel, Money, PhoneNumber, SubscriberId, TaskKind, Tier


class SmsStatus(StrEnum):
    """States of an SMS task."""

    PENDING = "pending"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    # Final: the provider could not tell us its fate by SMS_FINAL_STATE_DEADLINE_S.
    UNKNOWN = "unknown"


class CallStatus(StrEnum):
    """States of a call task."""

    QUEUED = "queued"
    ASSIGNED = "assigned"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


# --- field types -------------------------------------------------------------------
# Everything a client sends ends up in PostgreSQL, which refuses NUL characters
# and text that is not valid UTF-8 (a lone surrogate is valid JSON but not
# UTF-8). The types below refuse both with a 422, instead of a database error.


def _storable(value: str) -> str:
    """Refuse text PostgreSQL cannot store."""
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


def _utc(value: datetime) -> datetime:
    """An aware time converted to UTC; one the conversion cannot represent is refused."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("time is out of range") from None


Instant = Annotated[AwareDatetime, AfterValidator(_utc)]
"""A point in time with its offset (ISO 8601, e.g. ``2026-11-25T14:00:00+08:00``)."""

Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$"),
]
"""Who did something: an agent or account manager id, a system's name (``crm``)."""

QueueName = Annotated[
    str, StringConstraints(min_length=1, max_length=80, pattern=r"^[^\x00-\x1f\x7f]+$")
]
"""A call queue: ``am:<account manager id>`` or a shared queue such as ``general``."""

ReasonCode = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9_]{1,64}$")]
"""A stable reason code, e.g. ``COMPETITOR_CALLS_UP``."""

Storable = Annotated[str, AfterValidator(_storable)]
"""Text PostgreSQL can store (no NUL, valid Unicode), of any length."""

Text = Annotated[Storable, StringConstraints(max_length=500)]
"""Free text, at most 500 characters."""

ParamName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
"""A template variable's name."""


class _Body(BaseModel):
    """Request bodies: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


# --- tasks ---------------------------------------------------------------------------


class Transition(BaseModel):
    """One audited state change."""

    from_status: str | None
    to_status: str
    actor: str = Field(description="Who: alerting, dispatcher, queue_keeper, an agent, a client.")
    reason: str | None
    at: datetime


class TaskOut(BaseModel):
    """An outreach task as other systems see it (phone number masked)."""

    task_id: uuid.UUID
    kind: str
    channel: str
    status: str
    subscriber_id: str
    tier: str
    phone_masked: str | None = Field(description="Last digits only; the API never returns it.")
    account_manager_id: str | None
    rule: str | None = Field(description="The alerting rule that made the task.")
    queue: str | None = Field(
        description="Call queue: 'am:<account manager id>' or shared; null counts as general."
    )
    template: str | None = Field(description="SMS template; null means the kind's.")
    marketing: bool
    monthly_value: Decimal | None
    priority: float
    risk: float | None = Field(description="Churn risk when the task was made.")
    not_before: datetime | None = Field(description="Nothing is done before this time.")
    due_at: datetime | None
    reasons: list[str]
    reason_codes: list[str]
    outcome: str | None = Field(
        description="A call's outcome (retained, callback, ...), or a close's (won_back)."
    )
    attempts: int
    last_error: str | None
    cause_event_id: uuid.UUID
    created_by: str = Field(description="'alerting', or the client that made it by hand.")
    assigned_to: str | None = Field(description="Calls: the agent who claimed it.")
    assigned_at: datetime | None = Field(description="Calls: when it was claimed.")
    callback_at: datetime | None = Field(
        description="Calls: when the subscriber asked to be called back."
    )
    sent_at: datetime | None = None
    delivered_at: datetime | None = None
    finished_at: datetime | None = Field(description="When it reached a final state.")
    created_at: datetime
    updated_at: datetime


class TaskDetail(TaskOut):
    """A task with its audit trail."""

    transitions: list[Transition]


class TaskPage(BaseModel):
    """One page of tasks, newest first; pass ``next_cursor`` back as ``cursor``."""

    items: list[TaskOut]
    next_cursor: str | None


class TaskCreate(_Body):
    """A task made by hand (``POST /v1/tasks``); idempotent on the ``Idempotency-Key`` header."""

    created_by: Name = Field(description="Who makes it (a user or a system); kept on the task.")
    kind: TaskKind
    channel: Channel
    subscriber_id: SubscriberId
    tier: Tier = Tier.STANDARD
    monthly_value: Money | None = None
    phone: PhoneNumber | None = Field(default=None, description="E.164; required for an SMS.")
    language: str = Field(default="en", pattern=r"^[a-z]{2}$")
    account_manager_id: Name | None = None
    queue: QueueName | None = Field(
        default=None, description="Calls only: 'am:<id>' or a shared queue; null is general."
    )
    template: str | None = Field(
        default=None,
        pattern=r"^[a-z][a-z0-9_]{0,63}$",
        description="SMS template name; null means the kind's.",
    )
    marketing: bool = Field(
        default=False, description="An offer: opt-out, quiet hours and the frequency cap apply."
    )
    priority: float = Field(
        default=50, ge=0, le=1e9, allow_inf_nan=False, description="Higher is more urgent."
    )
    risk: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    not_before: Instant | None = Field(default=None, description="Do nothing before this.")
    due_at: Instant | None = Field(
        default=None, description="Act before this; after it the task expires."
    )
    reasons: list[Text] = Field(default_factory=list, max_length=10)
    reason_codes: list[ReasonCode] = Field(default_factory=list, max_length=10)
    params: dict[ParamName, Text] = Field(
        default_factory=dict, max_length=20, description="SMS template variables."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.channel is Channel.SMS and self.phone is None:
            raise ValueError("an SMS task needs a phone number")
        if self.channel is Channel.SMS and self.queue is not None:
            raise ValueError("only call tasks have a queue")
        if self.not_before and self.due_at and self.not_before >= self.due_at:
            raise ValueError("not_before must be before due_at")
        return self


class CancelRequest(_Body):
    """Who cancels a task, and why (both go to the audit trail)."""

    actor: Name
    reason: Annotated[
        str, StringConstraints(min_length=1, max_length=200), AfterValidator(_storable)
    ]


# --- the call queue -----------------------------------------------------------------


class AgentRequest(_Body):
    """The agent (account manager or call-centre agent) who acts."""

    agent_id: Name


class OutcomeRequest(_Body):
    """The outcome of a call; ``callback`` needs ``callback_at``."""

    agent_id: Name
    outcome: CallOutcome
    callback_at: Instant | None = Field(
        default=None,
        description="For callback only: when to call again (in the future, before the "
        "task's due_at, at most 90 days ahead).",
    )
    note: Text | None = Field(default=None, description="Kept in the audit trail.")
    offer: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="For offer_accepted: which offer (kept in the audit trail and published).",
    )

    @model_validator(mode="after")
    def _callback_time(self) -> Self:
        if self.outcome is CallOutcome.CALLBACK and self.callback_at is None:
            raise ValueError("a callback needs callback_at")
        if self.outcome is not CallOutcome.CALLBACK and self.callback_at is not None:
            raise ValueError("callback_at is only for the callback outcome")
        if self.offer is not None and self.outcome is not CallOutcome.OFFER_ACCEPTED:
            raise ValueError("offer is only for the offer_accepted outcome")
        return self


class ScriptOut(BaseModel):
    """A suggested script for one or more of the call's reasons."""

    reason_codes: list[str] = Field(description="The call's reason codes this script answers.")
    topic: str
    title: str
    text: str


class ClaimedTask(TaskOut):
    """A claimed call, with what the agent needs for it."""

    scripts: list[ScriptOut] = Field(description="Suggested scripts, in the reasons' order.")


# --- contact policy: receipts, replies, the do-not-contact list ------------------------


class ReceiptIn(BaseModel):
    """A delivery receipt from the provider."""

    model_config = ConfigDict(extra="ignore")  # providers add fields of their own

    message_id: Storable = Field(min_length=1, max_length=128, description="The provider's id.")
    reference: Storable | None = Field(
        default=None, max_length=128, description="What we sent as reference: the task id."
    )
    status: Literal["delivered", "failed"]
    error: Text | None = Field(default=None, max_length=500, description="Why it failed.")
    at: AwareDatetime | None = Field(default=None, description="When it was delivered or failed.")


class ReceiptOut(BaseModel):
    """What a receipt did to its task."""

    task_id: uuid.UUID
    status: str = Field(description="The task's state after the receipt.")
    changed: bool = Field(description="False for a repeated or late receipt.")


class InboundIn(BaseModel):
    """An SMS a subscriber sent back to us."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    sender: PhoneNumber = Field(alias="from", description="The subscriber's number (E.164).")
    text: Storable = Field(max_length=1600)
    message_id: Storable | None = Field(default=None, max_length=128)
    at: AwareDatetime | None = None


class InboundOut(BaseModel):
    """What an inbound reply did."""

    action: Literal["opted_out", "ignored", "unknown_sender"] = Field(
        description="opted_out: a T/TD reply; ignored: any other text; "
        "unknown_sender: no task ever carried this number."
    )
    subscribers: int = Field(description="Subscribers opted out (those with this number).")


class OptOutIn(BaseModel):
    """Why a subscriber is put on the do-not-contact list (optional)."""

    reason: Text | None = Field(default=None, max_length=500)


class ContactOut(BaseModel):
    """A subscriber's contact status."""

    subscriber_id: str
    opted_out: bool = Field(description="On the do-not-contact list: no marketing SMS.")
    source: str | None = Field(description="api, sms_reply or call; null if not opted out.")
    reason: str | None
    opted_out_at: datetime | None
