"""The deployment-wide SMS rate: one token bucket in PostgreSQL for every outreach replica.

Replicas are played by limiters (and dispatchers) on engines of their own,
as separate processes would have, against the session's real PostgreSQL.
Bounds are checked on counts, against the bucket's own clock: either the
database's (``clock_timestamp()``, read before and after a run) or a clock the
test moves itself, so no assertion depends on how fast this machine is.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from churnwatch.embedded import free_port
from churnwatch.gateway import Faults, GatewaySettings, create_gateway_app
from services.outreach import service
from services.outreach.ratelimit import SMS_BUCKET, SharedTokenBucket
from services.outreach.settings import OutreachSettings
from services.outreach.sms import Dispatcher, SmsClient
from services.outreach.tables import send_rates
from shared.db import create_engine
from tests.helpers import serve
from tests.test_sms import sms_task

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKEN = "sms-rate-test-token"


class ManualClock:
    """A bucket clock the test moves: ``advance`` is the limiter's ``sleep``."""

    def __init__(self) -> None:
        self.start = datetime(2030, 1, 1, tzinfo=UTC)
        self.elapsed = 0.0

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.elapsed)

    async def advance(self, seconds: float) -> None:
        self.elapsed += seconds

    def monotonic(self) -> float:
        """For the limiter's lapse of unused tokens: lapses in this clock's time too."""
        return self.elapsed


def bucket_name() -> str:
    """A bucket of this test's own: the session's other tests use ``sms``."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def engines(env: dict[str, Any]) -> AsyncIterator[list[AsyncEngine]]:
    """Three engines, one per pretend replica (separate pools, separate connections)."""
    settings = OutreachSettings(**env)
    made = [create_engine(settings) for _ in range(3)]
    yield made
    for engine in made:
        await engine.dispose()


async def db_now(engine: AsyncEngine) -> datetime:
    """The database's clock, the one the shared bucket refills on."""
    async with engine.connect() as conn:
        at = await conn.scalar(select(func.clock_timestamp()))
    assert isinstance(at, datetime)
    return at


async def test_one_replica_keeps_the_rate_and_burst_it_had(engines: list[AsyncEngine]) -> None:
    """Rate and burst as the per-process bucket had them: 20/s, a tenth of a second's worth."""
    clock = ManualClock()
    bucket = SharedTokenBucket(
        engines[0],
        20.0,
        name=bucket_name(),
        clock=clock,
        sleep=clock.advance,
        monotonic=clock.monotonic,
    )
    assert (bucket.capacity, bucket.max_grant) == (2.0, 1)
    for _ in range(42):
        await bucket.acquire()
    # A full bucket of 2 at once, then 40 more at 20/s: 2 s of the bucket's clock.
    assert clock.elapsed == pytest.approx(2.0, abs=1e-4)


async def test_one_replica_reaches_a_high_rate_in_few_round_trips(
    engines: list[AsyncEngine],
) -> None:
    """At 1,000/s (the bench's rate) 64 senders get exactly the rate, a grant per 25 SMS."""
    clock = ManualClock()
    bucket = SharedTokenBucket(
        engines[0],
        1000.0,
        name=bucket_name(),
        clock=clock,
        sleep=clock.advance,
        monotonic=clock.monotonic,
    )
    assert (bucket.capacity, bucket.max_grant) == (100.0, 25)
    sent = 0

    async def sender() -> None:
        nonlocal sent
        for _ in range(40):
            await bucket.acquire()
            sent += 1

    await asyncio.gather(*(sender() for _ in range(64)))
    assert sent == 2560
    # 100 at once, the other 2,460 at 1,000/s: no faster, and no slower either.
    assert clock.elapsed == pytest.approx(2.46, abs=1e-3)
    # Not a statement per SMS: grants of up to 25, plus a round trip that finds
    # the bucket short after each wait at most.
    assert bucket.round_trips <= 2 * 2560 / 25


async def test_tokens_a_replica_did_not_use_in_time_lapse(engines: list[AsyncEngine]) -> None:
    """Left-over tokens of a grant cannot add to a later burst: after 0.1 s they are gone."""
    clock = ManualClock()
    bucket = SharedTokenBucket(
        engines[0],
        1000.0,
        name=bucket_name(),
        clock=clock,
        sleep=clock.advance,
        monotonic=clock.monotonic,
    )
    await bucket.acquire()  # a grant of 25: 24 left in hand
    await bucket.acquire()
    assert bucket.round_trips == 1
    await clock.advance(bucket.hold_s)
    await bucket.acquire()  # the 23 left lapsed: a new grant
    assert bucket.round_trips == 2


async def test_replicas_taking_at_one_instant_get_one_bucket_between_them(
    engines: list[AsyncEngine],
) -> None:
    """Concurrent statements from three connections at a frozen time: only the bucket's worth."""
    name, now = bucket_name(), datetime(2030, 1, 1, tzinfo=UTC)

    async def take(engine: AsyncEngine) -> int:
        async with engine.begin() as conn:
            grant = await service.take_tokens(
                conn, name=name, want=3, rate=1000.0, capacity=100.0, now=now
            )
        return grant.granted

    grants = await asyncio.gather(*(take(e) for e in engines for _ in range(20)))
    # 60 asks of 3 (180) against a bucket of 100 that no time refills: exactly 100.
    assert sum(grants) == 100
    assert set(grants) <= {0, 1, 3}


async def test_three_replicas_racing_send_no_more_than_rate_times_interval_plus_burst(
    engines: list[AsyncEngine],
) -> None:
    """Three replicas, 16 senders each, drawing as fast as they can on the database's clock."""
    rate, name = 200.0, bucket_name()
    buckets = [SharedTokenBucket(engine, rate, name=name) for engine in engines]
    counts = [0, 0, 0]
    started = await db_now(engines[0])
    # How long they draw is a measured interval, not a synchronisation: the bound is
    # checked against the database's clock, read before the first and after the last.
    stop_at = time.monotonic() + 1.5

    async def sender(replica: int) -> None:
        while time.monotonic() < stop_at:
            await buckets[replica].acquire()
            counts[replica] += 1

    await asyncio.gather(*(sender(r) for r in range(3) for _ in range(16)))
    interval = (await db_now(engines[0]) - started).total_seconds()
    total = sum(counts)
    capacity = buckets[0].capacity  # 20
    assert total <= capacity + rate * interval, (counts, interval)
    # Not vacuous: the bucket was refilled and shared, not just emptied once by one.
    assert total > capacity and all(counts), (counts, interval)
    async with engines[0].connect() as conn:
        left = await conn.scalar(select(send_rates.c.tokens).where(send_rates.c.name == name))
    assert left is not None and 0 <= left <= capacity


async def test_two_dispatchers_send_at_the_one_contracted_rate(
    env: dict[str, Any], engines: list[AsyncEngine]
) -> None:
    """Two outreach replicas' dispatchers, one gateway: the gateway sees the rate, not twice it."""
    port = free_port()
    gateway_app = create_gateway_app(
        GatewaySettings(
            sms_gateway_port=port,
            sms_gateway_token=TOKEN,
            sms_gateway_receipt_url="http://127.0.0.1:9/receipts",
            sms_gateway_inbound_url="http://127.0.0.1:9/inbound",
            sms_gateway_faults=Faults(drop_receipts=True),
        )
    )
    gateway = gateway_app.state.gateway
    server, serving = await serve(gateway_app, port)
    rate = 20.0
    settings = OutreachSettings(
        **env,
        sms_gateway_url=f"http://127.0.0.1:{port}",
        sms_gateway_token=TOKEN,
        sms_rate_limit_per_s=rate,
        outreach_dispatch_batch=10,  # so the two share the work
    )
    clients = [httpx.AsyncClient(base_url=settings.sms_gateway_url, timeout=5) for _ in range(2)]
    dispatchers = [
        Dispatcher(settings, engine, SmsClient(client, TOKEN, "Test"))
        for engine, client in zip(engines[:2], clients, strict=True)
    ]
    tasks = [sms_task() for _ in range(40)]
    mine = {str(t.task_id) for t in tasks}
    try:
        async with engines[2].begin() as conn:
            await service.store_tasks(conn, new_tasks=tasks, now=datetime.now(UTC))
        started = await db_now(engines[2])
        handled = [0, 0]
        deadline = time.monotonic() + 60

        async def replica(i: int) -> None:
            # Each pass claims up to 10 due SMS and sends them through the shared bucket.
            while not mine <= {m.reference for m in gateway.messages}:
                assert time.monotonic() < deadline, "the SMS were not all sent within 60 s"
                handled[i] += await dispatchers[i].dispatch_once()

        await asyncio.gather(replica(0), replica(1))
        interval = (await db_now(engines[2]) - started).total_seconds()
    finally:
        for client in clients:
            await client.aclose()
        server.should_exit = True
        await serving
    references = [m.reference for m in gateway.messages]
    assert sorted(r for r in references if r in mine) == sorted(mine)  # each exactly once
    # Everything the gateway got went through the bucket (leftover SMS of other tests
    # included), in this interval of the database's clock, from a bucket of 2.
    assert len(references) <= dispatchers[0].bucket.capacity + rate * interval
    assert all(handled), handled  # both replicas sent
    assert dispatchers[0].bucket.name == SMS_BUCKET
