"""The call queue's database work: listing, claiming and working calls, and keeping queues.

A call lives through ``queued → assigned → in_progress → completed`` (see
``services.outreach.queue`` for the whole story; its ``QueueKeeper`` runs the
keeping functions here periodically). Every change is audited through
``transition`` / ``record_transitions``; claims use ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach import metrics
from services.outreach.errors import (
    CallbackAfterDue,
    CallbackOutOfRange,
    CallClaimedByAnother,
    CallInWrongState,
    NotACall,
    TaskNotFound,
)
from services.outreach.schemas import CallStatus
from services.outreach.service.opt_outs import opt_out
from services.outreach.service.tasks import enqueue_outcomes, record_transitions, transition
from services.outreach.tables import tasks
from shared.events import CallOutcome, Channel

KEEPER = "queue_keeper"
"""Actor of the audit rows of timed-out claims and expired calls."""

WORKING = (CallStatus.ASSIGNED, CallStatus.IN_PROGRESS)
"""States of a claimed call: an outcome may be recorded, a timeout returns it to the queue."""

MAX_CALLBACK_AHEAD = timedelta(days=90)
"""The furthest ahead a callback may be booked."""

OPT_OUT_SOURCE = "call"
"""``opt_outs.source`` of a subscriber who asked on a call not to be contacted."""


def in_queue(queue: str, *, general_queue: str | None) -> ColumnElement[bool]:
    """Calls of ``queue``; the general queue also takes calls that have no queue."""
    if queue == general_queue:
        return or_(tasks.c.queue == queue, tasks.c.queue.is_(None))
    return tasks.c.queue == queue


def due_calls(now: datetime) -> ColumnElement[bool]:
    """Queued calls that may be worked at ``now``.

    Hidden: a call whose ``not_before`` or ``callback_at`` is still ahead
    (deferred to office hours, a callback booked for later), and one already
    past its ``due_at`` (it is about to expire; calling now is too late).
    """
    return and_(
        tasks.c.channel == Channel.CALL.value,
        tasks.c.status == CallStatus.QUEUED,
        or_(tasks.c.not_before.is_(None), tasks.c.not_before <= now),
        or_(tasks.c.callback_at.is_(None), tasks.c.callback_at <= now),
        or_(tasks.c.due_at.is_(None), tasks.c.due_at > now),
    )


# Most urgent first: priority (highest first), the earliest due time (none
# last), then the oldest; task_id makes the order total.
URGENCY = (
    tasks.c.priority.desc(),
    tasks.c.due_at.asc().nulls_last(),
    tasks.c.created_at,
    tasks.c.task_id,
)


async def queued_calls(
    conn: AsyncConnection,
    *,
    account_manager_id: str | None = None,
    queue: str | None = None,
    now: datetime,
    limit: int,
    general_queue: str | None = None,
) -> list[dict[str, Any]]:
    """Queued call tasks that may be worked at ``now``, most urgent first (see ``due_calls``).

    ``queue`` narrows to one queue; when it is ``general_queue``, calls without
    a queue are included.
    """
    query = select(tasks).where(due_calls(now))
    if account_manager_id is not None:
        query = query.where(tasks.c.account_manager_id == account_manager_id)
    if queue is not None:
        query = query.where(in_queue(queue, general_queue=general_queue))
    query = query.order_by(*URGENCY).limit(limit)
    return [dict(r._mapping) for r in await conn.execute(query)]


async def claim_call(
    conn: AsyncConnection,
    *,
    queue: str,
    agent_id: str,
    now: datetime,
    general_queue: str | None,
) -> dict[str, Any] | None:
    """Assign the most urgent due call of ``queue`` to ``agent_id``; None if nothing is due.

    The candidate is locked with ``FOR UPDATE SKIP LOCKED`` and updated in the
    same statement, so concurrent claimers (other agents, other replicas) skip
    it and take the next one: no call is handed to two agents.
    """
    # MATERIALIZED: the locking select runs once, as written (PostgreSQL would
    # otherwise be free to inline it into the update).
    candidate = (
        select(tasks.c.task_id)
        .where(due_calls(now), in_queue(queue, general_queue=general_queue))
        .order_by(*URGENCY)
        .limit(1)
        .with_for_update(skip_locked=True)
        .cte("candidate")
        .prefix_with("MATERIALIZED")
    )
    return await assign_call(
        conn,
        where=tasks.c.task_id == candidate.c.task_id,
        agent_id=agent_id,
        now=now,
        reason=f"claimed from queue {queue}",
    )


async def assign_call(
    conn: AsyncConnection,
    *,
    where: ColumnElement[bool],
    agent_id: str,
    now: datetime,
    reason: str,
) -> dict[str, Any] | None:
    """``queued → assigned`` to ``agent_id`` for the one call ``where`` selects; the task.

    One conditional update, audited (``reason``) and counted; None when ``where``
    matched nothing (someone claimed it first, or it is not due).
    """
    row = (
        await conn.execute(
            update(tasks)
            .where(where)
            .values(
                status=CallStatus.ASSIGNED, assigned_to=agent_id, assigned_at=now, updated_at=now
            )
            .returning(*tasks.c)
        )
    ).first()
    if row is None:
        return None
    claimed = dict(row._mapping)
    await record_transitions(
        conn,
        rows=[(claimed["task_id"], CallStatus.QUEUED, CallStatus.ASSIGNED, agent_id, reason)],
        now=now,
    )
    metrics.CALLS.labels("claimed", "").inc()
    return claimed


async def _locked_call(conn: AsyncConnection, task_id: uuid.UUID) -> dict[str, Any]:
    """The call's row, locked until the transaction ends; ``TaskNotFound`` or ``NotACall``."""
    row = (
        await conn.execute(select(tasks).where(tasks.c.task_id == task_id).with_for_update())
    ).first()
    if row is None:
        raise TaskNotFound(task_id)
    task = dict(row._mapping)
    if task["channel"] != Channel.CALL.value:
        raise NotACall(
            "only call tasks are worked in the call queue",
            details={"status": task["status"], "channel": task["channel"]},
        )
    return task


def _refuse(task: dict[str, Any], agent_id: str, allowed: tuple[str, ...], action: str) -> None:
    """Refuse unless the call is in one of ``allowed`` and claimed by ``agent_id``."""
    if task["status"] not in allowed:
        raise CallInWrongState(task["status"], allowed, action)
    if task["assigned_to"] != agent_id:
        raise CallClaimedByAnother(task["status"], action)


async def _reread(conn: AsyncConnection, task_id: uuid.UUID) -> dict[str, Any]:
    row = (await conn.execute(select(tasks).where(tasks.c.task_id == task_id))).one()
    return dict(row._mapping)


async def start_call(
    conn: AsyncConnection, *, task_id: uuid.UUID, agent_id: str, now: datetime
) -> dict[str, Any]:
    """``assigned → in_progress``, by the agent who claimed it; return the task.

    Starting a call already in progress with the same agent changes nothing
    (a retried request); anything else not ``assigned`` to this agent is refused
    (``CallInWrongState``, ``CallClaimedByAnother``).
    """
    task = await _locked_call(conn, task_id)
    if task["status"] == CallStatus.IN_PROGRESS and task["assigned_to"] == agent_id:
        return task
    _refuse(task, agent_id, (CallStatus.ASSIGNED,), "start")
    await transition(
        conn,
        task_id=task_id,
        from_status=CallStatus.ASSIGNED,
        to_status=CallStatus.IN_PROGRESS,
        actor=agent_id,
        reason="call started",
        now=now,
    )
    metrics.CALLS.labels("started", "").inc()
    return await _reread(conn, task_id)


async def record_outcome(
    conn: AsyncConnection,
    *,
    task_id: uuid.UUID,
    agent_id: str,
    outcome: CallOutcome,
    callback_at: datetime | None,
    note: str | None,
    now: datetime,
    offer: str | None = None,
) -> dict[str, Any]:
    """Record a claimed call's outcome; return the task.

    ``callback`` puts the call back in its queue, hidden until ``callback_at``;
    any other outcome completes it. Only the agent who claimed the call, and
    only while it is ``assigned`` or ``in_progress`` (else ``CallInWrongState``
    or ``CallClaimedByAnother``); a callback time out of range is
    ``CallbackOutOfRange`` or ``CallbackAfterDue``. Both are
    audited and published (a completion by ``transition``, as a final state;
    a callback here). ``do_not_contact`` also puts the subscriber on the
    do-not-contact list, in the same transaction; ``offer`` (which offer was
    accepted) is kept in the audit reason.
    """
    task = await _locked_call(conn, task_id)
    _refuse(task, agent_id, WORKING, "record an outcome of")
    suffix = f": {note}" if note else ""
    if offer is not None:
        suffix = f" (offer {offer}){suffix}"
    if outcome is CallOutcome.CALLBACK:
        assert callback_at is not None  # OutcomeRequest checks it
        if callback_at <= now or callback_at > now + MAX_CALLBACK_AHEAD:
            raise CallbackOutOfRange(callback_at)
        if task["due_at"] is not None and callback_at >= task["due_at"]:
            # The call would expire before anyone could make it.
            raise CallbackAfterDue(task["due_at"])
        reason = f"callback requested for {callback_at.isoformat()}{suffix}"
        await transition(
            conn,
            task_id=task_id,
            from_status=task["status"],
            to_status=CallStatus.QUEUED,
            actor=agent_id,
            reason=reason,
            now=now,
            outcome=outcome.value,
            callback_at=callback_at,
            not_before=callback_at,
            assigned_to=None,
            assigned_at=None,
        )
        # Not a final state, so transition() did not publish it; every call outcome is.
        await enqueue_outcomes(conn, changes=[(task_id, CallStatus.QUEUED, reason)], now=now)
        metrics.CALLS.labels("callback", "").inc()
    else:
        await transition(
            conn,
            task_id=task_id,
            from_status=task["status"],
            to_status=CallStatus.COMPLETED,
            actor=agent_id,
            reason=f"outcome {outcome.value}{suffix}",
            now=now,
            outcome=outcome.value,
        )
        metrics.CALLS.labels("completed", outcome.value).inc()
        metrics.RETENTION_OUTCOMES.labels(task["tier"], outcome.value).inc()
        if outcome is CallOutcome.DO_NOT_CONTACT:
            created, _, cancelled = await opt_out(
                conn,
                subscriber_id=task["subscriber_id"],
                source=OPT_OUT_SOURCE,
                reason=f"asked on a call ({agent_id})",
                now=now,
            )
            metrics.count_opt_out(OPT_OUT_SOURCE, int(created), cancelled)
    return await _reread(conn, task_id)


async def requeue_timed_out(conn: AsyncConnection, *, now: datetime, timeout_s: float) -> int:
    """Claimed calls not finished within ``timeout_s`` go back to their queue; how many.

    Locked rows are skipped: a call whose outcome is being recorded right now
    is not taken from its agent.
    """
    stale = (
        select(tasks.c.task_id, tasks.c.status, tasks.c.assigned_to)
        .where(
            tasks.c.channel == Channel.CALL.value,
            tasks.c.status.in_(WORKING),
            tasks.c.assigned_at < now - timedelta(seconds=timeout_s),
        )
        .with_for_update(skip_locked=True)
        .cte("stale")
        .prefix_with("MATERIALIZED")
    )
    rows = await conn.execute(
        update(tasks)
        .where(tasks.c.task_id == stale.c.task_id)
        .values(status=CallStatus.QUEUED, assigned_to=None, assigned_at=None, updated_at=now)
        .returning(tasks.c.task_id, stale.c.status, stale.c.assigned_to)
    )
    requeued = [(r.task_id, r.status, r.assigned_to) for r in rows]
    await record_transitions(
        conn,
        rows=[
            (
                task_id,
                status,
                CallStatus.QUEUED,
                KEEPER,
                f"claim by {agent} not finished within {timeout_s:g} s",
            )
            for task_id, status, agent in requeued
        ],
        now=now,
    )
    return len(requeued)


async def expire_overdue_calls(conn: AsyncConnection, *, now: datetime) -> int:
    """Queued calls at or past their ``due_at`` expire; how many.

    A call someone is working on is left to them; if its claim times out it is
    requeued and then expires here.
    """
    rows = await conn.execute(
        update(tasks)
        .where(
            tasks.c.channel == Channel.CALL.value,
            tasks.c.status == CallStatus.QUEUED,
            tasks.c.due_at <= now,
        )
        .values(status=CallStatus.EXPIRED, updated_at=now)
        .returning(tasks.c.task_id)
    )
    expired = list(rows.scalars())
    await record_transitions(
        conn,
        rows=[(t, CallStatus.QUEUED, CallStatus.EXPIRED, KEEPER, "past due time") for t in expired],
        now=now,
    )
    return len(expired)


async def oldest_due_wait(conn: AsyncConnection, *, now: datetime) -> float:
    """Seconds the longest-waiting due call has waited (since it became due); 0 if none."""
    since = await conn.scalar(
        select(
            func.min(func.greatest(tasks.c.created_at, tasks.c.not_before, tasks.c.callback_at))
        ).where(due_calls(now))
    )
    return max(0.0, (now - since).total_seconds()) if since is not None else 0.0
