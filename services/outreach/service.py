"""Outreach's database work. Keyword-only; never commits: the caller owns the transaction."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach.models import outbox, task_transitions, tasks
from services.outreach.schemas import CallStatus, SmsStatus
from shared.errors import BadRequest
from shared.events import (
    Channel,
    OutreachTask,
    TaskAction,
    TaskKind,
    TaskOutcome,
    TaskUpdate,
    Tier,
    derive_id,
)

# States from which alerting may still stop a task (cancel, or close with an
# outcome). An SMS in 'sending' is not among them: the provider may already
# have it, and the dispatcher records what happened to it.
STOPPABLE: Mapping[str, frozenset[str]] = {
    Channel.SMS.value: frozenset({SmsStatus.PENDING}),
    Channel.CALL.value: frozenset({CallStatus.QUEUED, CallStatus.ASSIGNED}),
}

ALERTING = "alerting"
"""Actor of the audit rows that alerting's messages cause."""

CANCELLED = "cancelled"
"""The state of a stopped task, with the same name for both channels."""


class UpdateResult(StrEnum):
    """What became of one task update (the ``result`` label of its metric)."""

    APPLIED = "applied"
    IGNORED = "ignored"
    UNKNOWN_TASK = "unknown_task"


def initial_status(channel: Channel) -> str:
    """Where a new task starts: SMS wait to be sent, calls wait in the queue."""
    return SmsStatus.PENDING if channel is Channel.SMS else CallStatus.QUEUED


def _suspension_at(task: OutreachTask) -> datetime | None:
    """A reminder's suspension time (from its params), for the KPI."""
    raw = task.params.get("suspension_at")
    if task.kind is not TaskKind.PRE_SUSPENSION_REMINDER or not raw:
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        return None


async def store_tasks(
    conn: AsyncConnection,
    *,
    new_tasks: Sequence[OutreachTask],
    now: datetime,
    created_by: str = "alerting",
    client_key: str | None = None,
) -> list[OutreachTask]:
    """Store tasks idempotently on ``task_id``; return the ones that were new.

    ``created_by`` and ``client_key`` are for tasks made through the API (one
    task per call, idempotent on the client's key as well).
    """
    if not new_tasks:
        return []
    unique = list({t.task_id: t for t in new_tasks}.values())
    rows = await conn.execute(
        insert(tasks)
        .values(
            [
                {
                    "task_id": t.task_id,
                    "kind": t.kind.value,
                    "channel": t.channel.value,
                    "status": initial_status(t.channel),
                    "subscriber_id": t.subscriber_id,
                    "tier": t.tier.value,
                    "phone": t.phone,
                    "language": t.language,
                    "account_manager_id": t.account_manager_id,
                    "rule": t.rule,
                    "queue": t.queue,
                    "template": t.template,
                    "marketing": t.marketing,
                    "monthly_value": t.monthly_value,
                    "priority": t.priority,
                    "risk": t.risk,
                    "not_before": t.not_before,
                    "due_at": t.due_at,
                    "reasons": t.reasons,
                    "reason_codes": t.reason_codes,
                    "params": t.params,
                    "cause_event_id": t.cause_event_id,
                    # The dispatcher claims only SMS whose next attempt is due, so
                    # starting there keeps it from sending before not_before.
                    "next_attempt_at": t.not_before if t.channel is Channel.SMS else None,
                    "suspension_at": _suspension_at(t),
                    "created_by": created_by,
                    "client_key": client_key,
                    "created_at": t.created_at,
                    "updated_at": now,
                }
                for t in unique
            ]
        )
        .on_conflict_do_nothing(index_elements=["task_id"])
        .returning(tasks.c.task_id)
    )
    fresh = set(rows.scalars())
    stored = [t for t in unique if t.task_id in fresh]
    await record_transitions(
        conn,
        rows=[
            (t.task_id, None, initial_status(t.channel), ALERTING, "task created") for t in stored
        ],
        now=now,
    )
    return stored


FINAL_STATES = frozenset(
    {
        SmsStatus.DELIVERED,
        SmsStatus.FAILED,
        SmsStatus.EXPIRED,
        CallStatus.COMPLETED,
        CANCELLED,
    }
)
"""States a task never leaves; reaching one publishes a ``TaskOutcome``."""

OUTCOMES_TOPIC = "outcomes"
"""Logical topic of outbox rows; the relay maps it to ``Topics.outcomes``."""


async def enqueue_outcomes(
    conn: AsyncConnection,
    *,
    changes: Sequence[tuple[uuid.UUID, str, str | None]],
    now: datetime,
) -> None:
    """Write a ``TaskOutcome`` per ``(task_id, status, reason)`` to the outbox.

    Called in the transaction that makes the change, so the message exists if
    and only if the change committed (transactional outbox); the relay
    publishes it later. A final status also stamps ``finished_at``. The
    outcome (a call's, or a close's) is read from the task row as it is now.
    """
    if not changes:
        return
    ids = sorted({t for t, _, _ in changes})
    rows = {
        r.task_id: r
        for r in await conn.execute(
            select(
                tasks.c.task_id,
                tasks.c.subscriber_id,
                tasks.c.kind,
                tasks.c.channel,
                tasks.c.rule,
                tasks.c.tier,
                tasks.c.outcome,
            ).where(tasks.c.task_id.in_(ids))
        )
    }
    messages = []
    for task_id, status, reason in changes:
        row = rows.get(task_id)
        if row is None:
            continue
        outcome = TaskOutcome(
            outcome_id=derive_id("outcome", task_id, status, row.outcome),
            task_id=task_id,
            subscriber_id=row.subscriber_id,
            kind=TaskKind(row.kind),
            channel=Channel(row.channel),
            rule=row.rule,
            tier=Tier(row.tier),
            status=status,
            outcome=row.outcome,
            reason=(reason or "")[:500] or None,
            at=now,
        )
        messages.append(
            {
                "topic": OUTCOMES_TOPIC,
                "key": row.subscriber_id,
                "payload": outcome.model_dump(mode="json"),
                "created_at": now,
            }
        )
    if messages:
        await conn.execute(insert(outbox).values(messages))
    final = sorted({t for t, status, _ in changes if status in FINAL_STATES})
    if final:
        await conn.execute(
            update(tasks)
            .where(tasks.c.task_id.in_(final), tasks.c.finished_at.is_(None))
            .values(finished_at=now)
        )


async def record_transitions(
    conn: AsyncConnection,
    *,
    rows: Sequence[tuple[uuid.UUID, str | None, str, str, str | None]],
    now: datetime,
) -> None:
    """Append audit rows ``(task_id, from, to, actor, reason)``; outbox the final ones."""
    await enqueue_outcomes(
        conn,
        changes=[(t, to, r) for t, f, to, _, r in rows if to in FINAL_STATES and f != to],
        now=now,
    )
    if rows:
        await conn.execute(
            insert(task_transitions).values(
                [
                    {
                        "task_id": t,
                        "from_status": f,
                        "to_status": to,
                        "actor": a,
                        "reason": r,
                        "at": now,
                    }
                    for t, f, to, a, r in rows
                ]
            )
        )


async def transition(
    conn: AsyncConnection,
    *,
    task_id: uuid.UUID,
    from_status: str,
    to_status: str,
    actor: str,
    reason: str | None,
    now: datetime,
    **values: Any,
) -> bool:
    """Move a task from one state to another if it is still in ``from_status``."""
    result = await conn.execute(
        update(tasks)
        .where(tasks.c.task_id == task_id, tasks.c.status == from_status)
        .values(status=to_status, updated_at=now, **values)
        .returning(tasks.c.task_id)
    )
    if result.first() is None:
        return False
    await record_transitions(conn, rows=[(task_id, from_status, to_status, actor, reason)], now=now)
    return True


@dataclass(frozen=True, slots=True)
class Change:
    """What one task update does to its task: new status, new column values, audit reason."""

    to_status: str
    reason: str
    values: dict[str, Any] = field(default_factory=dict)


def plan_update(task: Mapping[str, Any], update: TaskUpdate) -> Change | None:
    """The change ``update`` makes to ``task`` (its current row), or None if it does nothing.

    Pure, so the rules are testable without a database. An update that would
    change nothing returns None; with the ``update_id`` check in
    ``apply_updates`` this makes every update idempotent.
    """
    status, stoppable = task["status"], task["status"] in STOPPABLE[task["channel"]]
    if update.action is TaskAction.CANCEL:
        # A task already sent, failed, done or cancelled is history: left alone.
        return Change(CANCELLED, update.reason) if stoppable else None
    if update.action is TaskAction.CLOSE:
        new_outcome = update.outcome is not None and update.outcome != task["outcome"]
        values = {"outcome": update.outcome} if new_outcome else {}
        if stoppable:
            note = f"; outcome {update.outcome} recorded" if new_outcome else ""
            return Change(CANCELLED, f"{update.reason}{note}", values)
        if new_outcome:
            # The task is already over; only the outcome is news. The audit row
            # keeps the status (from = to) and says what was recorded.
            return Change(status, f"outcome {update.outcome} recorded: {update.reason}", values)
        return None
    # Reroute: only a call nobody has taken yet can change queue.
    if (
        task["channel"] == Channel.CALL.value
        and status == CallStatus.QUEUED
        and update.queue
        and update.queue != task["queue"]
    ):
        return Change(
            status, f"rerouted to {update.queue}: {update.reason}", {"queue": update.queue}
        )
    return None


async def apply_updates(
    conn: AsyncConnection, *, updates: Sequence[TaskUpdate], now: datetime
) -> list[tuple[TaskUpdate, UpdateResult]]:
    """Apply task updates in order, idempotently; return what became of each.

    The ``update_id`` of every applied update is stored on its audit row
    (unique), so a redelivered update is recognised and changes nothing, even
    after later updates moved the task on (a replayed batch of two reroutes
    must not move the call back and forth). An update that changes nothing
    (the task is already final, the call already left the queue) leaves no
    row and is reported ``ignored``; one for a task outreach does not have is
    ``unknown_task``.
    """
    if not updates:
        return []
    ids = {u.update_id for u in updates}
    done: set[uuid.UUID] = set(
        (
            await conn.execute(
                select(task_transitions.c.update_id).where(
                    task_transitions.c.update_id.in_(sorted(ids))
                )
            )
        ).scalars()
    )
    # Lock the tasks until our commit: the statuses written back below are
    # computed from what is read here, so the dispatcher must not move them in
    # between (its claim skips locked rows; it cannot start sending an SMS this
    # batch cancels). task_id order: two replicas briefly handling the same
    # partition (a rebalance) lock in the same order and do not deadlock.
    current: dict[uuid.UUID, dict[str, Any]] = {
        row.task_id: dict(row._mapping)
        for row in await conn.execute(
            select(
                tasks.c.task_id,
                tasks.c.channel,
                tasks.c.status,
                tasks.c.queue,
                tasks.c.outcome,
                tasks.c.end_cause,
            )
            .where(tasks.c.task_id.in_(sorted({u.task_id for u in updates})))
            .order_by(tasks.c.task_id)
            .with_for_update()
        )
    }
    results: list[tuple[TaskUpdate, UpdateResult]] = []
    audit: list[dict[str, Any]] = []
    news: list[tuple[uuid.UUID, str, str | None]] = []  # outcomes to publish
    changed: set[uuid.UUID] = set()
    for u in updates:
        task = current.get(u.task_id)
        if u.update_id in done:
            results.append((u, UpdateResult.IGNORED))  # applied before: a redelivery
            continue
        if task is None:
            results.append((u, UpdateResult.UNKNOWN_TASK))
            continue
        change = plan_update(task, u)
        if change is None:
            results.append((u, UpdateResult.IGNORED))
            continue
        # Applied to the in-memory row first, so later updates of the batch see it.
        audit.append(
            {
                "task_id": u.task_id,
                "from_status": task["status"],
                "to_status": change.to_status,
                "actor": ALERTING,
                "reason": change.reason,
                "at": now,
                "update_id": u.update_id,
            }
        )
        if change.to_status == CANCELLED and task["status"] != CANCELLED:
            change.values["end_cause"] = u.cause.value
            news.append((u.task_id, change.to_status, change.reason))
        elif "outcome" in change.values:
            # An outcome on a finished task (won back after the SMS went out) is news.
            news.append((u.task_id, change.to_status, change.reason))
        task.update(change.values, status=change.to_status)
        changed.add(u.task_id)
        done.add(u.update_id)  # a duplicate later in the same batch is a no-op
        results.append((u, UpdateResult.APPLIED))
    if changed:
        await conn.execute(
            update(tasks)
            .where(tasks.c.task_id == bindparam("b_task_id"))
            .values(
                status=bindparam("b_status"),
                queue=bindparam("b_queue"),
                outcome=bindparam("b_outcome"),
                end_cause=bindparam("b_end_cause"),
                updated_at=now,
            ),
            [
                {
                    "b_task_id": task_id,
                    "b_status": current[task_id]["status"],
                    "b_queue": current[task_id]["queue"],
                    "b_outcome": current[task_id]["outcome"],
                    "b_end_cause": current[task_id]["end_cause"],
                }
                for task_id in sorted(changed)
            ],
        )
        await conn.execute(insert(task_transitions).values(audit))
        await enqueue_outcomes(conn, changes=news, now=now)
    return results


async def expire_overdue_sms(conn: AsyncConnection, *, now: datetime) -> int:
    """Pending SMS past their due time expire: a reminder after the suspension is useless."""
    rows = await conn.execute(
        update(tasks)
        .where(
            tasks.c.channel == Channel.SMS.value,
            tasks.c.status == SmsStatus.PENDING,
            tasks.c.due_at.is_not(None),
            tasks.c.due_at < now,
        )
        .values(status=SmsStatus.EXPIRED, updated_at=now)
        .returning(tasks.c.task_id)
    )
    expired = list(rows.scalars())
    await record_transitions(
        conn,
        rows=[
            (t, SmsStatus.PENDING, SmsStatus.EXPIRED, "dispatcher", "past due time")
            for t in expired
        ],
        now=now,
    )
    return len(expired)


async def claim_sms(
    conn: AsyncConnection, *, limit: int, now: datetime, stale_before: datetime
) -> list[dict[str, Any]]:
    """Claim SMS tasks ready to send and mark them ``sending``.

    ``FOR UPDATE SKIP LOCKED`` lets several outreach replicas dispatch without
    taking the same task. A task stuck in ``sending`` since before
    ``stale_before`` (a crash mid-send) is claimed again; the provider's
    idempotency key makes the resend harmless.
    """
    ready = or_(
        and_(
            tasks.c.status == SmsStatus.PENDING,
            or_(tasks.c.next_attempt_at.is_(None), tasks.c.next_attempt_at <= now),
        ),
        and_(tasks.c.status == SmsStatus.SENDING, tasks.c.updated_at < stale_before),
    )
    candidates = (
        select(tasks.c.task_id)
        .where(tasks.c.channel == Channel.SMS.value, ready)
        .order_by(tasks.c.priority.desc(), tasks.c.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    old = select(tasks.c.task_id, tasks.c.status).where(tasks.c.task_id.in_(candidates)).cte()
    rows = await conn.execute(
        update(tasks)
        .where(tasks.c.task_id == old.c.task_id)
        .values(status=SmsStatus.SENDING, attempts=tasks.c.attempts + 1, updated_at=now)
        .returning(*tasks.c, old.c.status.label("previous_status"))
    )
    claimed = [dict(r._mapping) for r in rows]
    await record_transitions(
        conn,
        rows=[
            (
                r["task_id"],
                r["previous_status"],
                SmsStatus.SENDING,
                "dispatcher",
                f"attempt {r['attempts']}",
            )
            for r in claimed
        ],
        now=now,
    )
    return claimed


def encode_cursor(created_at: datetime, task_id: uuid.UUID) -> str:
    """An opaque cursor for keyset pagination."""
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{task_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Read a cursor from ``encode_cursor``; a malformed one is a 400."""
    try:
        created, task_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(created), uuid.UUID(task_id)
    except ValueError as exc:
        raise BadRequest("cursor is malformed") from exc


async def list_tasks(
    conn: AsyncConnection,
    *,
    subscriber_id: str | None = None,
    kind: str | None = None,
    status: str | None = None,
    channel: str | None = None,
    queue: str | None = None,
    limit: int,
    cursor: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of tasks, newest first, and the cursor of the next page (None at the end)."""
    query = select(tasks)
    for column, value in (
        ("subscriber_id", subscriber_id),
        ("kind", kind),
        ("status", status),
        ("channel", channel),
        ("queue", queue),
    ):
        if value is not None:
            query = query.where(tasks.c[column] == value)
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
