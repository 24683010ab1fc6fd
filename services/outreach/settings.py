"""Outreach settings (environment variables, see README)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, SecretStr, model_validator

from shared.settings import BaseServiceSettings

DEV_GATEWAY_TOKEN = "dev-gateway-token"  # noqa: S105 - the embedded stand-in's token


class OutreachSettings(BaseServiceSettings):
    """Settings of the outreach service."""

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
    outreach_sending_stale_s: float = Field(
        default=120.0,
        gt=0,
        description="A task left in 'sending' this long (a crash mid-send) is sent again "
        "with the same idempotency key.",
    )

    @model_validator(mode="after")
    def _no_dev_token_in_production(self) -> Self:
        """The stand-in gateway's token must not reach a real provider."""
        if self.environment == "production" and (
            self.sms_gateway_token.get_secret_value() == DEV_GATEWAY_TOKEN
        ):
            raise ValueError("ENVIRONMENT=production needs an explicit SMS_GATEWAY_TOKEN")
        return self
