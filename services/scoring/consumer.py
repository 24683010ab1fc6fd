"""Scoring's batch handler: the engine over a batch, persisted in the loop's transaction.

Per batch: drop events already applied (by ``event_id``), group the rest by
subscriber (several events of one subscriber are one re-score), lock and load
their feature rows, run the engine, learn the labels that resolved, store
features, snapshots and scores with a handful of statements, publish one
``RiskScore`` per subscriber, and checkpoint the model when due. No per-event
round trip to the database.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.scoring import metrics, service
from services.scoring.engine import Scored, Scorer, Snapshot
from services.scoring.features import State
from services.scoring.model import ChurnModel
from services.scoring.models import processed_events
from services.scoring.settings import ScoringSettings
from shared.consumer import Inbound, Outbox
from shared.db import keep_new
from shared.events import Event, RiskScore, ScoreReason, derive_id, parse_event
from shared.topics import Topics

log = logging.getLogger(__name__)


def parse_record(record: ConsumerRecord[bytes, bytes]) -> Event:
    """Parse a usage/account record; failures go to the DLQ."""
    if record.value is None:
        raise ValueError("empty message")
    return parse_event(record.value, check_clock=False)


class ScoringHandler:
    """Holds the online model; handles one batch inside the loop's transaction."""

    def __init__(self, settings: ScoringSettings, topics: Topics) -> None:
        self.settings = settings
        self.topics = topics
        self.scorer = Scorer(settings.engine_params(), ChurnModel(settings.model_params()))
        self._checkpoint_labels = 0
        self._checkpoint_time = time.monotonic()
        # Feature states this replica wrote last, so most batches skip reading them
        # back; the row's events_applied tells when a cached one is stale.
        self._cache: OrderedDict[str, _Cached] = OrderedDict()

    @property
    def model(self) -> ChurnModel:
        """The model in use."""
        return self.scorer.model

    async def load(self, engine: AsyncEngine) -> None:
        """(Re)load the newest checkpoint: at start, and after a failed batch.

        After a failure the in-memory model may have learned from a batch whose
        transaction rolled back; reloading keeps it equal to what is stored (up
        to SCORING_CHECKPOINT_EVERY labels of learning may be redone or lost).
        """
        self.forget_all()
        async with engine.connect() as conn:
            self.scorer.model = await service.load_model(
                conn, name=self.settings.scoring_model_name, params=self.settings.model_params()
            )
        self._checkpoint_labels = self.model.labels_seen
        self._checkpoint_time = time.monotonic()
        metrics.observe_model(self.model)

    async def checkpoint(self, conn: AsyncConnection, *, now: datetime) -> None:
        """Store the model now (also called on shutdown)."""
        self.model.checkpoint_id = await service.save_checkpoint(
            conn,
            name=self.settings.scoring_model_name,
            model=self.model,
            now=now,
            keep=self.settings.scoring_checkpoints_kept,
        )
        self._checkpoint_labels = self.model.labels_seen
        self._checkpoint_time = time.monotonic()
        metrics.CHECKPOINTS.inc()

    def checkpoint_due(self, *, force: bool = False) -> bool:
        """Every SCORING_CHECKPOINT_EVERY labels, or SCORING_CHECKPOINT_INTERVAL_S with news.

        ``force``: whenever anything was learned since the last checkpoint (shutdown).
        """
        new = self.model.labels_seen - self._checkpoint_labels
        elapsed = time.monotonic() - self._checkpoint_time
        return new > 0 and (
            force
            or new >= self.settings.scoring_checkpoint_every
            or elapsed >= self.settings.scoring_checkpoint_interval_s
        )

    def forget(self, revoked: set[TopicPartition]) -> None:
        """Drop the cached state of subscribers on partitions this replica lost."""
        lost = {tp.partition for tp in revoked}
        for subscriber_id in [s for s, c in self._cache.items() if c.partition in lost]:
            del self._cache[subscriber_id]

    def forget_all(self) -> None:
        """Drop every cached state (after a failed batch: the database is the truth)."""
        self._cache.clear()

    async def __call__(
        self, conn: AsyncConnection, batch: Sequence[Inbound[Event]], outbox: Outbox
    ) -> None:
        """Apply new events, learn labels, store features and snapshots, publish scores."""
        now = datetime.now(UTC)
        events = [item.value for item in batch]
        fresh = await keep_new(
            conn, table=processed_events, items=events, key=lambda e: e.event_id, now=now
        )
        metrics.EVENTS.labels("applied").inc(len(fresh))
        metrics.EVENTS.labels("duplicate").inc(len(events) - len(fresh))
        if not fresh:
            return
        partition_of = {item.value.subscriber_id: item.partition for item in batch}
        by_subscriber: dict[str, list[Event]] = defaultdict(list)
        for event in fresh:
            by_subscriber[event.subscriber_id].append(event)

        versions = await service.lock_versions(conn, subscriber_ids=by_subscriber)
        stale = [
            sid
            for sid, applied in versions.items()
            if sid not in self._cache or self._cache[sid].applied != applied
        ]
        loaded = await service.load_states(conn, subscriber_ids=stale)
        metrics.STATE_CACHE.labels("hit").inc(len(versions) - len(stale))
        metrics.STATE_CACHE.labels("miss").inc(len(stale))
        metrics.STATE_CACHE.labels("new").inc(len(by_subscriber) - len(versions))
        feature_rows: list[dict[str, Any]] = []
        new_snapshots: list[tuple[str, Snapshot]] = []
        resolved: list[tuple[str, float, bool | None]] = []
        for subscriber_id, sub_events in by_subscriber.items():
            cached = self._cache.get(subscriber_id)
            state = loaded.get(subscriber_id) or (cached.state if cached else None)
            applied = versions.get(subscriber_id, 0) + len(sub_events)
            step = self.scorer.step(state, sub_events)
            metrics.LATE_EVENTS.inc(step.late)
            resolved.extend((subscriber_id, at, label) for at, label in step.resolved)
            if step.snapshot is not None:
                new_snapshots.append((subscriber_id, step.snapshot))
            if step.scored is not None:
                await self._record(subscriber_id, step.state, step.scored, outbox, now)
            feature_rows.append(
                {
                    "subscriber_id": subscriber_id,
                    "state": step.state,
                    "updated_at": now,
                    "events_applied": applied,
                    "score": step.state.get("last_score"),
                }
            )
            self._remember(subscriber_id, partition_of[subscriber_id], step.state, applied)

        await self._learn(conn, resolved)
        await service.add_snapshots(conn, items=new_snapshots)
        await service.save_features(conn, rows=feature_rows)
        if self.checkpoint_due():
            await self.checkpoint(conn, now=now)
        metrics.observe_model(self.model)

    def _remember(self, subscriber_id: str, partition: int, state: State, applied: int) -> None:
        self._cache[subscriber_id] = _Cached(partition, state, applied)
        self._cache.move_to_end(subscriber_id)
        while len(self._cache) > self.settings.scoring_state_cache_size:
            self._cache.popitem(last=False)  # least recently used

    async def _learn(
        self, conn: AsyncConnection, resolved: list[tuple[str, float, bool | None]]
    ) -> None:
        stored = await service.take_snapshots(conn, keys=[(s, at) for s, at, _ in resolved])
        examples = []
        for subscriber_id, at, label in resolved:
            snapshot = stored.get((subscriber_id, at))
            if snapshot is not None and label is not None:
                examples.append((snapshot, label))
                (metrics.LABELS_CHURN if label else metrics.LABELS_NO_CHURN).inc()
        self.scorer.learn(examples)

    async def _record(
        self, subscriber_id: str, state: State, scored: Scored, outbox: Outbox, now: datetime
    ) -> None:
        """Keep the score in the state; publish it, with its reasons, if it moved.

        Alerting only acts on movement, so a re-score in the same band and less
        than SCORING_PUBLISH_MIN_DELTA from the last published one is kept but
        not published, and not explained (reasons are computed for what is shown).
        """
        band = self.settings.band(scored.score)
        last = (state.get("scored") or {}).get("published_score")
        state["scored"] = {
            "score": scored.score,
            "previous_score": scored.previous,
            "band": band,
            "model_version": scored.version,
            "cause_event_id": str(scored.cause.event_id),
            "event_time": scored.cause.occurred_at.isoformat(),
            "scored_at": now.isoformat(),
            "published_score": last,
        }
        metrics.SCORES.observe(scored.score)
        metrics.EVENT_TO_SCORE_SECONDS.observe(
            max(0.0, (now - scored.cause.occurred_at).total_seconds())
        )
        if (
            last is not None
            and self.settings.band(last) == band
            and abs(scored.score - last) < self.settings.scoring_publish_min_delta
        ):
            metrics.SCORES_UNCHANGED.inc()
            return
        state["scored"]["published_score"] = scored.score
        message = RiskScore(
            score_id=derive_id("score", scored.cause.event_id),
            subscriber_id=subscriber_id,
            score=scored.score,
            previous_score=last,
            band=band,
            model_version=scored.version,
            reasons=[
                ScoreReason(
                    code=r.code, text_en=r.text_en, text_zh=r.text_zh, contribution=r.contribution
                )
                for r in self.model.explain(scored.x)
            ],
            cause_event_id=scored.cause.event_id,
            event_time=scored.cause.occurred_at,
            scored_at=now,
        )
        await outbox.send(self.topics.scores, key=subscriber_id, value=message)
        metrics.SCORES_PUBLISHED.inc()


@dataclass(slots=True)
class _Cached:
    """A subscriber's state as this replica last stored it."""

    partition: int
    state: State
    applied: int
