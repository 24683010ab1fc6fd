"""Alerting rules, and the handler on the real database and broker."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest

from services.alerting import rules, service
from services.alerting.consumer import AlertingHandler
from services.alerting.settings import AlertingSettings
from shared.consumer import Inbound, Outbox
from shared.db import create_engine
from shared.events import Channel, RiskScore, ScoreReason, StopNoticeEvent, Tier, parse_event
from shared.kafka import ensure_topics, make_producer
from shared.topics import Topics
from tests.helpers import profile, read_topic, sid, stop_notice

pytestmark = pytest.mark.asyncio(loop_scope="session")
NOW = datetime.now(UTC)


def score(subscriber: str, value: float, previous: float | None) -> RiskScore:
    cause = uuid.uuid4()
    return RiskScore(
        score_id=uuid.uuid4(),
        subscriber_id=subscriber,
        score=value,
        previous_score=previous,
        band="high" if value >= 0.7 else "low",
        model_version="prior-v1",
        reasons=[
            ScoreReason(
                code="COMPETITOR_CALLS_UP",
                text_en="calls to competitor networks up",
                text_zh="与竞争对手网络通话占比上升",
                contribution=1.2,
            )
        ],
        cause_event_id=cause,
        event_time=NOW,
        scored_at=NOW,
    )


async def test_stop_notice_reminds_everyone_and_calls_vips() -> None:
    notice = parse_event(stop_notice("S-1", amount="10.00"))
    assert isinstance(notice, StopNoticeEvent)
    standard = rules.pre_suspension_tasks(notice, rules.Profile(phone="+15550004000"), now=NOW)
    assert [t.channel for t in standard] == [Channel.SMS]
    vip = rules.pre_suspension_tasks(
        notice, rules.Profile(tier=Tier.VIP_GUEST, account_manager_id="AM-3"), now=NOW
    )
    assert [t.channel for t in vip] == [Channel.SMS, Channel.CALL]
    assert all(t.due_at == notice.payload.suspension_at for t in vip)
    assert vip[1].account_manager_id == "AM-3" and vip[1].params["amount"] == "10.00"
    # Same cause, same ids: a replay cannot open a second task.
    again = rules.pre_suspension_tasks(
        notice, rules.Profile(tier=Tier.VIP_GUEST, account_manager_id="AM-3"), now=NOW
    )
    assert [t.task_id for t in again] == [t.task_id for t in vip]


@pytest.mark.parametrize(
    ("value", "previous", "crossed"),
    [
        (0.75, 0.5, True),
        (0.75, None, True),
        (0.7, 0.69, True),
        (0.75, 0.72, False),
        (0.6, 0.5, False),
        (0.5, 0.8, False),
    ],
)
async def test_retention_fires_only_on_an_upward_crossing(
    value: float, previous: float | None, crossed: bool
) -> None:
    settings = AlertingSettings()
    task = rules.retention_task(score("S", value, previous), rules.UNKNOWN, settings, now=NOW)
    assert (task is not None) is crossed


async def test_retention_routes_by_value_and_respects_opt_out() -> None:
    settings = AlertingSettings(alerting_high_value=Decimal(50))
    s = score("S", 0.9, 0.1)
    low = rules.retention_task(s, rules.Profile(monthly_value=Decimal(10)), settings, now=NOW)
    high = rules.retention_task(s, rules.Profile(monthly_value=Decimal(80)), settings, now=NOW)
    assert low is not None and low.channel is Channel.SMS
    assert high is not None and high.channel is Channel.CALL
    assert high.reasons == ["COMPETITOR_CALLS_UP: calls to competitor networks up"]
    opted_out = rules.Profile(monthly_value=Decimal(10), marketing_opt_out=True)
    assert rules.retention_task(s, opted_out, settings, now=NOW) is None


@pytest.fixture
async def alerting(env: dict[str, Any]) -> AsyncIterator[tuple[AlertingHandler, Any, Any]]:
    settings = AlertingSettings(**env)
    await ensure_topics(settings)
    engine = create_engine(settings)
    producer = make_producer(settings)
    await producer.start()
    yield AlertingHandler(settings, Topics(settings.kafka_topic_prefix)), engine, producer
    await producer.stop()
    await engine.dispose()


async def _handle(alerting: tuple[AlertingHandler, Any, Any], messages: list[Any]) -> None:
    handler, engine, producer = alerting
    batch = [Inbound(m, "t", 0, n, 0) for n, m in enumerate(messages)]
    async with engine.begin() as conn:
        outbox = Outbox(producer)
        await handler(conn, batch, outbox)
        await outbox.flush()


async def test_handler_publishes_each_task_once_with_the_profile(
    alerting: tuple[AlertingHandler, Any, Any], env: dict[str, Any]
) -> None:
    subscriber = sid()
    newer = parse_event(
        profile(
            subscriber,
            tier="gold",
            manager="AM-9",
            phone="+15550004001",
            at=NOW - timedelta(days=1),
        )
    )
    older = parse_event(
        profile(subscriber, tier="standard", phone="+15550004999", at=NOW - timedelta(days=9))
    )
    notice = parse_event(stop_notice(subscriber))
    # The older profile arrives last: the newer one must still win.
    await _handle(alerting, [newer, older, notice])
    await _handle(alerting, [notice])  # redelivered
    records = await read_topic(
        env["kafka_bootstrap_servers"],
        Topics(env["kafka_topic_prefix"]).tasks,
        count=3,
        timeout_s=5,
    )
    tasks = [orjson.loads(r.value) for r in records]
    assert sorted(t["channel"] for t in tasks) == ["call", "sms"]
    assert {t["phone"] for t in tasks} == {"+15550004001"}
    assert {t["account_manager_id"] for t in tasks} == {"AM-9"}
    async with alerting[1].connect() as conn:
        profiles = await service.load_profiles(conn, subscriber_ids=[subscriber])
    assert profiles[subscriber].tier is Tier.GOLD
