"""The Kafka entry point (issue 18): librdkafka producers, the landing topic, order-proof rules.

The four services and the SMS gateway run as processes (as in tests/test_e2e.py);
events are published with ``confluent-kafka`` (librdkafka) and its **default**
partitioner (CRC32 of the key, not murmur2) into the landing topic, and over HTTP.
Every check counts effects at the far end: records on the events topic and the
dead-letter topic, events applied by scoring and alerting, tasks and SMS.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from aiokafka.partitioner import murmur2
from confluent_kafka import Producer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.helpers import (
    calls,
    committed_offsets,
    end_offsets,
    event,
    eventually,
    profile,
    read_topic,
    sid,
    stop_notice,
)
from tests.pipeline import Pipeline, post_events, sms_to

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.e2e]

PARTITIONS = 3  # tests.conftest.fresh_env
LandingRecord = tuple[bytes | None, bytes | None, list[tuple[str, str | bytes | None]] | None]
"""(key, value, headers) as librdkafka produces them."""


@pytest.fixture(scope="module")
def settings(pipeline: Pipeline) -> dict[str, str]:
    return pipeline.environ


@pytest.fixture(scope="module")
def librdkafka(settings: dict[str, str]) -> Iterator[Producer]:
    # librdkafka's defaults: partitioner consistent_random, acks=all, idempotence off.
    producer = Producer({"bootstrap.servers": settings["KAFKA_BOOTSTRAP_SERVERS"]})
    yield producer
    assert producer.flush(10) == 0


def publish(
    producer: Producer,
    topic: str,
    records: list[LandingRecord],
) -> list[int]:
    """Produce with librdkafka and wait for every delivery; return each record's partition."""
    partitions: list[int] = [-1] * len(records)
    errors: list[Any] = []

    def delivered(index: int) -> Any:
        def report(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(err)
            else:
                partitions[index] = msg.partition()

        return report

    for i, (key, value, headers) in enumerate(records):
        producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered(i))
    assert producer.flush(20) == 0
    assert errors == []
    return partitions


def as_record(item: dict[str, Any]) -> tuple[bytes, bytes, None]:
    return item["subscriber_id"].encode(), orjson.dumps(item), None


def canonical_partition(subscriber_id: str) -> int:
    return int(murmur2(subscriber_id.encode()) & 0x7FFFFFFF) % PARTITIONS


async def _rows(database_url: str, query: str, **params: Any) -> list[Any]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(text(query), params)).all())
    finally:
        await engine.dispose()


async def test_librdkafka_default_partitioner_events_join_their_http_events_partition(
    settings: dict[str, str],
    librdkafka: Producer,
    pipeline: Pipeline,
) -> None:
    prefix = settings["KAFKA_TOPIC_PREFIX"]
    subscribers = [sid() for _ in range(20)]
    via_kafka = [c for s in subscribers for c in calls(s, n=3, competitor=True, days_ago=2)]
    landed = publish(librdkafka, f"{prefix}.events.in", [as_record(e) for e in via_kafka])
    await post_events(
        pipeline, [c for s in subscribers for c in calls(s, n=1, competitor=False, days_ago=1)]
    )
    records = await read_topic(
        settings["KAFKA_BOOTSTRAP_SERVERS"], f"{prefix}.events", count=len(subscribers) * 4
    )
    ours = [r for r in records if r.key.decode() in set(subscribers)]
    assert len(ours) == len(subscribers) * 4
    partitions: dict[str, set[int]] = defaultdict(set)
    for record in ours:
        partitions[record.key.decode()].add(record.partition)
        payload = orjson.loads(record.value)
        assert dict(record.headers)["event_type"] == payload["event_type"].encode()
    assert {s: {canonical_partition(s)} for s in subscribers} == dict(partitions)
    # The case of the issue: librdkafka put some of them elsewhere on the landing topic.
    moved = {
        e["subscriber_id"]
        for e, p in zip(via_kafka, landed, strict=True)
        if p != canonical_partition(e["subscriber_id"])
    }
    assert moved, "librdkafka's partitions all matched murmur2: the test would show nothing"
    # Each subscriber's Kafka events keep their order (their order on the landing topic).
    for s in subscribers:
        ids = [orjson.loads(r.value)["event_id"] for r in ours if r.key.decode() == s]
        sent = [e["event_id"] for e in via_kafka if e["subscriber_id"] == s]
        assert [i for i in ids if i in sent] == sent


async def test_bad_landing_records_are_dead_lettered_and_duplicates_applied_once(
    settings: dict[str, str],
    librdkafka: Producer,
    pipeline: Pipeline,
) -> None:
    prefix = settings["KAFKA_TOPIC_PREFIX"]
    subscriber = sid()
    valid = calls(subscriber, n=5, competitor=False, days_ago=1)
    future = event(
        "payment", subscriber, {"amount": "10.00"}, at=datetime.now(UTC) + timedelta(days=2)
    )
    mismatched = stop_notice(subscriber)
    duplicate_key = (
        b'{"event_id":"'
        + str(uuid.uuid4()).encode()
        + b'","event_id":"'
        + str(uuid.uuid4()).encode()
        + b'"}'
    )
    bad: list[LandingRecord] = [
        (b"k", b"{not json", None),
        (subscriber.encode(), orjson.dumps(future), None),
        (subscriber.encode(), orjson.dumps(mismatched), [("event_type", b"cdr")]),
        (b"k", duplicate_key, None),
        (b"k", orjson.dumps(valid[:2]), None),  # a batch: one event per record
        (b"k", None, None),
        (b"k", orjson.dumps({**valid[0], "event_type": "fax"}), None),
    ]
    reasons = [
        "decode",
        "future_time",
        "header_mismatch",
        "duplicate_key",
        "not_an_event",
        "empty",
        "validation",
    ]
    good = [as_record(e) for e in valid]
    # The first two again (a producer's retry), and the rest in between.
    records = [good[0], bad[0], good[1], *bad[1:], *good[2:], good[0], good[1]]
    landed = publish(librdkafka, f"{prefix}.events.in", records)
    offsets = {(p, i) for i, p in enumerate(landed)}
    assert len(offsets) == len(records)

    landing = f"{prefix}.events.in".encode()
    letters = await read_topic(settings["KAFKA_BOOTSTRAP_SERVERS"], f"{prefix}.dlq", count=len(bad))
    ours = [dict(r.headers) for r in letters]
    ours = [h for h in ours if h.get("dlq.source_topic") == landing]
    assert sorted(h["dlq.reason_class"].decode() for h in ours) == sorted(reasons)
    for headers in ours:
        assert headers["dlq.service"] == b"ingest" and headers["dlq.reason"]
        source = (int(headers["dlq.source_partition"]), int(headers["dlq.source_offset"]))
        assert source[1] >= 0 and source[0] in set(landed)
    # Applied once each, the retried ones included: scoring's features of this
    # subscriber are those of a twin that got the same events once, over HTTP.
    twin = sid()
    await post_events(
        pipeline, [{**e, "event_id": str(uuid.uuid4()), "subscriber_id": twin} for e in valid]
    )

    async def features(subscriber_id: str) -> dict[str, float] | None:
        url = pipeline.urls["scoring"] + f"/v1/subscribers/{subscriber_id}/risk"
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(url)
        if response.status_code != 200:
            return None
        x: dict[str, float] = response.json()["features"]
        return x if x.get("calls_7d", 0) >= 4.5 else None  # all five applied (decayed)

    ours_x = await eventually(lambda: features(subscriber), what="the landing events applied")
    twin_x = await eventually(lambda: features(twin), what="the twin's events applied")
    assert ours_x == twin_x
    # Nothing dead-lettered reached scoring.
    rows = await _rows(
        settings["DATABASE_URL"],
        "select count(*) from scoring.processed_events where event_id::text = any(:ids)",
        ids=[mismatched["event_id"], future["event_id"]],
    )
    assert rows[0][0] == 0


async def _settled(
    settings: dict[str, str],
    pipeline: Pipeline,
    subscribers: list[str],
    event_ids: list[str],
) -> list[dict[str, Any]]:
    """Once alerting applied every event and outreach finished every task: their tasks."""
    database_url = settings["DATABASE_URL"]

    async def alerting_applied() -> bool:
        rows = await _rows(
            database_url,
            "select count(*) from alerting.processed_messages where message_id::text = any(:ids)",
            ids=event_ids,
        )
        return bool(rows[0][0] == len(event_ids))

    await eventually(alerting_applied, timeout_s=60, what="alerting applied the events")
    bootstrap, tasks_topic = (
        settings["KAFKA_BOOTSTRAP_SERVERS"],
        f"{settings['KAFKA_TOPIC_PREFIX']}.tasks",
    )

    async def outreach_caught_up() -> bool:
        ends = await end_offsets(bootstrap, tasks_topic)
        done = await committed_offsets(bootstrap, settings["OUTREACH_CONSUMER_GROUP"], tasks_topic)
        return all((done.get(p) or 0) >= end for p, end in ends.items())

    await eventually(outreach_caught_up, timeout_s=60, what="outreach read every task")
    unfinished = ("pending", "scheduled", "sending")

    async def finished() -> tuple[list[dict[str, Any]]] | None:
        rows = await _rows(
            database_url,
            "select subscriber_id, channel, status from outreach.tasks "
            "where subscriber_id = any(:ids) and kind = 'pre_suspension_reminder'",
            ids=subscribers,
        )
        tasks = [dict(r._mapping) for r in rows]
        waiting = [t for t in tasks if t["channel"] == "sms" and t["status"] in unfinished]
        return None if waiting else (tasks,)

    (tasks,) = await eventually(finished, timeout_s=60, what="every reminder SMS decided")
    return tasks


async def _vips(
    settings: dict[str, str], pipeline: Pipeline, subscribers: list[str], first: int
) -> dict[str, str]:
    """Gold subscribers with a phone and a manager, once alerting knows their profiles."""
    phones = {s: f"+1555{first + i:07d}" for i, s in enumerate(subscribers)}
    profiles = [profile(s, tier="gold", phone=phones[s], manager="AM-LAND") for s in subscribers]
    await post_events(pipeline, profiles)
    ids = [p["event_id"] for p in profiles]

    async def known() -> bool:
        rows = await _rows(
            settings["DATABASE_URL"],
            "select count(*) from alerting.processed_messages where message_id::text = any(:ids)",
            ids=ids,
        )
        return bool(rows[0][0] == len(ids))

    await eventually(known, what="alerting knows the profiles")
    return phones


async def _unpaid_notice(
    settings: dict[str, str], librdkafka: Producer, pipeline: Pipeline, subscriber: str, phone: str
) -> None:
    """The control: a notice through Kafka that nobody pays is reminded by SMS."""
    notice = stop_notice(subscriber, amount="50.00")
    notice["occurred_at"] = datetime.now(UTC).isoformat()
    publish(librdkafka, f"{settings['KAFKA_TOPIC_PREFIX']}.events.in", [as_record(notice)])
    [sms] = await eventually(lambda: sms_to(pipeline, phone), what="the control's reminder SMS")
    assert "50.00" in sms["text"]


async def _notice_then_payment(
    settings: dict[str, str],
    librdkafka: Producer,
    pipeline: Pipeline,
    subscriber: str,
) -> list[str]:
    notice = stop_notice(subscriber, amount="50.00")
    notice["occurred_at"] = datetime.now(UTC).isoformat()
    publish(librdkafka, f"{settings['KAFKA_TOPIC_PREFIX']}.events.in", [as_record(notice)])
    await asyncio.sleep(0.05)  # the scenario: the payment 50 ms after the notice
    payment = event("payment", subscriber, {"amount": "50.00"}, at=datetime.now(UTC))
    await post_events(pipeline, [payment])
    return [notice["event_id"], payment["event_id"]]


@pytest.mark.parametrize("alerting_behind", [False, True], ids=["live", "alerting-behind"])
async def test_a_payment_50ms_after_a_kafka_notice_stops_the_reminder_every_time(
    settings: dict[str, str],
    librdkafka: Producer,
    pipeline: Pipeline,
    alerting_behind: bool,
) -> None:
    control, *subscribers = [sid() for _ in range(7 if not alerting_behind else 5)]
    phones = await _vips(
        settings, pipeline, [control, *subscribers], 5000000 if alerting_behind else 4000000
    )
    alerting = pipeline.processes["alerting"]
    if alerting_behind:
        os.kill(alerting.pid, signal.SIGSTOP)  # a backlog: alerting reads nothing meanwhile
    try:
        ids: list[str] = []
        for subscriber in subscribers:
            ids += await _notice_then_payment(settings, librdkafka, pipeline, subscriber)
        if alerting_behind:
            # Both of every pair on the events topic before alerting reads any of them.
            await eventually(
                lambda: _on_events_topic(settings, ids),
                what="the notices relayed and the payments produced",
            )
    finally:
        if alerting_behind:
            os.kill(alerting.pid, signal.SIGCONT)
    tasks = await _settled(settings, pipeline, subscribers, ids)
    assert [t for t in tasks if t["channel"] == "sms" and t["status"] != "cancelled"] == []
    for subscriber in subscribers:
        assert await sms_to(pipeline, phones[subscriber]) == []
    await _unpaid_notice(settings, librdkafka, pipeline, control, phones[control])


async def _on_events_topic(settings: dict[str, str], ids: list[str]) -> bool:
    topic = f"{settings['KAFKA_TOPIC_PREFIX']}.events"
    records = await read_topic(settings["KAFKA_BOOTSTRAP_SERVERS"], topic, count=10**9, timeout_s=1)
    return set(ids) <= {orjson.loads(r.value)["event_id"] for r in records}


async def test_the_landing_consumer_reports_what_it_did(
    settings: dict[str, str],
    librdkafka: Producer,
    pipeline: Pipeline,
) -> None:
    subscriber = sid()
    publish(
        librdkafka,
        f"{settings['KAFKA_TOPIC_PREFIX']}.events.in",
        [as_record(calls(subscriber, n=1, competitor=False, days_ago=1)[0]), (b"k", b"[1,", None)],
    )

    async def reported() -> tuple[float, Counter[str]] | None:
        async with httpx.AsyncClient(timeout=5) as client:
            body = (await client.get(pipeline.urls["ingest"] + "/metrics")).text
        relayed = [
            float(line.split()[-1])
            for line in body.splitlines()
            if line.startswith("churnwatch_ingest_landing_relayed_total ")
        ]
        letters: Counter[str] = Counter()
        for line in body.splitlines():
            if line.startswith("churnwatch_dlq_messages_total{") and 'service="ingest"' in line:
                letters[line.split('reason="')[1].split('"')[0]] += int(float(line.split()[-1]))
        return (relayed[0], letters) if relayed and relayed[0] > 0 and letters["decode"] else None

    relayed, letters = await eventually(reported, what="the landing metrics")
    assert relayed >= 1 and letters["decode"] >= 1
