"""Per-subscriber features, kept incrementally without storing events.

Usage, complaint and payment counts are exponentially time-decayed sums. Each
is stored as ``(value, ref)``: the sum decayed to the reference time ``ref``.
An event at ``t`` adds ``w * 2**(-(ref - t)/half_life)`` when it is older than
``ref``, and otherwise moves ``ref`` forward to ``t`` first. Both orders give
the same sum, so the state does not depend on arrival order. "Latest value"
fields (arrears, profile, last bill) keep the ``occurred_at`` they came from
and only a newer event replaces them, for the same reason. Distinct contacts
keep the newest time each (hashed) contact was seen, a maximum, also
order-independent.

``FEATURES`` is the catalogue: every feature's unit, meaning and reason codes
(English and Chinese). ``docs/features.md`` documents each one, and
tests/test_docs.py checks that it does.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from shared.events import (
    ArrearsEvent,
    BillingEvent,
    CdrEvent,
    ChurnEvent,
    ComplaintEvent,
    Event,
    PaymentEvent,
    ReactivationEvent,
    StopNoticeEvent,
    SubscriberEvent,
)

DAY = 86_400.0
# name -> half-life in days. Short (7 d) against long (30 d) gives the trends.
DECAYED: dict[str, float] = {
    "calls_7d": 7,
    "calls_30d": 30,
    "voice_min_7d": 7,
    "voice_min_30d": 30,
    "competitor_calls_7d": 7,
    "competitor_calls_30d": 30,
    "sms_7d": 7,
    "sms_30d": 30,
    "data_mb_7d": 7,
    "data_mb_30d": 30,
    "complaints_30d": 30,
    "bills_90d": 90,
    "bill_amount_90d": 90,
    "downgrades_90d": 90,
    "late_payments_90d": 90,
}
TIER_LEVEL = {"standard": 0, "vip_guest": 1, "silver": 2, "gold": 3, "diamond": 4}
# Recent payments kept to decide whether debts are paid (partial payments add up).
MAX_PAYMENTS = 8
# Distinct contacts: the newest time each hashed counterpart was seen, at most this many.
MAX_CONTACTS = 64
# "No stop-notice" reads as a suspension this far away, so the feature is monotone.
FAR_HOURS = 720.0

State = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Feature:
    """One model input: unit, meaning, and the reason shown when it drives the risk."""

    unit: str
    meaning: str
    up: tuple[str, str, str]  # (code, English, Chinese) when the value is high
    down: tuple[str, str, str]  # when the value is low


def _f(unit: str, meaning: str, up: tuple[str, str, str], down: tuple[str, str, str]) -> Feature:
    return Feature(unit, meaning, up, down)


FEATURES: dict[str, Feature] = {
    "calls_7d": _f(
        "calls",
        "Voice calls (both directions), 7-day half-life decayed sum",
        ("CALLS_UP", "more calls than usual", "通话次数增加"),
        ("CALLS_DOWN", "fewer calls", "通话次数减少"),
    ),
    "voice_min_7d": _f(
        "minutes",
        "Voice minutes, 7-day half-life decayed sum",
        ("VOICE_UP", "voice usage up", "通话时长增加"),
        ("VOICE_DOWN", "voice usage down", "通话时长减少"),
    ),
    "voice_trend": _f(
        "ratio",
        "Voice minutes per day, 7-day rate vs 30-day rate, minus 1",
        ("USAGE_UP", "usage rising", "使用量上升"),
        ("USAGE_DOWN", "usage falling", "使用量下降"),
    ),
    "sms_7d": _f(
        "messages",
        "SMS sent, 7-day half-life decayed sum",
        ("SMS_UP", "more SMS", "短信增加"),
        ("SMS_DOWN", "fewer SMS", "短信减少"),
    ),
    "sms_trend": _f(
        "ratio",
        "SMS per day, 7-day rate vs 30-day rate, minus 1",
        ("SMS_RISING", "SMS rising", "短信量上升"),
        ("SMS_FALLING", "SMS falling", "短信量下降"),
    ),
    "data_mb_7d": _f(
        "MB",
        "Mobile data, 7-day half-life decayed sum",
        ("DATA_UP", "more data use", "流量使用增加"),
        ("DATA_DOWN", "less data use", "流量使用减少"),
    ),
    "data_trend": _f(
        "ratio",
        "Data per day, 7-day rate vs 30-day rate, minus 1",
        ("DATA_RISING", "data use rising", "流量上升"),
        ("DATA_FALLING", "data use falling", "流量下降"),
    ),
    "competitor_share_7d": _f(
        "share",
        "Share of calls to competitor networks, last ~7 days",
        ("COMPETITOR_CALLS_UP", "calls to competitor networks up", "与竞争对手网络通话占比上升"),
        ("COMPETITOR_CALLS_LOW", "few calls to competitor networks", "与竞争对手网络通话占比低"),
    ),
    "competitor_share_change": _f(
        "share",
        "Competitor share, 7-day minus 30-day",
        ("COMPETITOR_SHIFT", "calls shifting to competitors", "通话正转向竞争对手网络"),
        ("COMPETITOR_RECEDING", "fewer competitor calls than before", "竞争对手网络通话减少"),
    ),
    "distinct_contacts_30d": _f(
        "contacts",
        "Distinct (hashed) contacts seen in 30 days",
        ("CONTACTS_MANY", "many distinct contacts", "联系人较多"),
        ("CONTACTS_FEW", "few distinct contacts", "联系人较少"),
    ),
    "days_since_activity": _f(
        "days",
        "Days since the last usage record",
        ("INACTIVE", "inactive recently", "近期不活跃"),
        ("ACTIVE", "active recently", "近期活跃"),
    ),
    "bill_ratio": _f(
        "ratio",
        "Latest bill / own 90-day average bill (1 when unknown)",
        ("BILL_HIGH", "bill above own average", "账单高于自身平均"),
        ("BILL_LOW", "bill below own average", "账单低于自身平均"),
    ),
    "spend_drop": _f(
        "ratio",
        "max(0, 1 - bill_ratio): how far spend fell",
        ("SPEND_DROP", "spend dropped", "消费下降"),
        ("SPEND_STEADY", "spend steady", "消费稳定"),
    ),
    "bill_shock": _f(
        "ratio",
        "max(0, bill_ratio - 1): an unusually high bill",
        ("BILL_SHOCK", "unusually high bill", "账单异常偏高"),
        ("BILL_NORMAL", "bill as usual", "账单正常"),
    ),
    "downgrades_90d": _f(
        "count",
        "Plan downgrades, 90-day half-life decayed",
        ("PLAN_DOWNGRADE", "plan downgraded", "套餐降级"),
        ("NO_DOWNGRADE", "no recent downgrade", "近期无降档"),
    ),
    "late_payments_90d": _f(
        "count",
        "Late payments, 90-day half-life decayed",
        ("LATE_PAYMENTS", "payments late", "缴费逾期"),
        ("PAYS_ON_TIME", "pays on time", "按时缴费"),
    ),
    "arrears_amount": _f(
        "currency",
        "Overdue amount now (0 once payments cover it)",
        ("ARREARS", "money overdue", "存在欠费"),
        ("NO_ARREARS", "nothing overdue", "无欠费"),
    ),
    "arrears_days": _f(
        "days",
        "Days overdue as last reported (0 once paid)",
        ("ARREARS_LONG", "long overdue", "欠费时间长"),
        ("ARREARS_SHORT", "not overdue long", "欠费时间短"),
    ),
    "stop_notice_pending": _f(
        "0/1",
        "1 while a stop-notice is not paid off",
        ("STOP_NOTICE", "suspension scheduled for unpaid bills", "因欠费即将停机"),
        ("NO_STOP_NOTICE", "no suspension scheduled", "无停机通知"),
    ),
    "hours_to_suspension": _f(
        "hours",
        f"Hours until the pending suspension ({FAR_HOURS:.0f} when none; 0 once past)",
        ("SUSPENSION_FAR", "suspension far off or none", "停机尚远或无"),
        ("SUSPENSION_SOON", "suspension soon", "即将停机"),
    ),
    "complaints_30d": _f(
        "count",
        "Complaints, 30-day half-life decayed",
        ("COMPLAINTS_UP", "recent complaints", "近期有投诉"),
        ("NO_COMPLAINTS", "no recent complaints", "近期无投诉"),
    ),
    "tenure_days": _f(
        "days",
        "Days since activation (or first event)",
        ("LONG_TENURE", "long tenure", "在网时间长"),
        ("SHORT_TENURE", "short tenure", "在网时间短"),
    ),
    "tier_level": _f(
        "level",
        "0 standard, 1 VIP guest, 2 silver, 3 gold, 4 diamond",
        ("HIGH_TIER", "high VIP tier", "高等级VIP"),
        ("LOW_TIER", "standard tier", "普通等级"),
    ),
    "log_monthly_value": _f(
        "log currency",
        "log(1 + monthly value)",
        ("HIGH_VALUE", "high monthly value", "月消费高"),
        ("LOW_VALUE", "low monthly value", "月消费低"),
    ),
}
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURES)


def new_state() -> State:
    """An empty feature state."""
    return {
        "decayed": {},
        "latest": {},
        "first_seen": None,
        "last_activity": None,
        "watermark": None,
        "payments": [],
        "contacts": {},
    }


def _add_decayed(state: State, name: str, weight: float, t: float) -> None:
    half_life = DECAYED[name] * DAY
    value, ref = state["decayed"].get(name, (0.0, t))
    if t > ref:
        value *= 2.0 ** (-(t - ref) / half_life)
        ref = t
    else:
        weight *= 2.0 ** (-(ref - t) / half_life)
    state["decayed"][name] = (value + weight, ref)


def decayed_at(state: State, name: str, t: float) -> float:
    """The decayed sum ``name`` as of time ``t``."""
    value, ref = state["decayed"].get(name, (0.0, t))
    half_life = DECAYED[name] * DAY
    return float(value * 2.0 ** (-(t - ref) / half_life)) if t >= ref else float(value)


def _set_latest(state: State, name: str, value: Any, t: float) -> None:
    """Keep the value with the newest event time (order-independent 'last write wins')."""
    current = state["latest"].get(name)
    if current is None or t >= current[1]:
        state["latest"][name] = (value, t)


def _latest(state: State, name: str, default: Any = None) -> Any:
    item = state["latest"].get(name)
    return default if item is None else item[0]


def _see_contact(state: State, counterpart: str, t: float) -> None:
    contacts: dict[str, float] = state["contacts"]
    key = hashlib.blake2b(counterpart.encode(), digest_size=5).hexdigest()
    contacts[key] = max(contacts.get(key, t), t)
    if len(contacts) > MAX_CONTACTS:
        del contacts[min(contacts, key=contacts.__getitem__)]


def apply_event(state: State, event: Event) -> None:
    """Fold one event into the state (in place)."""
    t = event.occurred_at.timestamp()
    state["watermark"] = max(state["watermark"] or t, t)
    state["first_seen"] = min(state["first_seen"] or t, t)
    if isinstance(event, CdrEvent):
        p = event.payload
        state["last_activity"] = max(state["last_activity"] or t, t)
        if p.counterpart_id:
            _see_contact(state, p.counterpart_id, t)
        if p.service == "voice":
            minutes = (p.duration_s or 0.0) / 60.0
            for name, weight in (
                ("calls_7d", p.count),
                ("calls_30d", p.count),
                ("voice_min_7d", minutes),
                ("voice_min_30d", minutes),
            ):
                _add_decayed(state, name, weight, t)
            if p.counterpart_network == "competitor":
                _add_decayed(state, "competitor_calls_7d", p.count, t)
                _add_decayed(state, "competitor_calls_30d", p.count, t)
        elif p.service == "sms":
            _add_decayed(state, "sms_7d", p.count, t)
            _add_decayed(state, "sms_30d", p.count, t)
        else:
            megabytes = (p.bytes or 0) / 1e6
            _add_decayed(state, "data_mb_7d", megabytes, t)
            _add_decayed(state, "data_mb_30d", megabytes, t)
    elif isinstance(event, BillingEvent):
        amount = float(event.payload.amount_due)
        _add_decayed(state, "bills_90d", 1.0, t)
        _add_decayed(state, "bill_amount_90d", amount, t)
        _set_latest(state, "last_bill", amount, t)
        if event.payload.plan_change == "downgrade":
            _add_decayed(state, "downgrades_90d", 1.0, t)
    elif isinstance(event, PaymentEvent):
        # Whether payments clear arrears or a stop-notice is decided in vector(), from
        # the most recent payments: the same answer whichever arrived first.
        payments = state["payments"]
        payments.append((float(event.payload.amount), t))
        payments.sort(key=lambda p: p[1])
        del payments[:-MAX_PAYMENTS]
        if event.payload.late:
            _add_decayed(state, "late_payments_90d", 1.0, t)
    elif isinstance(event, ArrearsEvent):
        p3 = event.payload
        _set_latest(state, "arrears", (float(p3.overdue_amount), p3.days_overdue), t)
    elif isinstance(event, StopNoticeEvent):
        p4 = event.payload
        _set_latest(
            state, "stop_notice", (p4.suspension_at.timestamp(), float(p4.amount_to_pay)), t
        )
    elif isinstance(event, SubscriberEvent):
        p2 = event.payload
        activated = p2.activated_at.timestamp() if p2.activated_at else None
        _set_latest(state, "profile", (p2.tier.value, float(p2.monthly_value), activated), t)
    elif isinstance(event, ComplaintEvent):
        _add_decayed(state, "complaints_30d", 1.0, t)
    elif isinstance(event, ChurnEvent):
        _set_latest(state, "churned", event.payload.kind, t)
    elif isinstance(event, ReactivationEvent):
        _set_latest(state, "churned", None, t)


def mark_churned(state: State, kind: str, t: float) -> None:
    """Record a churn not carried by a churn event (involuntary: suspension left unpaid)."""
    _set_latest(state, "churned", kind, t)


def is_churned(state: State) -> bool:
    """True after a churn not followed by a reactivation."""
    return bool(_latest(state, "churned"))


def _paid_since(state: State, name: str, amount: float) -> bool:
    """True if the payments made at or after the latest ``name`` add up to ``amount``."""
    item = state["latest"].get(name)
    if item is None:
        return False
    paid = float(sum(a for a, t in state["payments"] if t >= item[1]))
    return paid > 0 and paid >= amount


def pending_stop_notice(state: State) -> tuple[float, float] | None:
    """``(suspension time, amount)`` of a stop-notice not yet paid off, else None."""
    notice = _latest(state, "stop_notice")
    if notice is None or _paid_since(state, "stop_notice", notice[1]):
        return None
    return float(notice[0]), float(notice[1])


def _rate(decayed: float, half_life_days: float, age_days: float) -> float:
    """Daily rate from a decayed sum: a steady rate r sums to r*h/ln 2 in the long run.

    A young subscriber's sum has not filled up yet (only 1 - 2**(-age/h) of it
    after ``age`` days), so divide that out, as Adam corrects its moment bias;
    otherwise every new subscriber's 30-day rate looks low and its trend high.
    """
    filled = 1.0 - 2.0 ** (-max(age_days, 1.0) / half_life_days)
    return float(decayed * math.log(2) / half_life_days / filled)


def _rate_trend(short: float, long: float, unit: float, age_days: float) -> float:
    rate_short, rate_long = _rate(short, 7, age_days), _rate(long, 30, age_days)
    return (rate_short - rate_long) / (rate_long + unit)


def vector(state: State) -> dict[str, float]:
    """The model's input, as of the subscriber's newest event time."""
    t = state["watermark"] or 0.0
    d = {name: decayed_at(state, name, t) for name in DECAYED}
    tier, monthly_value, activated = _latest(state, "profile", ("standard", 0.0, None))
    arrears_amount, arrears_days = _latest(state, "arrears", (0.0, 0))
    if _paid_since(state, "arrears", arrears_amount):
        arrears_amount, arrears_days = 0.0, 0
    notice = pending_stop_notice(state)
    bills = d["bills_90d"]
    avg_bill = d["bill_amount_90d"] / bills if bills > 1e-9 else 0.0
    bill_ratio = _latest(state, "last_bill", avg_bill) / avg_bill if avg_bill > 0 else 1.0
    share_7 = d["competitor_calls_7d"] / (d["calls_7d"] + 1.0)
    share_30 = d["competitor_calls_30d"] / (d["calls_30d"] + 1.0)
    hours = FAR_HOURS if notice is None else min(FAR_HOURS, max(0.0, (notice[0] - t) / 3600))
    start = activated or state["first_seen"] or t
    age_days = (t - (state["first_seen"] or t)) / DAY  # how long we have been summing
    return {
        "calls_7d": d["calls_7d"],
        "voice_min_7d": d["voice_min_7d"],
        "voice_trend": _rate_trend(d["voice_min_7d"], d["voice_min_30d"], 1.0, age_days),
        "sms_7d": d["sms_7d"],
        "sms_trend": _rate_trend(d["sms_7d"], d["sms_30d"], 1.0, age_days),
        "data_mb_7d": d["data_mb_7d"],
        "data_trend": _rate_trend(d["data_mb_7d"], d["data_mb_30d"], 10.0, age_days),
        "competitor_share_7d": share_7,
        "competitor_share_change": share_7 - share_30,
        "distinct_contacts_30d": float(
            sum(1 for s in state["contacts"].values() if s >= t - 30 * DAY)
        ),
        "days_since_activity": (t - (state["last_activity"] or t)) / DAY,
        "bill_ratio": bill_ratio,
        "spend_drop": max(0.0, 1.0 - bill_ratio),
        "bill_shock": max(0.0, bill_ratio - 1.0),
        "downgrades_90d": d["downgrades_90d"],
        "late_payments_90d": d["late_payments_90d"],
        "arrears_amount": float(arrears_amount),
        "arrears_days": float(arrears_days),
        "stop_notice_pending": 0.0 if notice is None else 1.0,
        "hours_to_suspension": hours,
        "complaints_30d": d["complaints_30d"],
        "tenure_days": max(0.0, (t - start) / DAY),
        "tier_level": float(TIER_LEVEL.get(tier, 0)),
        "log_monthly_value": math.log1p(max(0.0, monthly_value)),
    }
