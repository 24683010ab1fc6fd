"""A subscriber's recent bills, payments, stop-notices and complaints, for the subscriber card.

Alerting sees every billing, payment, stop-notice and complaint event already
(usage records are skipped before parsing), so it keeps the newest
``ACTIVITY_KEPT`` of each kind in ``alerting.subscriber_facts.activity``:
a bounded JSON list per kind, oldest first, written with the other facts in
the consumer's transaction. Outreach's workbench reads them through
``GET /v1/subscribers/{subscriber_id}/activity`` (``ActivityOut``, newest
first).

Items are plain JSON: ``event_id`` and ``at`` (the event's ``occurred_at``,
ISO 8601) and the fields a person reads; amounts as decimal strings.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.alerting.tables import subscriber_facts, subscribers
from shared.events import BillingEvent, ComplaintEvent, Event, PaymentEvent, StopNoticeEvent

ACTIVITY_KEPT = 10
"""Items kept per kind and subscriber (the newest by event time)."""

Kind = Literal["bills", "payments", "stop_notices", "complaints"]
KINDS: tuple[Kind, ...] = ("bills", "payments", "stop_notices", "complaints")

Item = dict[str, Any]
"""One remembered event: JSON values only (strings, booleans, null)."""

Activity = dict[str, list[Item]]
"""Per kind, the remembered items, oldest first (as stored)."""


def activity_item(message: object) -> tuple[Kind, Item] | None:
    """The kind and item an event adds to the activity; None for other messages."""
    if not isinstance(message, BillingEvent | PaymentEvent | StopNoticeEvent | ComplaintEvent):
        return None
    base: Item = {"event_id": str(message.event_id), "at": message.occurred_at.isoformat()}
    if isinstance(message, BillingEvent):
        b = message.payload
        return "bills", base | {
            "period": str(b.period),
            "amount_due": str(b.amount_due),
            "amount_paid": str(b.amount_paid),
            "plan_id": b.plan_id,
            "plan_change": b.plan_change,
            "due_date": b.due_date.isoformat() if b.due_date else None,
        }
    if isinstance(message, PaymentEvent):
        p = message.payload
        return "payments", base | {
            "amount": str(p.amount),
            "method": p.method,
            "period": str(p.period) if p.period else None,
            "late": p.late,
        }
    if isinstance(message, StopNoticeEvent):
        s = message.payload
        return "stop_notices", base | {
            "reason": s.reason,
            "suspension_at": s.suspension_at.isoformat(),
            "amount_to_pay": str(s.amount_to_pay),
        }
    c = message.payload
    return "complaints", base | {
        "category": c.category,
        "severity": c.severity,
        "resolved": c.resolved,
    }


def remember(activity: Activity, kind: Kind, item: Item, *, kept: int = ACTIVITY_KEPT) -> Activity:
    """``activity`` with ``item`` added to its kind: the newest ``kept``, oldest first.

    An event seen again (same ``event_id``) replaces its item; events that
    arrive out of order land in event-time order.
    """
    items = [i for i in activity.get(kind, []) if i.get("event_id") != item["event_id"]]
    items.append(item)
    items.sort(key=lambda i: datetime.fromisoformat(i["at"]))
    return {**activity, kind: items[-kept:]}


def remember_event(activity: Activity, message: Event | object) -> Activity | None:
    """``activity`` with the event remembered, or None if the event adds nothing."""
    noted = activity_item(message)
    return None if noted is None else remember(activity, *noted)


# --- the API (GET /v1/subscribers/{subscriber_id}/activity) ---------------------------


class BillItem(BaseModel):
    """A monthly bill."""

    event_id: uuid.UUID
    at: datetime = Field(description="When the bill was issued (the event's occurred_at).")
    period: str = Field(description="The billing period, YYYY-MM.")
    amount_due: Decimal
    amount_paid: Decimal
    plan_id: str
    plan_change: str = Field(description="none, upgrade or downgrade.")
    due_date: datetime | None = None


class PaymentItem(BaseModel):
    """A payment received."""

    event_id: uuid.UUID
    at: datetime
    amount: Decimal
    method: str
    period: str | None = None
    late: bool = False


class StopNoticeItem(BaseModel):
    """A scheduled suspension for unpaid bills."""

    event_id: uuid.UUID
    at: datetime = Field(description="When the notice was issued.")
    reason: str = Field(description="arrears, credit_limit, fraud or other.")
    suspension_at: datetime
    amount_to_pay: Decimal


class ComplaintItem(BaseModel):
    """A complaint the subscriber raised."""

    event_id: uuid.UUID
    at: datetime
    category: str = Field(description="network, billing, service, device or other.")
    severity: str = Field(description="low, medium or high.")
    resolved: bool


class ActivityOut(BaseModel):
    """A subscriber's recent bills, payments, stop-notices and complaints, newest first."""

    subscriber_id: str
    kept: int = Field(description="At most this many of each kind are kept (the newest).")
    bills: list[BillItem]
    payments: list[PaymentItem]
    stop_notices: list[StopNoticeItem]
    complaints: list[ComplaintItem]


def activity_out(subscriber_id: str, activity: Mapping[str, list[Item]] | None) -> ActivityOut:
    """The API body for stored activity (None: nothing remembered yet), newest first."""
    stored = activity or {}
    return ActivityOut.model_validate(
        {
            "subscriber_id": subscriber_id,
            "kept": ACTIVITY_KEPT,
            **{kind: list(reversed(stored.get(kind, []))) for kind in KINDS},
        }
    )


async def load_activity(
    conn: AsyncConnection, *, subscriber_id: str
) -> tuple[bool, Activity | None]:
    """Whether alerting knows the subscriber (a profile or facts), and their stored activity."""
    activity = (
        await conn.execute(
            select(subscriber_facts.c.activity).where(
                subscriber_facts.c.subscriber_id == subscriber_id
            )
        )
    ).first()
    if activity is not None:
        return True, activity.activity
    known = await conn.scalar(
        select(subscribers.c.subscriber_id).where(subscribers.c.subscriber_id == subscriber_id)
    )
    return known is not None, None
