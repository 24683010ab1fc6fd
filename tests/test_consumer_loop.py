"""The shared consumer loop on the real broker and database: DLQ, no commit on failure, stop."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.consumer import ConsumerLoop, Inbound
from shared.db import create_engine
from shared.events import Event, parse_event
from shared.kafka import ensure_topics, make_producer
from shared.outbox import Outbox
from shared.settings import BaseServiceSettings
from shared.topics import Topics
from tests.helpers import (
    committed_offsets,
    end_offsets,
    eventually,
    read_topic,
    sid,
    stop_notice,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Recorder:
    """A handler that stores event ids in a table, and can be told to fail or to wait."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.calls = 0
        self.fail = False
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.committed: list[int] = []  # batch sizes whose after-commit callback ran

    async def __call__(
        self, conn: AsyncConnection, batch: Sequence[Inbound[Event]], outbox: Outbox
    ) -> None:
        self.calls += 1
        for item in batch:
            await conn.execute(
                text(f"INSERT INTO {self.table} VALUES (:id)"),  # noqa: S608
                {"id": str(item.value.event_id)},
            )
        self.entered.set()
        outbox.after_commit(lambda: self.committed.append(len(batch)))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("handler failed on purpose")


@pytest.fixture
async def setup(env: dict[str, Any]) -> AsyncIterator[tuple[BaseServiceSettings, AsyncEngine, str]]:
    settings = BaseServiceSettings(**env)
    await ensure_topics(settings)
    engine = create_engine(settings)
    table = f"loop_{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE TABLE {table} (event_id text)"))
    yield settings, engine, table
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP TABLE {table}"))
    await engine.dispose()


async def _rows(engine: AsyncEngine, table: str) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(f"SELECT event_id FROM {table}"))).scalars())  # noqa: S608


async def _produce(
    settings: BaseServiceSettings, topic: str, values: list[bytes], key: str
) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value=value, key=key.encode())
    finally:
        await producer.stop()


def _loop(
    settings: BaseServiceSettings, engine: AsyncEngine, handler: Recorder, group: str, producer: Any
) -> ConsumerLoop[Event]:
    topics = Topics(settings.kafka_topic_prefix)
    return ConsumerLoop(
        service="test",
        settings=settings,
        topics=[topics.events],
        group_id=group,
        parser=lambda r: parse_event(r.value),
        handler=handler,
        engine=engine,
        producer=producer,
        restart_backoff_s=0.2,
    )


async def test_poison_messages_go_to_the_dlq_and_the_loop_goes_on(setup: Any) -> None:
    settings, engine, table = setup
    topics = Topics(settings.kafka_topic_prefix)
    subscriber = sid()
    good = [stop_notice(subscriber), stop_notice(subscriber)]
    invalid = stop_notice(subscriber) | {"payload": {"reason": "arrears"}}
    await _produce(
        settings,
        topics.events,
        [
            orjson.dumps(good[0]),
            b"\xff not json",
            orjson.dumps(invalid),
            orjson.dumps(good[1]),
        ],
        subscriber,
    )
    producer = make_producer(settings)
    await producer.start()
    handler = Recorder(table)
    group = f"g-{uuid.uuid4().hex[:8]}"
    loop = _loop(settings, engine, handler, group, producer)
    task = asyncio.create_task(loop.run())
    try:
        await eventually(lambda: _rows(engine, table), what="good events stored")
        rows = await eventually(lambda: _has(engine, table, 2), what="both good events stored")
        assert sorted(rows) == sorted(e["event_id"] for e in good)
        dead = await read_topic(settings.kafka_bootstrap_servers, topics.dlq, count=2)
        assert len(dead) == 2
        headers = [dict(r.headers) for r in dead]
        assert sorted(int(h["dlq.source_offset"]) for h in headers) == [1, 2]
        assert {h["dlq.reason_class"] for h in headers} == {b"decode", b"validation"}
        assert any(b"suspension_at" in h["dlq.reason"] for h in headers)
        assert dead[0].key == subscriber.encode()
        ends = await end_offsets(settings.kafka_bootstrap_servers, topics.events)
        await eventually(
            lambda: _committed_equals(settings, group, topics.events, ends),
            what="offsets committed past the poison messages",
        )
    finally:
        loop.stop()
        await task
        await producer.stop()


async def _has(engine: AsyncEngine, table: str, n: int) -> list[str] | None:
    rows = await _rows(engine, table)
    return rows if len(rows) >= n else None


async def _committed_equals(
    settings: BaseServiceSettings, group: str, topic: str, ends: dict[int, int]
) -> bool:
    committed = await committed_offsets(settings.kafka_bootstrap_servers, group, topic)
    return all(committed.get(p) == end for p, end in ends.items() if end > 0)


async def test_a_failed_batch_is_not_committed_and_is_redelivered(setup: Any) -> None:
    settings, engine, table = setup
    topics = Topics(settings.kafka_topic_prefix)
    subscriber = sid()
    good = stop_notice(subscriber)
    await _produce(settings, topics.events, [orjson.dumps(good)], subscriber)
    producer = make_producer(settings)
    await producer.start()
    handler = Recorder(table)
    handler.fail = True
    group = f"g-{uuid.uuid4().hex[:8]}"
    loop = _loop(settings, engine, handler, group, producer)
    task = asyncio.create_task(loop.run())
    try:
        await eventually(lambda: _async(handler.calls >= 2), what="the batch to be redelivered")
        # Failed twice: nothing stored (rolled back), nothing committed, no callback run.
        assert await _rows(engine, table) == []
        assert handler.committed == []
        committed = await committed_offsets(settings.kafka_bootstrap_servers, group, topics.events)
        assert all(offset is None for offset in committed.values()), committed
        handler.fail = False
        rows = await eventually(lambda: _has(engine, table, 1), what="the batch to succeed")
        assert rows == [good["event_id"]]  # stored once, not once per delivery
        # The successful batch's after-commit callback (run once its commit returned).
        await eventually(lambda: _async(handler.committed == [1]), what="the callback")
        ends = await end_offsets(settings.kafka_bootstrap_servers, topics.events)
        await eventually(
            lambda: _committed_equals(settings, group, topics.events, ends),
            what="offsets committed after success",
        )
    finally:
        loop.stop()
        await task
        await producer.stop()


async def _async(value: bool) -> bool:
    return value


async def test_stop_lets_the_batch_in_hand_finish_and_commit(setup: Any) -> None:
    settings, engine, table = setup
    topics = Topics(settings.kafka_topic_prefix)
    subscriber = sid()
    await _produce(settings, topics.events, [orjson.dumps(stop_notice(subscriber))], subscriber)
    producer = make_producer(settings)
    await producer.start()
    handler = Recorder(table)
    handler.gate = asyncio.Event()
    group = f"g-{uuid.uuid4().hex[:8]}"
    loop = _loop(settings, engine, handler, group, producer)
    task = asyncio.create_task(loop.run())
    try:
        await asyncio.wait_for(handler.entered.wait(), 20)
        loop.stop()  # while the handler is mid-batch
        handler.gate.set()
        await asyncio.wait_for(task, 20)
        assert len(await _rows(engine, table)) == 1
        ends = await end_offsets(settings.kafka_bootstrap_servers, topics.events)
        assert await _committed_equals(settings, group, topics.events, ends)
    finally:
        loop.stop()
        await producer.stop()


async def test_send_many_batches_by_partition_as_send_would(setup: Any) -> None:
    settings, _, _ = setup
    topics = Topics(settings.kafka_topic_prefix)
    await ensure_topics(settings)
    # Many keys, with values big enough that a partition's messages fill several
    # record batches, and one message bigger than a whole batch.
    keys = [f"S-{i:04d}".encode() for i in range(300)]
    messages = [(k, k + b"|" + b"x" * 400, [("n", str(i).encode())]) for i, k in enumerate(keys)]
    messages.append((b"S-BIG", b"y" * 40_000, []))
    producer = make_producer(settings)
    await producer.start()
    try:
        outbox = Outbox(producer)
        await outbox.send_many(topics.events, messages)
        assert 3 <= outbox.pending < len(messages)  # batches, not one future per message
        await outbox.flush()
        # The partitions send() chooses for the same keys (the default partitioner).
        expected = {
            k: (await (await producer.send(topics.scores, value=b"-", key=k))).partition
            for k, _, _ in messages
        }
    finally:
        await producer.stop()
    records = await read_topic(settings.kafka_bootstrap_servers, topics.events, count=len(messages))
    assert sorted(r.value for r in records) == sorted(v for _, v, _ in messages)
    for record in records:
        assert record.partition == expected[record.key], record.key
    n = {r.key: r.headers for r in records}
    assert list(n[b"S-0007"]) == [("n", b"7")]


async def _delete_topics(settings: BaseServiceSettings) -> None:
    """The fault: every churnwatch topic deleted under the running loop."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics(Topics(settings.kafka_topic_prefix).all())
    finally:
        await admin.close()


async def test_lost_topics_the_loop_waits_says_so_once_and_resumes_from_the_new_start(
    setup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Topics deleted (KAFKA_RECREATE_LOST_TOPICS off): wait, log once, metric; then resume.

    The re-created topic starts at offset 0 while the group committed offsets on
    the old one: the loop must read the new records, not wait past their end.
    """
    base, engine, table = setup
    settings = BaseServiceSettings(**{**base.model_dump(), "kafka_recreate_lost_topics": False})
    topics = Topics(settings.kafka_topic_prefix)
    subscriber = sid()
    first = [stop_notice(subscriber) for _ in range(5)]
    await _produce(settings, topics.events, [orjson.dumps(e) for e in first], subscriber)
    producer = make_producer(settings)
    await producer.start()
    handler = Recorder(table)
    loop = _loop(settings, engine, handler, f"g-{uuid.uuid4().hex[:8]}", producer)
    task = asyncio.create_task(loop.run())
    try:

        async def rows_are(n: int) -> bool:
            return len(await _rows(engine, table)) == n

        await eventually(lambda: rows_are(5), timeout_s=30, what="the first records handled")
        await _delete_topics(settings)

        async def waiting() -> bool:
            return loop.waiting_for_topics and not loop.healthy

        await eventually(waiting, timeout_s=20, what="the loop to wait for its topics")
        gauge = REGISTRY.get_sample_value(
            "churnwatch_consumer_waiting_for_topics", {"service": "test"}
        )
        assert gauge == 1
        # Still waiting a few polls later (nothing re-created them: the setting is off).
        await eventually(
            lambda: _async(loop.guard.last is not None and loop.guard.last.kind == "missing"),
            what="a missing verdict",
        )
        assert loop.waiting_for_topics
        # An operator re-creates them; new records go to offset 0 of the new topic.
        await ensure_topics(settings)
        second = [stop_notice(subscriber) for _ in range(3)]
        await _produce(settings, topics.events, [orjson.dumps(e) for e in second], subscriber)
        await eventually(lambda: rows_are(8), timeout_s=40, what="the new records handled")
        assert sorted(await _rows(engine, table)) == sorted(e["event_id"] for e in first + second)
        assert not loop.waiting_for_topics
        messages = [r.getMessage() for r in caplog.records if r.name == "shared.consumer"]
        assert messages.count("consumer waiting for its topics") == 1, messages
        assert messages.count("topics are back; consumer rejoining") == 1, messages
    finally:
        loop.stop()
        await asyncio.wait_for(task, 20)
        await producer.stop()


async def test_stop_is_prompt_while_waiting_for_topics(setup: Any) -> None:
    """SIGTERM (``stop()``) while the topics are missing: the loop exits in about a second."""
    base, engine, table = setup
    settings = BaseServiceSettings(**{**base.model_dump(), "kafka_recreate_lost_topics": False})
    await _delete_topics(settings)
    producer = make_producer(settings)
    await producer.start()
    loop = _loop(settings, engine, Recorder(table), f"g-{uuid.uuid4().hex[:8]}", producer)
    task = asyncio.create_task(loop.run())
    try:
        await eventually(
            lambda: _async(loop.waiting_for_topics), timeout_s=20, what="the loop waiting"
        )
        start = time.monotonic()
        loop.stop()
        await asyncio.wait_for(task, 10)
        took = time.monotonic() - start
        assert took < 1.5, f"stop took {took:.2f}s while waiting for topics"
    finally:
        loop.stop()
        await producer.stop()
