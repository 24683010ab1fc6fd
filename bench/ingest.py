"""Ingest figures: HTTP batches and single events, the landing topic's relay, the bare limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from bench.common import Stack, scrape, send_raw, start, wait_ready
from churnwatch.embedded import stop_processes
from shared.kafka import ensure_topics, make_producer
from shared.topics import Topics

Raw = dict[str, Any]
NDJSON = {"content-type": "application/x-ndjson"}


async def _post_all(
    url: str, bodies: Sequence[bytes], headers: dict[str, str], concurrency: int
) -> float:
    """Post every body with ``concurrency`` requests in flight; return the seconds taken."""
    queue = list(reversed(bodies))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            body = queue.pop()
            response = await client.post(url + "/v1/events", content=body, headers=headers)
            if response.status_code != 202:
                raise RuntimeError(f"ingest answered {response.status_code}: {response.text}")

    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        begin = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return time.perf_counter() - begin


def batch_eps(url: str, raw: Sequence[Raw], *, batch: int = 1000, concurrency: int = 4) -> float:
    """Events/s accepted in NDJSON batches of ``batch`` events."""
    bodies = [
        b"\n".join(orjson.dumps(e) for e in raw[i : i + batch]) for i in range(0, len(raw), batch)
    ]
    return len(raw) / asyncio.run(_post_all(url, bodies, NDJSON, concurrency))


def single_rps(url: str, raw: Sequence[Raw], *, concurrency: int = 16) -> float:
    """Requests/s of one event per request (JSON object bodies)."""
    bodies = [orjson.dumps(e) for e in raw]
    headers = {"content-type": "application/json"}
    return len(raw) / asyncio.run(_post_all(url, bodies, headers, concurrency))


async def _produce_timed(stack: Stack, prefix: str, raw: Sequence[Raw], *, topic: str) -> float:
    """Seconds to produce ``raw`` to ``topic`` and have every event acknowledged."""
    settings = stack.settings(prefix)
    await ensure_topics(settings)
    # The producer settings ingest itself uses (shared.kafka.make_producer), so the
    # difference to the service is the HTTP, parsing and validation around it.
    producer = make_producer(settings)
    await producer.start()
    try:
        begin = time.perf_counter()
        await send_raw(producer, topic, raw)
        return time.perf_counter() - begin
    finally:
        await producer.stop()


def limit_eps(stack: Stack, prefix: str, raw: Sequence[Raw]) -> float:
    """Events/s of the same events produced straight to the broker with aiokafka, one process."""
    return len(raw) / asyncio.run(_produce_timed(stack, prefix, raw, topic=Topics(prefix).events))


def _relay_seconds(url: str, total: int, timeout_s: float) -> float:
    """Seconds from the first relayed event to the ``total``-th, read off ingest's metrics.

    Not from the events topic's end offsets: Tansu counts a record batch as one
    offset there.
    """
    first: tuple[float, float] | None = None
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            relayed = scrape(client, url, "churnwatch_ingest_landing_relayed_total")
            now = time.perf_counter()
            if relayed and first is None:
                first = (now, relayed)
            if relayed >= total and first is not None:
                # The events relayed before the first look are not in the time either.
                return (now - first[0]) * total / max(total - first[1], 1.0)
            time.sleep(0.05)  # polling a counter, not synchronisation of the run
    raise RuntimeError(f"the landing relay did not reach {total} events in {timeout_s}s")


def landing_eps(stack: Stack, prefix: str, raw: Sequence[Raw]) -> float:
    """Events/s one ingest process relays from the landing topic to the events topic.

    The events are on the landing topic (produced by the bare producer) before
    ingest starts; the time runs from the first relayed event to the last, so the
    consumer group's join is not in it.
    """
    asyncio.run(_produce_timed(stack, prefix, raw, topic=Topics(prefix).landing))
    proc = start(stack, "ingest", stack.environ(prefix))
    try:
        wait_ready([proc])
        return len(raw) / _relay_seconds(proc.url, len(raw), timeout_s=600)
    finally:
        stop_processes([proc])
