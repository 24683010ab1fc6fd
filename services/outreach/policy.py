"""The contact policy and webhook signatures: pure functions, no I/O.

The dispatcher asks ``decide`` about every SMS it is about to send, with the
facts it read from the database (opt-out, the subscriber's recent marketing
SMS). Service messages (reminders, care that is not marketing) always go;
marketing messages respect the do-not-contact list, quiet hours in the
operator's time zone and a frequency cap, and are rescheduled rather than
dropped when only the time is wrong.

Delivery receipts and inbound replies are signed by the provider with an
HMAC-SHA256 over ``f"{t}.{raw body}"`` (header ``X-Signature: t=<unix
seconds>,v1=<hex>``); ``sign`` and ``verify`` implement both ends, so the
stand-in gateway signs exactly as outreach checks.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.outreach.settings import OutreachSettings

SIGNATURE_HEADER = "X-Signature"
"""Header of signed webhooks (receipts, inbound replies)."""

OPT_OUT_REPLIES = frozenset({"T", "TD"})
"""Replies that opt the sender out of marketing SMS (trimmed, any case, full-width too)."""


class Action(StrEnum):
    """What the dispatcher does with an SMS the policy was asked about."""

    SEND = "send"
    DEFER = "defer"  # to 'scheduled', until Decision.until
    SUPPRESS = "suppress"  # to 'cancelled': never to be sent
    EXPIRE = "expire"  # the earliest allowed time is past the task's due time


@dataclass(frozen=True, slots=True)
class ContactRules:
    """The policy's settings: quiet window (local, may wrap midnight) and marketing cap."""

    zone: tzinfo
    quiet_start: time
    quiet_end: time
    marketing_cap: int
    cap_window: timedelta

    @classmethod
    def from_settings(cls, settings: OutreachSettings) -> ContactRules:
        """The rules as configured (``OUTREACH_*`` settings)."""
        start, end = settings.quiet_hours
        return cls(
            zone=settings.zone,
            quiet_start=start,
            quiet_end=end,
            marketing_cap=settings.outreach_marketing_cap,
            cap_window=timedelta(days=settings.outreach_marketing_cap_days),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer for one SMS.

    ``reason`` is the metric label (``quiet_hours``, ``frequency_cap``,
    ``opted_out``); ``note`` is the human sentence for the audit trail.
    """

    action: Action
    reason: str | None = None
    until: datetime | None = None
    note: str = ""


SEND = Decision(Action.SEND)


def quiet_hours_end(at: datetime, rules: ContactRules) -> datetime | None:
    """When the quiet window ``at`` falls in ends (UTC), or None if ``at`` is outside it.

    The window is ``[start, end)`` in local time and wraps midnight when
    ``start > end`` (21:00-08:00). ``start == end`` is an empty window.
    """
    start, end = rules.quiet_start, rules.quiet_end
    if start == end:
        return None
    local = at.astimezone(rules.zone)
    now = local.time()
    if start < end:
        if not start <= now < end:
            return None
        day = local.date()
    elif now >= start:
        day = local.date() + timedelta(days=1)  # the evening: the window ends tomorrow
    elif now < end:
        day = local.date()  # the small hours: it ends this morning
    else:
        return None
    # Through UTC, so a daylight-saving change inside the window gives the real instant.
    ends = datetime.combine(day, end, tzinfo=rules.zone).astimezone(UTC)
    return ends if ends > at else None


def cap_frees_at(
    sent: Iterable[datetime], *, cap: int, window: timedelta, now: datetime
) -> datetime | None:
    """When one more marketing SMS fits under the cap, or None if one fits ``now``.

    ``sent`` are the times of the subscriber's marketing SMS (in flight ones
    at the time they were claimed). With ``n >= cap`` of them in the window,
    the next one may go when the ``n - cap + 1``-th oldest leaves it. Only past
    sends count, so the answer never moves backwards.
    """
    recent = sorted(t for t in sent if t > now - window)
    if len(recent) < cap:
        return None
    return recent[len(recent) - cap] + window


def decide(
    *,
    marketing: bool,
    due_at: datetime | None,
    opted_out: bool,
    sent_marketing: Iterable[datetime],
    now: datetime,
    rules: ContactRules,
) -> Decision:
    """What to do with an SMS that is due now.

    Service messages always go (they are not marketing; "never twice" is the
    task's idempotency key). Marketing: opted out → suppressed; in quiet hours
    or over the cap → deferred to the first time both allow, with the reason
    that holds now (quiet hours first); if that is past ``due_at``, expired.
    """
    if not marketing:
        return SEND
    if opted_out:
        return Decision(
            Action.SUPPRESS, "opted_out", note="opted out of marketing SMS (do-not-contact list)"
        )
    if rules.marketing_cap == 0:
        note = "marketing SMS are off (OUTREACH_MARKETING_CAP=0)"
        return Decision(Action.SUPPRESS, "frequency_cap", note=note)
    sent = list(sent_marketing)
    at, reason = now, None
    # Each rule can only move the time forward, and the cap's answer never moves
    # back once it allows a time: quiet → cap → quiet settles in three steps.
    for _ in range(4):
        quiet = quiet_hours_end(at, rules)
        if quiet is not None:
            at, reason = quiet, reason or "quiet_hours"
            continue
        frees = cap_frees_at(sent, cap=rules.marketing_cap, window=rules.cap_window, now=at)
        if frees is not None:
            at, reason = frees, reason or "frequency_cap"
            continue
        break
    if reason is None:
        return SEND
    local = at.astimezone(rules.zone)
    why = (
        f"quiet hours {rules.quiet_start:%H:%M}-{rules.quiet_end:%H:%M}"
        if reason == "quiet_hours"
        else f"frequency cap of {rules.marketing_cap} marketing SMS per "
        f"{rules.cap_window.days} days"
    )
    if due_at is not None and at > due_at:
        return Decision(
            Action.EXPIRE, reason, at, f"{why}: the earliest allowed time is past its due time"
        )
    return Decision(Action.DEFER, reason, at, f"{why}: scheduled for {local:%Y-%m-%d %H:%M %Z}")


def is_opt_out_reply(text: str) -> bool:
    """True for an inbound reply that asks to stop marketing SMS ("T", "td ", full-width T)."""
    return unicodedata.normalize("NFKC", text).strip().upper() in OPT_OUT_REPLIES


# --- webhook signatures --------------------------------------------------------------


class SignatureError(ValueError):
    """A webhook's signature is missing, malformed, too old or wrong."""


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str, *, timestamp: int) -> str:
    """The ``X-Signature`` value for ``body`` signed at ``timestamp`` (unix seconds)."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify(header: str | None, body: bytes, secret: str, *, now: float, tolerance_s: float) -> None:
    """Check an ``X-Signature`` header against the raw body; raise ``SignatureError`` if bad.

    The timestamp must be within ``tolerance_s`` of ``now`` either way (a
    replayed old receipt is refused; so is one from a clock far ahead). Several
    ``v1=`` values are allowed, so a provider can sign with an old and a new
    key while the secret is rotated. Digests are compared in constant time.
    """
    if not header:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    timestamps: list[str] = []
    digests: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep and key == "t":
            timestamps.append(value)
        elif sep and key == "v1":
            digests.append(value)
    raw = timestamps[0] if len(timestamps) == 1 else ""
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 12):
        raise SignatureError(f"{SIGNATURE_HEADER} needs one t=<unix seconds>")
    timestamp = int(raw)
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError("signature timestamp is outside the accepted window")
    expected = _mac(secret, timestamp, body).encode()
    # Bytes, not str: compare_digest refuses non-ASCII str, and a header may hold any byte.
    if not any(hmac.compare_digest(expected, d.encode("utf-8", "replace")) for d in digests):
        raise SignatureError("signature does not match")
