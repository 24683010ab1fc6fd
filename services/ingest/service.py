"""Ingest's work: split a request body into events, validate each, produce the valid ones."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata
from opentelemetry import trace
from pydantic import ValidationError

from services.ingest import metrics
from services.ingest.schemas import Rejection
from shared.crypto import sealed_event_json
from shared.errors import BadRequest, PayloadTooLarge, ServiceUnavailable, UnsupportedMediaType
from shared.events import Event, parse_event
from shared.kafka import OffsetLedger, TopicGuard, TopicVerdict
from shared.outbox import Outbox
from shared.topics import Topics
from shared.tracing import Tracing, context_of, headers

log = logging.getLogger(__name__)

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")


# A key is a string followed by optional whitespace and a colon; string values may
# contain the same pattern, so this over-counts keys, never under-counts them.
_KEY_MARK = re.compile(rb'"\s*:')
_SPACED_KEY_MARK = re.compile(rb'"\s+:')


class DuplicateKeyError(ValueError):
    """An event's JSON names the same key twice in one object (orjson keeps the last)."""

    def __init__(self, key: str, event_id: str | None) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key = key
        self.event_id = event_id


def _count_keys(value: Any) -> int:
    """How many keys the decoded value holds, at every depth."""
    # Exact type checks and a plain loop: this runs on every event (measured in
    # docs/faults.md, "Duplicate keys").
    if type(value) is dict:
        n = len(value)
        for child in value.values():
            if type(child) is dict or type(child) is list:
                n += _count_keys(child)
        return n
    if type(value) is list:
        return sum(_count_keys(child) for child in value if type(child) in (dict, list))
    return 0


def _key_marks(raw: bytes) -> int:
    """At least as many as the keys the JSON text names (more if strings contain ``":``)."""
    if _SPACED_KEY_MARK.search(raw) is None:
        return raw.count(b'":')  # the common, compact case: a C-speed count
    return len(_KEY_MARK.findall(raw))


def duplicate_key_in(raw: bytes, decoded: Any) -> DuplicateKeyError | None:
    """A ``DuplicateKeyError`` if the JSON text ``raw`` repeats a key in one object.

    orjson silently keeps the last of two equal keys. Fast path: a duplicate makes
    the decoded value hold fewer keys than the text names, and the text names at
    most as many as ``_KEY_MARK`` matches, so equal counts prove there is none.
    Only when they differ (a duplicate, or ``":`` inside a string) is the text parsed
    again with the stdlib parser to find the key.
    """
    if _key_marks(raw) == _count_keys(decoded):
        return None
    key = _first_duplicate(json.loads(raw, object_pairs_hook=list))
    if key is None:
        return None
    event_id = decoded.get("event_id") if isinstance(decoded, dict) else None
    return DuplicateKeyError(key, None if event_id is None else str(event_id))


def _duplicates_in_array(body: bytes, items: list[Any]) -> dict[int, DuplicateKeyError]:
    """Per index, the duplicate key of each item of a JSON array body that has one."""
    if _key_marks(body) == _count_keys(items):
        return {}
    found: dict[int, DuplicateKeyError] = {}
    # Every object as its list of (key, value) pairs: check each item on its own.
    for index, raw_item in enumerate(json.loads(body, object_pairs_hook=list)):
        key = _first_duplicate(raw_item)
        if key is not None:
            item = items[index]
            event_id = item.get("event_id") if isinstance(item, dict) else None
            found[index] = DuplicateKeyError(key, None if event_id is None else str(event_id))
    return found


def _first_duplicate(value: Any) -> str | None:
    """The first repeated key in a value parsed with ``object_pairs_hook=list``.

    Objects arrive as lists of ``(key, value)`` tuples, arrays as lists of values.
    """
    if isinstance(value, list) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        keys = [k for k, _ in value]
        seen: set[str] = set()
        for key in keys:
            if key in seen:
                return str(key)
            seen.add(key)
        children = [v for _, v in value]
    elif isinstance(value, list):
        children = value
    else:
        return None
    for child in children:
        found = _first_duplicate(child)
        if found is not None:
            return found
    return None


def split_body(body: bytes, content_type: str, *, max_events: int) -> list[Any]:
    """The raw items of a request: one JSON object, a JSON array, or NDJSON lines.

    NDJSON lines that are not JSON become ``orjson.JSONDecodeError`` items, and an
    event whose JSON repeats a key becomes a ``DuplicateKeyError`` item, so they
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
                decoded = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                items.append(exc)
                continue
            items.append(duplicate_key_in(line, decoded) or decoded)
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
        if not isinstance(decoded, list):
            return [duplicate_key_in(body, decoded) or decoded]
        duplicates = _duplicates_in_array(body, items)
        return [duplicates.get(i, item) for i, item in enumerate(items)]
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
        if isinstance(item, DuplicateKeyError):
            rejected.append(
                Rejection(
                    index=index,
                    event_id=item.event_id,
                    errors=[{"loc": [item.key], "msg": str(item), "type": "duplicate_key"}],
                )
            )
            continue
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


def event_records(
    events: list[Event], *, trace_headers: Sequence[list[tuple[str, bytes]]] | None = None
) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """The events topic's records of ``events``, as every way in writes them.

    Key: the subscriber id (partitioned by murmur2 of it, ``Outbox.send_many``);
    value: the event's JSON with its phone sealed (``shared.crypto``); header
    ``event_type``: the payload's own type, for consumers that skip usage records.
    ``trace_headers`` (tracing on): each event's ``traceparent`` headers, in order.
    """
    if trace_headers is not None:
        return [
            (
                event.subscriber_id.encode(),
                sealed_event_json(event),
                [("event_type", event.event_type.encode()), *extra],
            )
            for event, extra in zip(events, trace_headers, strict=True)
        ]
    return [
        (
            event.subscriber_id.encode(),
            sealed_event_json(event),
            [("event_type", event.event_type.encode())],
        )
        for event in events
    ]


def _refuse(reason: str, message: str, retry_after_s: int, **details: object) -> ServiceUnavailable:
    metrics.REFUSED.labels(reason).inc()
    return ServiceUnavailable(
        message,
        details={"reason": reason, **details},
        headers={"Retry-After": str(retry_after_s)},
    )


def _topic_refusal(verdict: TopicVerdict, retry_after_s: int, *, when: str) -> ServiceUnavailable:
    # The guard logs each change of verdict once; a line per refused request would
    # flood the log at thousands of requests per second.
    return _refuse(
        verdict.kind,
        f"the events topic is not usable ({when}): {verdict.reason}; nothing was accepted, "
        "retry later",
        retry_after_s,
        topic_check=verdict.reason,
    )


async def produce_events(
    *,
    producer: AIOKafkaProducer,
    guard: TopicGuard,
    ledger: OffsetLedger,
    topics: Topics,
    events: list[Event],
    timeout_s: float,
    retry_after_s: int,
    settle_s: float = 2.0,
    tracing: Tracing | None = None,
) -> None:
    """Produce every event keyed by subscriber; return only once they are durably held.

    Three gates, each a 503 with nothing accepted if it fails (the client retries
    the whole request; consumers drop duplicates by ``event_id``):

    1. the events topic exists with ``KAFKA_TOPIC_PARTITIONS`` partitions (a cached
       verdict, at most ``ttl_s`` old), checked without naming the topic, which
       would make Tansu auto-create it;
    2. the broker acknowledges every event (``acks=all``) within ``timeout_s``;
    3. a topic check that began after the last acknowledgement still finds the
       topic: a broker restarted with memory storage, or a topic deleted, between
       the check and the acks would otherwise acknowledge into a topic that no
       longer exists (Tansu does). Concurrent requests share one such check.

    And no topic check failed in the last ``settle_s`` seconds, nor while
    producing: right after a broker restart every service re-creates the lost
    topics, and an event acknowledged between two racing creations was lost.
    And every acknowledged offset moved its partition forward (``ledger``): an
    offset that did not was acknowledged by a log that had been lost, and Tansu
    acknowledges records for a topic it no longer has (storing nothing) in the
    moment after its restart, before any check can see the topic is gone.

    ``tracing`` on: a ``send`` span (child of the request's) covers the produce,
    and every record carries its ``traceparent`` (``shared.tracing``).
    """
    verdict = await guard.verdict()
    if not verdict.ok:
        raise _topic_refusal(verdict, retry_after_s, when="before producing")
    if time.monotonic() - guard.unstable_at < settle_s:
        raise _refuse(
            "settling",
            f"the event topics were unusable less than {settle_s}s ago "
            "(INGEST_TOPIC_SETTLE_S); nothing was accepted, retry later",
            retry_after_s,
        )
    start = time.perf_counter()
    began = time.monotonic()

    regressed: list[tuple[int, int]] = []

    def _observe(ack: RecordMetadata) -> None:
        if not ledger.observe(ack.topic, ack.partition, ack.offset):
            regressed.append((ack.partition, ack.offset))

    async def _send_all() -> None:
        outbox = Outbox(producer, on_ack=_observe)
        if tracing is None or not tracing.enabled:
            await outbox.send_many(topics.events, event_records(events))
            await outbox.flush()
            return
        span = tracing.start_send(topics.events, count=len(events))
        with trace.use_span(span, end_on_exit=True):
            extra = headers(context_of(span))
            await outbox.send_many(
                topics.events, event_records(events, trace_headers=[extra] * len(events))
            )
            await outbox.flush()

    try:
        await asyncio.wait_for(_send_all(), timeout_s)
    except (KafkaError, TimeoutError) as exc:
        guard.invalidate()  # whatever broke may have taken the topic with it
        log.warning("produce failed; answering 503", extra={"error": type(exc).__name__})
        raise _refuse(
            "produce",
            "the event broker did not acknowledge the events; nothing was accepted, retry later",
            retry_after_s,
            error=type(exc).__name__,
        ) from exc
    if regressed:
        guard.invalidate()
        log.error(
            "the broker acknowledged offsets that did not move forward: its log was lost; "
            "answering 503",
            extra={"topic": topics.events, "partitions": sorted({p for p, _ in regressed})},
        )
        raise _refuse(
            "offsets_regressed",
            "the event broker acknowledged into a log it had lost (offsets went back); "
            "nothing was accepted, retry",
            retry_after_s,
        )
    acked_at = time.monotonic()
    confirmed = await guard.check(newer_than=acked_at)
    if not confirmed.ok:
        raise _topic_refusal(confirmed, retry_after_s, when="after the acknowledgement")
    if guard.recreated_at >= began or guard.unstable_at >= began:
        # The topic was lost and re-created while these events were in flight: the
        # acks may have come from the lost one.
        raise _refuse(
            "recreated",
            "the events topic was lost and re-created while producing; nothing was accepted, retry",
            retry_after_s,
        )
    metrics.PRODUCE_SECONDS.observe(time.perf_counter() - start)
