"""Alerting's batch handler: profiles, stop-notices and scores in, outreach tasks out."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from aiokafka import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncConnection

from services.alerting import metrics, rules, service
from services.alerting.models import processed_messages
from services.alerting.settings import AlertingSettings
from shared.consumer import Inbound, Outbox
from shared.db import keep_new
from shared.events import (
    Event,
    OutreachTask,
    RiskScore,
    StopNoticeEvent,
    SubscriberEvent,
    parse_event,
)
from shared.topics import Topics

Message = Event | RiskScore


def make_parser(topics: Topics) -> Callable[[ConsumerRecord[bytes, bytes]], Message | None]:
    """A parser that reads scores from the scores topic and events from the others."""

    def parse(record: ConsumerRecord[bytes, bytes]) -> Message | None:
        if record.value is None:
            raise ValueError("empty message")
        if record.topic == topics.scores:
            return RiskScore.model_validate_json(record.value)
        # Usage records are most of the stream and no rule reads them: ingest's
        # event_type header lets us skip them without parsing.
        if dict(record.headers or ()).get("event_type") == b"cdr":
            return None
        return parse_event(record.value, check_clock=False)

    return parse


def _message_id(message: Message) -> uuid.UUID:
    return message.score_id if isinstance(message, RiskScore) else message.event_id


class AlertingHandler:
    """Turns one batch of events and scores into tasks, once."""

    def __init__(self, settings: AlertingSettings, topics: Topics) -> None:
        self.settings = settings
        self.topics = topics

    async def __call__(
        self, conn: AsyncConnection, batch: Sequence[Inbound[Message | None]], outbox: Outbox
    ) -> None:
        """Store profiles, evaluate rules, record and publish new tasks."""
        now = datetime.now(UTC)
        messages = [item.value for item in batch if item.value is not None]
        todo = await keep_new(
            conn, table=processed_messages, items=messages, key=_message_id, now=now
        )
        metrics.MESSAGES.labels("handled").inc(len(todo))
        metrics.MESSAGES.labels("duplicate").inc(len(messages) - len(todo))
        # Profiles first, in event-time order, so tasks in this batch see them.
        new_profiles = [m for m in todo if isinstance(m, SubscriberEvent)]
        for profile_event in sorted(new_profiles, key=lambda m: m.occurred_at):
            await service.upsert_profile(conn, event=profile_event)
        profiles = await service.load_profiles(conn, subscriber_ids={m.subscriber_id for m in todo})
        candidates: list[OutreachTask] = []
        for message in todo:
            profile = profiles.get(message.subscriber_id, rules.UNKNOWN)
            if isinstance(message, StopNoticeEvent):
                candidates.extend(rules.pre_suspension_tasks(message, profile, now=now))
            elif isinstance(message, RiskScore):
                task = rules.retention_task(message, profile, self.settings, now=now)
                if task is not None:
                    candidates.append(task)
                elif rules.crossed_upward(message, self.settings.alerting_retention_threshold):
                    metrics.SUPPRESSED.labels("retention", "marketing_opt_out").inc()
        for task in await service.record_tasks(conn, new_tasks=candidates):
            await outbox.send(self.topics.tasks, key=task.subscriber_id, value=task)
            metrics.TASKS.labels(task.kind.value, task.channel.value).inc()
