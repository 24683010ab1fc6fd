"""A small built-in sample of events for ``make run``.

It is enough to see the whole pipeline work: a gold VIP with a stop-notice
(a reminder SMS, and a call task for the account manager), a subscriber whose
usage drifts to a competitor network with complaints and arrears (a risk score
over the threshold and a retention task), and a handful of ordinary subscribers.
Event ids depend only on ``seed`` and each event's position, so posting the sample
twice changes nothing (the services drop the repeats by ``event_id``).
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

NAMESPACE = uuid.UUID("0c7d2b1e-9a43-4d8e-bb52-7f61e0a3c5d2")

VIP_ID = "S-VIP-0001"
AT_RISK_ID = "S-STD-0002"


def _event(
    event_type: str, subscriber_id: str, at: datetime, payload: dict[str, Any]
) -> dict[str, Any]:
    return {
        "event_id": "",  # numbered at the end of sample_events()
        "event_type": event_type,
        "subscriber_id": subscriber_id,
        "occurred_at": at.isoformat(),
        "source": "sample",
        "payload": payload,
    }


def profile(subscriber_id: str, at: datetime, **fields: Any) -> dict[str, Any]:
    """A ``subscriber`` event."""
    return _event("subscriber", subscriber_id, at, fields)


def calls(
    subscriber_id: str,
    start: datetime,
    days: int,
    per_day: int,
    competitor_share: float,
    rng: random.Random,
) -> list[dict[str, Any]]:
    """Daily voice calls; ``competitor_share`` of them to competitor networks."""
    out = []
    for day in range(days):
        for n in range(per_day):
            at = start + timedelta(days=day, hours=9 + n % 10, minutes=rng.randrange(60))
            network = "competitor" if rng.random() < competitor_share else "own"
            out.append(
                _event(
                    "cdr",
                    subscriber_id,
                    at,
                    {
                        "service": "voice",
                        "direction": "outgoing",
                        "counterpart_network": network,
                        "duration_s": rng.randrange(30, 600),
                    },
                )
            )
    return out


def sample_events(now: datetime | None = None, *, seed: int = 7) -> list[dict[str, Any]]:
    """The sample, as JSON-ready dicts, in the order they should be posted."""
    rng = random.Random(seed)
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    start = now - timedelta(days=21)
    events: list[dict[str, Any]] = []
    events.append(
        profile(
            VIP_ID,
            start,
            tier="gold",
            monthly_value="120.00",
            account_manager_id="AM-07",
            phone="+15550100001",
            name="Ada",
        )
    )
    events.append(
        profile(
            AT_RISK_ID,
            start,
            tier="standard",
            monthly_value="25.00",
            phone="+15550100002",
            name="Ben",
        )
    )
    events += calls(VIP_ID, start, 20, 4, 0.05, rng)
    events += calls(AT_RISK_ID, start, 14, 5, 0.05, rng)
    for i in range(3, 8):
        sid = f"S-STD-{i:04d}"
        events.append(profile(sid, start, phone=f"+155501000{i:02d}", monthly_value="30.00"))
        events += calls(sid, start, 20, 3, 0.05, rng)
    # The warning signs: calls move to a competitor, complaints, arrears.
    events += calls(AT_RISK_ID, start + timedelta(days=14), 7, 4, 0.9, rng)
    events.append(
        _event(
            "complaint",
            AT_RISK_ID,
            now - timedelta(days=3),
            {"category": "network", "severity": "high"},
        )
    )
    events.append(
        _event(
            "complaint",
            AT_RISK_ID,
            now - timedelta(days=1),
            {"category": "billing", "severity": "medium"},
        )
    )
    events.append(
        _event(
            "arrears",
            AT_RISK_ID,
            now - timedelta(hours=2),
            {"overdue_amount": "48.00", "days_overdue": 40},
        )
    )
    # The VIP's suspension is scheduled for two days from now.
    events.append(
        _event(
            "stop_notice",
            VIP_ID,
            now - timedelta(minutes=5),
            {
                "reason": "arrears",
                "suspension_at": (now + timedelta(days=2)).isoformat(),
                "amount_to_pay": "86.40",
            },
        )
    )
    # Ids from the seed and the position only, not from the time: posting the sample
    # again later repeats the same ids, and the services drop the repeats.
    for index, item in enumerate(events):
        item["event_id"] = str(uuid.uuid5(NAMESPACE, f"{seed}|{index}"))
    return events
