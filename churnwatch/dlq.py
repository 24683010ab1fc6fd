"""``churnwatch dlq list|replay``: look at the dead-letter topic and send records back.

A dead letter keeps the original key and value byte for byte, and its source in
headers (``shared/dlq.py``). Once the cause is fixed (a consumer that now parses
the record, a contract change rolled out), ``replay`` produces each matching
record back to its source topic, with the same key and a ``dlq.replayed_from``
header, once per source record, partitioned by murmur2 of the key: the
partition it came from on churnwatch's own topics, not necessarily on the
landing topic (whose producers may partition otherwise; ingest re-keys). A
replayed record comes after everything that followed the original. Replaying
twice is harmless: every
consumer drops a message whose id it has already processed. A record that still
fails is dead-lettered again, as a new DLQ record.

Both commands read the DLQ from its start up to its end as it was when they
started (never what a replay adds), with a consumer of no group: nothing is
committed, and the services' consumers are not disturbed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

import typer
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from rich.console import Console

from shared.kafka import client_options, make_producer, topics_for
from shared.logging import mask_text
from shared.settings import BaseServiceSettings

console = Console()

dlq_app = typer.Typer(help="The dead-letter topic: list and replay.", no_args_is_help=True)


@dataclass(frozen=True)
class Letter:
    """One DLQ record: where it sits, its headers, key and value."""

    partition: int
    offset: int
    headers: dict[str, str]
    key: bytes | None
    value: bytes | None

    @property
    def source_topic(self) -> str:
        """The topic it was dead-lettered from."""
        return self.headers.get("dlq.source_topic", "")


@dataclass(frozen=True)
class Filter:
    """Which dead letters a command acts on (None: any)."""

    source_topic: str | None = None
    service: str | None = None
    reason_class: str | None = None
    since: datetime | None = None

    def matches(self, letter: Letter) -> bool:
        """Whether ``letter`` passes every given criterion."""
        h = letter.headers
        if self.source_topic is not None and letter.source_topic != self.source_topic:
            return False
        if self.service is not None and h.get("dlq.service") != self.service:
            return False
        if self.reason_class is not None and h.get("dlq.reason_class") != self.reason_class:
            return False
        if self.since is not None:
            failed = h.get("dlq.failed_at")
            if failed is None or datetime.fromisoformat(failed) < self.since:
                return False
        return True


def _letter(record: ConsumerRecord[bytes, bytes]) -> Letter:
    headers = {k: v.decode(errors="replace") for k, v in record.headers}
    return Letter(record.partition, record.offset, headers, record.key, record.value)


async def read_letters(settings: BaseServiceSettings, *, timeout_s: float = 60.0) -> list[Letter]:
    """Every record of the DLQ: up to its end offsets at the time of the call, then until quiet."""
    topic = topics_for(settings).dlq
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        await consumer.topics()  # refreshes the metadata that partitions_for_topic reads
        ids = consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in sorted(ids)]
        if not assigned:
            return []
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        letters: list[Letter] = []
        # Done with a partition once its last record (end - 1) has been read: the
        # fetch position alone is not reliable right after a seek.
        pending = {tp for tp in assigned if ends[tp] > 0}
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end in {timeout_s} s")
            batch = await consumer.getmany(*pending, timeout_ms=500)
            for tp, records in batch.items():
                letters += [_letter(r) for r in records]
                if records and records[-1].offset >= ends[tp] - 1:
                    pending.discard(tp)
        # Then on until a quiet poll: some brokers (the embedded Tansu) report the
        # end as the last record *batch*'s base offset + 1, short of its last record.
        while time.monotonic() < deadline:
            batch = await consumer.getmany(*assigned, timeout_ms=500)
            if not any(batch.values()):
                break
            for records in batch.values():
                letters += [_letter(r) for r in records]
        return sorted(letters, key=lambda x: (x.partition, x.offset))
    finally:
        await consumer.stop()


async def replay(
    settings: BaseServiceSettings,
    *,
    where: Filter,
    to_topic: str | None = None,
    dry_run: bool = False,
    on_letter: Callable[[Letter], None] = lambda _: None,
) -> int:
    """Produce the matching dead letters back to their source topics; return how many.

    A source record is replayed once even if several services dead-lettered it
    (scoring and alerting both read the events topic, so a bad event is in the
    DLQ twice): its source topic, partition and offset identify it.
    """
    letters: list[Letter] = []
    seen: set[tuple[str, str, str]] = set()
    for letter in await read_letters(settings):
        if not where.matches(letter):
            continue
        h = letter.headers
        source = (
            letter.source_topic,
            h.get("dlq.source_partition", ""),
            h.get("dlq.source_offset", ""),
        )
        if all(source) and source in seen:
            continue
        seen.add(source)
        letters.append(letter)
    for letter in letters:
        on_letter(letter)
    if dry_run or not letters:
        return len(letters)
    producer = make_producer(settings)
    await producer.start()
    try:
        sends = []
        for letter in letters:
            target = to_topic or letter.source_topic
            if not target:
                raise ValueError(f"dead letter at offset {letter.offset} names no source topic")
            headers = [
                ("dlq.replayed_from", f"{letter.partition}:{letter.offset}".encode()),
            ]
            sends.append(
                await producer.send(target, key=letter.key, value=letter.value, headers=headers)
            )
        await asyncio.gather(*sends)  # every record acknowledged before we say so
    finally:
        await producer.stop()
    return len(letters)


def _describe(letter: Letter) -> str:
    h = letter.headers
    # The reason quotes the bad input, which may hold a phone number: masked.
    return (
        f"{letter.partition}:{letter.offset}\t{h.get('dlq.failed_at', '-')}\t"
        f"{h.get('dlq.service', '-')}\t{letter.source_topic or '-'}\t"
        f"{h.get('dlq.reason_class', '-')}\t{mask_text(h.get('dlq.reason', ''))[:200]}"
    )


SourceOpt = Annotated[str | None, typer.Option(help="Only records from this topic.")]
ServiceOpt = Annotated[str | None, typer.Option(help="Only those this service dead-lettered.")]
ReasonOpt = Annotated[
    str | None,
    typer.Option(
        help="Only this reason class: validation, decode (and, for landing records, "
        "future_time, duplicate_key, header_mismatch, ...: docs/kafka-producers.md)."
    ),
]
SinceOpt = Annotated[str | None, typer.Option(help="Only those dead-lettered at or after (ISO).")]


def _filter(
    source_topic: str | None, service: str | None, reason_class: str | None, since: str | None
) -> Filter:
    return Filter(
        source_topic=source_topic,
        service=service,
        reason_class=reason_class,
        since=datetime.fromisoformat(since) if since else None,
    )


@dlq_app.command("list")
def list_letters(
    source_topic: SourceOpt = None,
    service: ServiceOpt = None,
    reason_class: ReasonOpt = None,
    since: SinceOpt = None,
) -> None:
    """List the dead letters: position, time, service, source, reason (never the value)."""
    where = _filter(source_topic, service, reason_class, since)
    settings = BaseServiceSettings()
    letters = [x for x in asyncio.run(read_letters(settings)) if where.matches(x)]
    print("position\tfailed_at\tservice\tsource_topic\treason_class\treason")
    for letter in letters:
        print(_describe(letter))
    console.print(f"{len(letters)} dead letter(s) in {topics_for(settings).dlq}", style="dim")


@dlq_app.command("replay")
def replay_letters(
    source_topic: SourceOpt = None,
    service: ServiceOpt = None,
    reason_class: ReasonOpt = None,
    since: SinceOpt = None,
    to: Annotated[
        str | None, typer.Option(help="Produce to this topic instead of each one's source.")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Only list what would be replayed.")] = False,
) -> None:
    """Produce the matching dead letters back to their source topics (fix the cause first)."""
    where = _filter(source_topic, service, reason_class, since)
    count = asyncio.run(
        replay(
            BaseServiceSettings(),
            where=where,
            to_topic=to,
            dry_run=dry_run,
            on_letter=lambda x: print(_describe(x)),
        )
    )
    console.print(f"{'would replay' if dry_run else 'replayed'} {count} dead letter(s)")
