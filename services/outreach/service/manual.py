"""Tasks made and stopped through the API (``POST /v1/tasks``, ``.../{id}/cancel``)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach.errors import (
    DueInThePast,
    IdempotencyKeyReused,
    InvalidTask,
    TaskAlreadyFinal,
    TaskNotFound,
    TaskTooFarAlong,
)
from services.outreach.schemas import CallStatus, TaskCreate
from services.outreach.service.tasks import (
    CANCELLED,
    FINAL_STATES,
    STOPPABLE,
    store_tasks,
    transition,
)
from services.outreach.tables import tasks
from shared.events import Channel, OutreachTask, derive_id

# --- tasks made and stopped through the API (POST /v1/tasks, POST /v1/tasks/{id}/cancel) ---

# What a manual task's client key must reproduce to be "the same request" again.
_MANUAL_FIELDS = (
    "kind",
    "channel",
    "subscriber_id",
    "tier",
    "monthly_value",
    "phone",
    "language",
    "account_manager_id",
    "queue",
    "template",
    "marketing",
    "priority",
    "risk",
    "not_before",
    "due_at",
    "reasons",
    "reason_codes",
    "params",
)


def manual_task_id(client_key: str) -> uuid.UUID:
    """The id of the task made with this client key: the same key, the same task."""
    return derive_id("manual", client_key)


async def _by_client_key(conn: AsyncConnection, client_key: str) -> dict[str, Any] | None:
    row = (await conn.execute(select(tasks).where(tasks.c.client_key == client_key))).first()
    return None if row is None else dict(row._mapping)


def _same_request(row: Mapping[str, Any], body: TaskCreate) -> bool:
    """True if ``body`` asks for the task ``row`` is (values compared, not spelling)."""
    wanted = body.model_dump(mode="python")
    return row["created_by"] == body.created_by and all(
        row[name] == wanted[name] for name in _MANUAL_FIELDS
    )


def _replay(row: dict[str, Any], body: TaskCreate) -> dict[str, Any]:
    if not _same_request(row, body):
        raise IdempotencyKeyReused(row["task_id"])
    return row


async def create_manual_task(
    conn: AsyncConnection, *, body: TaskCreate, client_key: str, now: datetime
) -> tuple[dict[str, Any], bool]:
    """Make a task by hand, idempotently on ``client_key``; return it and whether it is new.

    The task id is derived from the key, so concurrent requests with one key
    race for one row: the loser finds the winner's task. The same key with
    the same body gives the stored task again (even after its due time); with
    another body it is ``IdempotencyKeyReused``. A new task due in the past is
    ``DueInThePast``; one the event contract refuses, ``InvalidTask``.
    """
    existing = await _by_client_key(conn, client_key)
    if existing is not None:
        return _replay(existing, body), False
    if body.due_at is not None and body.due_at <= now:
        raise DueInThePast(body.due_at)
    task_id = manual_task_id(client_key)
    try:
        task = OutreachTask(
            task_id=task_id,
            # A manual task has no causing event; it is its own cause.
            cause_event_id=task_id,
            created_at=now,
            **body.model_dump(exclude={"created_by"}),
        )
    except ValidationError as exc:  # TaskCreate is as strict; this is a safety net
        raise InvalidTask([{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]) from exc
    stored = await store_tasks(
        conn, new_tasks=[task], now=now, created_by=body.created_by, client_key=client_key
    )
    row = await _by_client_key(conn, client_key)
    assert row is not None  # stored now, or by the request that won the race
    return (row, True) if stored else (_replay(row, body), False)


async def cancel_task(
    conn: AsyncConnection, *, task_id: uuid.UUID, actor: str, reason: str, now: datetime
) -> dict[str, Any]:
    """Cancel a task not yet done, audited with ``actor`` and ``reason``; return it.

    ``TaskNotFound`` if there is no such task; ``TaskAlreadyFinal`` if it is
    already final; ``TaskTooFarAlong`` if it is too far along to stop (an SMS
    being sent or sent: the provider has it). A call can be cancelled until it
    is completed, even while an agent works it.
    """
    row = (
        await conn.execute(select(tasks).where(tasks.c.task_id == task_id).with_for_update())
    ).first()
    if row is None:
        raise TaskNotFound(task_id)
    status, channel = row.status, row.channel
    if status in FINAL_STATES:
        raise TaskAlreadyFinal(status)
    stoppable = STOPPABLE[channel] | (
        {CallStatus.IN_PROGRESS} if channel == Channel.CALL.value else set()
    )
    if status not in stoppable:
        raise TaskTooFarAlong(status)
    await transition(
        conn,
        task_id=task_id,
        from_status=status,
        to_status=CANCELLED,
        actor=actor,
        reason=reason,
        now=now,
    )
    after = (await conn.execute(select(tasks).where(tasks.c.task_id == task_id))).one()
    return dict(after._mapping)
