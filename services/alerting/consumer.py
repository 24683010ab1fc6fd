"""Alerting's batch handler and dwell sweep on PostgreSQL: the batch core (batch.py) live."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime

import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord
from opentelemetry.context import Context
from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.alerting import metrics, service
from services.alerting.batch import Decisions, Message, message_id, process_batch, sweep_due
from services.alerting.rule_engine import Alert, RuleEngine, Silence, SubscriberView
from services.alerting.rules import ScoreTrigger
from services.alerting.settings import AlertingSettings
from services.alerting.tables import processed_messages, subscriber_facts, subscribers
from shared import metrics as shared_metrics
from shared.consumer import Inbound
from shared.db import keep_new
from shared.events import (
    OutreachTask,
    RiskScore,
    SubscriberEvent,
    Tier,
    parse_event,
)
from shared.outbox import Outbox
from shared.periodic import Periodic
from shared.topics import Topics
from shared.tracing import headers

log = logging.getLogger(__name__)

__all__ = ["AlertingHandler", "Message", "PostgresStore", "Sweeper", "make_parser", "publish"]


def make_parser(topics: Topics) -> Callable[[ConsumerRecord[bytes, bytes]], Message | None]:
    """A parser that reads scores from the scores topic and events from the others."""

    def parse(record: ConsumerRecord[bytes, bytes]) -> Message | None:
        if record.value is None:
            raise ValueError("empty message")
        if record.topic == topics.scores:
            return RiskScore.model_validate_json(record.value)
        # Usage records are most of the stream and no rule reads them: ingest's
        # event_type header lets us skip them without validating them. The payload
        # decides, never the header alone: a record whose header says usage but whose
        # payload is another event is handled as that event (and counted).
        if dict(record.headers or ()).get("event_type") == b"cdr":
            decoded = orjson.loads(record.value)
            if isinstance(decoded, dict) and decoded.get("event_type") == "cdr":
                return None
            shared_metrics.HEADER_MISMATCHES.labels("alerting", record.topic).inc()
            log.warning(
                "an event_type header disagreed with its payload; the payload wins",
                extra={
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                },
            )
        return parse_event(record.value, check_clock=False)

    return parse


class PostgresStore:
    """``AlertingStore`` on PostgreSQL: ``service``'s functions on the batch's connection.

    The caller owns the transaction: the views stay locked until it ends, and
    the capacity decisions are serialised per manager and day within it.
    """

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def keep_new(self, messages: Sequence[Message], *, now: datetime) -> list[Message]:
        """Record the ids in ``processed_messages``; return the messages never seen."""
        return await keep_new(
            self.conn, table=processed_messages, items=messages, key=message_id, now=now
        )

    async def upsert_profiles(self, *, events: Sequence[SubscriberEvent]) -> None:
        """Store the newest profiles (``service.upsert_profiles``)."""
        await service.upsert_profiles(self.conn, events=events)

    async def load_views(
        self, *, subscriber_ids: Iterable[str], skip_locked: bool = False
    ) -> dict[str, SubscriberView]:
        """Load and lock the views (``service.load_views``)."""
        return await service.load_views(
            self.conn, subscriber_ids=subscriber_ids, skip_locked=skip_locked
        )

    async def active_silences(self, *, now: datetime) -> list[Silence]:
        """Silences in force (``service.active_silences``)."""
        return await service.active_silences(self.conn, now=now)

    async def save_views(
        self,
        *,
        views: Iterable[SubscriberView],
        new_alerts: Sequence[tuple[Alert, Sequence[OutreachTask]]],
        held_out: set[uuid.UUID],
        now: datetime,
    ) -> None:
        """Store what the engine changed (``service.save_views``)."""
        await service.save_views(
            self.conn, views=views, new_alerts=new_alerts, held_out=held_out, now=now
        )

    async def manager_day_load(
        self, *, manager_id: str, day: date, queue: str
    ) -> list[tuple[uuid.UUID, float]]:
        """The manager's day, locked (``service.manager_day_load``)."""
        return await service.manager_day_load(
            self.conn, manager_id=manager_id, day=day, queue=queue
        )

    async def assign_capacity(
        self, *, task_id: uuid.UUID, manager_id: str, day: date, queue: str
    ) -> None:
        """Record the task's queue and manager-day (``service.assign_capacity``)."""
        await service.assign_capacity(
            self.conn, task_id=task_id, manager_id=manager_id, day=day, queue=queue
        )

    async def task_subscriber(self, *, task_id: uuid.UUID) -> str:
        """The task's subscriber (``service.task_subscriber``)."""
        return await service.task_subscriber(self.conn, task_id=task_id)

    async def due_pending(self, *, pending_before: datetime, limit: int) -> list[str]:
        """Subscribers whose dwell may have elapsed (``service.due_pending``)."""
        return await service.due_pending(self.conn, pending_before=pending_before, limit=limit)


async def publish(
    decisions: Decisions,
    *,
    outbox: Outbox,
    topics: Topics,
    contexts: Mapping[uuid.UUID | str, Context] | None = None,
) -> None:
    """Send what a batch or sweep decided through the ``Outbox`` and count it.

    The caller waits for every acknowledgement before committing, so a crash
    re-runs the batch and the deterministic ids make the re-run publish the
    same messages (outreach stores them once). ``contexts`` (tracing on): the
    trace context of each message id and subscriber of the batch; a task goes
    out with its cause's, an update with its subscriber's (``shared.tracing``).
    """
    for message in decisions.publish:
        trace_headers = None
        if contexts is not None:
            cause = message.cause_event_id if isinstance(message, OutreachTask) else None
            context = contexts.get(cause) if cause is not None else None
            trace_headers = headers(context or contexts.get(message.subscriber_id))
        await outbox.send(
            topics.tasks, key=message.subscriber_id, value=message, headers=trace_headers
        )
        if isinstance(message, OutreachTask):
            metrics.TASKS.labels(message.kind.value, message.channel.value).inc()
        else:
            metrics.TASK_UPDATES.labels(message.action.value).inc()
    for spill in decisions.spilled:
        metrics.SPILLED.labels(spill).inc()
    for rule, tier in decisions.effects.fired:
        metrics.FIRED.labels(rule, tier).inc()
    for rule, reason in decisions.effects.suppressed:
        metrics.SUPPRESSED.labels(rule, reason).inc()


class AlertingHandler:
    """Turns one batch of events and scores into tasks and task updates, once."""

    def __init__(self, engine: RuleEngine, topics: Topics) -> None:
        self.engine = engine
        self.topics = topics

    async def __call__(
        self, conn: AsyncConnection, batch: Sequence[Inbound[Message | None]], outbox: Outbox
    ) -> None:
        """Store profiles, run every new message through the rules, store and publish."""
        now = datetime.now(UTC)
        messages = [item.value for item in batch if item.value is not None]
        decisions = await process_batch(
            messages, store=PostgresStore(conn), engine=self.engine, now=now
        )
        metrics.MESSAGES.labels("handled").inc(len(decisions.handled))
        metrics.MESSAGES.labels("duplicate").inc(decisions.duplicates)
        if not decisions.handled:
            return
        contexts: dict[uuid.UUID | str, Context] | None = None
        if batch[0].context is not None:  # tracing on
            contexts = {}
            for item in batch:
                if item.value is not None and item.context is not None:
                    contexts[message_id(item.value)] = item.context
                    contexts[item.value.subscriber_id] = item.context
        await publish(decisions, outbox=outbox, topics=self.topics, contexts=contexts)
        # Score -> decision latency; tasks a score fires go out in this same batch.
        for message in decisions.handled:
            if isinstance(message, RiskScore):
                latency = (now - message.scored_at).total_seconds()
                metrics.SCORE_TO_DECISION_SECONDS.observe(max(latency, 0.0))


async def export_subscriber_counts(conn: AsyncConnection) -> None:
    """Set ``churnwatch_alerting_subscribers`` by tier and state (the churn-rate KPI's base).

    Tiers are a closed enum, so the label set stays small whatever the population.
    """
    state = case((subscriber_facts.c.churned_at.is_(None), "active"), else_="churned")
    query = (
        select(subscribers.c.tier, state.label("state"), func.count())
        .select_from(
            subscribers.outerjoin(
                subscriber_facts, subscriber_facts.c.subscriber_id == subscribers.c.subscriber_id
            )
        )
        .group_by(subscribers.c.tier, state)
    )
    counts = {(tier, label): count for tier, label, count in (await conn.execute(query)).all()}
    # Every tier and state, zeros included: a state that emptied must not keep its old value.
    for tier in Tier:
        for label in ("active", "churned"):
            metrics.SUBSCRIBERS.labels(tier.value, label).set(counts.get((tier.value, label), 0))


class Sweeper:
    """Fires score rules whose dwell elapsed with no newer score; refreshes the gauges.

    Scores are published only when they move, so a subscriber who crossed a
    threshold and stayed there sends nothing more: without this sweep, a rule
    with a dwell would wait for their next score forever.
    """

    def __init__(
        self,
        settings: AlertingSettings,
        engine: RuleEngine,
        db: AsyncEngine,
        topics: Topics,
        producer: Callable[[], AIOKafkaProducer | None],
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.db = db
        self.topics = topics
        self.producer = producer
        self._loop = Periodic(
            self._sweep,
            interval_s=lambda: self.settings.alerting_sweep_interval_s,
            log=log,
            failure="alerting sweep failed; retrying next interval",
        )
        self.min_dwell = min(
            (trigger.dwell for _, trigger in engine.rules.triggered(ScoreTrigger)), default=None
        )

    async def sweep_once(self, *, now: datetime | None = None) -> int:
        """One pass; returns how many subscribers were evaluated."""
        now = now or datetime.now(UTC)
        producer = self.producer()
        if producer is None:
            return 0
        evaluated = 0
        async with self.db.connect() as conn, conn.begin():
            if self.min_dwell is not None:
                decisions = await sweep_due(
                    store=PostgresStore(conn),
                    engine=self.engine,
                    now=now,
                    pending_before=now - self.min_dwell,
                    limit=self.settings.alerting_sweep_batch,
                )
                outbox = Outbox(producer)
                await publish(decisions, outbox=outbox, topics=self.topics)
                # Acknowledged before the state change commits: at least once.
                await outbox.flush()
                evaluated = decisions.subscribers
            counts = await service.open_task_counts(conn, now=now)
            await export_subscriber_counts(conn)
        for kind in {*counts, *metrics.OPEN_KINDS}:
            metrics.OPEN_TASKS.labels(kind).set(counts.get(kind, 0))
        return evaluated

    async def run(self) -> None:
        """Sweep every ``ALERTING_SWEEP_INTERVAL_S`` until stopped; errors are logged, not fatal."""
        await self._loop.run()

    async def _sweep(self) -> None:
        try:
            await self.sweep_once()
        except Exception:
            metrics.SWEEP_ERRORS.inc()
            raise  # the loop logs it and sweeps again after the interval

    def stop(self) -> None:
        """Ask ``run`` to return after the pass in hand."""
        self._loop.stop()
