"""Scoring HTTP routes."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter

from services.scoring import service
from services.scoring.batch import SCORED_FIELDS
from services.scoring.deps import EngineDep, HandlerDep, SettingsDep
from services.scoring.features import vector
from services.scoring.schemas import TREND_POINTS, CheckpointOut, ModelOut, RiskOut, TrendPoint
from shared.auth import require_scope
from shared.errors import NotFound
from shared.events import ScoreReason

# Every route reads scores: one scope for the router (shared.auth).
router = APIRouter(prefix="/v1", tags=["risk"], dependencies=[require_scope("scores:read")])


@router.get("/subscribers/{subscriber_id}/risk", response_model=RiskOut)
async def get_risk(subscriber_id: str, engine: EngineDep, handler: HandlerDep) -> RiskOut:
    """The subscriber's latest churn risk: score, band, reasons, model version, inputs, trend."""
    async with engine.connect() as conn:
        state = await service.get_state(conn, subscriber_id=subscriber_id)
        if state is None or "scored" not in state:
            raise NotFound("no score for this subscriber")
        daily = await service.recent_scores(conn, subscriber_id=subscriber_id, limit=TREND_POINTS)
    scored = state["scored"]
    # The current score ends the trend (a snapshot of the same moment gives way to it).
    current = TrendPoint(at=scored["event_time"], score=scored["score"])
    trend = [
        point
        for point in (TrendPoint(at=datetime.fromtimestamp(at, UTC), score=p) for at, p in daily)
        if point.at < current.at
    ]
    trend.append(current)
    # Inputs are recomputed from the stored state (the state that gave the score);
    # reasons come from the model in use now.
    x = vector(state)
    reasons = [
        ScoreReason(code=r.code, text_en=r.text_en, text_zh=r.text_zh, contribution=r.contribution)
        for r in handler.model.explain(x)
    ]
    return RiskOut(
        subscriber_id=subscriber_id,
        features=x,
        reasons=reasons,
        trend=trend,
        **{k: scored[k] for k in SCORED_FIELDS if k != "published_score"},
    )


@router.get("/model", response_model=ModelOut, tags=["model"])
async def get_model(engine: EngineDep, handler: HandlerDep, settings: SettingsDep) -> ModelOut:
    """The model in use, its label counts, prequential quality and newest checkpoint."""
    model = handler.model
    async with engine.connect() as conn:
        info = await service.checkpoint_info(
            conn, name=settings.scoring_model_name, kind=model.params.kind
        )
    return ModelOut(
        name=settings.scoring_model_name,
        kind=model.params.kind,
        version=model.version,
        labels_seen=model.labels_seen,
        positives_seen=model.positives_seen,
        min_labels=model.params.min_labels,
        weight=model.weight,
        quality=model.quality.summary() if model.quality is not None else {},
        calibration=model.calibrator.summary(),
        checkpoint=CheckpointOut.model_validate(info) if info else None,
    )
