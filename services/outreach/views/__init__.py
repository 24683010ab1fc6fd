"""Outreach's REST API under ``/v1`` (its views): one module per resource, all included here.

- ``tasks``: the tasks API for other systems (list, create, read, cancel) and
  the call queue agents work from (claim, start, outcome, the queue)
- ``contacts``: the SMS provider's signed webhooks (delivery receipts, replies)
  and the do-not-contact list
- ``kpis``: the KPI report

Every route answers errors as problem details (``application/problem+json``,
``shared.errors``) and documents them in the OpenAPI document at ``/openapi.json``, which lists the
routes in the order ``include_routes`` adds them. The workbench's HTML pages
(``/ui``) are in ``services.outreach.workbench``.
"""

from fastapi import FastAPI

from services.outreach.views import contacts, kpis, tasks
from shared.auth import auth_responses, require_scope


def include_routes(app: FastAPI) -> None:
    """Add every REST route of outreach to ``app``, with its routers' auth settings."""
    app.include_router(tasks.router, responses=auth_responses())
    # Its key-checked routes document their 401/403 themselves; the webhooks are signed.
    app.include_router(contacts.router)
    # The KPIs are read like tasks: one scope for the whole router, given here.
    app.include_router(
        kpis.router, dependencies=[require_scope("tasks:read")], responses=auth_responses()
    )
