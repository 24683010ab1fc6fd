"""The SMS lifecycle: due and overdue SMS, contact facts, the reconciler's unfinished SMS."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, and_, bindparam, func, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach.schemas import SmsStatus
from services.outreach.service.tasks import record_transitions
from services.outreach.tables import opt_outs, task_transitions, tasks
from shared.events import Channel

SMS_WAITING = (SmsStatus.PENDING, SmsStatus.SCHEDULED)
"""SMS states waiting for an attempt: ``pending`` (now, or after a backoff), ``scheduled``."""

DISPATCHER = "dispatcher"
"""Actor of the audit rows the SMS dispatcher writes."""


async def expire_overdue_sms(
    conn: AsyncConnection, *, now: datetime, stale_before: datetime | None = None
) -> int:
    """SMS not sent by their due time expire: a reminder after the suspension is useless.

    ``pending`` and ``scheduled`` ones; with ``stale_before``, also those stuck
    in ``sending`` since before it (a crash mid-send): resending them now
    would be late. Rows another transaction holds (a receipt, a task update)
    are skipped; the next pass takes them.
    """
    waiting: ColumnElement[bool] = tasks.c.status.in_(SMS_WAITING)
    if stale_before is not None:
        waiting = or_(
            waiting, and_(tasks.c.status == SmsStatus.SENDING, tasks.c.updated_at < stale_before)
        )
    overdue = [
        (r.task_id, r.status)
        for r in await conn.execute(
            select(tasks.c.task_id, tasks.c.status)
            .where(
                tasks.c.channel == Channel.SMS.value,
                waiting,
                tasks.c.due_at.is_not(None),
                tasks.c.due_at < now,
            )
            .with_for_update(skip_locked=True)
        )
    ]
    if not overdue:
        return 0
    await conn.execute(
        update(tasks)
        .where(tasks.c.task_id.in_([t for t, _ in overdue]))
        .values(status=SmsStatus.EXPIRED, updated_at=now, next_attempt_at=None)
    )
    await record_transitions(
        conn,
        rows=[
            (
                task_id,
                status,
                SmsStatus.EXPIRED,
                DISPATCHER,
                "past due time"
                if status != SmsStatus.SENDING
                else "past due time; the outcome of the last attempt is unknown",
            )
            for task_id, status in overdue
        ],
        now=now,
    )
    return len(overdue)


async def lock_due_sms(
    conn: AsyncConnection, *, limit: int, now: datetime, stale_before: datetime
) -> list[dict[str, Any]]:
    """Lock up to ``limit`` SMS tasks due for an attempt, most urgent first.

    Due: ``pending`` or ``scheduled`` with ``next_attempt_at`` passed (or
    unset), or stuck in ``sending`` since before ``stale_before`` (a crash
    mid-send; the provider's idempotency key makes the resend harmless).
    ``FOR UPDATE SKIP LOCKED`` lets several outreach replicas dispatch without
    taking the same task; the locks last until the caller's commit, in which
    the dispatcher records what it decided for each.
    """
    ready = or_(
        and_(
            tasks.c.status.in_(SMS_WAITING),
            or_(tasks.c.next_attempt_at.is_(None), tasks.c.next_attempt_at <= now),
        ),
        and_(tasks.c.status == SmsStatus.SENDING, tasks.c.updated_at < stale_before),
    )
    rows = await conn.execute(
        select(tasks)
        .where(tasks.c.channel == Channel.SMS.value, ready)
        .order_by(tasks.c.priority.desc(), tasks.c.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [dict(r._mapping) for r in rows]


async def next_sms_attempt(conn: AsyncConnection, *, after: datetime) -> datetime | None:
    """When the next waiting SMS becomes due: the earliest ``next_attempt_at`` after ``after``.

    ``pending`` and ``scheduled`` SMS only (held after being stored, backing off,
    deferred by the contact policy); None if none waits for a later time. The
    dispatcher sleeps until then rather than for its whole interval. Strictly
    after ``after``: a task already due but skipped (another transaction holds
    its row) must not make the dispatcher spin; its interval takes it.
    """
    earliest = await conn.scalar(
        select(func.min(tasks.c.next_attempt_at)).where(
            tasks.c.channel == Channel.SMS.value,
            tasks.c.status.in_(SMS_WAITING),
            tasks.c.next_attempt_at > after,
        )
    )
    return cast(datetime | None, earliest)


async def mark_sending(
    conn: AsyncConnection,
    *,
    claimed: Sequence[tuple[uuid.UUID, str, int, str]],
    now: datetime,
) -> None:
    """Move locked SMS tasks to ``sending``, each ``(task_id, from, attempts, reason)``; audit it.

    Two statements however many tasks (one update per task, pipelined, and one
    insert of the audit rows), instead of two round trips each: a pass that
    claims a backlog of fifty no longer spends a hundred round trips before
    its first send. The rows must be locked by the caller's transaction
    (``lock_due_sms``), so their status is still ``from``.
    """
    if not claimed:
        return
    await conn.execute(
        update(tasks)
        # Still guarded by the status, as ``transition`` guards one task.
        .where(tasks.c.task_id == bindparam("b_task_id"), tasks.c.status == bindparam("b_from"))
        .values(status=SmsStatus.SENDING, updated_at=now, attempts=bindparam("b_attempts")),
        [
            {"b_task_id": t, "b_from": from_status, "b_attempts": attempts}
            for t, from_status, attempts, _ in claimed
        ],
    )
    await record_transitions(
        conn,
        rows=[
            (t, from_status, SmsStatus.SENDING, DISPATCHER, reason)
            for t, from_status, _, reason in claimed
        ],
        now=now,
    )


CONTACT_LOCK_CLASS = 0x6F757472
"""First key of the advisory locks that serialise one subscriber's marketing SMS."""


@dataclass(slots=True)
class ContactFacts:
    """What the contact policy needs to know about subscribers about to get marketing SMS."""

    opted_out: set[str]
    sent_marketing: dict[str, list[datetime]]


async def contact_facts(
    conn: AsyncConnection,
    *,
    subscriber_ids: set[str],
    since: datetime,
    now: datetime,
    exclude: set[uuid.UUID],
) -> ContactFacts:
    """Opt-outs, and marketing SMS sent since ``since``, of these subscribers.

    Takes a transaction-scoped advisory lock per subscriber first (sorted, so
    two replicas never deadlock): two replicas deciding about the same
    subscriber's marketing SMS at once would each see the other's as unsent
    and together pass the frequency cap. An SMS in flight (``sending``, not in
    ``exclude``, the tasks being decided) counts as sent ``now``.
    """
    if not subscriber_ids:
        return ContactFacts(set(), {})
    ordered = sorted(subscriber_ids)
    for subscriber_id in ordered:
        await conn.execute(
            select(func.pg_advisory_xact_lock(CONTACT_LOCK_CLASS, func.hashtext(subscriber_id)))
        )
    opted_out = set(
        (
            await conn.execute(
                select(opt_outs.c.subscriber_id).where(opt_outs.c.subscriber_id.in_(ordered))
            )
        ).scalars()
    )
    sent: dict[str, list[datetime]] = {}
    rows = await conn.execute(
        select(tasks.c.subscriber_id, tasks.c.sent_at).where(
            tasks.c.subscriber_id.in_(ordered),
            tasks.c.channel == Channel.SMS.value,
            tasks.c.marketing.is_(True),
            tasks.c.task_id.not_in(sorted(exclude)) if exclude else true(),
            or_(tasks.c.sent_at > since, tasks.c.status == SmsStatus.SENDING),
        )
    )
    for row in rows:
        sent.setdefault(row.subscriber_id, []).append(row.sent_at or now)
    return ContactFacts(opted_out, sent)


UNFINISHED_SMS = (SmsStatus.SENDING, SmsStatus.SENT)
"""SMS states waiting for the provider's word: the reconciler asks about them."""


async def lock_unfinished_sms(
    conn: AsyncConnection,
    *,
    sent_before: datetime,
    sending_before: datetime,
    now: datetime,
    limit: int,
) -> list[dict[str, Any]]:
    """Lock up to ``limit`` SMS tasks in ``sending``/``sent`` to ask the provider about.

    Those ``sent`` unchanged since before ``sent_before``, or ``sending`` since
    before ``sending_before`` (no live dispatcher can still be sending them),
    whose next check (``next_attempt_at``, which these states do not
    otherwise use) is due.
    ``FOR UPDATE SKIP LOCKED``: a row another replica's reconciler (or a
    receipt, or the dispatcher) holds is skipped. Each row carries
    ``started_at``: ``sent_at``, else the first time it went ``sending``,
    which the final-state deadline counts from.
    """
    first_sending = (
        select(func.min(task_transitions.c.at))
        .where(
            task_transitions.c.task_id == tasks.c.task_id,
            task_transitions.c.to_status == SmsStatus.SENDING,
        )
        .scalar_subquery()
    )
    rows = await conn.execute(
        select(
            tasks.c.task_id,
            tasks.c.status,
            tasks.c.provider_message_id,
            tasks.c.updated_at,
            func.coalesce(tasks.c.sent_at, first_sending, tasks.c.updated_at).label("started_at"),
        )
        .where(
            tasks.c.channel == Channel.SMS.value,
            or_(
                and_(tasks.c.status == SmsStatus.SENT, tasks.c.updated_at < sent_before),
                and_(tasks.c.status == SmsStatus.SENDING, tasks.c.updated_at < sending_before),
            ),
            or_(tasks.c.next_attempt_at.is_(None), tasks.c.next_attempt_at <= now),
        )
        .order_by(tasks.c.updated_at)
        .limit(limit)
        .with_for_update(skip_locked=True, of=tasks)
    )
    return [dict(r._mapping) for r in rows]


async def defer_checks(conn: AsyncConnection, *, until: Mapping[uuid.UUID, datetime]) -> None:
    """Set each task's next provider check (``next_attempt_at``); the state is unchanged.

    Written before asking, in the transaction that locked the rows: other
    replicas do not ask about them again before then.
    """
    if not until:
        return
    await conn.execute(
        update(tasks)
        .where(tasks.c.task_id == bindparam("b_task_id"))
        .values(next_attempt_at=bindparam("b_until")),
        [{"b_task_id": t, "b_until": at} for t, at in sorted(until.items())],
    )


async def oldest_unfinished_sms(conn: AsyncConnection, *, now: datetime) -> float:
    """Seconds the oldest SMS in ``sending``/``sent`` has waited for a final state; 0 if none."""
    since = await conn.scalar(
        select(func.min(func.coalesce(tasks.c.sent_at, tasks.c.updated_at))).where(
            tasks.c.channel == Channel.SMS.value, tasks.c.status.in_(UNFINISHED_SMS)
        )
    )
    return max(0.0, (now - since).total_seconds()) if since is not None else 0.0
