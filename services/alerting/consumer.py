"""Alerting's batch handler and dwell sweep: events and scores in, tasks and updates out."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord
from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.alerting import metrics, service
from services.alerting.engine import (
    Effects,
    Engine,
    SubscriberView,
    allocate,
    capacity_day,
)
from services.alerting.models import processed_messages, subscriber_facts, subscribers
from services.alerting.rules import ScoreTrigger
from services.alerting.settings import AlertingSettings
from shared import metrics as shared_metrics
from shared.consumer import Inbound, Outbox
from shared.db import keep_new
from shared.events import (
    Event,
    OutreachTask,
    RiskScore,
    SubscriberEvent,
    TaskAction,
    TaskUpdate,
    Tier,
    UpdateCause,
    derive_id,
    parse_event,
)
from shared.periodic import Periodic
from shared.topics import Topics

log = logging.getLogger(__name__)

Message = Event | RiskScore


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


def _message_id(message: Message) -> uuid.UUID:
    return message.score_id if isinstance(message, RiskScore) else message.event_id


async def apply_effects(
    conn: AsyncConnection,
    *,
    engine: Engine,
    views: dict[str, SubscriberView],
    effects: Effects,
    outbox: Outbox,
    topics: Topics,
    now: datetime,
) -> None:
    """Store what the engine decided, fit calls into managers' days, then publish.

    Publishing goes through the ``Outbox``: the caller waits for every
    acknowledgement before committing, so a crash re-runs the batch and the
    deterministic ids make the re-run publish the same messages (outreach
    stores them once).
    """
    held_out = {t.task_id for t in effects.held_out}
    await service.save_views(
        conn, views=views.values(), new_alerts=effects.new_alerts, held_out=held_out, now=now
    )
    outbound = list(effects.outbound)
    reroutes: list[TaskUpdate] = []
    for i, message in enumerate(outbound):
        if isinstance(message, OutreachTask) and message.task_id in effects.capacity_tasks:
            outbound[i] = await _fit_capacity(conn, engine=engine, task=message, reroutes=reroutes)
    for message in [*outbound, *reroutes]:
        await outbox.send(topics.tasks, key=message.subscriber_id, value=message)
        if isinstance(message, OutreachTask):
            metrics.TASKS.labels(message.kind.value, message.channel.value).inc()
        else:
            metrics.TASK_UPDATES.labels(message.action.value).inc()
    for rule, tier in effects.fired:
        metrics.FIRED.labels(rule, tier).inc()
    for rule, reason in effects.suppressed:
        metrics.SUPPRESSED.labels(rule, reason).inc()


async def _fit_capacity(
    conn: AsyncConnection, *, engine: Engine, task: OutreachTask, reroutes: list[TaskUpdate]
) -> OutreachTask:
    """Give the call to its manager if their day has room (or it outranks a call there).

    Otherwise, or for the call it outranks, the overflow queue takes it, so
    a manager's list never holds more than they can call in a day.
    """
    capacity = engine.rules.capacity
    manager = task.account_manager_id
    if manager is None or task.queue is None:
        return task  # only calls routed to a manager's own queue are counted
    day = capacity_day(task.created_at, engine.rules)
    load = await service.manager_day_load(conn, manager_id=manager, day=day, queue=task.queue)
    joins, bumped = allocate(load, capacity=capacity.daily_calls(manager), priority=task.priority)
    if bumped is not None:
        await service.assign_capacity(
            conn, task_id=bumped, manager_id=manager, day=day, queue=capacity.overflow_queue
        )
        subscriber_id = await service.task_subscriber(conn, task_id=bumped)
        reason = f"{manager}'s day is full with more urgent calls"
        reroutes.append(
            TaskUpdate(
                update_id=derive_id("update", bumped, TaskAction.REROUTE, task.task_id),
                task_id=bumped,
                subscriber_id=subscriber_id,
                action=TaskAction.REROUTE,
                reason=reason,
                cause=UpdateCause.CAPACITY,
                queue=capacity.overflow_queue,
                at=task.created_at,
            )
        )
        metrics.SPILLED.labels("bumped").inc()
    if joins:
        await service.assign_capacity(
            conn, task_id=task.task_id, manager_id=manager, day=day, queue=task.queue
        )
        return task
    await service.assign_capacity(
        conn, task_id=task.task_id, manager_id=manager, day=day, queue=capacity.overflow_queue
    )
    metrics.SPILLED.labels("full").inc()
    return task.model_copy(update={"queue": capacity.overflow_queue})


class AlertingHandler:
    """Turns one batch of events and scores into tasks and task updates, once."""

    def __init__(self, engine: Engine, topics: Topics) -> None:
        self.engine = engine
        self.topics = topics

    async def __call__(
        self, conn: AsyncConnection, batch: Sequence[Inbound[Message | None]], outbox: Outbox
    ) -> None:
        """Store profiles, run every new message through the rules, store and publish."""
        now = datetime.now(UTC)
        messages = [item.value for item in batch if item.value is not None]
        todo = await keep_new(
            conn, table=processed_messages, items=messages, key=_message_id, now=now
        )
        metrics.MESSAGES.labels("handled").inc(len(todo))
        metrics.MESSAGES.labels("duplicate").inc(len(messages) - len(todo))
        if not todo:
            return
        # Profiles first, in event-time order, so the rules in this batch see them.
        new_profiles = [m for m in todo if isinstance(m, SubscriberEvent)]
        await service.upsert_profiles(conn, events=new_profiles)
        views = await service.load_views(conn, subscriber_ids={m.subscriber_id for m in todo})
        silences = await service.active_silences(conn, now=now)
        effects = Effects()
        for message in todo:
            self.engine.handle(
                message, views[message.subscriber_id], effects, silences=silences, now=now
            )
        await apply_effects(
            conn,
            engine=self.engine,
            views=views,
            effects=effects,
            outbox=outbox,
            topics=self.topics,
            now=now,
        )
        # Score -> decision latency; tasks a score fires go out in this same batch.
        for message in todo:
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
        engine: Engine,
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
                ids = await service.due_pending(
                    conn,
                    pending_before=now - self.min_dwell,
                    limit=self.settings.alerting_sweep_batch,
                )
                views = await service.load_views(conn, subscriber_ids=ids, skip_locked=True)
                silences = await service.active_silences(conn, now=now)
                effects = Effects()
                for view in views.values():
                    self.engine.tick(view, effects, silences=silences, now=now)
                outbox = Outbox(producer)
                await apply_effects(
                    conn,
                    engine=self.engine,
                    views=views,
                    effects=effects,
                    outbox=outbox,
                    topics=self.topics,
                    now=now,
                )
                # Acknowledged before the state change commits: at least once.
                await outbox.flush()
                evaluated = len(views)
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
