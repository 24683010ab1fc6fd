"""What scoring's routes take from the app: one accessor each, and its dependency.

Routes take the ``Annotated`` aliases as parameters (``engine: EngineDep``), as
fastapi/full-stack-fastapi-template's ``SessionDep``, rather than reaching into
``request.app.state`` themselves; ``create_app`` stores what they return. Each
reads ``request.app.state`` on every request: what is there may be replaced
while the app runs (tests swap the engine).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.scoring.consumer import ScoringHandler
from services.scoring.settings import ScoringSettings
from shared.deps import EngineDep as EngineDep
from shared.deps import on_loop


def get_settings(request: Request) -> ScoringSettings:
    """The settings the app was built with."""
    settings: ScoringSettings = request.app.state.settings
    return settings


def get_handler(request: Request) -> ScoringHandler:
    """The consumer's handler: it holds the model in use."""
    handler: ScoringHandler = request.app.state.handler
    return handler


SettingsDep = Annotated[ScoringSettings, Depends(on_loop(get_settings))]
"""A route's parameter for :func:`get_settings`."""
HandlerDep = Annotated[ScoringHandler, Depends(on_loop(get_handler))]
"""A route's parameter for :func:`get_handler`."""
