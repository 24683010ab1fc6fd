"""A small, fast, deterministic synthetic operator population for tests and benchmarks.

Each subscriber has a tier (mostly ``standard``; some ``vip_guest``/``silver``/``gold``/
``diamond`` with an account manager), a monthly value and plan, a ``+1555`` phone and an
activation date: one ``subscriber`` event on day 0. Every day brings one summarised
``cdr`` per service (voice: ``count`` calls, total ``duration_s``; sms: ``count``; data:
``bytes``), lower at weekends, with noise; the day's calls to competitor networks (~5%)
are a separate voice record with ``counterpart_network="competitor"``. Each month a
``billing`` event on the bill-cycle day, then a ``payment``; late payers pay after the
due date, after ``arrears`` and sometimes a ``stop_notice``. Complaints are rare.
Churners (``churn_rate``) churn after day 30. Over the 14-35 days before
(``warning_days``), voice sinks to
30-50%, competitor share climbs to 30-60%, complaints get likelier, some downgrade on
their last bill, some fall into arrears. Then a ``churn`` event (mostly ``port_out`` to
a named competitor, else ``cancellation``) and nothing more. ``silent_churn_share`` of
churners give no warning; ~10% of the rest dip mildly and recover (false alarms).
One ``random.Random(seed)`` drives everything and the id of a subscriber's n-th generated
event is ``uuid5(NAMESPACE, f"{seed}|{subscriber_id}|{n}")``: same arguments, same events.
``start`` defaults to 2026-01-01T00:00:00Z; ingest refuses future events, so if
``start + days`` is after now, pass an earlier ``start``.
"""

from __future__ import annotations

import gc
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from hashlib import sha1
from operator import itemgetter
from pathlib import Path
from random import Random
from typing import Any

__all__ = ["DEFAULT_START", "NAMESPACE", "Population", "generate", "iter_events", "write_ndjson"]

DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)
"""Where the period starts unless ``start`` is given (fixed, so output is reproducible)."""

NAMESPACE = uuid.UUID("6a1f3d0e-2b7c-4e59-8f13-94c2d7a5e0b8")
"""UUIDv5 namespace of synthetic event ids."""

SOURCE = "synth"
CHURN_AFTER_DAY = 30  # churners churn on a day index >= this
FALSE_ALARM_SHARE = 0.10  # of non-churners: a mild temporary dip, then recovery
LATE_PAYER_SHARE = 0.07  # of subscribers: often pay after the due date
DUE_DAYS = 14  # bill due this many days after it is issued

# (tier, share, monthly value range); every tier but standard has an account manager.
TIERS: tuple[tuple[str, float, tuple[float, float]], ...] = (
    ("standard", 0.85, (15.0, 70.0)),
    ("vip_guest", 0.04, (40.0, 120.0)),
    ("silver", 0.05, (70.0, 150.0)),
    ("gold", 0.04, (120.0, 260.0)),
    ("diamond", 0.02, (250.0, 500.0)),
)
# The plan ladder: (plan_id, list price). A subscriber's plan is the dearest one
# their monthly value covers; a downgrade is one step down.
PLANS: tuple[tuple[str, float], ...] = (
    ("basic-15", 15.0),
    ("smart-30", 30.0),
    ("plus-50", 50.0),
    ("max-80", 80.0),
    ("pro-120", 120.0),
    ("elite-200", 200.0),
    ("infinite-350", 350.0),
)
COMPETITORS = ("NovaTel", "Orbit Mobile", "Pulse Wireless")
PAYMENT_METHODS = ("direct_debit", "card", "bank_transfer", "cash", "voucher")
COMPLAINT_CATEGORIES = ("network", "billing", "service", "device", "other")
WEEKEND = {"voice": 0.7, "sms": 0.8, "data": 0.9}  # usage factor on Saturday and Sunday

_ID_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")

# Seconds into the day at which each kind of event happens, so that one day's
# events never spill into the next and the profile is a subscriber's first event.
_PROFILE_AT = (0, 3_600)
_BILL_AT = (6 * 3_600, 7 * 3_600)
_ARREARS_AT = (7 * 3_600, 8 * 3_600)
_DAYTIME = (9 * 3_600, 21 * 3_600)
_CDR_AT = 22 * 3_600  # plus up to 119 minutes, fixed per subscriber


@dataclass(frozen=True)
class Population:
    """A generated population: its events and the ground truth."""

    events: list[dict[str, Any]]
    """JSON-ready event dicts in the contract's shape, sorted by ``occurred_at``."""
    churn_at: dict[str, datetime]
    """Subscriber id -> time of its ``churn`` event, for the churners only."""
    subscribers: list[str]
    """Every subscriber id, in generation order."""


@dataclass(slots=True)
class _Sub:
    """One subscriber's hidden traits and running state."""

    sid: str
    tier: str
    value: float  # monthly value, follows the plan on a downgrade
    plan: int  # index into PLANS
    cycle_day: int  # day of month the bill is issued (1-28)
    calls: float  # weekday voice calls per day
    call_s: float  # mean call duration in seconds
    sms: float
    data_mb: float
    data_sessions: float
    comp_share: float  # baseline share of calls to competitor networks
    cdr_at: int  # seconds into the day of the daily usage summaries
    late_payer: bool
    churn_day: int | None = None
    silent: bool = False
    ramp_start: int = 0  # first day of the warning ramp (churners) or dip (false alarms)
    ramp_len: int = 0  # 0: no ramp or dip
    ramp_power: float = 1.0  # shape of the ramp: 1 linear, below 1 most of the change early
    voice_floor: float = 1.0  # voice factor at the ramp's end / the dip's bottom
    comp_target: float = 0.0  # competitor share at the ramp's end / the dip's bottom
    downgrades: bool = False
    arrears: bool = False
    false_alarm: bool = False
    churn_offset: int = 0
    churn_payload: dict[str, Any] = field(default_factory=dict)
    n: int = 0  # events emitted so far (numbers the event ids)
    later: dict[int, list[tuple[int, str, dict[str, Any]]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Plan:
    seed: int
    start: datetime
    days: int
    subs: list[_Sub]
    profiles: list[dict[str, Any]]
    rng: Random  # carries on from the plan into the day-by-day events
    # Event ids are uuid5(id_namespace, f"{id_tag}{seed}|{sid}|{n}"); the simulator uses
    # shared.events.derive_id's namespace and a tag, so its ids are derive_id(...)'s.
    id_namespace: uuid.UUID = NAMESPACE
    id_tag: str = ""
    source: str = SOURCE  # the events' ``source``


def _money(x: float) -> str:
    return f"{max(0.0, x):.2f}"


def _validate(
    subscribers: int,
    days: int,
    start: datetime | None,
    churn_rate: float,
    silent_churn_share: float,
    id_prefix: str,
    churn_from_day: int = CHURN_AFTER_DAY,
) -> datetime:
    if subscribers < 0:
        raise ValueError("subscribers must be >= 0")
    if days < 1:
        raise ValueError("days must be >= 1")
    if not 0.0 <= churn_rate <= 1.0:
        raise ValueError("churn_rate must be between 0 and 1")
    if not 0.0 <= silent_churn_share <= 1.0:
        raise ValueError("silent_churn_share must be between 0 and 1")
    if not churn_from_day >= 0:
        raise ValueError("churn_from_day must be >= 0")
    if churn_rate > 0 and days <= churn_from_day:
        raise ValueError(
            f"churners churn from day {churn_from_day}: use days > {churn_from_day} or churn_rate=0"
        )
    if not _ID_PREFIX.match(id_prefix) or len(id_prefix) > 40:
        raise ValueError("id_prefix must be 1-40 chars of letters, digits and ._:- ")
    if start is None:
        return DEFAULT_START
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    return start.astimezone(UTC)


def manager_count(subscribers: int) -> int:
    """Account managers of a population: one per 200 subscribers (ids ``AM-001``...)."""
    return max(1, subscribers // 200)


def _make_plan(
    *,
    subscribers: int,
    days: int,
    seed: int,
    start: datetime | None,
    churn_rate: float,
    silent_churn_share: float,
    id_prefix: str,
    warning_days: tuple[int, int] = (14, 35),
    ramp_power: float = 1.0,
    churn_from_day: int = CHURN_AFTER_DAY,
) -> _Plan:
    t0 = _validate(
        subscribers, days, start, churn_rate, silent_churn_share, id_prefix, churn_from_day
    )
    if not 1 <= warning_days[0] <= warning_days[1]:
        raise ValueError("warning_days must be (low, high) with 1 <= low <= high")
    if not 0.0 < ramp_power <= 4.0:
        raise ValueError("ramp_power must be in (0, 4]")
    rng = Random(seed)
    width = max(6, len(str(subscribers)))
    managers = manager_count(subscribers)
    # Distinct numbers: i -> (i * stride + offset) mod 10^7 is a bijection (stride is coprime).
    stride, phone_offset = 7_919_333, rng.randrange(10_000_000)
    subs: list[_Sub] = []
    profiles: list[dict[str, Any]] = []
    tier_names = [t[0] for t in TIERS]
    tier_weights = [t[1] for t in TIERS]
    ranges = {t[0]: t[2] for t in TIERS}
    for i in range(subscribers):
        sid = f"{id_prefix}-{i:0{width}d}"
        tier = rng.choices(tier_names, tier_weights)[0]
        lo, hi = ranges[tier]
        value = round(rng.uniform(lo, hi), 2)
        plan = max(k for k, (_, price) in enumerate(PLANS) if price <= value or k == 0)
        activated = t0 - timedelta(days=rng.randint(30, 3_000), seconds=rng.randrange(86_400))
        vip = tier != "standard"
        sub = _Sub(
            sid=sid,
            tier=tier,
            value=value,
            plan=plan,
            cycle_day=rng.randint(1, 28),
            calls=rng.lognormvariate(1.4, 0.5) * (1.3 if vip else 1.0),
            call_s=rng.uniform(60.0, 240.0),
            sms=rng.lognormvariate(1.0, 0.8),
            data_mb=rng.lognormvariate(5.5, 0.9),
            data_sessions=rng.uniform(3.0, 20.0),
            comp_share=rng.uniform(0.02, 0.08),
            cdr_at=_CDR_AT + 60 * rng.randrange(120),
            late_payer=rng.random() < LATE_PAYER_SHARE,
            ramp_power=ramp_power,
        )
        subs.append(sub)
        payload: dict[str, Any] = {
            "tier": tier,
            "monthly_value": _money(value),
            "phone": f"+1555{(i * stride + phone_offset) % 10_000_000:07d}",
            "preferred_channel": ("call" if rng.random() < 0.7 else "sms")
            if vip
            else ("sms" if rng.random() < 0.9 else "call"),
            "language": "es" if rng.random() < 0.15 else "en",
            "activated_at": activated.isoformat(),
            "plan_id": PLANS[plan][0],
        }
        if vip:
            payload["account_manager_id"] = f"AM-{rng.randrange(1, managers + 1):03d}"
        profiles.append(payload)

    n_churn = round(subscribers * churn_rate)
    churners = rng.sample(range(subscribers), n_churn) if n_churn else []
    n_silent = round(n_churn * silent_churn_share)
    for rank, i in enumerate(churners):
        sub = subs[i]
        # A churn before its warning ramp could fit in the data starts its signs
        # before the first day: a fresh deployment sees them mid-way.
        sub.churn_day = rng.randint(churn_from_day, days - 1)
        sub.churn_offset = rng.randrange(*_DAYTIME)
        if rng.random() < 0.75:
            sub.churn_payload = {"kind": "port_out", "competitor": rng.choice(COMPETITORS)}
        else:
            sub.churn_payload = {"kind": "cancellation"}
        if rank < n_silent:  # the sample is already random: the first ones are silent
            sub.silent = True
            continue
        sub.ramp_len = rng.randint(*warning_days)
        sub.ramp_start = sub.churn_day - sub.ramp_len
        sub.voice_floor = rng.uniform(0.3, 0.5)
        sub.comp_target = rng.uniform(0.3, 0.6)
        sub.downgrades = rng.random() < 0.4
        sub.arrears = rng.random() < 0.3
    churner_set = set(churners)
    for i, sub in enumerate(subs):
        if i in churner_set or rng.random() >= FALSE_ALARM_SHARE:
            continue
        sub.false_alarm = True
        sub.ramp_len = rng.randint(7, 21)
        sub.ramp_start = rng.randint(0, max(0, days - sub.ramp_len))
        sub.voice_floor = rng.uniform(0.6, 0.8)
        sub.comp_target = rng.uniform(0.1, 0.2)
    return _Plan(seed=seed, start=t0, days=days, subs=subs, profiles=profiles, rng=rng)


def _intensity(sub: _Sub, d: int) -> float:
    """0 (normal) to 1 (full warning signs) on day ``d``."""
    if not sub.ramp_len:
        return 0.0
    x = (d - sub.ramp_start) / sub.ramp_len
    if x <= 0.0 or x > 1.0:
        return 0.0
    if sub.false_alarm:  # down and back up again
        return float((1.0 - abs(2.0 * x - 1.0)) ** sub.ramp_power)
    return float(x**sub.ramp_power)


def _bill(sub: _Sub, d: int, day0: datetime, rng: Random, seed: int) -> dict[str, Any]:
    """The bill issued on day ``d``; schedules its payment, arrears and stop-notice."""
    previous = None
    if (
        sub.downgrades
        and sub.churn_day is not None
        and sub.churn_day - max(sub.ramp_len, 30) <= d < sub.churn_day
        and sub.plan > 0
    ):
        sub.downgrades = False
        previous = PLANS[sub.plan][0]
        sub.value *= PLANS[sub.plan - 1][1] / PLANS[sub.plan][1]
        sub.plan -= 1
    amount = round(sub.value * max(0.7, rng.gauss(1.0, 0.08)), 2)
    payload: dict[str, Any] = {
        "period": f"{day0.year:04d}-{day0.month:02d}",
        "amount_due": _money(amount),
        "plan_id": PLANS[sub.plan][0],
        "due_date": (day0 + timedelta(days=DUE_DAYS)).isoformat(),
    }
    if previous is not None:
        payload["previous_plan_id"] = previous
        payload["plan_change"] = "downgrade"
    due = d + DUE_DAYS
    # Churners with arrears fall behind on the bills that come due during their last weeks.
    falls_behind = (
        sub.arrears and sub.churn_day is not None and sub.churn_day - 45 <= due + 3 < sub.churn_day
    )
    late = falls_behind or (sub.late_payer and rng.random() < 0.6)
    method = rng.choice(PAYMENT_METHODS)
    if not late:
        pay_day = d + rng.randint(1, DUE_DAYS - 1)
        pay = {"amount": _money(amount), "method": method, "period": payload["period"]}
        sub.later.setdefault(pay_day, []).append((rng.randrange(*_DAYTIME), "payment", pay))
        return payload
    pay_delay = rng.randint(40, 60) if falls_behind else rng.randint(4, 25)
    for overdue in (3, 10, 30):  # the billing system's reminders while it stays unpaid
        if pay_delay > overdue:
            arrears = {"overdue_amount": _money(amount), "days_overdue": overdue}
            at = rng.randrange(*_ARREARS_AT)
            sub.later.setdefault(due + overdue, []).append((at, "arrears", arrears))
    if pay_delay > 8 and rng.random() < 0.6:
        notice_delay = rng.randint(7, min(pay_delay - 1, 12))
        at = rng.randrange(*_DAYTIME)
        suspension = day0 + timedelta(days=DUE_DAYS + notice_delay + rng.randint(3, 7), seconds=at)
        notice = {
            "reason": "arrears",
            "suspension_at": suspension.isoformat(),
            "amount_to_pay": _money(amount),
            "notice_id": f"SN-{uuid.uuid5(NAMESPACE, f'{seed}|{sub.sid}|{d}').hex[:16]}",
        }
        sub.later.setdefault(due + notice_delay, []).append((at, "stop_notice", notice))
    pay = {"amount": _money(amount), "method": method, "period": payload["period"], "late": True}
    sub.later.setdefault(due + pay_delay, []).append((rng.randrange(*_DAYTIME), "payment", pay))
    return payload


def _complaint(rng: Random, intensity: float) -> dict[str, Any]:
    if intensity > 0 and rng.random() < 0.6:
        category = rng.choice(("network", "billing", "service"))
    else:
        category = rng.choice(COMPLAINT_CATEGORIES)
    severity = rng.choices(
        ("low", "medium", "high"), (0.4, 0.45 - 0.2 * intensity, 0.15 + 0.2 * intensity)
    )
    return {"category": category, "severity": severity[0], "resolved": rng.random() < 0.5}


class _Day:
    """One day's batch of events, with its timestamps cached (they repeat a lot)."""

    __slots__ = ("batch", "day0", "prefix", "source", "stamps")

    def __init__(self, day0: datetime, prefix: list[Any], source: str = SOURCE) -> None:
        self.source = source
        self.day0 = day0
        self.prefix = prefix
        self.stamps: dict[int, str] = {}
        self.batch: list[tuple[int, dict[str, Any]]] = []

    def emit(
        self, i: int, sub: _Sub, offset: int, event_type: str, payload: dict[str, Any]
    ) -> None:
        # uuid5(NAMESPACE, f"{seed}|{sid}|{n}"), from a precomputed hash of the common prefix.
        h = self.prefix[i].copy()
        h.update(str(sub.n).encode())
        sub.n += 1
        b = bytearray(h.digest()[:16])
        b[6] = (b[6] & 0x0F) | 0x50  # version 5
        b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
        x = b.hex()
        stamp = self.stamps.get(offset)
        if stamp is None:
            stamp = self.stamps[offset] = (self.day0 + timedelta(seconds=offset)).isoformat()
        event = {
            "event_id": f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}",
            "event_type": event_type,
            "subscriber_id": sub.sid,
            "occurred_at": stamp,
            "source": self.source,
            "schema_version": 1,
            "payload": payload,
        }
        self.batch.append((offset, event))


def _stream(plan: _Plan) -> Iterator[dict[str, Any]]:
    """Events day by day; each day's batch is sorted, so the whole stream is."""
    for batch in _days(plan):
        yield from batch


def _days(plan: _Plan) -> Iterator[list[dict[str, Any]]]:
    """Each day's events, sorted, one list per day.

    A day is generated only when asked for, so a caller may change a subscriber's
    hidden state (``plan.subs``) between days: the simulator's outreach feedback.
    """
    rng = plan.rng
    rand = rng.random
    subs = plan.subs
    namespace, tag = plan.id_namespace.bytes, plan.id_tag
    prefix = [sha1(namespace + f"{tag}{plan.seed}|{s.sid}|".encode()) for s in subs]  # noqa: S324
    active = list(range(len(subs)))
    for d in range(plan.days):
        day0 = plan.start + timedelta(days=d)
        weekend = day0.weekday() >= 5
        wv, ws, wd = (WEEKEND["voice"], WEEKEND["sms"], WEEKEND["data"]) if weekend else (1, 1, 1)
        day = _Day(day0, prefix, plan.source)
        emit = day.emit
        still: list[int] = []
        for i in active:
            sub = subs[i]
            if d == sub.churn_day:
                emit(i, sub, sub.churn_offset, "churn", sub.churn_payload)
                continue  # and nothing more, not even what was scheduled
            still.append(i)
            if d == 0:
                emit(i, sub, rng.randrange(*_PROFILE_AT), "subscriber", plan.profiles[i])
            for offset, event_type, payload in sub.later.pop(d, []):
                emit(i, sub, offset, event_type, payload)
            if day0.day == sub.cycle_day:
                emit(
                    i, sub, rng.randrange(*_BILL_AT), "billing", _bill(sub, d, day0, rng, plan.seed)
                )
            k = _intensity(sub, d)
            if rng.random() < 0.003 + (0.02 if sub.false_alarm else 0.06) * k:
                emit(i, sub, rng.randrange(*_DAYTIME), "complaint", _complaint(rng, k))

            noise = max(0.2, rng.gauss(1.0, 0.2))
            voice = 1.0 - k * (1.0 - sub.voice_floor)
            calls = int(sub.calls * wv * voice * noise + rng.random())
            share = sub.comp_share + k * (sub.comp_target - sub.comp_share)
            competitor = sum(1 for _ in range(calls) if rand() < share)
            own = calls - competitor
            for network, n in (("own", own), ("competitor", competitor)):
                if n:
                    duration = round(n * sub.call_s * max(0.3, rng.gauss(1.0, 0.15)))
                    cdr = {
                        "service": "voice",
                        "direction": "outgoing",
                        "counterpart_network": network,
                        "duration_s": duration,
                        "count": n,
                    }
                    emit(i, sub, sub.cdr_at, "cdr", cdr)
            other = (1.0 - 0.3 * k) * noise
            sms = int(sub.sms * ws * other + rng.random())
            if sms:
                cdr = {"service": "sms", "direction": "outgoing", "count": sms}
                emit(i, sub, sub.cdr_at, "cdr", cdr)
            mb = sub.data_mb * wd * other * max(0.2, rng.gauss(1.0, 0.3))
            if mb >= 0.01:
                sessions = max(1, int(sub.data_sessions * wd * other + rng.random()))
                cdr = {
                    "service": "data",
                    "direction": "outgoing",
                    "bytes": int(mb * 1e6),
                    "count": sessions,
                }
                emit(i, sub, sub.cdr_at, "cdr", cdr)
        active = still
        day.batch.sort(key=itemgetter(0))
        yield [event for _, event in day.batch]


def _churn_at(plan: _Plan) -> dict[str, datetime]:
    return {
        s.sid: plan.start + timedelta(days=s.churn_day, seconds=s.churn_offset)
        for s in plan.subs
        if s.churn_day is not None
    }


def iter_events(
    *,
    subscribers: int = 1000,
    days: int = 90,
    seed: int = 7,
    start: datetime | None = None,
    churn_rate: float = 0.15,
    silent_churn_share: float = 0.1,
    id_prefix: str = "SYN",
    warning_days: tuple[int, int] = (14, 35),
) -> Iterator[dict[str, Any]]:
    """Stream the events of :func:`generate` with the same arguments, in the same order.

    Holds only one day's events at a time. Arguments are checked at call time
    (``ValueError``), not on the first ``next()``.
    """
    plan = _make_plan(
        subscribers=subscribers,
        days=days,
        seed=seed,
        start=start,
        churn_rate=churn_rate,
        silent_churn_share=silent_churn_share,
        id_prefix=id_prefix,
        warning_days=warning_days,
    )
    return _stream(plan)


def generate(
    *,
    subscribers: int = 1000,
    days: int = 90,
    seed: int = 7,
    start: datetime | None = None,
    churn_rate: float = 0.15,
    silent_churn_share: float = 0.1,
    id_prefix: str = "SYN",
    warning_days: tuple[int, int] = (14, 35),
) -> Population:
    """Generate a population of ``subscribers`` over ``days`` days from ``start``.

    ``start`` (timezone-aware; default 2026-01-01T00:00:00Z) must be early enough
    that ``start + days`` is not in the future, or ingest will refuse the newest
    events. Subscriber ids are ``{id_prefix}-000000`` and up. ``round(subscribers *
    churn_rate)`` subscribers churn (needs ``days > 30``), and ``round(churners *
    silent_churn_share)`` of them without warning signs. The same arguments always
    give the same events, ids included. Raises ``ValueError`` on invalid arguments.
    The cyclic garbage collector is paused while the event list is built. For very
    large populations, :func:`iter_events` avoids holding every event in memory.
    """
    plan = _make_plan(
        subscribers=subscribers,
        days=days,
        seed=seed,
        start=start,
        churn_rate=churn_rate,
        silent_churn_share=silent_churn_share,
        id_prefix=id_prefix,
        warning_days=warning_days,
    )
    # Millions of event dicts (each holding a payload dict) stay tracked by the cyclic
    # GC, whose full passes would double the run time; none of them form cycles.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        events = list(_stream(plan))
    finally:
        if was_enabled:
            gc.enable()
    return Population(
        events=events,
        churn_at=_churn_at(plan),
        subscribers=[s.sid for s in plan.subs],
    )


def write_ndjson(population: Population, path: Path) -> None:
    """Write the population's events to ``path``, one JSON object per line, in order."""
    with path.open("w", encoding="utf-8") as out:
        for event in population.events:
            out.write(json.dumps(event, separators=(",", ":")))
            out.write("\n")
