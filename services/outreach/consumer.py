"""Outreach's batch handler: store tasks once, wake the SMS dispatcher."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from aiokafka import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach import metrics, service
from shared.consumer import Inbound, Outbox
from shared.events import Channel, OutreachTask


def parse_record(record: ConsumerRecord[bytes, bytes]) -> OutreachTask:
    """Parse a task message; failures go to the DLQ."""
    if record.value is None:
        raise ValueError("empty message")
    return OutreachTask.model_validate_json(record.value)


class OutreachHandler:
    """Stores every new task; SMS tasks are then sent by the dispatcher."""

    def __init__(self, wakeup: asyncio.Event) -> None:
        self.wakeup = wakeup

    async def __call__(
        self, conn: AsyncConnection, batch: Sequence[Inbound[OutreachTask]], outbox: Outbox
    ) -> None:
        """Store the batch's tasks idempotently on task_id."""
        stored = await service.store_tasks(
            conn, new_tasks=[item.value for item in batch], now=datetime.now(UTC)
        )
        for task in stored:
            metrics.TASKS_STORED.labels(task.kind.value, task.channel.value).inc()
        if any(t.channel is Channel.SMS for t in stored):
            # Set before our commit: if the dispatcher looks too early it finds the
            # task on its next tick (OUTREACH_DISPATCH_INTERVAL_S), never loses it.
            self.wakeup.set()
