"""Firing: what the alerting engine does once a rule fires, and how alerts end.

A ``Firing`` (why and when a rule fires) runs through dedup, the repeat
interval, silences, routing, inhibition and the control group, and becomes an
alert and its outreach tasks; an alert ends (cancelled, closed, superseded)
with a task update for each of its tasks. :class:`Firer` holds these steps;
:class:`~services.alerting.rule_engine.RuleEngine` builds on it and decides, message by
message, when a rule fires (the semantics are in the engine's docstring).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from services.alerting.routing import in_control_group, routes_for
from services.alerting.rules import ChurnTrigger, Route, Rule, RulesFile
from services.alerting.state import (
    Alert,
    Effects,
    Profile,
    Silence,
    SubscriberView,
    TaskRef,
)
from shared.events import (
    Channel,
    OutreachTask,
    TaskAction,
    TaskUpdate,
    UpdateCause,
    derive_id,
)


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


class Firer:
    """Turns firings into alerts and tasks, and ends alerts; the base of ``RuleEngine``."""

    # Set by RuleEngine.__init__.
    rules: RulesFile
    control_percent: float
    control_salt: str

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
