"""Ingest API bodies."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Rejection(BaseModel):
    """One event that was refused, and why."""

    index: int = Field(description="Position of the event in the request (0-based).")
    event_id: str | None = Field(description="The event's event_id, if it could be read.")
    errors: list[dict[str, Any]]


class IngestResult(BaseModel):
    """Answer to ``POST /v1/events``: 202 once the broker acknowledged every accepted event."""

    accepted: int
    rejected: list[Rejection] = Field(default_factory=list)
