"""The served score's calibration before the horizon's labels mature, and its pickles."""

from __future__ import annotations

import math
import pickle
import random
from typing import Any

import pytest

from services.scoring.calibration import STEP_MIN_CHURNS, Calibrator


def test_step_labels_calibrate_the_horizon_before_its_own_labels_mature() -> None:
    calibrator = Calibrator(min_labels=200, refit_every=500)
    rng = random.Random(11)

    # The blend says p over the horizon; the truth is 1 lower in log-odds, and the
    # labels are over the 3-day step of a 30-day horizon.
    def step_truth(p: float) -> float:
        horizon = 1 / (1 + math.exp(-(math.log(p / (1 - p)) - 1.0)))
        return float(1 - (1 - horizon) ** (1 / 10))

    scores = [rng.uniform(0.01, 0.6) for _ in range(20_000)]
    for p in scores:
        calibrator.learn_step(p, rng.random() < step_truth(p), steps_per_horizon=10)
    assert calibrator.step_theta is not None
    for p in (0.05, 0.2, 0.5):
        expected = 1 / (1 + math.exp(-(math.log(p / (1 - p)) - 1.0)))
        assert calibrator(p) == pytest.approx(expected, abs=0.03)
    # A checkpoint keeps it.
    assert pickle.loads(pickle.dumps(calibrator))(0.2) == calibrator(0.2)  # noqa: S301


def test_too_few_step_churns_leave_the_score_as_it_is() -> None:
    calibrator = Calibrator(min_labels=200, refit_every=500)
    for i in range(1000):
        calibrator.learn_step(0.3, i < STEP_MIN_CHURNS - 1, steps_per_horizon=10)
    assert calibrator.step_theta is None and calibrator(0.3) == 0.3


def test_once_horizon_labels_calibrate_the_step_is_done_with() -> None:
    calibrator = Calibrator(min_labels=20, refit_every=20)
    for i in range(400):  # a tenth churned within the step, which is the horizon here
        calibrator.learn_step(0.5, i % 10 == 0, steps_per_horizon=1)
    assert calibrator.step_theta is not None
    assert calibrator(0.5) == pytest.approx(0.1, abs=0.03)
    for i in range(40):  # matured labels: half of the 0.5 scores churned
        calibrator.learn(0.5, i % 2 == 0)
    assert calibrator.active
    assert calibrator(0.5) == pytest.approx(0.5, abs=0.05)
    learnt = calibrator.step_learnt
    calibrator.learn_step(0.9, True, steps_per_horizon=10)
    assert calibrator.step_learnt == learnt  # nothing more taken


def test_checkpoints_from_before_the_step_calibration_load() -> None:
    old: dict[str, Any] = dict(Calibrator().__dict__)
    for name in ("step_recent", "step_learnt", "step_fitted_at", "step_theta"):
        old.pop(name)
    old.pop("steps_per_horizon")
    revived = Calibrator.__new__(Calibrator)
    revived.__setstate__(old)
    assert revived(0.2) == 0.2 and revived.step_theta is None
    revived.learn_step(0.2, False, steps_per_horizon=10)
    assert revived.step_learnt == 1
