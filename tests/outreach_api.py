"""The outreach app over ASGI on the session's PostgreSQL, for the API test modules.

The routes need only the engine ``create_app`` makes: no consumer or dispatcher
runs, so tests drive the database and the HTTP API alone.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from services.outreach import service
from services.outreach.app import create_app
from services.outreach.settings import OutreachSettings
from shared.events import OutreachTask

H = TypeVar("H", bound="OutreachApi")


@dataclass
class OutreachApi:
    """The app, an httpx client on it, its engine and settings."""

    app: FastAPI
    api: httpx.AsyncClient
    engine: AsyncEngine
    settings: OutreachSettings

    async def store(self, *new: OutreachTask) -> None:
        """Store tasks as the consumer would."""
        async with self.engine.begin() as conn:
            await service.store_tasks(conn, new_tasks=list(new), now=datetime.now(UTC))

    async def task(self, task_id: uuid.UUID | str) -> dict[str, Any]:
        """A stored task with its audit trail (it must exist)."""
        async with self.engine.connect() as conn:
            row = await service.get_task(conn, task_id=uuid.UUID(str(task_id)))
        assert row is not None
        return row


@asynccontextmanager
async def outreach_api(cls: type[H], settings: OutreachSettings) -> AsyncIterator[H]:
    """An ``OutreachApi`` (or subclass) on a fresh app, disposed of afterwards."""
    app = create_app(settings)
    engine = app.state.runtime.engine
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://outreach") as api:
            yield cls(app, api, engine, settings)
    finally:
        await engine.dispose()
