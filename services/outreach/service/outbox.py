"""The outcome outbox, read side: what the relay locks, marks published and counts.

Rows are written by ``enqueue_outcomes`` (``service.tasks``), in the
transaction of the change they report; ``services.outreach.feedback.Relay``
publishes them with these.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach.tables import outbox


async def lock_unpublished(
    conn: AsyncConnection, *, topics: Collection[str], limit: int
) -> Sequence[Row[Any, Any, Any, Any]]:
    """Up to ``limit`` unpublished rows of ``topics``, oldest first, locked until commit.

    ``id``, ``topic``, ``key`` and ``payload`` of each. ``SKIP LOCKED``: several
    relays (replicas) each get their own rows.
    """
    return (
        await conn.execute(
            select(outbox.c.id, outbox.c.topic, outbox.c.key, outbox.c.payload)
            .where(
                outbox.c.published_at.is_(None),
                outbox.c.topic.in_(sorted(topics)),
            )
            .order_by(outbox.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()


async def mark_published(conn: AsyncConnection, *, ids: list[int], at: datetime) -> None:
    """Set ``published_at`` of the rows ``ids`` (every one acknowledged by the broker)."""
    await conn.execute(update(outbox).where(outbox.c.id.in_(ids)).values(published_at=at))


async def count_unpublished(conn: AsyncConnection) -> int:
    """How many outbox rows wait to be published (any topic)."""
    pending = await conn.scalar(
        select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
    )
    return int(pending or 0)
