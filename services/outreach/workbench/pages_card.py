"""The subscriber card: who they are, their risk and why, what happened, what to say.

Risk now, its trend and the recent bills, payments, stop-notices and
complaints come from the subscriber directory (``deps.DirectoryDep``: scoring's
and alerting's APIs);
without it, or when it has no answer, the card says "not available" and shows
the risk and reasons of the subscriber's latest task. The phone number stays
masked until the person asks to reveal it to call; every reveal is audited in
``outreach.phone_reveals``. The card's reads and the reveal's audit row are
``service.workbench``'s.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.responses import HTMLResponse

from services.outreach import service
from services.outreach.deps import ClockDep, DirectoryDep, EngineDep
from services.outreach.directory import ActivityView, RiskView, SubscriberDirectory
from services.outreach.scripts import scripts_for
from services.outreach.views.tasks import mask
from services.outreach.workbench import i18n
from services.outreach.workbench.pages import OFFERS, OUTCOMES, task_id_of
from services.outreach.workbench.web import (
    PageError,
    Viewer,
    first,
    read_form,
    render,
    trend_chart,
    viewer,
)
from shared.clock import Clock, WallClock

log = logging.getLogger(__name__)

router = APIRouter(prefix="/ui", include_in_schema=False)

MAX_SUBSCRIBER_ID = 64


async def _from_directory(
    directory: SubscriberDirectory | None, subscriber_id: str
) -> tuple[RiskView | None, ActivityView | None]:
    """Risk (scoring) and activity (alerting), asked at once; None for what is unavailable."""
    if directory is None:
        return None, None
    try:
        return await directory.card(subscriber_id)
    except Exception:
        log.warning("subscriber directory failed", exc_info=True)
        return None, None


async def _visible_history(
    conn: AsyncConnection, view: Viewer, subscriber_id: str
) -> list[dict[str, Any]]:
    """The subscriber's tasks, newest first: a 404 page if none, a 403 if not the viewer's."""
    history = await service.subscriber_tasks(conn, subscriber_id=subscriber_id)
    if not history:
        raise PageError(404, "error_no_subscriber")
    managers = {t["account_manager_id"] for t in history if t["account_manager_id"]}
    if view.scope is not None and not managers & view.scope:
        raise PageError(403, "error_not_yours")
    return history


async def _card(
    request: Request,
    view: Viewer,
    subscriber_id: str,
    *,
    engine: AsyncEngine,
    clock: Clock,
    directory: SubscriberDirectory | None,
    revealed: str | None = None,
) -> HTMLResponse:
    if not subscriber_id or len(subscriber_id) > MAX_SUBSCRIBER_ID:
        raise PageError(404, "error_no_subscriber")
    now = clock.now()
    async with engine.connect() as conn:
        history = await _visible_history(conn, view, subscriber_id)
        latest = history[0]
        managers = {t["account_manager_id"] for t in history if t["account_manager_id"]}
        opt_out = await service.get_opt_out(conn, subscriber_id=subscriber_id)
        names = await service.manager_names(conn, manager_ids=managers)
        audit = await service.reveals(conn, subscriber_id=subscriber_id)
    risk, activity = await _from_directory(directory, subscriber_id)
    codes: list[str] = next((t["reason_codes"] for t in history if t["reason_codes"]), [])
    language = view.lang
    scripts = scripts_for(codes, language)
    trend = risk.trend if risk is not None else []
    reasons = (
        [r.text(language) or r.code for r in risk.reasons]
        if risk is not None
        else i18n.reason_titles(latest, language)
    )
    manager_id = latest["account_manager_id"]
    return render(
        request,
        "card.html",
        lang=language,
        view=view,
        now=now,
        active="card",
        subscriber_id=subscriber_id,
        latest=latest,
        manager_id=manager_id,
        manager_name=names.get(manager_id or "", manager_id),
        history=history,
        opt_out=opt_out,
        risk=risk,
        risk_score=risk.score if risk is not None else latest["risk"],
        risk_band=risk.band if risk is not None else None,
        reasons=reasons,
        chart=trend_chart(trend),
        trend=trend,
        activity=activity,
        bills=activity.bills if activity is not None else [],
        payments=activity.payments if activity is not None else [],
        stop_notices=activity.stop_notices if activity is not None else [],
        complaints=activity.complaints if activity is not None else [],
        script=scripts[0][1] if scripts else None,
        masked=mask(next((t["phone"] for t in history if t["phone"]), None)),
        revealed=revealed,
        reveals=audit,
        outcomes=OUTCOMES,
        offers=OFFERS,
        may_act=lambda task: service.may_see(view.scope, task["account_manager_id"]),
        open_reminder=service.open_reminder,
        done=request.query_params.get("done"),
    )


@router.get("/subscribers/{subscriber_id}")
async def card(
    subscriber_id: str,
    request: Request,
    engine: EngineDep,
    clock: ClockDep,
    directory: DirectoryDep,
) -> HTMLResponse:
    """The subscriber card (403 when the subscriber is another manager's)."""
    view = await viewer(request)
    return await _card(
        request, view, subscriber_id, engine=engine, clock=clock, directory=directory
    )


@router.post("/subscribers/{subscriber_id}/reveal")
async def reveal(
    subscriber_id: str,
    request: Request,
    engine: EngineDep,
    clock: ClockDep,
    directory: DirectoryDep,
) -> HTMLResponse:
    """Show the phone number to call it; the reveal is audited first."""
    view = await viewer(request)
    form = await read_form(request, view)
    task_value = first(form, "task_id")
    task_id = task_id_of(task_value) if task_value else None
    async with engine.begin() as conn:
        history = await _visible_history(conn, view, subscriber_id)
        if task_id is not None and task_id not in {t["task_id"] for t in history}:
            raise PageError(404, "error_no_task")
        phone = next((t["phone"] for t in history if t["phone"]), None)
        if phone is None:
            raise PageError(404, "error_no_phone")
        await service.record_reveal(
            conn,
            person_id=view.person.person_id,
            subscriber_id=subscriber_id,
            task_id=task_id,
            now=WallClock().now(),  # an audit records when the person really looked
        )
    return await _card(
        request,
        view,
        subscriber_id,
        engine=engine,
        clock=clock,
        directory=directory,
        revealed=phone,
    )
