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

``FEATURES`` (in ``services.scoring.catalogue``, re-exported here) is the
catalogue: every feature's unit, meaning and reason codes (English and
Chinese). ``docs/features.md`` documents each one, and tests/test_docs.py
checks that it does.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Required, TypedDict

from services.scoring.catalogue import (
    CATEGORIES,
    FAR_HOURS,
    FEATURE_NAMES,
    FEATURE_SOURCES,
    FEATURES,
    UNKNOWN,
    Feature,
)
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
V2_VOLUMES: tuple[str, ...] = (
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
"""The contract-version-2 sums, each a feature of the same name."""
VOLUMES: tuple[str, ...] = ("calls_7d", "voice_min_7d", "sms_7d", "data_mb_7d", *V2_VOLUMES)
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
TIER_LEVEL = {"standard": 0, "vip_guest": 1, "silver": 2, "gold": 3, "diamond": 4}
# Recent payments kept to decide whether debts are paid (partial payments add up).
MAX_PAYMENTS = 8
# Distinct contacts: the newest time each hashed counterpart was seen, at most this many.
MAX_CONTACTS = 64

Pair = tuple[float, float] | list[float]
"""A number and the time it belongs to: ``(value, epoch seconds)``. A tuple as
``apply_event`` writes it, a two-item list once the state has been through JSON
or ``services.scoring.codec`` (both give lists back); the code reads either."""
Stamped = tuple[Any, float] | list[Any]
"""A ``latest`` value and its event time, ``(value, occurred_at)`` (a list after
JSON, as ``Pair``). The value's shape depends on the name (see ``State.latest``)."""


class ScoredRecord(TypedDict):
    """The score last served for a subscriber, as ``batch._record`` keeps it and the API serves it.

    Times and the event id are text (what the JSON column and the API hold); the
    codec packs this shape and keeps any other in its JSON tail.
    """

    score: float
    previous_score: float | None  # the score before it (None: the first)
    band: str
    model_version: str
    cause_event_id: str  # the event that led to it, canonical uuid text
    event_time: str  # ISO 8601: that event's occurred_at
    scored_at: str  # ISO 8601: when it was scored (the event time in a replay)
    published_score: float | None  # the last score published to alerting (None: never)


class State(TypedDict, total=False):
    """One subscriber's features, kept incrementally (see the module); a plain dict at runtime.

    The ``Required`` keys are the ones ``new_state`` sets; the engine and the batch
    core add the others when they first have something to keep, so older states
    (and a new subscriber's) lack them. It is stored as JSON or as the codec's
    bytes, which give tuples back as lists (``Pair``, ``Stamped``).
    """

    decayed: Required[dict[str, Pair]]
    """Decayed sum name (a ``DECAYED`` key) -> (value, reference time): the sum decayed
    to its reference time. Only the sums some event touched are present."""
    latest: Required[dict[str, Stamped]]
    """Name -> (value, event time): the value of the newest event of its kind, so it
    does not depend on arrival order. Names and values: ``last_bill`` (amount due),
    ``bill_split`` (recurring or None, overage or None, amount due), ``arrears``
    (overdue amount, days overdue), ``stop_notice`` (suspension time, amount to pay),
    ``profile`` (tier, monthly value, activation time or None), ``profile_v2``
    (``_profile_v2``'s dict), ``churned`` (churn kind; None after a reactivation),
    ``manager`` (account manager id or None; absent until a profile names one)."""
    first_seen: Required[float | None]
    """Oldest event time seen (None before the first event)."""
    last_activity: Required[float | None]
    """Newest usage (CDR) event time (None before the first)."""
    watermark: Required[float | None]
    """Newest event time seen: the time the features are read at (None before the first)."""
    payments: Required[list[Pair]]
    """The newest ``MAX_PAYMENTS`` payments as (amount, event time), oldest first: to
    decide whether arrears or a stop notice have been paid since."""
    contacts: Required[dict[str, float]]
    """Hashed counterpart (10 hex digits) -> newest time seen, at most ``MAX_CONTACTS``."""
    pending: list[float]
    """Snapshot times waiting for their horizon label (set by ``Scorer.step``)."""
    stepping: list[float]
    """The pending snapshot times still waiting for their step label too; kept only
    when the label step is shorter than the horizon (else it is ``pending``)."""
    treated_at: float
    """Latest intervention time (a retention call that kept the subscriber): no snapshot
    is taken at or before it (``Scorer.censor``)."""
    last_score: float
    """The score the engine gave after the last batch (the next score's ``previous``)."""
    scored: ScoredRecord
    """The latest score served and what it came from (``batch._record``, on every score
    of a run that publishes; a warm start or the benchmark's bare limit leaves it out)."""


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
        # Not a model input: what GET /v1/subscribers filters on (listing.py). Kept only
        # once a profile names a manager, so states without one stay as small as before.
        if p2.account_manager_id is not None or "manager" in state["latest"]:
            _set_latest(state, "manager", p2.account_manager_id, t)
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
    for name in V2_VOLUMES:
        out[name] = d[name]
    for field, value in extra.get("cat", {}).items():
        out[f"{CATEGORY_PREFIX}{field}={value}"] = 1.0
    return out


__all__ = [
    "CATEGORIES",
    "CATEGORY_PREFIX",
    "DECAYED",
    "FAR_HOURS",
    "FEATURES",
    "FEATURE_NAMES",
    "FEATURE_SOURCES",
    "UNKNOWN",
    "VOLUMES",
    "Feature",
    "Pair",
    "ScoredRecord",
    "Stamped",
    "State",
    "apply_event",
    "decayed_at",
    "is_churned",
    "mark_churned",
    "new_state",
    "pending_stop_notice",
    "vector",
]
