"""What outreach's routes and pages take from the app: one accessor each, and its dependency.

Routes and pages take the ``Annotated`` aliases as parameters
(``engine: EngineDep``), as fastapi/full-stack-fastapi-template's
``SessionDep``, rather than reaching into ``request.app.state`` themselves.
The workbench's ``render`` and ``viewer`` (``workbench.web``) call the accessors
by hand: its error pages and form size middleware render too, outside
FastAPI's dependencies. Each accessor reads ``request.app.state`` on every
request: tests replace the engine, the clock and the directory while the app runs.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.outreach.directory import SubscriberDirectory
from services.outreach.settings import OutreachSettings
from services.outreach.sms import Dispatcher
from shared.clock import Clock
from shared.deps import EngineDep as EngineDep
from shared.deps import get_engine as get_engine
from shared.deps import on_loop


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


def get_dispatcher(request: Request) -> Dispatcher | None:
    """The SMS dispatcher, to wake for a new SMS (None when the app serves without its lifespan)."""
    dispatcher: Dispatcher | None = getattr(request.app.state, "dispatcher", None)
    return dispatcher


SettingsDep = Annotated[OutreachSettings, Depends(on_loop(get_settings))]
"""A route's or page's parameter for :func:`get_settings`."""
ClockDep = Annotated[Clock, Depends(on_loop(get_clock))]
"""A route's or page's parameter for :func:`get_clock`."""
DirectoryDep = Annotated[SubscriberDirectory | None, Depends(on_loop(get_directory))]
"""A page's parameter for :func:`get_directory`."""
DispatcherDep = Annotated[Dispatcher | None, Depends(on_loop(get_dispatcher))]
"""A route's parameter for :func:`get_dispatcher`."""
