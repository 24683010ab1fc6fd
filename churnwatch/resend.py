"""Resending a POST to ingest that it answered 503, after its ``Retry-After``, with tenacity.

Ingest answers 503 when the broker did not acknowledge a batch (nothing was
accepted, or what was is harmless to send again: the event ids make repeats
idempotent), with a ``Retry-After`` saying when to try again. The importer
(``churnwatch import-table --post``) and the simulator's stream both resend
such a batch: this is their one retry policy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt
from tenacity.wait import wait_base

RETRY_AFTER_CAP_S = 30.0
"""The longest wait a ``Retry-After`` may ask for (a longer one is cut to this)."""
DEFAULT_WAIT_S = 1.0
"""The wait when a 503 has no (readable) ``Retry-After``."""
DEFAULT_ATTEMPTS = 5
"""Attempts per batch, the first one included."""


def retry_after_s(
    response: httpx.Response, *, default_s: float = DEFAULT_WAIT_S, now: datetime | None = None
) -> float:
    """Seconds a response's ``Retry-After`` asks for (RFC 9110: seconds or an HTTP date).

    ``default_s`` when the header is missing or unreadable; never negative.
    """
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return default_s
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default_s
    if when.tzinfo is None:  # an obsolete date form without a zone: HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class WaitRetryAfter(wait_base):
    """Wait what the last response's ``Retry-After`` asks for, at most ``cap_s``."""

    def __init__(self, *, cap_s: float = RETRY_AFTER_CAP_S, default_s: float = DEFAULT_WAIT_S):
        self.cap_s = cap_s
        self.default_s = default_s

    def __call__(self, retry_state: RetryCallState) -> float:
        """The wait before the next attempt."""
        outcome = retry_state.outcome
        if outcome is None or outcome.failed:
            return min(self.default_s, self.cap_s)
        response = outcome.result()
        return min(self.cap_s, retry_after_s(response, default_s=self.default_s))


def _unavailable(response: httpx.Response) -> bool:
    return response.status_code == 503


def _last_response(retry_state: RetryCallState) -> httpx.Response:
    # Attempts used up: hand back the last 503 so the caller's raise_for_status
    # reports it (tenacity would raise its own RetryError instead).
    assert retry_state.outcome is not None  # tenacity sets it before calling this
    response: httpx.Response = retry_state.outcome.result()
    return response


def resending(
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    cap_s: float = RETRY_AFTER_CAP_S,
    sleep: Callable[[float], None] = time.sleep,
) -> Retrying:
    """A tenacity ``Retrying`` that resends while the answer is a 503.

    It waits each 503's ``Retry-After`` (at most ``cap_s``; 1 s without one) and
    stops after ``attempts`` in all, returning the last response, 503 or not.
    An exception (a connection error) is not retried: it propagates at once.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    return Retrying(
        retry=retry_if_result(_unavailable),
        stop=stop_after_attempt(attempts),
        wait=WaitRetryAfter(cap_s=cap_s),
        retry_error_callback=_last_response,
        sleep=sleep,
        reraise=True,
    )


def post_with_resend(
    send: Callable[[], httpx.Response],
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
) -> httpx.Response:
    """``send()`` again while it answers 503 (see :func:`resending`); the last response."""
    response: httpx.Response = resending(attempts=attempts, sleep=sleep)(send)
    return response
