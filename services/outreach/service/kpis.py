"""The KPIs' queries: reminder before suspension and win-back, per tier.

``services.outreach.feedback`` turns the counts into the KPI report (``GET
/v1/kpis``, the gauges); the escalation and the team page reuse the
predicates and the per-notice / per-offer selects, so all of them agree on
what "reminded" and "reached" mean (docs/operations.md, "Outcomes and KPIs").
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.base import ReadOnlyColumnCollection

from services.outreach.schemas import CallStatus, SmsStatus
from services.outreach.tables import tasks
from shared.events import CallOutcome, Channel, TaskKind, Tier, UpdateCause

VIP_TIERS: tuple[str, ...] = tuple(t.value for t in Tier if t.is_vip)
"""The tiers the reminder-before-suspension KPI covers."""
ALL_TIERS: tuple[str, ...] = tuple(t.value for t in Tier)
"""Every tier: the win-back KPI covers them all."""

# A reminder for a subscriber who paid (or left) before the suspension: not suspended.
NOT_SUSPENDED_CAUSES = (UpdateCause.PAID.value, UpdateCause.CHURNED.value)
WON_BACK = "won_back"
"""The outcome alerting's ``close`` records when a reactivation ends a win-back offer."""


Counts = dict[str, tuple[int, int]]
"""Per tier: ``(numerator, denominator)``."""


def reminded_before_suspension(t: ReadOnlyColumnCollection[str, Any]) -> ColumnElement[bool]:
    """A reminder task that reached the subscriber before the suspension.

    An SMS delivered, or a call completed with an outcome other than
    ``unreachable``, before ``suspension_at``. ``t``: the tasks table's columns
    or an alias's. The KPI, the escalation and the team page all use it.
    """
    return or_(
        and_(t.channel == Channel.SMS.value, t.delivered_at < t.suspension_at),
        and_(
            t.channel == Channel.CALL.value,
            t.status == CallStatus.COMPLETED.value,
            t.outcome.is_distinct_from(CallOutcome.UNREACHABLE.value),
            t.finished_at < t.suspension_at,
        ),
    )


def offer_reached(t: ReadOnlyColumnCollection[str, Any]) -> ColumnElement[bool]:
    """A win-back task that reached the subscriber.

    An SMS sent or delivered, or a call completed with an outcome other than
    ``unreachable``. ``t``: the tasks table's columns or an alias's.
    """
    return or_(
        and_(
            t.channel == Channel.SMS.value,
            t.status.in_((SmsStatus.SENT.value, SmsStatus.DELIVERED.value)),
        ),
        and_(
            t.channel == Channel.CALL.value,
            t.status == CallStatus.COMPLETED.value,
            t.outcome.is_distinct_from(CallOutcome.UNREACHABLE.value),
        ),
    )


def reminder_notices(*, start: datetime, end: datetime) -> Select[Any]:
    """VIP stop-notices whose suspension falls in ``[start, end)``, one row per notice.

    A notice is its ``pre_suspension_reminder`` tasks (subscriber, cause event):
    ``subscriber_id``, ``manager``, ``tier`` (one notice's tasks were made
    together, from one profile), ``suspension_at``, ``escalated_at``,
    ``reminded`` (one of its tasks reached the subscriber before the
    suspension) and ``not_suspended`` (one was ended by a payment or a churn).
    Callers narrow it with ``.where`` on the tasks' columns.
    """
    t = tasks.c
    return (
        select(
            t.subscriber_id,
            func.min(t.account_manager_id).label("manager"),
            func.min(t.tier).label("tier"),
            func.min(t.suspension_at).label("suspension_at"),
            func.max(t.escalated_at).label("escalated_at"),
            func.coalesce(func.bool_or(reminded_before_suspension(t)), False).label("reminded"),
            func.coalesce(func.bool_or(t.end_cause.in_(NOT_SUSPENDED_CAUSES)), False).label(
                "not_suspended"
            ),
        )
        .where(
            t.kind == TaskKind.PRE_SUSPENSION_REMINDER.value,
            t.tier.in_(VIP_TIERS),
            t.suspension_at >= start,
            t.suspension_at < end,
        )
        .group_by(t.subscriber_id, t.cause_event_id)
    )


async def reminder_counts(
    conn: AsyncConnection, *, start: datetime, end: datetime, now: datetime
) -> Counts:
    """Reminder before suspension, per VIP tier: ``(reminded, suspended)``.

    There is no suspension event in the contract, so "suspended" is inferred
    from the reminder tasks: one stop-notice (subscriber, cause event) counts
    when its ``pre_suspension_reminder`` tasks are for a VIP tier, its
    ``suspension_at`` is in ``[start, end)`` and not after ``now`` (a
    suspension still ahead has not happened yet), and no task of it was ended
    by a payment or a churn (``end_cause``). It is reminded when one of its
    tasks is an SMS delivered before the suspension, or a call completed
    before it with an outcome other than ``unreachable``.
    """
    notices = reminder_notices(start=start, end=end).where(tasks.c.suspension_at <= now).subquery()
    rows = await conn.execute(
        select(
            notices.c.tier,
            func.count().filter(notices.c.reminded),
            func.count(),
        )
        .where(~notices.c.not_suspended)
        .group_by(notices.c.tier)
    )
    return {tier: (int(num), int(den)) for tier, num, den in rows}


def win_back_offers(*, start: datetime, end: datetime) -> Select[Any]:
    """Win-back offers made in ``[start, end)``, one row per offer.

    An offer is one churn's win-back tasks (subscriber, cause event):
    ``manager``, ``tier``, ``reached`` (one of its tasks reached the subscriber)
    and ``won`` (one has the outcome ``won_back``). Callers narrow it with
    ``.where`` on the tasks' columns.
    """
    t = tasks.c
    return (
        select(
            func.min(t.account_manager_id).label("manager"),
            func.min(t.tier).label("tier"),
            func.coalesce(func.bool_or(offer_reached(t)), False).label("reached"),
            func.coalesce(func.bool_or(t.outcome == WON_BACK), False).label("won"),
        )
        .where(t.kind == TaskKind.WIN_BACK.value, t.created_at >= start, t.created_at < end)
        .group_by(t.subscriber_id, t.cause_event_id)
    )


async def win_back_counts(conn: AsyncConnection, *, start: datetime, end: datetime) -> Counts:
    """Win-back, per tier: ``(won back, offers that reached the subscriber)``.

    An offer is one churn's win-back tasks (subscriber, cause event) created in
    ``[start, end)``. It reached the subscriber when one of its tasks is an SMS
    ``sent`` or ``delivered``, or a call ``completed`` with an outcome other
    than ``unreachable``. It won them back when a task of it has the outcome
    ``won_back`` (alerting closes the offer when the subscriber reactivates).
    An offer that never reached the subscriber counts in neither: a
    reactivation before the offer went out is not the offer's doing.
    """
    offers = win_back_offers(start=start, end=end).subquery()
    rows = await conn.execute(
        select(offers.c.tier, func.count().filter(offers.c.won), func.count())
        .where(offers.c.reached)
        .group_by(offers.c.tier)
    )
    return {tier: (int(num), int(den)) for tier, num, den in rows}
