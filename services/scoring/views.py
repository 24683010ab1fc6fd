"""Scoring HTTP routes."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scoring import listing, service
from services.scoring.batch import SCORED_FIELDS
from services.scoring.deps import EngineDep, HandlerDep, SettingsDep
from services.scoring.features import vector
from services.scoring.schemas import (
    TREND_POINTS,
    CheckpointOut,
    ListedSubscriber,
    ListingQuery,
    ModelOut,
    RiskOut,
    SubscriberPage,
    TrendPoint,
)
from shared.auth import require_scope
from shared.errors import BadRequest, NotFound, error_responses
from shared.events import ScoreReason
from shared.spreadsheet import safe_cell

# Every route reads scores: one scope for the router (shared.auth).
router = APIRouter(prefix="/v1", tags=["risk"], dependencies=[require_scope("scores:read")])


@router.get(
    "/subscribers/{subscriber_id}/risk",
    response_model=RiskOut,
    responses=error_responses(404, described={404: "No score for this subscriber yet."}),
)
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


# --- the at-risk listing (listing.py) ------------------------------------------------------

NDJSON = "application/x-ndjson"
CSV = "text/csv"
_EXPORTS = {"ndjson": NDJSON, "csv": CSV}


def _export_format(query: ListingQuery, accept: str | None) -> str | None:
    """``ndjson``, ``csv`` or None (a JSON page): the ``format`` parameter, else ``Accept``."""
    if query.format is not None:
        return None if query.format == "json" else query.format
    for part in (accept or "").split(","):
        media = part.split(";")[0].strip().lower()
        if media in (NDJSON, CSV):
            return "ndjson" if media == NDJSON else "csv"
        if media in ("application/json", "*/*", "application/*"):
            return None
    return None


_ROW_SCHEMA = {"$ref": "#/components/schemas/ListedSubscriber"}


@router.get(
    "/subscribers",
    response_model=SubscriberPage,
    summary="List subscribers at risk (paged), or export them (NDJSON, CSV)",
    responses={
        200: {
            "description": "A page (JSON), or with format/Accept the whole filtered set, "
            "streamed: NDJSON (one ListedSubscriber a line) or CSV (a header line, then "
            "the same fields).",
            "content": {
                NDJSON: {"schema": _ROW_SCHEMA},
                CSV: {"schema": {"type": "string"}},
            },
        },
        **error_responses(400, 422, 503),
    },
)
async def list_subscribers(
    query: Annotated[ListingQuery, Query()],
    engine: EngineDep,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> SubscriberPage | StreamingResponse:
    """Subscribers with a served score, highest first, filtered; paged with ``next_cursor``.

    Unknown parameters, a ``limit`` over the maximum and a reversed score range
    are 422s; a cursor that is not one of this listing's, was altered, or was
    made for other filters is a 400. An export (``format=ndjson|csv`` or the
    ``Accept`` header) streams every matching row and takes no cursor or limit.
    """
    filters = query.filters()
    export = _export_format(query, accept)
    if export is not None:
        if query.cursor is not None or query.limit is not None:
            raise BadRequest(
                "an export is the whole filtered set: it takes no cursor or limit",
                details={"parameters": ["cursor", "limit"]},
            )
        headers = {"Content-Disposition": f'attachment; filename="subscribers.{export}"'}
        return StreamingResponse(
            _export(engine, filters, export),
            media_type=_EXPORTS[export] + ("; charset=utf-8" if export == "csv" else ""),
            headers=headers,
        )
    async with engine.connect() as conn:
        rows, next_cursor, as_of = await listing.list_page(
            conn,
            filters=filters,
            limit=query.limit or listing.LIMIT_DEFAULT,
            cursor=query.cursor,
        )
    return SubscriberPage(
        items=[ListedSubscriber.model_validate(r) for r in rows],
        next_cursor=next_cursor,
        as_of=as_of,
    )


async def _export(engine: AsyncEngine, filters: listing.Filters, fmt: str) -> AsyncIterator[bytes]:
    """The filtered set as NDJSON or CSV bytes, a chunk of rows at a time."""
    async with engine.connect() as conn:  # autobegins: the server-side cursor needs it
        if fmt == "csv":
            yield _csv_lines([listing.FIELDS])
        async for part in listing.stream_listed(conn, filters=filters):
            if fmt == "csv":
                yield _csv_lines(
                    [["" if v is None else _csv_value(v) for v in row] for row in part]
                )
            else:
                yield b"".join(
                    orjson.dumps(dict(zip(listing.FIELDS, row, strict=True))) + b"\n"
                    for row in part
                )


def _csv_value(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str):
        return safe_cell(value)  # a manager id is free text: never a formula
    return str(value)


def _csv_lines(rows: list[Any]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode()
