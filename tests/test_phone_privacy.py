"""No plaintext phone number in PostgreSQL or on Kafka, while SMS still reach the right number.

The whole pipeline runs as separate processes (ingest, scoring, alerting,
outreach and the SMS gateway stand-in) on the session's broker and PostgreSQL,
with one phone key shared by ingest and outreach. Simulated profiles carry
fresh random numbers; once every SMS reached the gateway, every text and JSON
column of every table in every schema, and every record of every topic on the
broker, is searched for the numbers, with and without their ``+``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from alembic import command
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from churnwatch.gateway import GatewaySettings, gateway_headers
from churnwatch.migrate import alembic_config
from services.alerting import service as alerting_service
from services.outreach.consumer import parse_record
from shared.crypto import (
    DEV_PHONE_KEY,
    PhoneKeyring,
    UnknownPhoneKey,
    is_sealed,
    key_id_of,
    use_phone_keyring,
)
from shared.db import to_async_url
from shared.events import OutreachTask, SubscriberEvent, parse_event
from tests.conftest import Stack
from tests.helpers import eventually, profile, scratch_database, sid, stop_notice
from tests.pipeline import run_pipeline

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.e2e]

SUBSCRIBERS = 6


@dataclass
class Pipeline:
    urls: dict[str, str]
    logs: Path
    settings: dict[str, Any]
    keyring: PhoneKeyring


@pytest.fixture(scope="module")
def pipeline(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    key = base64.b64encode(os.urandom(32)).decode()
    environ = {
        # One key for every service, as `churnwatch up` gives them (only two use it).
        "PHONE_KEY": key,
        # The session's database is shared: other tests' rows are sealed under the
        # development key, and this outreach reads every due SMS. As in the middle
        # of a rotation, the old key opens them (docs/security.md).
        "PHONE_OLD_KEYS": DEV_PHONE_KEY,
    }
    start = contextlib.contextmanager(run_pipeline)
    try:
        with start(
            stack, tmp_path_factory, extra_environ=environ, unset=("OUTREACH_PHONE_KEY",)
        ) as running:
            yield Pipeline(
                running.urls, running.logs, running.settings, PhoneKeyring.from_base64(key)
            )
    finally:
        # Its rows are sealed under a key no other test has: the session's database is
        # shared, and another test's dispatcher reading them would fail to open them.
        asyncio.run(_forget_rows_sealed_under(stack.database_url, PhoneKeyring.from_base64(key)))


async def _forget_rows_sealed_under(database_url: str, keyring: PhoneKeyring) -> None:
    engine = create_async_engine(to_async_url(database_url), poolclass=NullPool)
    prefix = f"v2:{keyring.current.key_id}:%"
    try:
        async with engine.begin() as conn:
            # Their history rows point at the tasks: cleared first.
            await conn.execute(
                text(
                    "DELETE FROM outreach.task_transitions WHERE task_id IN"
                    " (SELECT task_id FROM outreach.tasks WHERE phone LIKE :p)"
                ),
                {"p": prefix},
            )
            for table in ("outreach.tasks", "alerting.subscribers"):
                await conn.execute(
                    text(f"DELETE FROM {table} WHERE phone LIKE :p"),  # noqa: S608 - constants
                    {"p": prefix},
                )
    finally:
        await engine.dispose()


async def _sms_to(pipeline: Pipeline, phone: str) -> list[dict[str, Any]]:
    headers = gateway_headers(GatewaySettings().sms_gateway_token)
    async with httpx.AsyncClient(timeout=5, headers=headers) as client:
        response = await client.get(
            pipeline.urls["sms-gateway"] + "/v1/messages", params={"to": phone}
        )
    response.raise_for_status()
    return list(response.json()["messages"])


async def _database_hits(database_url: str, needles: list[str]) -> tuple[list[str], int]:
    """``schema.table.column`` of every text/JSON value holding a needle; columns searched."""
    engine = create_async_engine(to_async_url(database_url))
    hits: list[str] = []
    try:
        async with engine.connect() as conn:
            columns = (
                await conn.execute(
                    text(
                        "SELECT table_schema, table_name, column_name"
                        " FROM information_schema.columns"
                        " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
                        " AND data_type IN ('text', 'character varying', 'character', 'json',"
                        " 'jsonb', 'ARRAY', 'bytea')"
                    )
                )
            ).all()
            for schema, table, column in columns:
                for needle in needles:
                    found = await conn.scalar(
                        text(
                            f'SELECT count(*) FROM "{schema}"."{table}"'  # noqa: S608 - catalogue names
                            f' WHERE strpos("{column}"::text, :needle) > 0'
                        ),
                        {"needle": needle},
                    )
                    if found:
                        hits.append(f"{schema}.{table}.{column}")
    finally:
        await engine.dispose()
    return hits, len(columns)


async def _every_record(bootstrap: str) -> tuple[dict[str, list[tuple[bytes, bytes]]], int]:
    """Every record of every topic, by topic: (key, value and headers joined; value)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    out: dict[str, list[tuple[bytes, bytes]]] = {}
    try:
        topics = sorted(await consumer.topics())
        partitions = [
            TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()
        ]
        ends = await consumer.end_offsets(partitions)
        wanted = {tp: end for tp, end in ends.items() if end > 0}
        consumer.assign(list(wanted))
        await consumer.seek_to_beginning(*wanted)
        deadline = time.monotonic() + 60
        while wanted and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for r in records:
                    blob = b"|".join(
                        [r.key or b"", r.value or b"", *(v for _, v in r.headers or ())]
                    )
                    out.setdefault(tp.topic, []).append((blob, r.value or b""))
                    if r.offset + 1 >= wanted.get(tp, 0):
                        wanted.pop(tp, None)
        assert not wanted, f"could not read to the end of {sorted(map(str, wanted))}"
    finally:
        await consumer.stop()
    return out, len(topics)


async def test_no_plaintext_phone_in_any_table_or_topic_and_the_sms_still_arrives(
    pipeline: Pipeline, stack: Stack
) -> None:
    phones = {sid(): f"+4479{secrets.randbelow(10**8):08d}" for _ in range(SUBSCRIBERS)}
    events = [profile(s, phone=p) for s, p in phones.items()]
    events += [stop_notice(s) for s in phones]
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(pipeline.urls["ingest"] + "/v1/events", json=events)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == len(events)

    # The SMS reaches the gateway, to the right number, once per subscriber.
    for phone in phones.values():

        async def probe(number: str = phone) -> list[dict[str, Any]]:
            return await _sms_to(pipeline, number)

        sent = await eventually(probe, what=f"an SMS to ...{phone[-3:]}")
        assert [m["to"] for m in sent] == [phone]

    needles = [*phones.values(), *(p[1:] for p in phones.values())]
    hits, columns = await _database_hits(stack.database_url, needles)
    assert columns > 50  # every schema's text and JSON columns were searched
    assert hits == []

    records, topic_count = await _every_record(stack.bootstrap_servers)
    prefix = pipeline.settings["kafka_topic_prefix"]
    ours = {t: r for t, r in records.items() if t.startswith(prefix)}
    assert f"{prefix}.events" in ours and f"{prefix}.tasks" in ours and topic_count >= len(ours)
    leaks = [t for t, rs in records.items() for r, _ in rs for n in needles if n.encode() in r]
    assert leaks == []

    # What travels instead: sealed values under the shared key, that only it opens.
    sealed = []
    for topic in (f"{prefix}.events", f"{prefix}.tasks"):
        for _, value in ours[topic]:
            message = orjson.loads(value)
            phone = (message.get("payload") or message).get("phone")
            if phone is not None:
                sealed.append((topic, phone))
    assert {t for t, _ in sealed} == {f"{prefix}.events", f"{prefix}.tasks"}
    assert all(is_sealed(p) for _, p in sealed)
    assert {key_id_of(p) for _, p in sealed} == {pipeline.keyring.current.key_id}
    assert {pipeline.keyring.decrypt(p) for _, p in sealed} == set(phones.values())
    print(  # the figures, for `pytest -s` (docs/security.md quotes them)
        f"searched {columns} columns, {topic_count} topics, "
        f"{sum(map(len, records.values()))} records for {len(needles)} needles; "
        f"{len(sealed)} sealed phones on events/tasks, {len(phones)} SMS at the gateway"
    )

    # Nor in the services' logs (the gateway stand-in's own log is the provider's side).
    for name in ("ingest", "scoring", "alerting", "outreach"):
        log = (pipeline.logs / f"{name}.log").read_text(errors="replace")
        assert not [n for n in needles if n in log], name


# --- the paths around the pipeline: old rows, old records, a missing key -------------


async def test_migration_0007_seals_plain_rows_and_the_downgrade_opens_them(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A database of its own: the session's is at head and shared by every test.
    async with scratch_database(stack.database_url, prefix="phones") as url:
        await _migrate_0007(url, monkeypatch)


async def _migrate_0007(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("PHONE_KEY", key)  # the migration reads it as a service would
    config = alembic_config(url)
    # No pool: a connection's cached plans would outlive the migrations' column changes.
    engine = create_async_engine(url, poolclass=NullPool)
    plain = {f"sub-{i}": f"+4479{secrets.randbelow(10**8):08d}" for i in range(3)}
    try:
        await asyncio.to_thread(command.upgrade, config, "0006")
        async with engine.begin() as conn:
            for subscriber, phone in [*plain.items(), ("sub-none", None)]:
                await conn.execute(
                    text(
                        "INSERT INTO alerting.subscribers (subscriber_id, tier, monthly_value,"
                        " phone, language, preferred_channel, marketing_opt_out, profile_at)"
                        " VALUES (:s, 'standard', 0, :p, 'en', 'sms', false, now())"
                    ),
                    {"s": subscriber, "p": phone},
                )
        await asyncio.to_thread(command.upgrade, config, "0007")
        async with engine.connect() as conn:
            rows: dict[str, str | None] = {r[0]: r[1] for r in await conn.execute(text(_PHONES))}
        ring = PhoneKeyring.from_base64(key)
        assert rows["sub-none"] is None
        assert {s: ring.decrypt(p) for s, p in rows.items() if p} == plain
        assert all(is_sealed(p) and key_id_of(p) == ring.current.key_id for p in rows.values() if p)
        await asyncio.to_thread(command.downgrade, config, "0006")
        async with engine.connect() as conn:
            assert {r[0]: r[1] for r in await conn.execute(text(_PHONES))} == {
                **plain,
                "sub-none": None,
            }
    finally:
        await engine.dispose()


_PHONES = "SELECT subscriber_id, phone FROM alerting.subscribers"


async def test_alerting_seals_a_plain_phone_from_an_old_record(env: dict[str, Any]) -> None:
    engine = create_async_engine(to_async_url(env["database_url"]))
    ring = PhoneKeyring.from_base64(base64.b64encode(os.urandom(32)).decode())
    old, new = sid(), sid()
    plain_number = f"+4479{secrets.randbelow(10**8):08d}"
    sealed = ring.encrypt(plain_number)
    # A record produced before phones were sealed, and one from ingest now.
    old_event = parse_event(profile(old, phone=plain_number), check_clock=False)
    new_event = parse_event(
        profile(new, phone=plain_number) | {"payload": {"phone": sealed}}, check_clock=False
    )
    use_phone_keyring(ring)  # as the alerting app does with its settings
    try:
        async with engine.begin() as conn:
            assert isinstance(old_event, SubscriberEvent)
            assert isinstance(new_event, SubscriberEvent)
            await alerting_service.upsert_profiles(conn, events=[old_event, new_event])
        async with engine.connect() as conn:
            profiles = await alerting_service.load_profiles(conn, subscriber_ids=[old, new])
        stored = profiles[old].phone
        assert stored is not None and is_sealed(stored)  # not stored in the clear
        assert ring.decrypt(stored) == plain_number
        assert profiles[new].phone == sealed  # kept as it came, unopened
    finally:
        use_phone_keyring(PhoneKeyring.from_base64(DEV_PHONE_KEY))
        async with engine.begin() as conn:
            await conn.execute(
                text("DELETE FROM alerting.subscribers WHERE subscriber_id IN (:a, :b)"),
                {"a": old, "b": new},
            )
        await engine.dispose()


async def test_outreach_opens_a_task_phone_and_dead_letters_one_under_an_unknown_key() -> None:
    ours = PhoneKeyring.from_base64(base64.b64encode(os.urandom(32)).decode())
    theirs = PhoneKeyring.from_base64(base64.b64encode(os.urandom(32)).decode())
    use_phone_keyring(ours)
    try:
        task = {
            "message_type": "outreach_task",
            "task_id": str(uuid.uuid4()),
            "kind": "care",
            "channel": "sms",
            "subscriber_id": sid(),
            "cause_event_id": str(uuid.uuid4()),
            "created_at": "2026-12-01T00:00:00+00:00",
        }

        def record(phone: str) -> ConsumerRecord[bytes, bytes]:
            value = orjson.dumps(task | {"phone": phone})
            return ConsumerRecord("t", 0, 0, 0, 0, None, value, None, 0, len(value), [])

        opened = parse_record(record(ours.encrypt("+447700900125")))
        assert isinstance(opened, OutreachTask) and opened.phone == "+447700900125"
        # A ValueError at parsing is a dead letter (shared.consumer), naming the key id.
        with pytest.raises(UnknownPhoneKey, match=theirs.current.key_id):
            parse_record(record(theirs.encrypt("+447700900125")))
    finally:
        use_phone_keyring(PhoneKeyring.from_base64(DEV_PHONE_KEY))


async def test_the_searches_find_a_planted_plain_number(stack: Stack) -> None:
    """The two searches above are the test's instruments: they must see a leak."""
    number = f"+4479{secrets.randbelow(10**8):08d}"
    table, topic = f"privacy_probe_{secrets.token_hex(4)}", f"p{secrets.token_hex(5)}.probe"
    engine = create_async_engine(to_async_url(stack.database_url))
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap_servers)
    await producer.start()
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"CREATE TABLE public.{table} (note jsonb)"))
            await conn.execute(
                text(f"INSERT INTO public.{table} VALUES (:v)"),  # noqa: S608 - our own name
                {"v": orjson.dumps({"to": number[1:]}).decode()},  # digits only, in JSON
            )
        # Made first: our clients never create a topic by naming it (shared.kafka).
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap_servers)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        finally:
            await admin.close()
        await producer.send_and_wait(topic, b'{"phone": "' + number.encode() + b'"}')
        hits, _ = await _database_hits(stack.database_url, [number, number[1:]])
        assert hits == [f"public.{table}.note"]
        records, _ = await _every_record(stack.bootstrap_servers)
        assert [r for r, _ in records[topic] if number.encode() in r]
    finally:
        await producer.stop()
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE IF EXISTS public.{table}"))
        await engine.dispose()
