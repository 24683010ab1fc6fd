"""The alerting engine: what one event or score does to one subscriber's alerts.

Pure and synchronous: it reads and changes a ``SubscriberView`` (profile,
facts, per-rule state, open alerts) and writes what should happen into an
``Effects``; the consumer loads the views for a batch, runs every message
through the engine in order, then stores the changed views and publishes the
effects in the same transaction. Time is the message's own time (event time,
or the score's event time), so a replay of history fires the same alerts at
the same moments as the live run did.

Semantics (Alertmanager's, applied per subscriber):

- **dedup**: one open alert per subscriber per task kind; a rule of higher
  severity supersedes an open alert of a lower one (medium risk turning high);
- **repeat interval**: after a kind fired, it does not fire again within the
  rule's ``repeat_interval`` (unless a more severe rule escalates);
- **hysteresis**: score rules fire on an upward crossing and re-arm only below
  ``rearm_below``; ``dwell`` asks the score to stay up before firing;
- **inhibition**: an open alert of one kind stops new tasks of others;
- **silences**: operator-made matchers on rule, tier and subscriber;
- **control group**: a deterministic share of subscribers is held out;
- **cancellation**: payments cancel reminders, a churn cancels retention and
  care, a reactivation closes a win-back as won back.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from services.alerting.activity import Activity, remember_event
from services.alerting.rules import (
    ArrearsTrigger,
    BillShockTrigger,
    ChurnTrigger,
    Match,
    Route,
    Rule,
    RulesFile,
    ScoreTrigger,
    StopNoticeTrigger,
)
from shared.events import (
    ArrearsEvent,
    BillingEvent,
    Channel,
    ChurnEvent,
    Event,
    OutreachTask,
    PaymentEvent,
    ReactivationEvent,
    RiskScore,
    StopNoticeEvent,
    TaskAction,
    TaskKind,
    TaskUpdate,
    Tier,
    UpdateCause,
    derive_id,
)

# Weight of a new bill in the subscriber's usual bill (exponentially weighted
# mean): about the last four bills count.
BILL_ALPHA = Decimal("0.25")


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


@dataclass(frozen=True, slots=True)
class Firing:
    """Why and when a rule fires: the facts the tasks are built from."""

    rule: Rule
    at: datetime
    cause_id: uuid.UUID
    reasons: list[str]
    reason_codes: list[str]
    params: dict[str, str]
    risk: float | None = None
    due_at: datetime | None = None
    not_before: datetime | None = None
    amount_due: Decimal | None = None
    paid: Decimal = Decimal(0)  # of amount_due, already (a payment handled before)


@dataclass(frozen=True, slots=True)
class Ctx:
    """What every step of handling one message for one subscriber works with."""

    view: SubscriberView
    effects: Effects
    silences: list[Silence]
    now: datetime  # wall clock, for silences; rules run on the message's own time


class Engine:
    """Evaluates the rules of one rules file."""

    def __init__(
        self, rules: RulesFile, *, control_percent: float = 0.0, control_salt: str = ""
    ) -> None:
        self.rules = rules
        self.control_percent = control_percent
        self.control_salt = control_salt

    # --- entry points ---------------------------------------------------------

    def handle(
        self,
        message: Event | RiskScore,
        view: SubscriberView,
        effects: Effects,
        *,
        silences: list[Silence],
        now: datetime,
    ) -> None:
        """Apply one event or score to a subscriber's view."""
        ctx = Ctx(view, effects, silences, now)
        if (activity := remember_event(view.facts.activity, message)) is not None:
            view.facts.activity, view.facts.dirty = activity, True
        if isinstance(message, RiskScore):
            self._on_score(message, ctx)
        elif isinstance(message, StopNoticeEvent):
            self._on_stop_notice(message, ctx)
        elif isinstance(message, PaymentEvent):
            self._on_payment(message, ctx)
        elif isinstance(message, ArrearsEvent):
            self._on_arrears(message, ctx)
        elif isinstance(message, BillingEvent):
            self._on_billing(message, ctx)
        elif isinstance(message, ChurnEvent):
            self._on_churn(message, ctx)
        elif isinstance(message, ReactivationEvent):
            self._on_reactivation(message, ctx)

    def tick(
        self,
        view: SubscriberView,
        effects: Effects,
        *,
        silences: list[Silence],
        now: datetime,
    ) -> None:
        """Fire score rules whose dwell has elapsed by ``now`` without a newer score."""
        ctx = Ctx(view, effects, silences, now)
        for rule, trigger in self.rules.triggered(ScoreTrigger):
            state = view.states.get(rule.name)
            if state is None or state.pending_since is None or state.pending_score is None:
                continue
            due = state.pending_since + trigger.dwell
            if due <= now:
                self._fire_score(rule, state.pending_score, due, ctx)

    # --- scores ---------------------------------------------------------------

    def _on_score(self, score: RiskScore, ctx: Ctx) -> None:
        t = score.event_time
        for rule, trigger in self.rules.triggered(ScoreTrigger):
            state = ctx.view.state(rule.name)
            if score.score < trigger.rearm_below:
                if not state.armed or state.pending_since is not None:
                    state.armed, state.pending_since, state.pending_score = True, None, None
                    state.dirty = True
            elif score.score < trigger.threshold:
                # Below the threshold again before the dwell elapsed: no alert.
                if state.pending_since is not None:
                    state.pending_since, state.pending_score = None, None
                    state.dirty = True
            elif state.armed:
                if state.pending_since is None:
                    state.pending_since = t
                state.pending_score = score
                state.dirty = True
                if t - state.pending_since >= trigger.dwell:
                    self._fire_score(rule, score, t, ctx)

    def _fire_score(self, rule: Rule, score: RiskScore, at: datetime, ctx: Ctx) -> None:
        state = ctx.view.state(rule.name)
        # Disarmed whatever happens next (fired, or suppressed): the episode is
        # over until the score falls below rearm_below.
        state.armed, state.pending_since, state.pending_score = False, None, None
        state.dirty = True
        self._fire(
            Firing(
                rule=rule,
                at=at,
                cause_id=score.score_id,
                risk=score.score,
                reasons=[f"{r.code}: {r.text_en}" for r in score.reasons],
                reason_codes=[r.code for r in score.reasons],
                params={"score": f"{score.score:.2f}"},
            ),
            ctx,
        )

    # --- events ---------------------------------------------------------------

    def _on_stop_notice(self, event: StopNoticeEvent, ctx: Ctx) -> None:
        p = event.payload
        t = event.occurred_at
        for rule, trigger in self.rules.triggered(StopNoticeTrigger):
            if p.suspension_at <= t:
                ctx.effects.suppressed.append((rule.name, "too_late"))
                continue
            # A payment handled before its notice (it came through the other entry
            # point, or late): paid at or after the notice, it clears it all the same.
            paid = Decimal(0)
            if trigger.cancel_when_paid:
                paid = ctx.view.facts.paid_between(t, p.suspension_at)
            if trigger.cancel_when_paid and paid >= p.amount_to_pay:
                ctx.effects.suppressed.append((rule.name, "paid"))
                continue
            # Due `lead` before the suspension, unless that is already past.
            self._fire(
                Firing(
                    rule=rule,
                    at=t,
                    cause_id=event.event_id,
                    reasons=[f"suspension scheduled ({p.reason}); {p.amount_to_pay:.2f} to pay"],
                    reason_codes=["STOP_NOTICE"],
                    params={
                        "amount": f"{p.amount_to_pay:.2f}",
                        "suspension_at": p.suspension_at.isoformat(),
                    },
                    due_at=max(p.suspension_at - trigger.lead, t),
                    amount_due=p.amount_to_pay if trigger.cancel_when_paid else None,
                    paid=paid,
                ),
                ctx,
            )

    def _on_payment(self, event: PaymentEvent, ctx: Ctx) -> None:
        t = event.occurred_at
        ctx.view.facts.remember_payment(t, event.payload.amount)
        for alert in ctx.view.alerts:
            if alert.amount_due is None or not alert.is_open(t) or t < alert.fired_at:
                continue
            alert.paid += event.payload.amount
            alert.dirty = True
            if alert.paid >= alert.amount_due:
                self._end(
                    alert,
                    ctx.effects,
                    status="cancelled",
                    reason=f"paid {alert.paid:.2f} of {alert.amount_due:.2f} before the suspension",
                    at=t,
                    cause=UpdateCause.PAID,
                )

    def _on_arrears(self, event: ArrearsEvent, ctx: Ctx) -> None:
        p = event.payload
        for rule, trigger in self.rules.triggered(ArrearsTrigger):
            if p.overdue_amount < trigger.min_amount or p.days_overdue > trigger.max_days_overdue:
                continue
            self._fire(
                Firing(
                    rule=rule,
                    at=event.occurred_at,
                    cause_id=event.event_id,
                    reasons=[f"{p.overdue_amount:.2f} overdue for {p.days_overdue} days"],
                    reason_codes=["EARLY_ARREARS"],
                    params={
                        "amount": f"{p.overdue_amount:.2f}",
                        "days_overdue": str(p.days_overdue),
                    },
                ),
                ctx,
            )

    def _on_billing(self, event: BillingEvent, ctx: Ctx) -> None:
        amount = event.payload.amount_due
        facts = ctx.view.facts
        usual = facts.bill_mean
        for rule, trigger in self.rules.triggered(BillShockTrigger):
            if (
                usual is None
                or facts.bills_seen < trigger.min_history
                or amount < usual * Decimal(str(trigger.ratio))
                or amount - usual < trigger.min_increase
            ):
                continue
            self._fire(
                Firing(
                    rule=rule,
                    at=event.occurred_at,
                    cause_id=event.event_id,
                    reasons=[f"bill of {amount:.2f} against a usual {usual:.2f}"],
                    reason_codes=["BILL_SHOCK"],
                    params={"amount": f"{amount:.2f}", "usual_amount": f"{usual:.2f}"},
                ),
                ctx,
            )
        # The shocking bill counts toward the usual one only after the check.
        facts.bill_mean = (
            amount
            if usual is None
            else (usual + BILL_ALPHA * (amount - usual)).quantize(Decimal("0.0001"))
        )
        facts.bills_seen += 1
        facts.dirty = True

    def _on_churn(self, event: ChurnEvent, ctx: Ctx) -> None:
        t, view = event.occurred_at, ctx.view
        view.facts.churned_at = t
        view.facts.dirty = True
        self._apply_cancels("churn", ctx, at=t)
        # A subscriber who comes back starts a fresh risk episode.
        for state in view.states.values():
            if state.pending_since is not None:
                state.pending_since, state.pending_score = None, None
                state.dirty = True
        for rule, trigger in self.rules.triggered(ChurnTrigger):
            if view.profile.monthly_value < trigger.min_monthly_value:
                continue
            self._fire(
                Firing(
                    rule=rule,
                    at=t,
                    cause_id=event.event_id,
                    reasons=[f"churned ({event.payload.kind})"],
                    reason_codes=["CHURNED"],
                    params={},
                    not_before=t + trigger.delay,
                ),
                ctx,
            )

    def _on_reactivation(self, event: ReactivationEvent, ctx: Ctx) -> None:
        view = ctx.view
        view.facts.churned_at = None
        view.facts.dirty = True
        self._apply_cancels("reactivation", ctx, at=event.occurred_at)
        for state in view.states.values():
            if not state.armed:
                state.armed, state.dirty = True, True

    # --- firing ---------------------------------------------------------------

    def _fire(self, firing: Firing, ctx: Ctx) -> None:
        """Run a firing through dedup, repeat, silences, routing, inhibition and hold-out."""
        rule, t = firing.rule, firing.at
        view, effects = ctx.view, ctx.effects
        profile = view.profile
        # A churned subscriber gets nothing but what a churn itself triggers.
        if view.facts.churned_at is not None and not isinstance(rule.trigger, ChurnTrigger):
            effects.suppressed.append((rule.name, "churned"))
            return
        # Dedup: one open alert per kind, unless this rule is more severe.
        same_kind = [a for a in view.alerts if a.kind is rule.kind and a.is_open(t)]
        if any(a.severity >= rule.severity for a in same_kind):
            effects.suppressed.append((rule.name, "dedup"))
            return
        if self._repeating(rule, view, t):
            effects.suppressed.append((rule.name, "repeat"))
            return
        if any(
            s.matches(
                rule=rule.name, tier=profile.tier, subscriber_id=view.subscriber_id, now=ctx.now
            )
            for s in ctx.silences
        ):
            effects.suppressed.append((rule.name, "silenced"))
            return
        tasks = self._build_tasks(firing, view, effects)
        if not tasks:
            return
        for old in same_kind:
            self._end(
                old,
                effects,
                status="superseded",
                reason=f"superseded by {rule.name}",
                at=t,
                cause=UpdateCause.SUPERSEDED,
            )
        held_out = rule.control_group and in_control_group(
            view.subscriber_id, percent=self.control_percent, salt=self.control_salt
        )
        alert = Alert(
            alert_id=derive_id("alert", rule.name, view.subscriber_id, firing.cause_id),
            subscriber_id=view.subscriber_id,
            rule=rule.name,
            kind=rule.kind,
            severity=rule.severity,
            fired_at=t,
            open_until=firing.due_at or ((firing.not_before or t) + rule.open_for),
            cause_id=firing.cause_id,
            held_out=held_out,
            amount_due=firing.amount_due,
            paid=firing.paid,
            tasks=[TaskRef(task.task_id, task.channel, task.queue) for task in tasks],
            new=True,
        )
        view.alerts.append(alert)
        view.state(rule.name).last_fired_at = t
        view.state(rule.name).dirty = True
        effects.new_alerts.append((alert, tasks))
        if held_out:
            effects.held_out.extend(tasks)
            effects.suppressed.append((rule.name, "control_group"))
        else:
            effects.outbound.extend(tasks)
            effects.fired.append((rule.name, profile.tier.value))

    def _repeating(self, rule: Rule, view: SubscriberView, t: datetime) -> bool:
        # The kind fired within the repeat interval by a rule at least as severe.
        for other in self.rules.rules:
            if other.kind is not rule.kind or other.severity < rule.severity:
                continue
            state = view.states.get(other.name)
            last = state.last_fired_at if state else None
            if last is not None and last <= t < last + rule.repeat_interval:
                return True
        return False

    def _build_tasks(
        self, firing: Firing, view: SubscriberView, effects: Effects
    ) -> list[OutreachTask]:
        rule, profile, t = firing.rule, view.profile, firing.at
        tasks: list[OutreachTask] = []
        inhibiting = {a.kind for a in view.alerts if a.is_open(t)}
        for route in routes_for(rule, profile):
            if any(
                rule.kind in inh.kinds
                and route.channel in inh.channels
                and inhibiting.intersection(inh.while_open)
                for inh in self.rules.inhibit
            ):
                effects.suppressed.append((rule.name, "inhibited"))
                continue
            if route.channel is Channel.SMS:
                if profile.phone is None:
                    effects.suppressed.append((rule.name, "no_contact"))
                    continue
                if route.marketing and profile.marketing_opt_out:
                    effects.suppressed.append((rule.name, "opted_out"))
                    continue
            tasks.append(self._task(firing, route, view))
            if route.capacity and tasks[-1].queue == self._manager_queue(profile):
                effects.capacity_tasks.add(tasks[-1].task_id)
        return tasks

    def _manager_queue(self, profile: Profile) -> str | None:
        return f"am:{profile.account_manager_id}" if profile.account_manager_id else None

    def _priority(self, firing: Firing, profile: Profile) -> float:
        rule = firing.rule
        value = float(profile.monthly_value)
        if rule.priority == "value":
            extra = value
        elif rule.priority == "risk_value":
            extra = (firing.risk or 0.0) * value * self.rules.capacity.weight(firing.reason_codes)
        else:
            extra = 0.0
        return round(rule.priority_base + extra, 4)

    def _task(self, firing: Firing, route: Route, view: SubscriberView) -> OutreachTask:
        rule, profile = firing.rule, view.profile
        queue = None
        if route.channel is Channel.CALL:
            queue = route.queue
            if queue == "account_manager":
                queue = self._manager_queue(profile) or self.rules.capacity.overflow_queue
        params: dict[str, Any] = {
            "name": profile.name or "",
            "account_manager": profile.account_manager_id or "",
            **firing.params,
        }
        return OutreachTask(
            task_id=derive_id(
                "alert", rule.name, view.subscriber_id, route.channel, firing.cause_id
            ),
            kind=rule.kind,
            channel=route.channel,
            rule=rule.name,
            subscriber_id=view.subscriber_id,
            tier=profile.tier,
            monthly_value=profile.monthly_value,
            phone=profile.phone,
            language=profile.language,
            account_manager_id=profile.account_manager_id,
            queue=queue,
            template=route.template,
            marketing=route.marketing,
            priority=self._priority(firing, profile),
            risk=firing.risk,
            not_before=firing.not_before,
            due_at=firing.due_at or ((firing.not_before or firing.at) + rule.open_for),
            reasons=firing.reasons[:10],
            reason_codes=firing.reason_codes[:10],
            params=params,
            cause_event_id=firing.cause_id,
            created_at=firing.at,
        )

    # --- ending alerts --------------------------------------------------------

    def _apply_cancels(self, on: str, ctx: Ctx, *, at: datetime) -> None:
        for cancel in self.rules.cancel:
            if cancel.on != on:
                continue
            for alert in ctx.view.alerts:
                if alert.kind in cancel.kinds and alert.is_open(at):
                    self._end(
                        alert,
                        ctx.effects,
                        status="closed" if cancel.outcome else "cancelled",
                        reason=cancel.reason,
                        at=at,
                        cause=UpdateCause.CHURNED if on == "churn" else UpdateCause.REACTIVATED,
                        outcome=cancel.outcome,
                    )

    def _end(
        self,
        alert: Alert,
        effects: Effects,
        *,
        status: str,
        reason: str,
        at: datetime,
        cause: UpdateCause,
        outcome: str | None = None,
    ) -> None:
        """End an open alert and tell outreach about each of its tasks."""
        alert.status, alert.end_reason, alert.dirty = status, reason, True
        if alert.held_out:
            return  # nothing was sent, so there is nothing to stop
        action = TaskAction.CLOSE if outcome else TaskAction.CANCEL
        for task in alert.tasks:
            effects.outbound.append(
                TaskUpdate(
                    update_id=derive_id("update", task.task_id, action, reason),
                    task_id=task.task_id,
                    subscriber_id=alert.subscriber_id,
                    action=action,
                    reason=reason,
                    cause=cause,
                    outcome=outcome,
                    at=at,
                )
            )


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
