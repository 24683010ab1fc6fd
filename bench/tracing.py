"""``python -m bench.tracing``: what the tracing hooks cost the consumer loop per record.

A microbenchmark of ``ConsumerLoop._handle_batch`` (parse, the hooks, an empty
handler; no broker, no database) over batches of records with and without a
``traceparent`` header, with tracing off (the default), on with the producer's
trace not sampled, and on and sampled (in-memory exporter). The loop's own cost
is a small part of an event's (scoring: about 70 µs at 14k events/s), so the
figures say what tracing adds, not what a service does. docs/operations.md,
"Tracing", quotes a run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiokafka import ConsumerRecord
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.consumer import ConsumerLoop, Inbound
from shared.outbox import Outbox
from shared.settings import BaseServiceSettings
from shared.tracing import Tracing

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-"


class _Engine:
    """Stands in for the database engine: a transaction that does nothing."""

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[None]:
        yield None


class _Consumer:
    async def commit(self) -> None:
        return None


async def _handler(conn: Any, batch: Sequence[Inbound[bytes]], outbox: Outbox) -> None:
    return None


def _records(n: int, flags: str | None) -> list[ConsumerRecord[bytes, bytes]]:
    headers = [("event_type", b"cdr")]
    if flags is not None:
        headers.append(("traceparent", (TRACE + flags).encode()))
    return [
        ConsumerRecord("t.events", i % 6, i, 0, 0, b"k", b"v", None, 1, 1, headers)
        for i in range(n)
    ]


def _loop(tracing: Tracing) -> ConsumerLoop[bytes]:
    return ConsumerLoop(
        service="bench",
        settings=BaseServiceSettings(),
        topics=["t.events"],
        group_id="bench",
        parser=lambda record: record.value,
        handler=_handler,
        engine=_Engine(),  # type: ignore[arg-type]  # only begin() is used
        producer=None,  # nothing is produced
        tracing=tracing,
    )


async def _per_record_us(
    loop: ConsumerLoop[bytes], records: list[ConsumerRecord[bytes, bytes]], rounds: int
) -> float:
    consumer = _Consumer()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        await loop._handle_batch(consumer, records)
        times.append(time.perf_counter() - start)
    return statistics.median(times) / len(records) * 1e6


async def measure(*, records: int = 5000, rounds: int = 20, repeat: int = 3) -> dict[str, float]:
    """Microseconds per record in each case: the best of ``repeat`` medians (interleaved)."""
    exporter = InMemorySpanExporter()
    off = Tracing(BaseServiceSettings(), service="bench")
    on = Tracing(BaseServiceSettings(), service="bench", exporter=exporter)
    on.start()
    cases = {
        "off, record with traceparent": (off, _records(records, "01")),
        "on, record without traceparent": (on, _records(records, None)),
        "on, producer's trace not sampled": (on, _records(records, "00")),
        "on, sampled (a span per record)": (on, _records(records, "01")),
    }
    best: dict[str, float] = {}
    try:
        for _ in range(repeat):
            for name, (tracing, batch) in cases.items():
                value = await _per_record_us(_loop(tracing), batch, rounds)
                best[name] = min(best.get(name, float("inf")), value)
                exporter.clear()
    finally:
        on.shutdown()
    return best


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Print the table; return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000, help="records per batch")
    parser.add_argument("--rounds", type=int, default=20, help="batches per measurement")
    args = parser.parse_args(argv)
    figures = asyncio.run(measure(records=args.records, rounds=args.rounds))
    for name, value in figures.items():
        print(f"{name:36s} {value:8.2f} µs/record")
    return figures


if __name__ == "__main__":
    main()
