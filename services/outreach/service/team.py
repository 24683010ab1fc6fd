"""The team lead's figures: per account manager and tier, for one month.

The workbench's team page (``workbench/pages_team.py``) shows them.

- Reminder before suspension: the KPI of ``kpis.reminder_counts`` (same
  rules: one stop-notice per subscriber and cause event, VIP tiers, suspended
  in the month and already past, not ended by a payment or a churn; reminded
  by an SMS delivered or a reached call completed before the suspension), split
  by manager, with the list of misses; plus the month's suspensions still
  ahead and how many of them are reminded already.
- Calls: outcomes recorded on claimed calls, today and per day this month,
  against the ``WORKBENCH_DAILY_CALLS`` norm.
- Saves: calls completed ``retained`` or ``offer_accepted`` in the month.
- Win-backs: the month's win-back offers that reached the subscriber, and how
  many won them back (``kpis.win_back_counts``' rules).
- Escalations: reminders escalated in the month (``tasks.escalated_at``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach.schemas import CallStatus
from services.outreach.service.kpis import reminder_notices, win_back_offers
from services.outreach.service.workbench import Scope, calls_made_query, in_scope, manager_names
from services.outreach.tables import tasks
from shared.events import CallOutcome, Channel

SAVES = (CallOutcome.RETAINED.value, CallOutcome.OFFER_ACCEPTED.value)
"""Call outcomes that count as a save."""

UNKNOWN_MANAGER = ""
"""Key of tasks without an account manager (admins see them)."""


@dataclass
class TeamRow:
    """One manager's figures in one tier."""

    manager_id: str
    tier: str
    manager_name: str = ""
    reminded: int = 0
    suspended: int = 0
    ahead_reminded: int = 0
    ahead: int = 0
    calls_today: int = 0
    calls_month: int = 0
    saves: int = 0
    won_back: int = 0
    offers_reached: int = 0
    escalated: int = 0

    def rate(self) -> float | None:
        """Reminded / suspended, None when nothing was suspended."""
        return self.reminded / self.suspended if self.suspended else None


@dataclass(frozen=True, slots=True)
class Miss:
    """A VIP suspended in the month without a reminder before it (or one escalated)."""

    subscriber_id: str
    manager_id: str
    tier: str
    suspension_at: datetime | None
    escalated_at: datetime | None


@dataclass
class TeamReport:
    """The month's figures for a scope."""

    rows: list[TeamRow] = field(default_factory=list)
    misses: list[Miss] = field(default_factory=list)
    escalations: list[dict[str, Any]] = field(default_factory=list)
    days: int = 1


async def team_report(
    conn: AsyncConnection,
    *,
    scope: Scope,
    start: datetime,
    end: datetime,
    day_start: datetime,
    now: datetime,
) -> TeamReport:
    """The figures of the managers in ``scope`` for the month ``[start, end)``, as of ``now``."""
    t = tasks.c
    rows: dict[tuple[str, str], TeamRow] = {}

    def row(manager: str | None, tier: str) -> TeamRow:
        key = (manager or UNKNOWN_MANAGER, tier)
        if key not in rows:
            rows[key] = TeamRow(key[0], tier)
        return rows[key]

    report = TeamReport()
    notices = await conn.execute(
        reminder_notices(start=start, end=end)
        .where(in_scope(scope))
        .order_by(func.min(t.suspension_at))
    )
    for n in notices:
        if n.not_suspended:
            continue
        r = row(n.manager, n.tier)
        if n.suspension_at <= now:
            r.suspended += 1
            r.reminded += int(n.reminded)
            if not n.reminded:
                report.misses.append(
                    Miss(n.subscriber_id, n.manager or "", n.tier, n.suspension_at, n.escalated_at)
                )
        else:
            r.ahead += 1
            r.ahead_reminded += int(n.reminded)

    made = calls_made_query(start, end).where(in_scope(scope)).subquery()
    for manager, tier, today, month in await conn.execute(
        select(
            made.c.account_manager_id,
            made.c.tier,
            func.count().filter(made.c.at >= day_start),
            func.count(),
        ).group_by(made.c.account_manager_id, made.c.tier)
    ):
        r = row(manager, tier)
        r.calls_today, r.calls_month = int(today), int(month)

    for manager, tier, saves in await conn.execute(
        select(t.account_manager_id, t.tier, func.count())
        .where(
            t.channel == Channel.CALL.value,
            t.status == CallStatus.COMPLETED.value,
            t.outcome.in_(SAVES),
            t.finished_at >= start,
            t.finished_at < end,
            in_scope(scope),
        )
        .group_by(t.account_manager_id, t.tier)
    ):
        row(manager, tier).saves = int(saves)

    offers = win_back_offers(start=start, end=end).where(in_scope(scope)).subquery()
    for manager, tier, won, reached_n in await conn.execute(
        select(offers.c.manager, offers.c.tier, func.count().filter(offers.c.won), func.count())
        .where(offers.c.reached)
        .group_by(offers.c.manager, offers.c.tier)
    ):
        r = row(manager, tier)
        r.won_back, r.offers_reached = int(won), int(reached_n)

    escalated = await conn.execute(
        select(tasks)
        .where(t.escalated_at >= start, t.escalated_at < end, in_scope(scope))
        .order_by(t.escalated_at.desc())
        .limit(500)
    )
    for task in escalated:
        report.escalations.append(dict(task._mapping))
        row(task.account_manager_id, task.tier).escalated += 1

    # Every manager of the scope appears, also one with nothing this month.
    if scope is not None:
        for manager in scope:
            if not any(key[0] == manager for key in rows):
                row(manager, "")
    display = await manager_names(conn, manager_ids={key[0] for key in rows if key[0]})
    for r in rows.values():
        r.manager_name = display.get(r.manager_id, r.manager_id)
    report.rows = sorted(rows.values(), key=lambda r: (r.manager_name, r.manager_id, r.tier))
    report.days = max(1, (day_start - start).days + 1)
    return report
