"""Scoring API bodies."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel


class ScoreOut(BaseModel):
    """A subscriber's latest churn risk."""

    subscriber_id: str
    score: float
    previous_score: float | None
    model_version: str
    reasons: list[str]
    cause_event_id: uuid.UUID
    event_time: datetime
    scored_at: datetime
