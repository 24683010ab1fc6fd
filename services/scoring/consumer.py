"""Scoring's batch handler: apply events to features, learn delayed labels, score, publish."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime

from aiokafka import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.scoring import metrics, service
from services.scoring.features import apply_event, is_churned, new_state, vector
from services.scoring.model import ChurnModel
from services.scoring.models import processed_events
from services.scoring.settings import ScoringSettings
from shared.consumer import Inbound, Outbox
from shared.db import keep_new
from shared.events import Event, RiskScore, derive_id, parse_event
from shared.topics import Topics

log = logging.getLogger(__name__)


def parse_record(record: ConsumerRecord[bytes, bytes]) -> Event:
    """Parse a usage/account record; failures go to the DLQ."""
    if record.value is None:
        raise ValueError("empty message")
    return parse_event(record.value)


class ScoringHandler:
    """Holds the online model; handles one batch inside the loop's transaction."""

    def __init__(self, settings: ScoringSettings, topics: Topics) -> None:
        self.settings = settings
        self.topics = topics
        self.horizon_s = settings.scoring_horizon_days * 86_400
        self.model = ChurnModel(settings.model_params())

    async def load(self, engine: AsyncEngine) -> None:
        """(Re)load the model from the database: at start, and after a failed batch.

        After a failure the in-memory model may have learned from a batch whose
        transaction rolled back; reloading keeps it equal to what is stored.
        """
        async with engine.connect() as conn:
            self.model = await service.load_model(
                conn, name=self.settings.scoring_model_name, params=self.settings.model_params()
            )
        metrics.MODEL_TRAINED.set(1 if self.model.trained else 0)

    async def __call__(
        self, conn: AsyncConnection, batch: Sequence[Inbound[Event]], outbox: Outbox
    ) -> None:
        """Apply new events, learn labels, store features and scores, publish scores."""
        now = datetime.now(UTC)
        events = [item.value for item in batch]
        fresh = await keep_new(
            conn, table=processed_events, items=events, key=lambda e: e.event_id, now=now
        )
        by_subscriber: dict[str, list[Event]] = defaultdict(list)
        for event in fresh:
            by_subscriber[event.subscriber_id].append(event)
        metrics.EVENTS.labels("applied").inc(len(fresh))
        metrics.EVENTS.labels("duplicate").inc(len(events) - len(fresh))
        if not by_subscriber:
            return

        rows = await service.lock_features(conn, subscriber_ids=by_subscriber)
        previous = await service.previous_scores(conn, subscriber_ids=by_subscriber)
        learned = False
        feature_rows, score_rows = [], []
        for subscriber_id, sub_events in by_subscriber.items():
            row = rows.get(subscriber_id)
            state = row["state"] if row else new_state()
            snapshot = row["snapshot"] if row else None
            snapshot_at = row["snapshot_at"].timestamp() if row and row["snapshot_at"] else None
            for event in sorted(sub_events, key=lambda e: e.occurred_at):
                apply_event(state, event)
                t = event.occurred_at.timestamp()
                # Delayed labels with horizon H: a churn within H of the snapshot makes
                # it positive; a snapshot that outlived H without churn is negative.
                if snapshot is not None and snapshot_at is not None:
                    if event.event_type == "churn" and t - snapshot_at <= self.horizon_s:
                        self.model.learn(snapshot, True)
                        metrics.LABELS.labels("churn").inc()
                        snapshot, learned = None, True
                    elif t - snapshot_at > self.horizon_s and not is_churned(state):
                        self.model.learn(snapshot, False)
                        metrics.LABELS.labels("no_churn").inc()
                        snapshot, learned = None, True
                if snapshot is None and not is_churned(state):
                    snapshot, snapshot_at = vector(state), t
            feature_rows.append(
                {
                    "subscriber_id": subscriber_id,
                    "state": state,
                    "snapshot": snapshot,
                    "snapshot_at": (
                        datetime.fromtimestamp(snapshot_at, UTC)
                        if snapshot is not None and snapshot_at is not None
                        else None
                    ),
                    "events_applied": (row["events_applied"] if row else 0) + len(sub_events),
                    "updated_at": now,
                }
            )
            if is_churned(state):
                continue  # a churned subscriber is handled by win-back, not by risk
            last = max(sub_events, key=lambda e: e.occurred_at)
            score, reasons = self.model.score(vector(state))
            message = RiskScore(
                score_id=derive_id("score", last.event_id),
                subscriber_id=subscriber_id,
                score=score,
                previous_score=previous.get(subscriber_id),
                model_version=self.model.version,
                reasons=reasons,
                cause_event_id=last.event_id,
                event_time=last.occurred_at,
                scored_at=now,
            )
            score_rows.append(
                {
                    "subscriber_id": subscriber_id,
                    "score": score,
                    "previous_score": message.previous_score,
                    "model_version": message.model_version,
                    "reasons": reasons,
                    "cause_event_id": last.event_id,
                    "event_time": last.occurred_at,
                    "scored_at": now,
                }
            )
            await outbox.send(self.topics.scores, key=subscriber_id, value=message)
            metrics.SCORES.observe(score)
            metrics.EVENT_TO_SCORE_SECONDS.observe(
                max(0.0, (now - last.occurred_at).total_seconds())
            )
        await service.save_features(conn, rows=feature_rows)
        await service.save_scores(conn, rows=score_rows)
        if learned:
            await service.save_model(
                conn, name=self.settings.scoring_model_name, model=self.model, now=now
            )
            metrics.MODEL_TRAINED.set(1 if self.model.trained else 0)
