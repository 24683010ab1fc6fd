"""The drills: each fault under load, then a count of every effect at the far end.

A drill posts its own simulated subscribers (``DRILLnn-*``) to ingest, does its
fault once a third of them are acknowledged, lets the load finish (the billing
system retries what was not acknowledged), and waits, with a deadline, until
everything acknowledged has gone as far as it will. Then it counts: events
acknowledged, applied, tasks, SMS at the gateway, SMS in a final state, lost,
duplicated. The stack's own supervision does every recovery; the drill only
watches.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from churnwatch.drill.effects import Tally, count
from churnwatch.drill.load import Load
from churnwatch.drill.stack import UpStack

RECOVERY_TIMEOUT_S = 120.0
MID_SEND_AT_LEAST = 3
"""SMS tasks in 'sending' the mid-send drill waits for before it kills outreach."""
QUIET_S = 15.0
"""How long the counts must hold still, everything settled, before a drill is counted."""


@dataclass
class DrillContext:
    """What a fault can reach: the stack, the running load, and notes for the report."""

    stack: UpStack
    load: Load
    id_prefix: str
    notes: list[str] = field(default_factory=list)


Fault = Callable[[DrillContext], Awaitable[None]]


@dataclass(frozen=True)
class Drill:
    """One fault and how to provoke it."""

    name: str
    description: str
    fault: Fault
    gateway_faults: dict[str, Any] | None = None  # the SMS gateway's fault modes meanwhile
    subscribers: int = 150
    in_short_run: bool = False  # part of the CI run (``--short``)


@dataclass
class DrillResult:
    """A drill's outcome."""

    drill: Drill
    tally: Tally | None
    seconds: float
    notes: list[str]
    error: str | None = None

    @property
    def passed(self) -> bool:
        """Nothing lost, nothing duplicated, every SMS final, no harness error."""
        return (
            self.error is None
            and self.tally is not None
            and self.tally.lost == 0
            and self.tally.duplicated == 0
            and self.tally.unfinished == 0
        )


def _kill(service: str) -> Fault:
    async def fault(ctx: DrillContext) -> None:
        pid = await asyncio.to_thread(ctx.stack.signal, service, signal.SIGKILL)
        back = await asyncio.to_thread(
            ctx.stack.wait_replaced, service, pid, timeout_s=RECOVERY_TIMEOUT_S
        )
        ctx.notes.append(f"{service} pid {pid} killed; back (restarted by up) in {back:.1f} s")

    return fault


async def _freeze_broker(ctx: DrillContext) -> None:
    pid = await asyncio.to_thread(ctx.stack.signal, "broker", signal.SIGSTOP)
    try:
        await asyncio.sleep(15)  # the fault's duration, not a synchronisation
    finally:
        await asyncio.to_thread(ctx.stack.signal, "broker", signal.SIGCONT)
    ctx.notes.append(f"broker pid {pid} frozen (SIGSTOP) for 15 s")


async def _restart_postgres(ctx: DrillContext) -> None:
    started = time.monotonic()
    await asyncio.to_thread(ctx.stack.restart_postgres)
    ctx.notes.append(
        f"PostgreSQL crashed (immediate stop) and restarted in {time.monotonic() - started:.1f} s"
    )


async def _kill_outreach_mid_send(ctx: DrillContext) -> None:
    """Wait until SMS are being sent (the gateway is slow), then ``kill -9`` outreach."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    engine = create_async_engine(ctx.stack.database_url, pool_size=1)
    try:
        while True:
            async with engine.connect() as conn:
                sending = (
                    await conn.execute(
                        text(
                            "SELECT count(*) FROM outreach.tasks"
                            " WHERE subscriber_id LIKE :p AND status = 'sending'"
                        ),
                        {"p": f"{ctx.id_prefix}-%"},
                    )
                ).scalar_one()
            # Several at once: the drill had SMS stuck between the provider
            # taking them and outreach recording it.
            if sending >= MID_SEND_AT_LEAST or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        await engine.dispose()
    if sending < MID_SEND_AT_LEAST:
        ctx.notes.append(f"only {sending} SMS task(s) in 'sending' by the deadline: killed anyway")
    await _kill("outreach")(ctx)
    ctx.notes.insert(0, f"{sending} SMS task(s) in 'sending' at the kill")


async def _poison_and_duplicates(ctx: DrillContext) -> None:
    """Post a third of the acknowledged batches again, and put poison on the events topic."""
    from aiokafka import AIOKafkaProducer

    again = ctx.load.batches[: len(ctx.load.batches) // 3]
    async with httpx.AsyncClient(
        timeout=30, headers={"Authorization": f"Bearer {ctx.stack.api_key}"}
    ) as client:
        for batch in again:
            response = await client.post(ctx.stack.urls["ingest"] + "/v1/events", json=batch)
            response.raise_for_status()
    producer = AIOKafkaProducer(bootstrap_servers=ctx.stack.bootstrap_servers, acks="all")
    await producer.start()
    try:
        poison = [b"not json", b'{"event_type": "cdr"}', b"[1, 2, 3]", b"\xff\xfe"]
        for value in poison:
            await producer.send_and_wait(
                ctx.stack.events_topic, value, key=f"{ctx.id_prefix}-poison".encode()
            )
    finally:
        await producer.stop()
    ctx.notes.append(
        f"{sum(len(b) for b in again)} events posted again (same ids), "
        f"{len(poison)} poison records on the events topic"
    )


async def _no_fault(ctx: DrillContext) -> None:
    ctx.notes.append("no fault: the baseline")


async def _gateway_only(ctx: DrillContext) -> None:
    ctx.notes.append("the SMS gateway's faults were on throughout the load")


DRILLS: tuple[Drill, ...] = (
    Drill("baseline", "No fault: the counts every drill is held to", _no_fault, in_short_run=True),
    Drill("kill-ingest", "kill -9 ingest under load", _kill("ingest")),
    Drill("kill-scoring", "kill -9 scoring under load", _kill("scoring"), in_short_run=True),
    Drill("kill-alerting", "kill -9 alerting under load", _kill("alerting")),
    Drill("kill-outreach", "kill -9 outreach under load", _kill("outreach")),
    Drill(
        "broker-restart",
        "kill -9 the broker under load (up restarts it)",
        _kill("broker"),
        in_short_run=True,
    ),
    Drill("broker-freeze", "SIGSTOP the broker for 15 s under load", _freeze_broker),
    Drill("postgres-restart", "PostgreSQL crashed and restarted under load", _restart_postgres),
    Drill(
        "gateway-500",
        "the SMS gateway answers 500 to the next 15 submissions",
        _gateway_only,
        gateway_faults={"error_500": 15},
    ),
    Drill(
        "gateway-timeouts",
        "the SMS gateway accepts the next 5 submissions and answers after the client gave up",
        _gateway_only,
        gateway_faults={"timeout_after_accept": 5, "hang_s": 20},
    ),
    Drill(
        "receipts-dropped",
        "the SMS gateway never sends delivery receipts",
        _gateway_only,
        gateway_faults={"drop_receipts": True},
    ),
    Drill(
        "outreach-mid-send",
        "kill -9 outreach while SMS are being sent (gateway slowed to 3 s a message)",
        _kill_outreach_mid_send,
        gateway_faults={"slow_s": 3},
        subscribers=400,  # enough SMS that several are in flight at once
    ),
    Drill(
        "poison-duplicates",
        "poison records on the topic and batches posted twice",
        _poison_and_duplicates,
        in_short_run=True,
    ),
)


async def _set_gateway_faults(stack: UpStack, faults: dict[str, Any] | None) -> None:
    async with httpx.AsyncClient(
        timeout=10, headers={"Authorization": f"Bearer {stack.gateway_token}"}
    ) as client:
        response = await client.put(stack.urls["sms-gateway"] + "/v1/faults", json=faults or {})
        response.raise_for_status()


async def run_drill(
    stack: UpStack,
    drill: Drill,
    index: int,
    *,
    rate: float,
    settle_timeout_s: float,
    subscribers: int | None = None,
) -> DrillResult:
    """Run one drill on ``stack``; never raises for the drill's own failures."""
    started = time.monotonic()
    prefix = f"DRILL{index:02d}"
    notes: list[str] = []
    load: Load | None = None
    try:
        await _set_gateway_faults(stack, drill.gateway_faults)
        if drill.gateway_faults:
            notes.append(f"SMS gateway faults: {drill.gateway_faults}")
        load = Load(
            stack.urls["ingest"],
            stack.api_key,
            subscribers=subscribers or drill.subscribers,
            seed=1000 + index,
            id_prefix=prefix,
            rate=rate,
        ).start()
        ctx = DrillContext(stack, load, prefix, notes)
        # The load runs in a thread: polled, the fault comes a third of the way in.
        while load.sent < load.total / 3 and not load.done:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        await drill.fault(ctx)
        if not await asyncio.to_thread(load.join, RECOVERY_TIMEOUT_S + settle_timeout_s):
            load.stop()
            notes.append("the load could not finish: ingest never acknowledged the rest")
        if load.error is not None:
            raise load.error
        tally = await _settle(stack, load, prefix, settle_timeout_s)
        notes.append(
            f"ingest answered {dict(sorted(load.stats.answers.items()))} "
            f"({load.stats.retries} retries)"
        )
        return DrillResult(drill, tally, time.monotonic() - started, notes)
    except Exception as exc:  # a drill that breaks the harness is a failed drill, reported
        if load is not None:
            load.stop()
        return DrillResult(
            drill, None, time.monotonic() - started, notes, f"{type(exc).__name__}: {exc}"
        )
    finally:
        try:
            await _set_gateway_faults(stack, None)
        except httpx.HTTPError as exc:
            notes.append(f"could not reset the gateway's faults: {exc}")


async def _settle(stack: UpStack, load: Load, prefix: str, timeout_s: float) -> Tally:
    """Count until everything acknowledged went as far as it will (or the deadline).

    Scores and tasks follow the events by a few seconds (alerting reads scores,
    outreach dispatches every second), so "settled" must also hold still for
    ``QUIET_S``: the same counts, nothing lost, every SMS final.
    """
    deadline = time.monotonic() + timeout_s
    stable_since, previous = time.monotonic(), None
    while True:
        tally = await count(
            stack.database_url,
            stack.urls["sms-gateway"],
            stack.gateway_token,
            acknowledged=load.stats.acknowledged,
            for_alerting=load.stats.for_alerting,
            id_prefix=prefix,
        )
        if tally != previous:
            stable_since, previous = time.monotonic(), tally
        if tally.settled and time.monotonic() - stable_since >= QUIET_S:
            return tally
        if time.monotonic() > deadline:
            return tally
        await asyncio.sleep(1.0)


async def run_drills(
    stack: UpStack,
    drills: Sequence[Drill],
    *,
    rate: float,
    settle_timeout_s: float,
    subscribers: int | None = None,
    on_result: Callable[[DrillResult], None] | None = None,
) -> list[DrillResult]:
    """Run ``drills`` one after another on one stack."""
    results = []
    for index, drill in enumerate(drills, start=1):
        result = await run_drill(
            stack,
            drill,
            index,
            rate=rate,
            settle_timeout_s=settle_timeout_s,
            subscribers=subscribers,
        )
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results
