"""Feedback: the outbox relay that publishes task outcomes, and the KPIs.

**Relay.** Every change that puts a task in a final state (or records a call's
outcome) writes a ``TaskOutcome`` to ``outreach.outbox`` in the same
transaction (``service.enqueue_outcomes``). The relay reads unpublished rows in
id order, produces each to its topic keyed by subscriber, waits for every
broker acknowledgement, and only then marks the rows published, in the
transaction that locked them. Delivery is at least once: a crash between the
acks and the commit publishes the rows again, with the same ``outcome_id``.

**KPIs**, per calendar month in ``OUTREACH_TIMEZONE`` and by tier
(docs/operations.md, "Outcomes and KPIs"):

- reminder before suspension: of the VIP subscribers suspended in the month,
  the share who got a delivered reminder SMS or a completed reminder call
  before the suspension;
- win-back: of the win-back offers made in the month that reached the
  subscriber, the share that won them back.

Both are served at ``GET /v1/kpis?period=YYYY-MM`` and exported as gauges for
the current month by ``KpiRefresher``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import orjson
from aiokafka import AIOKafkaProducer
from fastapi import APIRouter, Query
from prometheus_client import Gauge
from pydantic import AfterValidator, BaseModel, Field
from sqlalchemy import ColumnElement, Select, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.base import ReadOnlyColumnCollection

from services.outreach import metrics
from services.outreach.deps import ClockDep, EngineDep, SettingsDep
from services.outreach.schemas import CallStatus, SmsStatus
from services.outreach.service import OUTCOMES_TOPIC
from services.outreach.settings import OutreachSettings
from services.outreach.tables import outbox, tasks
from shared.clock import Clock, WallClock
from shared.consumer import Outbox
from shared.events import CallOutcome, Channel, TaskKind, Tier, UpdateCause
from shared.periodic import Periodic
from shared.topics import Topics

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["kpis"])

RELAY_BATCH = 500
"""Most outbox rows one relay pass publishes (one transaction, one wait for acks)."""

VIP_TIERS: tuple[str, ...] = tuple(t.value for t in Tier if t.is_vip)
ALL_TIERS: tuple[str, ...] = tuple(t.value for t in Tier)

# A reminder for a subscriber who paid (or left) before the suspension: not suspended.
NOT_SUSPENDED_CAUSES = (UpdateCause.PAID.value, UpdateCause.CHURNED.value)
WON_BACK = "won_back"
"""The outcome alerting's ``close`` records when a reactivation ends a win-back offer."""


# --- the outbox relay ---------------------------------------------------------------


class Relay:
    """Publishes outbox rows to Kafka, then marks them published.

    Every ``OUTREACH_RELAY_INTERVAL_S``, at once after a full batch (a backlog),
    and promptly after ``wake()``. Several replicas may relay at the same time:
    ``FOR UPDATE SKIP LOCKED`` gives each its own rows.
    """

    def __init__(
        self,
        settings: OutreachSettings,
        engine: AsyncEngine,
        topics: Topics,
        producer: Callable[[], AIOKafkaProducer | None],
        *,
        batch: int = RELAY_BATCH,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.topics = topics
        self.producer = producer
        self.batch = batch
        # Logical topic of an outbox row -> the Kafka topic under our prefix. A row
        # naming another topic (none today) is left unpublished, still counted pending.
        self.destinations: Mapping[str, str] = {OUTCOMES_TOPIC: topics.outcomes}
        self._loop = Periodic(
            self._relay,
            interval_s=lambda: self.settings.outreach_relay_interval_s,
            log=log,
            failure="outbox relay pass failed; retrying every OUTREACH_RELAY_INTERVAL_S",
        )
        self._failing = False

    def wake(self) -> None:
        """Relay now rather than at the next interval (new outbox rows were committed)."""
        self._loop.wake()

    async def run(self) -> None:
        """Relay until stopped; a failed pass (broker down) is logged and retried later."""
        await self._loop.run()

    async def _relay(self) -> bool:
        """One pass; True after a full batch (a backlog: relay again at once)."""
        # Failures are handled here, not by the loop: one warning per outage, not one
        # per interval (the loop would log every one as an error).
        try:
            backlog = await self.relay_once() >= self.batch
        except Exception:
            # Nothing is lost: the rows stay unpublished and the next pass retries.
            # The metric counts every failure.
            metrics.RELAY_FAILURES.inc()
            log.log(
                logging.DEBUG if self._failing else logging.WARNING,
                "outbox relay pass failed; retrying every OUTREACH_RELAY_INTERVAL_S",
                exc_info=True,
            )
            self._failing = True
            return False
        if self._failing:
            log.info("outbox relay recovered")
        self._failing = False
        return backlog

    def stop(self) -> None:
        """Return from ``run`` after the pass in hand."""
        self._loop.stop()

    async def relay_once(self) -> int:
        """Publish one batch of unpublished outbox rows; return how many were published.

        The rows stay locked until the broker has acknowledged every one of
        them and ``published_at`` is committed. A failure anywhere rolls back:
        the rows are published again by a later pass (at least once).
        """
        producer = self.producer()
        if producer is None:  # the service is still starting
            return 0
        try:
            async with self.engine.begin() as conn:
                rows = (
                    await conn.execute(
                        select(outbox.c.id, outbox.c.topic, outbox.c.key, outbox.c.payload)
                        .where(
                            outbox.c.published_at.is_(None),
                            outbox.c.topic.in_(sorted(self.destinations)),
                        )
                        .order_by(outbox.c.id)
                        .limit(self.batch)
                        .with_for_update(skip_locked=True)
                    )
                ).all()
                if not rows:
                    return 0
                sends = Outbox(producer)
                for row in rows:
                    await sends.send(
                        self.destinations[row.topic],
                        key=row.key,
                        value=orjson.dumps(row.payload),
                    )
                await sends.flush()  # every ack before the rows count as published
                await conn.execute(
                    update(outbox)
                    .where(outbox.c.id.in_([row.id for row in rows]))
                    .values(published_at=datetime.now(UTC))
                )
        finally:
            with contextlib.suppress(Exception):
                await self._count_pending()
        metrics.OUTCOMES_PUBLISHED.inc(len(rows))
        return len(rows)

    async def _count_pending(self) -> None:
        async with self.engine.connect() as conn:
            pending = await conn.scalar(
                select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
            )
        metrics.OUTBOX_PENDING.set(int(pending or 0))


# --- KPIs -------------------------------------------------------------------------------


def month_bounds(period: str, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """``[start, end)`` of the month ``YYYY-MM`` in ``zone``, as aware datetimes."""
    year, month = (int(part) for part in period.split("-"))
    start = datetime(year, month, 1, tzinfo=zone)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=zone)
    return start, end


def current_period(zone: ZoneInfo, *, now: datetime | None = None) -> str:
    """The month ``now`` falls in, in ``zone``, as ``YYYY-MM``."""
    return (now or datetime.now(UTC)).astimezone(zone).strftime("%Y-%m")


Counts = dict[str, tuple[int, int]]
"""Per tier: ``(numerator, denominator)``."""


def reminded_before_suspension(t: ReadOnlyColumnCollection[str, Any]) -> ColumnElement[bool]:
    """A reminder task that reached the subscriber before the suspension.

    An SMS delivered, or a call completed with an outcome other than
    ``unreachable``, before ``suspension_at``. ``t``: the tasks table's columns
    or an alias's. The KPI, the escalation and the team page all use it.
    """
    return or_(
        and_(t.channel == Channel.SMS.value, t.delivered_at < t.suspension_at),
        and_(
            t.channel == Channel.CALL.value,
            t.status == CallStatus.COMPLETED.value,
            t.outcome.is_distinct_from(CallOutcome.UNREACHABLE.value),
            t.finished_at < t.suspension_at,
        ),
    )


def offer_reached(t: ReadOnlyColumnCollection[str, Any]) -> ColumnElement[bool]:
    """A win-back task that reached the subscriber.

    An SMS sent or delivered, or a call completed with an outcome other than
    ``unreachable``. ``t``: the tasks table's columns or an alias's.
    """
    return or_(
        and_(
            t.channel == Channel.SMS.value,
            t.status.in_((SmsStatus.SENT.value, SmsStatus.DELIVERED.value)),
        ),
        and_(
            t.channel == Channel.CALL.value,
            t.status == CallStatus.COMPLETED.value,
            t.outcome.is_distinct_from(CallOutcome.UNREACHABLE.value),
        ),
    )


def reminder_notices(*, start: datetime, end: datetime) -> Select[Any]:
    """VIP stop-notices whose suspension falls in ``[start, end)``, one row per notice.

    A notice is its ``pre_suspension_reminder`` tasks (subscriber, cause event):
    ``subscriber_id``, ``manager``, ``tier`` (one notice's tasks were made
    together, from one profile), ``suspension_at``, ``escalated_at``,
    ``reminded`` (one of its tasks reached the subscriber before the
    suspension) and ``not_suspended`` (one was ended by a payment or a churn).
    Callers narrow it with ``.where`` on the tasks' columns.
    """
    t = tasks.c
    return (
        select(
            t.subscriber_id,
            func.min(t.account_manager_id).label("manager"),
            func.min(t.tier).label("tier"),
            func.min(t.suspension_at).label("suspension_at"),
            func.max(t.escalated_at).label("escalated_at"),
            func.coalesce(func.bool_or(reminded_before_suspension(t)), False).label("reminded"),
            func.coalesce(func.bool_or(t.end_cause.in_(NOT_SUSPENDED_CAUSES)), False).label(
                "not_suspended"
            ),
        )
        .where(
            t.kind == TaskKind.PRE_SUSPENSION_REMINDER.value,
            t.tier.in_(VIP_TIERS),
            t.suspension_at >= start,
            t.suspension_at < end,
        )
        .group_by(t.subscriber_id, t.cause_event_id)
    )


async def reminder_counts(
    conn: AsyncConnection, *, start: datetime, end: datetime, now: datetime
) -> Counts:
    """Reminder before suspension, per VIP tier: ``(reminded, suspended)``.

    There is no suspension event in the contract, so "suspended" is inferred
    from the reminder tasks: one stop-notice (subscriber, cause event) counts
    when its ``pre_suspension_reminder`` tasks are for a VIP tier, its
    ``suspension_at`` is in ``[start, end)`` and not after ``now`` (a
    suspension still ahead has not happened yet), and no task of it was ended
    by a payment or a churn (``end_cause``). It is reminded when one of its
    tasks is an SMS delivered before the suspension, or a call completed
    before it with an outcome other than ``unreachable``.
    """
    notices = reminder_notices(start=start, end=end).where(tasks.c.suspension_at <= now).subquery()
    rows = await conn.execute(
        select(
            notices.c.tier,
            func.count().filter(notices.c.reminded),
            func.count(),
        )
        .where(~notices.c.not_suspended)
        .group_by(notices.c.tier)
    )
    return {tier: (int(num), int(den)) for tier, num, den in rows}


def win_back_offers(*, start: datetime, end: datetime) -> Select[Any]:
    """Win-back offers made in ``[start, end)``, one row per offer.

    An offer is one churn's win-back tasks (subscriber, cause event):
    ``manager``, ``tier``, ``reached`` (one of its tasks reached the subscriber)
    and ``won`` (one has the outcome ``won_back``). Callers narrow it with
    ``.where`` on the tasks' columns.
    """
    t = tasks.c
    return (
        select(
            func.min(t.account_manager_id).label("manager"),
            func.min(t.tier).label("tier"),
            func.coalesce(func.bool_or(offer_reached(t)), False).label("reached"),
            func.coalesce(func.bool_or(t.outcome == WON_BACK), False).label("won"),
        )
        .where(t.kind == TaskKind.WIN_BACK.value, t.created_at >= start, t.created_at < end)
        .group_by(t.subscriber_id, t.cause_event_id)
    )


async def win_back_counts(conn: AsyncConnection, *, start: datetime, end: datetime) -> Counts:
    """Win-back, per tier: ``(won back, offers that reached the subscriber)``.

    An offer is one churn's win-back tasks (subscriber, cause event) created in
    ``[start, end)``. It reached the subscriber when one of its tasks is an SMS
    ``sent`` or ``delivered``, or a call ``completed`` with an outcome other
    than ``unreachable``. It won them back when a task of it has the outcome
    ``won_back`` (alerting closes the offer when the subscriber reactivates).
    An offer that never reached the subscriber counts in neither: a
    reactivation before the offer went out is not the offer's doing.
    """
    offers = win_back_offers(start=start, end=end).subquery()
    rows = await conn.execute(
        select(offers.c.tier, func.count().filter(offers.c.won), func.count())
        .where(offers.c.reached)
        .group_by(offers.c.tier)
    )
    return {tier: (int(num), int(den)) for tier, num, den in rows}


class KpiFigure(BaseModel):
    """One KPI figure: numerator / denominator."""

    numerator: int = Field(ge=0)
    denominator: int = Field(ge=0)
    ratio: float | None = Field(description="numerator / denominator; null when it is 0.")


class Kpi(BaseModel):
    """One KPI over all tiers and by tier."""

    overall: KpiFigure
    by_tier: dict[str, KpiFigure] = Field(
        description="Every tier the KPI covers, also those with nothing in the period."
    )


class KpiReport(BaseModel):
    """Both KPIs for one month (``GET /v1/kpis``)."""

    period: str = Field(description="The month, YYYY-MM, in `timezone`.")
    timezone: str = Field(description="OUTREACH_TIMEZONE: where the month starts and ends.")
    start: datetime = Field(description="Start of the month (inclusive).")
    end: datetime = Field(description="End of the month (exclusive).")
    computed_at: datetime
    reminder_before_suspension: Kpi = Field(
        description="VIP subscribers suspended in the month who got a delivered reminder SMS "
        "or a completed reminder call before the suspension / VIP subscribers suspended."
    )
    win_back: Kpi = Field(
        description="Win-back offers made in the month that won the subscriber back / "
        "win-back offers made in the month that reached the subscriber."
    )


def _figure(numerator: int, denominator: int) -> KpiFigure:
    return KpiFigure(
        numerator=numerator,
        denominator=denominator,
        ratio=numerator / denominator if denominator else None,
    )


def _kpi(counts: Counts, tiers: tuple[str, ...]) -> Kpi:
    by_tier = {tier: _figure(*counts.get(tier, (0, 0))) for tier in tiers}
    return Kpi(
        overall=_figure(
            sum(f.numerator for f in by_tier.values()),
            sum(f.denominator for f in by_tier.values()),
        ),
        by_tier=by_tier,
    )


async def compute_kpis(
    conn: AsyncConnection, *, period: str, zone: ZoneInfo, now: datetime
) -> KpiReport:
    """Both KPIs for the month ``period`` (``YYYY-MM`` in ``zone``), as of ``now``."""
    start, end = month_bounds(period, zone)
    reminders = await reminder_counts(conn, start=start, end=end, now=now)
    win_backs = await win_back_counts(conn, start=start, end=end)
    return KpiReport(
        period=period,
        timezone=str(zone),
        start=start,
        end=end,
        computed_at=now,
        reminder_before_suspension=_kpi(reminders, VIP_TIERS),
        win_back=_kpi(win_backs, ALL_TIERS),
    )


def _check_period(value: str | None) -> str | None:
    """Refuse years whose month bounds a datetime cannot hold, or that mean nothing here."""
    if value is not None and not 1900 <= int(value[:4]) <= 9998:
        raise ValueError("the year must be from 1900 to 9998")
    return value


PeriodQuery = Annotated[
    str | None,
    Query(
        pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$",
        description="The month, YYYY-MM in OUTREACH_TIMEZONE (year 1900-9998); "
        "default: the current month.",
        examples=["2026-11"],
    ),
    AfterValidator(_check_period),
]


@router.get("/kpis", response_model=KpiReport)
async def get_kpis(
    engine: EngineDep, clock: ClockDep, settings: SettingsDep, period: PeriodQuery = None
) -> KpiReport:
    """The reminder-before-suspension and win-back KPIs for a month, overall and by tier."""
    now = clock.now()
    async with engine.connect() as conn:
        return await compute_kpis(
            conn,
            period=period or current_period(settings.zone, now=now),
            zone=settings.zone,
            now=now,
        )


def export_kpis(report: KpiReport) -> None:
    """Set the KPI gauges (``tier`` label: each tier and ``all``).

    A figure with nothing to measure (denominator 0) has no series rather than
    a made-up 0 or 1: an alert on a low ratio should not fire on an empty month.
    """
    for gauge, kpi in (
        (metrics.KPI_REMINDER_BEFORE_SUSPENSION, report.reminder_before_suspension),
        (metrics.KPI_WIN_BACK, report.win_back),
    ):
        for tier, figure in [("all", kpi.overall), *kpi.by_tier.items()]:
            _set_or_remove(gauge, tier, figure.ratio)


def _set_or_remove(gauge: Gauge, tier: str, value: float | None) -> None:
    if value is None:
        gauge.remove(tier)
    else:
        gauge.labels(tier).set(value)


class KpiRefresher:
    """Recomputes the KPI gauges for the current month every ``OUTREACH_KPI_INTERVAL_S``."""

    def __init__(
        self, settings: OutreachSettings, engine: AsyncEngine, *, clock: Clock | None = None
    ) -> None:
        """``clock``: the current month, and which suspensions have happened."""
        self.clock: Clock = clock or WallClock()
        self.settings = settings
        self.engine = engine
        self._loop = Periodic(
            self._refresh,
            interval_s=lambda: self.settings.outreach_kpi_interval_s,
            log=log,
            failure="KPI refresh failed; keeping the last values",
            level=logging.WARNING,  # the gauges keep their last values: nothing is lost
        )

    async def run(self) -> None:
        """Refresh until stopped; a failed refresh is logged and tried again next time."""
        await self._loop.run()

    async def _refresh(self) -> None:
        # None rather than the report: after every refresh the loop waits its interval.
        await self.refresh_once()

    async def refresh_once(self, *, now: datetime | None = None) -> KpiReport:
        """Compute this month's KPIs, set the gauges, and return them."""
        now = now or self.clock.now()
        async with self.engine.connect() as conn:
            report = await compute_kpis(
                conn,
                period=current_period(self.settings.zone, now=now),
                zone=self.settings.zone,
                now=now,
            )
        export_kpis(report)
        return report

    def stop(self) -> None:
        """Return from ``run`` after the pass in hand."""
        self._loop.stop()
