"""Per-subscriber features, kept incrementally without storing events.

Usage and complaint counts are exponentially time-decayed sums. Each is stored
as ``(value, ref)``: the sum decayed to the reference time ``ref``. An event at
``t`` adds ``w * 2**(-(ref - t)/half_life)`` when it is older than ``ref``, and
otherwise moves ``ref`` forward to ``t`` first. Both orders give the same sum,
so state does not depend on arrival order. "Latest value" fields (arrears,
profile) keep the ``occurred_at`` they came from and only a newer event
replaces them, for the same reason.

Every feature is listed in ``docs/features.md``.
"""

from __future__ import annotations

import math
from datetime import datetime
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
# name -> half-life in days. Short (7 d) against long (30 d) gives the trend.
DECAYED: dict[str, float] = {
    "calls_7d": 7,
    "calls_30d": 30,
    "voice_min_7d": 7,
    "voice_min_30d": 30,
    "competitor_calls_7d": 7,
    "competitor_calls_30d": 30,
    "sms_7d": 7,
    "data_mb_7d": 7,
    "complaints_30d": 30,
    "bills_90d": 90,
    "bill_amount_90d": 90,
    "downgrades_90d": 90,
}
VIP_TIERS = frozenset({"diamond", "gold", "silver", "vip_guest"})
# Recent payments kept to decide whether debts are paid (partial payments add up).
MAX_PAYMENTS = 8

State = dict[str, Any]


def new_state() -> State:
    """An empty feature state."""
    return {
        "decayed": {},
        "latest": {},
        "first_seen": None,
        "last_activity": None,
        "watermark": None,
    }


def _ts(dt: datetime) -> float:
    return dt.timestamp()


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


def apply_event(state: State, event: Event) -> None:
    """Fold one event into the state (in place)."""
    t = _ts(event.occurred_at)
    state["watermark"] = max(state["watermark"] or t, t)
    state["first_seen"] = min(state["first_seen"] or t, t)
    if isinstance(event, CdrEvent):
        p = event.payload
        state["last_activity"] = max(state["last_activity"] or t, t)
        if p.service == "voice":
            _add_decayed(state, "calls_7d", p.count, t)
            _add_decayed(state, "calls_30d", p.count, t)
            minutes = (p.duration_s or 0.0) / 60.0
            _add_decayed(state, "voice_min_7d", minutes, t)
            _add_decayed(state, "voice_min_30d", minutes, t)
            if p.counterpart_network == "competitor":
                _add_decayed(state, "competitor_calls_7d", p.count, t)
                _add_decayed(state, "competitor_calls_30d", p.count, t)
        elif p.service == "sms":
            _add_decayed(state, "sms_7d", p.count, t)
        else:
            _add_decayed(state, "data_mb_7d", (p.bytes or 0) / 1e6, t)
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
        payments = state.setdefault("payments", [])
        payments.append((float(event.payload.amount), t))
        payments.sort(key=lambda p: p[1])
        del payments[:-MAX_PAYMENTS]
    elif isinstance(event, ArrearsEvent):
        _set_latest(
            state,
            "arrears",
            (float(event.payload.overdue_amount), event.payload.days_overdue),
            t,
        )
    elif isinstance(event, StopNoticeEvent):
        _set_latest(
            state,
            "stop_notice",
            (_ts(event.payload.suspension_at), float(event.payload.amount_to_pay)),
            t,
        )
    elif isinstance(event, SubscriberEvent):
        p2 = event.payload
        activated = _ts(p2.activated_at) if p2.activated_at else None
        _set_latest(state, "profile", (p2.tier.value, float(p2.monthly_value), activated), t)
    elif isinstance(event, ComplaintEvent):
        _add_decayed(state, "complaints_30d", 1.0, t)
    elif isinstance(event, ChurnEvent):
        _set_latest(state, "churned", True, t)
    elif isinstance(event, ReactivationEvent):
        _set_latest(state, "churned", False, t)


def is_churned(state: State) -> bool:
    """True after a churn event not followed by a reactivation."""
    return bool(_latest(state, "churned", False))


def _cleared_by_payment(state: State, name: str, amount: float) -> bool:
    """True if the payments made at or after the latest ``name`` add up to ``amount``."""
    item = state["latest"].get(name)
    if item is None:
        return False
    paid = float(sum(a for a, t in state.get("payments", []) if t >= item[1]))
    return paid > 0 and paid >= amount


def vector(state: State) -> dict[str, float]:
    """The model's input, computed as of the subscriber's newest event time."""
    t = state["watermark"] or 0.0
    d = {name: decayed_at(state, name, t) for name in DECAYED}
    tier, monthly_value, activated = _latest(state, "profile", ("standard", 0.0, None))
    arrears_amount, arrears_days = _latest(state, "arrears", (0.0, 0))
    if _cleared_by_payment(state, "arrears", arrears_amount):
        arrears_amount, arrears_days = 0.0, 0
    notice = _latest(state, "stop_notice")
    if notice and _cleared_by_payment(state, "stop_notice", notice[1]):
        notice = None
    bills = d["bills_90d"]
    avg_bill = d["bill_amount_90d"] / bills if bills > 1e-9 else 0.0
    last_bill = _latest(state, "last_bill", avg_bill)
    # Daily rates: a 7-day half-life sum of a steady daily rate r is about r*7/ln 2.
    voice_rate_7 = d["voice_min_7d"] * math.log(2) / 7
    voice_rate_30 = d["voice_min_30d"] * math.log(2) / 30
    hours_to_suspension = (notice[0] - t) / 3600 if notice else 0.0
    start = activated or state["first_seen"] or t
    return {
        "calls_7d": d["calls_7d"],
        "voice_min_7d": d["voice_min_7d"],
        "sms_7d": d["sms_7d"],
        "data_mb_7d": d["data_mb_7d"],
        "usage_trend": (voice_rate_7 - voice_rate_30) / (voice_rate_30 + 1.0),
        "competitor_share_7d": d["competitor_calls_7d"] / (d["calls_7d"] + 1.0),
        "competitor_share_change": d["competitor_calls_7d"] / (d["calls_7d"] + 1.0)
        - d["competitor_calls_30d"] / (d["calls_30d"] + 1.0),
        "days_since_activity": (t - (state["last_activity"] or t)) / DAY,
        "bill_ratio": (last_bill / avg_bill) if avg_bill > 0 else 1.0,
        "downgrades_90d": d["downgrades_90d"],
        "arrears_amount": float(arrears_amount),
        "arrears_days": float(arrears_days),
        "stop_notice_pending": 1.0 if notice else 0.0,
        "hours_to_suspension": max(0.0, hours_to_suspension),
        "complaints_30d": d["complaints_30d"],
        "tenure_days": max(0.0, (t - start) / DAY),
        "vip": 1.0 if tier in VIP_TIERS else 0.0,
        "log_monthly_value": math.log1p(max(0.0, monthly_value)),
    }
