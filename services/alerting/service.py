"""Alerting's database work. Keyword-only; never commits: the caller owns the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.alerting.rule_engine import (
    Alert,
    Facts,
    Profile,
    RuleState,
    Silence,
    SubscriberView,
    TaskRef,
)
from services.alerting.tables import (
    alerts,
    rule_state,
    silences,
    subscriber_facts,
    subscribers,
    tasks,
)
from shared.crypto import is_encrypted, phone_keyring
from shared.events import Channel, OutreachTask, RiskScore, SubscriberEvent, TaskKind, Tier

# --- profiles -----------------------------------------------------------------


async def upsert_profiles(conn: AsyncConnection, *, events: Sequence[SubscriberEvent]) -> None:
    """Store each subscriber's newest profile of ``events`` unless a newer one is stored.

    One statement for the batch (a profile a subscriber, the newest by event
    time; of equal times the last): a day's first profiles of a million
    subscribers were a million round trips when stored one at a time.

    The phone is stored sealed, as ingest put it on Kafka, and never opened here.
    A plain number (a record produced before ingest sealed phones, replayed from
    the dead-letter topic or re-read after an offset reset) is sealed with the
    process's keyring first: no plain number rests here or goes on the tasks topic.
    """
    newest: dict[str, SubscriberEvent] = {}
    for event in sorted(events, key=lambda e: e.occurred_at):
        newest[event.subscriber_id] = event
    if not newest:
        return
    rows = []
    for event in newest.values():
        p = event.payload
        phone = p.phone
        if phone is not None and not is_encrypted(phone):
            phone = phone_keyring().encrypt(phone)
        rows.append(
            {
                "subscriber_id": event.subscriber_id,
                "tier": p.tier.value,
                "monthly_value": p.monthly_value,
                "account_manager_id": p.account_manager_id,
                "phone": phone,
                "language": p.language,
                "name": p.name,
                "preferred_channel": p.preferred_channel.value,
                "marketing_opt_out": p.marketing_opt_out,
                "profile_at": event.occurred_at,
            }
        )
    stmt = insert(subscribers)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["subscriber_id"],
            set_={k: stmt.excluded[k] for k in rows[0] if k != "subscriber_id"},
            where=subscribers.c.profile_at <= stmt.excluded.profile_at,
        ),
        rows,
    )


async def load_profiles(
    conn: AsyncConnection, *, subscriber_ids: Iterable[str]
) -> dict[str, Profile]:
    """Profiles of these subscribers (absent ones are missing from the result)."""
    rows = await conn.execute(
        select(subscribers).where(subscribers.c.subscriber_id.in_(list(subscriber_ids)))
    )
    return {
        r.subscriber_id: Profile(
            tier=Tier(r.tier),
            monthly_value=r.monthly_value,
            account_manager_id=r.account_manager_id,
            phone=r.phone,
            language=r.language,
            name=r.name,
            marketing_opt_out=r.marketing_opt_out,
        )
        for r in rows
    }


# --- subscriber views -----------------------------------------------------------


async def load_views(
    conn: AsyncConnection, *, subscriber_ids: Iterable[str], skip_locked: bool = False
) -> dict[str, SubscriberView]:
    """Each subscriber's profile, facts, rule states and open alerts.

    The rule-state rows are locked (``FOR UPDATE``) until the transaction ends,
    so the dwell sweep and the consumer never evaluate one subscriber at once;
    the sweep passes ``skip_locked`` to step around subscribers being handled.
    """
    ids = sorted(set(subscriber_ids))
    if not ids:
        return {}
    profiles = await load_profiles(conn, subscriber_ids=ids)
    views = {s: SubscriberView(subscriber_id=s, profile=profiles.get(s, Profile())) for s in ids}
    state_rows = await conn.execute(
        select(rule_state)
        .where(rule_state.c.subscriber_id.in_(ids))
        .with_for_update(skip_locked=skip_locked)
    )
    for r in state_rows:
        views[r.subscriber_id].states[r.rule] = RuleState(
            armed=r.armed,
            pending_since=r.pending_since,
            pending_score=(
                RiskScore.model_validate(r.pending_score) if r.pending_score is not None else None
            ),
            last_fired_at=r.last_fired_at,
        )
    for r in await conn.execute(
        select(subscriber_facts).where(subscriber_facts.c.subscriber_id.in_(ids))
    ):
        views[r.subscriber_id].facts = Facts(
            churned_at=r.churned_at,
            bill_mean=r.bill_mean,
            bills_seen=r.bills_seen,
            payments=[
                (datetime.fromisoformat(at), Decimal(amount)) for at, amount in r.payments or ()
            ],
            activity=r.activity or {},
        )
    open_alerts: dict[uuid.UUID, Alert] = {}
    for r in await conn.execute(
        select(alerts).where(alerts.c.subscriber_id.in_(ids), alerts.c.status == "open")
    ):
        alert = Alert(
            alert_id=r.alert_id,
            subscriber_id=r.subscriber_id,
            rule=r.rule,
            kind=TaskKind(r.kind),
            severity=r.severity,
            fired_at=r.fired_at,
            open_until=r.open_until,
            cause_id=r.cause_id,
            held_out=r.held_out,
            amount_due=r.amount_due,
            paid=r.paid,
        )
        open_alerts[alert.alert_id] = alert
        views[r.subscriber_id].alerts.append(alert)
    if open_alerts:
        for r in await conn.execute(
            select(tasks.c.alert_id, tasks.c.task_id, tasks.c.channel, tasks.c.queue)
            .where(tasks.c.alert_id.in_(list(open_alerts)))
            .order_by(tasks.c.task_id)
        ):
            open_alerts[r.alert_id].tasks.append(TaskRef(r.task_id, Channel(r.channel), r.queue))
    return views


async def save_views(
    conn: AsyncConnection,
    *,
    views: Iterable[SubscriberView],
    new_alerts: Sequence[tuple[Alert, Sequence[OutreachTask]]],
    held_out: set[uuid.UUID],
    now: datetime,
) -> None:
    """Store what the engine changed: facts, rule states, new and ended alerts, tasks."""
    views = list(views)
    fact_rows = [
        {
            "subscriber_id": v.subscriber_id,
            "churned_at": v.facts.churned_at,
            "bill_mean": v.facts.bill_mean,
            "bills_seen": v.facts.bills_seen,
            "payments": [[at.isoformat(), str(amount)] for at, amount in v.facts.payments],
            "activity": v.facts.activity,
            "updated_at": now,
        }
        for v in views
        if v.facts.dirty
    ]
    if fact_rows:
        stmt = insert(subscriber_facts)
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["subscriber_id"],
                set_={
                    c: stmt.excluded[c]
                    for c in (
                        "churned_at",
                        "bill_mean",
                        "bills_seen",
                        "payments",
                        "activity",
                        "updated_at",
                    )
                },
            ),
            fact_rows,
        )
    state_rows = [
        {
            "subscriber_id": v.subscriber_id,
            "rule": name,
            "armed": s.armed,
            "pending_since": s.pending_since,
            "pending_score": s.pending_score.model_dump(mode="json") if s.pending_score else None,
            "last_fired_at": s.last_fired_at,
            "updated_at": now,
        }
        for v in views
        for name, s in v.states.items()
        if s.dirty
    ]
    if state_rows:
        stmt = insert(rule_state)
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["subscriber_id", "rule"],
                set_={
                    c: stmt.excluded[c]
                    for c in (
                        "armed",
                        "pending_since",
                        "pending_score",
                        "last_fired_at",
                        "updated_at",
                    )
                },
            ),
            state_rows,
        )
    if new_alerts:
        await conn.execute(
            insert(alerts).on_conflict_do_nothing(index_elements=["alert_id"]),
            [_alert_row(a, now) for a, _ in new_alerts],
        )
        await conn.execute(
            insert(tasks).on_conflict_do_nothing(index_elements=["task_id"]),
            [
                _task_row(a, t, status="held_out" if t.task_id in held_out else "published")
                for a, ts in new_alerts
                for t in ts
            ],
        )
    for alert in (a for v in views for a in v.alerts if a.dirty):
        await conn.execute(
            update(alerts)
            .where(alerts.c.alert_id == alert.alert_id)
            .values(
                status=alert.status, paid=alert.paid, end_reason=alert.end_reason, updated_at=now
            )
        )
        if alert.status != "open":
            await conn.execute(
                update(tasks)
                .where(tasks.c.alert_id == alert.alert_id, tasks.c.status == "published")
                .values(status=alert.status)
            )


def _alert_row(alert: Alert, now: datetime) -> dict[str, Any]:
    return {
        "alert_id": alert.alert_id,
        "subscriber_id": alert.subscriber_id,
        "rule": alert.rule,
        "kind": alert.kind.value,
        "severity": alert.severity,
        "status": alert.status,
        "held_out": alert.held_out,
        "cause_id": alert.cause_id,
        "fired_at": alert.fired_at,
        "open_until": alert.open_until,
        "amount_due": alert.amount_due,
        "paid": alert.paid,
        "end_reason": alert.end_reason,
        "created_at": now,
        "updated_at": now,
    }


def _task_row(alert: Alert, task: OutreachTask, *, status: str) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "alert_id": alert.alert_id,
        "rule": task.rule,
        "kind": task.kind.value,
        "channel": task.channel.value,
        "subscriber_id": task.subscriber_id,
        "queue": task.queue,
        "priority": task.priority,
        "manager_id": None,
        "capacity_day": None,
        "status": status,
        "cause_event_id": task.cause_event_id,
        "created_at": task.created_at,
    }


# --- account managers' capacity -------------------------------------------------


async def manager_day_load(
    conn: AsyncConnection, *, manager_id: str, day: date, queue: str
) -> list[tuple[uuid.UUID, float]]:
    """The capacity-limited calls the manager holds that day, locked for this transaction.

    A transaction-scoped advisory lock per manager and day serialises the
    decision across alerting replicas (subscribers of one manager live on
    different partitions).
    """
    await conn.execute(
        text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
        {"key": f"alerting-capacity:{manager_id}:{day.isoformat()}"},
    )
    rows = await conn.execute(
        select(tasks.c.task_id, tasks.c.priority).where(
            tasks.c.manager_id == manager_id,
            tasks.c.capacity_day == day,
            tasks.c.queue == queue,
            tasks.c.status == "published",
        )
    )
    return [(r.task_id, r.priority) for r in rows]


async def assign_capacity(
    conn: AsyncConnection,
    *,
    task_id: uuid.UUID,
    manager_id: str,
    day: date,
    queue: str,
) -> None:
    """Record a task's queue and the manager-day whose capacity it counts against."""
    await conn.execute(
        update(tasks)
        .where(tasks.c.task_id == task_id)
        .values(manager_id=manager_id, capacity_day=day, queue=queue)
    )


# --- silences -------------------------------------------------------------------


async def create_silence(conn: AsyncConnection, *, values: dict[str, Any]) -> dict[str, Any]:
    """Store a new silence and return it."""
    row = (await conn.execute(insert(silences).values(values).returning(*silences.c))).one()
    return dict(row._mapping)


async def list_silences(
    conn: AsyncConnection, *, state: str, now: datetime, limit: int
) -> list[dict[str, Any]]:
    """Silences by state (``active``, ``pending``, ``expired`` or ``all``), newest first."""
    query = select(silences)
    if state == "active":
        query = query.where(silences.c.starts_at <= now, silences.c.ends_at > now)
    elif state == "pending":
        query = query.where(silences.c.starts_at > now)
    elif state == "expired":
        query = query.where(silences.c.ends_at <= now)
    query = query.order_by(silences.c.created_at.desc(), silences.c.silence_id).limit(limit)
    return [dict(r._mapping) for r in await conn.execute(query)]


async def get_silence(conn: AsyncConnection, *, silence_id: uuid.UUID) -> dict[str, Any] | None:
    """One silence, or None."""
    row = (await conn.execute(select(silences).where(silences.c.silence_id == silence_id))).first()
    return dict(row._mapping) if row else None


async def expire_silence(
    conn: AsyncConnection, *, silence_id: uuid.UUID, now: datetime
) -> dict[str, Any] | None:
    """End a silence now (kept for the record, as Alertmanager does); None if unknown."""
    row = (
        await conn.execute(
            update(silences)
            .where(silences.c.silence_id == silence_id)
            .values(ends_at=func.least(silences.c.ends_at, now))
            .returning(*silences.c)
        )
    ).first()
    return dict(row._mapping) if row else None


async def active_silences(conn: AsyncConnection, *, now: datetime) -> list[Silence]:
    """Silences in force at ``now``."""
    rows = await conn.execute(
        select(silences).where(silences.c.starts_at <= now, silences.c.ends_at > now)
    )
    return [
        Silence(
            silence_id=r.silence_id,
            starts_at=r.starts_at,
            ends_at=r.ends_at,
            rule=r.rule,
            tier=r.tier,
            subscriber_id=r.subscriber_id,
        )
        for r in rows
    ]


# --- sweep and gauges -----------------------------------------------------------


async def due_pending(conn: AsyncConnection, *, pending_before: datetime, limit: int) -> list[str]:
    """Subscribers with a score rule pending since before ``pending_before``."""
    rows = await conn.execute(
        select(rule_state.c.subscriber_id)
        .where(
            rule_state.c.pending_since.is_not(None), rule_state.c.pending_since <= pending_before
        )
        .order_by(rule_state.c.pending_since)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(dict.fromkeys(rows.scalars()))


async def open_task_counts(conn: AsyncConnection, *, now: datetime) -> dict[str, int]:
    """Tasks of open, not held-out alerts, by task kind."""
    rows = await conn.execute(
        select(tasks.c.kind, func.count())
        .select_from(tasks.join(alerts, tasks.c.alert_id == alerts.c.alert_id))
        .where(
            alerts.c.status == "open",
            alerts.c.open_until > now,
            tasks.c.status == "published",
        )
        .group_by(tasks.c.kind)
    )
    return {row[0]: int(row[1]) for row in rows}


async def task_subscriber(conn: AsyncConnection, *, task_id: uuid.UUID) -> str:
    """The subscriber a recorded task is for."""
    return str(await conn.scalar(select(tasks.c.subscriber_id).where(tasks.c.task_id == task_id)))
