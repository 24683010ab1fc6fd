"""Scoring's batch handler: the engine over a batch, persisted in the loop's transaction.

Per batch: drop events already applied (by ``event_id``), group the rest by
subscriber (several events of one subscriber are one re-score), lock and load
their feature rows, run the engine, learn the labels that resolved, store
features, snapshots and scores with a handful of statements, publish one
``RiskScore`` per subscriber, and checkpoint the model when due. No per-event
round trip to the database.

Scoring also reads the outcomes topic (``TaskOutcome`` from outreach, on the
same partitions as the events: co-partitioned by subscriber). A call that
ended ``retained`` or ``offer_accepted`` is an intervention: the subscriber's
pending snapshots taken before it are discarded unlabelled (censored), since
their label would be the outreach's doing (docs/scoring.md, "Outcomes").
Outcomes are idempotent on ``outcome_id`` like events on ``event_id``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from aiokafka import ConsumerRecord, TopicPartition
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.scoring import metrics, service
from services.scoring.batch import SnapshotKey, process_batch
from services.scoring.cache import StateCache
from services.scoring.features import State
from services.scoring.listing import listed_columns
from services.scoring.model import ChurnModel
from services.scoring.scorer import Scorer, Snapshot
from services.scoring.settings import ScoringSettings
from services.scoring.tables import processed_events
from shared.consumer import Inbound
from shared.db import keep_new
from shared.events import (
    CallOutcome,
    Event,
    TaskOutcome,
    parse_event,
)
from shared.outbox import Outbox
from shared.topics import Topics
from shared.tracing import headers

log = logging.getLogger(__name__)

ScoringInput = Event | TaskOutcome
"""What scoring consumes: events (events topic) and task outcomes (outcomes topic)."""

INTERVENTIONS = frozenset({CallOutcome.RETAINED.value, CallOutcome.OFFER_ACCEPTED.value})
"""Call outcomes that change what the subscriber would have done: they censor labels."""

# Label values of churnwatch_scoring_outcomes_total{outcome}: bounded, whatever arrives.
_OUTCOME_LABELS = frozenset({*(o.value for o in CallOutcome), "won_back"})


def parse_record(record: ConsumerRecord[bytes, bytes]) -> Event:
    """Parse a usage/account record; failures go to the DLQ."""
    if record.value is None:
        raise ValueError("empty message")
    return parse_event(record.value, check_clock=False)


def outcome_label(outcome: str | None) -> str:
    """The metric label of a task outcome: itself if known, ``none`` or ``other``."""
    if outcome is None:
        return "none"
    return outcome if outcome in _OUTCOME_LABELS else "other"


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
        self._cache = StateCache(settings.scoring_state_cache_size)

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
        self._cache.forget({tp.partition for tp in revoked})

    def forget_all(self) -> None:
        """Drop every cached state (after a failed batch: the database is the truth)."""
        self._cache.clear()

    def parse(self, record: ConsumerRecord[bytes, bytes]) -> ScoringInput:
        """Parse a record of either topic (told apart by its topic); failures go to the DLQ."""
        if record.topic == self.topics.outcomes:
            if record.value is None:
                raise ValueError("empty message")
            return TaskOutcome.model_validate_json(record.value)
        return parse_record(record)

    async def __call__(
        self, conn: AsyncConnection, batch: Sequence[Inbound[ScoringInput]], outbox: Outbox
    ) -> None:
        """Handle a batch: its events first (features, labels, scores), then its outcomes.

        Events first, so that a snapshot this batch takes before an intervention
        in the same batch is censored too. There is no order between the two
        topics anyway; the censoring compares times, not arrival.
        """
        now = datetime.now(UTC)
        outcomes = [item for item in batch if isinstance(item.value, TaskOutcome)]
        # The common batch has no outcome: pass it on as is, without copying.
        events = (
            batch if not outcomes else [i for i in batch if not isinstance(i.value, TaskOutcome)]
        )
        if events:
            await self._apply_events(conn, cast(Sequence[Inbound[Event]], events), outbox, now)
        if outcomes:
            await self._apply_outcomes(conn, cast(list[Inbound[TaskOutcome]], outcomes), now)

    async def _apply_events(
        self, conn: AsyncConnection, batch: Sequence[Inbound[Event]], outbox: Outbox, now: datetime
    ) -> None:
        """Run the batch core on PostgreSQL; publish the scores that moved; count it all."""
        store = _PostgresStore(self, conn, {i.value.subscriber_id: i.partition for i in batch}, now)
        outcome = await process_batch(
            [item.value for item in batch],
            store=store,
            scorer=self.scorer,
            settings=self.settings,
            now=now,
        )
        metrics.EVENTS.labels("applied").inc(len(outcome.fresh))
        metrics.EVENTS.labels("duplicate").inc(outcome.duplicates)
        if not outcome.fresh:
            return
        metrics.STATE_CACHE.labels("hit").inc(store.hits)
        metrics.STATE_CACHE.labels("miss").inc(store.misses)
        metrics.STATE_CACHE.labels("new").inc(outcome.subscribers - store.hits - store.misses)
        metrics.LATE_EVENTS.inc(outcome.late)
        for _, scored in outcome.scored:
            metrics.SCORES.observe(scored.score)
            metrics.EVENT_TO_SCORE_SECONDS.observe(
                max(0.0, (now - scored.cause.occurred_at).total_seconds())
            )
        metrics.SCORES_UNCHANGED.inc(outcome.unchanged)
        # Tracing on: each score carries its cause event's trace on (shared.tracing).
        traced = {i.value.event_id: i.context for i in batch} if batch[0].context else None
        for message in outcome.published:
            await outbox.send(
                self.topics.scores,
                key=message.subscriber_id,
                value=message,
                headers=None if traced is None else headers(traced.get(message.cause_event_id)),
            )
        metrics.SCORES_PUBLISHED.inc(len(outcome.published))
        for item in outcome.learnt:
            if item.kind == "step":
                (metrics.LABELS_CHURN if item.label else metrics.LABELS_NO_CHURN).inc()
        if self.checkpoint_due():
            await self.checkpoint(conn, now=now)
        metrics.observe_model(self.model)

    async def _apply_outcomes(
        self, conn: AsyncConnection, batch: Sequence[Inbound[TaskOutcome]], now: datetime
    ) -> None:
        """Censor the pending snapshots of subscribers an intervention reached.

        Only ``retained`` and ``offer_accepted`` change the state; every other
        outcome (``not_interested``, ``unreachable``, a delivered SMS, a
        ``won_back`` close: a reactivation event already un-churned the
        subscriber) is only counted. The feature row's version
        (``events_applied``) moves on with a change, so a replica holding the
        old state in its cache reads it again.
        """
        outcomes = [item.value for item in batch]
        fresh = await keep_new(
            conn, table=processed_events, items=outcomes, key=lambda o: o.outcome_id, now=now
        )
        fresh_ids = {o.outcome_id for o in fresh}
        counts: Counter[tuple[str, str]] = Counter()
        treated: dict[str, float] = {}  # subscriber -> time of their latest intervention
        for o in outcomes:
            if o.outcome_id not in fresh_ids:
                counts[(outcome_label(o.outcome), "duplicate")] += 1
                continue
            fresh_ids.discard(o.outcome_id)  # a duplicate inside the batch counts once
            if o.outcome in INTERVENTIONS:
                at = o.at.timestamp()
                treated[o.subscriber_id] = max(treated.get(o.subscriber_id, at), at)
                counts[(outcome_label(o.outcome), "censored")] += 1
            else:
                counts[(outcome_label(o.outcome), "recorded")] += 1
        for (label, result), n in counts.items():
            metrics.OUTCOMES.labels(label, result).inc(n)
        if not treated:
            return

        partition_of = {item.value.subscriber_id: item.partition for item in batch}
        # Rows of subscribers this batch's events touched are locked already; locking
        # them again in the same transaction is a no-op.
        versions, loaded = await self._lock_and_load(conn, treated)
        rows: list[dict[str, Any]] = []
        dropped: list[tuple[str, float]] = []
        # A subscriber scoring has never seen has nothing to censor: left out.
        for subscriber_id, applied in versions.items():
            state = loaded.get(subscriber_id) or self._cache.state(subscriber_id)
            dropped.extend(
                (subscriber_id, at) for at in self.scorer.censor(state, treated[subscriber_id])
            )
            rows.append(
                self._feature_row(
                    subscriber_id, partition_of[subscriber_id], applied + 1, state, now
                )
            )
        # Deleted without learning: a censored snapshot never becomes an example.
        censored = await service.take_snapshots(conn, keys=dropped)
        metrics.SNAPSHOTS_CENSORED.inc(len(censored))
        await service.save_features(conn, rows=rows)

    async def _lock_and_load(
        self, conn: AsyncConnection, subscriber_ids: Iterable[str]
    ) -> tuple[dict[str, int], dict[str, State]]:
        """Lock the subscribers' feature rows; load the states the cache does not hold.

        Returns each stored row's version (``events_applied``) and the states
        read from the database: those whose cached copy is missing or stale
        (another replica moved the row on). One round trip.
        """
        ids = list(subscriber_ids)
        return await service.lock_and_load(
            conn, subscriber_ids=ids, cached=self._cache.versions(ids)
        )

    def _feature_row(
        self, subscriber_id: str, partition: int, version: int, state: State, now: datetime
    ) -> dict[str, Any]:
        """The feature row to store for ``state`` at ``version``, which the cache now holds.

        Encoded once, for the cache and the table (the row's ``blob`` is the
        cache entry's bytes).
        """
        return {
            "subscriber_id": subscriber_id,
            "blob": self._cache.put(subscriber_id, partition, version, state),
            "updated_at": now,
            "events_applied": version,
            "score": state.get("last_score"),
            **listed_columns(state),
        }


class _PostgresStore:
    """The batch core's store on the loop's transaction, with the handler's state cache."""

    def __init__(
        self,
        handler: ScoringHandler,
        conn: AsyncConnection,
        partition_of: dict[str, int],
        now: datetime,
    ) -> None:
        self.handler = handler
        self.conn = conn
        self.partition_of = partition_of
        self.now = now
        self.versions: dict[str, int] = {}
        self.hits = self.misses = 0

    async def keep_new(self, events: Sequence[Event]) -> list[Event]:
        """New events by id (``processed_events``)."""
        return await keep_new(
            self.conn, table=processed_events, items=events, key=lambda e: e.event_id, now=self.now
        )

    async def load_states(self, subscriber_ids: Sequence[str]) -> dict[str, State]:
        """Lock the rows; states from the cache where it is current, else from the table."""
        self.versions, loaded = await self.handler._lock_and_load(self.conn, subscriber_ids)
        self.misses = len(loaded)
        self.hits = len(self.versions) - len(loaded)
        cache = self.handler._cache
        return {sid: loaded[sid] if sid in loaded else cache.state(sid) for sid in self.versions}

    async def peek_snapshots(self, keys: Sequence[SnapshotKey]) -> dict[SnapshotKey, Snapshot]:
        """Stored snapshots, left in place."""
        return await service.get_snapshots(self.conn, keys=list(keys))

    async def take_snapshots(self, keys: Sequence[SnapshotKey]) -> dict[SnapshotKey, Snapshot]:
        """Stored snapshots, deleted."""
        return await service.take_snapshots(self.conn, keys=list(keys))

    async def add_snapshots(self, items: Sequence[tuple[str, Snapshot]]) -> None:
        """Insert new snapshots."""
        await service.add_snapshots(self.conn, items=list(items))

    async def save_states(self, states: dict[str, tuple[State, int]]) -> None:
        """Upsert the feature rows (version moved on by the events applied); cache them."""
        rows = [
            self.handler._feature_row(
                sid, self.partition_of[sid], self.versions.get(sid, 0) + applied, state, self.now
            )
            for sid, (state, applied) in states.items()
        ]
        await service.save_features(self.conn, rows=rows)
