"""Escalation's database work: escalating VIP reminder calls not done in time, fallback SMS.

``services.outreach.escalation`` explains the rules and runs the passes
(``Escalator``); each pass calls ``escalate_due_calls`` and, when configured,
``make_fallback_sms``, in one transaction of its own.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach.schemas import CallStatus, SmsStatus
from services.outreach.service.kpis import (
    NOT_SUSPENDED_CAUSES,
    VIP_TIERS,
    reminded_before_suspension,
)
from services.outreach.service.tasks import record_transitions, store_tasks
from services.outreach.tables import tasks
from shared.events import Channel, OutreachTask, TaskKind, Tier, derive_id

log = logging.getLogger(__name__)

ESCALATION = "escalation"
"""Actor of the audit rows escalation writes, and ``created_by`` of its fallback SMS."""

ESCALATION_BOOST = 1_000_000.0
"""Added to an escalated call's priority: above any other call (reminders start at 10,000)."""

SMS_ON_ITS_WAY = (SmsStatus.PENDING, SmsStatus.SCHEDULED, SmsStatus.SENDING, SmsStatus.SENT)
"""SMS states that may still reach the subscriber: no fallback SMS is made beside one."""

FALLBACK_TEMPLATE = "pre_suspension_reminder"
"""The template of the fallback SMS (the reminder SMS alerting's rule sends)."""


def fallback_sms_id(call_task_id: uuid.UUID) -> uuid.UUID:
    """The id of the fallback SMS of an escalated call: one call, one SMS, on every pass."""
    return derive_id("escalation_sms", call_task_id)


def _reached_or_ended() -> Any:
    """EXISTS: a reminder task of the candidate's notice reached the subscriber, or was ended.

    Mirrors ``reminder_counts`` (reached before the suspension) and
    its ``NOT_SUSPENDED_CAUSES`` (paid, churned).
    """
    other = tasks.alias("other")
    o = other.c
    reached_before = reminded_before_suspension(o)
    return exists().where(
        o.subscriber_id == tasks.c.subscriber_id,
        o.cause_event_id == tasks.c.cause_event_id,
        o.kind == TaskKind.PRE_SUSPENSION_REMINDER.value,
        or_(reached_before, o.end_cause.in_(NOT_SUSPENDED_CAUSES)),
    )


async def escalate_due_calls(
    conn: AsyncConnection, *, now: datetime, margin: timedelta
) -> list[dict[str, Any]]:
    """Escalate the VIP reminder calls due for it at ``now``; return their rows (after).

    Due: the notice's suspension is within ``margin`` ahead (``suspension_at -
    margin <= now < suspension_at``), the call is not escalated yet, not in
    progress, and no task of its notice reached the subscriber or was ended
    by a payment or churn. Each gets ``escalated_at``, the priority boost and
    an audit row, in the caller's transaction.
    """
    t = tasks.c
    candidate = (
        select(t.task_id)
        .where(
            t.kind == TaskKind.PRE_SUSPENSION_REMINDER.value,
            t.channel == Channel.CALL.value,
            t.tier.in_(VIP_TIERS),
            t.escalated_at.is_(None),
            t.status != CallStatus.IN_PROGRESS.value,
            t.suspension_at > now,
            t.suspension_at <= now + margin,
            ~_reached_or_ended(),
        )
        .with_for_update(skip_locked=True, of=tasks)
        .cte("candidate")
        .prefix_with("MATERIALIZED")
    )
    rows = await conn.execute(
        update(tasks)
        .where(t.task_id == candidate.c.task_id, t.escalated_at.is_(None))
        .values(escalated_at=now, priority=t.priority + ESCALATION_BOOST, updated_at=now)
        .returning(*tasks.c)
    )
    escalated = [dict(r._mapping) for r in rows]
    await record_transitions(
        conn,
        rows=[
            (
                row["task_id"],
                row["status"],
                row["status"],
                ESCALATION,
                "VIP reminder not done "
                f"{margin.total_seconds() / 3600:g} h before the suspension at "
                f"{row['suspension_at'].isoformat()}: escalated to the team lead, "
                "moved to the top of the queue",
            )
            for row in escalated
        ],
        now=now,
    )
    return escalated


def _fallback_task(call: Mapping[str, Any], now: datetime) -> OutreachTask:
    """The reminder SMS of an escalated call's notice, due by the suspension."""
    return OutreachTask(
        task_id=fallback_sms_id(call["task_id"]),
        kind=TaskKind.PRE_SUSPENSION_REMINDER,
        channel=Channel.SMS,
        rule=call["rule"],
        subscriber_id=call["subscriber_id"],
        tier=Tier(call["tier"]),
        monthly_value=call["monthly_value"],
        phone=call["phone"],
        language=call["language"],
        account_manager_id=call["account_manager_id"],
        template=FALLBACK_TEMPLATE,
        priority=call["priority"],
        due_at=call["suspension_at"],
        reasons=list(call["reasons"]),
        reason_codes=list(call["reason_codes"]),
        params=dict(call["params"]),
        # The notice's own cause: the KPI counts the SMS with the notice's other tasks.
        cause_event_id=call["cause_event_id"],
        created_at=now,
    )


async def make_fallback_sms(
    conn: AsyncConnection, *, calls: list[dict[str, Any]], now: datetime
) -> list[uuid.UUID]:
    """A reminder SMS for each escalated call whose notice has none on its way; their ids.

    Idempotent: the SMS's id is derived from the call's (``fallback_sms_id``).
    A call without a phone number gets none.
    """
    wanted = []
    for call in calls:
        if call["phone"] is None:
            log.warning(
                "escalated reminder has no phone number: no fallback SMS",
                extra={"task_id": str(call["task_id"])},
            )
            continue
        on_its_way = await conn.scalar(
            select(
                exists().where(
                    tasks.c.subscriber_id == call["subscriber_id"],
                    tasks.c.cause_event_id == call["cause_event_id"],
                    tasks.c.kind == TaskKind.PRE_SUSPENSION_REMINDER.value,
                    tasks.c.channel == Channel.SMS.value,
                    tasks.c.status.in_(SMS_ON_ITS_WAY),
                )
            )
        )
        if not on_its_way:
            wanted.append(_fallback_task(call, now))
    stored = await store_tasks(conn, new_tasks=wanted, now=now, created_by=ESCALATION)
    return [task.task_id for task in stored]
