"""The account managers' workbench: server-rendered pages under ``/ui`` (docs/workbench.md).

``install_workbench(app)`` adds the pages, their error pages and the sign-in
redirect to the outreach app; ``create_person`` makes an account.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request

from services.outreach.workbench.accounts import Person, Role, create_person, ensure_person
from services.outreach.workbench.web import PageError, install_handlers, viewer

__all__ = ["Person", "Role", "create_person", "ensure_person", "install_workbench"]

_fallback = APIRouter(prefix="/ui", include_in_schema=False)


@_fallback.api_route("/{rest:path}", methods=["GET", "POST"])
async def not_found(rest: str, request: Request) -> None:
    """Any other path under /ui: the sign-in page when signed out, else a 404 page."""
    await viewer(request)
    raise PageError(404, "error_404", None)


def install_workbench(app: FastAPI) -> None:
    """Serve the workbench's pages from ``app``."""
    from services.outreach.workbench import pages, pages_card, pages_team

    install_handlers(app)
    app.include_router(pages.router)
    app.include_router(pages_card.router)
    app.include_router(pages_team.router)
    app.include_router(_fallback)  # last: only what no page matched
