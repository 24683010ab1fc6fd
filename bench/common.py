"""What every benchmark section shares: the stack, service processes, clocks and figures.

The services run as real subprocesses (``python -m services.<name>``) against the
embedded stack (Tansu broker and PostgreSQL), as ``churnwatch up`` runs them, so
two scoring processes are two real processes in one consumer group.
"""

from __future__ import annotations

import asyncio
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import orjson
import psutil
from aiokafka import AIOKafkaProducer
from pydantic_settings import BaseSettings

from churnwatch.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from churnwatch.migrate import upgrade
from shared.db import create_engine
from shared.settings import BaseServiceSettings

ROOT = Path(__file__).resolve().parent.parent

# (module arguments, port variable, readiness probe) of every process we start.
SERVICES: dict[str, tuple[list[str], str, str]] = {
    "ingest": (["-m", "services.ingest"], "INGEST_PORT", "/readyz"),
    "scoring": (["-m", "services.scoring"], "SCORING_PORT", "/readyz"),
    "alerting": (["-m", "services.alerting"], "ALERTING_PORT", "/readyz"),
    "outreach": (["-m", "services.outreach"], "OUTREACH_PORT", "/readyz"),
    "sms-gateway": (["-m", "churnwatch", "sms-gateway"], "SMS_GATEWAY_PORT", "/healthz"),
}


def median(values: Sequence[float]) -> float:
    """The median of the repetitions (the figure every section reports)."""
    return float(statistics.median(values))


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cores": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        # Only when the benchmark started the embedded server (DATABASE_URL unset).
        "postgres_settings": None if os.environ.get("DATABASE_URL") else postgres_settings(),
    }


def service_setting(settings: type[BaseSettings], name: str, environ: Mapping[str, str]) -> Any:
    """The value of setting ``name`` a service started with ``environ`` runs with.

    Its variable there (the setting's name in capitals), else the setting's default.
    """
    return environ.get(name.upper(), settings.model_fields[name].default)


def postgres_settings() -> dict[str, str]:
    """The embedded PostgreSQL's settings: docs/deploy.md's production ones, sized to this machine.

    PostgreSQL's defaults (128 MB of shared buffers, a checkpoint every 5 minutes
    or every 1 GB of WAL) suit a laptop, not a database holding millions of
    states: with them a run at 1M stored subscribers evicts dirty pages all the
    time and checkpoints in the middle of the run, and the WAL a checkpoint's
    first touch of each page writes (full-page images) dominates (docs/performance.md).
    """
    quarter_mib = psutil.virtual_memory().total // 4 // 2**20
    return {
        "shared_buffers": f"{min(quarter_mib, 4096)}MB",
        "max_wal_size": "16GB",
        "checkpoint_timeout": "15min",
    }


def commit() -> str:
    """The commit measured (with '+dirty' when the tree has changes)."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return (head or "unknown") + ("+dirty" if dirty else "")


def fresh_prefix(label: str) -> str:
    """A topic prefix no earlier run used, so every run starts from empty topics."""
    return f"bench-{label}-{uuid.uuid4().hex[:8]}"


@dataclass
class Stack:
    """The broker and database the sections run against (embedded unless given)."""

    kafka: str
    database_url: str
    logs: Path
    _stop: list[Callable[[], None]] = field(default_factory=list)

    def settings(self, prefix: str = "churnwatch") -> BaseServiceSettings:
        """Settings for the benchmark's own clients (producers, SQL)."""
        return BaseServiceSettings(
            kafka_bootstrap_servers=self.kafka,
            database_url=self.database_url,
            kafka_topic_prefix=prefix,
        )

    def environ(self, prefix: str, **extra: str) -> dict[str, str]:
        """The environment of a service process under topic prefix ``prefix``.

        Consumer groups and the model name follow the prefix, so each run is
        isolated; API keys are off because the benchmark measures the pipeline,
        not key look-ups; logs at WARNING so logging does not dominate.
        """
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka,
            "DATABASE_URL": self.database_url,
            "KAFKA_TOPIC_PREFIX": prefix,
            "SCORING_CONSUMER_GROUP": f"{prefix}-scoring",
            "ALERTING_CONSUMER_GROUP": f"{prefix}-alerting",
            "OUTREACH_CONSUMER_GROUP": f"{prefix}-outreach",
            "INGEST_LANDING_CONSUMER_GROUP": f"{prefix}-landing",
            "SCORING_MODEL_NAME": prefix[:64],
            "AUTH_ENABLED": "false",
            "LOG_LEVEL": "WARNING",
            "LOG_JSON": "true",
            "PYTHONPATH": str(ROOT),
        }
        env.update(extra)
        return env


@contextmanager
def stack(logs: Path | None = None) -> Iterator[Stack]:
    """Start the embedded broker and PostgreSQL (unless the environment names them)."""
    with tempfile.TemporaryDirectory(prefix="churnwatch-bench-") as tmp:
        log_dir = logs or Path(tmp) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        broker = (
            None
            if os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
            else EmbeddedBroker(log_path=log_dir / "broker.log").start()
        )
        postgres = None
        try:
            if not os.environ.get("DATABASE_URL"):
                postgres = EmbeddedPostgres(Path(tmp) / "pg", delete_on_stop=True).start()
                postgres.configure(postgres_settings())
            result = Stack(
                kafka=os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
                or (broker.bootstrap_servers if broker else ""),
                database_url=os.environ.get("DATABASE_URL") or (postgres.url if postgres else ""),
                logs=log_dir,
            )
            upgrade(result.database_url)
            yield result
        finally:
            if broker is not None:
                broker.stop()
            if postgres is not None:
                postgres.stop()


@dataclass
class Proc:
    """A service process started by the benchmark."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    @property
    def pid(self) -> int:
        """The process id (for psutil)."""
        return int(self.process.pid)

    def rss(self) -> int:
        """Resident memory in bytes right now."""
        return int(psutil.Process(self.pid).memory_info().rss)


def start(stack_: Stack, name: str, environ: dict[str, str], port: int | None = None) -> Proc:
    """Start one service as a subprocess on ``port`` or a free one (not waiting for readiness)."""
    args, port_var, _ = SERVICES[name]
    port = port or free_port()
    env = {**environ, port_var: str(port)}
    log = (stack_.logs / f"{name}-{port}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
    )
    return Proc(name, f"http://127.0.0.1:{port}", process, log)


def wait_ready(procs: Sequence[Proc], timeout_s: float = 90) -> None:
    """Poll each process's probe until it answers 200 (or fail with its log's tail)."""
    deadline = time.monotonic() + timeout_s
    pending = list(procs)
    with httpx.Client(timeout=2) as client:
        while pending:
            for proc in list(pending):
                if proc.process.poll() is not None:
                    raise RuntimeError(f"{proc.name} exited: {tail(proc)}")
                try:
                    if client.get(proc.url + SERVICES[proc.name][2]).status_code == 200:
                        pending.remove(proc)
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"not ready: {[p.name for p in pending]}")
            time.sleep(0.1)  # a readiness poll interval, not synchronisation


async def send_raw(
    producer: AIOKafkaProducer, topic: str, raw: Sequence[dict[str, Any]]
) -> list[Any]:
    """Produce raw event dicts as ingest does (keyed by subscriber, type header); await every ack.

    Returns each event's record metadata, in order.
    """
    futures = [
        await producer.send(
            topic,
            key=e["subscriber_id"].encode(),
            value=orjson.dumps(e),
            headers=[("event_type", e["event_type"].encode())],
        )
        for e in raw
    ]
    return list(await asyncio.gather(*futures))


def tail(proc: Proc, chars: int = 2000) -> str:
    """The end of a process's log, for error messages."""
    proc.log.flush()
    return Path(proc.log.name).read_text(errors="replace")[-chars:]


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([-+0-9.eE]+|NaN|[+-]Inf)$")


def scrape(client: httpx.Client, url: str, metric: str) -> float:
    """Sum of every sample of ``metric`` on a Prometheus ``/metrics`` page."""
    total = 0.0
    for line in client.get(url + "/metrics").text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == metric:
            total += float(match.group(3))
    return total


def run(coro: Awaitable[Any]) -> Any:
    """Run a coroutine to completion in a fresh event loop."""

    async def _wrap() -> Any:
        return await coro

    return asyncio.run(_wrap())


async def table_bytes(stack_: Stack, schemas: Sequence[str]) -> int:
    """pg_total_relation_size (heap, TOAST, indexes) of every table of these schemas."""
    from sqlalchemy import text

    engine = create_engine(stack_.settings())
    try:
        async with engine.connect() as conn:
            value = await conn.scalar(
                text(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relkind = 'r' AND n.nspname = ANY(:schemas)"
                ),
                {"schemas": list(schemas)},
            )
    finally:
        await engine.dispose()
    return int(value or 0)
