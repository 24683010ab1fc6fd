"""The workbench's database work: my day, the subscriber card's data, claims.

What the pages read and do, scoped to who is looking. A manager sees the tasks
whose ``account_manager_id`` is their ``manager_id``; a team lead their team's
managers' (``people.team_lead_id``); an admin all. Claiming, starting and
finishing calls go through ``call_queue`` (claiming one given task is here,
built like ``claim_call``), so audit, outbox, metrics and KPIs see the
workbench exactly like the REST API.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select, true
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach.errors import (
    CallNotClaimable,
    NotACall,
    TaskNotFound,
    TaskOfAnotherManager,
)
from services.outreach.schemas import CallStatus
from services.outreach.service.call_queue import KEEPER, URGENCY, WORKING, assign_call, due_calls
from services.outreach.service.people import Person, Role
from services.outreach.tables import people, phone_reveals, task_transitions, tasks
from shared.events import Channel, TaskKind

Scope = frozenset[str] | None
"""The account manager ids a person may see; None means all (an admin)."""

OPEN_CALL = (CallStatus.QUEUED, CallStatus.ASSIGNED, CallStatus.IN_PROGRESS)
"""A call still to be made (queued, or claimed and not finished)."""

REMINDER = TaskKind.PRE_SUSPENSION_REMINDER.value
"""``tasks.kind`` of a VIP pre-suspension reminder."""


async def visible_managers(conn: AsyncConnection, *, person: Person) -> Scope:
    """The manager ids ``person`` may see (None: all)."""
    if person.role is Role.ADMIN:
        return None
    ids = {person.manager_id} if person.manager_id else set()
    if person.role is Role.TEAM_LEAD:
        rows = await conn.execute(
            select(people.c.manager_id).where(
                people.c.team_lead_id == person.person_id, people.c.manager_id.is_not(None)
            )
        )
        ids.update(r.manager_id for r in rows)
    return frozenset(ids)


def in_scope(scope: Scope) -> ColumnElement[bool]:
    """Tasks of the managers in ``scope``."""
    if scope is None:
        return true()
    return tasks.c.account_manager_id.in_(sorted(scope))


def may_see(scope: Scope, manager_id: str | None) -> bool:
    """Whether a task or subscriber of ``manager_id`` is visible in ``scope``."""
    return scope is None or (manager_id is not None and manager_id in scope)


async def reminders_due(
    conn: AsyncConnection, *, scope: Scope, limit: int = 200
) -> list[dict[str, Any]]:
    """Open VIP pre-suspension reminder calls, the soonest suspension first."""
    query = (
        select(tasks)
        .where(
            tasks.c.kind == REMINDER,
            tasks.c.channel == Channel.CALL.value,
            tasks.c.status.in_(OPEN_CALL),
            in_scope(scope),
        )
        .order_by(tasks.c.suspension_at.asc().nulls_last(), *URGENCY)
        .limit(limit)
    )
    return [dict(r._mapping) for r in await conn.execute(query)]


async def todays_calls(
    conn: AsyncConnection, *, scope: Scope, now: datetime, limit: int
) -> list[dict[str, Any]]:
    """Due calls other than reminders, in the queue's order (risk times value first)."""
    if limit <= 0:
        return []
    query = (
        select(tasks)
        .where(due_calls(now), tasks.c.kind != REMINDER, in_scope(scope))
        .order_by(*URGENCY)
        .limit(limit)
    )
    return [dict(r._mapping) for r in await conn.execute(query)]


async def in_hand(conn: AsyncConnection, *, agent_id: str) -> list[dict[str, Any]]:
    """Calls claimed by ``agent_id`` and not finished yet."""
    query = (
        select(tasks)
        .where(tasks.c.status.in_(WORKING), tasks.c.assigned_to == agent_id)
        .order_by(tasks.c.assigned_at)
    )
    return [dict(r._mapping) for r in await conn.execute(query)]


def calls_made_query(start: datetime, end: datetime) -> Any:
    """Select (manager, tier, at) of outcomes recorded on claimed calls in ``[start, end)``.

    Completions and callbacks by a person; not the keeper's requeues.
    """
    t, tr = tasks.c, task_transitions.c
    return (
        select(t.account_manager_id, t.tier, tr.at)
        .select_from(task_transitions.join(tasks, t.task_id == tr.task_id))
        .where(
            t.channel == Channel.CALL.value,
            tr.from_status.in_(WORKING),
            tr.to_status.in_((CallStatus.COMPLETED, CallStatus.QUEUED)),
            tr.actor != KEEPER,
            tr.at >= start,
            tr.at < end,
        )
    )


async def calls_made(conn: AsyncConnection, *, scope: Scope, start: datetime, end: datetime) -> int:
    """How many call outcomes the managers in ``scope`` recorded in ``[start, end)``."""
    made = calls_made_query(start, end).where(in_scope(scope)).subquery()
    return int(await conn.scalar(select(func.count()).select_from(made)) or 0)


async def warnings_today(
    conn: AsyncConnection, *, scope: Scope, start: datetime, end: datetime
) -> list[tuple[str, str | None, str, int]]:
    """Tasks created in ``[start, end)``, by kind, rule and channel: the morning's warnings."""
    rows = await conn.execute(
        select(tasks.c.kind, tasks.c.rule, tasks.c.channel, func.count())
        .where(tasks.c.created_at >= start, tasks.c.created_at < end, in_scope(scope))
        .group_by(tasks.c.kind, tasks.c.rule, tasks.c.channel)
        .order_by(func.count().desc(), tasks.c.kind, tasks.c.rule)
    )
    return [(kind, rule, channel, int(n)) for kind, rule, channel, n in rows]


async def task_for(conn: AsyncConnection, *, task_id: uuid.UUID, scope: Scope) -> dict[str, Any]:
    """The task if ``scope`` may see it: ``TaskNotFound``, or ``TaskOfAnotherManager``."""
    row = (await conn.execute(select(tasks).where(tasks.c.task_id == task_id))).first()
    if row is None:
        raise TaskNotFound(task_id)
    task = dict(row._mapping)
    if not may_see(scope, task["account_manager_id"]):
        raise TaskOfAnotherManager
    return task


async def claim_task(
    conn: AsyncConnection, *, task_id: uuid.UUID, agent_id: str, scope: Scope, now: datetime
) -> dict[str, Any]:
    """Claim one given call for ``agent_id`` (``queued → assigned``); return it.

    One conditional update, like ``service.claim_call``: if someone else claimed
    it first, or it is not due (deferred, a callback for later, past its due
    time), nothing changes and this is ``CallNotClaimable``.
    """
    task = await task_for(conn, task_id=task_id, scope=scope)
    if task["channel"] != Channel.CALL.value:
        raise NotACall("only calls can be claimed")
    claimed = await assign_call(
        conn,
        where=and_(tasks.c.task_id == task_id, due_calls(now)),
        agent_id=agent_id,
        now=now,
        reason="claimed on the workbench",
    )
    if claimed is None:
        raise CallNotClaimable(
            task["status"], task["assigned_to"], queued=task["status"] == CallStatus.QUEUED
        )
    return claimed


async def subscriber_tasks(conn: AsyncConnection, *, subscriber_id: str) -> list[dict[str, Any]]:
    """The subscriber's tasks, newest first, each with its transitions (oldest first)."""
    rows = [
        dict(r._mapping)
        for r in await conn.execute(
            select(tasks)
            .where(tasks.c.subscriber_id == subscriber_id)
            .order_by(tasks.c.created_at.desc(), tasks.c.task_id)
            .limit(200)
        )
    ]
    by_id = {row["task_id"]: row for row in rows}
    for row in rows:
        row["transitions"] = []
    if by_id:
        trail = await conn.execute(
            select(task_transitions)
            .where(task_transitions.c.task_id.in_(list(by_id)))
            .order_by(task_transitions.c.id)
        )
        for t in trail:
            by_id[t.task_id]["transitions"].append(dict(t._mapping))
    return rows


async def record_reveal(
    conn: AsyncConnection,
    *,
    person_id: str,
    subscriber_id: str,
    task_id: uuid.UUID | None,
    now: datetime,
) -> None:
    """Audit one phone number reveal."""
    await conn.execute(
        phone_reveals.insert().values(
            person_id=person_id, subscriber_id=subscriber_id, task_id=task_id, at=now
        )
    )


async def reveals(conn: AsyncConnection, *, subscriber_id: str, limit: int = 20) -> list[Any]:
    """The latest reveals of the subscriber's number (who, when)."""
    return list(
        await conn.execute(
            select(phone_reveals)
            .where(phone_reveals.c.subscriber_id == subscriber_id)
            .order_by(phone_reveals.c.id.desc())
            .limit(limit)
        )
    )


async def manager_names(conn: AsyncConnection, *, manager_ids: Collection[str]) -> dict[str, str]:
    """Display names of the people working as these manager ids."""
    if not manager_ids:
        return {}
    rows = await conn.execute(
        select(people.c.manager_id, people.c.display_name).where(
            people.c.manager_id.in_(sorted(manager_ids))
        )
    )
    return {r.manager_id: r.display_name for r in rows}


def open_reminder(task: dict[str, Any]) -> bool:
    """A reminder call still to be made.

    ``reminders_due``'s filter, for a task already read: kept beside it so that
    the card and My day agree on what is still to be made.
    """
    return bool(
        task["kind"] == REMINDER
        and task["channel"] == Channel.CALL.value
        and task["status"] in OPEN_CALL
    )
