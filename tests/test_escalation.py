"""Escalation of VIP pre-suspension reminders (services/outreach/escalation.py).

Real PostgreSQL (the session fixtures). Every test acts at a time of its own,
years ahead and apart from other tests' (``far_now``), so an escalation pass
sees only the reminders the test made as due; counts are of the test's rows.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select, update

from services.outreach.escalation import (
    ESCALATION,
    ESCALATION_BOOST,
    Escalator,
    fallback_sms_id,
)
from services.outreach.settings import OutreachSettings
from services.outreach.tables import task_transitions, tasks
from shared.clock import StreamClock
from shared.events import Channel, OutreachTask, TaskKind, Tier
from tests.helpers import sid
from tests.outreach_api import OutreachApi, outreach_api

pytestmark = pytest.mark.asyncio(loop_scope="session")

MARGIN = timedelta(hours=4)


def far_now() -> datetime:
    """A time of this test's own: some day in 2031-2040, never another test's."""
    return datetime(2031, 1, 1, 9, tzinfo=UTC) + timedelta(
        days=random.randrange(3650), minutes=random.randrange(1440)
    )


def notice(
    suspension_at: datetime, *, tier: Tier = Tier.GOLD, phone: str | None = "+15550004001"
) -> tuple[OutreachTask, OutreachTask]:
    """One stop-notice's reminder tasks, as alerting makes them: an SMS and a VIP's call."""
    subscriber, cause = sid(), uuid.uuid4()
    created = suspension_at - timedelta(days=3)
    common: dict[str, Any] = {
        "kind": TaskKind.PRE_SUSPENSION_REMINDER,
        "rule": "pre_suspension_reminder",
        "subscriber_id": subscriber,
        "tier": tier,
        "monthly_value": Decimal("120.00"),
        "phone": phone,
        "account_manager_id": "AM-esc",
        "priority": 10120,
        "due_at": suspension_at - timedelta(hours=2),
        "reasons": ["suspension scheduled (arrears); 80.00 to pay"],
        "reason_codes": ["STOP_NOTICE"],
        "params": {"amount": "80.00", "suspension_at": suspension_at.isoformat()},
        "cause_event_id": cause,
        "created_at": created,
    }
    sms = OutreachTask(
        task_id=uuid.uuid4(), channel=Channel.SMS, template="pre_suspension_reminder", **common
    )
    call = OutreachTask(task_id=uuid.uuid4(), channel=Channel.CALL, queue="am:AM-esc", **common)
    return sms, call


class Harness(OutreachApi):
    """The database, and shortcuts to set a task's state and count its audit rows."""

    async def set(self, task_id: uuid.UUID, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(tasks).where(tasks.c.task_id == task_id).values(**values))

    async def row(self, task_id: uuid.UUID) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            found = (await conn.execute(select(tasks).where(tasks.c.task_id == task_id))).first()
        return None if found is None else dict(found._mapping)

    async def escalation_audits(self, task_id: uuid.UUID) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(task_transitions).where(
                    task_transitions.c.task_id == task_id, task_transitions.c.actor == ESCALATION
                )
            )
            return [dict(r._mapping) for r in rows]

    async def tasks_of(self, subscriber_id: str) -> int:
        async with self.engine.connect() as conn:
            return int(
                await conn.scalar(
                    select(func.count()).where(tasks.c.subscriber_id == subscriber_id)
                )
                or 0
            )

    def escalator(self, *, fallback: bool = False) -> Escalator:
        settings = self.settings.model_copy(update={"outreach_escalation_sms_fallback": fallback})
        return Escalator(settings, self.engine, StreamClock())


@pytest.fixture
async def harness(env: dict[str, Any]) -> AsyncIterator[Harness]:
    settings = OutreachSettings(
        **env, database_pool_size=10, outreach_escalation_margin_s=MARGIN.total_seconds()
    )
    async with outreach_api(Harness, settings) as h:
        yield h


def escalations(tier: str) -> float:
    return REGISTRY.get_sample_value("churnwatch_outreach_escalations_total", {"tier": tier}) or 0


async def test_a_due_vip_reminder_is_escalated_once(harness: Harness) -> None:
    now = far_now()
    due = notice(now + timedelta(hours=3))
    early = notice(now + MARGIN + timedelta(hours=1))  # not within the margin yet
    past = notice(now - timedelta(minutes=1))  # the suspension has happened
    standard = notice(now + timedelta(hours=3), tier=Tier.STANDARD)  # not a VIP
    await harness.store(*due, *early, *past, *standard)
    before = (await harness.row(due[1].task_id) or {})["priority"]
    counted = escalations("gold")
    escalator = harness.escalator()

    first = await escalator.escalate_once(now=now)
    second = await escalator.escalate_once(now=now + timedelta(minutes=5))

    assert first.escalated == [due[1].task_id] and first.fallback_sms == []
    assert second.escalated == []
    call = await harness.row(due[1].task_id)
    assert call is not None
    assert call["escalated_at"] == now and call["status"] == "queued"
    assert call["priority"] == before + ESCALATION_BOOST
    (audit,) = await harness.escalation_audits(due[1].task_id)
    assert (audit["from_status"], audit["to_status"]) == ("queued", "queued")
    assert "escalated" in audit["reason"] and audit["at"] == now
    assert escalations("gold") == counted + 1
    for other in (early, past, standard):
        row = await harness.row(other[1].task_id)
        assert row is not None and row["escalated_at"] is None
    # Nothing was escalated but the call: its SMS stays as it was.
    sms = await harness.row(due[0].task_id)
    assert sms is not None and sms["escalated_at"] is None


async def test_two_replicas_escalate_a_notice_exactly_once(harness: Harness) -> None:
    now = far_now()
    notices = [notice(now + timedelta(hours=1, minutes=i)) for i in range(8)]
    await harness.store(*(t for n in notices for t in n))
    calls = {n[1].task_id for n in notices}

    passes = await asyncio.gather(*(harness.escalator().escalate_once(now=now) for _ in range(4)))

    escalated = [t for p in passes for t in p.escalated if t in calls]
    assert sorted(escalated) == sorted(calls), "each notice once, by one of the replicas"
    for task_id in calls:
        assert len(await harness.escalation_audits(task_id)) == 1


async def test_a_reminded_or_paid_notice_is_not_escalated(harness: Harness) -> None:
    now = far_now()
    suspension = now + timedelta(hours=2)
    sms_delivered = notice(suspension)
    call_reached = notice(suspension)
    paid = notice(suspension)
    unreachable = notice(suspension)  # a call that did not reach them: still escalated
    in_progress = notice(suspension)  # someone is on the phone: left to them
    await harness.store(*sms_delivered, *call_reached, *paid, *unreachable, *in_progress)
    earlier = now - timedelta(hours=1)
    await harness.set(sms_delivered[0].task_id, status="delivered", delivered_at=earlier)
    await harness.set(
        call_reached[1].task_id, status="completed", outcome="reached", finished_at=earlier
    )
    await harness.set(paid[0].task_id, status="cancelled", end_cause="paid")
    await harness.set(paid[1].task_id, status="cancelled", end_cause="paid")
    await harness.set(
        unreachable[1].task_id, status="completed", outcome="unreachable", finished_at=earlier
    )
    await harness.set(in_progress[1].task_id, status="in_progress", assigned_to="AM-esc")

    done = await harness.escalator().escalate_once(now=now)

    assert done.escalated == [unreachable[1].task_id]
    for n in (sms_delivered, call_reached, paid, in_progress):
        assert await harness.escalation_audits(n[1].task_id) == []


async def test_the_fallback_sms_is_made_once_when_configured(harness: Harness) -> None:
    now = far_now()
    failed_sms = notice(now + timedelta(hours=3))
    pending_sms = notice(now + timedelta(hours=3, minutes=1))
    no_phone = notice(now + timedelta(hours=3, minutes=2), phone=None)
    await harness.store(*failed_sms, *pending_sms, *no_phone)
    await harness.set(failed_sms[0].task_id, status="failed", last_error="rejected")
    await harness.set(no_phone[0].task_id, status="failed")
    escalator = harness.escalator(fallback=True)

    first = await escalator.escalate_once(now=now)
    second = await escalator.escalate_once(now=now + timedelta(minutes=1))

    assert sorted(first.escalated) == sorted(
        n[1].task_id for n in (failed_sms, pending_sms, no_phone)
    )
    expected = fallback_sms_id(failed_sms[1].task_id)
    assert first.fallback_sms == [expected] and second.fallback_sms == []
    sms = await harness.row(expected)
    assert sms is not None
    assert (sms["channel"], sms["status"], sms["kind"]) == (
        "sms",
        "pending",
        "pre_suspension_reminder",
    )
    assert sms["cause_event_id"] == failed_sms[1].cause_event_id
    assert sms["due_at"] == now + timedelta(hours=3) and sms["created_by"] == ESCALATION
    assert sms["phone"] == "+15550004001"
    # One new task for the notice whose SMS failed, none for the others.
    assert await harness.tasks_of(failed_sms[1].subscriber_id) == 3
    assert await harness.tasks_of(pending_sms[1].subscriber_id) == 2
    assert await harness.tasks_of(no_phone[1].subscriber_id) == 2


async def test_without_the_fallback_setting_no_sms_is_made(harness: Harness) -> None:
    now = far_now()
    failed_sms = notice(now + timedelta(hours=3))
    await harness.store(*failed_sms)
    await harness.set(failed_sms[0].task_id, status="failed")

    done = await harness.escalator().escalate_once(now=now)

    assert done.escalated == [failed_sms[1].task_id] and done.fallback_sms == []
    assert await harness.tasks_of(failed_sms[1].subscriber_id) == 2
