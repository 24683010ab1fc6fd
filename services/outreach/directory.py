"""The subscriber card's other sources: scoring's risk and alerting's recent activity.

Outreach keeps tasks; what a manager also wants on a subscriber's card lives in
the other services:

- scoring, ``GET /v1/subscribers/{id}/risk``: the risk now, its band and
  reasons (English and Chinese), and its recent trend (``RiskView``);
- alerting, ``GET /v1/subscribers/{id}/activity``: the recent bills,
  payments, stop-notices and complaints (``ActivityView``).

``SubscriberDirectory`` asks them over HTTP (``OUTREACH_SCORING_URL``,
``OUTREACH_ALERTING_URL``, with ``OUTREACH_SERVICES_API_KEY`` as ``X-API-Key``)
with short timeouts. The card is useful without them: any error, a 404 or a
service not configured gives None, logged (never with the subscriber's id or
phone) rather than raised. The app's lifespan makes one for the app's life
(None when neither URL is set); pages take it as a ``deps.DirectoryDep`` parameter.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from decimal import Decimal
from typing import Any, Self
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.outreach.settings import OutreachSettings

log = logging.getLogger(__name__)

TIMEOUT_S = 1.5
"""Per request to scoring or alerting: a page waits at most this long for either."""


class _View(BaseModel):
    """Read-only, and tolerant of fields the other service adds later."""

    model_config = ConfigDict(frozen=True, extra="ignore")


# --- scoring ------------------------------------------------------------------------------


class ReasonView(_View):
    """One reason for a risk score, in both languages."""

    code: str
    text_en: str
    text_zh: str

    def text(self, language: str) -> str:
        """The reason in ``language`` ('zh' or else English)."""
        return self.text_zh if language == "zh" and self.text_zh else self.text_en


class RiskView(_View):
    """A subscriber's churn risk now, why, and how it moved."""

    score: float = Field(ge=0, le=1)
    band: str = Field(description="high, medium or low.")
    reasons: list[ReasonView] = Field(default_factory=list)
    trend: list[tuple[datetime, float]] = Field(
        default_factory=list, description="(event time, score), oldest first; the current last."
    )
    model_version: str | None = None
    event_time: datetime | None = None

    @classmethod
    def from_api(cls, body: dict[str, Any]) -> Self:
        """Parse scoring's ``RiskOut`` (``trend`` items are ``{at, score}`` objects)."""
        trend = [(point["at"], point["score"]) for point in body.get("trend") or ()]
        return cls.model_validate({**body, "trend": trend})


# --- alerting -----------------------------------------------------------------------------


class BillView(_View):
    """A monthly bill."""

    at: datetime
    period: str
    amount_due: Decimal
    amount_paid: Decimal = Decimal(0)
    plan_id: str | None = None
    plan_change: str = "none"
    due_date: datetime | None = None


class PaymentView(_View):
    """A payment received."""

    at: datetime
    amount: Decimal
    method: str = "other"
    period: str | None = None
    late: bool = False


class StopNoticeView(_View):
    """A scheduled suspension for unpaid bills."""

    at: datetime
    reason: str
    suspension_at: datetime
    amount_to_pay: Decimal


class ComplaintView(_View):
    """A complaint the subscriber raised."""

    at: datetime
    category: str
    severity: str
    resolved: bool = False


class ActivityView(_View):
    """A subscriber's recent bills, payments, stop-notices and complaints, newest first."""

    bills: list[BillView] = Field(default_factory=list)
    payments: list[PaymentView] = Field(default_factory=list)
    stop_notices: list[StopNoticeView] = Field(default_factory=list)
    complaints: list[ComplaintView] = Field(default_factory=list)


# --- the client -----------------------------------------------------------------------------


class SubscriberDirectory:
    """Reads a subscriber's risk (scoring) and recent activity (alerting) for the card.

    Give it an ``httpx.AsyncClient`` per service (``base_url`` set), or None for
    a service not configured; ``from_settings`` builds them. ``aclose`` closes
    the clients it was given.
    """

    def __init__(
        self, *, scoring: httpx.AsyncClient | None, alerting: httpx.AsyncClient | None
    ) -> None:
        self.scoring = scoring
        self.alerting = alerting

    @classmethod
    def from_settings(
        cls, settings: OutreachSettings, *, timeout_s: float = TIMEOUT_S
    ) -> SubscriberDirectory | None:
        """One on ``OUTREACH_SCORING_URL`` / ``OUTREACH_ALERTING_URL``; None if neither is set."""
        if not settings.outreach_scoring_url and not settings.outreach_alerting_url:
            return None
        key = settings.outreach_services_api_key
        headers = {"X-API-Key": key.get_secret_value()} if key is not None else {}

        def client(url: str | None) -> httpx.AsyncClient | None:
            if not url:
                return None
            return httpx.AsyncClient(
                base_url=url, headers=headers, timeout=httpx.Timeout(timeout_s)
            )

        return cls(
            scoring=client(settings.outreach_scoring_url),
            alerting=client(settings.outreach_alerting_url),
        )

    async def aclose(self) -> None:
        """Close the HTTP clients."""
        for http in (self.scoring, self.alerting):
            if http is not None:
                await http.aclose()

    async def risk(self, subscriber_id: str) -> RiskView | None:
        """The subscriber's risk now, reasons and trend; None if unknown or unavailable."""
        body = await self._get(self.scoring, "scoring", subscriber_id, "risk")
        if body is None:
            return None
        try:
            return RiskView.from_api(body)
        except (ValidationError, KeyError, TypeError):
            _unexpected("scoring")
            return None

    async def activity(self, subscriber_id: str) -> ActivityView | None:
        """Recent bills, payments, stop-notices and complaints; None if unavailable."""
        body = await self._get(self.alerting, "alerting", subscriber_id, "activity")
        if body is None:
            return None
        try:
            return ActivityView.model_validate(body)
        except ValidationError:
            _unexpected("alerting")
            return None

    async def card(self, subscriber_id: str) -> tuple[RiskView | None, ActivityView | None]:
        """``risk`` and ``activity`` at once (the two requests run concurrently)."""
        risk, activity = await asyncio.gather(
            self.risk(subscriber_id), self.activity(subscriber_id)
        )
        return risk, activity

    async def _get(
        self, http: httpx.AsyncClient | None, service: str, subscriber_id: str, what: str
    ) -> dict[str, Any] | None:
        """The JSON body of ``/v1/subscribers/{id}/{what}``, or None (logged) on any failure."""
        if http is None:
            return None
        path = f"/v1/subscribers/{quote(subscriber_id, safe='')}/{what}"
        try:
            response = await http.get(path)
        except httpx.HTTPError as exc:
            log.warning(
                "subscriber card: %s unreachable",
                service,
                extra={"service": service, "what": what, "error": type(exc).__name__},
            )
            return None
        if response.status_code == 404:
            return None  # nothing known of this subscriber there: not a failure
        if response.status_code != 200:
            log.warning(
                "subscriber card: %s answered %s",
                service,
                response.status_code,
                extra={"service": service, "what": what, "status": response.status_code},
            )
            return None
        try:
            body = response.json()
        except ValueError:
            log.warning("subscriber card: %s sent no JSON", service, extra={"service": service})
            return None
        return body if isinstance(body, dict) else None


def _unexpected(service: str) -> None:
    """Log a body that is not what the service's API promises (no values: they are personal)."""
    log.warning("subscriber card: %s sent an unexpected body", service, extra={"service": service})
