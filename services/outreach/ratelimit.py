"""The SMS send rate of the whole deployment, shared by every outreach replica.

``SMS_RATE_LIMIT_PER_S`` is the provider's contracted rate. It used to be a
token bucket in each process, so N replicas could send N times the rate. The
bucket is now one row in PostgreSQL, the one store the replicas share
(``service.take_tokens``): capacity a tenth of a second's worth (at least
one SMS), refilled at the rate on the database's clock, as before.

A round trip per SMS would cost the database thousands of statements a
second at a high rate, so a replica takes a small grant at a time, a quarter
of the bucket (at least one token), and hands it to its waiters in order:
a few tens of statements a second per replica at full rate, whatever the rate.
Taking a whole grant, not just what is waiting, keeps the next senders from
waiting for a round trip at a high rate. A grant is only ever what the bucket
holds, so the deployment as a whole is never granted more than the bucket's
capacity plus the rate times the interval, however many replicas race for
it. Tokens a replica was granted but did not use within the bucket's own
horizon (a tenth of a second) lapse, so they cannot pile up into a later
burst; at a low rate of sends that wastes some, which costs nothing then.

Why our own and not a library: ``aiolimiter`` and the bucket this replaces
are per process. ``pyrate-limiter``'s PostgreSQL bucket writes a row per
acquired item and counts a sliding window over them (thousands of inserts and
deletes a second here), runs on the synchronous psycopg pool (we use asyncpg)
and creates its own table outside our migrations. ``limits`` has no
PostgreSQL storage, and Redis is not something the replicas share.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from services.outreach import service
from shared.clock import Clock

SMS_BUCKET = "sms"
"""The bucket of the provider's contracted rate (one per deployment)."""

GRANT_SHARE = 4
"""A replica takes at most 1/GRANT_SHARE of the bucket per round trip (at least one token)."""

MIN_WAIT_S = 1e-6
"""Shortest wait for tokens: the database clock's resolution (a microsecond)."""


class SharedTokenBucket:
    """The deployment-wide send rate: ``acquire()`` waits for a token from the shared bucket.

    ``rate`` tokens per second; the bucket holds at most a tenth of a second's
    worth (at least one), so the rate holds over any second give or take 10%
    while sends still overlap the provider's latency. ``clock`` (default: the
    database's clock) and ``sleep`` are for tests that drive time themselves.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        rate: float,
        *,
        name: str = SMS_BUCKET,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.name = name
        self.rate = rate
        self.capacity = max(1.0, rate / 10)
        self.max_grant = max(1, math.floor(self.capacity / GRANT_SHARE))
        # Unused tokens lapse after the bucket's horizon: they were granted for then.
        self.hold_s = self.capacity / rate
        self.round_trips = 0  # statements run against the bucket (for the curious and tests)
        self._clock, self._sleep, self._monotonic = clock, sleep, monotonic
        self._tokens = 0
        self._lapses_at = 0.0
        self._waiting = 0
        self._lock = asyncio.Lock()

    async def take(self, want: int) -> service.Grant:
        """One round trip: up to ``want`` tokens from the shared bucket, in its own transaction."""
        self.round_trips += 1
        now = self._clock.now() if self._clock is not None else None
        async with self.engine.begin() as conn:
            return await service.take_tokens(
                conn, name=self.name, want=want, rate=self.rate, capacity=self.capacity, now=now
            )

    async def acquire(self) -> None:
        """Wait for a token and take it; waiters are served in order.

        Raises what the database raises (it is down): the caller's SMS then
        waits, unsent, rather than go out over the contracted rate.
        """
        self._waiting += 1
        try:
            async with self._lock:
                if self._tokens and self._monotonic() >= self._lapses_at:
                    self._tokens = 0
                while not self._tokens:
                    grant = await self.take(self.max_grant)
                    if grant.granted:
                        self._tokens = grant.granted
                        self._lapses_at = self._monotonic() + self.hold_s
                        break
                    # Short: wait until the bucket should hold enough for the sends
                    # waiting here now (this one included). Another replica may take
                    # it first; then we wait again.
                    need = min(self._waiting, self.max_grant)
                    await self._sleep(max(MIN_WAIT_S, (need - grant.tokens) / self.rate))
                self._tokens -= 1
        finally:
            self._waiting -= 1
