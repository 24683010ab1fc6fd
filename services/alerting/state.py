"""What the alerting engine reads and changes per subscriber, and what it decides.

A ``SubscriberView`` holds one subscriber's profile, facts, per-rule state and
alerts (with the tasks each alert opened); a ``Silence`` is an operator's
silence; an ``Effects`` collects what handling messages decided. The engine
(:mod:`services.alerting.rule_engine`) changes them; the service
(:mod:`services.alerting.service`) loads and stores them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from services.alerting.activity import Activity
from shared.events import (
    Channel,
    OutreachTask,
    RiskScore,
    TaskKind,
    TaskUpdate,
    Tier,
)


@dataclass(frozen=True, slots=True)
class Profile:
    """What alerting knows of a subscriber, from the latest ``subscriber`` event."""

    tier: Tier = Tier.STANDARD
    monthly_value: Decimal = Decimal(0)
    account_manager_id: str | None = None
    # Sealed (shared.crypto): alerting only copies it into SMS tasks; outreach opens it.
    phone: str | None = None
    language: str = "en"
    name: str | None = None
    marketing_opt_out: bool = False


UNKNOWN = Profile()


# Payments remembered per subscriber, for a stop-notice handled after the payment
# that clears it (arrival order is not event order: two entry points, late events).
PAYMENTS_KEPT = 20
PAYMENTS_KEPT_FOR = timedelta(days=62)


@dataclass(slots=True)
class Facts:
    """What alerting remembers of a subscriber besides the profile."""

    churned_at: datetime | None = None
    bill_mean: Decimal | None = None
    bills_seen: int = 0
    # (occurred_at, amount) of the latest payments, oldest first.
    payments: list[tuple[datetime, Decimal]] = field(default_factory=list)
    # Recent bills, payments, stop-notices, complaints for the subscriber card (activity.py).
    activity: Activity = field(default_factory=dict)
    dirty: bool = False

    def remember_payment(self, at: datetime, amount: Decimal) -> None:
        """Keep a payment (the newest ``PAYMENTS_KEPT`` within ``PAYMENTS_KEPT_FOR``)."""
        kept = [p for p in self.payments if p[0] >= at - PAYMENTS_KEPT_FOR]
        kept.append((at, amount))
        kept.sort(key=lambda p: p[0])
        self.payments = kept[-PAYMENTS_KEPT:]
        self.dirty = True

    def paid_between(self, start: datetime, end: datetime) -> Decimal:
        """What the subscriber paid from ``start`` until before ``end`` (event time)."""
        return sum((amount for t, amount in self.payments if start <= t < end), Decimal(0))


@dataclass(slots=True)
class RuleState:
    """One rule's state for one subscriber: hysteresis, dwell and last firing."""

    armed: bool = True
    pending_since: datetime | None = None
    pending_score: RiskScore | None = None
    last_fired_at: datetime | None = None
    dirty: bool = False


@dataclass(slots=True)
class TaskRef:
    """A task an alert published (or held out)."""

    task_id: uuid.UUID
    channel: Channel
    queue: str | None


@dataclass(slots=True)
class Alert:
    """One firing of a rule for a subscriber, and the tasks it opened."""

    alert_id: uuid.UUID
    subscriber_id: str
    rule: str
    kind: TaskKind
    severity: int
    fired_at: datetime
    open_until: datetime
    cause_id: uuid.UUID
    held_out: bool = False
    amount_due: Decimal | None = None
    paid: Decimal = Decimal(0)
    status: str = "open"
    end_reason: str | None = None
    tasks: list[TaskRef] = field(default_factory=list)
    new: bool = False
    dirty: bool = False

    def is_open(self, at: datetime) -> bool:
        """Open and not yet past its open window at ``at``."""
        return self.status == "open" and at < self.open_until


@dataclass(slots=True)
class SubscriberView:
    """Everything the engine reads and changes for one subscriber."""

    subscriber_id: str
    profile: Profile = UNKNOWN
    facts: Facts = field(default_factory=Facts)
    states: dict[str, RuleState] = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)

    def state(self, rule: str) -> RuleState:
        """The rule's state, created armed on first use."""
        if rule not in self.states:
            self.states[rule] = RuleState()
        return self.states[rule]


@dataclass(frozen=True, slots=True)
class Silence:
    """An operator's silence: alerts matching every given matcher are not sent."""

    silence_id: uuid.UUID
    starts_at: datetime
    ends_at: datetime
    rule: str | None = None
    tier: str | None = None
    subscriber_id: str | None = None

    def matches(self, *, rule: str, tier: Tier, subscriber_id: str, now: datetime) -> bool:
        """True when active at ``now`` and every matcher it has holds."""
        return (
            self.starts_at <= now < self.ends_at
            and self.rule in (None, rule)
            and self.tier in (None, tier.value)
            and self.subscriber_id in (None, subscriber_id)
        )


@dataclass(slots=True)
class Effects:
    """What handling messages decided: messages to publish, and counts for metrics."""

    outbound: list[OutreachTask | TaskUpdate] = field(default_factory=list)
    held_out: list[OutreachTask] = field(default_factory=list)
    new_alerts: list[tuple[Alert, list[OutreachTask]]] = field(default_factory=list)
    capacity_tasks: set[uuid.UUID] = field(default_factory=set)
    fired: list[tuple[str, str]] = field(default_factory=list)
    suppressed: list[tuple[str, str]] = field(default_factory=list)
