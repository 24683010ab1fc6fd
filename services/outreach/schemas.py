"""Outreach API bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, Field


class SmsStatus(StrEnum):
    """States of an SMS task."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class CallStatus(StrEnum):
    """States of a call task."""

    QUEUED = "queued"
    ASSIGNED = "assigned"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class Transition(BaseModel):
    """One audited state change."""

    from_status: str | None
    to_status: str
    actor: str
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
    queue: str | None = Field(description="Call queue: 'am:<account manager id>' or shared.")
    template: str | None = Field(description="SMS template; null means the kind's.")
    marketing: bool
    monthly_value: Decimal | None
    priority: float
    risk: float | None = Field(description="Churn risk when the task was made.")
    not_before: datetime | None = Field(description="Nothing is done before this time.")
    due_at: datetime | None
    reasons: list[str]
    reason_codes: list[str]
    outcome: str | None = Field(description="Recorded by a close update, e.g. won_back.")
    attempts: int
    last_error: str | None
    cause_event_id: uuid.UUID
    created_at: datetime
    updated_at: datetime


class TaskDetail(TaskOut):
    """A task with its audit trail."""

    transitions: list[Transition]


class TaskPage(BaseModel):
    """One page of tasks, newest first; pass ``next_cursor`` back as ``cursor``."""

    items: list[TaskOut]
    next_cursor: str | None
