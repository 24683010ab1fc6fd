"""Alerting settings (environment variables, see README)."""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field

from shared.settings import BaseServiceSettings


class AlertingSettings(BaseServiceSettings):
    """Settings of the alerting service."""

    alerting_port: int = Field(default=8083, ge=1, le=65535)
    alerting_consumer_group: str = "churnwatch-alerting"
    alerting_retention_threshold: float = Field(default=0.7, gt=0, lt=1)
    alerting_high_value: Decimal = Field(
        default=Decimal(50),
        ge=0,
        description="Monthly value from which a retention task is a call, not an SMS.",
    )
