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
    ContactEvent,
    Event,
    PaymentEvent,
    ReactivationEvent,
    StopNoticeEvent,
    SubscriberEvent,
    SubscriberPayload,
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
    # Contract version 2 inputs (kept only when an event carries them).
    "day_min_7d": 7,
    "evening_min_7d": 7,
    "night_min_7d": 7,
    "intl_min_7d": 7,
    "intl_calls_7d": 7,
    "roaming_min_7d": 7,
    "counterparts_30d": 30,
    "severe_complaints_30d": 30,
    "billing_complaints_30d": 30,
    "network_complaints_30d": 30,
    "care_contacts_30d": 30,
    "retention_contacts_30d": 30,
}
VOLUMES: tuple[str, ...] = (
    "calls_7d",
    "voice_min_7d",
    "sms_7d",
    "data_mb_7d",
    "day_min_7d",
    "evening_min_7d",
    "night_min_7d",
    "intl_min_7d",
    "intl_calls_7d",
    "roaming_min_7d",
    "counterparts_30d",
    "severe_complaints_30d",
    "billing_complaints_30d",
    "network_complaints_30d",
    "care_contacts_30d",
    "retention_contacts_30d",
)
"""Decayed sums read at their steady level (see ``vector``): usage, and the version 2
contact and complaint counts (rates of contact, which a model reads through bins).
The prior's own counts (complaints, late payments, downgrades) are read as they are:
its fixed weights per event must not be multiplied on a subscriber's first days."""
# CDR time bands read as day / evening / night minutes (other labels count in none).
TIME_BANDS = {
    "day": "day_min_7d",
    "peak": "day_min_7d",
    "evening": "evening_min_7d",
    "night": "night_min_7d",
    "off_peak": "night_min_7d",
}
CATEGORY_PREFIX = "cat:"
"""Model inputs ``cat:<field>=<value>`` (1.0): the profile's categorical values, one-hot."""
UNKNOWN = -1.0
"""A profile number not given (handset age, contract days left, data allowance)."""
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
    "handset_age_months": _f(
        "months",
        f"Age of the handset in months ({UNKNOWN:.0f} when unknown)",
        ("OLD_HANDSET", "old handset", "手机使用时间长"),
        ("NEW_HANDSET", "new handset", "手机较新"),
    ),
    "lines": _f(
        "lines",
        "Lines or members on the account (1 when unknown)",
        ("MANY_LINES", "many lines on the account", "账户号码多"),
        ("SINGLE_LINE", "single line", "单一号码"),
    ),
    "contract_days_left": _f(
        "days",
        f"Days until the contract's commitment ends ({UNKNOWN:.0f} when unknown; 0 once ended)",
        ("CONTRACT_FAR", "long commitment left", "合约剩余期长"),
        ("CONTRACT_ENDING", "contract ending or out of contract", "合约即将到期或已到期"),
    ),
    "plan_international": _f(
        "0/1",
        "1 with an international calling plan",
        ("INTL_PLAN", "international plan", "开通国际套餐"),
        ("NO_INTL_PLAN", "no international plan", "未开通国际套餐"),
    ),
    "plan_roaming": _f(
        "0/1",
        "1 with roaming in the plan",
        ("ROAMING_PLAN", "roaming plan", "开通漫游"),
        ("NO_ROAMING_PLAN", "no roaming plan", "未开通漫游"),
    ),
    "plan_voicemail": _f(
        "0/1",
        "1 with a voicemail plan",
        ("VOICEMAIL_PLAN", "voicemail plan", "开通语音信箱"),
        ("NO_VOICEMAIL_PLAN", "no voicemail plan", "未开通语音信箱"),
    ),
    "plan_unlimited": _f(
        "0/1",
        "1 with unlimited data",
        ("UNLIMITED_DATA", "unlimited data plan", "无限流量套餐"),
        ("CAPPED_DATA", "capped data plan", "限量流量套餐"),
    ),
    "data_allowance_gb": _f(
        "GB",
        f"Monthly data allowance ({UNKNOWN:.0f} when unknown)",
        ("BIG_ALLOWANCE", "large data allowance", "流量额度大"),
        ("SMALL_ALLOWANCE", "small data allowance", "流量额度小"),
    ),
    "recurring_charge": _f(
        "currency",
        "Monthly recurring (plan) charge, from the profile or the latest bill",
        ("HIGH_PLAN_CHARGE", "expensive plan", "套餐月费高"),
        ("LOW_PLAN_CHARGE", "cheap plan", "套餐月费低"),
    ),
    "overage_share": _f(
        "share",
        "Share of the latest bill beyond the plan (overage / amount due)",
        ("OVERAGE", "paying for usage beyond the plan", "超套餐消费多"),
        ("NO_OVERAGE", "bill within the plan", "账单在套餐内"),
    ),
    "day_min_7d": _f(
        "minutes",
        "Voice minutes in the day band, 7-day half-life decayed",
        ("DAY_MINUTES_UP", "many daytime minutes", "白天通话时长多"),
        ("DAY_MINUTES_DOWN", "few daytime minutes", "白天通话时长少"),
    ),
    "evening_min_7d": _f(
        "minutes",
        "Voice minutes in the evening band, 7-day half-life decayed",
        ("EVENING_MINUTES_UP", "many evening minutes", "晚间通话时长多"),
        ("EVENING_MINUTES_DOWN", "few evening minutes", "晚间通话时长少"),
    ),
    "night_min_7d": _f(
        "minutes",
        "Voice minutes in the night band, 7-day half-life decayed",
        ("NIGHT_MINUTES_UP", "many night minutes", "夜间通话时长多"),
        ("NIGHT_MINUTES_DOWN", "few night minutes", "夜间通话时长少"),
    ),
    "intl_min_7d": _f(
        "minutes",
        "International voice minutes, 7-day half-life decayed",
        ("INTL_MINUTES_UP", "many international minutes", "国际通话时长多"),
        ("INTL_MINUTES_DOWN", "few international minutes", "国际通话时长少"),
    ),
    "intl_calls_7d": _f(
        "calls",
        "International voice calls, 7-day half-life decayed",
        ("INTL_CALLS_UP", "many international calls", "国际通话次数多"),
        ("INTL_CALLS_DOWN", "few international calls", "国际通话次数少"),
    ),
    "roaming_min_7d": _f(
        "minutes",
        "Voice minutes while roaming, 7-day half-life decayed",
        ("ROAMING_UP", "much roaming", "漫游通话多"),
        ("ROAMING_DOWN", "little roaming", "漫游通话少"),
    ),
    "counterparts_30d": _f(
        "contacts",
        "Distinct counterparts reported by usage summaries, 30-day half-life decayed",
        ("COUNTERPARTS_MANY", "calls many different people", "通话对象多"),
        ("COUNTERPARTS_FEW", "calls few different people", "通话对象少"),
    ),
    "severe_complaints_30d": _f(
        "count",
        "High-severity complaints, 30-day half-life decayed",
        ("SEVERE_COMPLAINTS", "serious complaints", "严重投诉"),
        ("NO_SEVERE_COMPLAINTS", "no serious complaints", "无严重投诉"),
    ),
    "billing_complaints_30d": _f(
        "count",
        "Billing complaints, 30-day half-life decayed",
        ("BILLING_COMPLAINTS", "complaints about bills", "账单投诉"),
        ("NO_BILLING_COMPLAINTS", "no billing complaints", "无账单投诉"),
    ),
    "network_complaints_30d": _f(
        "count",
        "Network complaints, 30-day half-life decayed",
        ("NETWORK_COMPLAINTS", "complaints about the network", "网络投诉"),
        ("NO_NETWORK_COMPLAINTS", "no network complaints", "无网络投诉"),
    ),
    "care_contacts_30d": _f(
        "count",
        "Contacts with customer care (contact events, team other than retention), decayed",
        ("CARE_CONTACTS", "frequent calls to customer care", "频繁联系客服"),
        ("FEW_CARE_CONTACTS", "rarely contacts care", "较少联系客服"),
    ),
    "retention_contacts_30d": _f(
        "count",
        "Contacts with the retention (cancellation) desk, 30-day half-life decayed",
        ("RETENTION_DESK", "contacted the retention desk", "联系过挽留/销户部门"),
        ("NO_RETENTION_DESK", "no retention-desk contact", "未联系挽留部门"),
    ),
}
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURES)

CATEGORIES: dict[str, tuple[str, str]] = {
    "credit_class": ("credit class", "信用等级"),
    "age_band": ("age band", "年龄段"),
    "region": ("region", "地区"),
    "contract": ("contract", "合约类型"),
    "handset_price_band": ("handset price band", "手机价位"),
}
"""Profile fields read as categories: (English, Chinese) names for reasons; plus ``attributes``."""

FEATURE_SOURCES: dict[str, tuple[str, ...]] = {
    "calls_7d": ("cdr.count", "cdr.service"),
    "voice_min_7d": ("cdr.duration_s", "cdr.service"),
    "voice_trend": ("cdr.duration_s", "cdr.service"),
    "sms_7d": ("cdr.count", "cdr.service"),
    "sms_trend": ("cdr.count", "cdr.service"),
    "data_mb_7d": ("cdr.bytes", "cdr.service"),
    "data_trend": ("cdr.bytes", "cdr.service"),
    "competitor_share_7d": ("cdr.count", "cdr.counterpart_network"),
    "competitor_share_change": ("cdr.count", "cdr.counterpart_network"),
    "distinct_contacts_30d": ("cdr.counterpart_id",),
    "days_since_activity": ("cdr.occurred_at",),
    "bill_ratio": ("billing.amount_due",),
    "spend_drop": ("billing.amount_due",),
    "bill_shock": ("billing.amount_due",),
    "downgrades_90d": ("billing.plan_change",),
    "late_payments_90d": ("payment.late",),
    "arrears_amount": ("arrears.overdue_amount", "payment.amount"),
    "arrears_days": ("arrears.days_overdue", "payment.amount"),
    "stop_notice_pending": ("stop_notice.amount_to_pay", "payment.amount"),
    "hours_to_suspension": ("stop_notice.suspension_at", "payment.amount"),
    "complaints_30d": ("complaint.occurred_at",),
    "tenure_days": ("subscriber.activated_at", "cdr.occurred_at"),
    "tier_level": ("subscriber.tier",),
    "log_monthly_value": ("subscriber.monthly_value",),
    "handset_age_months": ("subscriber.handset.age_months", "subscriber.handset.acquired_at"),
    "lines": ("subscriber.lines",),
    "contract_days_left": ("subscriber.contract_end_at",),
    "plan_international": ("subscriber.plan.international",),
    "plan_roaming": ("subscriber.plan.roaming",),
    "plan_voicemail": ("subscriber.plan.voicemail",),
    "plan_unlimited": ("subscriber.plan.unlimited_data",),
    "data_allowance_gb": ("subscriber.plan.data_allowance_mb",),
    "recurring_charge": ("subscriber.recurring_charge", "billing.recurring_charge"),
    "overage_share": ("billing.overage_charge", "billing.amount_due"),
    "day_min_7d": ("cdr.time_band", "cdr.duration_s"),
    "evening_min_7d": ("cdr.time_band", "cdr.duration_s"),
    "night_min_7d": ("cdr.time_band", "cdr.duration_s"),
    "intl_min_7d": ("cdr.counterpart_network", "cdr.duration_s"),
    "intl_calls_7d": ("cdr.counterpart_network", "cdr.count"),
    "roaming_min_7d": ("cdr.roaming", "cdr.duration_s"),
    "counterparts_30d": ("cdr.distinct_counterparts",),
    "severe_complaints_30d": ("complaint.severity",),
    "billing_complaints_30d": ("complaint.category",),
    "network_complaints_30d": ("complaint.category",),
    "care_contacts_30d": ("contact.team",),
    "retention_contacts_30d": ("contact.team",),
    "cat:credit_class": ("subscriber.credit_class",),
    "cat:age_band": ("subscriber.age_band",),
    "cat:region": ("subscriber.region",),
    "cat:contract": ("subscriber.contract",),
    "cat:handset_price_band": ("subscriber.handset.price_band",),
    "cat:attributes": ("subscriber.attributes",),
}
"""Which event fields (``event_type.field``) each feature reads: the import coverage table."""


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
        if p.distinct_counterparts:
            _add_decayed(state, "counterparts_30d", p.distinct_counterparts, t)
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
            elif p.counterpart_network == "international":
                _add_decayed(state, "intl_min_7d", minutes, t)
                _add_decayed(state, "intl_calls_7d", p.count, t)
            if p.roaming:
                _add_decayed(state, "roaming_min_7d", minutes, t)
            band = TIME_BANDS.get((p.time_band or "").lower())
            if band is not None:
                _add_decayed(state, band, minutes, t)
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
        b = event.payload
        if b.recurring_charge is not None or b.overage_charge is not None:
            recurring = None if b.recurring_charge is None else float(b.recurring_charge)
            overage = None if b.overage_charge is None else float(b.overage_charge)
            _set_latest(state, "bill_split", (recurring, overage, amount), t)
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
        extra = _profile_v2(p2, t)
        if extra:
            _set_latest(state, "profile_v2", extra, t)
    elif isinstance(event, ComplaintEvent):
        _add_decayed(state, "complaints_30d", 1.0, t)
        c = event.payload
        if c.severity == "high":
            _add_decayed(state, "severe_complaints_30d", 1.0, t)
        if c.category in ("billing", "network"):
            _add_decayed(state, f"{c.category}_complaints_30d", 1.0, t)
    elif isinstance(event, ContactEvent):
        retention = event.payload.team.strip().lower() == "retention"
        _add_decayed(state, "retention_contacts_30d" if retention else "care_contacts_30d", 1.0, t)
    elif isinstance(event, ChurnEvent):
        _set_latest(state, "churned", event.payload.kind, t)
    elif isinstance(event, ReactivationEvent):
        _set_latest(state, "churned", None, t)


def _category(value: str) -> str:
    """A categorical value as a stable key: lower case, spaces as underscores, 32 chars."""
    return "_".join(value.strip().lower().split())[:32] or "blank"


def _profile_v2(p: SubscriberPayload, t: float) -> dict[str, Any]:
    """The profile's contract-v2 fields, as the state keeps them (empty for a v1 profile)."""
    out: dict[str, Any] = {}
    handset = p.handset
    if handset is not None:
        if handset.age_months is not None:
            out["handset_born"] = t - handset.age_months * 30.4375 * DAY
        elif handset.acquired_at is not None:
            out["handset_born"] = handset.acquired_at.timestamp()
        if handset.price_band:
            out["cat"] = {"handset_price_band": _category(handset.price_band)}
    if p.lines is not None:
        out["lines"] = p.lines
    if p.recurring_charge is not None:
        out["recurring"] = float(p.recurring_charge)
    if p.contract_end_at is not None:
        out["contract_end"] = p.contract_end_at.timestamp()
    if p.plan is not None:
        plan = p.plan
        for key, value in (
            ("international", plan.international),
            ("roaming", plan.roaming),
            ("voicemail", plan.voicemail),
            ("unlimited", plan.unlimited_data),
        ):
            if value is not None:
                out[f"plan_{key}"] = 1.0 if value else 0.0
        if plan.data_allowance_mb is not None:
            out["allowance_gb"] = plan.data_allowance_mb / 1000.0
    categories = out.setdefault("cat", {})
    for name in ("credit_class", "age_band", "region", "contract"):
        label: str | None = getattr(p, name)
        if label:
            categories[name] = _category(label)
    for key, text in sorted(p.attributes.items()):
        categories[f"attr_{key}"] = _category(text)
    if not categories:
        del out["cat"]
    return out


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
    # Only the sums an event ever touched are stored; the others are 0 (one pass over
    # the stored ones: the version 2 sums are absent for most operators).
    d = dict.fromkeys(DECAYED, 0.0)
    for name in state["decayed"]:
        d[name] = decayed_at(state, name, t)
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
    # Usage volumes as their steady level: a sum that has filled for only a few days
    # (a subscriber first seen lately, every subscriber on a fresh install) is scaled
    # up by the share it has filled, as _rate does for the trends. Without it a
    # snapshot's date since install would say as much as the usage itself.
    filled = {h: 1.0 - 2.0 ** (-max(age_days, 1.0) / h) for h in (7.0, 30.0)}
    level = {name: d[name] / filled[DECAYED[name]] for name in VOLUMES}
    return {
        "calls_7d": level["calls_7d"],
        "voice_min_7d": level["voice_min_7d"],
        "voice_trend": _rate_trend(d["voice_min_7d"], d["voice_min_30d"], 1.0, age_days),
        "sms_7d": level["sms_7d"],
        "sms_trend": _rate_trend(d["sms_7d"], d["sms_30d"], 1.0, age_days),
        "data_mb_7d": level["data_mb_7d"],
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
        **_vector_v2(state, d | level, t),
    }


def _vector_v2(state: State, d: dict[str, float], t: float) -> dict[str, float]:
    """The contract-v2 features (neutral values when no event carried them)."""
    extra: dict[str, Any] = _latest(state, "profile_v2", {})
    born = extra.get("handset_born")
    end = extra.get("contract_end")
    recurring, overage, amount = _latest(state, "bill_split", (None, None, 0.0))
    out = {
        "handset_age_months": UNKNOWN if born is None else max(0.0, (t - born) / DAY / 30.4375),
        "lines": float(extra.get("lines", 1)),
        "contract_days_left": UNKNOWN if end is None else max(0.0, (end - t) / DAY),
        "plan_international": extra.get("plan_international", 0.0),
        "plan_roaming": extra.get("plan_roaming", 0.0),
        "plan_voicemail": extra.get("plan_voicemail", 0.0),
        "plan_unlimited": extra.get("plan_unlimited", 0.0),
        "data_allowance_gb": extra.get("allowance_gb", UNKNOWN),
        "recurring_charge": float(
            recurring if recurring is not None else extra.get("recurring", 0.0)
        ),
        "overage_share": float(overage) / amount if overage is not None and amount > 0 else 0.0,
    }
    for name in (
        "day_min_7d",
        "evening_min_7d",
        "night_min_7d",
        "intl_min_7d",
        "intl_calls_7d",
        "roaming_min_7d",
        "counterparts_30d",
        "severe_complaints_30d",
        "billing_complaints_30d",
        "network_complaints_30d",
        "care_contacts_30d",
        "retention_contacts_30d",
    ):
        out[name] = d[name]
    for field, value in extra.get("cat", {}).items():
        out[f"{CATEGORY_PREFIX}{field}={value}"] = 1.0
    return out
