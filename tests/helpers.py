"""Test helpers: event builders and polling with a deadline (never a bare sleep)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from pydantic_settings import BaseSettings
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from churnwatch.embedded import free_port
from churnwatch.gateway import GatewaySettings, create_gateway_app
from services.alerting.settings import AlertingSettings
from services.ingest.settings import IngestSettings
from services.outreach.settings import OutreachSettings
from services.scoring.settings import ScoringSettings
from shared.db import to_async_url
from shared.settings import BaseServiceSettings

T = TypeVar("T")

# Every settings class: their fields, upper-cased, are all the environment variables.
SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (
    BaseServiceSettings,
    IngestSettings,
    ScoringSettings,
    AlertingSettings,
    OutreachSettings,
    GatewaySettings,
)


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, timeout_s: float = 30.0, what: str = "condition"
) -> T:
    """Await ``probe()`` until it returns something truthy, or fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.1)


def sid() -> str:
    """A fresh subscriber id."""
    return f"S-{uuid.uuid4().hex[:12]}"


def event(
    event_type: str,
    subscriber_id: str,
    payload: dict[str, Any],
    *,
    at: datetime | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """A JSON-ready event."""
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "event_type": event_type,
        "subscriber_id": subscriber_id,
        "occurred_at": (at or datetime.now(UTC)).isoformat(),
        "source": "test",
        "payload": payload,
    }


def profile(
    subscriber_id: str,
    *,
    tier: str = "standard",
    phone: str | None = "+15550001111",
    monthly_value: str = "20",
    manager: str | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """A ``subscriber`` event."""
    return event(
        "subscriber",
        subscriber_id,
        {
            "tier": tier,
            "phone": phone,
            "monthly_value": monthly_value,
            "account_manager_id": manager,
        },
        at=at or datetime.now(UTC) - timedelta(days=30),
    )


def stop_notice(
    subscriber_id: str, *, in_hours: float = 48, amount: str = "50.00", event_id: str | None = None
) -> dict[str, Any]:
    """A stop-notice with the suspension ``in_hours`` from now."""
    return event(
        "stop_notice",
        subscriber_id,
        {
            "reason": "arrears",
            "suspension_at": (datetime.now(UTC) + timedelta(hours=in_hours)).isoformat(),
            "amount_to_pay": amount,
        },
        event_id=event_id,
    )


def calls(subscriber_id: str, *, n: int, competitor: bool, days_ago: float) -> list[dict[str, Any]]:
    """``n`` voice calls spread over the day ``days_ago``."""
    base = datetime.now(UTC) - timedelta(days=days_ago)
    return [
        event(
            "cdr",
            subscriber_id,
            {
                "service": "voice",
                "direction": "outgoing",
                "duration_s": 120,
                "counterpart_network": "competitor" if competitor else "own",
            },
            at=base + timedelta(minutes=i),
        )
        for i in range(n)
    ]


async def read_topic(
    bootstrap: str, topic: str, *, count: int, timeout_s: float = 20.0
) -> list[Any]:
    """Read ``count`` records from the start of ``topic`` (all partitions)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
    finally:
        await consumer.stop()
    return records


async def committed_offsets(bootstrap: str, group_id: str, topic: str) -> dict[int, int | None]:
    """The consumer group's committed offset per partition of ``topic``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in sorted(partitions)}
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The end offset of each partition of ``topic``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic) or set()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def serve(app: Any, port: int) -> tuple[Any, asyncio.Task[None]]:
    """Serve an ASGI app with uvicorn on 127.0.0.1:``port``; return the server and its task.

    Returns once the server listens (or fails after a deadline). Stop it with
    ``server.should_exit = True`` and await the task.
    """
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    )
    serving = asyncio.create_task(server.serve())

    async def started() -> bool:
        assert not serving.done(), "the server stopped while starting"
        return bool(server.started)

    await eventually(started, timeout_s=10, what=f"a server on port {port}")
    return server, serving


UP_PORTS = ("INGEST_PORT", "SCORING_PORT", "ALERTING_PORT", "OUTREACH_PORT", "SMS_GATEWAY_PORT")


def spawn_up(
    args: list[str], environ: Mapping[str, str], log: Path
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """Start ``churnwatch up ARGS`` in its own session, output to ``log``.

    Every service and the gateway get a free port, so tests never collide with
    each other or with a stack already running. Returns the process and the
    environment it got (its ports).
    """
    env = dict(environ)
    for name in UP_PORTS:
        env[name] = str(free_port())
    env["SMS_GATEWAY_URL"] = f"http://127.0.0.1:{env['SMS_GATEWAY_PORT']}"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "churnwatch", "up", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, env


@asynccontextmanager
async def scratch_database(database_url: str, *, prefix: str) -> AsyncIterator[str]:
    """An empty database of its own on the session's server, dropped afterwards; yields its URL.

    For tests that migrate up and down or walk every row: the session's database
    is at head and shared by every test.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(to_async_url(database_url), isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(to_async_url(database_url)).set(database=name).render_as_string(False)
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


@asynccontextmanager
async def sms_gateway(token: str) -> AsyncIterator[tuple[str, Any]]:
    """Our SMS provider stand-in on a free port, without receipts: its URL and its messages.

    (Nothing serves receipts in the tests that use it; tests/test_sms.py covers them.)
    """
    settings = GatewaySettings(
        sms_gateway_port=free_port(), sms_gateway_token=token, sms_gateway_receipt_url=""
    )
    app = create_gateway_app(settings)
    server, serving = await serve(app, settings.sms_gateway_port)
    try:
        yield f"http://127.0.0.1:{settings.sms_gateway_port}", app.state.messages
    finally:
        server.should_exit = True
        await serving
        await app.state.gateway.aclose()
