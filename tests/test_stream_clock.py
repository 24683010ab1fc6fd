"""OUTREACH_CLOCK=stream: a replayed past is judged against its own time, not the wall clock.

``make run`` streams 90 simulated days in minutes. A VIP's pre-suspension
reminder from day 40 is due before day 43's suspension; against the wall
clock that deadline is weeks gone when the task arrives, so nobody could ever
call in time. With the stream clock the call is due, the simulated manager's
outcome is stamped with the replayed time, and the KPI counts it.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.outreach.consumer import OutreachHandler
from services.outreach.settings import OutreachSettings
from shared.clock import StreamClock, WallClock
from shared.consumer import Inbound
from shared.events import Channel, OutreachTask, TaskKind, Tier
from shared.outbox import Outbox
from tests.helpers import sid
from tests.outreach_api import OutreachApi, outreach_api

pytestmark = pytest.mark.asyncio(loop_scope="session")


def reminder_call(queue: str, created_at: datetime, *, subscriber_id: str) -> OutreachTask:
    """A VIP's pre-suspension reminder call, the suspension three days after the notice."""
    suspension_at = created_at + timedelta(days=3)
    return OutreachTask(
        task_id=uuid.uuid4(),
        kind=TaskKind.PRE_SUSPENSION_REMINDER,
        channel=Channel.CALL,
        subscriber_id=subscriber_id,
        tier=Tier.GOLD,
        queue=queue,
        due_at=suspension_at - timedelta(hours=2),
        params={"amount": "80.00", "suspension_at": suspension_at.isoformat()},
        cause_event_id=uuid.uuid4(),
        created_at=created_at,
    )


@pytest.fixture
async def replay(env: dict[str, Any]) -> AsyncIterator[OutreachApi]:
    async with outreach_api(OutreachApi, OutreachSettings(**env, outreach_clock="stream")) as h:
        yield h


async def consume(api: OutreachApi, *tasks: OutreachTask) -> None:
    """What the consumer does with a batch of the tasks topic (the stream clock moves on)."""
    handler = OutreachHandler(lambda at: None, clock=api.app.state.clock)
    async with api.engine.begin() as conn:
        inbound = [Inbound(t, "tasks", 0, i, 0) for i, t in enumerate(tasks)]
        await handler(conn, inbound, Outbox(None))  # type: ignore[arg-type]


async def test_a_replayed_reminder_is_worked_and_counted_in_its_own_time(
    replay: OutreachApi,
) -> None:
    assert isinstance(replay.app.state.clock, StreamClock)
    # A month of its own in the past, so other tests' reminders are not in its KPI.
    month_start = datetime(random.randrange(1990, 2010), random.randrange(1, 13), 1, tzinfo=UTC)
    notice_at = month_start + timedelta(days=10)
    queue = f"am:AM-{uuid.uuid4().hex[:10]}"
    task = reminder_call(queue, notice_at, subscriber_id=sid())
    await consume(replay, task)
    assert replay.app.state.clock.now() == notice_at
    # Against the wall clock this call would be long overdue; in the replay it is due.
    assert WallClock().now() > task.due_at  # type: ignore[operator]
    listed = await replay.api.get("/v1/call-queue", params={"queue": queue})
    assert [t["task_id"] for t in listed.json()] == [str(task.task_id)]
    claimed = await replay.api.post(f"/v1/call-queues/{queue}/claim", json={"agent_id": "AM-1"})
    assert claimed.status_code == 200
    done = await replay.api.post(
        f"/v1/tasks/{task.task_id}/outcome", json={"agent_id": "AM-1", "outcome": "reached"}
    )
    assert done.status_code == 200
    row = await replay.task(task.task_id)
    assert row["finished_at"] == notice_at  # stamped with the replayed time

    period = f"{month_start.year:04d}-{month_start.month:02d}"
    before = (await replay.api.get("/v1/kpis", params={"period": period})).json()
    # The suspension is still ahead in the replay: not counted yet.
    assert before["reminder_before_suspension"]["overall"]["denominator"] == 0
    # The stream moves on past the suspension (a later task of someone else).
    later = reminder_call(
        f"am:AM-{uuid.uuid4().hex[:10]}", notice_at + timedelta(days=5), subscriber_id=sid()
    )
    await consume(replay, later)
    after = (await replay.api.get("/v1/kpis", params={"period": period})).json()
    overall = after["reminder_before_suspension"]["overall"]
    assert (overall["numerator"], overall["denominator"]) == (1, 1)


async def test_the_wall_clock_leaves_a_replayed_deadline_past(env: dict[str, Any]) -> None:
    async with outreach_api(OutreachApi, OutreachSettings(**env)) as wall:
        assert isinstance(wall.app.state.clock, WallClock)
        queue = f"am:AM-{uuid.uuid4().hex[:10]}"
        task = reminder_call(queue, datetime(2005, 3, 10, tzinfo=UTC), subscriber_id=sid())
        await consume(wall, task)
        listed = await wall.api.get("/v1/call-queue", params={"queue": queue})
        assert listed.json() == []  # past its due time: nobody can call in time


async def test_the_stream_clock_never_goes_back() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    clock = StreamClock(t0)
    clock.observe(t0 - timedelta(days=1))
    assert clock.now() == t0
    clock.observe(t0 + timedelta(hours=1))
    assert clock.now() == t0 + timedelta(hours=1)
    # A task stamped years ahead is a bad timestamp: time does not jump to it.
    clock.observe(datetime.now(UTC) + timedelta(days=365 * 5))
    assert clock.now() == t0 + timedelta(hours=1)


async def test_a_restarted_replay_goes_on_from_its_newest_task_not_a_future_one(
    replay: OutreachApi,
) -> None:
    from services.outreach.service import newest_task_time

    now = datetime.now(UTC)
    recent = reminder_call(f"am:AM-{uuid.uuid4().hex[:10]}", now, subscriber_id=sid())
    future = reminder_call(
        f"am:AM-{uuid.uuid4().hex[:10]}", now + timedelta(days=2000), subscriber_id=sid()
    )
    await replay.store(recent, future)
    async with replay.engine.connect() as conn:
        newest = await newest_task_time(conn, not_after=now + timedelta(hours=1))
    assert newest is not None and now <= newest <= now + timedelta(hours=1)
