"""Retention: a periodic purge of per-message bookkeeping older than ``RETENTION_DAYS``.

What goes is what only exists to make redelivery harmless or to hand a message
on: the processed-id rows of the consumers (``scoring.processed_events``,
``alerting.processed_messages``) and the outbox rows the relay has published.
Business records (scores, alerts, tasks, their audit trail, opt-outs) stay.

The constraint: a processed-id row must outlive every chance that its message is
delivered again, that is the Kafka topic's retention (a consumer group reset to
the earliest offset replays all of it). So ``RETENTION_DAYS`` must be well above
the topics' ``retention.ms`` (docs/security.md#retention).

Rows are deleted in batches of ``batch`` rows, each its own short transaction,
so a first purge of a large backlog does not hold locks for long.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter
from sqlalchemy import ColumnElement, Table, delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.periodic import Periodic

log = logging.getLogger(__name__)

PURGED = Counter(
    "churnwatch_retention_purged_rows_total",
    "Rows deleted by the retention purge (RETENTION_DAYS).",
    ["table"],
)


@dataclass(frozen=True)
class PurgeRule:
    """Rows of ``table`` whose ``column`` is before the cutoff go; ``where`` narrows it."""

    table: Table
    column: str
    where: ColumnElement[bool] | None = None

    @property
    def name(self) -> str:
        """``schema.table``."""
        return f"{self.table.schema}.{self.table.name}"


async def purge(
    engine: AsyncEngine, *, rules: Sequence[PurgeRule], cutoff: datetime, batch: int = 10_000
) -> dict[str, int]:
    """Delete every rule's rows older than ``cutoff``; return the rows deleted per table."""
    deleted: dict[str, int] = {}
    for rule in rules:
        key = rule.table.primary_key.columns.values()[0]
        condition = rule.table.c[rule.column] < cutoff
        if rule.where is not None:
            condition = condition & rule.where
        total = 0
        while True:
            # DELETE has no LIMIT in PostgreSQL: delete the keys of one batch.
            doomed = select(key).where(condition).limit(batch).scalar_subquery()
            async with engine.begin() as conn:
                result = await conn.execute(delete(rule.table).where(key.in_(doomed)))
            total += result.rowcount
            if result.rowcount < batch:
                break
        deleted[rule.name] = total
        if total:
            PURGED.labels(rule.name).inc(total)
    return deleted


class Purger:
    """Runs :func:`purge` every ``interval_s`` seconds with the cutoff ``days`` ago.

    ``days == 0`` turns it off. A failed purge (database away) is logged and
    tried again at the next interval; it never stops the service.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        rules: Sequence[PurgeRule],
        *,
        days: int,
        interval_s: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._rules = list(rules)
        self._days = days
        self._clock = clock
        self._loop = Periodic(
            self._purge,
            interval_s=interval_s,
            log=log,
            failure="retention purge failed; retrying at the next interval",
        )

    async def run_once(self) -> dict[str, int]:
        """One purge now."""
        cutoff = self._clock() - timedelta(days=self._days)
        deleted = await purge(self._engine, rules=self._rules, cutoff=cutoff)
        if any(deleted.values()):
            log.info("retention purge", extra={"deleted": deleted, "cutoff": cutoff.isoformat()})
        return deleted

    async def run(self) -> None:
        """Purge at start and then every interval, until :meth:`stop`."""
        if self._days <= 0 or not self._rules:
            return
        await self._loop.run()

    async def _purge(self) -> None:
        # None rather than run_once's counts: after every purge the loop waits its interval.
        await self.run_once()

    def stop(self) -> None:
        """Let :meth:`run` return after the purge in hand."""
        self._loop.stop()
