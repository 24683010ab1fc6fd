"""The workbench's pages under ``/ui``: sign-in and out, language, My day, call actions.

People sign in here with a password (``accounts``), not with API keys; the
subscriber card is in ``pages_card``, the team lead's page in ``pages_team``.
Call actions (claim, start, outcome) go through ``service.call_queue`` in
one transaction each: an error rolls everything back and answers an error page.
The pages' reads and claims are ``service.workbench``'s, sessions' rows
``service.sessions``'.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime, tzinfo
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from services.outreach import service
from services.outreach.deps import ClockDep, EngineDep, SettingsDep
from services.outreach.settings import OutreachSettings
from services.outreach.workbench import i18n
from services.outreach.workbench.accounts import SignInResult, sign_in
from services.outreach.workbench.sessions import (
    COOKIE,
    SIGN_IN_COOKIE,
    clear_cookie,
    set_cookie,
)
from services.outreach.workbench.web import (
    HERE,
    PageError,
    first,
    language,
    local_day,
    local_path,
    read_form,
    render,
    see_other,
    viewer,
)
from shared.clock import WallClock
from shared.errors import ChurnwatchError
from shared.events import CallOutcome

router = APIRouter(prefix="/ui", include_in_schema=False)

OUTCOMES: tuple[str, ...] = (
    CallOutcome.REACHED.value,
    CallOutcome.UNREACHABLE.value,
    CallOutcome.CALLBACK.value,
    CallOutcome.RETAINED.value,
    CallOutcome.OFFER_ACCEPTED.value,
    CallOutcome.NOT_INTERESTED.value,
    CallOutcome.COMPLAINT_RAISED.value,
    CallOutcome.DO_NOT_CONTACT.value,
)
"""The outcome form's choices, in its order."""

OFFERS = ("discount", "data_bundle", "device_upgrade", "plan_change", "loyalty_points", "gift")
"""What an accepted offer can be (the form's choices)."""

MAX_NOTE = 500
"""Longest note an outcome may carry."""


def with_done(path: str, done: str) -> str:
    """``path`` with ``done=<what>`` in its query (the confirmation shown after a redirect)."""
    parts = urlsplit(path)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "done"] + [("done", done)]
    return urlunsplit(("", "", parts.path, urlencode(query), parts.fragment))


def task_id_of(value: str) -> uuid.UUID:
    """A task id from the path; a malformed one is an unknown task (404)."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise PageError(404, "error_no_task") from None


# --- static, language, sign-in/out -----------------------------------------------------


@router.get("/static/workbench.css")
async def stylesheet() -> FileResponse:
    """The one stylesheet (served here: no CDN)."""
    return FileResponse(
        HERE / "static" / "workbench.css",
        media_type="text/css",
        headers={"Cache-Control": "public, max-age=3600"},
    )


@router.get("/lang")
async def switch_language(
    request: Request, settings: SettingsDep, to: str = "en", next: str = "/ui/"
) -> Response:
    """Set the ``cw_lang`` cookie and go back to the page."""
    response = see_other(local_path(next))
    if to in i18n.LANGUAGES:
        set_cookie(
            response,
            request,
            settings,
            name=i18n.LANG_COOKIE,
            value=to,
            max_age=365 * 86400,
        )
    return response


def _sign_in_page(
    request: Request,
    settings: OutreachSettings,
    *,
    next_path: str,
    message: str | None,
    status: int = 200,
    name: str = "",
) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    response = render(
        request,
        "sign_in.html",
        lang=language(request),
        status=status,
        next_path=next_path,
        message=message,
        sign_in_token=token,
        name=name,
    )
    set_cookie(response, request, settings, name=SIGN_IN_COOKIE, value=token, max_age=3600)
    return response


@router.get("/sign-in")
async def sign_in_form(request: Request, settings: SettingsDep, next: str = "/ui/") -> HTMLResponse:
    """The sign-in form."""
    return _sign_in_page(request, settings, next_path=local_path(next), message=None)


@router.post("/sign-in")
async def sign_in_post(request: Request, settings: SettingsDep, engine: EngineDep) -> Response:
    """Check the password; on success start a session and go to ``next``."""
    form = await read_form(request, None, csrf=request.cookies.get(SIGN_IN_COOKIE))
    name, password = first(form, "person_id"), form.get("password", "")
    next_path = local_path(form.get("next"))
    if not name or not password or len(name) > 64 or len(password) > 1024:
        return _sign_in_page(
            request, settings, next_path=next_path, message="sign_in_failed", status=401, name=name
        )
    now = WallClock().now()  # sessions and lockouts run on the wall clock (sessions.py)
    async with engine.begin() as conn:
        result = await sign_in(
            conn,
            person_id=name,
            password=password,
            now=now,
            lockout_failures=settings.workbench_lockout_failures,
            lockout_s=settings.workbench_lockout_s,
        )
        if result.result is SignInResult.OK:
            assert result.person is not None
            old = request.cookies.get(COOKIE)
            if old:
                await service.end_session(conn, token=old)
            token, _ = await service.start_session(
                conn,
                person_id=result.person.person_id,
                now=now,
                max_s=settings.workbench_session_max_s,
            )
    if result.result is not SignInResult.OK:
        key = "sign_in_locked" if result.result is SignInResult.LOCKED else "sign_in_failed"
        return _sign_in_page(
            request, settings, next_path=next_path, message=key, status=401, name=name
        )
    response = see_other(next_path)
    set_cookie(
        response,
        request,
        settings,
        name=COOKIE,
        value=token,
        max_age=int(settings.workbench_session_max_s),
    )
    clear_cookie(response, request, settings, SIGN_IN_COOKIE)
    return response


@router.post("/sign-out")
async def sign_out(request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    """End the session (its row is deleted) and go to the sign-in page."""
    view = await viewer(request)
    await read_form(request, view)
    async with engine.begin() as conn:
        await service.end_session(conn, token=request.cookies[COOKIE])
    response = see_other("/ui/sign-in")
    clear_cookie(response, request, settings, COOKIE)
    return response


# --- My day ------------------------------------------------------------------------------


@router.get("/")
async def my_day(
    request: Request,
    engine: EngineDep,
    clock: ClockDep,
    settings: SettingsDep,
    done: str | None = None,
) -> HTMLResponse:
    """VIP reminders due, today's calls within the norm, calls in hand, today's warnings."""
    view = await viewer(request)
    now = clock.now()
    day_start, day_end = local_day(now, settings.zone)
    async with engine.connect() as conn:
        reminders = await service.reminders_due(conn, scope=view.scope)
        done_today = await service.calls_made(conn, scope=view.scope, start=day_start, end=day_end)
        norm = settings.workbench_daily_calls
        if view.scope is not None and len(view.scope) > 1:
            norm *= len(view.scope)  # a team lead's day: the team's norm
        calls = await service.todays_calls(
            conn, scope=view.scope, now=now, limit=max(0, norm - done_today)
        )
        hand = await service.in_hand(conn, agent_id=view.person.agent_id)
        warnings = await service.warnings_today(
            conn, scope=view.scope, start=day_start, end=day_end
        )
    return render(
        request,
        "day.html",
        lang=view.lang,
        view=view,
        now=now,
        active="day",
        reminders=reminders,
        calls=calls,
        hand=hand,
        warnings=warnings,
        done_today=done_today,
        norm=norm,
        done=done,
        outcomes=OUTCOMES,
        offers=OFFERS,
        due=lambda task: (
            task["status"] == "queued"
            and (task["not_before"] is None or task["not_before"] <= now)
            and (task["callback_at"] is None or task["callback_at"] <= now)
            and (task["due_at"] is None or task["due_at"] > now)
        ),
        reasons=lambda task: i18n.reason_titles(task, view.lang),
        day=day_start,
    )


# --- call actions --------------------------------------------------------------------------


@router.post("/tasks/{task_id}/claim")
async def claim(task_id: str, request: Request, engine: EngineDep, clock: ClockDep) -> Response:
    """Claim this call (it must be queued and due, and yours to see)."""
    view = await viewer(request)
    form = await read_form(request, view)
    tid = task_id_of(task_id)
    try:
        async with engine.begin() as conn:
            task = await service.claim_task(
                conn,
                task_id=tid,
                agent_id=view.person.agent_id,
                scope=view.scope,
                now=clock.now(),
            )
    except ChurnwatchError as exc:
        raise PageError.of(exc) from None
    default = f"/ui/subscribers/{task['subscriber_id']}#task-{tid}"
    return see_other(with_done(local_path(form.get("next"), default), "claimed"))


@router.post("/tasks/{task_id}/start")
async def start(task_id: str, request: Request, engine: EngineDep, clock: ClockDep) -> Response:
    """Start a call you claimed."""
    view = await viewer(request)
    form = await read_form(request, view)
    tid = task_id_of(task_id)
    try:
        async with engine.begin() as conn:
            task = await service.task_for(conn, task_id=tid, scope=view.scope)
            await service.start_call(
                conn, task_id=tid, agent_id=view.person.agent_id, now=clock.now()
            )
    except ChurnwatchError as exc:
        raise PageError.of(exc) from None
    default = f"/ui/subscribers/{task['subscriber_id']}#task-{tid}"
    return see_other(with_done(local_path(form.get("next"), default), "started"))


def parse_callback(value: str, zone: tzinfo) -> datetime:
    """The form's ``callback_at`` (a date and time in ``zone``) as an aware datetime."""
    try:
        naive = datetime.fromisoformat(value)
    except ValueError:
        raise PageError(422, "error_callback_at") from None
    if naive.tzinfo is not None:
        return naive
    return naive.replace(tzinfo=zone)


@router.post("/tasks/{task_id}/outcome")
async def outcome(
    task_id: str, request: Request, engine: EngineDep, clock: ClockDep, settings: SettingsDep
) -> Response:
    """Record a call's outcome through the call queue's own path."""
    view = await viewer(request)
    form = await read_form(request, view)
    tid = task_id_of(task_id)
    chosen = first(form, "outcome")
    if chosen not in OUTCOMES:
        raise PageError(422, "error_outcome")
    offer = first(form, "offer") or None
    if chosen == CallOutcome.OFFER_ACCEPTED.value:
        if offer not in OFFERS:
            raise PageError(422, "error_offer")
    else:
        offer = None
    callback_at = None
    if chosen == CallOutcome.CALLBACK.value:
        callback_at = parse_callback(first(form, "callback_at"), settings.zone)
    note = first(form, "note") or None
    if note is not None and len(note) > MAX_NOTE:
        raise PageError(422, "error_note")
    try:
        async with engine.begin() as conn:
            task = await service.task_for(conn, task_id=tid, scope=view.scope)
            await service.record_outcome(
                conn,
                task_id=tid,
                agent_id=view.person.agent_id,
                outcome=CallOutcome(chosen),
                callback_at=callback_at,
                note=note,
                now=clock.now(),
                offer=offer,
            )
    except ChurnwatchError as exc:
        raise PageError.of(exc) from None
    default = f"/ui/subscribers/{task['subscriber_id']}"
    return see_other(with_done(local_path(form.get("next"), default), "recorded"))


@router.get("/tasks/{task_id}")
async def task_page(task_id: str, request: Request, engine: EngineDep) -> RedirectResponse:
    """A task is shown on its subscriber's card."""
    view = await viewer(request)
    tid = task_id_of(task_id)
    async with engine.connect() as conn:
        try:
            task = await service.task_for(conn, task_id=tid, scope=view.scope)
        except ChurnwatchError as exc:
            raise PageError.of(exc) from None
    return see_other(f"/ui/subscribers/{task['subscriber_id']}#task-{tid}")
