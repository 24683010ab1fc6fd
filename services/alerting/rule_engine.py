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

from datetime import datetime
from decimal import Decimal

from services.alerting.activity import remember_event
from services.alerting.firing import Ctx, Firer, Firing
from services.alerting.routing import (
    allocate,
    capacity_day,
    in_control_group,
    matches,
    routes_for,
)
from services.alerting.rules import (
    ArrearsTrigger,
    BillShockTrigger,
    ChurnTrigger,
    Rule,
    RulesFile,
    ScoreTrigger,
    StopNoticeTrigger,
)
from services.alerting.state import (
    PAYMENTS_KEPT,
    PAYMENTS_KEPT_FOR,
    UNKNOWN,
    Alert,
    Effects,
    Facts,
    Profile,
    RuleState,
    Silence,
    SubscriberView,
    TaskRef,
)
from shared.events import (
    ArrearsEvent,
    BillingEvent,
    ChurnEvent,
    Event,
    PaymentEvent,
    ReactivationEvent,
    RiskScore,
    StopNoticeEvent,
    UpdateCause,
)

# The engine's parts moved to state.py, routing.py and firing.py; their names are
# still importable from here.
__all__ = [
    "BILL_ALPHA",
    "PAYMENTS_KEPT",
    "PAYMENTS_KEPT_FOR",
    "UNKNOWN",
    "Alert",
    "Ctx",
    "Effects",
    "Facts",
    "Firing",
    "Profile",
    "RuleEngine",
    "RuleState",
    "Silence",
    "SubscriberView",
    "TaskRef",
    "allocate",
    "capacity_day",
    "in_control_group",
    "matches",
    "routes_for",
]


# Weight of a new bill in the subscriber's usual bill (exponentially weighted
# mean): about the last four bills count.
BILL_ALPHA = Decimal("0.25")


class RuleEngine(Firer):
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
