"""The served score's calibration: its level before horizon labels mature, and pickles."""

from __future__ import annotations

import math
import pickle
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.scoring.calibration import (
    LEVEL_EVERY,
    LEVEL_MIN_CHURNS,
    LEVEL_PRIOR_CHURNS,
    LEVEL_PRIOR_MONTHLY_RATE,
    Calibrator,
)
from services.scoring.model import ChurnModel, ModelParams
from services.scoring.scorer import EngineParams, Scorer
from shared.events import Event, parse_event
from tests.helpers import event

HORIZON_DAYS = 30.0
NOW = datetime.now(UTC)


def call_on(subscriber: str, days_ago: float) -> list[Event]:
    voice = {"service": "voice", "direction": "outgoing", "duration_s": 60}
    return [parse_event(event("cdr", subscriber, voice, at=NOW - timedelta(days=days_ago)))]


def noted(calibrator: Calibrator, scores: list[float]) -> None:
    for p in scores:
        calibrator.note(p, HORIZON_DAYS)


def test_the_churn_rate_sets_the_level_before_any_label_matures() -> None:
    calibrator = Calibrator()
    rng = random.Random(3)
    scores = [rng.uniform(0.02, 0.4) for _ in range(LEVEL_EVERY)]
    # 400 churns in 200,000 subscriber-days (0.002 a day), and the assumed rate's
    # ten churns' worth: 1 - exp(-h * 30) with h the posterior mean.
    calibrator.expose(200_000.0, churned=False)
    for _ in range(400):
        calibrator.expose(0.0, churned=True)
    prior_hazard = -math.log(1 - LEVEL_PRIOR_MONTHLY_RATE) / 30
    hazard = (400 + LEVEL_PRIOR_CHURNS) / (200_000 + LEVEL_PRIOR_CHURNS / prior_hazard)
    rate = calibrator.churn_rate(HORIZON_DAYS)
    assert rate == pytest.approx(1 - math.exp(-hazard * 30))
    assert rate == pytest.approx(1 - math.exp(-0.002 * 30), rel=0.05)  # the data dominate
    noted(calibrator, scores)
    served = [calibrator(p) for p in scores]
    assert sum(served) / len(served) == pytest.approx(rate, abs=1e-3)
    # Calibration in the large: one shift, the order of every pair kept.
    assert sorted(range(len(scores)), key=scores.__getitem__) == sorted(
        range(len(served)), key=served.__getitem__
    )
    assert calibrator.summary()["level_shift"] < 0  # the scores' mean (0.21) was too high


def test_before_any_churn_the_assumed_rate_holds_and_a_quiet_month_lowers_it() -> None:
    calibrator = Calibrator()
    assumed = 1 - (1 - LEVEL_PRIOR_MONTHLY_RATE)  # 30 days: one month
    assert calibrator.churn_rate(HORIZON_DAYS) == pytest.approx(assumed, rel=1e-9)
    noted(calibrator, [0.3] * LEVEL_EVERY)
    assert calibrator(0.3) == pytest.approx(assumed, rel=1e-3)
    calibrator.expose(10_000 * 30.0, churned=False)  # 10,000 subscribers, a month, no churn
    quiet = calibrator.churn_rate(HORIZON_DAYS)
    assert quiet < assumed / 10
    for _ in range(10):
        calibrator.expose(0.0, churned=True)
    assert calibrator.churn_rate(HORIZON_DAYS) > 1.9 * quiet  # ten churns: twice the evidence


def test_once_horizon_labels_calibrate_the_level_is_done_with() -> None:
    calibrator = Calibrator(min_labels=20, refit_every=20)
    calibrator.expose(10_000.0, churned=False)
    for _ in range(LEVEL_MIN_CHURNS):
        calibrator.expose(0.0, churned=True)
    noted(calibrator, [0.5] * LEVEL_EVERY)
    assert calibrator(0.5) < 0.1
    for i in range(40):  # matured labels: half of the 0.5 scores churned
        calibrator.learn(0.5, i % 2 == 0)
    assert calibrator.active
    assert calibrator(0.5) == pytest.approx(0.5, abs=0.05)
    before = len(calibrator.level_recent)
    noted(calibrator, [0.9] * 10)
    assert len(calibrator.level_recent) == before  # nothing more noted


def test_pickles_round_trip_and_old_checkpoints_load() -> None:
    calibrator = Calibrator()
    calibrator.expose(5000.0, churned=False)
    for _ in range(LEVEL_MIN_CHURNS):
        calibrator.expose(0.0, churned=True)
    noted(calibrator, [0.2] * LEVEL_EVERY)
    restored = pickle.loads(pickle.dumps(calibrator))  # noqa: S301 (our own bytes)
    assert restored(0.2) == calibrator(0.2) != 0.2
    assert restored.summary() == calibrator.summary()
    # A checkpoint from before the level: its state has none of the level's fields.
    old: dict[str, Any] = dict(Calibrator().__dict__)
    for name in ("exposure_days", "churns", "level_recent", "level_noted", "level_fitted_at"):
        old.pop(name)
    old.pop("level_shift")
    revived = Calibrator.__new__(Calibrator)
    revived.__setstate__(old)
    assert revived(0.2) == 0.2 and revived.churns == 0


def test_the_engine_counts_history_and_churns() -> None:
    scorer = Scorer(EngineParams(min_history_s=0.0), ChurnModel(ModelParams()))
    calibrator = scorer.model.calibrator
    state = scorer.step(None, call_on("A", 40)).state
    state = scorer.step(state, call_on("A", 10)).state
    churn = [parse_event(event("churn", "A", {"kind": "port_out"}, at=NOW - timedelta(days=5)))]
    state = scorer.step(state, churn).state
    scorer.step(state, call_on("A", 1))  # after the churn: no more history counted
    assert calibrator.churns == 1
    # From its first call (40 days ago, the first of a day's calls) to the churn.
    assert calibrator.exposure_days == pytest.approx(35.0, abs=1.0)
    assert calibrator.level_noted == 2  # two days scored before the churn


def test_step_labels_calibrate_the_horizon_before_its_own_labels_mature() -> None:
    calibrator = Calibrator(min_labels=200, refit_every=500)
    rng = random.Random(11)

    # The blend says p over the horizon; the truth is a tenth of its log-odds'
    # worth lower, and over the 3-day step of a 30-day horizon.
    def step_truth(p: float) -> float:
        horizon = 1 / (1 + math.exp(-(math.log(p / (1 - p)) - 1.0)))
        return 1 - (1 - horizon) ** (1 / 10)

    scores = [rng.uniform(0.01, 0.6) for _ in range(20_000)]
    for p in scores:
        calibrator.learn_step(p, rng.random() < step_truth(p), steps_per_horizon=10)
    assert calibrator.step_theta is not None
    for p in (0.05, 0.2, 0.5):
        expected = 1 / (1 + math.exp(-(math.log(p / (1 - p)) - 1.0)))
        assert calibrator(p) == pytest.approx(expected, abs=0.03)
    # It serves before the level: the step's labels say more than the churn rate.
    calibrator.expose(1000.0, churned=False)
    for _ in range(LEVEL_MIN_CHURNS):
        calibrator.expose(0.0, churned=True)
    noted(calibrator, [0.5] * LEVEL_EVERY)
    assert calibrator(0.5) == pytest.approx(1 / (1 + math.exp(1.0)), abs=0.03)
    # A checkpoint keeps it.
    assert pickle.loads(pickle.dumps(calibrator))(0.2) == calibrator(0.2)  # noqa: S301
