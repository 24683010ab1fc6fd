"""Scoring on the real database and broker: idempotency, labels, checkpoints, API, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import TopicPartition
from sqlalchemy import func, select, update

from churnwatch.embedded import free_port
from services.scoring import service
from services.scoring.app import create_app
from services.scoring.codec import decode
from services.scoring.consumer import ScoringHandler
from services.scoring.settings import ScoringSettings
from services.scoring.tables import features, model_checkpoints, snapshots
from shared.consumer import Inbound
from shared.db import create_engine
from shared.events import Event, parse_event
from shared.kafka import ensure_topics, make_producer
from shared.outbox import Outbox
from shared.topics import Topics
from tests.conftest import REPO, as_environ
from tests.helpers import calls, event, eventually, profile, read_topic, sid

pytestmark = pytest.mark.asyncio(loop_scope="session")
NOW = datetime.now(UTC)


@pytest.fixture
async def scoring(env: dict[str, Any]) -> AsyncIterator[tuple[ScoringHandler, Any, Any]]:
    settings = ScoringSettings(
        **env,
        scoring_model_name=f"m-{uuid.uuid4().hex[:8]}",
        scoring_min_labels=2,
        scoring_checkpoint_every=2,
        scoring_min_history_days=0,
    )
    await ensure_topics(settings)
    engine = create_engine(settings)
    producer = make_producer(settings)
    await producer.start()
    handler = ScoringHandler(settings, Topics(settings.kafka_topic_prefix))
    await handler.load(engine)
    yield handler, engine, producer
    await producer.stop()
    await engine.dispose()


async def _handle(scoring: tuple[ScoringHandler, Any, Any], items: list[dict[str, Any]]) -> None:
    handler, engine, producer = scoring
    batch: list[Inbound[Event]] = [
        Inbound(parse_event(i), "t", 0, n, 0) for n, i in enumerate(items)
    ]
    async with engine.begin() as conn:
        outbox = Outbox(producer)
        await handler(conn, batch, outbox)
        await outbox.flush()


async def _row(engine: Any, subscriber: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(features).where(features.c.subscriber_id == subscriber))
        ).first()
    assert row is not None
    return dict(row._mapping)


async def _count(engine: Any, table: Any, **where: Any) -> int:
    query = select(func.count()).select_from(table)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    async with engine.connect() as conn:
        return int(await conn.scalar(query) or 0)


async def test_a_replayed_batch_changes_nothing(
    scoring: tuple[ScoringHandler, Any, Any], env: dict[str, Any]
) -> None:
    subscriber = sid()
    items = [profile(subscriber)] + calls(subscriber, n=5, competitor=True, days_ago=1)
    await _handle(scoring, items)
    first = await _row(scoring[1], subscriber)
    await _handle(scoring, items)  # redelivered after a crash before the offset commit
    await _handle(scoring, items[:2] + items[:2])  # duplicates inside one batch
    again = await _row(scoring[1], subscriber)
    assert first["events_applied"] == again["events_applied"] == 6
    assert again["state"] == first["state"]
    assert await _count(scoring[1], snapshots, subscriber_id=subscriber) == 1
    records = await read_topic(
        env["kafka_bootstrap_servers"], Topics(env["kafka_topic_prefix"]).scores, count=1
    )
    score = orjson.loads(records[0].value)
    assert score["subscriber_id"] == subscriber and 0 <= score["score"] <= 1
    assert score["band"] in ("low", "medium", "high")
    assert records[0].key == subscriber.encode()


async def test_churn_labels_snapshots_and_the_model_is_checkpointed(
    scoring: tuple[ScoringHandler, Any, Any],
) -> None:
    handler, engine, _ = scoring
    churner, stayer = sid(), sid()
    await _handle(
        scoring,
        calls(churner, n=3, competitor=True, days_ago=20)
        + calls(stayer, n=3, competitor=False, days_ago=40),
    )
    assert handler.model.labels_seen == 0
    churn = event("churn", churner, {"kind": "port_out"}, at=NOW - timedelta(days=1))
    # 40 days after the stayer's snapshot, no churn: a negative example.
    await _handle(scoring, [churn, *calls(stayer, n=1, competitor=False, days_ago=0)])
    # Both snapshots were learnt as non-churns once their 3-day step passed, and the
    # churner's again as a churn (within the 30-day horizon): 2 labels, 1 churn.
    assert (handler.model.labels_seen, handler.model.positives_seen) == (2, 1)
    # Horizon labels count for the quality once matured (a horizon and its lateness
    # after the snapshot): the stayer's has, the churner's (taken 20 days ago) waits.
    assert handler.model.quality is not None and handler.model.quality.resolved == 1
    assert [s.churned for _, _, s in handler.model.waiting] == [True]
    assert await _count(engine, snapshots, subscriber_id=churner) == 0
    # Checkpointed every 2 labels, in the same transaction as the labels.
    async with engine.connect() as conn:
        stored = await service.load_model(
            conn, name=handler.settings.scoring_model_name, params=handler.settings.model_params()
        )
    assert (stored.labels_seen, stored.positives_seen) == (2, 1)
    assert stored.checkpoint_id is not None and stored.quality is not None
    assert stored.quality.resolved == 1 and len(stored.waiting) == 1
    # A churned subscriber gets no new risk score (win-back handles them).
    async with engine.connect() as conn:
        state = await service.get_state(conn, subscriber_id=churner)
    assert state is not None and state["scored"]["cause_event_id"] != churn["event_id"]


async def test_reload_after_failure_returns_to_the_checkpoint(
    scoring: tuple[ScoringHandler, Any, Any],
) -> None:
    handler, engine, _ = scoring
    handler.model.learn({"competitor_share_7d": 1.0}, True)  # its transaction rolled back
    assert handler.model.labels_seen == 1
    await handler.load(engine)
    assert handler.model.labels_seen == 0


async def test_risk_and_model_api(env: dict[str, Any]) -> None:
    settings = ScoringSettings(**env, scoring_model_name=f"m-{uuid.uuid4().hex[:8]}")
    app = create_app(settings)
    subscriber = sid()
    async with app.router.lifespan_context(app):
        await _handle(
            (app.state.handler, app.state.runtime.engine, app.state.runtime.producer),
            calls(subscriber, n=30, competitor=True, days_ago=1)
            + [event("complaint", subscriber, {"severity": "high"})],
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://scoring"
        ) as client:
            risk = (await client.get(f"/v1/subscribers/{subscriber}/risk")).json()
            model = (await client.get("/v1/model")).json()
            missing = await client.get(f"/v1/subscribers/{sid()}/risk")
    assert risk["band"] == "high" and risk["score"] >= 0.7
    assert risk["reasons"][0]["code"] == "COMPETITOR_CALLS_UP"
    assert risk["reasons"][0]["text_zh"]
    assert risk["features"]["competitor_share_7d"] > 0.9
    assert risk["model_version"] == "prior-v1"
    assert model["kind"] == "ga2m" and model["weight"] == 0.0
    assert model["quality"]["resolved"] == 0 and model["checkpoint"] is None
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


async def test_kill_9_mid_stream_loses_and_doubles_nothing(env: dict[str, Any]) -> None:
    """Scoring killed with SIGKILL mid-stream, restarted: every event counted once."""
    settings = ScoringSettings(
        **env,
        scoring_model_name=f"m-{uuid.uuid4().hex[:8]}",
        scoring_min_labels=5,
        scoring_checkpoint_every=5,
        scoring_batch_max_records=100,
    )
    await ensure_topics(settings)
    topics = Topics(settings.kafka_topic_prefix)
    subscribers = [sid() for _ in range(200)]
    stayers = [s for i, s in enumerate(subscribers) if i % 5 != 0]
    producer = make_producer(settings)
    await producer.start()
    total = 0
    try:
        for day in range(40, 0, -1):
            for i, subscriber in enumerate(subscribers):
                items = calls(subscriber, n=1, competitor=i % 5 == 0 and day < 20, days_ago=day)
                if i % 5 == 0 and day == 1:
                    items.append(event("churn", subscriber, {"kind": "port_out"}))
                for item in items:
                    await producer.send(
                        topics.events, key=subscriber.encode(), value=orjson.dumps(item)
                    )
                    total += 1
        await producer.flush()
    finally:
        await producer.stop()

    environ = {
        **os.environ,
        **as_environ(
            {
                **env,
                "scoring_model_name": settings.scoring_model_name,
                "scoring_min_labels": 5,
                "scoring_checkpoint_every": 5,
                "scoring_batch_max_records": 100,
            }
        ),
        "SCORING_PORT": str(free_port()),
        "PYTHONPATH": str(REPO),
    }
    engine = create_engine(settings)

    async def applied() -> int:
        async with engine.connect() as conn:
            value = await conn.scalar(
                select(func.coalesce(func.sum(features.c.events_applied), 0)).where(
                    features.c.subscriber_id.in_(subscribers)
                )
            )
        return int(value or 0)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "services.scoring"],
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
        )

    process = start()
    try:
        await eventually(
            lambda: _above(applied, total // 4),
            timeout_s=60,
            what="a quarter of the events applied",
        )
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        killed_at = await applied()
        assert killed_at < total, "killed too late to test anything"
        process = start()
        await eventually(
            lambda: _equals(applied, total),
            timeout_s=90,
            what="every event applied after the restart",
        )
        # Exactly once in effect: not one event counted twice, not one lost.
        assert await applied() == total
        async with engine.connect() as conn:
            scored = await conn.scalar(
                select(func.count())
                .select_from(features)
                .where(features.c.subscriber_id.in_(stayers), features.c.score.is_not(None))
            )
            checkpoints = await conn.scalar(
                select(func.count())
                .select_from(model_checkpoints)
                .where(model_checkpoints.c.name == settings.scoring_model_name)
            )
        # Every subscriber who stayed has a score. (A churner whose whole history
        # came in one batch is never scored: churned subscribers are for win-back.)
        assert scored == len(stayers)
        assert checkpoints and checkpoints > 0
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        await engine.dispose()


async def _above(probe: Any, threshold: int) -> bool:
    return bool(await probe() > threshold)


async def _equals(probe: Any, expected: int) -> bool:
    return bool(await probe() == expected)


async def test_a_row_stored_as_json_before_0011_is_read_and_rewritten_compact(
    scoring: tuple[ScoringHandler, Any, Any],
) -> None:
    """Migration 0011 leaves old rows' JSON in place; the next event rewrites them as bytes."""
    _, engine, _ = scoring
    subscriber = sid()
    await _handle(scoring, calls(subscriber, n=2, competitor=True, days_ago=2))
    stored = decode((await _row(engine, subscriber))["blob"])
    async with engine.begin() as conn:  # as a version before 0011 left the row
        await conn.execute(
            update(features)
            .where(features.c.subscriber_id == subscriber)
            .values(state=stored, blob=None, events_applied=features.c.events_applied + 1)
        )
    async with engine.connect() as conn:
        assert await service.get_state(conn, subscriber_id=subscriber) == stored
    await _handle(scoring, calls(subscriber, n=1, competitor=True, days_ago=1))
    row = await _row(engine, subscriber)
    assert row["state"] is None and row["events_applied"] == 4
    state = decode(row["blob"])
    assert state["first_seen"] == stored["first_seen"]  # the history in the JSON was kept
    name = "competitor_calls_30d"
    assert state["decayed"][name][0] > stored["decayed"][name][0]


async def test_cached_state_is_dropped_on_revocation_and_reloaded_when_stale(
    scoring: tuple[ScoringHandler, Any, Any],
) -> None:
    handler, engine, _ = scoring
    subscriber = sid()
    await _handle(scoring, calls(subscriber, n=2, competitor=False, days_ago=2))
    assert subscriber in handler._cache
    handler.forget({TopicPartition("t", 1)})  # another partition: kept
    assert subscriber in handler._cache
    handler.forget({TopicPartition("t", 0)})  # its partition was revoked
    assert subscriber not in handler._cache

    await _handle(scoring, calls(subscriber, n=1, competitor=False, days_ago=1))
    # Another replica (during a rebalance) writes the row behind this one's back.
    async with engine.begin() as conn:
        await conn.execute(
            update(features)
            .where(features.c.subscriber_id == subscriber)
            .values(events_applied=features.c.events_applied + 10)
        )
    await _handle(scoring, calls(subscriber, n=1, competitor=False, days_ago=0))
    row = await _row(engine, subscriber)
    # The stale cache was not trusted: 3 + 10 from the other writer + 1.
    assert row["events_applied"] == 14
