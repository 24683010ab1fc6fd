"""Alerting's task updates (cancel, close, reroute): planned per task, applied idempotently."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach.schemas import CallStatus
from services.outreach.service.tasks import CANCELLED, STOPPABLE, enqueue_outcomes
from services.outreach.tables import task_transitions, tasks
from shared.events import Channel, TaskAction, TaskUpdate

ALERTING = "alerting"
"""Actor of the audit rows that alerting's messages cause."""


class UpdateResult(StrEnum):
    """What became of one task update (the ``result`` label of its metric)."""

    APPLIED = "applied"
    IGNORED = "ignored"
    UNKNOWN_TASK = "unknown_task"


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
