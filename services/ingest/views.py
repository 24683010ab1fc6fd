"""Ingest HTTP routes: ``POST /v1/events`` and the JSON Schemas."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from services.ingest import metrics
from services.ingest.deps import (
    OffsetLedgerDep,
    ProducerDep,
    SettingsDep,
    TopicGuardDep,
    TopicsDep,
    TracingDep,
)
from services.ingest.schemas import IngestResult
from services.ingest.service import produce_events, split_body, validate_items
from shared.auth import require_scope
from shared.errors import NotFound, PayloadTooLarge, UnprocessableEntity, error_responses
from shared.events import Event, json_schemas

# The billing system's key: posting events and reading their schemas (shared.auth).
router = APIRouter(prefix="/v1", tags=["events"], dependencies=[require_scope("events:write")])


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"body is {declared} bytes; the limit is {limit} (INGEST_MAX_BODY_BYTES)",
            details={"limit": limit, "setting": "INGEST_MAX_BODY_BYTES"},
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # chunked bodies have no Content-Length to check up front
            raise PayloadTooLarge(
                f"body exceeds the limit of {limit} bytes (INGEST_MAX_BODY_BYTES)",
                details={"limit": limit, "setting": "INGEST_MAX_BODY_BYTES"},
            )
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/events",
    status_code=202,
    response_model=IngestResult,
    responses=error_responses(
        described={
            400: "The body is not valid JSON (application/json).",
            413: "Body or batch over its limit (INGEST_MAX_BODY_BYTES, INGEST_MAX_BATCH_EVENTS).",
            415: "Neither JSON nor NDJSON.",
            422: "No valid event in the request; details lists each rejection.",
            503: "Broker unreachable or topic missing (or the API-key database is down); "
            "nothing accepted; see Retry-After.",
        }
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Event"}},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
        }
    },
)
async def post_events(
    request: Request,
    settings: SettingsDep,
    producer: ProducerDep,
    guard: TopicGuardDep,
    ledger: OffsetLedgerDep,
    topics: TopicsDep,
    tracing: TracingDep,
) -> JSONResponse:
    """Accept one event, a JSON array of events, or NDJSON (one event per line).

    Each event is validated on its own. The valid ones are produced to Kafka and
    the answer is 202 only after the broker acknowledged all of them.
    """
    body = await _read_body(request, settings.ingest_max_body_bytes)
    items = split_body(
        body, request.headers.get("content-type", ""), max_events=settings.ingest_max_batch_events
    )
    metrics.BATCH_SIZE.observe(len(items))
    valid, rejected = validate_items(items)
    metrics.EVENTS.labels("unknown", "rejected").inc(len(rejected))
    result = IngestResult(accepted=len(valid), rejected=rejected)
    if not valid:
        raise UnprocessableEntity(
            "no valid event in the request", details=result.model_dump(mode="json")
        )
    try:
        await produce_events(
            producer=producer,
            guard=guard,
            ledger=ledger,
            topics=topics,
            events=valid,
            timeout_s=settings.ingest_produce_timeout_s,
            retry_after_s=settings.ingest_retry_after_s,
            settle_s=settings.ingest_topic_settle_s,
            tracing=tracing,
        )
    except Exception:
        _count(valid, "unavailable")
        raise
    _count(valid, "accepted")
    return JSONResponse(result.model_dump(mode="json"), status_code=202)


def _count(events: Sequence[Event], result: str) -> None:
    # One label lookup per event type, not per event (profiled: 3% of ingest).
    for event_type, n in Counter(e.event_type for e in events).items():
        metrics.EVENTS.labels(event_type, result).inc(n)


@router.get("/schemas", tags=["schemas"])
async def list_schemas() -> dict[str, Any]:
    """JSON Schema of every event type (and of the messages between services)."""
    return json_schemas()


@router.get(
    "/schemas/{name}",
    tags=["schemas"],
    responses=error_responses(404, described={404: "No schema of that name."}),
)
async def get_schema(name: str) -> dict[str, Any]:
    """JSON Schema of one event type, e.g. ``stop_notice``."""
    schemas = json_schemas()
    if name not in schemas:
        raise NotFound(f"no schema named {name!r}", details={"known": sorted(schemas)})
    return schemas[name]
