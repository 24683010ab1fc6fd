"""The subscriber card: who they are, their risk and why, what happened, what to say.

Risk now, its trend and the recent bills, payments, stop-notices and
complaints come from ``app.state.directory`` (scoring's and alerting's APIs);
without it, or when it has no answer, the card says "not available" and shows
the risk and reasons of the subscriber's latest task. The phone number stays
masked until the person asks to reveal it to call; every reveal is audited in
``outreach.phone_reveals``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse

from services.outreach import service
from services.outreach.scripts import scripts_for
from services.outreach.views import mask
from services.outreach.workbench import data, i18n
from services.outreach.workbench.pages import OFFERS, OUTCOMES, task_id_of
from services.outreach.workbench.sessions import wall_now
from services.outreach.workbench.web import (
    PageError,
    Viewer,
    clock_of,
    engine_of,
    first,
    read_form,
    render,
    trend_chart,
    viewer,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/ui", include_in_schema=False)

MAX_SUBSCRIBER_ID = 64


async def _directory(request: Request, what: str, subscriber_id: str) -> Any:
    """The directory's answer (``risk`` or ``activity``), None if absent or failing."""
    directory = getattr(request.app.state, "directory", None)
    if directory is None:
        return None
    try:
        return await getattr(directory, what)(subscriber_id)
    except Exception:
        log.warning("subscriber directory %s failed", what, exc_info=True)
        return None


def _reason_text(reason: Any, lang: str) -> str:
    """A directory reason in the page's language (``ReasonView.text``)."""
    text = getattr(reason, f"text_{lang}", None) or getattr(reason, "text_en", None)
    return str(text or getattr(reason, "code", ""))


def _items(activity: Any, name: str) -> list[Any]:
    values: Iterable[Any] | None = getattr(activity, name, None)
    return list(values or [])


async def _card(
    request: Request, view: Viewer, subscriber_id: str, *, revealed: str | None = None
) -> HTMLResponse:
    if not subscriber_id or len(subscriber_id) > MAX_SUBSCRIBER_ID:
        raise PageError(404, "error_no_subscriber")
    now = clock_of(request).now()
    async with engine_of(request).connect() as conn:
        history = await data.subscriber_tasks(conn, subscriber_id=subscriber_id)
        if not history:
            raise PageError(404, "error_no_subscriber")
        latest = history[0]
        managers = {t["account_manager_id"] for t in history if t["account_manager_id"]}
        if view.scope is not None and not managers & view.scope:
            raise PageError(403, "error_not_yours")
        opt_out = await service.get_opt_out(conn, subscriber_id=subscriber_id)
        names = await data.names(conn, managers)
        audit = await data.reveals(conn, subscriber_id=subscriber_id)
    risk = await _directory(request, "risk", subscriber_id)
    activity = await _directory(request, "activity", subscriber_id)
    codes: list[str] = next((t["reason_codes"] for t in history if t["reason_codes"]), [])
    language = view.lang
    scripts = scripts_for(codes, language)
    trend = [(at, float(score)) for at, score in (getattr(risk, "trend", None) or [])]
    reasons = (
        [_reason_text(r, language) for r in getattr(risk, "reasons", [])]
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
        risk_score=getattr(risk, "score", None) if risk is not None else latest["risk"],
        risk_band=getattr(risk, "band", None) if risk is not None else None,
        reasons=reasons,
        chart=trend_chart(trend),
        trend=trend,
        activity=activity,
        bills=_items(activity, "bills"),
        payments=_items(activity, "payments"),
        stop_notices=_items(activity, "stop_notices"),
        complaints=_items(activity, "complaints"),
        script=scripts[0][1] if scripts else None,
        masked=mask(next((t["phone"] for t in history if t["phone"]), None)),
        revealed=revealed,
        reveals=audit,
        outcomes=OUTCOMES,
        offers=OFFERS,
        may_act=lambda task: data.may_see(view.scope, task["account_manager_id"]),
        open_reminder=data.open_reminder,
        done=request.query_params.get("done"),
    )


@router.get("/subscribers/{subscriber_id}")
async def card(subscriber_id: str, request: Request) -> HTMLResponse:
    """The subscriber card (403 when the subscriber is another manager's)."""
    view = await viewer(request)
    return await _card(request, view, subscriber_id)


@router.post("/subscribers/{subscriber_id}/reveal")
async def reveal(subscriber_id: str, request: Request) -> HTMLResponse:
    """Show the phone number to call it; the reveal is audited first."""
    view = await viewer(request)
    form = await read_form(request, view)
    task_value = first(form, "task_id")
    task_id = task_id_of(task_value) if task_value else None
    async with engine_of(request).begin() as conn:
        history = await data.subscriber_tasks(conn, subscriber_id=subscriber_id)
        if not history:
            raise PageError(404, "error_no_subscriber")
        managers = {t["account_manager_id"] for t in history if t["account_manager_id"]}
        if view.scope is not None and not managers & view.scope:
            raise PageError(403, "error_not_yours")
        if task_id is not None and task_id not in {t["task_id"] for t in history}:
            raise PageError(404, "error_no_task")
        phone = next((t["phone"] for t in history if t["phone"]), None)
        if phone is None:
            raise PageError(404, "error_no_phone")
        await data.record_reveal(
            conn,
            person_id=view.person.person_id,
            subscriber_id=subscriber_id,
            task_id=task_id,
            now=wall_now(),  # an audit records when the person really looked
        )
    return await _card(request, view, subscriber_id, revealed=phone)
