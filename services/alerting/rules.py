"""Alerting rules: which event or score becomes which outreach task.

Pure functions over the event/score, the subscriber's profile and settings;
task ids are derived from the cause, so a replay derives the same id and the
task is created once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from services.alerting.settings import AlertingSettings
from shared.events import (
    Channel,
    OutreachTask,
    RiskScore,
    StopNoticeEvent,
    TaskKind,
    Tier,
    derive_id,
)


@dataclass(frozen=True, slots=True)
class Profile:
    """What alerting knows of a subscriber, from the latest ``subscriber`` event."""

    tier: Tier = Tier.STANDARD
    monthly_value: Decimal = Decimal(0)
    account_manager_id: str | None = None
    phone: str | None = None
    language: str = "en"
    name: str | None = None
    marketing_opt_out: bool = False


UNKNOWN = Profile()


def _params(profile: Profile, **extra: str) -> dict[str, str]:
    params = {"name": profile.name or "", "account_manager": profile.account_manager_id or ""}
    params.update(extra)
    return params


def pre_suspension_tasks(
    event: StopNoticeEvent, profile: Profile, *, now: datetime
) -> list[OutreachTask]:
    """A reminder before the suspension: an SMS for every tier, plus a call for VIPs.

    Every VIP must be reminded before a suspension (the reminder-before-suspension
    KPI), so VIPs with an account manager also get a call task due before it.
    """
    p = event.payload
    params = _params(
        profile,
        amount=f"{p.amount_to_pay:.2f}",
        suspension_at=p.suspension_at.isoformat(),
    )
    common = {
        "kind": TaskKind.PRE_SUSPENSION_REMINDER,
        "subscriber_id": event.subscriber_id,
        "tier": profile.tier,
        "phone": profile.phone,
        "language": profile.language,
        "account_manager_id": profile.account_manager_id,
        "due_at": p.suspension_at,
        "reasons": [f"suspension scheduled ({p.reason}); {params['amount']} to pay"],
        "params": params,
        "cause_event_id": event.event_id,
        "created_at": now,
    }
    tasks = [
        OutreachTask(
            task_id=derive_id(TaskKind.PRE_SUSPENSION_REMINDER, "sms", event.event_id),
            channel=Channel.SMS,
            priority=80 if profile.tier.is_vip else 60,
            **common,
        )
    ]
    if profile.tier.is_vip:
        tasks.append(
            OutreachTask(
                task_id=derive_id(TaskKind.PRE_SUSPENSION_REMINDER, "call", event.event_id),
                channel=Channel.CALL,
                priority=90,
                **common,
            )
        )
    return tasks


def crossed_upward(score: RiskScore, threshold: float) -> bool:
    """True when this score is the first at or above the threshold after one below it."""
    return score.score >= threshold and (
        score.previous_score is None or score.previous_score < threshold
    )


def retention_task(
    score: RiskScore, profile: Profile, settings: AlertingSettings, *, now: datetime
) -> OutreachTask | None:
    """A retention task when the risk crosses the threshold upward, else None.

    High-value and VIP subscribers go to the call queue (their account manager
    when they have one); others get a care SMS with an offer, unless they opted
    out of marketing.
    """
    if not crossed_upward(score, settings.alerting_retention_threshold):
        return None
    call = profile.tier.is_vip or profile.monthly_value >= settings.alerting_high_value
    if not call and profile.marketing_opt_out:
        return None
    channel = Channel.CALL if call else Channel.SMS
    return OutreachTask(
        task_id=derive_id(TaskKind.RETENTION, channel, score.cause_event_id),
        kind=TaskKind.RETENTION,
        channel=channel,
        subscriber_id=score.subscriber_id,
        tier=profile.tier,
        phone=profile.phone,
        language=profile.language,
        account_manager_id=profile.account_manager_id,
        priority=min(100, int(score.score * 100)),
        reasons=[f"{r.code}: {r.text_en}" for r in score.reasons],
        params=_params(profile, score=f"{score.score:.2f}"),
        cause_event_id=score.cause_event_id,
        created_at=now,
    )
