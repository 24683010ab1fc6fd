"""Scoring HTTP routes."""

from __future__ import annotations

from fastapi import APIRouter, Request

from services.scoring import service
from services.scoring.schemas import ScoreOut
from shared.errors import NotFound

router = APIRouter(prefix="/v1", tags=["scores"])


@router.get("/scores/{subscriber_id}", response_model=ScoreOut)
async def get_score(subscriber_id: str, request: Request) -> ScoreOut:
    """The subscriber's latest churn risk, with the reasons behind it."""
    async with request.app.state.runtime.engine.connect() as conn:
        row = await service.get_score(conn, subscriber_id=subscriber_id)
    if row is None:
        raise NotFound("no score for this subscriber")
    return ScoreOut.model_validate(row)
