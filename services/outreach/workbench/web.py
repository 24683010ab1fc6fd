"""The workbench's plumbing: templates, who is signed in, forms and CSRF, error pages.

Also the local day (``local_day``) My day and the team page count in.

Every page goes through ``viewer()``: no live session means a redirect to the
sign-in page (a GET) or a 403 page (a POST, which changes nothing). Every POST
form is read by ``read_form()``: at most ``MAX_FORM_BYTES``, URL-encoded, with
the session's CSRF token. Errors are ``PageError``s, answered by an HTML page in
the viewer's language with the right status.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.datastructures import Headers
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as AsgiScope

from services.outreach.deps import get_clock, get_engine, get_settings
from services.outreach.service import Person, Scope, WebSession, load_session, visible_managers
from services.outreach.workbench import i18n
from services.outreach.workbench.sessions import COOKIE, same_token
from shared.clock import WallClock
from shared.errors import ChurnwatchError

HERE = Path(__file__).resolve().parent
MAX_FORM_BYTES = 16 * 1024
"""Largest form body the workbench reads; a bigger one is a 413 page."""

BAND_HIGH, BAND_MEDIUM = 0.7, 0.5
"""Scoring's default band thresholds (SCORING_BAND_HIGH / _MEDIUM), for tasks' risks."""


def band(risk: float | None) -> str | None:
    """``high``, ``medium`` or ``low`` for a risk score; None without one."""
    if risk is None:
        return None
    return "high" if risk >= BAND_HIGH else "medium" if risk >= BAND_MEDIUM else "low"


def local_day(now: datetime, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """``[start, end)`` of the local day ``now`` falls in."""
    local = now.astimezone(zone)
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return start, (start + timedelta(days=1)).replace(tzinfo=zone)


class PageError(Exception):
    """An error answered with an HTML page: a status, a message key, and a detail."""

    def __init__(self, status: int, key: str, detail: str | None = None) -> None:
        super().__init__(key)
        self.status = status
        self.key = key
        self.detail = detail

    @classmethod
    def of(cls, exc: ChurnwatchError) -> PageError:
        """The page for an error of the service layer (404, 409, 422, ...)."""
        return cls(exc.status_code, f"error_{exc.status_code}", exc.message)


class NeedSignIn(Exception):
    """No live session: a GET is redirected to the sign-in page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in person looking at a page, and what they may see."""

    session: WebSession
    scope: Scope
    lang: str

    @property
    def person(self) -> Person:
        """Who is signed in."""
        return self.session.person


def language(request: Request) -> str:
    """The page's language: the ``cw_lang`` cookie, else Accept-Language, else English."""
    chosen = request.cookies.get(i18n.LANG_COOKIE)
    if chosen in i18n.LANGUAGES:
        return chosen
    return i18n.from_accept_language(request.headers.get("accept-language", ""))


def local_path(value: str | None, default: str = "/ui/") -> str:
    """``value`` if it is a path of the workbench (no open redirect), else ``default``."""
    if value and value.startswith("/ui") and not value.startswith("//") and "\\" not in value:
        return value
    return default


def here(request: Request) -> str:
    """The path and query of the request, to come back to."""
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


async def viewer(request: Request) -> Viewer:
    """The signed-in viewer, or ``NeedSignIn`` (GET) / a 403 page (anything else)."""
    token = request.cookies.get(COOKIE)
    session = None
    if token:
        async with get_engine(request).begin() as conn:
            session = await load_session(
                conn,
                token=token,
                now=WallClock().now(),  # sessions expire on the wall clock (sessions.py)
                idle_s=get_settings(request).workbench_session_idle_s,
            )
            if session is not None:
                scope = await visible_managers(conn, person=session.person)
    if session is None:
        if request.method in ("GET", "HEAD"):
            raise NeedSignIn(here(request))
        raise PageError(403, "error_signed_out")
    return Viewer(session, scope, language(request))


async def read_form(
    request: Request, view: Viewer | None, *, csrf: str | None = None
) -> dict[str, str]:
    """The POSTed form's fields (the last value of each), its size and CSRF token checked.

    ``csrf`` is the expected token when there is no session (the sign-in form).
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise PageError(413, "error_413")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # An empty POST (no body, no type) is an empty form: its missing token is the error.
    if content_type not in ("application/x-www-form-urlencoded", ""):
        raise PageError(422, "error_form_type")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise PageError(413, "error_413")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise PageError(422, "error_422", "the form is not UTF-8") from None
    fields = {key: values[-1] for key, values in parsed.items()}
    expected = view.session.csrf_token if view is not None else csrf
    if expected is None or not same_token(fields.get("csrf_token"), expected):
        raise PageError(400, "error_csrf")
    return fields


def _fmt_dt(zone: Any) -> Any:
    def fmt(value: datetime | None, with_date: bool = True) -> str:
        if value is None:
            return "—"
        local = value.astimezone(zone)
        return local.strftime("%Y-%m-%d %H:%M" if with_date else "%H:%M")

    return fmt


def countdown(until: datetime | None, now: datetime, t: i18n.Translator) -> str:
    """``in 5 h 12 min`` / ``overdue by 20 min`` in the page's language."""
    if until is None:
        return "—"
    seconds = (until - now).total_seconds()
    minutes = math.floor(abs(seconds) / 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    parts = []
    if days:
        parts.append(t("n_days", n=days))
    if hours or days:
        parts.append(t("n_hours", n=hours))
    parts.append(t("n_minutes", n=mins))
    span = ("" if t.index else " ").join(parts)  # Chinese runs the units together
    return t("in_span", span=span) if seconds >= 0 else t("overdue_by", span=span)


@dataclass(frozen=True, slots=True)
class Trend:
    """A risk trend laid out for the card's inline SVG chart (no script)."""

    width: int
    height: int
    line: str
    band_y: float
    last_x: float
    last_y: float


def trend_chart(points: list[tuple[datetime, float]]) -> Trend | None:
    """The points of a small risk-over-time line chart; None without points."""
    width, height, pad = 320, 96, 6
    if not points:
        return None
    first, last = points[0][0], points[-1][0]
    span = max((last - first).total_seconds(), 1.0)

    def xy(at: datetime, score: float) -> tuple[float, float]:
        x = pad + (at - first).total_seconds() / span * (width - 2 * pad)
        y = pad + (1 - max(0.0, min(1.0, score))) * (height - 2 * pad)
        return round(x, 1), round(y, 1)

    coords = [xy(at, score) for at, score in points]
    return Trend(
        width=width,
        height=height,
        line=" ".join(f"{x},{y}" for x, y in coords),
        band_y=round(pad + (1 - BAND_HIGH) * (height - 2 * pad), 1),
        last_x=coords[-1][0],
        last_y=coords[-1][1],
    )


ENV = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"], default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters["urlq"] = lambda value: quote(str(value), safe="")


def render(
    request: Request,
    template: str,
    *,
    lang: str,
    view: Viewer | None = None,
    status: int = 200,
    now: datetime | None = None,
    **context: Any,
) -> HTMLResponse:
    """An HTML page in ``lang``."""
    t = i18n.translator(lang)
    settings = get_settings(request)
    now = now or get_clock(request).now()
    context.setdefault("active", None)
    done = context.pop("done", None)
    context["done"] = done if done and i18n.has(f"done_{done}") else None
    html = ENV.get_template(template).render(
        t=t,
        lang=lang,
        other_lang=i18n.other(lang),
        view=view,
        person=view.person if view else None,
        csrf=view.session.csrf_token if view else "",
        here=here(request),
        now=now,
        fmt=_fmt_dt(settings.zone),
        countdown=lambda until: countdown(until, now, t),
        band=band,
        **context,
    )
    response = HTMLResponse(html, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def see_other(path: str) -> RedirectResponse:
    """303 to ``path`` (after a POST, so a reload does not post again)."""
    return RedirectResponse(path, status_code=303)


def error_page(request: Request, exc: PageError) -> HTMLResponse:
    """The HTML error page of ``exc``."""
    lang = language(request)
    return render(
        request,
        "error.html",
        lang=lang,
        status=exc.status,
        title_key=f"error_{exc.status}" if i18n.has(f"error_{exc.status}") else "error_other",
        message_key=exc.key,
        status_code=exc.status,
        detail=exc.detail,
    )


class FormSizeLimit:
    """Answers a workbench POST declared over ``MAX_FORM_BYTES`` with the HTML 413 page.

    Outside the service's own body limit (``shared.errors.BodyLimitMiddleware``,
    1 MiB, which answers API clients with problem+json): a person who
    pastes a whole document into a note gets a page in their language, not JSON.
    Bodies without a declared length are counted by ``read_form``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        """Serve one ASGI call."""
        if scope["type"] == "http" and scope["path"].startswith("/ui/"):
            declared = Headers(scope=scope).get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > MAX_FORM_BYTES:
                page = error_page(Request(scope), PageError(413, "error_413"))
                await page(scope, receive, send)
                return
        await self.app(scope, receive, send)


def install_handlers(app: FastAPI) -> None:
    """Error pages, the sign-in redirect, and the form size limit of the workbench."""

    async def _page_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PageError)
        return error_page(request, exc)

    async def _sign_in(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, NeedSignIn)
        return RedirectResponse(f"/ui/sign-in?next={quote(exc.next_path, safe='')}", 303)

    app.add_exception_handler(PageError, _page_error)
    app.add_exception_handler(NeedSignIn, _sign_in)
    app.add_middleware(FormSizeLimit)


def first(values: Mapping[str, str], key: str) -> str:
    """A form field, stripped ('' when absent)."""
    return values.get(key, "").strip()
