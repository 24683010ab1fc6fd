"""Alerting's batch core: one batch of events and scores in, alerts, tasks and reroutes out.

The live consumer (``AlertingHandler``, with the PostgreSQL-backed store in
:mod:`services.alerting.consumer`) and the backtest (``churnwatch.backtest``,
with ``MemoryStore``) both call ``process_batch``, so what the backtest counts
is what the service does: the same dedup on the message id, every profile of
the batch stored before any rule runs, the rules engine run on each message in
the order given, the same alerts and tasks stored, and the same calls fitted
into account managers' days (a full day sends the least urgent call to the
overflow queue).

``sweep_due`` is the dwell sweep's core (score rules whose dwell elapsed with
no newer score): the live ``Sweeper`` runs it on a timer, the backtest after
each batch in event time. Both end in ``settle``: store what the engine
changed, then fit calls into managers' days.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Protocol

from services.alerting.rule_engine import (
    UNKNOWN,
    Alert,
    Effects,
    Profile,
    RuleEngine,
    Silence,
    SubscriberView,
    allocate,
    capacity_day,
)
from shared.events import (
    Event,
    OutreachTask,
    RiskScore,
    SubscriberEvent,
    TaskAction,
    TaskUpdate,
    UpdateCause,
    derive_id,
)

Message = Event | RiskScore
"""What alerting consumes: events from the events topic, scores from the scores topic."""

BeforeEach = Callable[[Message, SubscriberView, Effects], None]
"""Called before the engine handles each message (the backtest's event-time dwell clock)."""


def message_id(message: Message) -> uuid.UUID:
    """The id alerting applies a message once by."""
    return message.score_id if isinstance(message, RiskScore) else message.event_id


def message_time(message: Message) -> datetime:
    """The message's own time: an event's ``occurred_at``, a score's ``event_time``."""
    return message.event_time if isinstance(message, RiskScore) else message.occurred_at


class AlertingStore(Protocol):
    """Where the batch core keeps what outlives a batch (PostgreSQL live, memory in a backtest)."""

    async def keep_new(self, messages: Sequence[Message], *, now: datetime) -> list[Message]:
        """Record the messages' ids; return those never applied before (first occurrence)."""

    async def upsert_profiles(self, *, events: Sequence[SubscriberEvent]) -> None:
        """Store each subscriber's newest profile unless a newer one is stored."""

    async def load_views(
        self, *, subscriber_ids: Iterable[str], skip_locked: bool = False
    ) -> dict[str, SubscriberView]:
        """The subscribers' views by id, in id order (locked until the batch ends)."""

    async def active_silences(self, *, now: datetime) -> list[Silence]:
        """Silences in force at ``now``."""

    async def save_views(
        self,
        *,
        views: Iterable[SubscriberView],
        new_alerts: Sequence[tuple[Alert, Sequence[OutreachTask]]],
        held_out: set[uuid.UUID],
        now: datetime,
    ) -> None:
        """Store what the engine changed: facts, rule states, new and ended alerts, tasks."""

    async def manager_day_load(
        self, *, manager_id: str, day: date, queue: str
    ) -> list[tuple[uuid.UUID, float]]:
        """The capacity-limited calls (id, priority) the manager holds that day in ``queue``."""

    async def assign_capacity(
        self, *, task_id: uuid.UUID, manager_id: str, day: date, queue: str
    ) -> None:
        """Record a task's queue and the manager-day whose capacity it counts against."""

    async def task_subscriber(self, *, task_id: uuid.UUID) -> str:
        """The subscriber a stored task is for."""

    async def due_pending(self, *, pending_before: datetime, limit: int) -> list[str]:
        """Subscribers with a score rule pending since at or before ``pending_before``."""


@dataclass
class Decisions:
    """What a batch (or a sweep) decided, stored and ready to publish.

    ``effects`` is what the engine decided (alerts, held-out tasks, firings and
    suppressions for the metrics); ``publish`` is every message for the tasks
    topic in order: the engine's tasks and updates, calls with the queue that
    capacity gave them, then ``reroutes`` (calls bumped to the overflow queue).
    """

    effects: Effects = field(default_factory=Effects)
    handled: list[Message] = field(default_factory=list)
    duplicates: int = 0
    publish: list[OutreachTask | TaskUpdate] = field(default_factory=list)
    reroutes: list[TaskUpdate] = field(default_factory=list)
    spilled: list[str] = field(default_factory=list)  # "bumped" or "full", per spill
    subscribers: int = 0  # views evaluated

    @property
    def tasks(self) -> list[OutreachTask]:
        """The tasks to publish, as capacity routed them (held-out ones are not sent)."""
        return [m for m in self.publish if isinstance(m, OutreachTask)]


async def process_batch(
    messages: Sequence[Message],
    *,
    store: AlertingStore,
    engine: RuleEngine,
    now: datetime,
    before_each: BeforeEach | None = None,
) -> Decisions:
    """Apply one batch of events and scores; return what it decided.

    The caller owns the transaction and publishes ``Decisions.publish``.
    Every profile of the batch is stored before any rule runs, so a rule sees
    the newest profile the batch holds whatever the messages' order. The rules
    then run on each message in the order given (Kafka's, or the replay's).
    ``now`` is the wall clock: silences and stored timestamps, never the rules
    (they run on each message's own time).
    """
    todo = await store.keep_new(messages, now=now)
    decisions = Decisions(handled=todo, duplicates=len(messages) - len(todo))
    if not todo:
        return decisions
    await store.upsert_profiles(events=[m for m in todo if isinstance(m, SubscriberEvent)])
    views = await store.load_views(subscriber_ids={m.subscriber_id for m in todo})
    decisions.subscribers = len(views)
    silences = await store.active_silences(now=now)
    for message in todo:
        view = views[message.subscriber_id]
        if before_each is not None:
            before_each(message, view, decisions.effects)
        engine.handle(message, view, decisions.effects, silences=silences, now=now)
    await settle(decisions, store=store, engine=engine, views=views, now=now)
    return decisions


async def sweep_due(
    *, store: AlertingStore, engine: RuleEngine, now: datetime, pending_before: datetime, limit: int
) -> Decisions:
    """Fire the score rules whose dwell elapsed by ``now`` with no newer score.

    Scores are published only when they move, so a subscriber who crossed a
    threshold and stayed there sends nothing more: without this sweep a rule
    with a dwell would wait for their next score forever.
    """
    decisions = Decisions()
    ids = await store.due_pending(pending_before=pending_before, limit=limit)
    views = await store.load_views(subscriber_ids=ids, skip_locked=True)
    decisions.subscribers = len(views)
    if not views:
        return decisions
    silences = await store.active_silences(now=now)
    for view in views.values():
        engine.tick(view, decisions.effects, silences=silences, now=now)
    await settle(decisions, store=store, engine=engine, views=views, now=now)
    return decisions


async def settle(
    decisions: Decisions,
    *,
    store: AlertingStore,
    engine: RuleEngine,
    views: dict[str, SubscriberView],
    now: datetime,
) -> None:
    """Store the changed views, then fit each capacity-limited call into its manager's day."""
    effects = decisions.effects
    await store.save_views(
        views=views.values(),
        new_alerts=effects.new_alerts,
        held_out={t.task_id for t in effects.held_out},
        now=now,
    )
    for message in effects.outbound:
        if isinstance(message, OutreachTask) and message.task_id in effects.capacity_tasks:
            message = await _fit_capacity(store, engine=engine, task=message, decisions=decisions)
        decisions.publish.append(message)
    decisions.publish.extend(decisions.reroutes)


async def _fit_capacity(
    store: AlertingStore, *, engine: RuleEngine, task: OutreachTask, decisions: Decisions
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
    load = await store.manager_day_load(manager_id=manager, day=day, queue=task.queue)
    joins, bumped = allocate(load, capacity=capacity.daily_calls(manager), priority=task.priority)
    if bumped is not None:
        await store.assign_capacity(
            task_id=bumped, manager_id=manager, day=day, queue=capacity.overflow_queue
        )
        decisions.reroutes.append(
            TaskUpdate(
                update_id=derive_id("update", bumped, TaskAction.REROUTE, task.task_id),
                task_id=bumped,
                subscriber_id=await store.task_subscriber(task_id=bumped),
                action=TaskAction.REROUTE,
                reason=f"{manager}'s day is full with more urgent calls",
                cause=UpdateCause.CAPACITY,
                queue=capacity.overflow_queue,
                at=task.created_at,
            )
        )
        decisions.spilled.append("bumped")
    if joins:
        await store.assign_capacity(
            task_id=task.task_id, manager_id=manager, day=day, queue=task.queue
        )
        return task
    await store.assign_capacity(
        task_id=task.task_id, manager_id=manager, day=day, queue=capacity.overflow_queue
    )
    decisions.spilled.append("full")
    return task.model_copy(update={"queue": capacity.overflow_queue})


# --- in memory ------------------------------------------------------------------

# PostgreSQL keeps a subscriber's usual bill as NUMERIC(14, 4); the memory store
# rounds it the same way, or a bill-shock decision could differ by the last digit.
_NUMERIC_STEP = Decimal("0.0001")


@dataclass(slots=True)
class StoredTask:
    """A task row as ``alerting.tasks`` holds it (the columns capacity reads and writes)."""

    task: OutreachTask
    alert_id: uuid.UUID
    status: str  # "published", "held_out", or the status its alert ended with
    queue: str | None
    manager_id: str | None = None
    capacity_day: date | None = None


class MemoryStore:
    """``AlertingStore`` in memory, with the tables' semantics: for the backtest.

    Views are held as objects between batches; ``save_views`` does what a
    round trip through PostgreSQL would (ended alerts drop out of the view,
    dirty marks are cleared, the usual bill is rounded as the column rounds it).
    """

    def __init__(self, silences: Sequence[Silence] = ()) -> None:
        self.seen: set[uuid.UUID] = set()
        self.profiles: dict[str, tuple[datetime, Profile]] = {}
        self.views: dict[str, SubscriberView] = {}
        self.alerts: dict[uuid.UUID, Alert] = {}
        self.tasks: dict[uuid.UUID, StoredTask] = {}
        self.silences = list(silences)
        # Tasks by (manager, day, queue): the capacity reads' index.
        self.days: dict[tuple[str, date, str], set[uuid.UUID]] = {}
        # Each subscriber's earliest pending dwell: the sweep's index, kept as the
        # views are saved (scanning every view after each batch would be quadratic).
        self.pending: dict[str, datetime] = {}

    async def keep_new(self, messages: Sequence[Message], *, now: datetime) -> list[Message]:
        """Messages whose id was never seen (a repeat within the batch counts once)."""
        fresh = []
        for message in messages:
            key = message_id(message)
            if key not in self.seen:
                self.seen.add(key)
                fresh.append(message)
        return fresh

    async def upsert_profiles(self, *, events: Sequence[SubscriberEvent]) -> None:
        """Keep each subscriber's newest profile (of equal times, the last)."""
        for event in sorted(events, key=lambda e: e.occurred_at):
            stored = self.profiles.get(event.subscriber_id)
            if stored is not None and stored[0] > event.occurred_at:
                continue
            p = event.payload
            self.profiles[event.subscriber_id] = (
                event.occurred_at,
                Profile(
                    tier=p.tier,
                    monthly_value=p.monthly_value,
                    account_manager_id=p.account_manager_id,
                    phone=p.phone,
                    language=p.language,
                    name=p.name,
                    marketing_opt_out=p.marketing_opt_out,
                ),
            )

    async def load_views(
        self, *, subscriber_ids: Iterable[str], skip_locked: bool = False
    ) -> dict[str, SubscriberView]:
        """The held views (created empty on first use), with the stored profile."""
        views = {}
        for sid in sorted(set(subscriber_ids)):
            view = self.views.get(sid)
            if view is None:
                view = self.views[sid] = SubscriberView(subscriber_id=sid)
            stored = self.profiles.get(sid)
            view.profile = stored[1] if stored is not None else UNKNOWN
            views[sid] = view
        return views

    async def active_silences(self, *, now: datetime) -> list[Silence]:
        """The given silences in force at ``now`` (a backtest has none unless given)."""
        return [s for s in self.silences if s.starts_at <= now < s.ends_at]

    async def save_views(
        self,
        *,
        views: Iterable[SubscriberView],
        new_alerts: Sequence[tuple[Alert, Sequence[OutreachTask]]],
        held_out: set[uuid.UUID],
        now: datetime,
    ) -> None:
        """Record new alerts and tasks, end the tasks of ended alerts, clear the marks."""
        for alert, tasks in new_alerts:
            self.alerts.setdefault(alert.alert_id, alert)
            for task in tasks:
                status = "held_out" if task.task_id in held_out else "published"
                self.tasks.setdefault(
                    task.task_id, StoredTask(task, alert.alert_id, status, task.queue)
                )
            alert.tasks.sort(key=lambda ref: ref.task_id)  # loaded by task id, as PostgreSQL
        for view in views:
            facts = view.facts
            if facts.dirty and facts.bill_mean is not None:
                facts.bill_mean = facts.bill_mean.quantize(_NUMERIC_STEP, ROUND_HALF_UP)
            facts.dirty = False
            for state in view.states.values():
                state.dirty = False
            for alert in view.alerts:
                if alert.dirty and alert.status != "open":
                    for ref in alert.tasks:
                        row = self.tasks.get(ref.task_id)
                        if row is not None and row.status == "published":
                            row.status = alert.status
                alert.dirty = alert.new = False
            view.alerts = [a for a in view.alerts if a.status == "open"]
            since = [s.pending_since for s in view.states.values() if s.pending_since is not None]
            if since:
                self.pending[view.subscriber_id] = min(since)
            else:
                self.pending.pop(view.subscriber_id, None)

    async def manager_day_load(
        self, *, manager_id: str, day: date, queue: str
    ) -> list[tuple[uuid.UUID, float]]:
        """The published calls counted against the manager's day in ``queue``."""
        ids = self.days.get((manager_id, day, queue), ())
        return [
            (task_id, self.tasks[task_id].task.priority)
            for task_id in ids
            if self.tasks[task_id].status == "published"
        ]

    async def assign_capacity(
        self, *, task_id: uuid.UUID, manager_id: str, day: date, queue: str
    ) -> None:
        """Record the task's queue and manager-day."""
        row = self.tasks[task_id]
        if row.manager_id is not None and row.capacity_day is not None and row.queue is not None:
            self.days.get((row.manager_id, row.capacity_day, row.queue), set()).discard(task_id)
        row.manager_id, row.capacity_day, row.queue = manager_id, day, queue
        self.days.setdefault((manager_id, day, queue), set()).add(task_id)

    async def task_subscriber(self, *, task_id: uuid.UUID) -> str:
        """The stored task's subscriber."""
        return self.tasks[task_id].task.subscriber_id

    async def due_pending(self, *, pending_before: datetime, limit: int) -> list[str]:
        """Subscribers pending since at or before ``pending_before``, the longest pending first."""
        due = sorted((at, sid) for sid, at in self.pending.items() if at <= pending_before)
        return [sid for _, sid in due[:limit]]
