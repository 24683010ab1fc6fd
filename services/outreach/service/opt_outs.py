"""The do-not-contact list: reading, adding (cancelling waiting marketing SMS) and removing."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach.service.sms import SMS_WAITING
from services.outreach.service.tasks import CANCELLED, record_transitions
from services.outreach.tables import opt_outs, tasks
from shared.events import Channel


async def get_opt_out(conn: AsyncConnection, *, subscriber_id: str) -> dict[str, Any] | None:
    """The subscriber's do-not-contact entry, or None."""
    row = (
        await conn.execute(select(opt_outs).where(opt_outs.c.subscriber_id == subscriber_id))
    ).first()
    return None if row is None else dict(row._mapping)


async def opt_out(
    conn: AsyncConnection,
    *,
    subscriber_id: str,
    source: str,
    reason: str | None,
    now: datetime,
) -> tuple[bool, dict[str, Any], int]:
    """Put a subscriber on the do-not-contact list (idempotent).

    Returns ``(created, entry, cancelled)``: whether the entry is new (an
    existing one is kept as it was), the entry, and how many of the
    subscriber's marketing SMS still waiting to be sent were cancelled now
    (the dispatcher would cancel them anyway when they come due; doing it now
    keeps the task list truthful).
    """
    created = (
        await conn.execute(
            insert(opt_outs)
            .values(subscriber_id=subscriber_id, source=source, reason=reason, created_at=now)
            .on_conflict_do_nothing(index_elements=["subscriber_id"])
            .returning(opt_outs.c.subscriber_id)
        )
    ).first() is not None
    entry = await get_opt_out(conn, subscriber_id=subscriber_id)
    assert entry is not None  # inserted now, or there already
    waiting = [
        (r.task_id, r.status)
        for r in await conn.execute(
            select(tasks.c.task_id, tasks.c.status)
            .where(
                tasks.c.subscriber_id == subscriber_id,
                tasks.c.channel == Channel.SMS.value,
                tasks.c.marketing.is_(True),
                tasks.c.status.in_(SMS_WAITING),
            )
            .order_by(tasks.c.task_id)
            .with_for_update()
        )
    ]
    if waiting:
        await conn.execute(
            update(tasks)
            .where(tasks.c.task_id.in_([t for t, _ in waiting]))
            .values(status=CANCELLED, updated_at=now, next_attempt_at=None)
        )
        await record_transitions(
            conn,
            rows=[
                (t, s, CANCELLED, source, "opted out of marketing SMS (do-not-contact list)")
                for t, s in waiting
            ],
            now=now,
        )
    return created, entry, len(waiting)


async def remove_opt_out(conn: AsyncConnection, *, subscriber_id: str) -> bool:
    """Take a subscriber off the do-not-contact list; False if they were not on it."""
    result = await conn.execute(
        delete(opt_outs)
        .where(opt_outs.c.subscriber_id == subscriber_id)
        .returning(opt_outs.c.subscriber_id)
    )
    return result.first() is not None
