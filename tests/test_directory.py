"""The subscriber card's other sources: scoring's risk trend, alerting's activity, the directory.

Real apps on the session's PostgreSQL and broker: scoring's and alerting's
apps handle real events (their consumers' handlers, batch by batch), and
outreach's ``SubscriberDirectory`` reads them over HTTP (``httpx.ASGITransport``
on the real apps; nothing of theirs is mocked).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from churnwatch.embedded import free_port
from services.alerting.activity import ACTIVITY_KEPT, remember
from services.alerting.app import create_app as create_alerting
from services.alerting.consumer import AlertingHandler
from services.alerting.rule_engine import RuleEngine
from services.alerting.rules import load_rules
from services.alerting.settings import AlertingSettings
from services.alerting.tables import subscriber_facts
from services.outreach.directory import SubscriberDirectory
from services.outreach.settings import OutreachSettings
from services.scoring.app import create_app as create_scoring
from services.scoring.settings import ScoringSettings
from services.scoring.tables import snapshots
from shared.auth import create_key
from shared.consumer import Inbound
from shared.events import parse_event
from shared.kafka import ensure_topics, make_producer
from shared.outbox import Outbox
from shared.topics import Topics
from tests.helpers import calls, event, profile, sid

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def feed(handler: Any, engine: Any, producer: Any, items: list[dict[str, Any]]) -> None:
    """One batch through a consumer's handler, as its consumer loop would hand it over."""
    batch = [Inbound(parse_event(i), "t", 0, n, 0) for n, i in enumerate(items)]
    async with engine.begin() as conn:
        outbox = Outbox(producer)
        await handler(conn, batch, outbox)
        await outbox.flush()


@dataclass
class Sources:
    """Scoring's and alerting's real apps (no consumers: the tests feed the handlers)."""

    scoring: FastAPI
    alerting: FastAPI
    alerting_handler: AlertingHandler
    producer: Any

    async def score(self, items: list[dict[str, Any]]) -> None:
        """Events through scoring's handler."""
        state = self.scoring.state
        await feed(state.handler, state.runtime.engine, self.producer, items)

    async def alert(self, items: list[dict[str, Any]]) -> None:
        """Events through alerting's handler."""
        engine = self.alerting.state.runtime.engine
        await feed(self.alerting_handler, engine, self.producer, items)

    def client(self, app: FastAPI, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://svc", headers=headers
        )

    def directory(self, headers: dict[str, str] | None = None) -> SubscriberDirectory:
        return SubscriberDirectory(
            scoring=self.client(self.scoring, headers),
            alerting=self.client(self.alerting, headers),
        )


@pytest.fixture
async def sources(env: dict[str, Any]) -> AsyncIterator[Sources]:
    scoring = create_scoring(
        ScoringSettings(
            **env, scoring_model_name=f"m-{uuid.uuid4().hex[:8]}", scoring_min_history_days=0
        )
    )
    alerting_settings = AlertingSettings(**env)
    await ensure_topics(alerting_settings)
    alerting = create_alerting(alerting_settings)
    producer = make_producer(alerting_settings)
    await producer.start()
    handler = AlertingHandler(
        RuleEngine(load_rules()), Topics(alerting_settings.kafka_topic_prefix)
    )
    # What scoring's lifespan does first; its consumer is not needed.
    await scoring.state.handler.load(scoring.state.runtime.engine)
    try:
        yield Sources(scoring, alerting, handler, producer)
    finally:
        await producer.stop()
        await alerting.state.runtime.engine.dispose()
        await scoring.state.runtime.engine.dispose()


def history(subscriber: str, now: datetime) -> list[dict[str, Any]]:
    """A VIP's last weeks: 12 bills, payments, a stop-notice, complaints (event time)."""
    items = [profile(subscriber, tier="gold", monthly_value="120", manager="AM-dir")]
    for month in range(12):
        at = now - timedelta(days=30 * (12 - month))
        items.append(
            event(
                "billing",
                subscriber,
                {
                    "period": at.strftime("%Y-%m"),
                    "amount_due": f"{100 + month}.00",
                    "plan_id": "P1",
                },
                at=at,
            )
        )
    items += [
        event(
            "payment", subscriber, {"amount": "50.00", "method": "card"}, at=now - timedelta(days=3)
        ),
        event(
            "stop_notice",
            subscriber,
            {
                "reason": "arrears",
                "suspension_at": (now + timedelta(days=2)).isoformat(),
                "amount_to_pay": "61.00",
            },
            at=now - timedelta(days=1),
        ),
        event(
            "complaint",
            subscriber,
            {"category": "network", "severity": "high"},
            at=now - timedelta(days=2),
        ),
        # Usage is not activity.
        *calls(subscriber, n=2, competitor=True, days_ago=1),
    ]
    return items


# --- scoring: the trend -----------------------------------------------------------------------


async def test_risk_has_the_recent_daily_scores_and_the_current_one(sources: Sources) -> None:
    subscriber = sid()
    # Calls over five days: scoring snapshots the subscriber about daily.
    for days_ago in (5, 4, 3, 2, 1):
        await sources.score(calls(subscriber, n=6, competitor=True, days_ago=days_ago))
    engine = sources.scoring.state.runtime.engine
    # Forty older daily snapshots besides: only the newest 30 are returned.
    start = datetime.now(UTC) - timedelta(days=60)
    async with engine.begin() as conn:
        await conn.execute(
            insert(snapshots).on_conflict_do_nothing(),
            [
                {
                    "subscriber_id": subscriber,
                    "taken_at": (start + timedelta(days=i)).timestamp(),
                    "features": {},
                    "predicted": i / 100,
                    "prior": i / 100,
                }
                for i in range(40)
            ],
        )
        stored = [
            (r.taken_at, r.predicted)
            for r in await conn.execute(
                select(snapshots.c.taken_at, snapshots.c.predicted)
                .where(snapshots.c.subscriber_id == subscriber)
                .order_by(snapshots.c.taken_at)
            )
        ]
    async with sources.client(sources.scoring) as client:
        risk = (await client.get(f"/v1/subscribers/{subscriber}/risk")).json()

    trend = risk["trend"]
    current = (datetime.fromisoformat(risk["event_time"]), risk["score"])
    daily = [(datetime.fromtimestamp(at, UTC), score) for at, score in stored[-30:]]
    # The current score last; a snapshot of the same moment gives way to it.
    expected = [p for p in daily if p[0] < current[0]] + [current]
    assert len(expected) >= 30
    assert [(datetime.fromisoformat(p["at"]), p["score"]) for p in trend] == expected
    assert len(stored) > 40, "the events made snapshots of their own"
    # Backward compatible: every field of before is still there.
    assert {"score", "band", "reasons", "features", "event_time", "model_version"} <= set(risk)


async def test_a_subscriber_without_snapshots_has_the_current_score_as_trend(
    sources: Sources,
) -> None:
    subscriber = sid()
    await sources.score(calls(subscriber, n=3, competitor=True, days_ago=0.1))
    async with sources.client(sources.scoring) as client:
        risk = (await client.get(f"/v1/subscribers/{subscriber}/risk")).json()
    (point,) = risk["trend"]
    assert point["score"] == risk["score"]


# --- alerting: the activity -------------------------------------------------------------------


async def test_alerting_keeps_the_latest_activity_of_each_kind(sources: Sources) -> None:
    subscriber, now = sid(), datetime.now(UTC)
    items = history(subscriber, now)
    await sources.alert(items)
    # A late bill (older than the ten kept) changes nothing; a redelivered batch neither.
    await sources.alert(
        [
            event(
                "billing",
                subscriber,
                {"period": "2001-01", "amount_due": "1.00", "plan_id": "P1"},
                at=now - timedelta(days=3000),
            )
        ]
    )
    await sources.alert(items)

    async with sources.client(sources.alerting) as client:
        body = (await client.get(f"/v1/subscribers/{subscriber}/activity")).json()
        unknown = await client.get(f"/v1/subscribers/{sid()}/activity")

    assert body["kept"] == ACTIVITY_KEPT
    assert [b["amount_due"] for b in body["bills"]] == [f"{100 + m}.00" for m in range(11, 1, -1)]
    (payment,) = body["payments"]
    assert (payment["amount"], payment["method"], payment["late"]) == ("50.00", "card", False)
    (notice,) = body["stop_notices"]
    assert (notice["reason"], notice["amount_to_pay"]) == ("arrears", "61.00")
    (complaint,) = body["complaints"]
    assert (complaint["category"], complaint["severity"], complaint["resolved"]) == (
        "network",
        "high",
        False,
    )
    assert unknown.status_code == 404


async def test_a_known_subscriber_without_activity_has_empty_lists(sources: Sources) -> None:
    subscriber = sid()
    await sources.alert([profile(subscriber)])
    async with sources.client(sources.alerting) as client:
        body = (await client.get(f"/v1/subscribers/{subscriber}/activity")).json()
    assert [body[k] for k in ("bills", "payments", "stop_notices", "complaints")] == [[]] * 4


async def test_remember_keeps_the_newest_in_event_order() -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    activity: dict[str, list[dict[str, Any]]] = {}
    for day in (5, 1, 3, 2, 4, 3):  # out of order, and day 3 twice (the same event)
        item = {"event_id": f"e{day}", "at": (base + timedelta(days=day)).isoformat()}
        activity = remember(activity, "payments", item, kept=3)
    assert [i["event_id"] for i in activity["payments"]] == ["e3", "e4", "e5"]


# --- outreach: the directory ------------------------------------------------------------------


async def test_the_directory_reads_risk_and_activity(sources: Sources) -> None:
    subscriber, now = sid(), datetime.now(UTC)
    await sources.score(calls(subscriber, n=30, competitor=True, days_ago=1))
    await sources.alert(history(subscriber, now))
    directory = sources.directory()
    try:
        risk, activity = await directory.card(subscriber)
        nothing = await directory.card(sid())
    finally:
        await directory.aclose()

    assert risk is not None and 0 <= risk.score <= 1 and risk.band in {"high", "medium", "low"}
    assert risk.reasons and risk.reasons[0].code == "COMPETITOR_CALLS_UP"
    assert risk.reasons[0].text("zh") == risk.reasons[0].text_zh != risk.reasons[0].text("en")
    assert risk.trend and risk.trend[-1][1] == risk.score
    assert all(a <= b for (a, _), (b, _) in zip(risk.trend, risk.trend[1:], strict=False))
    assert activity is not None
    assert len(activity.bills) == ACTIVITY_KEPT and activity.bills[0].amount_due == Decimal(
        "111.00"
    )
    assert activity.bills[0].at > activity.bills[1].at, "newest first"
    assert activity.payments[0].amount == Decimal("50.00")
    assert activity.stop_notices[0].suspension_at > now
    assert activity.complaints[0].severity == "high"
    assert nothing == (None, None)


async def test_the_directory_sends_the_api_key(env: dict[str, Any]) -> None:
    alerting = create_alerting(AlertingSettings(**{**env, "auth_enabled": True}))
    engine = alerting.state.runtime.engine
    async with engine.begin() as conn:
        _, token = await create_key(
            conn, name="t-directory", scopes=["tasks:read"], now=datetime.now(UTC)
        )
        await conn.execute(
            insert(subscriber_facts).values(
                subscriber_id=(subscriber := sid()), bills_seen=0, updated_at=datetime.now(UTC)
            )
        )
    settings = OutreachSettings(
        **env, outreach_alerting_url="http://alerting", outreach_services_api_key=token
    )
    keyed = SubscriberDirectory.from_settings(settings)
    assert keyed is not None and keyed.scoring is None and keyed.alerting is not None
    assert keyed.alerting.headers["X-API-Key"] == token
    transport = httpx.ASGITransport(app=alerting)
    with_key = SubscriberDirectory(
        scoring=None,
        alerting=httpx.AsyncClient(
            transport=transport, base_url="http://alerting", headers={"X-API-Key": token}
        ),
    )
    without_key = SubscriberDirectory(
        scoring=None, alerting=httpx.AsyncClient(transport=transport, base_url="http://alerting")
    )
    try:
        assert await with_key.activity(subscriber) is not None
        assert await without_key.activity(subscriber) is None  # 401: logged, no card section
        assert await with_key.risk(subscriber) is None  # scoring not configured
    finally:
        for directory in (keyed, with_key, without_key):
            await directory.aclose()
        await engine.dispose()


async def test_an_unreachable_service_gives_none(env: dict[str, Any]) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    settings = OutreachSettings(**env, outreach_scoring_url=down, outreach_alerting_url=down)
    directory = SubscriberDirectory.from_settings(settings)
    assert directory is not None
    try:
        assert await directory.card(sid()) == (None, None)
    finally:
        await directory.aclose()
    assert SubscriberDirectory.from_settings(OutreachSettings(**env)) is None
