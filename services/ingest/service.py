"""Ingest's work: split a request body into events, validate each, produce the valid ones."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from services.ingest import metrics
from services.ingest.schemas import Rejection
from shared.consumer import Outbox
from shared.errors import BadRequest, PayloadTooLarge, ServiceUnavailable, UnsupportedMediaType
from shared.events import Event, parse_event
from shared.topics import Topics

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")


def split_body(body: bytes, content_type: str, *, max_events: int) -> list[Any]:
    """The raw items of a request: one JSON object, a JSON array, or NDJSON lines.

    NDJSON lines that are not JSON become ``orjson.JSONDecodeError`` items, so they
    are rejected by index like any other bad event instead of failing the batch.
    """
    media = content_type.split(";")[0].strip().lower()
    items: list[Any]
    if media in NDJSON_TYPES:
        lines = [line for line in body.split(b"\n") if line.strip()]
        if len(lines) > max_events:
            raise PayloadTooLarge(
                f"batch has {len(lines)} events; the limit is {max_events} "
                "(INGEST_MAX_BATCH_EVENTS)",
                details={"limit": max_events, "setting": "INGEST_MAX_BATCH_EVENTS"},
            )
        items = []
        for line in lines:
            try:
                items.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                items.append(exc)
        return items
    if media in ("application/json", ""):
        try:
            decoded = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from exc
        items = decoded if isinstance(decoded, list) else [decoded]
        if len(items) > max_events:
            raise PayloadTooLarge(
                f"batch has {len(items)} events; the limit is {max_events} "
                "(INGEST_MAX_BATCH_EVENTS)",
                details={"limit": max_events, "setting": "INGEST_MAX_BATCH_EVENTS"},
            )
        return items
    raise UnsupportedMediaType(
        f"content type {media!r} is not accepted; use application/json or application/x-ndjson"
    )


def validate_items(items: list[Any]) -> tuple[list[Event], list[Rejection]]:
    """Validate every item on its own; a bad one is rejected with its index and reasons."""
    valid: list[Event] = []
    rejected: list[Rejection] = []
    for index, item in enumerate(items):
        event_id = (
            str(item.get("event_id")) if isinstance(item, dict) and "event_id" in item else None
        )
        if isinstance(item, Exception):
            rejected.append(
                Rejection(
                    index=index, event_id=None, errors=[{"loc": [], "msg": f"invalid JSON: {item}"}]
                )
            )
            continue
        if not isinstance(item, dict):
            rejected.append(
                Rejection(
                    index=index,
                    event_id=None,
                    errors=[{"loc": [], "msg": "an event must be a JSON object"}],
                )
            )
            continue
        try:
            valid.append(parse_event(item))
        except ValidationError as exc:
            rejected.append(
                Rejection(
                    index=index,
                    event_id=event_id,
                    errors=[
                        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                        for e in exc.errors(include_url=False, include_input=False)
                    ],
                )
            )
    return valid, rejected


async def produce_events(
    *,
    producer: AIOKafkaProducer,
    topics: Topics,
    events: list[Event],
    timeout_s: float,
    retry_after_s: int,
) -> None:
    """Produce every event keyed by subscriber and wait until the broker acknowledged all.

    If the broker does not acknowledge them all within ``timeout_s``, raise
    ``ServiceUnavailable``: the caller reports nothing as accepted and the client
    retries the whole request; consumers drop the duplicates by ``event_id``.
    """
    start = time.perf_counter()

    async def _send_all() -> None:
        outbox = Outbox(producer)
        await outbox.send_many(
            topics.events,
            [
                (
                    event.subscriber_id.encode(),
                    event.model_dump_json().encode(),
                    [("event_type", event.event_type.encode())],
                )
                for event in events
            ],
        )
        await outbox.flush()

    try:
        await asyncio.wait_for(_send_all(), timeout_s)
    except (KafkaError, TimeoutError) as exc:
        raise ServiceUnavailable(
            "the event broker did not acknowledge the events; nothing was accepted, retry later",
            details={"reason": type(exc).__name__},
            headers={"Retry-After": str(retry_after_s)},
        ) from exc
    metrics.PRODUCE_SECONDS.observe(time.perf_counter() - start)
