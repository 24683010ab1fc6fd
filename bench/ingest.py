"""Ingest figures: NDJSON batches and single events via ``POST /v1/events``; the bare limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from bench.common import Stack, send_raw
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


async def _produce_timed(stack: Stack, prefix: str, raw: Sequence[Raw]) -> float:
    settings = stack.settings(prefix)
    await ensure_topics(settings)
    # The producer settings ingest itself uses (shared.kafka.make_producer), so the
    # difference to the service is the HTTP, parsing and validation around it.
    producer = make_producer(settings)
    await producer.start()
    try:
        topic = Topics(prefix).events
        begin = time.perf_counter()
        await send_raw(producer, topic, raw)
        return time.perf_counter() - begin
    finally:
        await producer.stop()


def limit_eps(stack: Stack, prefix: str, raw: Sequence[Raw]) -> float:
    """Events/s of the same events produced straight to the broker with aiokafka, one process."""
    return len(raw) / asyncio.run(_produce_timed(stack, prefix, raw))
