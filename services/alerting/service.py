"""Alerting's database work. Keyword-only; never commits: the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.alerting.models import subscribers, tasks
from services.alerting.rules import Profile
from shared.events import OutreachTask, SubscriberEvent, Tier


async def upsert_profile(conn: AsyncConnection, *, event: SubscriberEvent) -> None:
    """Store the profile unless a newer one is already stored."""
    p = event.payload
    values = {
        "subscriber_id": event.subscriber_id,
        "tier": p.tier.value,
        "monthly_value": p.monthly_value,
        "account_manager_id": p.account_manager_id,
        "phone": p.phone,
        "language": p.language,
        "name": p.name,
        "preferred_channel": p.preferred_channel.value,
        "marketing_opt_out": p.marketing_opt_out,
        "profile_at": event.occurred_at,
    }
    stmt = insert(subscribers).values(values)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["subscriber_id"],
            set_={k: stmt.excluded[k] for k in values if k != "subscriber_id"},
            where=subscribers.c.profile_at <= stmt.excluded.profile_at,
        )
    )


async def load_profiles(
    conn: AsyncConnection, *, subscriber_ids: Iterable[str]
) -> dict[str, Profile]:
    """Profiles of these subscribers (absent ones are missing from the result)."""
    rows = await conn.execute(
        select(subscribers).where(subscribers.c.subscriber_id.in_(list(subscriber_ids)))
    )
    return {
        r.subscriber_id: Profile(
            tier=Tier(r.tier),
            monthly_value=r.monthly_value,
            account_manager_id=r.account_manager_id,
            phone=r.phone,
            language=r.language,
            name=r.name,
            marketing_opt_out=r.marketing_opt_out,
        )
        for r in rows
    }


async def record_tasks(
    conn: AsyncConnection, *, new_tasks: list[OutreachTask]
) -> list[OutreachTask]:
    """Record tasks; return only those not recorded before (to publish)."""
    if not new_tasks:
        return []
    rows = await conn.execute(
        insert(tasks)
        .values(
            [
                {
                    "task_id": t.task_id,
                    "kind": t.kind.value,
                    "channel": t.channel.value,
                    "subscriber_id": t.subscriber_id,
                    "cause_event_id": t.cause_event_id,
                    "created_at": t.created_at,
                }
                for t in new_tasks
            ]
        )
        .on_conflict_do_nothing(index_elements=["task_id"])
        .returning(tasks.c.task_id)
    )
    fresh = set(rows.scalars())
    return [t for t in new_tasks if t.task_id in fresh]
