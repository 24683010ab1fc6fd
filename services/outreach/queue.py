"""The call queue account managers and the call centre work from.

A call task lives through ``queued → assigned → in_progress → completed``
(with an outcome), or ends ``expired`` (still queued at its ``due_at``: a
reminder call after the suspension is useless) or ``cancelled``. Every change
goes through ``service.transition`` / ``service.record_transitions``, so it is
audited, and final states are written to the outbox; a ``callback`` (not
final: the call goes back to its queue until the time the subscriber asked
for) is written to the outbox by ``record_outcome``, so every outcome an
agent records is published.

Queues: ``am:<account manager id>`` per manager, and the general call-centre
queue (``OUTREACH_GENERAL_QUEUE``), which also takes calls without a queue.
Claims use ``FOR UPDATE SKIP LOCKED``: concurrent claimers each get a
different call, or none. A claim not finished within
``OUTREACH_ASSIGNMENT_TIMEOUT_S`` goes back to its queue (``QueueKeeper``).

The database work (listing, claiming, starting, recording outcomes, the
keeper's requeue and expiry) is ``services.outreach.service.call_queue``; this
module runs the keeper.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from services.outreach import metrics, service
from services.outreach.service import claim_call, queued_calls, record_outcome, requeue_timed_out
from services.outreach.settings import OutreachSettings
from shared.clock import Clock, WallClock
from shared.periodic import Periodic

# The queue's database work lives in ``service.call_queue``; these are re-exported
# because callers (the bench, tests, docs/architecture.md) know them as queue's.
__all__ = [
    "KeeperPass",
    "QueueKeeper",
    "claim_call",
    "queued_calls",
    "record_outcome",
    "requeue_timed_out",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KeeperPass:
    """What one pass of the queue keeper did."""

    requeued: int
    expired: int


class QueueKeeper:
    """Returns timed-out claims to their queue and expires overdue calls, periodically."""

    def __init__(
        self, settings: OutreachSettings, engine: AsyncEngine, *, clock: Clock | None = None
    ) -> None:
        """``clock``: what is overdue (default: the wall clock)."""
        self.clock: Clock = clock or WallClock()
        self.settings = settings
        self.engine = engine
        self._loop = Periodic(
            self._keep,
            interval_s=lambda: self.interval_s,
            log=log,
            failure="call queue keeper pass failed; retrying",
        )
        self.passes = 0  # passes made (tests can wait on it)

    @property
    def interval_s(self) -> float:
        """Seconds between passes: a tenth of the assignment timeout, at most 30 s.

        Timeouts are then noticed within a tenth of their length. Expiry needs
        no precision: a claim never hands out a call past its due time.
        """
        return max(0.1, min(30.0, self.settings.outreach_assignment_timeout_s / 10))

    async def keep_once(self, *, now: datetime | None = None) -> KeeperPass:
        """One pass: requeue timed-out claims, then expire overdue calls, in one transaction.

        ``now`` (default: the clock) decides what timed out and what is overdue:
        tests pass a later time to act as if it had come.
        """
        now = now or self.clock.now()
        self.passes += 1
        async with self.engine.begin() as conn:
            requeued = await requeue_timed_out(
                conn, now=now, timeout_s=self.settings.outreach_assignment_timeout_s
            )
            # After the requeue, so a timed-out call past its due time expires now.
            expired = await service.expire_overdue_calls(conn, now=now)
            wait = await service.oldest_due_wait(conn, now=now)
        if requeued:
            metrics.CALLS.labels("requeued", "").inc(requeued)
        if expired:
            metrics.CALLS.labels("expired", "").inc(expired)
        metrics.CALL_QUEUE_AGE.set(wait)
        return KeeperPass(requeued, expired)

    async def run(self) -> None:
        """Keep the queues until stopped; a failed pass is logged and retried next time."""
        await self._loop.run()

    async def _keep(self) -> None:
        done = await self.keep_once()
        if done.requeued or done.expired:
            log.info(
                "call queue kept",
                extra={"requeued": done.requeued, "expired": done.expired},
            )

    def stop(self) -> None:
        """Return from ``run`` after the pass in hand."""
        self._loop.stop()
