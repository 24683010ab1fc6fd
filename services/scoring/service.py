"""Scoring's database work. Keyword-only; never commits: the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    String,
    case,
    cast,
    delete,
    func,
    literal_column,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.scoring.codec import decode
from services.scoring.features import State
from services.scoring.model import ChurnModel, ModelParams
from services.scoring.scorer import Snapshot
from services.scoring.tables import features, model_checkpoints, snapshots


async def lock_and_load(
    conn: AsyncConnection, *, subscriber_ids: Iterable[str], cached: dict[str, int]
) -> tuple[dict[str, int], dict[str, State]]:
    """Lock these subscribers' feature rows; return their versions and the states not cached.

    One round trip: the versions (``events_applied``: how many events a row has
    applied) of every row, and the state of each row whose version is not the
    one in ``cached`` (subscriber -> version the caller holds a copy of), since
    a copy with another version is stale. The lock matters during a rebalance,
    when two replicas may briefly both hold the same partition's records.
    """
    held = [f"{sid}:{applied}" for sid, applied in cached.items()]
    fresh = (features.c.subscriber_id + ":" + cast(features.c.events_applied, String)).in_(held)
    rows = await conn.execute(
        select(
            features.c.subscriber_id,
            features.c.events_applied,
            case((fresh, None), else_=features.c.blob).label("blob"),
            case((fresh | features.c.blob.is_not(None), None), else_=features.c.state).label(
                "state"
            ),
        )
        .where(features.c.subscriber_id.in_(list(subscriber_ids)))
        .order_by(features.c.subscriber_id)
        .with_for_update()
    )
    versions: dict[str, int] = {}
    loaded: dict[str, State] = {}
    for sid, applied, blob, state in rows:
        versions[sid] = int(applied)
        stored = _stored_state(blob, state)
        if stored is not None:
            loaded[sid] = stored
    return versions, loaded


def _stored_state(blob: bytes | None, state: State | None) -> State | None:
    """A row's state: its bytes decoded, else its JSON (a row from before migration 0011)."""
    return decode(blob) if blob is not None else state


async def save_features(conn: AsyncConnection, *, rows: list[dict[str, Any]]) -> None:
    """Insert or replace feature rows (``blob``: the encoded state, events applied, score).

    Each row also carries the listed columns (``listing.listed_columns``: band,
    tier, manager). When the score or one of them changes, the row's
    ``changed_at`` and ``changed_xid`` become this transaction's time and id
    (what a listing's ``changed_since`` and its walk's snapshot test read);
    otherwise they stay.
    """
    if not rows:
        return
    stmt = insert(features).values(changed_at=func.now(), changed_xid=_THIS_XID)
    listed = ("score", "band", "tier", "account_manager_id")
    changed = tuple_(*(features.c[c] for c in listed)).is_distinct_from(
        tuple_(*(stmt.excluded[c] for c in listed))
    )
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["subscriber_id"],
            set_={
                **{
                    c: stmt.excluded[c]
                    for c in ("state", "blob", "events_applied", "updated_at", *listed)
                },
                "changed_at": case((changed, func.now()), else_=features.c.changed_at),
                "changed_xid": case((changed, _THIS_XID), else_=features.c.changed_xid),
            },
        ),
        [{"state": None, **row} for row in rows],
    )


# The writing transaction's id (xid8, as a bigint): a listing's walk compares it with its snapshot.
_THIS_XID: ColumnElement[int] = literal_column("CAST(CAST(pg_current_xact_id() AS text) AS bigint)")


async def add_snapshots(conn: AsyncConnection, *, items: list[tuple[str, Snapshot]]) -> None:
    """Store new pending snapshots (a replayed batch may store one again: ignored)."""
    if items:
        await conn.execute(
            insert(snapshots).on_conflict_do_nothing(),
            [
                {
                    "subscriber_id": sid,
                    "taken_at": s.at,
                    "features": s.x,
                    "predicted": s.predicted,
                    "prior": s.prior,
                    "model": s.model,
                    "raw": s.raw,
                    "history_s": s.history_s,
                }
                for sid, s in items
            ],
        )


async def get_snapshots(
    conn: AsyncConnection, *, keys: list[tuple[str, float]]
) -> dict[tuple[str, float], Snapshot]:
    """Stored snapshots by ``(subscriber_id, taken_at)``, left in place."""
    if not keys:
        return {}
    rows = await conn.execute(
        select(snapshots).where(tuple_(snapshots.c.subscriber_id, snapshots.c.taken_at).in_(keys))
    )
    return {
        (r.subscriber_id, r.taken_at): Snapshot(
            r.taken_at, r.features, r.predicted, r.prior, r.model, r.raw, r.history_s
        )
        for r in rows
    }


async def take_snapshots(
    conn: AsyncConnection, *, keys: list[tuple[str, float]]
) -> dict[tuple[str, float], Snapshot]:
    """Delete resolved snapshots and return them by ``(subscriber_id, taken_at)``."""
    if not keys:
        return {}
    rows = await conn.execute(
        delete(snapshots)
        .where(tuple_(snapshots.c.subscriber_id, snapshots.c.taken_at).in_(keys))
        .returning(*snapshots.c)
    )
    return {
        (r.subscriber_id, r.taken_at): Snapshot(
            r.taken_at, r.features, r.predicted, r.prior, r.model, r.raw, r.history_s
        )
        for r in rows
    }


async def recent_scores(
    conn: AsyncConnection, *, subscriber_id: str, limit: int
) -> list[tuple[float, float]]:
    """The subscriber's newest ``limit`` snapshots as ``(taken_at, predicted)``, oldest first.

    Snapshots are taken daily (``SCORING_SNAPSHOT_INTERVAL_HOURS``) and deleted
    once labelled, so these are the last weeks' scores; ``taken_at`` is epoch
    seconds of event time.
    """
    rows = await conn.execute(
        select(snapshots.c.taken_at, snapshots.c.predicted)
        .where(snapshots.c.subscriber_id == subscriber_id)
        .order_by(snapshots.c.taken_at.desc())
        .limit(limit)
    )
    return [(float(r.taken_at), float(r.predicted)) for r in rows][::-1]


async def get_state(conn: AsyncConnection, *, subscriber_id: str) -> State | None:
    """One subscriber's feature state (with its latest score), or None."""
    row = (
        await conn.execute(
            select(features.c.blob, features.c.state).where(
                features.c.subscriber_id == subscriber_id
            )
        )
    ).first()
    return None if row is None else _stored_state(row.blob, row.state)


async def load_model(conn: AsyncConnection, *, name: str, params: ModelParams) -> ChurnModel:
    """The latest checkpoint of this model name and kind, or a fresh model."""
    row = (
        await conn.execute(
            select(model_checkpoints.c.id, model_checkpoints.c.blob)
            .where(model_checkpoints.c.name == name, model_checkpoints.c.kind == params.kind)
            .order_by(model_checkpoints.c.id.desc())
            .limit(1)
        )
    ).first()
    if row is None:
        return ChurnModel(params)
    return ChurnModel.loads(params, row.blob, checkpoint_id=row.id)


async def save_checkpoint(
    conn: AsyncConnection, *, name: str, model: ChurnModel, now: datetime, keep: int
) -> int:
    """Store a new checkpoint, prune all but the newest ``keep``; return its id."""
    quality = model.quality.summary() if model.quality is not None else {}
    checkpoint_id = int(
        await conn.scalar(
            insert(model_checkpoints)
            .values(
                name=name,
                kind=model.params.kind,
                created_at=now,
                labels_seen=model.labels_seen,
                positives_seen=model.positives_seen,
                metrics=quality,
                blob=model.dumps(),
            )
            .returning(model_checkpoints.c.id)
        )
    )
    same = (model_checkpoints.c.name == name) & (model_checkpoints.c.kind == model.params.kind)
    newest = (
        select(model_checkpoints.c.id)
        .where(same)
        .order_by(model_checkpoints.c.id.desc())
        .limit(keep)
    )
    await conn.execute(delete(model_checkpoints).where(same, model_checkpoints.c.id.not_in(newest)))
    return checkpoint_id


async def checkpoint_info(conn: AsyncConnection, *, name: str, kind: str) -> dict[str, Any] | None:
    """The newest checkpoint's metadata (no blob) for this name and model kind."""
    row = (
        await conn.execute(
            select(
                model_checkpoints.c.id,
                model_checkpoints.c.kind,
                model_checkpoints.c.created_at,
                model_checkpoints.c.labels_seen,
                model_checkpoints.c.positives_seen,
                model_checkpoints.c.metrics,
            )
            .where(model_checkpoints.c.name == name, model_checkpoints.c.kind == kind)
            .order_by(model_checkpoints.c.id.desc())
            .limit(1)
        )
    ).first()
    return dict(row._mapping) if row else None
