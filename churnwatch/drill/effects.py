"""Counting a drill's effects at the far end: applied, tasked, sent, final.

Every count is read from where the effect is stored (the services' tables and
the SMS gateway's own record), for one drill's subscribers only, and compared
with what ingest acknowledged. Nothing here repairs anything.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

FINAL_SMS_STATES = frozenset({"delivered", "failed", "expired", "cancelled", "unknown"})
"""States an SMS task never leaves (``unknown``: the provider could not say by the deadline)."""


@dataclass(frozen=True)
class Tally:
    """One drill's effects, counted at the far end."""

    acknowledged: int  # events ingest answered 2xx for
    for_alerting: int  # of those, the ones alerting handles (all but call records)
    applied: int  # of those, applied by scoring (its idempotency table)
    applied_alerting: int  # of those, handled by alerting
    feature_count: int  # scoring's per-subscriber applied-event counters, summed
    tasks: int  # tasks alerting made
    tasks_duplicated: int  # tasks beyond the first for one (rule, channel, cause)
    tasks_at_outreach: int  # of alerting's tasks, those outreach holds
    sms_tasks: int  # SMS tasks at outreach
    sms_sent: int  # SMS tasks the gateway holds a message for
    sms_duplicated: int  # messages beyond the first per idempotency key at the gateway
    sms_final: int  # SMS tasks in a final state
    sms_later: int  # SMS tasks scheduled for a time still ahead (a reminder before its date)
    sms_states: dict[str, int]  # SMS tasks by state

    @property
    def lost(self) -> int:
        """Acknowledged events or tasks that never arrived where they should."""
        return (
            (self.acknowledged - self.applied)
            + (self.for_alerting - self.applied_alerting)
            + (self.tasks - self.tasks_at_outreach)
        )

    @property
    def duplicated(self) -> int:
        """Effects counted more than once: events applied twice, tasks or SMS doubled."""
        return (
            max(0, self.feature_count - self.applied) + self.tasks_duplicated + self.sms_duplicated
        )

    @property
    def unfinished(self) -> int:
        """SMS tasks neither in a final state nor scheduled for later: stuck."""
        return self.sms_tasks - self.sms_final - self.sms_later

    @property
    def settled(self) -> bool:
        """Everything acknowledged has gone as far as it will, and every SMS is final."""
        return self.lost == 0 and self.unfinished == 0


async def count(
    database_url: str,
    gateway_url: str,
    gateway_token: str,
    *,
    acknowledged: set[str],
    for_alerting: set[str],
    id_prefix: str,
) -> Tally:
    """Count the effects of the events ``acknowledged`` for subscribers ``{id_prefix}-*``.

    ``for_alerting``: the acknowledged events alerting handles (all but call records).
    """
    ids = [uuid.UUID(i) for i in acknowledged]
    alerting_ids = [uuid.UUID(i) for i in for_alerting]
    like = f"{id_prefix}-%"
    engine = create_async_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:

            async def scalar(sql: str, **params: object) -> int:
                return int((await conn.execute(text(sql), params)).scalar_one() or 0)

            applied = await scalar(
                "SELECT count(*) FROM scoring.processed_events WHERE event_id = ANY(:ids)", ids=ids
            )
            applied_alerting = await scalar(
                "SELECT count(*) FROM alerting.processed_messages WHERE message_id = ANY(:ids)",
                ids=alerting_ids,
            )
            feature_count = await scalar(
                "SELECT sum(events_applied) FROM scoring.features WHERE subscriber_id LIKE :p",
                p=like,
            )
            task_rows = (
                await conn.execute(
                    text(
                        "SELECT task_id, rule, channel, cause_event_id FROM alerting.tasks"
                        " WHERE subscriber_id LIKE :p"
                    ),
                    {"p": like},
                )
            ).all()
            outreach_rows = (
                await conn.execute(
                    text(
                        "SELECT task_id, channel, status,"
                        " coalesce(next_attempt_at > now() + interval '1 minute', false) AS later"
                        " FROM outreach.tasks WHERE subscriber_id LIKE :p"
                    ),
                    {"p": like},
                )
            ).all()
    finally:
        await engine.dispose()
    # One task per rule, channel and cause (a reminder is an SMS and, for a VIP, a call).
    per_cause = Counter((r.rule, r.channel, r.cause_event_id) for r in task_rows)
    at_outreach = {r.task_id for r in outreach_rows}
    sms = {str(r.task_id): str(r.status) for r in outreach_rows if r.channel == "sms"}
    later = sum(
        1 for r in outreach_rows if r.channel == "sms" and r.status == "scheduled" and r.later
    )
    references = await _gateway_references(gateway_url, gateway_token)
    states = Counter(sms.values())
    return Tally(
        acknowledged=len(ids),
        for_alerting=len(alerting_ids),
        applied=applied,
        applied_alerting=applied_alerting,
        feature_count=feature_count,
        tasks=len(task_rows),
        tasks_duplicated=sum(n - 1 for n in per_cause.values()),
        tasks_at_outreach=sum(1 for r in task_rows if r.task_id in at_outreach),
        sms_tasks=len(sms),
        sms_sent=sum(1 for task_id in sms if references[task_id]),
        sms_duplicated=sum(references[task_id] - 1 for task_id in sms if references[task_id] > 1),
        sms_final=sum(n for state, n in states.items() if state in FINAL_SMS_STATES),
        sms_later=later,
        sms_states=dict(sorted(states.items())),
    )


async def _gateway_references(gateway_url: str, token: str) -> Counter[str]:
    """Messages the gateway holds, counted by their reference (the idempotency key)."""
    async with httpx.AsyncClient(
        base_url=gateway_url, timeout=10, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        response = await client.get("/v1/messages", params={"limit": 10_000})
        response.raise_for_status()
        return Counter(str(m.get("reference")) for m in response.json()["messages"])
