"""Escalation: a VIP's pre-suspension reminder not done in time is never a silent miss.

Every VIP stop-notice gives a reminder SMS and a call from the account manager
(alerting's ``pre_suspension_reminder`` rule). When neither has reached the
subscriber ``OUTREACH_ESCALATION_MARGIN_S`` before the suspension, the call is
escalated, once per notice:

- ``tasks.escalated_at`` is set (the team lead's page lists escalated calls);
- an audit row (actor ``escalation``, status unchanged) says why;
- the call's priority is raised by ``ESCALATION_BOOST`` so it tops its queue;
- ``churnwatch_outreach_escalations_total{tier}`` counts it (rule
  ChurnwatchVipReminderEscalated);
- with ``OUTREACH_ESCALATION_SMS_FALLBACK``, a reminder SMS is made unless one
  of the notice is still on its way (pending, scheduled, sending, sent).

"Reached" is the KPI's definition (``feedback.reminder_counts``): an SMS
delivered, or a call completed with an outcome other than ``unreachable``,
before the suspension. A notice ended by a payment or a churn (``end_cause``)
is not escalated, nor is a call someone is on right now (``in_progress``: if it
ends unreached it is escalated on the next pass).

Exactly once, even with several replicas: the candidates are locked with
``FOR UPDATE SKIP LOCKED`` and updated in the statement that checks
``escalated_at IS NULL``; a replica that comes second skips them or finds them
escalated. Time is the service's clock (its routes' too: a stream clock in a
replay), so a replay judges the margin against the replayed day.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.outreach import metrics, service
from services.outreach.feedback import (
    NOT_SUSPENDED_CAUSES,
    VIP_TIERS,
    reminded_before_suspension,
)
from services.outreach.schemas import CallStatus, SmsStatus
from services.outreach.settings import OutreachSettings
from services.outreach.tables import tasks
from shared.clock import Clock
from shared.events import Channel, OutreachTask, TaskKind, Tier, derive_id
from shared.periodic import Periodic

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

    Mirrors ``feedback.reminder_counts`` (reached before the suspension) and
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
    await service.record_transitions(
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
    stored = await service.store_tasks(conn, new_tasks=wanted, now=now, created_by=ESCALATION)
    return [task.task_id for task in stored]


@dataclass(frozen=True, slots=True)
class EscalationPass:
    """What one escalation pass did."""

    escalated: list[uuid.UUID]
    """The call tasks escalated."""
    fallback_sms: list[uuid.UUID]
    """The fallback SMS tasks made."""


class Escalator:
    """Escalates VIP reminders not done in time, every ``OUTREACH_ESCALATION_INTERVAL_S``.

    ``wake_sms`` (the dispatcher's wake-up) is called after a pass made
    fallback SMS, so they go out at once rather than at the next dispatch.
    """

    def __init__(
        self,
        settings: OutreachSettings,
        engine: AsyncEngine,
        clock: Clock,
        *,
        wake_sms: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.wake_sms = wake_sms
        self._loop = Periodic(
            self._escalate,
            interval_s=lambda: self.settings.outreach_escalation_interval_s,
            log=log,
            failure="escalation pass failed; retrying",
        )
        self.passes = 0  # passes made (tests can wait on it)

    @property
    def margin(self) -> timedelta:
        """How long before the suspension an unreached VIP reminder escalates."""
        return timedelta(seconds=self.settings.outreach_escalation_margin_s)

    async def escalate_once(self, *, now: datetime | None = None) -> EscalationPass:
        """One pass in one transaction: escalate due calls, then make fallback SMS if on.

        ``now`` (default: the clock) decides what is due; tests pass a time.
        """
        now = now or self.clock.now()
        self.passes += 1
        async with self.engine.begin() as conn:
            calls = await escalate_due_calls(conn, now=now, margin=self.margin)
            sms: list[uuid.UUID] = []
            if calls and self.settings.outreach_escalation_sms_fallback:
                sms = await make_fallback_sms(conn, calls=calls, now=now)
        for call in calls:
            metrics.ESCALATIONS.labels(call["tier"]).inc()
        if sms:
            metrics.TASKS_STORED.labels(TaskKind.PRE_SUSPENSION_REMINDER.value, "sms").inc(len(sms))
            if self.wake_sms is not None:
                self.wake_sms()
        return EscalationPass([c["task_id"] for c in calls], sms)

    async def run(self) -> None:
        """Escalate until stopped; a failed pass is logged and retried next time."""
        await self._loop.run()

    async def _escalate(self) -> None:
        # None rather than the pass: after every pass the loop waits its interval.
        done = await self.escalate_once()
        if done.escalated:
            log.warning(
                "VIP reminders escalated",
                extra={
                    "escalated": len(done.escalated),
                    "fallback_sms": len(done.fallback_sms),
                },
            )

    def stop(self) -> None:
        """Return from ``run`` after the pass in hand."""
        self._loop.stop()
