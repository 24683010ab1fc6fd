"""Two scoring replicas in one consumer group, on the real broker and PostgreSQL.

They share the events topic's partitions; stopping one mid-stream (cleanly, or
by killing its consumer mid-batch) moves its partitions to the other.
Afterwards every event was applied exactly once, each subscriber's feature
state holds all of its events (no replica scored from a state that missed the
other's work), and a subscriber was only ever handled by one replica at a
time, moving at most once, from the stopped one to the survivor.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.scoring.codec import decode
from services.scoring.consumer import ScoringHandler
from services.scoring.settings import ScoringSettings
from services.scoring.tables import features, processed_events
from shared.consumer import Handler, Inbound
from shared.kafka import make_producer
from shared.outbox import Outbox
from shared.runtime import ServiceRuntime
from tests.helpers import calls, eventually, profile, sid

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass(frozen=True)
class Handled:
    """One batch one replica handled: when, which partitions and subscribers."""

    replica: str
    started: float
    ended: float
    partitions: frozenset[int]
    subscribers: frozenset[str]


class Replica:
    """A scoring replica as services/scoring/app.py starts one, recording its batches."""

    def __init__(self, name: str, settings: ScoringSettings, log: list[Handled]) -> None:
        self.name = name
        self.settings = settings
        self.runtime = ServiceRuntime(settings, "scoring")
        self.handler = ScoringHandler(settings, self.runtime.topics)
        self.log = log

    def _recording(self) -> Handler[Any]:
        async def handle(
            conn: AsyncConnection, batch: Sequence[Inbound[Any]], outbox: Outbox
        ) -> None:
            started = time.monotonic()
            await self.handler(conn, batch, outbox)
            self.log.append(
                Handled(
                    self.name,
                    started,
                    time.monotonic(),
                    frozenset(item.partition for item in batch),
                    frozenset(item.value.subscriber_id for item in batch if item.value is not None),
                )
            )

        return handle

    async def start(self) -> None:
        """The same consumer wiring as the scoring app's lifespan."""
        await self.handler.load(self.runtime.engine)
        await self.runtime.start(
            topics=[self.runtime.topics.events, self.runtime.topics.outcomes],
            group_id=self.settings.scoring_consumer_group,
            parser=self.handler.parse,
            handler=self._recording(),
            on_failure=lambda: self.handler.load(self.runtime.engine),
            on_revoked=self.handler.forget,
            max_records=50,  # small batches: many of them, so the stop lands mid-stream
        )


async def crash(replica: Replica) -> None:
    """Kill a replica's consumer mid-whatever: its open transaction rolls back uncommitted.

    Cancelling the loop's task is what a crash looks like from the group's side,
    minus the session timeout: the batch in hand is neither stored nor committed,
    so the survivor gets it again from the last committed offset.
    """
    task = replica.runtime._task
    assert task is not None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    replica.runtime._task = None
    await replica.runtime.stop()  # closes the producer and the engine


@pytest.mark.parametrize("how", ["stop", "crash"])
async def test_two_replicas_share_partitions_and_hand_over_without_loss(
    env: dict[str, Any], how: str
) -> None:
    settings = ScoringSettings(**env, scoring_min_history_days=0)
    partitions = settings.kafka_topic_partitions
    assert partitions >= 3
    log: list[Handled] = []
    a, b = Replica("a", settings, log), Replica("b", settings, log)
    producer = make_producer(settings)
    await producer.start()
    sent: dict[str, list[dict[str, Any]]] = {}

    async def send(items: list[dict[str, Any]]) -> None:
        for item in items:
            sent.setdefault(item["subscriber_id"], []).append(item)
            await producer.send(
                a.runtime.topics.events,
                key=item["subscriber_id"].encode(),
                value=orjson.dumps(item),
            )
        await producer.flush()

    async def applied() -> int:
        # b's engine: a's is disposed when a stops, and would quietly reopen a pool.
        async with b.runtime.engine.connect() as conn:
            query = select(func.coalesce(func.sum(features.c.events_applied), 0)).where(
                features.c.subscriber_id.in_(list(sent))
            )
            return int(await conn.scalar(query) or 0)

    async def all_applied() -> bool:
        return await applied() == sum(len(items) for items in sent.values())

    stopped_at = None
    try:
        await a.start()
        await b.start()

        # Keep a trickle of events flowing until the group has settled with both members
        # consuming (the second join revokes and reassigns the first one's partitions).
        async def both_consuming() -> bool:
            await send([profile(sid()) for _ in range(2 * partitions)])
            return {h.replica for h in log} == {"a", "b"}

        await eventually(both_consuming, timeout_s=60, what="both replicas consuming")
        await eventually(all_applied, timeout_s=60, what="warm-up events applied")

        # Wave 1, both replicas up: they split the partitions between them.
        settled = len(log)
        subscribers = [sid() for _ in range(60)]
        await send(
            [
                item
                for s in subscribers
                for item in [profile(s), *calls(s, n=3, competitor=False, days_ago=10)]
            ]
        )
        await eventually(all_applied, timeout_s=60, what="wave 1 applied")
        wave1 = log[settled:]
        owned = {
            name: {p for h in wave1 if h.replica == name for p in h.partitions} for name in "ab"
        }
        assert owned["a"] and owned["b"], f"both replicas should own partitions: {owned}"
        assert not owned["a"] & owned["b"], f"a partition had two owners: {owned}"
        assert owned["a"] | owned["b"] == set(range(partitions))

        # Wave 2, streamed while replica a stops: its partitions move to b.
        wave2 = [item for s in subscribers for item in calls(s, n=3, competitor=True, days_ago=2)]
        half = len(wave2) // 2
        await send(wave2[:half])
        await (a.runtime.stop() if how == "stop" else crash(a))
        stopped_at = time.monotonic()
        await send(wave2[half:])
        await eventually(all_applied, timeout_s=90, what="wave 2 applied by the survivor")
    finally:
        await producer.stop()
        if stopped_at is None:
            await a.runtime.stop()

    try:
        # Exactly once: every event recorded once, each subscriber's count matches.
        ids = [item["event_id"] for items in sent.values() for item in items]
        async with b.runtime.engine.connect() as conn:
            recorded = await conn.scalar(
                select(func.count())
                .select_from(processed_events)
                .where(processed_events.c.event_id.in_(ids))
            )
            rows = {
                row.subscriber_id: row
                for row in await conn.execute(
                    select(features).where(features.c.subscriber_id.in_(subscribers))
                )
            }
        assert recorded == len(ids) == len(set(ids))
        for s in subscribers:
            assert rows[s].events_applied == len(sent[s]) == 7, s
            # Not split: the survivor's state still has wave 1 (the other replica's work).
            first = min(datetime.fromisoformat(i["occurred_at"]) for i in sent[s])
            last = max(datetime.fromisoformat(i["occurred_at"]) for i in sent[s])
            state = decode(rows[s].blob)  # the stored state (services/scoring/codec.py)
            assert state["first_seen"] == pytest.approx(first.timestamp()), s
            assert state["watermark"] == pytest.approx(last.timestamp()), s

        # One owner at a time: a subscriber's batches by different replicas never
        # overlap, it moves at most once (a -> b), and after the stop only b handles.
        by_subscriber: dict[str, list[Handled]] = {}
        for h in log[settled:]:
            for s in h.subscribers:
                by_subscriber.setdefault(s, []).append(h)
        moved = 0
        for s in subscribers:
            history = sorted(by_subscriber[s], key=lambda h: h.started)
            owners = [h.replica for h in history]
            switches = [i for i in range(1, len(owners)) if owners[i] != owners[i - 1]]
            assert len(switches) <= 1, f"{s}: {owners}"
            if switches:
                moved += 1
                i = switches[0]
                assert owners[i - 1 : i + 1] == ["a", "b"], f"{s}: {owners}"
                assert history[i - 1].ended <= history[i].started, f"{s}: overlapping owners"
            assert all(h.replica == "b" for h in history if h.started > stopped_at), s
        assert moved > 0, "stopping a should have moved its subscribers to b"
    finally:
        await b.runtime.stop()
