"""The scoring handler on the real database and broker: idempotency, labels, persistence."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from services.scoring import service
from services.scoring.consumer import ScoringHandler
from services.scoring.models import features
from services.scoring.settings import ScoringSettings
from shared.consumer import Inbound, Outbox
from shared.db import create_engine
from shared.events import Event, parse_event
from shared.kafka import ensure_topics, make_producer
from shared.topics import Topics
from tests.helpers import calls, event, profile, read_topic, sid

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def scoring(env: dict[str, Any]) -> AsyncIterator[tuple[ScoringHandler, Any, Any]]:
    settings = ScoringSettings(
        **env, scoring_model_name=f"m-{uuid.uuid4().hex[:8]}", scoring_min_labels=2
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


async def _features(engine: Any, subscriber: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(features).where(features.c.subscriber_id == subscriber))
        ).first()
    assert row is not None
    return dict(row._mapping)


async def test_a_replayed_batch_counts_each_event_once(
    scoring: tuple[ScoringHandler, Any, Any], env: dict[str, Any]
) -> None:
    subscriber = sid()
    items = [profile(subscriber)] + calls(subscriber, n=5, competitor=True, days_ago=1)
    await _handle(scoring, items)
    first = await _features(scoring[1], subscriber)
    await _handle(scoring, items)  # redelivered after a crash before the offset commit
    await _handle(scoring, items[:2] + items[:2])  # duplicates inside one batch
    again = await _features(scoring[1], subscriber)
    assert first["events_applied"] == again["events_applied"] == 6
    assert again["state"] == first["state"]
    records = await read_topic(
        env["kafka_bootstrap_servers"], Topics(env["kafka_topic_prefix"]).scores, count=1
    )
    score = orjson.loads(records[0].value)
    assert score["subscriber_id"] == subscriber and 0 <= score["score"] <= 1
    assert records[0].key == subscriber.encode()


async def test_churn_within_the_horizon_is_a_positive_label_and_the_model_is_saved(
    scoring: tuple[ScoringHandler, Any, Any],
) -> None:
    handler, engine, _ = scoring
    now = datetime.now(UTC)
    churner, stayer = sid(), sid()
    await _handle(
        scoring,
        calls(churner, n=3, competitor=True, days_ago=20)
        + calls(stayer, n=3, competitor=False, days_ago=40),
    )
    assert handler.model.labels_seen == 0
    churn = event("churn", churner, {"kind": "port_out"}, at=now - timedelta(days=1))
    await _handle(
        scoring,
        [
            churn,
            # 40 days after the stayer's snapshot with no churn: a negative example.
            *calls(stayer, n=1, competitor=False, days_ago=0),
        ],
    )
    assert (handler.model.labels_seen, handler.model.positives_seen) == (2, 1)
    async with engine.connect() as conn:
        stored = await service.load_model(
            conn, name=handler.settings.scoring_model_name, params=handler.settings.model_params()
        )
    assert (stored.labels_seen, stored.positives_seen) == (2, 1)
    assert stored.trained and stored.version == handler.model.version
    # A churned subscriber gets no new risk score (win-back handles them).
    async with engine.connect() as conn:
        row = await service.get_score(conn, subscriber_id=churner)
    assert row is not None and str(row["cause_event_id"]) != churn["event_id"]


async def test_reload_after_failure_forgets_unsaved_learning(
    scoring: tuple[ScoringHandler, Any, Any],
) -> None:
    handler, engine, _ = scoring
    handler.model.learn({"x": 1.0}, True)  # learned in a batch whose transaction rolled back
    assert handler.model.labels_seen == 1
    await handler.load(engine)
    assert handler.model.labels_seen == 0
