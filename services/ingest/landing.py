"""The Kafka entry point: events published to the landing topic, checked as HTTP ingest checks them.

A billing system that publishes rather than POSTs writes to ``<prefix>.events.in``
with any client and any partitioner (docs/kafka-producers.md). Ingest reads it in
its own consumer group with the one consumer loop (``shared.consumer``):

- each record is validated exactly as an event in an HTTP request is (the
  contract, the clock, duplicate JSON keys, a size limit), and an ``event_type``
  header, if the producer set one, must name the payload's own type;
- valid events are written to ``<prefix>.events`` as every way in writes them
  (``service.event_records``: the subscriber id as key, murmur2 partitions, the
  phone sealed, the ``event_type`` header), so HTTP and Kafka events of one
  subscriber share one partition whatever the producer's partitioner;
- the rest go to the dead-letter topic with their reason class, reason and
  source offset;
- the landing offsets are committed only after the broker has acknowledged
  every relayed event and dead letter. A crash relays the batch again
  (at-least-once); every consumer downstream applies an ``event_id`` once.

Order: records of one landing partition are relayed in their order, so a
producer that keys by subscriber id keeps each subscriber's order. Between the
two entry points there is no order (an HTTP event may overtake a Kafka one):
the rules that depend on order do not assume it (docs/alerting.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from aiokafka import ConsumerRecord
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.ingest import metrics
from services.ingest.service import duplicate_key_in, event_records
from shared.consumer import Inbound, describe
from shared.events import Event, parse_event
from shared.outbox import Outbox
from shared.topics import Topics
from shared.tracing import headers

REASON_CLASSES = (
    "empty",
    "too_large",
    "decode",
    "not_an_event",
    "duplicate_key",
    "validation",
    "future_time",
    "header_mismatch",
)
"""Why a landing record is dead-lettered (the ``reason`` label of the DLQ metric)."""


class LandingRejected(ValueError):
    """A landing record that is not a valid event: dead-lettered with ``reason_class``."""

    def __init__(self, reason_class: str, message: str) -> None:
        super().__init__(message)
        self.reason_class = reason_class


class LandingParser:
    """Turns one landing record into a valid event, or raises ``LandingRejected``."""

    def __init__(self, *, max_record_bytes: int) -> None:
        self.max_record_bytes = max_record_bytes

    def __call__(self, record: ConsumerRecord[bytes, bytes]) -> Event:
        """The record's event, validated with the clock check (as on arrival over HTTP)."""
        value = record.value
        if not value:
            raise LandingRejected("empty", "an empty record (or a tombstone) holds no event")
        if len(value) > self.max_record_bytes:
            raise LandingRejected(
                "too_large",
                f"the record is {len(value)} bytes; the limit is {self.max_record_bytes} "
                "(INGEST_LANDING_MAX_RECORD_BYTES)",
            )
        try:
            decoded = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise LandingRejected("decode", f"invalid JSON: {exc}") from exc
        if not isinstance(decoded, dict):
            raise LandingRejected(
                "not_an_event", "a landing record holds one event: a JSON object, not a batch"
            )
        duplicate = duplicate_key_in(value, decoded)
        if duplicate is not None:
            raise LandingRejected("duplicate_key", f"{duplicate} (JSON must name a key once)")
        try:
            event = parse_event(decoded)
        except ValidationError as exc:
            future = any(e["type"] == "future_time" for e in exc.errors())
            raise LandingRejected("future_time" if future else "validation", describe(exc)) from exc
        header = _header(record, "event_type")
        if header is not None and header != event.event_type.encode():
            # The payload is the event; a header that disagrees says the producer is
            # confused about what it sent. Relaying either would be a guess.
            raise LandingRejected(
                "header_mismatch",
                f"header event_type={header.decode(errors='replace')!r} but the payload is "
                f"a {event.event_type!r} event",
            )
        return event


def _header(record: ConsumerRecord[bytes, bytes], name: str) -> bytes | None:
    for key, value in record.headers or ():
        if key == name:
            return bytes(value)
    return None


class Relay:
    """The landing consumer's batch handler: every valid event onto the events topic."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics

    async def __call__(
        self, conn: AsyncConnection, batch: Sequence[Inbound[Event]], outbox: Outbox
    ) -> None:
        """Queue the batch's events; the loop waits for their acks before committing."""
        del conn  # ingest stores nothing: the loop's transaction is empty
        events = [item.value for item in batch]
        # Tracing on: each event goes on with its landing record's trace (shared.tracing).
        trace_headers = [headers(i.context) for i in batch] if batch[0].context else None
        await outbox.send_many(
            self.topics.events, event_records(events, trace_headers=trace_headers)
        )
        metrics.LANDING_RELAYED.inc(len(events))
