"""Browser sessions of the workbench: the cookies, and comparing submitted tokens.

The cookie ``cw_session`` holds a random token; the session's row (only the
token's SHA-256, its expiry, its CSRF token) is ``service.sessions``' work. A
session ends after ``WORKBENCH_SESSION_IDLE_S`` unused or
``WORKBENCH_SESSION_MAX_S`` after sign-in, and at sign-out. Each session has its
own CSRF token, which every POST form carries as the hidden field
``csrf_token``.

Sessions and lockouts run on the wall clock, not the service's clock: in a
simulation outreach's clock is the replayed stream's time, which races through
days in minutes and would sign a person out at once.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import Response

from services.outreach.settings import OutreachSettings

COOKIE = "cw_session"
"""The session cookie's name."""

SIGN_IN_COOKIE = "cw_signin"
"""Double-submit token of the sign-in form (there is no session yet to hold one)."""

COOKIE_PATH = "/ui"
"""Cookies go to the workbench's pages only, never to the API."""


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a submitted token with the expected one."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def secure_cookies(request: Request, settings: OutreachSettings) -> bool:
    """Whether cookies get ``Secure``: the setting, else whether the request came over TLS."""
    if settings.workbench_secure_cookies is not None:
        return settings.workbench_secure_cookies
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def set_cookie(
    response: Response,
    request: Request,
    settings: OutreachSettings,
    *,
    name: str,
    value: str,
    max_age: int | None,
) -> None:
    """Set a workbench cookie: HttpOnly, SameSite=Lax, Path=/ui, Secure per TLS."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request, settings),
    )


def clear_cookie(
    response: Response, request: Request, settings: OutreachSettings, name: str
) -> None:
    """Remove a workbench cookie."""
    response.delete_cookie(
        name,
        path=COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request, settings),
    )
