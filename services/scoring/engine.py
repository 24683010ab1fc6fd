"""The scoring engine: one subscriber's new events in, features, labels and a score out.

Pure: no Kafka, no database. The service's batch handler, ``churnwatch train``
and the benchmark's bare limit all run this same code.

Labels with a horizon H (River's delayed-label evaluation, done online): at
most one feature snapshot per ``snapshot_interval`` is kept pending per
subscriber, with the score given at that moment. A churn within H after a
snapshot makes it a positive example; a snapshot older than H plus the allowed
lateness, with no churn, becomes a negative one. Snapshot features live
outside the per-subscriber state (the caller stores them); the state keeps only
their times, so it stays small. An intervention (a retention call that kept the
subscriber, from the outcomes topic) censors the snapshots taken before it:
``Scorer.censor``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from services.scoring.features import (
    State,
    apply_event,
    is_churned,
    mark_churned,
    new_state,
    pending_stop_notice,
    vector,
)
from services.scoring.model import ChurnModel
from shared.events import Event

DAY = 86_400.0


@dataclass(frozen=True)
class EngineParams:
    """Labelling parameters (from settings)."""

    horizon_s: float = 30 * DAY
    lateness_s: float = 1 * DAY
    snapshot_interval_s: float = 1 * DAY
    max_snapshots: int = 40
    involuntary_churn_s: float = 0.0  # 0: a suspension never counts as churn
    # No snapshot before a subscriber has this much history: the 30-day sums are
    # still filling up and would teach the model what "new" looks like, not churn.
    min_history_s: float = 30 * DAY


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Features and score of one subscriber at one time, waiting for its label."""

    at: float
    x: dict[str, float]
    predicted: float  # the score served
    prior: float  # its components: the prior's probability
    model: float | None  # and the model's (None before it learned anything)


@dataclass(frozen=True, slots=True)
class Scored:
    """The score given after a subscriber's events of one batch."""

    score: float
    previous: float | None
    x: dict[str, float]  # explain it with ScoringModel.explain when it is shown
    version: str
    cause: Event


@dataclass
class Step:
    """What one subscriber's events did: new state, labels resolved, the new score."""

    state: State
    late: int = 0
    snapshot: Snapshot | None = None
    # (snapshot time, label): True churned, False did not, None discarded unlabelled.
    resolved: list[tuple[float, bool | None]] = field(default_factory=list)
    scored: Scored | None = None


class Scorer:
    """Applies events and resolves labels; the model learns when the caller has the snapshots."""

    def __init__(self, params: EngineParams, model: ChurnModel) -> None:
        self.params = params
        self.model = model

    def step(self, state: State | None, events: list[Event]) -> Step:
        """Fold ``events`` (one subscriber's) into ``state`` and score once."""
        p = self.params
        state = state if state is not None else new_state()
        state.setdefault("pending", [])
        watermark_before = state["watermark"]
        late = 0
        for event in sorted(events, key=lambda e: e.occurred_at):
            t = event.occurred_at.timestamp()
            if watermark_before is not None and t < watermark_before - p.lateness_s:
                late += 1  # still applied exactly; only labels already given miss it
            apply_event(state, event)
        step = Step(state=state, late=late)
        watermark = float(state["watermark"])

        if p.involuntary_churn_s > 0 and not is_churned(state):
            notice = pending_stop_notice(state)
            if notice is not None and watermark >= notice[0] + p.involuntary_churn_s:
                mark_churned(state, "involuntary", notice[0])

        pending: list[float] = state["pending"]
        if is_churned(state):
            churned_at = float(state["latest"]["churned"][1])
            for at in pending:
                if at > churned_at:
                    step.resolved.append((at, None))  # taken after the churn: no label
                else:
                    step.resolved.append((at, churned_at - at <= p.horizon_s))
            state["pending"] = []
            return step  # a churned subscriber is for win-back, not for risk

        expired = [at for at in pending if watermark - at > p.horizon_s + p.lateness_s]
        step.resolved.extend((at, False) for at in expired)
        pending = [at for at in pending if at not in expired]

        x = vector(state)
        prior, model_p = self.model.components(x)
        score = self.model.blend(prior, model_p)
        mature = watermark - float(state["first_seen"]) >= p.min_history_s
        # No snapshot at or before an intervention already recorded (late events):
        # its label would be the outreach's doing, not the subscriber's (censor()).
        untreated = watermark > float(state.get("treated_at") or -math.inf)
        if (
            mature
            and untreated
            and (not pending or watermark - max(pending) >= p.snapshot_interval_s)
        ):
            step.snapshot = Snapshot(watermark, x, score, prior, model_p)
            pending.append(watermark)
            while len(pending) > p.max_snapshots:
                step.resolved.append((pending.pop(0), None))
        state["pending"] = pending
        previous = state.get("last_score")
        state["last_score"] = score
        step.scored = Scored(
            score, previous, x, self.model.version, max(events, key=lambda e: e.occurred_at)
        )
        return step

    def censor(self, state: State, at: float) -> list[float]:
        """Record an intervention at ``at`` (epoch seconds); drop the snapshots it would label.

        A retention call that kept the subscriber changes the outcome the
        pending snapshots were waiting for: learning "did not churn" from them
        would teach the model that the warning signs it saw were harmless.
        They are discarded unlabelled (censored) instead, and no snapshot is
        taken later at or before ``at`` (a late event). Returns the times of
        the dropped snapshots, for the caller to delete.
        """
        state["treated_at"] = max(float(state.get("treated_at") or at), at)
        pending: list[float] = state.get("pending") or []
        dropped = [t for t in pending if t <= at]
        state["pending"] = [t for t in pending if t > at]
        return dropped

    def learn(self, examples: list[tuple[Snapshot, bool]]) -> None:
        """Learn resolved snapshots with their labels: quality first, then the model."""
        for snapshot, churned in examples:
            self.model.learn(
                snapshot.x, churned, snapshot.predicted, (snapshot.prior, snapshot.model)
            )


class MemorySnapshots:
    """Snapshot storage in memory, for ``churnwatch train`` and the benchmark."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, float], Snapshot] = {}

    def add(self, subscriber_id: str, snapshot: Snapshot) -> None:
        """Keep a snapshot until it is resolved."""
        self._by_key[(subscriber_id, snapshot.at)] = snapshot

    def take(
        self, subscriber_id: str, resolved: list[tuple[float, bool | None]]
    ) -> list[tuple[Snapshot, bool]]:
        """Remove resolved snapshots; return the labelled ones as training examples."""
        out = []
        for at, label in resolved:
            snap = self._by_key.pop((subscriber_id, at), None)
            if snap is not None and label is not None:
                out.append((snap, label))
        return out


def run_in_memory(scorer: Scorer, events: list[Event], *, batch_size: int = 500) -> dict[str, Any]:
    """Run events through the engine in batches, all in memory; return per-subscriber state.

    The same steps as the service, without Kafka or a database: for warm-starting
    (``churnwatch train``) and for the benchmark's bare limit.
    """
    states: dict[str, State] = {}
    snapshots = MemorySnapshots()
    for start in range(0, len(events), batch_size):
        by_subscriber: dict[str, list[Event]] = {}
        for event in events[start : start + batch_size]:
            by_subscriber.setdefault(event.subscriber_id, []).append(event)
        for subscriber_id, sub_events in by_subscriber.items():
            step = scorer.step(states.get(subscriber_id), sub_events)
            states[subscriber_id] = step.state
            scorer.learn(snapshots.take(subscriber_id, step.resolved))
            if step.snapshot is not None:
                snapshots.add(subscriber_id, step.snapshot)
    return states
