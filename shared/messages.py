"""Messages between the services: risk scores, outreach tasks, task updates and outcomes.

Scoring publishes ``RiskScore``; alerting publishes ``OutreachTask`` and
``TaskUpdate``; outreach publishes ``TaskOutcome``. ``shared.events``
re-exports every name here, so code imports them from there.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, TypeAdapter

from shared.contract_types import Channel, ContractModel, Money, PhoneNumber, SubscriberId, Tier
from shared.crypto import SealedPhone


class ScoreReason(ContractModel):
    """One reason behind a risk score: a stable code, its text, and its weight."""

    code: str = Field(max_length=64, description="Stable, e.g. COMPETITOR_CALLS_UP.")
    text_en: str
    text_zh: str
    contribution: float = Field(description="Log-odds this reason adds to the score.")


class RiskScore(ContractModel):
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


class OutreachTask(ContractModel):
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
    phone: PhoneNumber | SealedPhone | None = Field(
        default=None,
        description="Sealed ('v2:<key id>:...', shared.crypto) as alerting publishes it; "
        "only outreach opens it. A plain E.164 number is still read (older records).",
    )
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


class TaskUpdate(ContractModel):
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
    OFFER_ACCEPTED = "offer_accepted"  # which offer: in the audit reason
    NOT_INTERESTED = "not_interested"
    UNREACHABLE = "unreachable"  # not reached: the only outcome that is no contact
    CALLBACK = "callback"
    REACHED = "reached"  # spoke to the subscriber (a reminder given), nothing more
    COMPLAINT_RAISED = "complaint_raised"  # the subscriber complained on the call
    DO_NOT_CONTACT = "do_not_contact"  # asked not to be contacted: put on the list too


class TaskOutcome(ContractModel):
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
