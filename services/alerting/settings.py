"""Alerting settings (environment variables, see README)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.crypto import PhoneKeySettings
from shared.settings import BaseServiceSettings


class AlertingSettings(PhoneKeySettings, BaseServiceSettings):
    """Settings of the alerting service.

    PHONE_KEY only seals a plain phone from a record produced before ingest sealed
    them; alerting never opens one.
    """

    alerting_port: int = Field(default=8083, ge=1, le=65535)
    alerting_consumer_group: str = "churnwatch-alerting"
    alerting_rules_file: Path | None = Field(
        default=None,
        description="The rules file (YAML); unset uses the default shipped with the service.",
    )
    alerting_control_group_percent: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description="Share of subscribers held out of rules marked control_group.",
    )
    alerting_control_group_salt: str = Field(
        default="churnwatch",
        min_length=1,
        max_length=64,
        description="Changes which subscribers fall in the control group.",
    )
    alerting_sweep_interval_s: float = Field(default=30.0, gt=0, le=3600)
    alerting_sweep_batch: int = Field(default=500, ge=1, le=100_000)
