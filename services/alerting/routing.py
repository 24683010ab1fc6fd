"""Where an alert's tasks go: routes, the control group, and managers' daily capacity.

A rule's routes are matched against the subscriber's profile; a deterministic
share of subscribers is held out as the control group; capacity-limited calls
compete for a place in an account manager's day (the consumer and the backtest
use :func:`allocate` and :func:`capacity_day`).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import date, datetime

from services.alerting.rules import Match, Route, Rule, RulesFile
from services.alerting.state import Profile


def in_control_group(subscriber_id: str, *, percent: float, salt: str) -> bool:
    """Deterministic hold-out: the same subscriber is always in or always out."""
    if percent <= 0:
        return False
    digest = hashlib.sha256(f"{salt}:{subscriber_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < percent * 100


def matches(match: Match, profile: Profile) -> bool:
    """Whether a route's conditions hold for this profile."""
    return (
        (match.tiers is None or profile.tier in match.tiers)
        and (match.min_monthly_value is None or profile.monthly_value >= match.min_monthly_value)
        and (match.max_monthly_value is None or profile.monthly_value <= match.max_monthly_value)
        and (
            match.has_account_manager is None
            or match.has_account_manager == (profile.account_manager_id is not None)
        )
    )


def routes_for(rule: Rule, profile: Profile) -> list[Route]:
    """The routes a rule takes for a profile: the first match, and more while ``continue``."""
    chosen: list[Route] = []
    for route in rule.routes:
        if matches(route.match, profile):
            chosen.append(route)
            if not route.continue_:
                break
    return chosen


def allocate(
    load: list[tuple[uuid.UUID, float]], *, capacity: int, priority: float
) -> tuple[bool, uuid.UUID | None]:
    """Whether a new call of ``priority`` joins a manager's day, and which call it bumps.

    ``load`` is the day's capacity-limited calls already with the manager. With
    room, the call joins. When the day is full, a call more urgent than the
    least urgent one takes its place (that one spills to the overflow queue);
    otherwise the new call spills.
    """
    if len(load) < capacity:
        return True, None
    if not load:
        return False, None
    lowest_id, lowest = min(load, key=lambda item: (item[1], str(item[0])))
    if priority > lowest:
        return True, lowest_id
    return False, None


def capacity_day(at: datetime, rules: RulesFile) -> date:
    """``at``'s calendar day in the capacity time zone."""
    return at.astimezone(rules.capacity.zone).date()
