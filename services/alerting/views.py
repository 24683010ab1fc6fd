"""Alerting HTTP routes: silences and the rules in force; a subscriber's recent activity."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from services.alerting import service
from services.alerting.activity import ActivityOut, activity_out, load_activity
from services.alerting.deps import EngineDep, RulesDep, RulesSourceDep
from services.alerting.schemas import RulesOut, SilenceIn, SilenceOut, SilencePage, SilenceState
from shared.auth import require_scope
from shared.errors import BadRequest, NotFound, error_responses

# Silences and the rules in force are operators' business: the admin scope (shared.auth).
router = APIRouter(prefix="/v1", dependencies=[require_scope("admin")])

# A subscriber's recent activity is read by outreach's workbench like tasks are.
activity_router = APIRouter(
    prefix="/v1", tags=["activity"], dependencies=[require_scope("tasks:read")]
)


@activity_router.get(
    "/subscribers/{subscriber_id}/activity",
    response_model=ActivityOut,
    responses=error_responses(404, described={404: "Alerting knows nothing of this subscriber."}),
)
async def get_activity(subscriber_id: str, engine: EngineDep) -> ActivityOut:
    """The subscriber's recent bills, payments, stop-notices and complaints, newest first.

    The newest 10 of each kind alerting has handled; 404 if alerting knows
    nothing of the subscriber.
    """
    async with engine.connect() as conn:
        known, activity = await load_activity(conn, subscriber_id=subscriber_id)
    if not known:
        raise NotFound("alerting knows nothing of this subscriber")
    return activity_out(subscriber_id, activity)


def _out(row: dict[str, Any], now: datetime) -> SilenceOut:
    state = (
        "pending" if row["starts_at"] > now else "expired" if row["ends_at"] <= now else "active"
    )
    return SilenceOut.model_validate({**row, "state": state})


@router.post(
    "/silences",
    status_code=201,
    response_model=SilenceOut,
    tags=["silences"],
    responses=error_responses(
        413,
        422,
        described={400: "The window is empty or in the past, or no rule has that name."},
    ),
)
async def create_silence(body: SilenceIn, engine: EngineDep, rules: RulesDep) -> SilenceOut:
    """Silence alerts matching every given matcher (rule, tier, subscriber) until it ends."""
    now = datetime.now(UTC)
    try:
        starts, ends = body.window(now)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    if ends <= max(starts, now):
        raise BadRequest("the silence would end before it starts or in the past")
    if body.rule is not None and body.rule not in {r.name for r in rules.rules}:
        raise BadRequest(
            f"no rule named {body.rule!r}", details={"rules": [r.name for r in rules.rules]}
        )
    values = {
        "silence_id": uuid.uuid4(),
        "rule": body.rule,
        "tier": body.tier.value if body.tier else None,
        "subscriber_id": body.subscriber_id,
        "starts_at": starts,
        "ends_at": ends,
        "comment": body.comment,
        "created_by": body.created_by,
        "created_at": now,
    }
    async with engine.begin() as conn:
        row = await service.create_silence(conn, values=values)
    return _out(row, now)


@router.get(
    "/silences", response_model=SilencePage, tags=["silences"], responses=error_responses(422)
)
async def list_silences(
    engine: EngineDep,
    state: SilenceState = "active",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> SilencePage:
    """Silences in a state (active by default), newest first."""
    now = datetime.now(UTC)
    async with engine.connect() as conn:
        rows = await service.list_silences(conn, state=state, now=now, limit=limit)
    return SilencePage(items=[_out(r, now) for r in rows])


@router.get(
    "/silences/{silence_id}",
    response_model=SilenceOut,
    tags=["silences"],
    responses=error_responses(404, 422),
)
async def get_silence(silence_id: uuid.UUID, engine: EngineDep) -> SilenceOut:
    """One silence."""
    async with engine.connect() as conn:
        row = await service.get_silence(conn, silence_id=silence_id)
    if row is None:
        raise NotFound(f"no silence {silence_id}")
    return _out(row, datetime.now(UTC))


@router.delete(
    "/silences/{silence_id}",
    status_code=204,
    tags=["silences"],
    responses=error_responses(404, 422),
)
async def delete_silence(silence_id: uuid.UUID, engine: EngineDep) -> Response:
    """End a silence now; it stays listed as expired."""
    async with engine.begin() as conn:
        row = await service.expire_silence(conn, silence_id=silence_id, now=datetime.now(UTC))
    if row is None:
        raise NotFound(f"no silence {silence_id}")
    return Response(status_code=204)


@router.get("/rules", response_model=RulesOut, tags=["rules"])
async def rules_in_force(rules: RulesDep, source: RulesSourceDep) -> RulesOut:
    """The rules file alerting runs with, as parsed (defaults filled in)."""
    return RulesOut(
        source=str(source),
        rules=rules.model_dump(mode="json", by_alias=True),
    )
