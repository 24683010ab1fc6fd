"""The team lead's page and its CSV export (team leads and admins; managers get a 403).

Per account manager and tier, for a month (``?period=YYYY-MM``, default the
current one in ``OUTREACH_TIMEZONE``): reminder-before-suspension rate with the
misses, calls today and per day against the norm, saves, win-backs, and the
reminders escalated (``service.team``).
"""

from __future__ import annotations

import csv
import io
import re

from fastapi import APIRouter, Request
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import HTMLResponse, Response

from services.outreach.deps import ClockDep, EngineDep, SettingsDep
from services.outreach.feedback import current_period, month_bounds
from services.outreach.service import Role, TeamReport, team_report
from services.outreach.settings import OutreachSettings
from services.outreach.workbench.web import (
    PageError,
    Viewer,
    local_day,
    render,
    viewer,
)
from shared.clock import Clock
from shared.spreadsheet import safe_cell

router = APIRouter(prefix="/ui", include_in_schema=False)

PERIOD = re.compile(r"^(19[0-9]{2}|[2-9][0-9]{3})-(0[1-9]|1[0-2])$")

CSV_COLUMNS = (
    "period",
    "manager_id",
    "manager_name",
    "tier",
    "reminded_before_suspension",
    "suspended",
    "reminder_rate",
    "suspensions_ahead",
    "ahead_reminded",
    "calls_today",
    "calls_month",
    "calls_per_day",
    "daily_norm",
    "saves",
    "won_back",
    "win_back_offers_reached",
    "escalated",
)
"""The CSV export's header."""


async def _report(
    request: Request,
    period: str | None,
    *,
    engine: AsyncEngine,
    clock: Clock,
    settings: OutreachSettings,
) -> tuple[Viewer, str, TeamReport]:
    view = await viewer(request)
    if view.person.role is Role.MANAGER:
        raise PageError(403, "error_team_only")
    now = clock.now()
    chosen = period or current_period(settings.zone, now=now)
    if not PERIOD.match(chosen) or chosen == "9999-12":
        raise PageError(422, "error_period")
    start, end = month_bounds(chosen, settings.zone)
    day_start, _ = local_day(min(now, end), settings.zone)
    async with engine.connect() as conn:
        report = await team_report(
            conn, scope=view.scope, start=start, end=end, day_start=day_start, now=now
        )
    return view, chosen, report


@router.get("/team")
async def team(
    request: Request,
    engine: EngineDep,
    clock: ClockDep,
    settings: SettingsDep,
    period: str | None = None,
) -> HTMLResponse:
    """The team lead's page."""
    view, chosen, report = await _report(
        request, period, engine=engine, clock=clock, settings=settings
    )
    return render(
        request,
        "team.html",
        lang=view.lang,
        view=view,
        active="team",
        period=chosen,
        report=report,
        norm=settings.workbench_daily_calls,
    )


@router.get("/team.csv")
async def team_csv(
    request: Request,
    engine: EngineDep,
    clock: ClockDep,
    settings: SettingsDep,
    period: str | None = None,
) -> Response:
    """The team lead's figures as CSV (one row per manager and tier)."""
    _, chosen, report = await _report(
        request, period, engine=engine, clock=clock, settings=settings
    )
    norm = settings.workbench_daily_calls
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for r in report.rows:
        rate = r.rate()
        writer.writerow(
            [
                chosen,
                r.manager_id,
                safe_cell(r.manager_name),
                r.tier,
                r.reminded,
                r.suspended,
                "" if rate is None else f"{rate:.4f}",
                r.ahead,
                r.ahead_reminded,
                r.calls_today,
                r.calls_month,
                f"{r.calls_month / report.days:.2f}",
                norm,
                r.saves,
                r.won_back,
                r.offers_reached,
                r.escalated,
            ]
        )
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="team-{chosen}.csv"',
            "Cache-Control": "no-store",
        },
    )
