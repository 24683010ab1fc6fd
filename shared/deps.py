"""What the services' ``deps.py`` share: their accessors as dependencies FastAPI awaits.

Each service's ``deps.py`` has plain accessors (``get_engine(request)``), which
code outside FastAPI's injection calls by hand (the workbench's error pages and
middleware), and ``Annotated`` aliases of them that routes take as parameters
(``engine: EngineDep``), as fastapi/full-stack-fastapi-template's
``SessionDep``. FastAPI runs a plain ``def`` dependency in its thread pool: a
thread hop per dependency per request to read one attribute (five of them
doubled a bare request's time when measured). :func:`on_loop` gives ``Depends``
an ``async def`` instead, which FastAPI awaits on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")


def on_loop(accessor: Callable[[Request], T]) -> Callable[[Request], Coroutine[Any, Any, T]]:
    """``accessor`` as an ``async def`` for ``Depends``: awaited, not run in a thread.

    The accessor is called on every request, so what it reads from
    ``request.app.state`` may be replaced while the app runs (tests do).
    """

    async def dependency(request: Request) -> T:
        return accessor(request)

    # FastAPI and tracebacks name the dependency after the accessor it runs.
    dependency.__name__ = dependency.__qualname__ = accessor.__name__
    dependency.__doc__ = accessor.__doc__
    return dependency


def get_engine(request: Request) -> AsyncEngine:
    """The service's database engine (its runtime's; never a domain engine).

    Every service with a database keeps it on ``app.state.runtime``; read on
    every request, since tests swap it while the app runs.
    """
    engine: AsyncEngine = request.app.state.runtime.engine
    return engine


EngineDep = Annotated[AsyncEngine, Depends(on_loop(get_engine))]
"""A route's parameter for :func:`get_engine` (re-exported by each service's ``deps.py``)."""
