"""Typed dependencies of outreach's routes (``Annotated`` aliases, one place).

A route names what it needs (``engine: EngineDep``, ``clock: ClockDep``) instead of
reaching into ``request.app.state``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine

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


EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
SettingsDep = Annotated[OutreachSettings, Depends(get_settings)]
ClockDep = Annotated[Clock, Depends(get_clock)]
