"""Storing tasks and moving them between states: the audit trail and the outcome outbox."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach.schemas import CallStatus, SmsStatus
from services.outreach.tables import outbox, task_transitions, tasks
from shared.crypto import phone_hash
from shared.events import Channel, OutreachTask, TaskKind, TaskOutcome, Tier, derive_id

# States from which alerting may still stop a task (cancel, or close with an
# outcome). An SMS in 'sending' is not among them: the provider may already
# have it, and the dispatcher records what happened to it.
STOPPABLE: Mapping[str, frozenset[str]] = {
    Channel.SMS.value: frozenset({SmsStatus.PENDING, SmsStatus.SCHEDULED}),
    Channel.CALL.value: frozenset({CallStatus.QUEUED, CallStatus.ASSIGNED}),
}


CANCELLED = "cancelled"
"""The state of a stopped task, with the same name for both channels."""


def initial_status(
    channel: Channel, *, not_before: datetime | None = None, now: datetime | None = None
) -> str:
    """Where a new task starts: SMS wait to be sent, calls wait in the queue.

    An SMS whose ``not_before`` is still ahead of ``now`` is ``scheduled`` (for
    then) rather than ``pending``, so its state says why it is not going yet.
    """
    if channel is not Channel.SMS:
        return CallStatus.QUEUED
    if not_before is not None and now is not None and not_before > now:
        return SmsStatus.SCHEDULED
    return SmsStatus.PENDING


def _suspension_at(task: OutreachTask) -> datetime | None:
    """A reminder's suspension time (from its params), for the KPI."""
    raw = task.params.get("suspension_at")
    if task.kind is not TaskKind.PRE_SUSPENSION_REMINDER or not raw:
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        return None


def _first_attempt(task: OutreachTask, hold_until: datetime | None) -> datetime | None:
    """When an SMS may first be sent: its ``not_before``, and not before the hold ends.

    The hold lets a cancellation already on its way overtake the task (a payment
    handled by alerting just after the notice it clears); the dispatcher then
    re-checks the task in the transaction that claims it.
    """
    if task.channel is not Channel.SMS:
        return None
    times = [t for t in (task.not_before, hold_until) if t is not None]
    return max(times) if times else None


async def store_tasks(
    conn: AsyncConnection,
    *,
    new_tasks: Sequence[OutreachTask],
    now: datetime,
    created_by: str = "alerting",
    client_key: str | None = None,
    sms_hold_until: datetime | None = None,
    traceparents: Mapping[uuid.UUID, str] | None = None,
) -> list[OutreachTask]:
    """Store tasks idempotently on ``task_id``; return the ones that were new.

    ``created_by`` and ``client_key`` are for tasks made through the API (one
    task per call, idempotent on the client's key as well). ``sms_hold_until``:
    no SMS is sent before then (``OUTREACH_SMS_HOLD_S``). ``traceparents``: a
    task's trace context by id (tracing on), kept for the SMS send's span.
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
                    "status": initial_status(t.channel, not_before=t.not_before, now=now),
                    "subscriber_id": t.subscriber_id,
                    "tier": t.tier.value,
                    "phone": t.phone,
                    "phone_hash": phone_hash(t.phone),
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
                    "next_attempt_at": _first_attempt(t, sms_hold_until),
                    "suspension_at": _suspension_at(t),
                    "created_by": created_by,
                    "client_key": client_key,
                    "created_at": t.created_at,
                    "updated_at": now,
                    "traceparent": traceparents.get(t.task_id) if traceparents else None,
                }
                for t in unique
            ]
        )
        # No conflict target: a manual task conflicts on task_id and client_key
        # at once, and with a named target PostgreSQL may report the other
        # index's violation to the request that lost the race.
        .on_conflict_do_nothing()
        .returning(tasks.c.task_id)
    )
    fresh = set(rows.scalars())
    stored = [t for t in unique if t.task_id in fresh]
    await record_transitions(
        conn,
        rows=[
            (
                t.task_id,
                None,
                initial_status(t.channel, not_before=t.not_before, now=now),
                created_by,  # 'alerting', or the API client that made it
                "task created",
            )
            for t in stored
        ],
        now=now,
    )
    return stored


FINAL_STATES = frozenset(
    {
        SmsStatus.DELIVERED,
        SmsStatus.FAILED,
        SmsStatus.EXPIRED,
        SmsStatus.UNKNOWN,
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
            # A final state happens once per task; a non-final outcome (a callback)
            # may happen again, so its time is part of its identity.
            outcome_id=derive_id(
                "outcome", task_id, status, row.outcome, *([] if status in FINAL_STATES else [now])
            ),
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
