"""Outreach's database work. Keyword-only; never commits: the caller owns the transaction."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import ValidationError
from sqlalchemy import (
    ColumnElement,
    Text,
    and_,
    bindparam,
    cast,
    delete,
    func,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach.models import opt_outs, outbox, task_transitions, tasks
from services.outreach.schemas import CallStatus, SmsStatus, TaskCreate
from shared.crypto import ENCRYPTED_PREFIXES, phone_hash, phone_keyring
from shared.errors import BadRequest, Conflict, NotFound, UnprocessableEntity
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
    Channel.SMS.value: frozenset({SmsStatus.PENDING, SmsStatus.SCHEDULED}),
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
) -> list[OutreachTask]:
    """Store tasks idempotently on ``task_id``; return the ones that were new.

    ``created_by`` and ``client_key`` are for tasks made through the API (one
    task per call, idempotent on the client's key as well). ``sms_hold_until``:
    no SMS is sent before then (``OUTREACH_SMS_HOLD_S``).
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
    ``unknown_task``. A cancel or close that comes too late to stop its task
    still records its cause as the task's ``end_cause`` if it has none (the
    reminder KPI needs to know who paid).
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
    late_causes: dict[uuid.UUID, str] = {}  # end causes of tasks too far along to stop
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
            if u.action is not TaskAction.REROUTE and task["end_cause"] is None:
                # Too late to stop (the reminder went out), but why alerting wanted
                # it stopped still counts: the reminder KPI leaves out subscribers
                # who paid. No status change, no audit row, updated_at untouched.
                task["end_cause"] = late_causes[u.task_id] = u.cause.value
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
    if late_causes:
        await conn.execute(
            update(tasks)
            .where(tasks.c.task_id == bindparam("b_task_id"), tasks.c.end_cause.is_(None))
            .values(end_cause=bindparam("b_end_cause")),
            [{"b_task_id": k, "b_end_cause": v} for k, v in sorted(late_causes.items())],
        )
    return results


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


class ReceiptResult(StrEnum):
    """What a delivery receipt did (the ``result`` label of its metric, but ``not_sent``)."""

    DELIVERED = "delivered"
    FAILED = "failed"
    DUPLICATE = "duplicate"  # the task was already final: nothing changed
    UNKNOWN = "unknown"  # no SMS with this message id or reference
    NOT_SENT = "not_sent"  # the reference names a task never submitted to the provider


async def _lock_sms_for_receipt(
    conn: AsyncConnection, *, message_id: str, reference: str | None
) -> dict[str, Any] | None:
    """The SMS task a receipt is about, locked: by ``reference`` (our task id), else message id.

    The reference comes first because a receipt can arrive before we stored
    the provider's message id (its answer timed out, or is still on the way).
    A reference whose task already has another message id is not trusted.
    """
    sms = tasks.c.channel == Channel.SMS.value
    if reference:
        try:
            task_id = uuid.UUID(reference)
        except ValueError:
            task_id = None
        if task_id is not None:
            row = (
                await conn.execute(
                    select(tasks).where(tasks.c.task_id == task_id, sms).with_for_update()
                )
            ).first()
            if row is not None and row.provider_message_id in (None, message_id):
                return dict(row._mapping)
    row = (
        await conn.execute(
            select(tasks)
            .where(tasks.c.provider_message_id == message_id, sms)
            .limit(1)
            .with_for_update()
        )
    ).first()
    return None if row is None else dict(row._mapping)


async def apply_receipt(
    conn: AsyncConnection,
    *,
    message_id: str,
    reference: str | None,
    delivered: bool,
    error: str | None,
    at: datetime,
    now: datetime,
    source: str = "provider receipt",
) -> tuple[ReceiptResult, dict[str, Any] | None]:
    """Apply a delivery receipt: ``sent`` → ``delivered`` or ``failed``; return what happened.

    A receipt can overtake the provider's answer to our request (or the
    answer timed out): the task is then still ``sending``, or back in
    ``pending``/``scheduled`` awaiting a retry. The provider has the message,
    so the task is first recorded ``sent`` (and will not be sent again), then
    the receipt applies. A receipt for a task already final changes nothing.
    ``source`` names where the news came from in the audit reasons (the
    reconciler's status query applies its answers here too).
    """
    task = await _lock_sms_for_receipt(conn, message_id=message_id, reference=reference)
    if task is None:
        return ReceiptResult.UNKNOWN, None
    task_id, status = task["task_id"], task["status"]
    via = "" if source == "provider receipt" else f" ({source})"
    if status in FINAL_STATES:
        return ReceiptResult.DUPLICATE, task
    if status != SmsStatus.SENT:
        if task["attempts"] == 0:
            return ReceiptResult.NOT_SENT, task
        await transition(
            conn,
            task_id=task_id,
            from_status=status,
            to_status=SmsStatus.SENT,
            actor="provider",
            reason=f"provider accepted{via or ' (its receipt came before its answer)'}",
            now=now,
            sent_at=at,
            provider_message_id=message_id,
            next_attempt_at=None,
            last_error=None,
        )
    if delivered:
        to_status, reason = SmsStatus.DELIVERED, f"delivered ({source})"
        values: dict[str, Any] = {"delivered_at": at}
        result = ReceiptResult.DELIVERED
    else:
        to_status = SmsStatus.FAILED
        reason = f"delivery failed{via}: {error or 'no reason given'}"[:500]
        values = {"last_error": reason}
        result = ReceiptResult.FAILED
    await transition(
        conn,
        task_id=task_id,
        from_status=SmsStatus.SENT,
        to_status=to_status,
        actor="provider",
        reason=reason,
        now=now,
        **values,
    )
    return result, {**task, "status": to_status}


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


async def subscribers_with_phone(conn: AsyncConnection, *, phone: str) -> list[str]:
    """Every subscriber whose tasks carry this phone number (an inbound reply's sender).

    Phones are stored encrypted, each differently: the keyed hash column (indexed)
    is what can be compared; under every key of the ring, so rows not yet moved to
    a new key (churnwatch phone-keys rotate) are found too.
    """
    hashes = phone_keyring().hashes(phone)
    rows = await conn.execute(
        select(tasks.c.subscriber_id).where(tasks.c.phone_hash.in_(hashes)).distinct()
    )
    return sorted(rows.scalars())


async def encrypt_plain_phones(conn: AsyncConnection, *, batch: int = 1000) -> int:
    """Encrypt up to ``batch`` phones stored before encryption; return how many.

    Migration 0005 cannot (it has no key): the outreach app calls this at start
    until it returns 0. Reading a plain row works meanwhile (see shared.crypto).
    """
    raw = cast(tasks.c.phone, Text)  # the stored text, not the decrypting column type
    rows = (
        await conn.execute(
            select(tasks.c.task_id, raw.label("stored"))
            .where(
                raw.is_not(None),
                # Sealed values (v1: before the keyring, v2: now) are not plain.
                func.left(raw, 3).not_in(ENCRYPTED_PREFIXES),
            )
            .limit(batch)
        )
    ).all()
    for row in rows:
        await conn.execute(
            update(tasks)
            .where(tasks.c.task_id == row.task_id)
            .values(phone=row.stored, phone_hash=phone_hash(row.stored))
        )
    return len(rows)


def encode_cursor(created_at: datetime, task_id: uuid.UUID) -> str:
    """An opaque cursor for keyset pagination."""
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{task_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Read a cursor from ``encode_cursor``; a malformed one is a 400.

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
        raise BadRequest("cursor is malformed") from exc


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
        raise Conflict(
            "this Idempotency-Key was used for a different task",
            details={"task_id": str(row["task_id"])},
        )
    return row


async def create_manual_task(
    conn: AsyncConnection, *, body: TaskCreate, client_key: str, now: datetime
) -> tuple[dict[str, Any], bool]:
    """Make a task by hand, idempotently on ``client_key``; return it and whether it is new.

    The task id is derived from the key, so concurrent requests with one key
    race for one row: the loser finds the winner's task. The same key with
    the same body gives the stored task again (even after its due time); with
    another body it is a 409.
    """
    existing = await _by_client_key(conn, client_key)
    if existing is not None:
        return _replay(existing, body), False
    if body.due_at is not None and body.due_at <= now:
        raise UnprocessableEntity(
            "due_at has passed; the task would expire at once",
            details={"due_at": body.due_at.isoformat()},
        )
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
        raise UnprocessableEntity(
            "the task is invalid",
            details=[{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()],
        ) from exc
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

    404 if there is no such task; 409 if it is already final, or too far along
    to stop (an SMS being sent or sent: the provider has it). A call can be
    cancelled until it is completed, even while an agent works it.
    """
    row = (
        await conn.execute(select(tasks).where(tasks.c.task_id == task_id).with_for_update())
    ).first()
    if row is None:
        raise NotFound(f"no task {task_id}")
    status, channel = row.status, row.channel
    if status in FINAL_STATES:
        raise Conflict(f"task is already {status}", details={"status": status})
    stoppable = STOPPABLE[channel] | (
        {CallStatus.IN_PROGRESS} if channel == Channel.CALL.value else set()
    )
    if status not in stoppable:
        raise Conflict(
            f"an SMS that is {status} cannot be stopped: the provider may have it",
            details={"status": status},
        )
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
