"""Feedback: the outbox relay that publishes task outcomes, and the KPIs.

(Filled in by the feedback work; the router and the loops are wired in ``app.py``.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncEngine

from services.outreach.settings import OutreachSettings
from shared.topics import Topics

router = APIRouter(prefix="/v1", tags=["kpis"])


class Relay:
    """Publishes outbox rows to Kafka, then marks them published."""

    def __init__(
        self,
        settings: OutreachSettings,
        engine: AsyncEngine,
        topics: Topics,
        producer: Callable[[], AIOKafkaProducer | None],
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.topics = topics
        self.producer = producer
        self._stop = asyncio.Event()

    async def run(self) -> None:
        """Relay until stopped."""
        await self._stop.wait()

    def stop(self) -> None:
        """Return from ``run`` after the pass in hand."""
        self._stop.set()


class KpiRefresher:
    """Recomputes the KPI gauges every ``OUTREACH_KPI_INTERVAL_S``."""

    def __init__(self, settings: OutreachSettings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine
        self._stop = asyncio.Event()

    async def run(self) -> None:
        """Refresh until stopped."""
        await self._stop.wait()

    def stop(self) -> None:
        """Return from ``run`` after the pass in hand."""
        self._stop.set()
