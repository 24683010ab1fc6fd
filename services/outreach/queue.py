"""The call queue account managers work from."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach.models import tasks
from services.outreach.schemas import CallStatus
from shared.events import Channel


async def queued_calls(
    conn: AsyncConnection, *, account_manager_id: str | None, limit: int
) -> list[dict[str, Any]]:
    """Queued call tasks, most urgent first: priority, then the earliest due time."""
    query = select(tasks).where(
        tasks.c.channel == Channel.CALL.value, tasks.c.status == CallStatus.QUEUED
    )
    if account_manager_id is not None:
        query = query.where(tasks.c.account_manager_id == account_manager_id)
    query = query.order_by(
        tasks.c.priority.desc(), tasks.c.due_at.asc().nulls_last(), tasks.c.created_at
    ).limit(limit)
    return [dict(r._mapping) for r in await conn.execute(query)]
