"""What every consuming service opens at start and closes at stop.

``ServiceRuntime`` owns the engine, the producer and the consumer loop task, so
each service's lifespan is a few lines and all of them shut down the same way:
stop the loop after the batch in hand, then close the producer and the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer, TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.consumer import ConsumerLoop, Handler, Parser
from shared.db import create_engine, ping
from shared.health import Check
from shared.kafka import ensure_topics, make_producer, topics_for
from shared.settings import BaseServiceSettings
from shared.topics import Topics
from shared.tracing import Tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter


class ServiceRuntime:
    """Database engine + producer + one consumer loop (+ the tracer), started and stopped together.

    ``span_exporter``: export spans there instead of the configured exporter
    (tests pass an in-memory one; ``shared.tracing``).
    """

    def __init__(
        self,
        settings: BaseServiceSettings,
        service: str,
        *,
        span_exporter: SpanExporter | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.tracing = Tracing(settings, service=service, exporter=span_exporter)
        self.topics: Topics = topics_for(settings)
        self.engine: AsyncEngine = create_engine(settings)
        self.producer: AIOKafkaProducer | None = None  # aiokafka needs a running loop
        self.loop: ConsumerLoop[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._on_stop: Callable[[], Awaitable[None]] | None = None

    async def start(
        self,
        *,
        topics: list[str],
        group_id: str,
        parser: Parser[Any],
        handler: Handler[Any],
        on_failure: Callable[[], Awaitable[None]] | None = None,
        on_stop: Callable[[], Awaitable[None]] | None = None,
        on_revoked: Callable[[set[TopicPartition]], None] | None = None,
        max_records: int | None = None,
    ) -> None:
        """Create topics if missing, start the producer and the consumer loop.

        ``on_stop`` runs after the loop's last batch, before the clients close
        (scoring checkpoints its model there).
        """
        self._on_stop = on_stop
        self.tracing.start()
        await ensure_topics(self.settings)
        self.producer = make_producer(self.settings)
        await self.producer.start()
        self.loop = ConsumerLoop(
            service=self.service,
            settings=self.settings,
            topics=topics,
            group_id=group_id,
            parser=parser,
            handler=handler,
            engine=self.engine,
            producer=self.producer,
            on_failure=on_failure,
            on_revoked=on_revoked,
            max_records=max_records,
            tracing=self.tracing,
        )
        self._task = asyncio.create_task(self.loop.run(), name=f"{self.service}-consumer")

    async def stop(self) -> None:
        """Finish the batch in hand, then close everything."""
        if self.loop is not None:
            self.loop.stop()
        if self._task is not None:
            await self._task
        if self._on_stop is not None:
            await self._on_stop()
        if self.producer is not None:
            await self.producer.stop()
        await self.engine.dispose()
        await self.tracing.aclose()  # exports what is left

    def checks(self) -> dict[str, Check]:
        """Readiness checks: database answers, consumer joined and healthy."""

        async def database() -> bool:
            return await ping(self.engine)

        async def consumer() -> bool:
            return self.loop is not None and self.loop.healthy

        return {"database": database, "consumer": consumer}
