"""Outreach: the provider client, the dispatcher against our real gateway, and the tasks API."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import update

from services.outreach import service
from services.outreach.app import create_app
from services.outreach.consumer import OutreachHandler
from services.outreach.queue import queued_calls
from services.outreach.schemas import CallStatus, SmsStatus
from services.outreach.service import UpdateResult, plan_update
from services.outreach.settings import OutreachSettings
from services.outreach.sms import Dispatcher, ProviderError, SmsClient
from services.outreach.tables import tasks as tasks_table
from services.outreach.templates import TEMPLATES, TemplateError, render, template_fields
from shared.consumer import Inbound
from shared.db import create_engine
from shared.events import (
    Channel,
    OutreachTask,
    TaskAction,
    TaskKind,
    TaskUpdate,
    Tier,
    derive_id,
)
from shared.kafka import make_producer, topics_for
from shared.outbox import Outbox
from tests.helpers import eventually, sid, sms_gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")
TOKEN = "test-token"


def task(
    subscriber_id: str,
    *,
    channel: Channel = Channel.SMS,
    phone: str | None = "+15550003000",
    due_in_h: float | None = 24,
    created_at: datetime | None = None,
    **fields: Any,
) -> OutreachTask:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "task_id": uuid.uuid4(),
        "kind": TaskKind.PRE_SUSPENSION_REMINDER,
        "channel": channel,
        "subscriber_id": subscriber_id,
        "tier": Tier.GOLD,
        "phone": phone,
        "account_manager_id": "AM-1",
        "due_at": now + timedelta(hours=due_in_h) if due_in_h is not None else None,
        "params": {
            "amount": "12.00",
            "suspension_at": "tomorrow",
            "name": "",
            "account_manager": "",
        },
        "cause_event_id": uuid.uuid4(),
        "created_at": created_at or now,
    }
    return OutreachTask(**(values | fields))


def task_update(
    target: OutreachTask,
    action: TaskAction,
    *,
    reason: str = "payment received",
    outcome: str | None = None,
    queue: str | None = None,
) -> TaskUpdate:
    """An update of ``target``; its id is derived from its content, as alerting derives it."""
    return TaskUpdate(
        update_id=derive_id("test-update", target.task_id, action, reason, outcome, queue),
        task_id=target.task_id,
        subscriber_id=target.subscriber_id,
        action=action,
        reason=reason,
        outcome=outcome,
        queue=queue,
        at=datetime.now(UTC),
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
    zh = render("arrears_care", "zh", {"amount": "30.00", "days_overdue": "12"})
    assert "30.00" in zh and "12" in zh and "HELP" in zh
    with pytest.raises(TemplateError, match="unknown SMS template 'retention_ofer'"):
        render("retention_ofer", "en", {})  # a typo is not silently sent as another text


# What alerting puts in a task's params: the only variables a template may use.
ALERTING_PARAMS = {
    "name",
    "account_manager",
    "amount",
    "suspension_at",
    "days_overdue",
    "usual_amount",
    "score",
}
RULE_TEMPLATES = {
    "pre_suspension_reminder": set(),
    "retention_offer": set(),
    "retention_care": set(),
    "win_back_offer": set(),
    "arrears_care": {"amount", "days_overdue"},
    "bill_shock_care": {"amount", "usual_amount"},
    # Kind fallbacks, for tasks that name no template.
    "retention": set(),
    "win_back": set(),
    "care": set(),
}


@pytest.mark.parametrize("name", sorted(RULE_TEMPLATES))
@pytest.mark.parametrize("language", ["en", "zh"])
async def test_every_template_exists_in_english_and_chinese_with_the_same_variables(
    name: str, language: str
) -> None:
    template = TEMPLATES[(name, language)]
    fields = template_fields(template)
    assert fields == template_fields(TEMPLATES[(name, "en")])
    assert fields <= ALERTING_PARAMS
    assert RULE_TEMPLATES[name] <= fields
    # Rendering with alerting's variables works (and leaves no placeholder behind).
    text = render(name, language, dict.fromkeys(ALERTING_PARAMS, "X"))
    assert "{" not in text and "}" not in text
    if name.endswith("_offer") or name in ("retention", "win_back"):
        opt_out = "Reply T to stop offers." if language == "en" else "回复T退订"
        assert opt_out in text, "offers tell the subscriber how to stop them"


async def test_cancelled_is_the_same_state_for_both_channels() -> None:
    assert SmsStatus.CANCELLED == CallStatus.CANCELLED == service.CANCELLED


@pytest.mark.parametrize(
    ("channel", "status", "action", "expected"),
    [
        ("sms", "pending", TaskAction.CANCEL, "cancelled"),
        ("sms", "scheduled", TaskAction.CANCEL, "cancelled"),  # held by quiet hours, say
        ("sms", "sending", TaskAction.CANCEL, None),  # the provider may have it already
        ("sms", "sent", TaskAction.CANCEL, None),
        ("sms", "failed", TaskAction.CANCEL, None),
        ("call", "queued", TaskAction.CANCEL, "cancelled"),
        ("call", "assigned", TaskAction.CANCEL, "cancelled"),
        ("call", "in_progress", TaskAction.CANCEL, None),
        ("call", "completed", TaskAction.CANCEL, None),
        ("sms", "pending", TaskAction.CLOSE, "cancelled"),
        ("sms", "sent", TaskAction.CLOSE, "sent"),  # only the outcome is recorded
        ("call", "completed", TaskAction.CLOSE, "completed"),
        ("call", "queued", TaskAction.REROUTE, "queued"),
        ("call", "assigned", TaskAction.REROUTE, None),
        ("sms", "pending", TaskAction.REROUTE, None),
    ],
)
async def test_what_each_update_does_in_each_state(
    channel: str, status: str, action: TaskAction, expected: str | None
) -> None:
    target = task(sid(), channel=Channel(channel), queue="am:AM-1")
    u = task_update(
        target,
        action,
        outcome="won_back" if action is TaskAction.CLOSE else None,
        queue="general" if action is TaskAction.REROUTE else None,
    )
    row = {"channel": channel, "status": status, "queue": "am:AM-1", "outcome": None}
    change = plan_update(row, u)
    assert (change.to_status if change else None) == expected
    if change is not None and action is TaskAction.CLOSE:
        assert change.values == {"outcome": "won_back"}
    # Applied once, the same update then changes nothing.
    if change is not None:
        assert plan_update(row | change.values | {"status": change.to_status}, u) is None


# --- the dispatcher, against our real gateway over HTTP -------------------------------


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[str, Any]]:
    async with sms_gateway(TOKEN) as running:
        yield running


@pytest.fixture
async def dispatcher(env: dict[str, Any], gateway: tuple[str, Any]) -> AsyncIterator[Dispatcher]:
    settings = OutreachSettings(
        **env,
        sms_gateway_url=gateway[0],
        sms_gateway_token=TOKEN,
        sms_max_attempts=2,
        sms_retry_base_s=0.01,
        outreach_dispatch_interval_s=0.05,
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


# --- task updates (cancel, close, reroute) and not_before -----------------------------


async def _apply(engine: Any, *updates: TaskUpdate) -> list[UpdateResult]:
    async with engine.begin() as conn:
        results = await service.apply_updates(conn, updates=list(updates), now=datetime.now(UTC))
    return [result for _, result in results]


async def test_cancel_stops_a_pending_sms_and_it_is_never_sent(
    dispatcher: Dispatcher, gateway: tuple[str, Any]
) -> None:
    t = task(sid(), phone="+15550003101")
    await _store(dispatcher, t)
    assert await _apply(dispatcher.engine, task_update(t, TaskAction.CANCEL)) == ["applied"]
    assert await dispatcher.dispatch_once() == 0
    row = await _status(dispatcher, t.task_id)
    assert row["status"] == "cancelled"
    last = row["transitions"][-1]
    assert (last["from_status"], last["to_status"], last["actor"], last["reason"]) == (
        "pending",
        "cancelled",
        "alerting",
        "payment received",
    )
    assert not [m for m in gateway[1] if m.to == "+15550003101"]


async def test_cancel_of_a_sent_task_changes_nothing(
    dispatcher: Dispatcher, gateway: tuple[str, Any]
) -> None:
    t = task(sid(), phone="+15550003102")
    await _store(dispatcher, t)
    await dispatcher.dispatch_once()
    before = await _status(dispatcher, t.task_id)
    assert before["status"] == "sent"
    assert await _apply(dispatcher.engine, task_update(t, TaskAction.CANCEL)) == ["ignored"]
    after = await _status(dispatcher, t.task_id)
    assert after["status"] == "sent" and after["transitions"] == before["transitions"]
    assert after["updated_at"] == before["updated_at"]


async def test_close_records_the_outcome_and_stops_a_task_not_yet_done(
    dispatcher: Dispatcher,
) -> None:
    sent, queued = task(sid(), phone="+15550003103"), task(sid(), channel=Channel.CALL)
    await _store(dispatcher, sent, queued)
    await dispatcher.dispatch_once()
    assert (await _status(dispatcher, sent.task_id))["status"] == "sent"
    closes = [
        task_update(t, TaskAction.CLOSE, reason="reactivated", outcome="won_back")
        for t in (sent, queued)
    ]
    assert await _apply(dispatcher.engine, *closes) == ["applied", "applied"]

    done = await _status(dispatcher, sent.task_id)
    assert (done["status"], done["outcome"]) == ("sent", "won_back")
    last = done["transitions"][-1]
    assert (last["from_status"], last["to_status"]) == ("sent", "sent")
    assert last["reason"] == "outcome won_back recorded: reactivated"

    stopped = await _status(dispatcher, queued.task_id)
    assert (stopped["status"], stopped["outcome"]) == ("cancelled", "won_back")
    last = stopped["transitions"][-1]
    assert (last["from_status"], last["to_status"]) == ("queued", "cancelled")
    assert last["reason"] == "reactivated; outcome won_back recorded"


async def test_reroute_moves_a_queued_call_to_another_queue(dispatcher: Dispatcher) -> None:
    manager = f"AM-{uuid.uuid4().hex[:8]}"
    call = task(sid(), channel=Channel.CALL, account_manager_id=manager, queue=f"am:{manager}")
    await _store(dispatcher, call)
    reroute = task_update(call, TaskAction.REROUTE, reason="manager's day is full", queue="general")
    assert await _apply(dispatcher.engine, reroute) == ["applied"]
    row = await _status(dispatcher, call.task_id)
    assert (row["status"], row["queue"]) == ("queued", "general")
    last = row["transitions"][-1]
    assert (last["from_status"], last["to_status"]) == ("queued", "queued")
    assert last["reason"] == "rerouted to general: manager's day is full"
    async with dispatcher.engine.connect() as conn:
        now = datetime.now(UTC)
        general = await queued_calls(conn, queue="general", now=now, limit=200)
        assert call.task_id in {r["task_id"] for r in general}
        assert await queued_calls(conn, queue=f"am:{manager}", now=now, limit=200) == []


async def test_replayed_updates_change_nothing(dispatcher: Dispatcher) -> None:
    call, sms = task(sid(), channel=Channel.CALL, queue="am:AM-1"), task(sid())
    await _store(dispatcher, call, sms)
    batch = [
        task_update(call, TaskAction.REROUTE, reason="full", queue="general"),
        task_update(call, TaskAction.REROUTE, reason="back", queue="am:AM-1"),
        task_update(sms, TaskAction.CANCEL),
    ]
    # A producer retry can duplicate a message inside one batch: it counts once.
    assert await _apply(dispatcher.engine, *batch, batch[2]) == [
        "applied",
        "applied",
        "applied",
        "ignored",
    ]
    trails = {t: await _status(dispatcher, t) for t in (call.task_id, sms.task_id)}
    assert trails[call.task_id]["queue"] == "am:AM-1"
    # The whole batch again (its offsets were not committed): nothing moves, even
    # the first reroute, which on its own would still apply to the current queue.
    assert await _apply(dispatcher.engine, *batch) == ["ignored"] * 3
    for task_id, before in trails.items():
        after = await _status(dispatcher, task_id)
        assert after["transitions"] == before["transitions"]
        assert (after["status"], after["queue"]) == (before["status"], before["queue"])


async def test_updates_for_unknown_tasks_are_counted_and_ignored(env: dict[str, Any]) -> None:
    engine = create_engine(OutreachSettings(**env))
    handler = OutreachHandler(lambda at: None)  # nothing sends here
    ghost = task_update(task(sid()), TaskAction.CANCEL)
    labels = {"action": "cancel", "result": "unknown_task"}
    before = REGISTRY.get_sample_value("churnwatch_outreach_task_updates_total", labels) or 0
    try:
        async with engine.begin() as conn:
            # The handler produces nothing, so its outbox needs no producer.
            outbox = Outbox(None)  # type: ignore[arg-type]
            await handler(conn, [Inbound(ghost, "tasks", 0, 0, 0)], outbox)
    finally:
        await engine.dispose()
    after = REGISTRY.get_sample_value("churnwatch_outreach_task_updates_total", labels)
    assert after == before + 1


async def test_sms_waits_for_not_before(dispatcher: Dispatcher, gateway: tuple[str, Any]) -> None:
    not_before = datetime.now(UTC) + timedelta(hours=1)
    t = task(sid(), phone="+15550003104", not_before=not_before)
    await _store(dispatcher, t)
    looping = Dispatcher(dispatcher.settings, dispatcher.engine, dispatcher.sms)
    running = asyncio.create_task(looping.run())

    async def three_passes() -> bool:
        return looping.passes >= 3

    try:
        # The dispatcher loop makes several passes; the task stays put all along.
        await eventually(three_passes, timeout_s=10, what="three dispatcher passes")
    finally:
        looping.stop()
        await running
    row = await _status(dispatcher, t.task_id)
    assert row["status"] == "scheduled" and row["attempts"] == 0
    assert row["next_attempt_at"] == not_before
    assert not [m for m in gateway[1] if m.to == "+15550003104"]
    # Once not_before has come, it goes. (Other tests' tasks due within that hour go
    # too: the database is shared and the order random, so count this task's effects.)
    assert await dispatcher.dispatch_once(now=not_before + timedelta(seconds=1)) >= 1
    assert (await _status(dispatcher, t.task_id))["status"] == "sent"
    assert [m.to for m in gateway[1]].count("+15550003104") == 1


async def test_named_template_is_sent_and_a_render_failure_fails_only_its_task(
    dispatcher: Dispatcher, gateway: tuple[str, Any]
) -> None:
    good = task(
        sid(),
        phone="+15550003105",
        kind=TaskKind.CARE,
        template="arrears_care",
        params={"amount": "42.00", "days_overdue": "9"},
        priority=99,  # claimed first
    )
    broken = task(
        sid(),
        phone="+15550003106",
        kind=TaskKind.CARE,
        template="arrears_care",
        params={"amount": "42.00"},  # no days_overdue
        priority=100,
    )
    fallback = task(sid(), phone="+15550003107", kind=TaskKind.CARE, language="zh")
    await _store(dispatcher, good, broken, fallback)
    await dispatcher.dispatch_once()
    row = await _status(dispatcher, broken.task_id)
    assert row["status"] == "failed" and "days_overdue" in row["last_error"]
    assert (await _status(dispatcher, good.task_id))["status"] == "sent"
    texts = {m.to: m.text for m in gateway[1]}
    assert "42.00" in texts["+15550003105"] and "9 days" in texts["+15550003105"]
    assert texts["+15550003107"] == TEMPLATES[("care", "zh")]  # the kind's, in Chinese


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
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    bad_cursor = await api.get("/v1/tasks", params={"cursor": "!!!"})
    assert bad_cursor.status_code == 400 and bad_cursor.json()["code"] == "bad_request"
    bad_limit = await api.get("/v1/tasks", params={"limit": 1000})
    assert bad_limit.status_code == 422
    assert bad_limit.json()["code"] == "validation_error"
    assert bad_limit.json()["errors"][0]["loc"] == ["query", "limit"]


async def test_call_queue_hides_calls_not_yet_due_and_filters_by_queue(
    api: httpx.AsyncClient, env: dict[str, Any]
) -> None:
    manager, subscriber = f"AM-{uuid.uuid4().hex[:8]}", sid()
    now = datetime.now(UTC)

    def call(priority: float, **fields: Any) -> OutreachTask:
        values = {"account_manager_id": manager, "queue": f"am:{manager}"} | fields
        return task(subscriber, channel=Channel.CALL, priority=priority, **values)

    due = call(
        70.5,
        rule="vip_retention",
        template=None,
        marketing=True,
        monthly_value="120.5",
        risk=0.82,
        reason_codes=["COMPETITOR_CALLS_UP"],
        reasons=["more calls to a competitor"],
    )
    came_due = call(80, not_before=now - timedelta(minutes=5))
    later = call(99, not_before=now + timedelta(hours=2))
    elsewhere = call(60, queue="general")
    engine = create_engine(OutreachSettings(**env))
    async with engine.begin() as conn:
        await service.store_tasks(conn, new_tasks=[due, came_due, later, elsewhere], now=now)
    await engine.dispose()

    by_manager = (await api.get("/v1/call-queue", params={"account_manager_id": manager})).json()
    # Highest priority first; the call deferred to later is not shown yet.
    assert [t["task_id"] for t in by_manager] == [
        str(came_due.task_id),
        str(due.task_id),
        str(elsewhere.task_id),
    ]
    by_queue = (await api.get("/v1/call-queue", params={"queue": f"am:{manager}"})).json()
    assert [t["task_id"] for t in by_queue] == [str(came_due.task_id), str(due.task_id)]
    shown = by_queue[1]
    assert shown["priority"] == 70.5
    assert shown["rule"] == "vip_retention" and shown["queue"] == f"am:{manager}"
    assert shown["marketing"] is True and shown["template"] is None
    assert shown["monthly_value"] == "120.5000" and shown["risk"] == 0.82
    assert shown["reason_codes"] == ["COMPETITOR_CALLS_UP"] and shown["outcome"] is None
    assert shown["not_before"] is None
    # The tasks API lists the deferred call too, and filters by queue.
    listed = (
        await api.get("/v1/tasks", params={"subscriber_id": subscriber, "queue": f"am:{manager}"})
    ).json()["items"]
    assert {t["task_id"] for t in listed} == {str(t.task_id) for t in (due, came_due, later)}


async def test_updates_arrive_through_the_tasks_topic(
    api: httpx.AsyncClient, env: dict[str, Any]
) -> None:
    settings = OutreachSettings(**env)
    subscriber = sid()
    call = task(subscriber, channel=Channel.CALL, queue="am:AM-1")
    won = task(subscriber, channel=Channel.CALL, queue="am:AM-1")
    reroute = task_update(call, TaskAction.REROUTE, reason="full", queue="general")
    close = task_update(won, TaskAction.CLOSE, reason="reactivated", outcome="won_back")
    ghost = task_update(task(subscriber), TaskAction.CANCEL)
    producer = make_producer(settings)
    await producer.start()
    try:
        # One key, so one partition and this order; the reroute twice (a producer
        # retry), and a record that is not a task message (to the DLQ).
        for message in (call, won, reroute, reroute, ghost, close):
            await producer.send_and_wait(
                topics_for(settings).tasks,
                value=message.model_dump_json().encode(),
                key=subscriber.encode(),
            )
        await producer.send_and_wait(
            topics_for(settings).tasks,
            value=orjson.dumps({"message_type": "task_update", "action": "explode"}),
            key=subscriber.encode(),
        )
    finally:
        await producer.stop()

    async def closed() -> dict[str, Any] | None:
        detail = (await api.get(f"/v1/tasks/{won.task_id}")).json()
        return detail if detail.get("outcome") == "won_back" else None

    detail = await eventually(closed, timeout_s=30, what="the close update")
    assert detail["status"] == "cancelled"
    rerouted = (await api.get(f"/v1/tasks/{call.task_id}")).json()
    assert rerouted["queue"] == "general"
    reroutes = [t for t in rerouted["transitions"] if t["reason"].startswith("rerouted")]
    assert len(reroutes) == 1  # the duplicate changed nothing
