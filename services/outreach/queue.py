"""The call queue account managers work from."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.outreach.models import tasks
from services.outreach.schemas import CallStatus
from services.outreach.settings import OutreachSettings
from shared.events import Channel


async def queued_calls(
    conn: AsyncConnection,
    *,
    account_manager_id: str | None = None,
    queue: str | None = None,
    now: datetime,
    limit: int,
) -> list[dict[str, Any]]:
    """Queued call tasks that may be worked at ``now``, most urgent first.

    A call whose ``not_before`` is still ahead (alerting deferred it, e.g. to
    office hours) is hidden until then. Order: priority (highest first), then
    the earliest due time (none last), then the oldest.
    """
    query = select(tasks).where(
        tasks.c.channel == Channel.CALL.value,
        tasks.c.status == CallStatus.QUEUED,
        or_(tasks.c.not_before.is_(None), tasks.c.not_before <= now),
    )
    if account_manager_id is not None:
        query = query.where(tasks.c.account_manager_id == account_manager_id)
    if queue is not None:
        query = query.where(tasks.c.queue == queue)
    query = query.order_by(
        tasks.c.priority.desc(), tasks.c.due_at.asc().nulls_last(), tasks.c.created_at
    ).limit(limit)
    return [dict(r._mapping) for r in await conn.execute(query)]


class QueueKeeper:
    """Returns timed-out claims to their queue and expires overdue calls, periodically.

    (Filled in by the call queue work; wired in ``app.py``.)
    """

    def __init__(self, settings: OutreachSettings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine
        self._stop = asyncio.Event()

    async def run(self) -> None:
        """Keep the queues until stopped."""
        await self._stop.wait()

    def stop(self) -> None:
        """Return from ``run`` after the pass in hand."""
        self._stop.set()
