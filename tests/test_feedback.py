"""Feedback: the outbox relay, the outcomes topic, scoring's use of outcomes, the KPIs."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.outreach import service
from services.outreach.app import create_app as create_outreach_app
from services.outreach.feedback import KpiRefresher, Relay, compute_kpis, month_bounds
from services.outreach.settings import OutreachSettings
from services.outreach.tables import outbox, task_transitions, tasks
from services.scoring.app import create_app as create_scoring_app
from services.scoring.consumer import ScoringHandler
from services.scoring.model import ChurnModel, ModelParams
from services.scoring.scorer import EngineParams, Scorer
from services.scoring.settings import ScoringSettings
from services.scoring.tables import processed_events, snapshots
from shared.consumer import Inbound
from shared.db import create_engine
from shared.events import (
    Channel,
    OutreachTask,
    TaskAction,
    TaskKind,
    TaskOutcome,
    TaskUpdate,
    Tier,
    UpdateCause,
    derive_id,
    parse_event,
)
from shared.kafka import ensure_topics, make_producer
from shared.outbox import Outbox
from shared.topics import Topics
from tests.helpers import calls, end_offsets, eventually, read_topic, sid

pytestmark = pytest.mark.asyncio(loop_scope="session")
ZONE = "Asia/Shanghai"  # UTC+8 all year since 1992: months start 8 h before UTC's


# --- fixtures and helpers -------------------------------------------------------------


@pytest.fixture
async def outreach(env: dict[str, Any]) -> AsyncIterator[tuple[OutreachSettings, AsyncEngine]]:
    settings = OutreachSettings(**env, outreach_timezone=ZONE, outreach_relay_interval_s=0.05)
    await ensure_topics(settings)
    engine = create_engine(settings)
    yield settings, engine
    await engine.dispose()


@pytest.fixture
async def producer(env: dict[str, Any]) -> AsyncIterator[AIOKafkaProducer]:
    started = make_producer(OutreachSettings(**env))
    await started.start()
    yield started
    await started.stop()


def _relay(settings: OutreachSettings, engine: AsyncEngine, producer: Any, **kw: Any) -> Relay:
    return Relay(settings, engine, Topics(settings.kafka_topic_prefix), lambda: producer, **kw)


def _call(subscriber: str, **fields: Any) -> OutreachTask:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "task_id": uuid.uuid4(),
        "kind": TaskKind.RETENTION,
        "channel": Channel.CALL,
        "subscriber_id": subscriber,
        "tier": Tier.GOLD,
        "queue": "am:AM-1",
        "cause_event_id": uuid.uuid4(),
        "created_at": now,
    }
    return OutreachTask(**(values | fields))


async def _published(env: dict[str, Any], subscribers: set[str]) -> list[TaskOutcome]:
    """Every TaskOutcome on the test's outcomes topic about these subscribers."""
    topic = Topics(env["kafka_topic_prefix"]).outcomes
    total = sum((await end_offsets(env["kafka_bootstrap_servers"], topic)).values())
    records = await read_topic(env["kafka_bootstrap_servers"], topic, count=total)
    found = [TaskOutcome.model_validate_json(r.value) for r in records]
    for record, outcome in zip(records, found, strict=True):
        assert record.key == outcome.subscriber_id.encode()  # keyed like every topic
    return [o for o in found if o.subscriber_id in subscribers]


async def _drain(relay: Relay) -> None:
    """Publish what earlier tests left in the (shared) outbox, so ours comes next."""
    for _ in range(1000):
        if not await relay.relay_once():
            return
    raise AssertionError("the outbox does not drain")


async def _unpublished(engine: AsyncEngine, subscribers: set[str]) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(
                select(func.count())
                .select_from(outbox)
                .where(outbox.c.key.in_(subscribers), outbox.c.published_at.is_(None))
            )
            or 0
        )


# --- the outbox relay -------------------------------------------------------------------


async def test_a_final_state_change_publishes_exactly_one_outcome(
    outreach: tuple[OutreachSettings, AsyncEngine], producer: AIOKafkaProducer, env: dict[str, Any]
) -> None:
    settings, engine = outreach
    relay = _relay(settings, engine, producer)
    await _drain(relay)
    subscriber = sid()
    call = _call(subscriber)
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await service.store_tasks(conn, new_tasks=[call], now=now)  # queued: not final
        assert await service.transition(
            conn,
            task_id=call.task_id,
            from_status="queued",
            to_status="cancelled",
            actor="test",
            reason="no longer needed",
            now=now,
        )
    assert await relay.relay_once() == 1
    assert await relay.relay_once() == 0
    [outcome] = await _published(env, {subscriber})
    assert (outcome.task_id, outcome.status, outcome.kind) == (
        call.task_id,
        "cancelled",
        "retention",
    )
    assert outcome.reason == "no longer needed" and outcome.tier is Tier.GOLD
    assert await _unpublished(engine, {subscriber}) == 0
    async with engine.connect() as conn:
        finished = await conn.scalar(
            select(tasks.c.finished_at).where(tasks.c.task_id == call.task_id)
        )
    assert finished == now


class _DownProducer:
    """A producer whose broker is unreachable."""

    async def send(self, *_: Any, **__: Any) -> Any:
        raise ConnectionError("broker unreachable")


async def test_relay_publishes_every_row_once_in_batches_and_survives_a_broker_outage(
    outreach: tuple[OutreachSettings, AsyncEngine], producer: AIOKafkaProducer, env: dict[str, Any]
) -> None:
    settings, engine = outreach
    relay = _relay(settings, engine, producer, batch=2)
    await _drain(relay)
    subscribers = {sid() for _ in range(5)}
    calls_ = [_call(s) for s in sorted(subscribers)]
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await service.store_tasks(conn, new_tasks=calls_, now=now)
        await service.enqueue_outcomes(
            conn, changes=[(c.task_id, "cancelled", "test") for c in calls_], now=now
        )
    # Broker down: the pass fails, nothing is marked, nothing is lost.
    with pytest.raises(ConnectionError):
        await _relay(settings, engine, _DownProducer()).relay_once()
    assert await _unpublished(engine, subscribers) == 5
    assert (REGISTRY.get_sample_value("churnwatch_outreach_outbox_pending") or 0) >= 5

    # Back up: bounded batches until our rows are gone, each published once.
    assert [await relay.relay_once() for _ in range(4)] == [2, 2, 1, 0]
    assert await _unpublished(engine, subscribers) == 0
    published = await _published(env, subscribers)
    assert sorted(o.task_id for o in published) == sorted(c.task_id for c in calls_)

    # A crash after the acks, before the commit, publishes again with the same id.
    async with engine.begin() as conn:
        await conn.execute(
            update(outbox).where(outbox.c.key.in_(subscribers)).values(published_at=None)
        )
    await _drain(relay)
    again = await _published(env, subscribers)
    assert len(again) == 10 and {o.outcome_id for o in again} == {o.outcome_id for o in published}


async def test_the_relay_loop_retries_after_failures_and_wakes_on_demand(
    outreach: tuple[OutreachSettings, AsyncEngine], producer: AIOKafkaProducer
) -> None:
    settings, engine = outreach
    await _drain(_relay(settings, engine, producer))
    failures = REGISTRY.get_sample_value("churnwatch_outreach_relay_failures_total") or 0
    down = _relay(settings, engine, _DownProducer())
    running = asyncio.create_task(down.run())
    subscriber = sid()
    call = _call(subscriber)
    async with engine.begin() as conn:
        await service.store_tasks(conn, new_tasks=[call], now=datetime.now(UTC))
        await service.enqueue_outcomes(
            conn, changes=[(call.task_id, "cancelled", None)], now=datetime.now(UTC)
        )

    async def failed_twice() -> bool:
        now = REGISTRY.get_sample_value("churnwatch_outreach_relay_failures_total") or 0
        return now >= failures + 2

    await eventually(failed_twice, timeout_s=10, what="the relay to retry")
    down.stop()
    await running
    assert await _unpublished(engine, {subscriber}) == 1

    # A relay with a long interval publishes at once when woken.
    slow = Relay(
        settings.model_copy(update={"outreach_relay_interval_s": 60.0}),
        engine,
        Topics(settings.kafka_topic_prefix),
        lambda: producer,
    )
    running = asyncio.create_task(slow.run())
    await eventually(lambda: _unpublished_is(engine, subscriber, 0), what="first pass")
    async with engine.begin() as conn:
        await service.enqueue_outcomes(
            conn, changes=[(call.task_id, "expired", None)], now=datetime.now(UTC)
        )
    slow.wake()
    await eventually(lambda: _unpublished_is(engine, subscriber, 0), timeout_s=5, what="wake")
    slow.stop()
    await asyncio.wait_for(running, 5)


async def _unpublished_is(engine: AsyncEngine, subscriber: str, expected: int) -> bool:
    return await _unpublished(engine, {subscriber}) == expected


# --- alerting's late cancel still records why -----------------------------------------


async def test_a_paid_cancel_after_delivery_records_the_cause_and_nothing_else(
    outreach: tuple[OutreachSettings, AsyncEngine],
) -> None:
    _, engine = outreach
    reminder = _call(sid(), kind=TaskKind.PRE_SUSPENSION_REMINDER, channel=Channel.SMS)
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await service.store_tasks(conn, new_tasks=[reminder], now=now)
        await conn.execute(
            update(tasks)
            .where(tasks.c.task_id == reminder.task_id)
            .values(status="delivered", delivered_at=now)
        )
        before = await service.get_task(conn, task_id=reminder.task_id)
    cancel = TaskUpdate(
        update_id=uuid.uuid4(),
        task_id=reminder.task_id,
        subscriber_id=reminder.subscriber_id,
        action=TaskAction.CANCEL,
        reason="paid before the suspension",
        cause=UpdateCause.PAID,
        at=now,
    )
    for _ in range(2):  # and a redelivery
        async with engine.begin() as conn:
            [(_, result)] = await service.apply_updates(conn, updates=[cancel], now=now)
        assert result is service.UpdateResult.IGNORED
    async with engine.connect() as conn:
        after = await service.get_task(conn, task_id=reminder.task_id)
    assert before is not None and after is not None
    assert after["end_cause"] == "paid"
    # Status, updated_at and the audit trail as they were.
    assert {k: v for k, v in after.items() if k != "end_cause"} == {
        k: v for k, v in before.items() if k != "end_cause"
    }


# --- scoring uses outcomes --------------------------------------------------------------


def _outcome(subscriber: str, outcome: str | None, *, at: datetime, **fields: Any) -> TaskOutcome:
    task_id = uuid.uuid4()
    return TaskOutcome(
        **{
            "outcome_id": derive_id("outcome", task_id, "completed", outcome),
            "task_id": task_id,
            "subscriber_id": subscriber,
            "kind": TaskKind.RETENTION,
            "channel": Channel.CALL,
            "status": "completed",
            "outcome": outcome,
            "at": at,
        }
        | fields
    )


@pytest.fixture
async def scoring(env: dict[str, Any]) -> AsyncIterator[tuple[ScoringHandler, AsyncEngine, Any]]:
    settings = ScoringSettings(
        **env, scoring_model_name=f"m-{uuid.uuid4().hex[:8]}", scoring_min_history_days=0
    )
    await ensure_topics(settings)
    engine = create_engine(settings)
    started = make_producer(settings)
    await started.start()
    handler = ScoringHandler(settings, Topics(settings.kafka_topic_prefix))
    await handler.load(engine)
    yield handler, engine, started
    await started.stop()
    await engine.dispose()


async def _handle(scoring: tuple[ScoringHandler, AsyncEngine, Any], items: list[Any]) -> None:
    handler, engine, started = scoring
    topics = handler.topics
    batch: list[Inbound[Any]] = [
        Inbound(i, topics.outcomes, 0, n, 0)
        if isinstance(i, TaskOutcome)
        else Inbound(parse_event(i), topics.events, 0, n, 0)
        for n, i in enumerate(items)
    ]
    async with engine.begin() as conn:
        sends = Outbox(started)
        await handler(conn, batch, sends)
        await sends.flush()


async def _snapshot_times(engine: AsyncEngine, subscriber: str) -> list[float]:
    async with engine.connect() as conn:
        rows = await conn.scalars(
            select(snapshots.c.taken_at)
            .where(snapshots.c.subscriber_id == subscriber)
            .order_by(snapshots.c.taken_at)
        )
        return list(rows)


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_retention_call_that_kept_the_subscriber_censors_earlier_snapshots(
    scoring: tuple[ScoringHandler, AsyncEngine, Any],
) -> None:
    handler, engine, _ = scoring
    kept, declined = sid(), sid()
    now = datetime.now(UTC)
    history = [
        *calls(kept, n=2, competitor=True, days_ago=3),
        *calls(kept, n=2, competitor=True, days_ago=1),
        *calls(declined, n=2, competitor=True, days_ago=3),
    ]
    for item in history:  # one event per batch: one snapshot per day
        await _handle(scoring, [item])
    assert len(await _snapshot_times(engine, kept)) == 2
    censored_before = _count("churnwatch_scoring_snapshots_censored_total")
    retained = _outcome(kept, "retained", at=now - timedelta(hours=12))
    not_interested = _outcome(declined, "not_interested", at=now)
    await _handle(scoring, [retained, not_interested, retained])  # a duplicate inside

    assert await _snapshot_times(engine, kept) == []  # discarded, never learned
    assert len(await _snapshot_times(engine, declined)) == 1  # no label change
    assert handler.model.labels_seen == 0
    assert _count("churnwatch_scoring_snapshots_censored_total") == censored_before + 2
    async with engine.connect() as conn:
        seen = set(
            await conn.scalars(
                select(processed_events.c.event_id).where(
                    processed_events.c.event_id.in_(
                        [retained.outcome_id, not_interested.outcome_id]
                    )
                )
            )
        )
    assert seen == {retained.outcome_id, not_interested.outcome_id}

    # Redelivered: a duplicate, nothing changes.
    duplicates = _count("churnwatch_scoring_outcomes_total", outcome="retained", result="duplicate")
    await _handle(scoring, [retained])
    assert _count("churnwatch_scoring_outcomes_total", outcome="retained", result="duplicate") == (
        duplicates + 1
    )

    # Snapshots after the intervention are taken and labelled as usual.
    await _handle(scoring, calls(kept, n=1, competitor=False, days_ago=0))
    [after] = await _snapshot_times(engine, kept)
    assert after > retained.at.timestamp()


async def test_no_snapshot_is_taken_at_or_before_a_recorded_intervention() -> None:
    scorer = Scorer(EngineParams(min_history_s=0), ChurnModel(ModelParams()))
    subscriber = "S-censor"
    step = scorer.step(
        None, [parse_event(e) for e in calls(subscriber, n=1, competitor=True, days_ago=5)]
    )
    assert step.snapshot is not None
    treated_at = (datetime.now(UTC) - timedelta(days=2)).timestamp()
    assert scorer.censor(step.state, treated_at) == [step.snapshot.at]
    assert step.state["pending"] == []
    # A late event before the intervention: applied, but no snapshot.
    late = scorer.step(
        step.state, [parse_event(e) for e in calls(subscriber, n=1, competitor=True, days_ago=3)]
    )
    assert late.snapshot is None and late.state["pending"] == []
    fresh = scorer.step(
        late.state, [parse_event(e) for e in calls(subscriber, n=1, competitor=True, days_ago=1)]
    )
    assert fresh.snapshot is not None and fresh.snapshot.at > treated_at


async def test_outcomes_flow_from_the_outreach_outbox_to_scoring(
    env: dict[str, Any], producer: AIOKafkaProducer
) -> None:
    """The whole loop: a retained call in outreach censors scoring's snapshots."""
    scoring_settings = ScoringSettings(
        **env, scoring_model_name=f"m-{uuid.uuid4().hex[:8]}", scoring_min_history_days=0
    )
    outreach_settings = OutreachSettings(**env)
    app = create_scoring_app(scoring_settings)
    engine = create_engine(outreach_settings)
    subscriber = sid()
    topics = Topics(env["kafka_topic_prefix"])
    try:
        async with app.router.lifespan_context(app):
            for item in calls(subscriber, n=1, competitor=True, days_ago=2):
                await producer.send_and_wait(
                    topics.events, key=subscriber.encode(), value=orjson.dumps(item)
                )
            await eventually(
                lambda: _snapshot_times(engine, subscriber), what="scoring to take a snapshot"
            )
            call = _call(subscriber)
            now = datetime.now(UTC)
            async with engine.begin() as conn:
                await service.store_tasks(conn, new_tasks=[call], now=now)
                await service.transition(
                    conn,
                    task_id=call.task_id,
                    from_status="queued",
                    to_status="completed",
                    actor="AM-1",
                    reason="call done",
                    now=now,
                    outcome="retained",
                )
            await _drain(_relay(outreach_settings, engine, producer))

            async def censored() -> bool:
                return await _snapshot_times(engine, subscriber) == []

            await eventually(censored, what="scoring to censor the snapshot")
    finally:
        await engine.dispose()


# --- KPIs on a hand-made month ----------------------------------------------------------


def _task_row(subscriber: str, kind: TaskKind, channel: Channel, **fields: Any) -> dict[str, Any]:
    created = fields.pop("created_at", datetime(2000, 1, 1, tzinfo=UTC))
    return {
        "task_id": uuid.uuid4(),
        "kind": kind.value,
        "channel": channel.value,
        "status": "pending" if channel is Channel.SMS else "queued",
        "subscriber_id": subscriber,
        "tier": "gold",
        "language": "en",
        "priority": 1.0,
        "reasons": [],
        "params": {},
        "cause_event_id": fields.pop("cause_event_id", uuid.uuid4()),
        "created_at": created,
        "updated_at": created,
        # Every row has every key: one executemany.
        **dict.fromkeys(
            ("outcome", "end_cause", "suspension_at", "sent_at", "delivered_at", "finished_at")
        ),
    } | fields


@pytest.fixture
def month() -> tuple[str, datetime, datetime]:
    """A random past month, so that a rerun on a kept database does not count twice."""
    period = f"{random.randint(1995, 2019)}-{random.randint(1, 12):02d}"
    start, end = month_bounds(period, ZoneInfo(ZONE))
    return period, start, end


async def test_kpis_on_a_hand_made_month(
    outreach: tuple[OutreachSettings, AsyncEngine], month: tuple[str, datetime, datetime]
) -> None:
    settings, engine = outreach
    period, start, end = month
    day = timedelta(days=1)
    rows: list[dict[str, Any]] = []
    subscribers: set[str] = set()

    def stop_notice(
        tier: str, suspension: datetime, *tasks_: tuple[Channel, dict[str, Any]]
    ) -> None:
        subscriber, cause = sid(), uuid.uuid4()
        subscribers.add(subscriber)
        for channel, fields in tasks_:
            rows.append(
                _task_row(
                    subscriber,
                    TaskKind.PRE_SUSPENSION_REMINDER,
                    channel,
                    tier=tier,
                    cause_event_id=cause,
                    suspension_at=suspension,
                    created_at=suspension - 2 * day,
                    **fields,
                )
            )

    sms, call = Channel.SMS, Channel.CALL
    # Gold, 30 min into the month local time (the evening before in UTC): an SMS
    # delivered the day before. Reminded.
    s = start + timedelta(minutes=30)
    stop_notice("gold", s, (sms, {"status": "delivered", "delivered_at": s - day}))
    # Diamond: the SMS failed, the account manager's call got through. Reminded.
    s = start + 10 * day
    stop_notice(
        "diamond",
        s,
        (sms, {"status": "failed"}),
        (
            call,
            {"status": "completed", "outcome": "retained", "finished_at": s - timedelta(hours=2)},
        ),
    )
    # Silver: the SMS was delivered an hour after the suspension and the call
    # found nobody. Suspended, not reminded.
    s = start + 11 * day
    stop_notice(
        "silver",
        s,
        (sms, {"status": "delivered", "delivered_at": s + timedelta(hours=1)}),
        (call, {"status": "completed", "outcome": "unreachable", "finished_at": s - day}),
    )
    # Gold who paid: the call was cancelled by the payment. Not suspended.
    s = start + 12 * day
    stop_notice(
        "gold",
        s,
        (sms, {"status": "delivered", "delivered_at": s - day}),
        (call, {"status": "cancelled", "end_cause": "paid"}),
    )
    # Standard tier: not in the KPI.
    s = start + 13 * day
    stop_notice("standard", s, (sms, {"status": "delivered", "delivered_at": s - day}))
    # Gold, suspended at 04:00 local on the 1st of the next month (still this
    # month in UTC): next month's.
    s = end + timedelta(hours=4)
    stop_notice("gold", s, (sms, {"status": "delivered", "delivered_at": s - day}))
    # VIP guest: the reminder expired unsent. Suspended, not reminded.
    s = start + 14 * day
    stop_notice("vip_guest", s, (sms, {"status": "expired"}))
    # Gold: a call that ended not_interested still reached them first. Reminded.
    s = start + 15 * day
    stop_notice(
        "gold",
        s,
        (call, {"status": "completed", "outcome": "not_interested", "finished_at": s - day}),
    )
    # Gold: the SMS was sent but no receipt came back. Suspended, not reminded.
    s = start + 16 * day
    stop_notice("gold", s, (sms, {"status": "sent", "sent_at": s - day}))

    def offer(tier: str, created: datetime, channel: Channel, **fields: Any) -> None:
        subscriber = sid()
        subscribers.add(subscriber)
        rows.append(
            _task_row(
                subscriber, TaskKind.WIN_BACK, channel, tier=tier, created_at=created, **fields
            )
        )

    w = start + 5 * day
    offer("gold", w, call, status="completed", outcome="won_back")  # reached, won
    offer("standard", w, sms, status="sent", outcome="won_back")  # reached, won
    offer("standard", w, sms, status="delivered")  # reached, not won
    offer("standard", w, sms, status="cancelled", outcome="won_back")  # came back before it
    offer("silver", w, call, status="completed", outcome="unreachable")  # never reached
    offer("silver", w, call, status="completed", outcome="not_interested")  # reached, not won
    offer("standard", end + timedelta(hours=1), sms, status="sent")  # next month's

    async with engine.begin() as conn:
        await conn.execute(insert(tasks), rows)
    app = create_outreach_app(settings)  # no lifespan: the API reads the database only
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://outreach"
        ) as api:
            answer = await api.get("/v1/kpis", params={"period": period})
            assert answer.status_code == 200, answer.text
            kpis = answer.json()
            assert kpis["period"] == period and kpis["timezone"] == ZONE
            assert datetime.fromisoformat(kpis["start"]) == start

            def fig(num: int, den: int) -> dict[str, Any]:
                return {"numerator": num, "denominator": den, "ratio": num / den if den else None}

            reminders = kpis["reminder_before_suspension"]
            assert reminders["by_tier"] == {
                "diamond": fig(1, 1),
                "gold": fig(2, 3),
                "silver": fig(0, 1),
                "vip_guest": fig(0, 1),
            }
            assert reminders["overall"] == fig(3, 6)
            win_back = kpis["win_back"]
            assert win_back["by_tier"] == {
                "diamond": fig(0, 0),
                "gold": fig(1, 1),
                "silver": fig(0, 1),
                "vip_guest": fig(0, 0),
                "standard": fig(1, 2),
            }
            assert win_back["overall"] == fig(2, 4)

            # The current month by default; malformed periods are refused.
            current = (await api.get("/v1/kpis")).json()
            assert current["period"] == datetime.now(UTC).astimezone(settings.zone).strftime(
                "%Y-%m"
            )
            for bad in ("2024-13", "2024-1", "24-01", "0000-01", "9999-12", "x"):
                refused = await api.get("/v1/kpis", params={"period": bad})
                assert refused.status_code == 422, bad
                assert refused.json()["code"] == "validation_error"
                assert refused.json()["errors"][0]["loc"] == ["query", "period"]
            assert "/v1/kpis" in (await api.get("/openapi.json")).json()["paths"]

        # As of a moment inside the month, suspensions still ahead do not count.
        async with engine.connect() as conn:
            early = await compute_kpis(
                conn, period=period, zone=settings.zone, now=start + 10 * day + timedelta(hours=1)
            )
        figure = early.reminder_before_suspension.overall
        assert (figure.numerator, figure.denominator) == (2, 2)

        # The gauges, for "the current month" at a time inside this one.
        refresher = KpiRefresher(settings, engine)
        await refresher.refresh_once(now=end - timedelta(minutes=1))
        gauge = "churnwatch_outreach_kpi_reminder_before_suspension_ratio"
        assert REGISTRY.get_sample_value(gauge, {"tier": "gold"}) == pytest.approx(2 / 3)
        assert REGISTRY.get_sample_value(gauge, {"tier": "all"}) == pytest.approx(0.5)
        win_gauge = "churnwatch_outreach_kpi_win_back_ratio"
        assert REGISTRY.get_sample_value(win_gauge, {"tier": "standard"}) == pytest.approx(0.5)
        assert (
            REGISTRY.get_sample_value(win_gauge, {"tier": "diamond"}) is None
        )  # nothing to measure
    finally:
        await app.state.runtime.engine.dispose()
        async with engine.begin() as conn:
            ids = select(tasks.c.task_id).where(tasks.c.subscriber_id.in_(subscribers))
            await conn.execute(delete(task_transitions).where(task_transitions.c.task_id.in_(ids)))
            await conn.execute(delete(tasks).where(tasks.c.subscriber_id.in_(subscribers)))
