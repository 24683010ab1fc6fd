"""``python -m bench.load``: a bounded load test of ingest on loopback.

``--concurrency`` asyncio clients post NDJSON batches of ``--batch`` events to
``POST /v1/events`` for ``--seconds`` and report the sustained accepted events
per second, the request latency (p50, p99, max) and every error. Without
``--url`` it starts its own ingest process (``python -m services.ingest``) on a
free port, on the broker in ``KAFKA_BOOTSTRAP_SERVERS`` or an embedded one,
under a fresh topic prefix, and afterwards checks that every accepted event is
on the topic.

A small asyncio client rather than locust: it needs nothing beyond httpx, which
the project already has, starts in milliseconds, and measures what matters here
(one endpoint, closed-loop clients) without a second process per core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson

REPO = Path(__file__).resolve().parent.parent


@dataclass
class LoadReport:
    """What one load run measured."""

    seconds: float
    concurrency: int
    batch: int
    requests: int = 0
    events_accepted: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    events_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    on_topic: int | None = None

    def line(self) -> str:
        """One human-readable summary line."""
        topic = "" if self.on_topic is None else f", {self.on_topic} on the topic"
        return (
            f"{self.events_per_s:,.0f} events/s sustained over {self.seconds:.1f} s "
            f"({self.concurrency} clients x {self.batch} events/request, "
            f"{self.requests} requests): p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, "
            f"max {self.max_ms:.1f} ms; {self.errors} errors{topic}"
        )


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 if none)."""
    # Nearest rank, not interpolation: the p99 reported is a latency that happened.
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


class _Bodies:
    """NDJSON bodies of fresh events, cheap to make: one template, new ids spliced in.

    Serialising a full event per line would make the client, not ingest, the
    bottleneck on a 2-core machine.
    """

    def __init__(self, batch: int) -> None:
        self.batch = batch
        at = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        template = orjson.dumps(
            {
                "event_id": "00000000-0000-0000-0000-000000000000",
                "event_type": "cdr",
                "subscriber_id": "S-LOAD-SUBSCRIBER",
                "occurred_at": at,
                "source": "bench.load",
                "payload": {
                    "service": "voice",
                    "direction": "outgoing",
                    "duration_s": 60,
                    "counterpart_network": "own",
                },
            }
        )
        self._head, rest = template.split(b"00000000-0000-0000-0000-000000000000")
        self._middle, self._tail = rest.split(b"S-LOAD-SUBSCRIBER")

    def next(self) -> bytes:
        """One body of ``batch`` events with new event ids and subscriber ids."""
        lines = []
        for _ in range(self.batch):
            event_id = str(uuid.uuid4()).encode()
            # 1,000 subscribers: keys spread over every partition, as real traffic.
            subscriber = f"S-LOAD-{uuid.uuid4().int % 1000:04d}".encode()
            lines.append(self._head + event_id + self._middle + subscriber + self._tail)
        return b"\n".join(lines)


async def run_load(
    url: str,
    *,
    seconds: float,
    concurrency: int,
    batch: int,
    api_key: str | None = None,
    request_timeout_s: float = 30.0,
) -> LoadReport:
    """Closed-loop load: ``concurrency`` clients post until ``seconds`` have passed."""
    report = LoadReport(seconds=seconds, concurrency=concurrency, batch=batch)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    headers = {"content-type": "application/x-ndjson"}
    if api_key:
        headers["x-api-key"] = api_key
    bodies = _Bodies(batch)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(http: httpx.AsyncClient, deadline: float) -> None:
        # Closed loop: the next request only after the answer, so the rate is what
        # ingest sustains, and latency is not inflated by a client-side queue.
        while time.perf_counter() < deadline:
            body = bodies.next()
            start = time.perf_counter()
            try:
                response = await http.post("/v1/events", content=body, headers=headers)
            except httpx.HTTPError as exc:  # counted, not raised: the report shows them
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            latencies.append(time.perf_counter() - start)
            if response.status_code == 202:
                report.events_accepted += int(response.json()["accepted"])
            else:
                kind = f"HTTP {response.status_code}"
                errors[kind] = errors.get(kind, 0) + 1

    async with httpx.AsyncClient(base_url=url, timeout=request_timeout_s, limits=limits) as http:
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(client(http, deadline) for _ in range(concurrency)))
        # Requests in flight at the deadline finish; the rate is over the real span.
        elapsed = time.perf_counter() - started
    latencies.sort()
    report.requests = len(latencies) + sum(
        n for kind, n in errors.items() if not kind.startswith("HTTP")
    )
    report.errors = sum(errors.values())
    report.error_kinds = errors
    report.seconds = round(elapsed, 3)
    report.events_per_s = round(report.events_accepted / elapsed, 1) if elapsed else 0.0
    report.p50_ms = round(_percentile(latencies, 0.50) * 1000, 2)
    report.p99_ms = round(_percentile(latencies, 0.99) * 1000, 2)
    report.max_ms = round((latencies[-1] if latencies else 0.0) * 1000, 2)
    return report


@contextlib.asynccontextmanager
async def ingest_process(environ: Mapping[str, str], port: int) -> AsyncIterator[str]:
    """``python -m services.ingest`` with ``environ`` on ``port``; yields its URL once ready."""
    env = {**os.environ, **environ, "INGEST_PORT": str(port), "PYTHONPATH": str(REPO)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.ingest",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=url, timeout=2) as http:
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"ingest exited with {process.returncode} at start")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/readyz")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError("ingest not ready after 60 s")
                await asyncio.sleep(0.1)  # polling a child's port: nothing to await instead
        yield url
    finally:
        if process.returncode is None:
            # SIGTERM: ingest drains in-flight requests and closes its producer.
            process.terminate()
            await asyncio.wait_for(process.wait(), 30)


async def events_on_topic(bootstrap: str, topic: str, *, expect: int, timeout_s: float = 60) -> int:
    """How many distinct events ``topic`` holds, read from the start (stops at ``expect``).

    Read, not summed from end offsets: the embedded broker (Tansu 0.6, memory
    storage) can answer a partition's latest offset below its last record's
    offset + 1 after batched produces, although every record is readable.
    """
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: set[bytes] = set()
    try:
        deadline = time.monotonic() + timeout_s
        while len(seen) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for records in batch.values():
                seen.update(orjson.loads(r.value)["event_id"].encode() for r in records)
    finally:
        await consumer.stop()
    return len(seen)


async def _standalone(args: argparse.Namespace) -> LoadReport:
    """Start a broker (unless configured) and an ingest process, load it, check the topic."""
    from churnwatch.embedded import EmbeddedBroker, free_port
    from shared.topics import Topics

    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        broker = await asyncio.to_thread(EmbeddedBroker().start)
        bootstrap = broker.bootstrap_servers
    prefix = f"load{uuid.uuid4().hex[:8]}"
    environ = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC_PREFIX": prefix,
        # A throw-away ingest on loopback: no keys to hand out, no JSON logs to read.
        "AUTH_ENABLED": "false",
        "ENVIRONMENT": "development",
        "LOG_JSON": "false",
    }
    try:
        async with ingest_process(environ, free_port()) as url:
            report = await run_load(
                url, seconds=args.seconds, concurrency=args.concurrency, batch=args.batch
            )
        report.on_topic = await events_on_topic(
            bootstrap, Topics(prefix).events, expect=report.events_accepted
        )
        return report
    finally:
        if broker is not None:
            await asyncio.to_thread(broker.stop)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the load, print the report (JSON, then one line)."""
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to load (10)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients (8)")
    parser.add_argument("--batch", type=int, default=100, help="events per request (100)")
    parser.add_argument("--url", help="an ingest already running; default: start one")
    parser.add_argument("--api-key", help="sent as X-API-Key (with --url, if auth is on)")
    args = parser.parse_args(argv)
    if args.url:
        report = asyncio.run(
            run_load(
                args.url,
                seconds=args.seconds,
                concurrency=args.concurrency,
                batch=args.batch,
                api_key=args.api_key,
            )
        )
    else:
        report = asyncio.run(_standalone(args))
    print(orjson.dumps(asdict(report), option=orjson.OPT_INDENT_2).decode())
    print(report.line())
    lost = report.on_topic is not None and report.on_topic != report.events_accepted
    return 1 if report.errors or lost else 0


if __name__ == "__main__":
    sys.exit(main())
