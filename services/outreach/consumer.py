"""Outreach's batch handler: store new tasks, apply task updates, wake the SMS dispatcher."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from aiokafka import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach import metrics, service
from shared.clock import StreamClock, WallClock
from shared.consumer import Inbound
from shared.crypto import open_phone
from shared.events import TASK_MESSAGE_ADAPTER, Channel, OutreachTask, TaskUpdate
from shared.outbox import Outbox
from shared.tracing import traceparent

log = logging.getLogger(__name__)

TaskMessage = OutreachTask | TaskUpdate


def parse_record(record: ConsumerRecord[bytes, bytes]) -> TaskMessage:
    """Parse a message of the tasks topic (a task or a task update); failures go to the DLQ.

    A task's phone travels sealed: it is opened here, so the task is stored with
    its lookup hash (the column seals it again). A phone under a key outreach does
    not hold is a ValueError naming the key id, so the task is dead-lettered
    (replay it once the key is in PHONE_OLD_KEYS) instead of blocking the topic.
    """
    if record.value is None:
        raise ValueError("empty message")
    message = TASK_MESSAGE_ADAPTER.validate_json(record.value)
    if isinstance(message, OutreachTask) and message.phone is not None:
        message = message.model_copy(update={"phone": open_phone(message.phone)})
    return message


class OutreachHandler:
    """Stores every new task and applies task updates; the dispatcher then sends SMS."""

    def __init__(
        self,
        sms_due: Callable[[datetime], None],
        *,
        sms_hold_s: float = 0.0,
        clock: WallClock | StreamClock | None = None,
    ) -> None:
        """``sms_due``: the dispatcher's ``expect``, so that it wakes when new SMS are due.

        It is told, once a batch that stored SMS tasks is committed, when its
        new SMS may first go. ``sms_hold_s``: how long a new SMS task waits before it may be sent.
        ``clock``: a ``StreamClock`` is moved on to each consumed task's time.
        """
        self.sms_due = sms_due
        self.sms_hold = timedelta(seconds=sms_hold_s)
        self.clock = clock or WallClock()

    async def __call__(
        self, conn: AsyncConnection, batch: Sequence[Inbound[TaskMessage]], outbox: Outbox
    ) -> None:
        """Store the batch's tasks (idempotent on task_id), then apply its updates in order.

        Tasks go first: an update is keyed by subscriber like its task, so it
        comes after the task on the topic, possibly in the same batch.
        """
        new_tasks = [item.value for item in batch if isinstance(item.value, OutreachTask)]
        updates = [item.value for item in batch if isinstance(item.value, TaskUpdate)]
        if isinstance(self.clock, StreamClock):
            for task in new_tasks:
                self.clock.observe(task.created_at)
            for update in updates:
                self.clock.observe(update.at)
        now = self.clock.now()
        traceparents = None
        if batch[0].context is not None:  # tracing on: the SMS send joins the task's trace
            traceparents = {
                item.value.task_id: parent
                for item in batch
                if isinstance(item.value, OutreachTask)
                and (parent := traceparent(item.context)) is not None
            }
        stored = await service.store_tasks(
            conn,
            new_tasks=new_tasks,
            now=now,
            sms_hold_until=now + self.sms_hold,
            traceparents=traceparents,
        )
        for task in stored:
            metrics.TASKS_STORED.labels(task.kind.value, task.channel.value).inc()
        for update, result in await service.apply_updates(conn, updates=updates, now=now):
            metrics.TASK_UPDATES.labels(update.action.value, result.value).inc()
            if result is service.UpdateResult.UNKNOWN_TASK:
                # Alerting only updates tasks it published, so outreach lost one
                # (dead-lettered?) or the topics were mixed up: worth a look.
                log.warning(
                    "task update for an unknown task ignored",
                    extra={
                        "update_id": str(update.update_id),
                        "task_id": str(update.task_id),
                        "action": update.action.value,
                    },
                )
        if any(t.channel is Channel.SMS for t in stored):
            # After our commit: woken before it, the dispatcher could look before the
            # task is visible and, not knowing its due time, sleep its whole interval
            # (OUTREACH_DISPATCH_INTERVAL_S) past the hold's end. No SMS of the batch
            # goes before the hold's end (a later not_before only defers it more).
            sms_due, first = self.sms_due, now + self.sms_hold
            outbox.after_commit(lambda: sms_due(first))
