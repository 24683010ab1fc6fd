"""The one consumer loop every service runs (after quix-streams' run loop).

For each batch from ``getmany``:

1. parse every record; a record that fails to parse goes to the dead-letter
   topic with the reason and is committed past;
2. handle the parsed records in **one** database transaction;
3. inside that transaction, wait until every message the handler produced is
   acknowledged by the broker, then commit the transaction;
4. commit the Kafka offsets.

Any failure in 2-4 rolls the transaction back and does not commit offsets: the
consumer seeks back to its committed offsets (a failing consumer is closed and
re-created instead), so the batch is redelivered. Handlers are
idempotent on a natural key (``event_id``, ``task_id``), which turns this
at-least-once delivery into exactly-once effects. ``stop()`` lets the batch in
hand finish before the loop exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import orjson
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from opentelemetry.context import Context
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared import metrics
from shared.dlq import DeadLetter
from shared.kafka import TopicGuard, client_options, topics_for
from shared.outbox import Outbox
from shared.settings import BaseServiceSettings
from shared.tracing import BatchTrace, Tracing

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Inbound(Generic[T]):
    """A parsed record with where it came from."""

    value: T
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    context: Context | None = None
    """The record's trace context (``shared.tracing``) while tracing is on, else None."""


Parser = Callable[[ConsumerRecord[bytes, bytes]], T]
Handler = Callable[[AsyncConnection, Sequence[Inbound[T]], Outbox], Awaitable[None]]


def describe(exc: ValidationError) -> str:
    """A validation error as one line, ``loc: message; ...``: a dead letter's reason."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


class _Revocations(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tells the handler which partitions it lost, so it drops their cached state."""

    def __init__(self, callback: Callable[[set[TopicPartition]], None] | None) -> None:
        self.callback = callback

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Called between batches (the loop is inside getmany), never mid-batch.
        if self.callback is not None and revoked:
            self.callback(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        return None


class _TopicsLost(Exception):
    """The topics went away (or changed) under a running consumer."""


class ConsumerLoop(Generic[T]):
    """Consume ``topics`` in ``group_id``, handle batches transactionally, commit after."""

    def __init__(
        self,
        *,
        service: str,
        settings: BaseServiceSettings,
        topics: list[str],
        group_id: str,
        parser: Parser[T],
        handler: Handler[T],
        engine: AsyncEngine,
        producer: AIOKafkaProducer,
        on_failure: Callable[[], Awaitable[None]] | None = None,
        on_revoked: Callable[[set[TopicPartition]], None] | None = None,
        max_records: int | None = None,
        restart_backoff_s: float = 1.0,
        lag_interval_s: float = 5.0,
        topic_check_interval_s: float = 1.0,
        tracing: Tracing | None = None,
    ) -> None:
        self.service = service
        self.settings = settings
        self.topics = topics
        self.group_id = group_id
        self.parser = parser
        self.handler = handler
        self.engine = engine
        self.producer = producer
        self.on_failure = on_failure
        self.on_revoked = on_revoked
        self.max_records = max_records or settings.kafka_batch_max_records
        self.restart_backoff_s = restart_backoff_s
        self.lag_interval_s = lag_interval_s
        self._stopping = asyncio.Event()
        self._healthy = False
        self._last_lag_at = 0.0
        self._lag_task: asyncio.Task[None] | None = None
        self.batches_handled = 0
        self.topic_check_interval_s = topic_check_interval_s
        # None or off: no span, no header read (one check per batch).
        self.tracing = tracing if tracing is not None and tracing.enabled else None
        # Every churnwatch topic, not only the subscribed ones: a handler that
        # produces into a lost topic would have its acks from a topic nobody reads.
        self.guard = TopicGuard(settings, service=service, timeout_s=1.0)
        self._waiting = False

    @property
    def healthy(self) -> bool:
        """True while the consumer is joined and its last batch succeeded."""
        return self._healthy

    def stop(self) -> None:
        """Ask the loop to exit after the batch in hand."""
        self._stopping.set()

    def _new_consumer(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Range assignment gives one member the same partition numbers of every
            # topic it reads; with co-partitioned topics (events, scores) that keeps
            # everything about one subscriber on one replica.
            partition_assignment_strategy=(RangePartitionAssignor,),
            fetch_max_wait_ms=self.settings.kafka_fetch_max_wait_ms,
            **client_options(self.settings),
        )
        consumer.subscribe(self.topics, listener=_Revocations(self.on_revoked))
        return consumer

    @property
    def waiting_for_topics(self) -> bool:
        """True while the loop waits for its topics (lost, wrong, or broker unreachable)."""
        return self._waiting

    async def run(self) -> None:
        """Run until ``stop()``; on a failed batch, rejoin and let it be redelivered."""
        try:
            while not self._stopping.is_set():
                if not await self._wait_for_topics():
                    return
                await self._run_consumer()
        finally:
            self._set_waiting(False)
            await self.guard.close()

    def _set_waiting(self, waiting: bool, reason: str = "") -> None:
        # Logged once per change of state, not per poll.
        if waiting and not self._waiting:
            log.error(
                "consumer waiting for its topics",
                extra={"service": self.service, "reason": reason},
            )
        elif not waiting and self._waiting:
            log.warning("topics are back; consumer rejoining", extra={"service": self.service})
        self._waiting = waiting
        metrics.CONSUMER_WAITING_FOR_TOPICS.labels(self.service).set(1 if waiting else 0)

    async def _wait_for_topics(self) -> bool:
        """Poll the topics until usable (True) or ``stop()`` (False).

        With ``KAFKA_RECREATE_LOST_TOPICS`` the guard re-creates lost ones; without,
        an operator must. A re-created topic starts at offset 0: the group's
        committed offsets went with the old topic (Kafka deletes them with it, a
        restarted memory broker never had them), and a committed offset past the
        new end is reset by ``auto_offset_reset="earliest"`` (OffsetOutOfRange), so
        nothing produced to the new topic is skipped.
        """
        while not self._stopping.is_set():
            verdict = await self.guard.check()
            if verdict.ok:
                self._set_waiting(False)
                return True
            self._healthy = False
            self._set_waiting(True, verdict.reason)
            await self._pause(self.restart_backoff_s)
        return False

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` or until ``stop()``, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _unless_stopped(self, work: Awaitable[None]) -> bool:
        """Await ``work`` unless ``stop()`` comes first (then cancel it): True if it ran."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return False
        task.result()
        return True

    async def _run_consumer(self) -> None:
        """One consumer's life: join, consume until stop, failure or topic loss."""
        consumer = self._new_consumer()
        try:
            # Joining can take seconds (a broker without a coordinator yet retries
            # forever): stop() must not wait for it.
            if not await self._unless_stopped(consumer.start()):
                return
            self._healthy = True
            await self._consume(consumer)
        except asyncio.CancelledError:
            raise
        except _TopicsLost as lost:
            self._healthy = False
            self._set_waiting(True, str(lost))
        except Exception:
            self._healthy = False
            log.exception(
                "consumer failed; rejoining without commit", extra={"service": self.service}
            )
            if self.on_failure is not None:
                with contextlib.suppress(Exception):
                    await self.on_failure()
            await self._pause(self.restart_backoff_s)
        finally:
            self._healthy = False
            if self._lag_task is not None:
                self._lag_task.cancel()
                await asyncio.gather(self._lag_task, return_exceptions=True)
                self._lag_task = None
            # No commit on stop: offsets were committed after each stored batch.
            # Bounded: leaving the group of a dead broker would wait for timeouts. Not
            # too tightly: a consumer stopped while it joins its group takes several
            # seconds to close, and one cut short leaves its connections open.
            try:
                await asyncio.wait_for(consumer.stop(), 10.0)
            except asyncio.CancelledError:
                # aiokafka re-raises its fetch task's cancellation from stop() after
                # a broker outage; only our own cancellation must propagate.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
            except Exception:
                log.debug("consumer did not close cleanly", exc_info=True)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        checked_at = time.monotonic()
        while not self._stopping.is_set():
            if time.monotonic() - checked_at >= self.topic_check_interval_s:
                checked_at = time.monotonic()
                verdict = await self.guard.check()
                if not verdict.ok:
                    # Missing, wrong, or the broker unreachable: drop this consumer.
                    # A broker that comes back may be a new one (restarted with
                    # memory storage): this consumer's positions would point into
                    # topics that no longer exist and skip the start of the new
                    # ones. A fresh consumer takes the group's committed offsets
                    # (earliest if it has none) once the topics are usable again.
                    raise _TopicsLost(verdict.reason)
                await self._rewind_past_the_end(consumer)
            batch = await consumer.getmany(
                timeout_ms=self.settings.kafka_poll_timeout_ms,
                max_records=self.max_records,
            )
            records = [r for part in batch.values() for r in part]
            if records:
                try:
                    await self._handle_batch(consumer, records)
                except Exception:
                    self._healthy = False
                    log.exception(
                        "batch failed; rewinding to the last committed offsets",
                        extra={"service": self.service},
                    )
                    if self.on_failure is not None:
                        await self._recover()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), self.restart_backoff_s)
                    await self._rewind(consumer)
                    continue
                self._healthy = True
            self._update_lag(consumer)

    async def _rewind_past_the_end(self, consumer: AIOKafkaConsumer) -> None:
        """Seek to the beginning of any partition whose end is now before our position.

        A topic re-created (by this or another service) while we still held the
        old one's positions: the new one starts at 0, and Tansu answers a fetch
        past its end with nothing rather than OFFSET_OUT_OF_RANGE (which
        ``auto_offset_reset="earliest"`` would handle), so the consumer would wait
        there forever, skipping everything produced to the new topic. The high
        watermark comes from fetch responses (right on Tansu, unlike
        ``end_offsets``). Everything in a re-created partition is new: read it all.
        """
        beyond = []
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            if end is not None and await consumer.position(tp) > end:
                beyond.append(tp)
        if beyond:
            log.error(
                "positions past the end of their partitions (topic re-created?); "
                "reading those partitions from the beginning",
                extra={
                    "service": self.service,
                    "partitions": sorted(f"{tp.topic}-{tp.partition}" for tp in beyond),
                },
            )
            metrics.CONSUMER_REWOUND_PAST_END.labels(self.service).inc(len(beyond))
            await consumer.seek_to_beginning(*beyond)

    async def _recover(self) -> None:
        """Run ``on_failure`` until it succeeds (or ``stop()``), staying in the group.

        The hook fails while its own dependency is down (scoring reloads its model
        from the database). Letting that escape would close the consumer and rejoin
        the group: a rebalance, measured at ~18 s on the embedded broker after a
        PostgreSQL restart (tests/test_faults.py), where a retry costs one backoff.
        """
        assert self.on_failure is not None
        while not self._stopping.is_set():
            try:
                await self.on_failure()
                return
            except Exception:
                log.warning(
                    "failure hook failed; retrying", extra={"service": self.service}, exc_info=True
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.restart_backoff_s)

    async def _rewind(self, consumer: AIOKafkaConsumer) -> None:
        """Seek every assigned partition back to its committed offset: redelivery.

        Cheaper than leaving and rejoining the group, which costs a rebalance.
        """
        for tp in consumer.assignment():
            committed = await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)  # as auto_offset_reset=earliest
            else:
                consumer.seek(tp, committed)

    async def _handle_batch(
        self, consumer: AIOKafkaConsumer, records: list[ConsumerRecord[bytes, bytes]]
    ) -> None:
        start = time.perf_counter()
        # Metrics per batch, not per record: a labels() lookup costs more than parsing.
        for topic, count in Counter(r.topic for r in records).items():
            metrics.CONSUMER_RECORDS.labels(self.service, topic).inc(count)
        parsed: list[Inbound[T]] = []
        dead: list[DeadLetter] = []
        traced: BatchTrace | None = None
        if self.tracing is not None:
            traced = self.tracing.batch(group=self.group_id, size=len(records))
        for record in records:
            try:
                value = self.parser(record)
            except (ValidationError, ValueError, orjson.JSONDecodeError) as exc:
                dead.append(self._dead_letter(record, exc))
                continue
            if traced is None:
                item = Inbound(
                    value, record.topic, record.partition, record.offset, record.timestamp
                )
            else:
                # A record the parser skips (None) gets no span of its own.
                context = traced.context if value is None else traced.context_for(record)
                item = Inbound(
                    value, record.topic, record.partition, record.offset, record.timestamp, context
                )
            parsed.append(item)
        try:
            async with self.engine.begin() as conn:
                outbox = Outbox(self.producer)
                dlq_topic = topics_for(self.settings).dlq
                for letter in dead:
                    await outbox.send(
                        dlq_topic,
                        key=letter.key,
                        value=letter.value or b"",
                        headers=letter.headers(),
                    )
                if parsed:
                    await self.handler(conn, parsed, outbox)
                # Acks before the DB commit: if the broker refuses, the transaction
                # rolls back and the whole batch is redone, so nothing is half-done.
                await outbox.flush()
            outbox.committed()
            await consumer.commit()
        except Exception as exc:
            metrics.CONSUMER_BATCHES.labels(self.service, "failed").inc()
            if traced is not None:
                traced.end(exc)
            raise
        if traced is not None:
            traced.end()
        for letter in dead:
            metrics.DLQ_MESSAGES.labels(self.service, letter.topic, letter.reason_class).inc()
            log.warning(
                "dead-lettered a message",
                extra={
                    "service": self.service,
                    "source_topic": letter.topic,
                    "partition": letter.partition,
                    "offset": letter.offset,
                    "reason": letter.reason[:300],
                },
            )
        self.batches_handled += 1
        metrics.CONSUMER_BATCHES.labels(self.service, "ok").inc()
        metrics.CONSUMER_BATCH_SIZE.labels(self.service).observe(len(records))
        metrics.CONSUMER_BATCH_SECONDS.labels(self.service).observe(time.perf_counter() - start)

    def _dead_letter(self, record: ConsumerRecord[bytes, bytes], exc: Exception) -> DeadLetter:
        if isinstance(exc, ValidationError):
            reason = describe(exc)
            # pydantic reports unparseable JSON as a validation error; tell them apart.
            not_json = any(e["type"] == "json_invalid" for e in exc.errors())
            reason_class = "decode" if not_json else "validation"
        else:
            # A parser may name its own class of reason (ingest's landing parser does).
            reason, reason_class = str(exc), str(getattr(exc, "reason_class", "decode"))
        return DeadLetter(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            reason=reason or type(exc).__name__,
            reason_class=reason_class,
            service=self.service,
        )

    def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Every ``lag_interval_s``, refresh the lag gauges in a task of their own.

        Beside the loop, not in it: the end offsets take a round trip to the
        broker (50-80 ms on the embedded one under load), and a batch waiting
        behind a metric was part of the pipeline's latency tail.
        """
        now = time.monotonic()
        if now - self._last_lag_at < self.lag_interval_s:
            return
        if self._lag_task is not None and not self._lag_task.done():
            return
        self._last_lag_at = now
        self._lag_task = asyncio.create_task(self._measure_lag(consumer))

    async def _measure_lag(self, consumer: AIOKafkaConsumer) -> None:
        # Computed here from end offsets and our position: the embedded broker
        # closes the connection on the admin call list_consumer_group_offsets.
        assigned: set[TopicPartition] = consumer.assignment()
        if not assigned:
            return
        try:
            # Bounded: a dead broker must not leave the task hanging.
            ends = await asyncio.wait_for(consumer.end_offsets(list(assigned)), 1.0)
            positions = {tp: await consumer.position(tp) for tp in assigned}
        except Exception:
            return  # a broker gone, or a partition revoked meanwhile: next time
        for tp, position in positions.items():
            metrics.CONSUMER_LAG.labels(self.service, tp.topic, str(tp.partition)).set(
                max(0, ends.get(tp, position) - position)
            )
