"""What outreach's routes take from the app: one function each, in one place.

Routes call them with the request (``get_engine(request)``) rather than reaching
into ``request.app.state`` themselves.
"""

from __future__ import annotations

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncEngine

from services.outreach.directory import SubscriberDirectory
from services.outreach.settings import OutreachSettings
from shared.clock import Clock


def get_engine(request: Request) -> AsyncEngine:
    """The service's database engine."""
    engine: AsyncEngine = request.app.state.runtime.engine
    return engine


def get_settings(request: Request) -> OutreachSettings:
    """The settings the app was built with."""
    settings: OutreachSettings = request.app.state.settings
    return settings


def get_clock(request: Request) -> Clock:
    """The time the service acts on (the wall clock, or a replay's stream time)."""
    clock: Clock = request.app.state.clock
    return clock


def get_directory(request: Request) -> SubscriberDirectory | None:
    """The subscriber card's sources (None when neither scoring's nor alerting's URL is set)."""
    directory: SubscriberDirectory | None = getattr(request.app.state, "directory", None)
    return directory
