"""Outreach: the provider client, the dispatcher against our real gateway, and the tasks API."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import update

from churnwatch.embedded import free_port
from churnwatch.gateway import GatewaySettings, create_gateway_app
from services.outreach import service
from services.outreach.app import create_app
from services.outreach.models import tasks as tasks_table
from services.outreach.settings import OutreachSettings
from services.outreach.sms import Dispatcher, ProviderError, SmsClient, render
from shared.db import create_engine
from shared.events import Channel, OutreachTask, TaskKind, Tier
from tests.helpers import sid

pytestmark = pytest.mark.asyncio(loop_scope="session")
TOKEN = "test-token"


def task(
    subscriber_id: str,
    *,
    channel: Channel = Channel.SMS,
    phone: str | None = "+15550003000",
    due_in_h: float | None = 24,
    created_at: datetime | None = None,
) -> OutreachTask:
    now = datetime.now(UTC)
    return OutreachTask(
        task_id=uuid.uuid4(),
        kind=TaskKind.PRE_SUSPENSION_REMINDER,
        channel=channel,
        subscriber_id=subscriber_id,
        tier=Tier.GOLD,
        phone=phone,
        account_manager_id="AM-1",
        due_at=now + timedelta(hours=due_in_h) if due_in_h is not None else None,
        params={"amount": "12.00", "suspension_at": "tomorrow", "name": "", "account_manager": ""},
        cause_event_id=uuid.uuid4(),
        created_at=created_at or now,
    )


# --- the provider client, with httpx's MockTransport ---------------------------------


async def _client_for(handler: Any) -> SmsClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://sms")
    return SmsClient(http, TOKEN, "Test")


async def test_client_sends_idempotency_key_and_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"message_id": "m-1", "status": "accepted"})

    client = await _client_for(handler)
    assert await client.send(to="+15550003000", text="hi", idempotency_key="k-1") == "m-1"
    assert seen[0].headers["idempotency-key"] == "k-1"
    assert seen[0].headers["authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    ("status", "retryable"), [(500, True), (503, True), (429, True), (400, False), (401, False)]
)
async def test_client_classifies_provider_errors(status: int, retryable: bool) -> None:
    client = await _client_for(lambda _: httpx.Response(status))
    with pytest.raises(ProviderError) as info:
        await client.send(to="+15550003000", text="hi", idempotency_key="k")
    assert info.value.retryable is retryable


async def test_client_timeout_is_retryable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    client = await _client_for(handler)
    with pytest.raises(ProviderError) as info:
        await client.send(to="+15550003000", text="hi", idempotency_key="k")
    assert info.value.retryable


async def test_templates_render_and_name_missing_variables() -> None:
    text = render("pre_suspension_reminder", "fr", {"amount": "9.99", "suspension_at": "Monday"})
    assert "9.99" in text and "Monday" in text  # falls back to English
    with pytest.raises(ValueError, match="amount"):
        render("pre_suspension_reminder", "en", {"suspension_at": "Monday"})


# --- the dispatcher, against our real gateway over HTTP -------------------------------


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[str, Any]]:
    settings = GatewaySettings(sms_gateway_port=free_port(), sms_gateway_token=TOKEN)
    app = create_gateway_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=settings.sms_gateway_port, log_config=None, lifespan="off"
        )
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{settings.sms_gateway_port}", app.state.messages
    server.should_exit = True
    await serving


@pytest.fixture
async def dispatcher(env: dict[str, Any], gateway: tuple[str, Any]) -> AsyncIterator[Dispatcher]:
    settings = OutreachSettings(
        **env,
        sms_gateway_url=gateway[0],
        sms_gateway_token=TOKEN,
        sms_max_attempts=2,
        sms_retry_base_s=0.01,
    )
    engine = create_engine(settings)
    async with httpx.AsyncClient(base_url=gateway[0], timeout=5) as http:
        yield Dispatcher(settings, engine, SmsClient(http, TOKEN, "Test"))
    await engine.dispose()


async def _store(dispatcher: Dispatcher, *new: OutreachTask) -> None:
    async with dispatcher.engine.begin() as conn:
        await service.store_tasks(conn, new_tasks=list(new), now=datetime.now(UTC))


async def _status(dispatcher: Dispatcher, task_id: uuid.UUID) -> dict[str, Any]:
    async with dispatcher.engine.connect() as conn:
        row = await service.get_task(conn, task_id=task_id)
    assert row is not None
    return row


async def test_dispatch_sends_once_even_when_resent_after_a_crash(
    dispatcher: Dispatcher, gateway: tuple[str, Any]
) -> None:
    _, messages = gateway
    t = task(sid(), phone="+15550003001")
    await _store(dispatcher, t)
    await dispatcher.dispatch_once()
    assert (await _status(dispatcher, t.task_id))["status"] == "sent"
    # Crash after the provider accepted, before we recorded it: back to 'sending', stale.
    async with dispatcher.engine.begin() as conn:
        await conn.execute(
            update(tasks_table)
            .where(tasks_table.c.task_id == t.task_id)
            .values(status="sending", updated_at=datetime.now(UTC) - timedelta(hours=1))
        )
    assert await dispatcher.dispatch_once() >= 1
    row = await _status(dispatcher, t.task_id)
    assert row["status"] == "sent" and row["attempts"] == 2
    assert [m.to for m in messages].count("+15550003001") == 1  # the provider deduplicated


async def test_overdue_reminder_expires_instead_of_being_sent_late(
    dispatcher: Dispatcher, gateway: tuple[str, Any]
) -> None:
    t = task(sid(), phone="+15550003002", due_in_h=-1)
    await _store(dispatcher, t)
    await dispatcher.dispatch_once()
    row = await _status(dispatcher, t.task_id)
    assert row["status"] == "expired"
    assert row["transitions"][-1]["reason"] == "past due time"
    assert not [m for m in gateway[1] if m.to == "+15550003002"]


async def test_no_phone_fails_with_the_reason(dispatcher: Dispatcher) -> None:
    t = task(sid(), phone=None)
    await _store(dispatcher, t)
    await dispatcher.dispatch_once()
    row = await _status(dispatcher, t.task_id)
    assert row["status"] == "failed" and "no phone" in row["last_error"]


async def test_provider_errors_retry_then_fail(env: dict[str, Any]) -> None:
    settings = OutreachSettings(**env, sms_max_attempts=2, sms_retry_base_s=0.001)
    engine = create_engine(settings)
    calls = 0

    def handler(_: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(500)

    try:
        sms = await _client_for(handler)
        d = Dispatcher(settings, engine, sms)
        t = task(sid())
        await _store(d, t)
        await d.dispatch_once()
        row = await _status(d, t.task_id)
        assert row["status"] == "pending" and row["next_attempt_at"] is not None
        async with engine.begin() as conn:  # skip the backoff wait
            await conn.execute(
                update(tasks_table)
                .where(tasks_table.c.task_id == t.task_id)
                .values(next_attempt_at=None)
            )
        await d.dispatch_once()
        row = await _status(d, t.task_id)
        assert row["status"] == "failed" and calls == 2
        assert "500" in row["last_error"]
    finally:
        await engine.dispose()


# --- the REST API ---------------------------------------------------------------------


@pytest.fixture
async def api(env: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(OutreachSettings(**env))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://outreach"
        ) as client,
    ):
        yield client


async def test_tasks_are_paginated_with_a_cursor_and_filtered(
    api: httpx.AsyncClient, env: dict[str, Any]
) -> None:
    subscriber = sid()
    base = datetime.now(UTC)
    created = [
        task(subscriber, channel=Channel.CALL, created_at=base - timedelta(minutes=i))
        for i in range(5)
    ]
    engine = create_engine(OutreachSettings(**env))
    async with engine.begin() as conn:
        await service.store_tasks(conn, new_tasks=created, now=base)
        # Storing the same tasks again (a redelivered batch) adds nothing.
        assert await service.store_tasks(conn, new_tasks=created, now=base) == []
    await engine.dispose()

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"subscriber_id": subscriber, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await api.get("/v1/tasks", params=params)).json()
        seen += [t["task_id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [str(t.task_id) for t in created]  # newest first, each once
    queued = (
        await api.get(
            "/v1/tasks", params={"subscriber_id": subscriber, "status": "queued", "channel": "call"}
        )
    ).json()
    assert len(queued["items"]) == 5
    none = await api.get("/v1/tasks", params={"subscriber_id": subscriber, "kind": "win_back"})
    assert none.json()["items"] == []


async def test_api_errors_share_one_body_shape(api: httpx.AsyncClient) -> None:
    missing = await api.get(f"/v1/tasks/{uuid.uuid4()}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    bad_cursor = await api.get("/v1/tasks", params={"cursor": "!!!"})
    assert bad_cursor.status_code == 400 and bad_cursor.json()["error"]["code"] == "bad_request"
    bad_limit = await api.get("/v1/tasks", params={"limit": 1000})
    assert bad_limit.status_code == 422
    assert bad_limit.json()["error"]["code"] == "validation_error"
    assert bad_limit.json()["error"]["details"][0]["loc"] == ["query", "limit"]
