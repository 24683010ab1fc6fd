"""Scoring API bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from services.scoring.listing import CURSOR_MAX_CHARS, LIMIT_DEFAULT, LIMIT_MAX, Band, Filters
from shared.contract_types import Tier
from shared.events import ScoreReason

TREND_POINTS = 30
"""Most daily snapshots ``GET /v1/subscribers/{id}/risk`` returns in ``trend``."""


class TrendPoint(BaseModel):
    """One point of a subscriber's risk over time."""

    at: datetime = Field(description="Event time of the score.")
    score: float = Field(ge=0, le=1)


class RiskOut(BaseModel):
    """A subscriber's latest churn risk, why, and from which inputs."""

    subscriber_id: str
    score: float
    previous_score: float | None
    band: str = Field(description="high, medium or low (SCORING_BAND_HIGH / _MEDIUM).")
    reasons: list[ScoreReason]
    model_version: str
    features: dict[str, float] = Field(description="The inputs the score was computed from.")
    cause_event_id: uuid.UUID
    event_time: datetime
    scored_at: datetime
    trend: list[TrendPoint] = Field(
        default_factory=list,
        description="Recent scores, oldest first: the daily snapshots still held (newest "
        f"{TREND_POINTS} at most) and the current score last.",
    )


class CheckpointOut(BaseModel):
    """The newest stored checkpoint."""

    id: int
    kind: str
    created_at: datetime
    labels_seen: int
    positives_seen: int
    metrics: dict[str, Any]


class ModelOut(BaseModel):
    """The model this replica scores with, and how well it predicts."""

    name: str
    kind: str
    version: str
    labels_seen: int
    positives_seen: int
    min_labels: int
    weight: float = Field(description="The model's share of the score; the prior has the rest.")
    quality: dict[str, Any] = Field(
        description="Prequential metrics over the recent horizon labels, taken in the order "
        "they mature: what the model's weight is decided on."
    )
    calibration: dict[str, Any] = Field(
        default_factory=dict, description="The calibration of the served score (docs/scoring.md)."
    )
    checkpoint: CheckpointOut | None


class ListingQuery(BaseModel):
    """``GET /v1/subscribers``'s query: filters, paging and format; any other parameter is a 422."""

    model_config = ConfigDict(extra="forbid")

    band: list[Band] = Field(
        default_factory=list, description="Only these bands (repeat the parameter for several)."
    )
    tier: Tier | None = Field(default=None, description="Only this profile tier.")
    manager: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Only this account manager's subscribers (their id, exact).",
    )
    min_score: float | None = Field(default=None, ge=0, le=1, description="score >= this.")
    max_score: float | None = Field(default=None, ge=0, le=1, description="score <= this.")
    changed_since: AwareDatetime | None = Field(
        default=None,
        description="RFC 3339 with an offset: only rows whose score, band, tier or manager "
        "changed at or after this (changed_at).",
    )
    limit: int | None = Field(
        default=None,
        ge=1,
        le=LIMIT_MAX,
        description=f"Page size, {LIMIT_DEFAULT} if not given, at most {LIMIT_MAX}. "
        "Not for an export.",
    )
    cursor: str | None = Field(
        default=None,
        min_length=1,
        max_length=CURSOR_MAX_CHARS,
        description="next_cursor of the previous page, with the same filters. Not for an export.",
    )
    format: Literal["json", "ndjson", "csv"] | None = Field(
        default=None,
        description="json: a page (the default). ndjson or csv: the whole filtered set, "
        "streamed. Without it, Accept: application/x-ndjson or text/csv chooses.",
    )

    @model_validator(mode="after")
    def _range(self) -> Self:
        if (
            self.min_score is not None
            and self.max_score is not None
            and self.min_score > self.max_score
        ):
            raise ValueError("min_score must not be above max_score")
        return self

    def filters(self) -> Filters:
        """The listing's filters (``listing.Filters``)."""
        return Filters(
            bands=tuple(self.band),
            tier=None if self.tier is None else self.tier.value,
            manager=self.manager,
            min_score=self.min_score,
            max_score=self.max_score,
            changed_since=self.changed_since,
        )


class ListedSubscriber(BaseModel):
    """One subscriber at risk, as the listing and its export give it (no phone number)."""

    subscriber_id: str
    score: float = Field(ge=0, le=1, description="The latest served score.")
    band: Band
    tier: str | None = Field(description="The profile's tier; null before any profile.")
    account_manager_id: str | None
    changed_at: datetime | None = Field(
        description="When the score, band, tier or manager last changed (database time)."
    )


class SubscriberPage(BaseModel):
    """A page of the at-risk listing: highest score first, ties by subscriber id descending."""

    items: list[ListedSubscriber]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null: the end.")
    as_of: datetime = Field(
        description="When this walk began (its first page), or the start of the oldest scoring "
        "transaction then writing. Rows changed since are left out of the walk's later pages: "
        "find them afterwards with changed_since=as_of."
    )
