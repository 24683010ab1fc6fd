"""Reading tasks: the paged task list and its cursors, one task with its trail, counts."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach.errors import MalformedCursor
from services.outreach.schemas import CallStatus
from services.outreach.tables import task_transitions, tasks
from shared.events import Channel


def encode_cursor(created_at: datetime, task_id: uuid.UUID) -> str:
    """An opaque cursor for keyset pagination."""
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{task_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Read a cursor from ``encode_cursor``; ``MalformedCursor`` if it is not one.

    Only what ``encode_cursor`` makes passes: a hand-made cursor with a time
    without offset, or one PostgreSQL cannot compare, is malformed too.
    """
    try:
        created, task_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        at = datetime.fromisoformat(created)
        if at.tzinfo is None:
            raise ValueError("cursor time has no offset")
        return at.astimezone(UTC), uuid.UUID(task_id)
    except (ValueError, OverflowError) as exc:
        raise MalformedCursor from exc


async def list_tasks(
    conn: AsyncConnection,
    *,
    subscriber_id: str | None = None,
    kind: str | None = None,
    status: str | None = None,
    channel: str | None = None,
    queue: str | None = None,
    general_queue: str | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    due_from: datetime | None = None,
    due_to: datetime | None = None,
    limit: int,
    cursor: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of tasks, newest first, and the cursor of the next page (None at the end).

    Filters are exact matches, except: ``queue`` equal to ``general_queue``
    also matches calls without a queue (they are worked there); the time
    ranges include their start and exclude their end (``created_from <=
    created_at < created_to``), and a due range leaves out tasks without a due
    time.
    """
    query = select(tasks)
    for column, value in (
        ("subscriber_id", subscriber_id),
        ("kind", kind),
        ("status", status),
        ("channel", channel),
    ):
        if value is not None:
            query = query.where(tasks.c[column] == value)
    if queue is not None and queue == general_queue:
        query = query.where(
            or_(
                tasks.c.queue == queue,
                and_(tasks.c.queue.is_(None), tasks.c.channel == Channel.CALL.value),
            )
        )
    elif queue is not None:
        query = query.where(tasks.c.queue == queue)
    for timed, start, end in (
        (tasks.c.created_at, created_from, created_to),
        (tasks.c.due_at, due_from, due_to),
    ):
        if start is not None:
            query = query.where(timed >= start)
        if end is not None:
            query = query.where(timed < end)
    if cursor:
        created_at, task_id = decode_cursor(cursor)
        query = query.where(tuple_(tasks.c.created_at, tasks.c.task_id) < (created_at, task_id))
    query = query.order_by(tasks.c.created_at.desc(), tasks.c.task_id.desc()).limit(limit + 1)
    rows = [dict(r._mapping) for r in await conn.execute(query)]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["task_id"])
    return rows, next_cursor


async def get_task(conn: AsyncConnection, *, task_id: uuid.UUID) -> dict[str, Any] | None:
    """One task with its transitions, or None."""
    row = (await conn.execute(select(tasks).where(tasks.c.task_id == task_id))).first()
    if row is None:
        return None
    task = dict(row._mapping)
    trail = await conn.execute(
        select(task_transitions)
        .where(task_transitions.c.task_id == task_id)
        .order_by(task_transitions.c.id)
    )
    task["transitions"] = [dict(t._mapping) for t in trail]
    return task


async def newest_task_time(conn: AsyncConnection, *, not_after: datetime) -> datetime | None:
    """The newest task's ``created_at`` up to ``not_after`` (a replay's clock goes on from it)."""
    newest: datetime | None = await conn.scalar(
        select(func.max(tasks.c.created_at)).where(tasks.c.created_at <= not_after)
    )
    return newest


async def count_queued_calls(conn: AsyncConnection) -> int:
    """How many call tasks wait in the queue."""
    return int(
        await conn.scalar(
            select(func.count()).where(
                tasks.c.channel == Channel.CALL.value, tasks.c.status == CallStatus.QUEUED
            )
        )
        or 0
    )
