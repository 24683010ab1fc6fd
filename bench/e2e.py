"""End-to-end latency at a fixed offered load through all four services and the gateway.

Ingest acceptance is the moment the client got the 202 for the request that
carried the event (wall clock); the stored outreach task is the ``task created``
row of ``outreach.task_transitions`` (outreach's wall clock when it stored the
task); the SMS arriving is the gateway stand-in's ``received_at``. All three
clocks are the same machine's.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from sqlalchemy import text

from bench.common import (
    Proc,
    Stack,
    fresh_prefix,
    run,
    service_setting,
    start,
    table_bytes,
    wait_ready,
)
from bench.scoring import relabel, store_model
from churnwatch.embedded import free_port, stop_processes
from churnwatch.gateway import GatewaySettings, gateway_headers
from services.outreach.settings import OutreachSettings
from shared.db import create_engine

Raw = dict[str, Any]
TICK_S = 0.1  # the load is offered in one NDJSON request every tick
# One stop-notice probe (with its profile) in every request, every 0.1 s: 600 latencies
# in a 60 s run, so that p99 is not just the second-slowest of a hundred.
PROBE_EVERY_TICKS = 1


def probe(prefix: str, n: int) -> list[Raw]:
    """A fresh subscriber's profile and a stop-notice: one reminder SMS task each."""
    subscriber = f"{prefix}-P{n:06d}"
    now = datetime.now(UTC)

    def event(event_type: str, at: datetime, payload: dict[str, Any]) -> Raw:
        return {
            "event_id": str(uuid.uuid4()),
            "event_type": event_type,
            "subscriber_id": subscriber,
            "occurred_at": at.isoformat(),
            "source": "bench",
            "payload": payload,
        }

    return [
        event(
            "subscriber",
            now - timedelta(days=30),
            {
                "tier": "standard",
                "phone": f"+1555{n % 10_000_000:07d}",
                "monthly_value": "20",
                "account_manager_id": None,
            },
        ),
        event(
            "stop_notice",
            now,
            {
                "reason": "arrears",
                "suspension_at": (now + timedelta(hours=48)).isoformat(),
                "amount_to_pay": "50.00",
            },
        ),
    ]


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50, p95 and p99 (inclusive method; NaN when there are too few values)."""
    if len(values) < 2:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98]}


@dataclass
class Offered:
    """What the load generator offered and when each event was accepted."""

    accepted_at: dict[str, float]  # event_id -> wall-clock seconds of its 202
    probes: set[str]  # event ids of the stop-notice probes
    seconds: float
    failed_requests: int


async def offer(url: str, raw: Sequence[Raw], prefix: str, rate: int, seconds: float) -> Offered:
    """Post ``rate`` events/s for ``seconds`` on a fixed schedule, never waiting for answers.

    Each tick's request is its own task, so a slow answer does not lower the
    offered load (an open-loop generator, as real billing systems are).
    """
    per_tick = round(rate * TICK_S)
    ticks = round(seconds / TICK_S)
    accepted: dict[str, float] = {}
    probes: set[str] = set()
    failures = 0
    source = iter(raw)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)

    async def post(client: httpx.AsyncClient, events: list[Raw]) -> None:
        nonlocal failures
        body = b"\n".join(orjson.dumps(e) for e in events)
        try:
            response = await client.post(
                url + "/v1/events", content=body, headers={"content-type": "application/x-ndjson"}
            )
        except httpx.HTTPError:
            failures += 1
            return
        if response.status_code != 202:
            failures += 1
            return
        at = time.time()
        for e in events:
            accepted[e["event_id"]] = at

    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        tasks = []
        begin = time.monotonic()
        for tick in range(ticks):
            events: list[Raw] = []
            if tick % PROBE_EVERY_TICKS == 0:
                pair = probe(prefix, tick // PROBE_EVERY_TICKS)
                probes.add(pair[1]["event_id"])
                events.extend(pair)
            while len(events) < per_tick:
                events.append(next(source))
            tasks.append(asyncio.create_task(post(client, events)))
            # Sleep to the next tick's start on the schedule (not a fixed sleep), so
            # the offered rate stays the same however long each iteration took.
            await asyncio.sleep(max(0.0, begin + (tick + 1) * TICK_S - time.monotonic()))
        await asyncio.gather(*tasks)
        return Offered(accepted, probes, time.monotonic() - begin, failures)


async def _collect(
    stack: Stack, gateway: Proc, prefix: str, offered: Offered, timeout_s: float, hold_s: float
) -> dict[str, Any]:
    """Wait until every accepted probe's SMS reached the gateway; read tasks and SMS.

    ``hold_s``: the SMS hold outreach ran with; ``sms_beyond_hold`` is each
    probe's SMS latency minus it, the pipeline's own share (no SMS may leave
    before its hold ends, which starts when outreach stores the task).
    """
    engine = create_engine(stack.settings())
    query = text(
        "SELECT t.task_id, t.cause_event_id, tr.at FROM outreach.tasks t "
        "JOIN outreach.task_transitions tr ON tr.task_id = t.task_id "
        "AND tr.from_status IS NULL WHERE t.subscriber_id LIKE :like"
    )
    wanted = {p for p in offered.probes if p in offered.accepted_at}
    deadline = time.monotonic() + timeout_s
    # A pipeline that delivers nothing for this long is stuck (the services' logs
    # say why): stop waiting rather than sit out the whole timeout.
    stalled_after_s = 30.0
    progress_at, seen = time.monotonic(), -1
    try:
        async with httpx.AsyncClient(timeout=30) as client, engine.connect() as conn:
            while True:
                rows = (await conn.execute(query, {"like": f"{prefix}-%"})).all()
                await conn.commit()
                cause = {str(r.task_id): str(r.cause_event_id) for r in rows}
                page = await client.get(
                    gateway.url + "/v1/messages",
                    params={"limit": 10_000},
                    headers=gateway_headers(GatewaySettings().sms_gateway_token),
                )
                messages = page.json()["messages"]
                arrived = {
                    cause[m["reference"]]: m
                    for m in messages
                    if m.get("reference") in cause and cause[m["reference"]] in wanted
                }
                if len(arrived) != seen:
                    progress_at, seen = time.monotonic(), len(arrived)
                stalled = time.monotonic() - progress_at > stalled_after_s
                if len(arrived) >= len(wanted) or time.monotonic() > deadline or stalled:
                    break
                await asyncio.sleep(0.5)  # poll interval while the pipeline drains
    finally:
        await engine.dispose()
    task_latency = [
        r.at.timestamp() - offered.accepted_at[str(r.cause_event_id)]
        for r in rows
        if str(r.cause_event_id) in offered.accepted_at
    ]
    sms_latency = [
        datetime.fromisoformat(m["received_at"]).timestamp() - offered.accepted_at[event_id]
        for event_id, m in arrived.items()
    ]
    return {
        "task": percentiles(task_latency),
        "sms": percentiles(sms_latency),
        "sms_beyond_hold": percentiles([s - hold_s for s in sms_latency]),
        "sms_hold_s": hold_s,
        "tasks": len(task_latency),
        "sms_count": len(sms_latency),
        "sms_missing": len(wanted) - len(arrived),
    }


def e2e_run(
    stack: Stack, background: Sequence[Raw], blob: bytes, *, rate: int, seconds: float
) -> dict[str, Any]:
    """One run: start the pipeline, offer the load, measure, stop."""
    prefix = fresh_prefix("e2e")
    raw = relabel(background, prefix)
    run(store_model(stack, prefix, blob))
    environ = stack.environ(
        prefix,
        # The provider's contracted rate (default 20/s) would queue the probes
        # behind the background's own reminders; the figure is the pipeline's.
        SMS_RATE_LIMIT_PER_S="1000",
    )
    # The SMS hold stays as the product ships it (unless the benchmark's own
    # environment sets it): the SMS figures include it, and the figures
    # "beyond the hold" are the same SMS without it.
    hold_s = float(service_setting(OutreachSettings, "outreach_sms_hold_s", environ))
    # The gateway posts signed receipts to outreach, so outreach's port is chosen first.
    outreach_port = free_port()
    environ["SMS_GATEWAY_RECEIPT_URL"] = f"http://127.0.0.1:{outreach_port}/v1/sms/receipts"
    environ["SMS_GATEWAY_INBOUND_URL"] = f"http://127.0.0.1:{outreach_port}/v1/sms/inbound"
    gateway = start(stack, "sms-gateway", environ)
    environ["SMS_GATEWAY_URL"] = gateway.url
    procs = [gateway]
    try:
        for name in ("ingest", "scoring", "alerting"):
            procs.append(start(stack, name, environ))
        procs.append(start(stack, "outreach", environ, port=outreach_port))
        wait_ready(procs)
        before = run(table_bytes(stack, ["alerting", "outreach"]))
        offered = asyncio.run(offer(procs[1].url, raw, prefix, rate, seconds))
        result: dict[str, Any] = asyncio.run(
            _collect(stack, gateway, prefix, offered, timeout_s=120, hold_s=hold_s)
        )
        result["achieved_eps"] = len(offered.accepted_at) / offered.seconds
        result["failed_requests"] = offered.failed_requests
        result["subscribers"] = len({e["subscriber_id"] for e in raw[: len(offered.accepted_at)]})
        after = run(table_bytes(stack, ["alerting", "outreach"]))
        result["alerting_outreach_bytes"] = after - before
        return result
    finally:
        stop_processes(procs)
