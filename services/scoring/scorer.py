"""The scoring engine: one subscriber's new events in, features, labels and a score out.

Pure: no Kafka, no database. The service's batch handler, ``churnwatch train``
and the benchmark's bare limit all run this same code.

Labels with a horizon H (River's delayed-label evaluation, done online): at
most one feature snapshot per ``snapshot_interval`` is kept pending per
subscriber, with the score given at that moment. Each snapshot is labelled
twice. Over the label step S (``label_step_s``, at most H; ``Step.resolved``):
until horizon labels mature the model learns each such snapshot as a
non-churn (delayed feedback), and the step labels calibrate the score. Over
the horizon H (``Step.settled``): a churn is learnt as a churn, a non-churn
once horizon labels mature, and both measure and calibrate the served score.
With S = H (the default here) both are the same labels. Snapshot features live
outside the per-subscriber state (the caller stores them); the state keeps only
their times, so it stays small. An intervention (a retention call that kept the
subscriber, from the outcomes topic) censors the snapshots taken before it:
``Scorer.censor``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from services.scoring.features import (
    State,
    apply_event,
    is_churned,
    mark_churned,
    new_state,
    pending_stop_notice,
    vector,
)
from services.scoring.model import ChurnModel, Settled
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
    # The model's label step: None learns the horizon's labels directly.
    label_step_s: float | None = None

    @property
    def step_s(self) -> float:
        """The label step in seconds (the horizon when not set)."""
        return (
            self.horizon_s if self.label_step_s is None else min(self.label_step_s, self.horizon_s)
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Features and score of one subscriber at one time, waiting for its label."""

    at: float
    x: dict[str, float]
    predicted: float  # the score served
    prior: float  # its components: the prior's probability
    model: float | None  # and the model's (None before it learned anything)
    raw: float | None = None  # the blend before calibration (None: taken before it was kept)
    history_s: float | None = None  # how long the subscriber had been seen then


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
    # (snapshot time, label) over the label step, for the model to learn: True
    # churned within the step, False did not, None discarded unlabelled.
    resolved: list[tuple[float, bool | None]] = field(default_factory=list)
    # (snapshot time, label) over the horizon: the calibration's labels. A
    # snapshot settled here is done with (its stored features can go).
    settled: list[tuple[float, bool | None]] = field(default_factory=list)
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
        churned_before = is_churned(state)
        late = 0
        for event in sorted(events, key=lambda e: e.occurred_at):
            t = event.occurred_at.timestamp()
            if watermark_before is not None and t < watermark_before - p.lateness_s:
                late += 1  # still applied exactly; only labels already given miss it
            apply_event(state, event)
        step = Step(state=state, late=late)
        newest, first_seen = state["watermark"], state["first_seen"]
        if newest is None or first_seen is None:
            # apply_event sets both on any event: only a step without events gets here
            # (float(None) raised the same TypeError before the state was typed).
            raise TypeError("Scorer.step needs at least one event")
        watermark = float(newest)

        if p.involuntary_churn_s > 0 and not is_churned(state):
            notice = pending_stop_notice(state)
            if notice is not None and watermark >= notice[0] + p.involuntary_churn_s:
                mark_churned(state, "involuntary", notice[0])

        calibrator = self.model.calibrator
        if not churned_before:
            since = float(watermark_before if watermark_before is not None else first_seen)
            calibrator.expose((watermark - since) / DAY, churned=is_churned(state))

        # ``pending``: snapshots waiting for their horizon label; ``stepping``: the
        # (newest) ones still waiting for their step label too.
        pending: list[float] = state["pending"]
        stepping: list[float] = state.get("stepping", pending if p.step_s == p.horizon_s else [])
        if is_churned(state):
            churned_at = float(state["latest"]["churned"][1])
            step.resolved = [_label(at, churned_at, p.step_s) for at in stepping]
            step.settled = [_label(at, churned_at, p.horizon_s) for at in pending]
            state["pending"] = []
            state.pop("stepping", None)
            return step  # a churned subscriber is for win-back, not for risk

        step.resolved = [(at, False) for at in stepping if watermark - at > p.step_s + p.lateness_s]
        step.settled = [
            (at, False) for at in pending if watermark - at > p.horizon_s + p.lateness_s
        ]
        done = {at for at, _ in step.settled}
        stepped = {at for at, _ in step.resolved}
        pending = [at for at in pending if at not in done]
        stepping = [at for at in stepping if at not in stepped]

        x = vector(state)
        prior, model_p = self.model.components(x)
        raw = self.model.mix(prior, model_p)
        history_s = watermark - float(first_seen)
        if watermark_before is None or watermark_before // DAY != watermark // DAY:
            calibrator.note(raw, p.horizon_s / DAY)  # once a subscriber-day: the level's mean
        score = calibrator(raw, history_s / DAY)
        mature = history_s >= p.min_history_s
        # No snapshot at or before an intervention already recorded (late events):
        # its label would be the outreach's doing, not the subscriber's (censor()).
        untreated = watermark > float(state.get("treated_at") or -math.inf)
        if (
            mature
            and untreated
            and (not pending or watermark - max(pending) >= p.snapshot_interval_s)
        ):
            step.snapshot = Snapshot(watermark, x, score, prior, model_p, raw, history_s)
            pending.append(watermark)
            stepping.append(watermark)
            while len(pending) > p.max_snapshots:
                dropped = pending.pop(0)
                step.settled.append((dropped, None))
                if dropped in stepping:
                    stepping.remove(dropped)
                    step.resolved.append((dropped, None))
        state["pending"] = pending
        if p.step_s != p.horizon_s:
            state["stepping"] = stepping
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
        if "stepping" in state:
            state["stepping"] = [t for t in state["stepping"] if t > at]
        return dropped

    def learn(self, examples: list[tuple[Snapshot, bool]]) -> None:
        """Snapshots whose step resolved: non-churns for the model, for now.

        Only until horizon labels mature (``ChurnModel.learns_horizon_labels``). Their
        step labels also calibrate the served score until the horizon's own
        labels mature (``Calibrator.learn_step``).
        """
        steps = self.params.horizon_s / self.params.step_s
        early = not self.model.learns_horizon_labels
        for snapshot, label in examples:
            if early:
                self.model.observe(snapshot.x)
            if snapshot.raw is not None:
                self.model.calibrator.learn_step(snapshot.raw, label, steps_per_horizon=steps)

    def settle(self, examples: list[tuple[Snapshot, bool]]) -> None:
        """Snapshots whose horizon label is known: quality, calibration, churns learnt.

        A churn within the horizon is learnt (again) as a churn (``confirm``); once
        horizon labels mature, a non-churn is learnt here too, and no longer when
        its step passes (``learn``); every label goes to the horizon's quality and
        the calibration.
        """
        lag = self.params.horizon_s + self.params.lateness_s
        late = self.model.learns_horizon_labels
        for snapshot, churned in examples:
            if churned:
                self.model.confirm(snapshot.x)
            elif late:
                self.model.observe(snapshot.x)
            settled = Settled(
                churned,
                snapshot.predicted,
                (snapshot.prior, snapshot.model),
                snapshot.raw,
                math.inf if snapshot.history_s is None else snapshot.history_s / DAY,
            )
            self.model.settle(settled, matures_at=snapshot.at + lag)

    def advance(self, now: float) -> None:
        """Move the model's clock to ``now`` (the newest event time of a batch)."""
        self.model.advance(now)


def _label(at: float, churned_at: float, within: float) -> tuple[float, bool | None]:
    """A snapshot's label once its subscriber churned: within ``within`` of it, or no label."""
    if at > churned_at:
        return at, None  # taken after the churn
    return at, churned_at - at <= within
