"""The SMS hold (``OUTREACH_SMS_HOLD_S``) and the dispatcher's wake-up at its end.

A new SMS task waits out the hold so that a cancellation on its way overtakes
it; once the hold ends the dispatcher sends it without waiting for its next
interval (issue 20: a fixed 1 s tick added up to a second to every SMS). The
interval here is a minute, so a dispatcher that still slept it would miss
every deadline below; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.outreach import service
from services.outreach.consumer import OutreachHandler, TaskMessage
from services.outreach.settings import OutreachSettings
from services.outreach.sms import DUE_MARGIN_S, Dispatcher, SmsClient
from shared.clock import StreamClock
from shared.consumer import Inbound
from shared.db import create_engine
from shared.events import OutreachTask, TaskAction
from shared.outbox import Outbox
from tests.helpers import eventually, sid, sms_gateway
from tests.test_outreach import task, task_update

pytestmark = pytest.mark.asyncio(loop_scope="session")
TOKEN = "test-token"
INTERVAL_S = 60.0  # far longer than any wait below: only the due-time wake-up can meet them
HOLD_S = 1.0


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
        sms_rate_limit_per_s=1000,
        outreach_dispatch_interval_s=INTERVAL_S,
        outreach_sms_hold_s=HOLD_S,
    )
    engine = create_engine(settings)
    async with httpx.AsyncClient(base_url=gateway[0], timeout=5) as http:
        yield Dispatcher(settings, engine, SmsClient(http, TOKEN, "Test"))
    await engine.dispose()


async def _consume(
    d: Dispatcher, *messages: TaskMessage, wakeup: asyncio.Event | None = None
) -> Outbox:
    """One batch through outreach's handler, committed, as the consumer loop does it.

    ``wakeup``: the event the handler sets; by default it tells the dispatcher
    when the batch's SMS are due, as the service wires it.
    """
    sms_due = d.expect if wakeup is None else lambda at: wakeup.set()
    handler = OutreachHandler(sms_due, sms_hold_s=d.settings.outreach_sms_hold_s)
    outbox = Outbox(None)  # the handler produces nothing
    batch = [Inbound(m, "tasks", 0, n, 0) for n, m in enumerate(messages)]
    async with d.engine.begin() as conn:
        await handler(conn, batch, outbox)
        if wakeup is not None:
            # Not before the commit: a dispatcher woken now could not see the task yet.
            assert not wakeup.is_set()
    outbox.committed()
    return outbox


async def _drain(d: Dispatcher) -> None:
    """Passes until one finds nothing due (the shared database holds other tests' SMS)."""
    for _ in range(100):
        if await d.dispatch_once() == 0:
            return
    raise AssertionError("SMS kept coming due")


async def _row(d: Dispatcher, t: OutreachTask) -> dict[str, Any]:
    async with d.engine.connect() as conn:
        row = await service.get_task(conn, task_id=t.task_id)
    assert row is not None
    return row


async def test_the_handler_wakes_the_dispatcher_after_its_commit_only(
    dispatcher: Dispatcher,
) -> None:
    wakeup = asyncio.Event()
    await _consume(dispatcher, task(sid(), phone="+15550004000"), wakeup=wakeup)
    assert wakeup.is_set()
    # Rolled back: no commit, no wake-up.
    rolled_back = asyncio.Event()
    handler = OutreachHandler(lambda at: rolled_back.set(), sms_hold_s=HOLD_S)

    async def failing_batch() -> None:
        async with dispatcher.engine.begin() as conn:
            await handler(conn, [Inbound(task(sid()), "tasks", 0, 0, 0)], Outbox(None))
            raise RuntimeError("the batch fails after the handler")

    with pytest.raises(RuntimeError):
        await failing_batch()
    assert not rolled_back.is_set()


async def test_an_idle_pass_sleeps_until_the_next_held_sms_not_the_interval(
    dispatcher: Dispatcher,
) -> None:
    held_until = datetime.now(UTC) + timedelta(seconds=30)
    t = task(sid(), phone="+15550004001")
    async with dispatcher.engine.begin() as conn:
        await service.store_tasks(
            conn, new_tasks=[t], now=datetime.now(UTC), sms_hold_until=held_until
        )
    await _drain(dispatcher)
    assert (await _row(dispatcher, t))["status"] == "pending"  # held, not sent
    # Another test's SMS may be due sooner; none can be due later than this one.
    assert dispatcher.next_due is not None and dispatcher.next_due <= held_until
    wait = dispatcher.wait_s()
    assert 0 <= wait <= 30 + DUE_MARGIN_S < INTERVAL_S
    # A new SMS due no sooner than that costs no wake-up; one due sooner does.
    dispatcher.wakeup.clear()
    dispatcher.expect(dispatcher.next_due + timedelta(seconds=1))
    assert not dispatcher.wakeup.is_set()
    dispatcher.expect(dispatcher.next_due - timedelta(seconds=1))
    assert dispatcher.wakeup.is_set()
    # Stream time stands still between events: no wall-clock wait can be read from it.
    streamed = Dispatcher(
        dispatcher.settings, dispatcher.engine, dispatcher.sms, clock=StreamClock()
    )
    streamed.next_due = held_until
    assert streamed.wait_s() == INTERVAL_S
    # A pass that fails leaves no due time behind (it waits the interval, never spins).
    dispatcher.next_due = held_until
    dispatcher.engine, engine = None, dispatcher.engine  # type: ignore[assignment]
    try:
        with pytest.raises(AttributeError):
            await dispatcher.dispatch_once()
    finally:
        dispatcher.engine = engine
    assert dispatcher.next_due is None and dispatcher.wait_s() == INTERVAL_S


async def test_a_held_sms_goes_when_its_hold_ends_not_at_the_next_interval(
    dispatcher: Dispatcher, gateway: tuple[str, Any]
) -> None:
    looping = asyncio.create_task(dispatcher.run())
    try:
        # The loop's first pass has looked, and it sleeps: the interval, or until
        # another test's held SMS is due.
        await eventually(_async_true(lambda: dispatcher.passes >= 1), what="the first pass")
        t = task(sid(), phone="+15550004002")
        await _consume(dispatcher, t)
        held_until = (await _row(dispatcher, t))["next_attempt_at"]
        assert held_until is not None
        [sms] = await eventually(
            _async_true(lambda: [m for m in gateway[1] if m.reference == str(t.task_id)]),
            timeout_s=INTERVAL_S / 2,
            what="the SMS once its hold ended",
        )
    finally:
        dispatcher.stop()
        await looping
    assert sms.received_at >= held_until  # the hold held
    assert (await _row(dispatcher, t))["status"] == "sent"
    # Woken by the new task, then at its due time: a handful of passes, not a poll loop.
    assert dispatcher.passes < 50


async def test_a_cancel_within_the_hold_still_stops_the_sms(
    dispatcher: Dispatcher, gateway: tuple[str, Any]
) -> None:
    looping = asyncio.create_task(dispatcher.run())
    try:
        t = task(sid(), phone="+15550004003")
        await _consume(dispatcher, t)
        held_until = (await _row(dispatcher, t))["next_attempt_at"]
        # The payment's cancellation, just behind the notice, inside the hold.
        await _consume(dispatcher, task_update(t, TaskAction.CANCEL))
        assert datetime.now(UTC) < held_until, "the test machine was too slow for the scenario"
        # The loop sleeps until the hold's end, wakes, and finds the task cancelled.
        await eventually(
            _async_true(lambda: datetime.now(UTC) > held_until), what="the hold to end"
        )
    finally:
        dispatcher.stop()
        await looping
    # And a whole pass surely after the hold's end (the loop's may be mid-way above).
    await dispatcher.dispatch_once()
    assert (await _row(dispatcher, t))["status"] == "cancelled"
    assert not [m for m in gateway[1] if m.reference == str(t.task_id)]


def _async_true(check: Any) -> Any:
    async def probe() -> Any:
        return check()

    return probe


async def test_a_pass_moves_its_whole_batch_to_sending_with_each_audit_row(
    dispatcher: Dispatcher, gateway: tuple[str, Any]
) -> None:
    batch = [task(sid(), phone=f"+1555000401{n}") for n in range(3)]
    async with dispatcher.engine.begin() as conn:
        await service.store_tasks(conn, new_tasks=batch, now=datetime.now(UTC))
    await _drain(dispatcher)
    for t in batch:
        row = await _row(dispatcher, t)
        assert row["status"] == "sent" and row["attempts"] == 1
        moves = [(m["from_status"], m["to_status"], m["reason"]) for m in row["transitions"]]
        assert ("pending", "sending", "attempt 1") in moves
        assert [m.reference for m in gateway[1]].count(str(t.task_id)) == 1
