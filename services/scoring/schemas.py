"""Scoring API bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

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
