"""The KPI report's route: ``GET /v1/kpis`` (the KPIs are computed in ``feedback``).

Its scope (``tasks:read``) is given for the whole router where it is included
(``views.include_routes``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AfterValidator

from services.outreach.deps import ClockDep, EngineDep, SettingsDep
from services.outreach.feedback import KpiReport, compute_kpis, current_period
from shared.errors import error_responses

router = APIRouter(prefix="/v1", tags=["kpis"])


def _check_period(value: str | None) -> str | None:
    """Refuse years whose month bounds a datetime cannot hold, or that mean nothing here."""
    if value is not None and not 1900 <= int(value[:4]) <= 9998:
        raise ValueError("the year must be from 1900 to 9998")
    return value


PeriodQuery = Annotated[
    str | None,
    Query(
        pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$",
        description="The month, YYYY-MM in OUTREACH_TIMEZONE (year 1900-9998); "
        "default: the current month.",
        examples=["2026-11"],
    ),
    AfterValidator(_check_period),
]


@router.get("/kpis", response_model=KpiReport, responses=error_responses(422))
async def get_kpis(
    engine: EngineDep, clock: ClockDep, settings: SettingsDep, period: PeriodQuery = None
) -> KpiReport:
    """The reminder-before-suspension and win-back KPIs for a month, overall and by tier."""
    now = clock.now()
    async with engine.connect() as conn:
        return await compute_kpis(
            conn,
            period=period or current_period(settings.zone, now=now),
            zone=settings.zone,
            now=now,
        )
