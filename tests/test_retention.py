"""Retention against the real PostgreSQL: old bookkeeping goes, recent and pending rows stay.

Each service's own purger (``app.state.purger``, built by ``create_app``) is run,
so the test covers which tables each service purges, not only the purge function.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from services.alerting.app import create_app as alerting_app
from services.alerting.settings import AlertingSettings
from services.alerting.tables import processed_messages
from services.outreach.app import create_app as outreach_app
from services.outreach.settings import OutreachSettings
from services.outreach.tables import outbox, web_sessions
from services.outreach.workbench import create_person
from services.scoring.app import create_app as scoring_app
from services.scoring.settings import ScoringSettings
from services.scoring.tables import processed_events
from shared.db import create_engine
from shared.retention import PURGED, Purger, PurgeRule, purge
from shared.settings import BaseServiceSettings
from tests.helpers import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=31)  # RETENTION_DAYS is 30 by default
RECENT = NOW - timedelta(days=29)


async def test_scoring_and_alerting_purge_old_processed_ids(env: dict[str, Any]) -> None:
    for app, table, column in (
        (scoring_app(ScoringSettings(**env)), processed_events, "event_id"),
        (alerting_app(AlertingSettings(**env)), processed_messages, "message_id"),
    ):
        engine = app.state.runtime.engine
        old, recent = uuid.uuid4(), uuid.uuid4()
        async with engine.begin() as conn:
            await conn.execute(
                table.insert(),
                [{column: old, "processed_at": OLD}, {column: recent, "processed_at": RECENT}],
            )
        deleted = await app.state.purger.run_once()
        async with engine.connect() as conn:
            left = set((await conn.execute(select(table.c[column]))).scalars())
        await engine.dispose()
        assert old not in left and recent in left, table.name
        assert deleted[f"{table.schema}.{table.name}"] >= 1


async def test_outreach_purges_only_published_outbox_rows(env: dict[str, Any]) -> None:
    app = outreach_app(OutreachSettings(**env))
    engine = app.state.runtime.engine
    rows: dict[str, dict[str, Any]] = {
        "published_old": {"created_at": OLD, "published_at": OLD},
        "published_recent": {"created_at": OLD, "published_at": RECENT},
        # Never published (the relay was down for a month): still a message to hand on.
        "unpublished_old": {"created_at": OLD, "published_at": None},
    }
    ids = {}
    async with engine.begin() as conn:
        for name, times in rows.items():
            result = await conn.execute(
                outbox.insert()
                .values(topic="t", key=name, payload={"n": name}, **times)
                .returning(outbox.c.id)
            )
            ids[name] = result.scalar_one()
    before = PURGED.labels("outreach.outbox")._value.get()
    await app.state.purger.run_once()
    async with engine.begin() as conn:
        left = set((await conn.execute(select(outbox.c.id))).scalars())
        # Leave no unpublished row behind for a later test's relay to pick up.
        await conn.execute(outbox.delete().where(outbox.c.id.in_(list(ids.values()))))
    await engine.dispose()
    assert ids["published_old"] not in left
    assert {ids["published_recent"], ids["unpublished_old"]} <= left
    assert PURGED.labels("outreach.outbox")._value.get() >= before + 1


async def test_outreach_purges_long_expired_workbench_sessions(env: dict[str, Any]) -> None:
    app = outreach_app(OutreachSettings(**env))
    engine = app.state.runtime.engine
    person = f"p-{uuid.uuid4().hex[:10]}"
    tokens = {"expired_old": OLD, "expired_recent": RECENT, "live": NOW + timedelta(hours=8)}
    async with engine.begin() as conn:
        await create_person(conn, person_id=person, password="a-long-pass", role="admin", now=NOW)
        for token, expires_at in tokens.items():
            await conn.execute(
                web_sessions.insert().values(
                    token_hash=f"{person}-{token}",
                    person_id=person,
                    csrf_token="x",
                    created_at=OLD,
                    last_seen_at=OLD,
                    expires_at=expires_at,
                )
            )
    await app.state.purger.run_once()
    async with engine.connect() as conn:
        left = set(
            (
                await conn.execute(
                    select(web_sessions.c.token_hash).where(web_sessions.c.person_id == person)
                )
            ).scalars()
        )
    await engine.dispose()
    assert left == {f"{person}-expired_recent", f"{person}-live"}


async def test_purge_works_through_a_backlog_in_batches(env: dict[str, Any]) -> None:
    engine = create_engine(BaseServiceSettings(**env))
    old = [uuid.uuid4() for _ in range(25)]
    async with engine.begin() as conn:
        await conn.execute(
            processed_events.insert(), [{"event_id": i, "processed_at": OLD} for i in old]
        )
    rule = PurgeRule(processed_events, "processed_at")
    deleted = await purge(engine, rules=[rule], cutoff=NOW - timedelta(days=30), batch=10)
    async with engine.connect() as conn:
        still = await conn.execute(
            select(processed_events.c.event_id).where(processed_events.c.event_id.in_(old))
        )
        assert still.first() is None
    await engine.dispose()
    assert deleted["scoring.processed_events"] >= 25


async def test_the_periodic_purger_runs_until_stopped_and_zero_days_is_off(
    env: dict[str, Any],
) -> None:
    engine = create_engine(BaseServiceSettings(**env))
    rule = PurgeRule(processed_events, "processed_at")
    off = Purger(engine, [rule], days=0, interval_s=0.05)
    await asyncio.wait_for(off.run(), timeout=5)  # returns at once: nothing to do

    doomed = uuid.uuid4()
    purger = Purger(engine, [rule], days=30, interval_s=0.05)
    task = asyncio.create_task(purger.run())
    async with engine.begin() as conn:
        await conn.execute(processed_events.insert().values(event_id=doomed, processed_at=OLD))

    async def gone() -> bool:
        async with engine.connect() as conn:
            found = await conn.execute(
                select(processed_events.c.event_id).where(processed_events.c.event_id == doomed)
            )
            return found.first() is None

    await eventually(gone, timeout_s=10, what="the next periodic purge")
    purger.stop()
    await asyncio.wait_for(task, timeout=5)
    await engine.dispose()
