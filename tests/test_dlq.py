"""``churnwatch dlq list|replay`` against the real broker.

Dead letters are written with the same headers the consumer loop writes
(``shared.dlq.DeadLetter``); replay must put the original key and value back on
the source topic, only for the records that match, and only when not a dry run.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from churnwatch.cli import app as cli_app
from shared.dlq import DeadLetter
from shared.kafka import ensure_topics
from shared.settings import BaseServiceSettings
from shared.topics import Topics
from tests.conftest import as_environ
from tests.helpers import end_offsets, profile, read_topic, sid


async def _dead_letters(settings: BaseServiceSettings, letters: list[DeadLetter]) -> None:
    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        for letter in letters:
            await producer.send_and_wait(
                Topics(settings.kafka_topic_prefix).dlq,
                key=letter.key,
                value=letter.value,
                headers=letter.headers(),
            )
    finally:
        await producer.stop()


def _records(settings: BaseServiceSettings, topic: str) -> int:
    return sum(asyncio.run(end_offsets(settings.kafka_bootstrap_servers, topic)).values())


def test_list_and_replay_only_what_matches(env: dict[str, Any]) -> None:
    settings = BaseServiceSettings(**env)
    topics = Topics(settings.kafka_topic_prefix)
    subscriber = sid()
    value = orjson.dumps(profile(subscriber))
    letters = [
        DeadLetter(
            topic=topics.events,
            partition=0,
            offset=7,
            key=subscriber.encode(),
            value=value,
            reason="subscriber.payload.phone: bad number +447700900123",
            reason_class="validation",
            service="scoring",
        ),
        # The same bad event, dead-lettered by alerting too: replayed once.
        DeadLetter(
            topic=topics.events,
            partition=0,
            offset=7,
            key=subscriber.encode(),
            value=value,
            reason="subscriber.payload.phone: bad number +447700900123",
            reason_class="validation",
            service="alerting",
        ),
        DeadLetter(
            topic=topics.tasks,
            partition=1,
            offset=3,
            key=b"S-other",
            value=b"not json",
            reason="not JSON",
            reason_class="decode",
            service="outreach",
        ),
    ]
    asyncio.run(_dead_letters(settings, letters))
    runner = CliRunner()
    environ = as_environ(env)

    listed = runner.invoke(cli_app, ["dlq", "list"], env=environ)
    assert listed.exit_code == 0, listed.output
    assert topics.events in listed.output and topics.tasks in listed.output
    assert "7700900123" not in listed.output  # reasons quote input: masked

    dry = runner.invoke(
        cli_app, ["dlq", "replay", "--source-topic", topics.events, "--dry-run"], env=environ
    )
    assert dry.exit_code == 0 and "would replay 1" in dry.output, dry.output
    assert (
        sum(asyncio.run(end_offsets(settings.kafka_bootstrap_servers, topics.events)).values()) == 0
    )

    done = runner.invoke(cli_app, ["dlq", "replay", "--reason-class", "validation"], env=environ)
    assert done.exit_code == 0 and "replayed 1" in done.output, done.output
    assert _records(settings, topics.events) == 1  # once, not once per service
    (record,) = asyncio.run(read_topic(settings.kafka_bootstrap_servers, topics.events, count=1))
    assert record.key == subscriber.encode() and record.value == value
    assert dict(record.headers)["dlq.replayed_from"].decode().startswith(("0:", "1:", "2:"))
    # The decode failure was not replayed: tasks is still empty.
    assert (
        sum(asyncio.run(end_offsets(settings.kafka_bootstrap_servers, topics.tasks)).values()) == 0
    )
