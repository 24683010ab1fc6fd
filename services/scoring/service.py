"""Scoring's database work. Keyword-only; never commits: the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.scoring.model import ChurnModel, ModelParams
from services.scoring.models import features, model_state, risk_scores


async def lock_features(
    conn: AsyncConnection, *, subscriber_ids: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """Feature rows for these subscribers, locked until the transaction ends.

    The lock matters during a rebalance, when two replicas may briefly both hold
    the same partition's records.
    """
    rows = await conn.execute(
        select(features)
        .where(features.c.subscriber_id.in_(list(subscriber_ids)))
        .order_by(features.c.subscriber_id)
        .with_for_update()
    )
    return {row.subscriber_id: dict(row._mapping) for row in rows}


async def save_features(conn: AsyncConnection, *, rows: list[dict[str, Any]]) -> None:
    """Insert or replace feature rows."""
    if not rows:
        return
    stmt = insert(features).values(rows)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["subscriber_id"],
            set_={
                c: stmt.excluded[c]
                for c in ("state", "snapshot", "snapshot_at", "events_applied", "updated_at")
            },
        )
    )


async def previous_scores(
    conn: AsyncConnection, *, subscriber_ids: Iterable[str]
) -> dict[str, float]:
    """The latest stored score of each subscriber that has one."""
    rows = await conn.execute(
        select(risk_scores.c.subscriber_id, risk_scores.c.score).where(
            risk_scores.c.subscriber_id.in_(list(subscriber_ids))
        )
    )
    return {sid: score for sid, score in rows}


async def save_scores(conn: AsyncConnection, *, rows: list[dict[str, Any]]) -> None:
    """Insert or replace the latest score rows."""
    if not rows:
        return
    stmt = insert(risk_scores).values(rows)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["subscriber_id"],
            set_={
                c.name: stmt.excluded[c.name]
                for c in risk_scores.columns
                if c.name != "subscriber_id"
            },
        )
    )


async def get_score(conn: AsyncConnection, *, subscriber_id: str) -> dict[str, Any] | None:
    """One subscriber's latest score row, or None."""
    row = (
        await conn.execute(select(risk_scores).where(risk_scores.c.subscriber_id == subscriber_id))
    ).first()
    return dict(row._mapping) if row else None


async def load_model(conn: AsyncConnection, *, name: str, params: ModelParams) -> ChurnModel:
    """The saved model, or a fresh one."""
    row = (await conn.execute(select(model_state).where(model_state.c.name == name))).first()
    if row is None:
        return ChurnModel(params)
    return ChurnModel.loads(params, row.blob, row.labels_seen, row.positives_seen)


async def save_model(conn: AsyncConnection, *, name: str, model: ChurnModel, now: datetime) -> None:
    """Store the model in the same transaction as the labels that taught it."""
    values = {
        "name": name,
        "blob": model.dumps(),
        "labels_seen": model.labels_seen,
        "positives_seen": model.positives_seen,
        "updated_at": now,
    }
    stmt = insert(model_state).values(values)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["name"], set_={k: stmt.excluded[k] for k in values if k != "name"}
        )
    )
