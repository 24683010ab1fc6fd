"""Scoring's batch core: one batch of events in, states, labels, learning and scores out.

The live consumer (``ScoringHandler``, with a PostgreSQL-backed ``ScoringStore``)
and the backtest (``churnwatch.backtest``, with ``MemoryStore``) both call
``process_batch``, so what the backtest measures is what the service does:
the same dedup on ``event_id``, the same grouping (several events of one
subscriber in a batch are one re-score), the same labels learnt in the same
order, and the same ``RiskScore`` messages with the same reasons.

Per batch: drop events already applied, group the rest by subscriber, load
their states, run the engine for each, learn the step labels that resolved
(the model) and settle the horizon labels (quality and calibration), store
states and new snapshots, and say which scores are worth publishing.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar, cast, get_args

from services.scoring.features import State
from services.scoring.scorer import Scored, Scorer, Snapshot
from services.scoring.settings import ScoringSettings
from shared.events import Event, RiskScore, ScoreReason, derive_id

T = TypeVar("T")

SnapshotKey = tuple[str, float]
"""A snapshot's key: ``(subscriber_id, taken_at)``."""

ScoredField = Literal[
    "score",
    "previous_score",
    "band",
    "model_version",
    "cause_event_id",
    "event_time",
    "scored_at",
    "published_score",
]
"""A key of a state's ``scored`` record (``features.ScoredRecord``)."""
SCORED_FIELDS: tuple[ScoredField, ...] = get_args(ScoredField)
"""The fields of a state's ``scored`` record (``_record`` writes them; the API serves them).

Typed as the literal keys so that ``record[k]`` for ``k`` in them type-checks."""


class ScoringStore(Protocol):
    """Where the batch core keeps what outlives a batch (PostgreSQL live, memory in a backtest)."""

    async def keep_new(self, events: Sequence[Event]) -> list[Event]:
        """Record the events' ids; return those never applied before (first occurrence)."""

    async def load_states(self, subscriber_ids: Sequence[str]) -> dict[str, State]:
        """The states of these subscribers (locked until the batch ends), absent if new."""

    async def peek_snapshots(self, keys: Sequence[SnapshotKey]) -> dict[SnapshotKey, Snapshot]:
        """Stored snapshots by key, left in place (their horizon label is still to come)."""

    async def take_snapshots(self, keys: Sequence[SnapshotKey]) -> dict[SnapshotKey, Snapshot]:
        """Stored snapshots by key, removed (settled or discarded)."""

    async def add_snapshots(self, items: Sequence[tuple[str, Snapshot]]) -> None:
        """Store new snapshots until they are settled."""

    async def save_states(self, states: dict[str, tuple[State, int]]) -> None:
        """Store the states with how many new events each applied in this batch."""


@dataclass(frozen=True, slots=True)
class Learnt:
    """A labelled snapshot the batch learnt (``step``) or settled (``horizon``)."""

    subscriber_id: str
    snapshot: Snapshot
    label: bool
    kind: str  # "step" (the model learnt it) or "horizon" (quality and calibration)


@dataclass
class BatchOutcome:
    """What a batch did: the counts the metrics want, the scores to publish, the labels."""

    fresh: list[Event] = field(default_factory=list)
    duplicates: int = 0
    late: int = 0
    subscribers: int = 0
    scored: list[tuple[str, Scored]] = field(default_factory=list)
    published: list[RiskScore] = field(default_factory=list)
    unchanged: int = 0
    learnt: list[Learnt] = field(default_factory=list)


async def process_batch(
    events: Sequence[Event],
    *,
    store: ScoringStore,
    scorer: Scorer,
    settings: ScoringSettings | None,
    now: datetime | None,
) -> BatchOutcome:
    """Apply one batch of events; return what it did. The caller owns the transaction.

    ``now`` stamps ``scored_at`` (None: each score's cause event time, as a
    replay of history does). ``settings`` None publishes nothing (a warm start
    or the benchmark's bare limit: the scores are kept in the states only).
    """
    fresh = await store.keep_new(events)
    outcome = BatchOutcome(fresh=fresh, duplicates=len(events) - len(fresh))
    if not fresh:
        return outcome
    by_subscriber: dict[str, list[Event]] = defaultdict(list)
    for event in fresh:
        by_subscriber[event.subscriber_id].append(event)
    outcome.subscribers = len(by_subscriber)
    states = await store.load_states(list(by_subscriber))

    new_snapshots: list[tuple[str, Snapshot]] = []
    resolved: list[tuple[str, float, bool | None]] = []
    settled: list[tuple[str, float, bool | None]] = []
    saved: dict[str, tuple[State, int]] = {}
    clock = max(e.occurred_at for e in fresh).timestamp()
    for subscriber_id, sub_events in by_subscriber.items():
        step = scorer.step(states.get(subscriber_id), sub_events)
        outcome.late += step.late
        resolved.extend((subscriber_id, at, label) for at, label in step.resolved)
        settled.extend((subscriber_id, at, label) for at, label in step.settled)
        if step.snapshot is not None:
            new_snapshots.append((subscriber_id, step.snapshot))
        if step.scored is not None and settings is not None:
            outcome.scored.append((subscriber_id, step.scored))
            message = _record(subscriber_id, step.state, step.scored, scorer, settings, now)
            if message is None:
                outcome.unchanged += 1
            else:
                outcome.published.append(message)
        saved[subscriber_id] = (step.state, len(sub_events))

    outcome.learnt = await learn(store, scorer, resolved=resolved, settled=settled)
    scorer.advance(clock)
    await store.add_snapshots(new_snapshots)
    await store.save_states(saved)
    return outcome


async def learn(
    store: ScoringStore,
    scorer: Scorer,
    *,
    resolved: Sequence[tuple[str, float, bool | None]],
    settled: Sequence[tuple[str, float, bool | None]],
) -> list[Learnt]:
    """Learn the step labels, then settle the horizon labels (removing those snapshots).

    A snapshot may be in both lists (its step and horizon labels resolved in the
    same batch: always when the step is the horizon); it is read once.
    """
    settle_keys = [(s, at) for s, at, _ in settled]
    taken = await store.take_snapshots(settle_keys)
    peek_keys = [(s, at) for s, at, label in resolved if label is not None]
    missing = [k for k in peek_keys if k not in taken]
    stored = {**taken, **(await store.peek_snapshots(missing) if missing else {})}
    learnt: list[Learnt] = []
    examples: list[tuple[Snapshot, bool]] = []
    for sid, at, label in resolved:
        snapshot = stored.get((sid, at))
        if snapshot is not None and label is not None:
            examples.append((snapshot, label))
            learnt.append(Learnt(sid, snapshot, label, "step"))
    scorer.learn(examples)
    horizon: list[tuple[Snapshot, bool]] = []
    for sid, at, label in settled:
        snapshot = taken.get((sid, at))
        if snapshot is not None and label is not None:
            horizon.append((snapshot, label))
            learnt.append(Learnt(sid, snapshot, label, "horizon"))
    scorer.settle(horizon)
    return learnt


def _record(
    subscriber_id: str,
    state: State,
    scored: Scored,
    scorer: Scorer,
    settings: ScoringSettings,
    now: datetime | None,
) -> RiskScore | None:
    """Keep the score in the state; return the ``RiskScore`` to publish if it moved.

    Alerting only acts on movement, so a re-score in the same band and less
    than SCORING_PUBLISH_MIN_DELTA from the last published one is kept but
    not published, and not explained (reasons are computed for what is shown).
    """
    band = settings.band(scored.score)
    at = now or scored.cause.occurred_at
    record = state.get("scored")
    last = record.get("published_score") if record else None
    state["scored"] = {
        "score": scored.score,
        "previous_score": scored.previous,
        "band": band,
        "model_version": scored.version,
        "cause_event_id": str(scored.cause.event_id),
        "event_time": scored.cause.occurred_at.isoformat(),
        "scored_at": at.isoformat(),
        "published_score": last,
    }
    if not settings.worth_publishing(last, scored.score):
        return None
    state["scored"]["published_score"] = scored.score
    return RiskScore(
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
            for r in scorer.model.explain(scored.x)
        ],
        cause_event_id=scored.cause.event_id,
        event_time=scored.cause.occurred_at,
        scored_at=at,
    )


class MemoryStore:
    """``ScoringStore`` in memory: for the backtest, ``churnwatch train`` and the benchmark."""

    def __init__(self) -> None:
        self.seen: set[uuid.UUID] = set()
        self.states: dict[str, State] = {}
        self.snapshots: dict[SnapshotKey, Snapshot] = {}

    async def keep_new(self, events: Sequence[Event]) -> list[Event]:
        """Events whose id was never seen (a repeat within the batch counts once)."""
        fresh = []
        for event in events:
            if event.event_id not in self.seen:
                self.seen.add(event.event_id)
                fresh.append(event)
        return fresh

    async def load_states(self, subscriber_ids: Sequence[str]) -> dict[str, State]:
        """The states held (the objects themselves: nothing else shares them)."""
        return {s: self.states[s] for s in subscriber_ids if s in self.states}

    async def peek_snapshots(self, keys: Sequence[SnapshotKey]) -> dict[SnapshotKey, Snapshot]:
        """Snapshots by key, left in place."""
        return {k: self.snapshots[k] for k in keys if k in self.snapshots}

    async def take_snapshots(self, keys: Sequence[SnapshotKey]) -> dict[SnapshotKey, Snapshot]:
        """Snapshots by key, removed."""
        out = {}
        for k in keys:
            snapshot = self.snapshots.pop(k, None)
            if snapshot is not None:
                out[k] = snapshot
        return out

    async def add_snapshots(self, items: Sequence[tuple[str, Snapshot]]) -> None:
        """Keep new snapshots (a repeat of a key is ignored, as in PostgreSQL)."""
        for sid, snapshot in items:
            self.snapshots.setdefault((sid, snapshot.at), snapshot)

    async def save_states(self, states: dict[str, tuple[State, int]]) -> None:
        """Hold the states."""
        for sid, (state, _) in states.items():
            self.states[sid] = state


def run_in_memory(
    scorer: Scorer, events: Sequence[Event], *, batch_size: int = 500
) -> dict[str, State]:
    """Run events through the batch core in batches, all in memory; return the states.

    The service's steps without Kafka or a database, publishing nothing: for
    warm-starting (``churnwatch train``) and for the benchmark's bare limit.
    """
    store = MemoryStore()
    for start in range(0, len(events), batch_size):
        run_sync(
            process_batch(
                events[start : start + batch_size],
                store=store,
                scorer=scorer,
                settings=None,
                now=None,
            )
        )
    return store.states


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (the batch core on ``MemoryStore``) to its end.

    The in-memory store awaits nothing real, so the coroutine finishes on its
    first step: no event loop is needed (a replay runs hundreds of thousands of
    batches, and a loop per batch would cost more than the batch itself).
    """
    try:
        coroutine.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    coroutine.close()
    raise RuntimeError("the in-memory batch suspended: a store that does real I/O needs a loop")
