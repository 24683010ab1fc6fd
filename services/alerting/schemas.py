"""Alerting API bodies: silences, and the rules in force."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from shared.events import SubscriberId, Tier

SilenceState = Literal["active", "pending", "expired", "all"]

MAX_SILENCE = timedelta(days=366)
"""The longest a silence may last, however its end is given: a forgotten silence
hides warnings, so it must end (and be renewed on purpose) within a year."""


class SilenceIn(BaseModel):
    """A new silence: at least one matcher, and when it ends.

    Give ``ends_at`` or ``duration_s``; ``starts_at`` defaults to now.
    """

    model_config = ConfigDict(extra="forbid")

    rule: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]{0,63}$")
    tier: Tier | None = None
    subscriber_id: SubscriberId | None = None
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    duration_s: float | None = Field(
        default=None, gt=0, le=MAX_SILENCE.total_seconds(), description="At most 366 days."
    )
    comment: str = Field(min_length=1, max_length=500, description="Why (shown to others).")
    created_by: str = Field(min_length=1, max_length=128)

    @model_validator(mode="after")
    def _matchers_and_end(self) -> SilenceIn:
        if self.rule is None and self.tier is None and self.subscriber_id is None:
            raise ValueError("a silence needs at least one of rule, tier, subscriber_id")
        if (self.ends_at is None) == (self.duration_s is None):
            raise ValueError("give exactly one of ends_at and duration_s")
        if self.ends_at is not None and self.starts_at is not None:
            # With starts_at given the window is known here; otherwise ``window`` checks it.
            _check_length(self.starts_at, self.ends_at)
        return self

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        """``(starts_at, ends_at)`` resolved against ``now``."""
        starts = self.starts_at or now
        ends = self.ends_at or starts + timedelta(seconds=self.duration_s or 0)
        _check_length(starts, ends)
        return starts, ends


def _check_length(starts: datetime, ends: datetime) -> None:
    if ends - starts > MAX_SILENCE:
        raise ValueError(
            f"a silence lasts at most {MAX_SILENCE.days} days (ends_at - starts_at); "
            "renew it when it ends"
        )


class SilenceOut(BaseModel):
    """A silence as stored, with its state at the time of the request."""

    silence_id: uuid.UUID
    rule: str | None
    tier: str | None
    subscriber_id: str | None
    starts_at: datetime
    ends_at: datetime
    comment: str
    created_by: str
    created_at: datetime
    state: Literal["active", "pending", "expired"]


class SilencePage(BaseModel):
    """Silences, newest first."""

    items: list[SilenceOut]


class RulesOut(BaseModel):
    """The rules file in force (as parsed, defaults filled in)."""

    source: str
    rules: dict[str, Any]
