"""Delivery receipts: the provider's word that an SMS was delivered or failed."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach.schemas import SmsStatus
from services.outreach.service.tasks import FINAL_STATES, transition
from services.outreach.tables import tasks
from shared.events import Channel


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
