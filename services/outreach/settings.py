"""Outreach settings (environment variables, see README)."""

from __future__ import annotations

from datetime import time
from typing import Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, model_validator

from shared.clock import ClockKind
from shared.crypto import PhoneKeySettings
from shared.settings import BaseServiceSettings

DEV_GATEWAY_TOKEN = "dev-gateway-token"  # noqa: S105 - the embedded stand-in's token
DEV_RECEIPT_SECRET = "dev-receipt-secret"  # noqa: S105 - the embedded stand-in's HMAC key

SmppTon = Literal[0, 1, 2, 3, 4, 5, 6]
"""SMPP 3.4's type of number (5.2.5)."""
SmppNpi = Literal[0, 1, 3, 4, 6, 8, 9, 10, 14, 18]
"""SMPP 3.4's numbering plan indicator (5.2.6)."""


class OutreachSettings(PhoneKeySettings, BaseServiceSettings):
    """Settings of the outreach service (PHONE_KEY opens tasks' phones and seals them at rest)."""

    outreach_port: int = Field(default=8084, ge=1, le=65535)
    outreach_consumer_group: str = "churnwatch-outreach"
    sms_gateway_url: str = "http://127.0.0.1:8085"
    sms_gateway_token: SecretStr = SecretStr(DEV_GATEWAY_TOKEN)
    sms_sender_id: str = Field(default="Churnwatch", max_length=11)
    sms_timeout_s: float = Field(default=10.0, gt=0)
    sms_max_attempts: int = Field(default=5, ge=1, le=50)
    sms_retry_base_s: float = Field(default=2.0, gt=0)
    outreach_dispatch_interval_s: float = Field(default=1.0, gt=0)
    outreach_dispatch_batch: int = Field(default=50, ge=1, le=1000)
    outreach_sms_hold_s: float = Field(
        default=3.0,
        ge=0,
        le=600,
        description="A new SMS task waits this long before it may be sent, so a cancellation "
        "on its way (a payment just behind the notice it clears) overtakes it.",
    )
    outreach_sending_stale_s: float = Field(
        default=120.0,
        gt=0,
        description="A task left in 'sending' this long (a crash mid-send) is sent again "
        "with the same idempotency key.",
    )
    sms_reconcile_interval_s: float = Field(
        default=30.0, gt=0, description="How often the reconciler looks for SMS to ask about."
    )
    sms_reconcile_after_s: float = Field(
        default=60.0,
        gt=0,
        description="An SMS in 'sending' or 'sent' this long without news is asked about "
        "(then again at growing intervals, at most hourly).",
    )
    sms_final_state_deadline_s: float = Field(
        default=86_400.0,
        gt=0,
        description="An SMS whose fate the provider has not told by this long after it was "
        "sent becomes 'unknown' (counted, alerted on).",
    )

    # --- the SMSC over SMPP 3.4 (smpp.py), with SMS_TRANSPORT=smpp ---
    sms_transport: Literal["http", "smpp"] = Field(
        default="http",
        description="How SMS go out: 'http' (the JSON provider protocol, SMS_GATEWAY_*) or "
        "'smpp' (SMPP 3.4 to the operator's SMSC, SMPP_*).",
    )
    smpp_host: str = Field(default="127.0.0.1", description="The SMSC's host name or address.")
    smpp_port: int = Field(default=2775, ge=1, le=65535, description="The SMSC's SMPP port.")
    smpp_system_id: str = Field(
        default="churnwatch", min_length=1, max_length=15, description="The bind's system_id."
    )
    smpp_password: SecretStr = Field(
        default=SecretStr(""), description="The bind's password (at most 8 characters, SMPP 3.4)."
    )
    smpp_system_type: str = Field(
        default="", max_length=12, description="The bind's system_type (empty unless asked for)."
    )
    smpp_source_addr: str = Field(
        default="Churnwatch",
        min_length=1,
        max_length=20,
        description="source_addr of every submit_sm: an alphanumeric sender or a short code.",
    )
    smpp_source_ton: SmppTon = Field(
        default=5, description="source_addr_ton: 5 alphanumeric, 3 short code, 1 international."
    )
    smpp_source_npi: SmppNpi = Field(default=0, description="source_addr_npi (0 unknown).")
    smpp_dest_ton: SmppTon = Field(default=1, description="dest_addr_ton (1: international).")
    smpp_dest_npi: SmppNpi = Field(default=1, description="dest_addr_npi (1: ISDN, E.164).")
    smpp_window: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Most submit_sm sent and not yet answered at once (the SMSC's window).",
    )
    smpp_enquire_link_s: float = Field(
        default=30.0, gt=0, le=3600, description="enquire_link after this long without traffic."
    )
    smpp_response_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="A submit_sm unanswered this long counts as lost with the connection; the "
        "session is dropped and rebound.",
    )
    smpp_reconnect_max_s: float = Field(
        default=30.0, gt=0, le=3600, description="Longest wait between two bind attempts."
    )
    smpp_throttle_backoff_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="First pause after ESME_RTHROTTLED or ESME_RMSGQFUL; doubles while they go on.",
    )

    sms_rate_limit_per_s: float = Field(
        default=20.0,
        gt=0,
        le=10_000,
        description="SMS send rate of the whole deployment (messages per second), shared by all "
        "outreach replicas through PostgreSQL.",
    )
    sms_receipt_secret: SecretStr = Field(
        default=SecretStr(DEV_RECEIPT_SECRET),
        description="HMAC-SHA256 key that signs delivery receipts and inbound replies.",
    )
    sms_receipt_tolerance_s: float = Field(
        default=300.0, gt=0, description="Oldest receipt timestamp accepted (replay guard)."
    )
    outreach_timezone: str = Field(
        default="UTC", description="Time zone of quiet hours and KPI months."
    )
    outreach_quiet_hours: str = Field(
        default="21:00-08:00",
        pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$",
        description="No marketing SMS in this local window; they wait for its end.",
    )
    outreach_marketing_cap: int = Field(
        default=3, ge=0, description="Most marketing SMS per subscriber per cap window."
    )
    outreach_marketing_cap_days: int = Field(default=30, ge=1, le=366)
    outreach_general_queue: str = Field(default="general", min_length=1, max_length=80)
    outreach_assignment_timeout_s: float = Field(
        default=1800.0, gt=0, description="A claimed call not finished in this time is requeued."
    )
    outreach_relay_interval_s: float = Field(
        default=1.0, gt=0, description="How often the outbox relay publishes task outcomes."
    )
    outreach_kpi_interval_s: float = Field(
        default=60.0, gt=0, description="How often the KPI gauges are recomputed."
    )

    outreach_clock: ClockKind = Field(
        default="wall",
        description="'stream' only for replays and simulations (churnwatch up --simulate): "
        "outreach's time is then the newest task time it has consumed, so a reminder's "
        "deadline is judged against the replayed day (shared/clock.py).",
    )

    # --- the workbench (services/outreach/workbench) ---
    workbench_session_idle_s: float = Field(
        default=8 * 3600.0, gt=0, description="A session unused this long is signed out."
    )
    workbench_session_max_s: float = Field(
        default=12 * 3600.0, gt=0, description="A session is signed out this long after sign-in."
    )
    workbench_lockout_failures: int = Field(
        default=5, ge=1, le=100, description="Failed sign-ins in a row that lock an account."
    )
    workbench_lockout_s: float = Field(
        default=900.0, gt=0, description="How long a locked account stays locked."
    )
    workbench_secure_cookies: bool | None = Field(
        default=None,
        description="Secure session cookies: None sets them when the request came over TLS "
        "(directly or per X-Forwarded-Proto from the ingress).",
    )
    workbench_daily_calls: int = Field(
        default=10, ge=1, le=200, description="The calls-a-day norm of an account manager."
    )
    # --- escalation of VIP reminders (escalation.py) ---
    outreach_escalation_margin_s: float = Field(
        default=4 * 3600.0,
        gt=0,
        description="A VIP's pre-suspension reminder not done this long before the suspension "
        "is escalated to the team lead's page.",
    )
    outreach_escalation_sms_fallback: bool = Field(
        default=False,
        description="On escalation, also send the reminder SMS if none was delivered.",
    )
    outreach_escalation_interval_s: float = Field(
        default=30.0, gt=0, description="How often reminders are checked for escalation."
    )
    # --- the subscriber card's other sources (directory.py): scoring's and alerting's APIs ---
    outreach_scoring_url: str | None = Field(
        default=None, description="Scoring's base URL: risk now, its reasons and trend."
    )
    outreach_alerting_url: str | None = Field(
        default=None,
        description="Alerting's base URL: recent bills, payments, stop-notices, complaints.",
    )
    outreach_services_api_key: SecretStr | None = Field(
        default=None, description="The API key outreach sends to scoring and alerting."
    )

    @model_validator(mode="after")
    def _no_dev_secrets_in_production(self) -> Self:
        """The stand-in gateway's token and receipt key must not reach a real provider."""
        if self.environment == "production":
            dev_token = self.sms_gateway_token.get_secret_value() == DEV_GATEWAY_TOKEN
            if self.sms_transport == "http" and dev_token:
                raise ValueError("ENVIRONMENT=production needs an explicit SMS_GATEWAY_TOKEN")
            if self.sms_receipt_secret.get_secret_value() == DEV_RECEIPT_SECRET:
                raise ValueError("ENVIRONMENT=production needs an explicit SMS_RECEIPT_SECRET")
        return self

    @model_validator(mode="after")
    def _smpp_complete(self) -> Self:
        """SMS_TRANSPORT=smpp needs the bind's password, within SMPP 3.4's 8 characters."""
        if self.sms_transport == "smpp":
            password = self.smpp_password.get_secret_value()
            if not password:
                raise ValueError("SMS_TRANSPORT=smpp needs SMPP_PASSWORD")
            if len(password) > 8:
                raise ValueError("SMPP_PASSWORD: at most 8 characters (SMPP 3.4)")
        return self

    @model_validator(mode="after")
    def _known_timezone(self) -> Self:
        try:
            ZoneInfo(self.outreach_timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"OUTREACH_TIMEZONE: unknown time zone {self.outreach_timezone!r}"
            ) from exc
        return self

    @property
    def zone(self) -> ZoneInfo:
        """The operator's time zone (quiet hours, KPI months)."""
        return ZoneInfo(self.outreach_timezone)

    @property
    def quiet_hours(self) -> tuple[time, time]:
        """``(start, end)`` of the quiet window, local times; it may wrap midnight."""
        start, end = self.outreach_quiet_hours.split("-")
        return time.fromisoformat(start), time.fromisoformat(end)
