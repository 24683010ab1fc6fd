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

"Reached" is the KPI's definition (``service.reminder_counts``): an SMS
delivered, or a call completed with an outcome other than ``unreachable``,
before the suspension. A notice ended by a payment or a churn (``end_cause``)
is not escalated, nor is a call someone is on right now (``in_progress``: if it
ends unreached it is escalated on the next pass).

Exactly once, even with several replicas: the candidates are locked with
``FOR UPDATE SKIP LOCKED`` and updated in the statement that checks
``escalated_at IS NULL``; a replica that comes second skips them or finds them
escalated. Time is the service's clock (its routes' too: a stream clock in a
replay), so a replay judges the margin against the replayed day.

The database work (which calls are due, the update, the fallback SMS) is
``services.outreach.service.escalation``; this module runs the passes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from services.outreach import metrics
from services.outreach.service import (
    ESCALATION,
    ESCALATION_BOOST,
    escalate_due_calls,
    fallback_sms_id,
    make_fallback_sms,
)
from services.outreach.settings import OutreachSettings
from shared.clock import Clock
from shared.events import TaskKind
from shared.periodic import Periodic

# The database work is ``service.escalation``; the names tests and callers know
# as escalation's are re-exported.
__all__ = [
    "ESCALATION",
    "ESCALATION_BOOST",
    "EscalationPass",
    "Escalator",
    "escalate_due_calls",
    "fallback_sms_id",
    "make_fallback_sms",
]

log = logging.getLogger(__name__)


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
