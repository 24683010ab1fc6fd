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

Both are served at ``GET /v1/kpis?period=YYYY-MM`` (``views.kpis``) and exported
as gauges for the current month by ``KpiRefresher``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import orjson
from aiokafka import AIOKafkaProducer
from prometheus_client import Gauge
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.outreach import metrics, service
from services.outreach.service import (
    ALL_TIERS,
    OUTCOMES_TOPIC,
    VIP_TIERS,
    Counts,
    reminder_counts,
    win_back_counts,
)
from services.outreach.settings import OutreachSettings
from shared.clock import Clock, WallClock
from shared.outbox import Outbox
from shared.periodic import Periodic
from shared.topics import Topics

log = logging.getLogger(__name__)

RELAY_BATCH = 500
"""Most outbox rows one relay pass publishes (one transaction, one wait for acks)."""


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
                rows = await service.lock_unpublished(
                    conn, topics=self.destinations, limit=self.batch
                )
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
                await service.mark_published(
                    conn, ids=[row.id for row in rows], at=datetime.now(UTC)
                )
        finally:
            with contextlib.suppress(Exception):
                await self._count_pending()
        metrics.OUTCOMES_PUBLISHED.inc(len(rows))
        return len(rows)

    async def _count_pending(self) -> None:
        async with self.engine.connect() as conn:
            pending = await service.count_unpublished(conn)
        metrics.OUTBOX_PENDING.set(pending)


# --- KPIs -------------------------------------------------------------------------------

# The KPIs' queries (who counts as reminded, which offers reached the
# subscriber) are ``service.kpis``; this part turns their counts into the report.


def month_bounds(period: str, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """``[start, end)`` of the month ``YYYY-MM`` in ``zone``, as aware datetimes."""
    year, month = (int(part) for part in period.split("-"))
    start = datetime(year, month, 1, tzinfo=zone)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=zone)
    return start, end


def current_period(zone: ZoneInfo, *, now: datetime | None = None) -> str:
    """The month ``now`` falls in, in ``zone``, as ``YYYY-MM``."""
    return (now or datetime.now(UTC)).astimezone(zone).strftime("%Y-%m")


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
