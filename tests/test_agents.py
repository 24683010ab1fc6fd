"""The simulated account managers of ``make run`` (churnwatch/agents.py).

They work a real outreach server over HTTP (uvicorn on the session's
PostgreSQL, on the stream's clock as in ``make run``): every due call that
goes in comes out with an outcome recorded by its manager, through the same
endpoints a CRM uses, and the reminders count in the KPI.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from churnwatch.agents import CallAgents
from churnwatch.embedded import free_port
from churnwatch.simulator import Simulation, SimulationConfig
from services.outreach.settings import OutreachSettings
from shared.events import Channel, OutreachTask, TaskKind, Tier
from tests.helpers import serve
from tests.outreach_api import OutreachApi, outreach_api
from tests.test_stream_clock import consume

pytestmark = pytest.mark.asyncio(loop_scope="session")


def reminder(
    subscriber_id: str, manager: str, at: datetime, tier: Tier = Tier.GOLD
) -> OutreachTask:
    """A VIP's pre-suspension reminder call in the manager's queue; suspension 4 days on."""
    suspension_at = at + timedelta(days=4)
    return OutreachTask(
        task_id=uuid.uuid4(),
        kind=TaskKind.PRE_SUSPENSION_REMINDER,
        channel=Channel.CALL,
        subscriber_id=subscriber_id,
        tier=tier,
        account_manager_id=manager,
        queue=f"am:{manager}",
        due_at=suspension_at - timedelta(hours=2),
        params={"amount": "80.00", "suspension_at": suspension_at.isoformat()},
        cause_event_id=uuid.uuid4(),
        created_at=at,
    )


async def test_every_due_call_gets_its_managers_outcome_and_reminders_count(
    env: dict[str, Any],
) -> None:
    # Its own id prefix and month, so other tests' calls and reminders are not in it.
    prefix = f"A{uuid.uuid4().hex[:6]}-"
    sim = Simulation(SimulationConfig(subscribers=400, days=31, id_prefix=prefix))
    settings = OutreachSettings(**env, outreach_clock="stream")
    month = datetime(random.randrange(1990, 2010), random.randrange(1, 13), 1, tzinfo=UTC)
    notice_at = month + timedelta(days=3)
    managers = sim.manager_ids
    assert managers == ["AM-001", "AM-002"]
    # Managers of their own for this test (the queues are named after them).
    own = {m: f"{m}-{uuid.uuid4().hex[:6]}" for m in managers}
    calls = [
        reminder(s, own[managers[i % 2]], notice_at + timedelta(minutes=i))
        for i, s in enumerate(sim.subscriber_ids[:30])
    ]
    agents = CallAgents(sim, "http://127.0.0.1:0", headers={})
    agents.queues = {f"am:{m}": m for m in own.values()}

    async def sweep(api: OutreachApi) -> int:
        """One sweep of the agents over a real server of the app."""
        port = free_port()
        server, serving = await serve(api.app, port)
        agents.url = f"http://127.0.0.1:{port}"

        def work() -> int:
            with httpx.Client(base_url=agents.url, timeout=30) as client:
                return agents.sweep(client)

        try:
            return await asyncio.to_thread(work)
        finally:
            server.should_exit = True
            await serving

    def moved_on(at: datetime) -> OutreachTask:
        """Someone else's task (standard tier, not in the KPI): the stream moves to ``at``."""
        return reminder(sim.subscriber_ids[-1], "AM-none", at, tier=Tier.STANDARD)

    async with outreach_api(OutreachApi, settings) as api:
        await consume(api, *calls)
        worked, rounds = await sweep(api), 1
        rows = [await api.task(c.task_id) for c in calls]
        # Callbacks are booked three hours on: the stream must move for them to be due.
        while any(r["status"] == "queued" for r in rows) and rounds < 10:
            await consume(api, moved_on(notice_at + timedelta(hours=4 * rounds)))
            worked, rounds = worked + await sweep(api), rounds + 1
            rows = [await api.task(c.task_id) for c in calls]
        # Past every suspension: the month's reminders are all counted now.
        await consume(api, moved_on(notice_at + timedelta(days=10)))
        period = f"{month.year:04d}-{month.month:02d}"
        kpi = (await api.api.get("/v1/kpis", params={"period": period})).json()

    statuses = Counter(r["status"] for r in rows)
    assert statuses == {"completed": 30}, statuses
    # Each call's outcome was recorded by the manager whose queue it was in.
    for call, row in zip(calls, rows, strict=True):
        actors = {t["actor"] for t in row["transitions"] if t["actor"] != "alerting"}
        assert actors == {call.account_manager_id}
    reached = sum(r["outcome"] == "reached" for r in rows)
    assert worked == agents.stats.claimed >= 30
    assert agents.stats.outcomes["reached"] == reached
    overall = kpi["reminder_before_suspension"]["overall"]
    assert overall["denominator"] == 30 and overall["numerator"] == reached
    # 85 % answer at each try, and they try again until an hour before the deadline.
    assert reached == 30
