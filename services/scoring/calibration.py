"""Calibration of the served score: Platt scaling by history, then isotonic regression.

The blend of the prior and the model ranks subscribers; this module makes its
number mean what it says, "probability of churn within the horizon", from the
horizon labels as they mature (``ChurnModel.settle`` feeds them in that order).
Two steps, both fitted again every ``refit_every`` labels on the last
``window`` ones:

1. **Platt scaling by history**: ``sigmoid(a z + b + (c z + d) youth)``, z the
   blend's log-odds, ``youth`` 1 on a subscriber's first day and halving every
   ``YOUTH_DAYS``: a score from a few days of data says less than one from a
   month, and one slope for both would be too steep for the first and too flat
   for the second. Fitted by Newton's method with a weak pull towards the
   identity (``RIDGE``), so a window whose classes the score separates still
   gives a finite fit.
2. **Isotonic regression** (pool-adjacent-violators) of the labels on step 1's
   probabilities: takes out whatever monotone distortion is left (an S shape:
   a model sure of a few and unsure of the many) without any assumption on its
   form, and never reorders two scores.

A calibration may stretch the scores, never turn them round: step 1 is kept
only if it rises in z for the youngest and the oldest subscriber alike,
otherwise plain Platt scaling, otherwise none; step 2 is monotone by
construction.

**Before the first horizon labels mature** (a horizon and more after a fresh
install) there is nothing to fit either step on, but two things are known
sooner, and the served score uses the better one:

- **the label step's labels** ("churned within ``S`` days of the snapshot",
  3 days by default), which resolve within days: plain Platt scaling of the
  step's probability on the blend's log-odds, ``q = sigmoid(a z + b)``, held
  for the horizon as a constant hazard, ``1 - (1 - q) ** (H / S)``, once
  ``min_labels`` of them with ``LEVEL_MIN_CHURNS`` churns are in;
- before that, **the churn rate**: churns seen per subscriber-day of history,
  ``h``, held for the horizon, ``1 - exp(-h H)``; the blend's log-odds are
  moved by one shift so that the mean served score of the recent
  subscriber-days equals that rate (calibration in the large). Until churns
  are seen the rate leans on a typical operator's, ``LEVEL_PRIOR_MONTHLY_RATE``
  (2 % a month), worth ``LEVEL_PRIOR_CHURNS`` churns of evidence (a Gamma
  prior on the hazard): a month without a churn among thousands of
  subscribers then says the rate is low, and the first churns move it at once.

Both keep the order; the operator's rules, written for no operator in
particular, no longer claim a baseline churn rate the operator does not have.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from typing import Any

import numpy as np

YOUTH_DAYS = 7.0
"""A subscriber's "youth" in the calibration halves every this many days of history."""
RIDGE = 1.0
"""The Platt fit's pull towards the identity, in labels' worth of evidence."""
MIN_SLOPE = 0.05
"""The flattest step 1 may make the log-odds (it must keep their order)."""
IDENTITY = (1.0, 0.0, 0.0, 0.0)
"""Step 1's parameters (a, b, c, d) that change nothing."""
LEVEL_MIN_CHURNS = 20
"""Churns among the step labels before they calibrate the score (fewer say too little)."""
LEVEL_PRIOR_MONTHLY_RATE = 0.02
"""The churn rate assumed before any churn is seen: a typical operator's, 2 % a month."""
LEVEL_PRIOR_CHURNS = 10.0
"""How many churns' worth of evidence that assumption is."""
LEVEL_EVERY = 500
"""The level's shift is fitted again every this many subscriber-days noted."""
LEVEL_WINDOW = 5000
"""Recent subscriber-days' blended scores the shift makes average to the churn rate."""


def logit(p: float) -> float:
    """log(p / (1 - p)), with p kept within [1e-6, 1 - 1e-6]."""
    p = min(1 - 1e-6, max(1e-6, p))
    return math.log(p / (1 - p))


def youth(history_days: float) -> float:
    """1 for a subscriber first seen now, 0.5 after ``YOUTH_DAYS``, towards 0 later."""
    return float(2.0 ** (-max(0.0, history_days) / YOUTH_DAYS))


class Calibrator:
    """The served score's calibration (module docstring), learnt online.

    Starts as the identity and serves once it holds ``min_labels`` labels of
    both classes.
    """

    def __init__(self, min_labels: int = 200, window: int = 20_000, refit_every: int = 500):
        self.min_labels = min_labels
        self.refit_every = refit_every
        self.recent: deque[tuple[float, float, bool]] = deque(maxlen=window)
        self._init_level()
        self.theta: tuple[float, ...] = IDENTITY
        # Step 2: the isotonic fit as points (step-1 probability, churn rate), rising.
        self.steps_x: list[float] = []
        self.steps_y: list[float] = []
        # The youth the window held at the last fit: served youth is kept inside it, so
        # step 1 never extrapolates (on a fresh install every label in the window is
        # young while the subscribers scored a month later are not).
        self.youth_range = (0.0, 1.0)
        self.learnt = 0
        self.fitted_at = 0
        self.active = False

    def _init_level(self) -> None:
        # Calibration in the large before labels mature (module docstring).
        self.exposure_days = 0.0
        self.churns = 0
        self.level_recent: deque[float] = deque(maxlen=LEVEL_WINDOW)
        self.level_noted = 0
        self.level_fitted_at = 0
        self.level_shift = 0.0
        # Platt scaling on the label step's labels: (a, b), and the horizon / step.
        self.step_recent: deque[tuple[float, bool]] = deque(maxlen=self.recent.maxlen)
        self.step_learnt = 0
        self.step_fitted_at = 0
        self.step_theta: tuple[float, float] | None = None
        self.steps_per_horizon = 1.0

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Checkpoints from before the level: it starts from nothing.
        self.__dict__.update(state)
        fresh = Calibrator(self.min_labels, self.recent.maxlen or 20_000, self.refit_every)
        for name, value in vars(fresh).items():
            self.__dict__.setdefault(name, value)

    def __call__(self, p: float, history_days: float = math.inf) -> float:
        """The calibrated probability (until ``active``: from the step's labels or the level)."""
        if not self.active:
            if self.step_theta is not None:
                a, b = self.step_theta
                step = _sigmoid(a * logit(p) + b)
                return float(1.0 - (1.0 - step) ** self.steps_per_horizon)
            if self.level_shift == 0.0:
                return p
            return _sigmoid(logit(p) + self.level_shift)
        low, high = self.youth_range
        young = min(high, max(low, youth(history_days)))
        return self._isotonic(self._platt(logit(p), young))

    def learn(self, p: float, churned: bool, history_days: float = math.inf) -> None:
        """Take one matured horizon label for the uncalibrated probability ``p``."""
        self.recent.append((logit(p), youth(history_days), churned))
        self.learnt += 1
        if self.learnt - self.fitted_at >= min(self.refit_every, self.min_labels):
            self._fit()

    def expose(self, days: float, *, churned: bool) -> None:
        """Count ``days`` of one subscriber's history, and its churn if it churned in them."""
        self.exposure_days += max(0.0, days)
        self.churns += int(churned)

    def learn_step(self, p: float, churned: bool, *, steps_per_horizon: float) -> None:
        """Take one label step's label for the uncalibrated horizon probability ``p``."""
        if self.active:
            return  # the horizon's own labels calibrate now
        self.step_recent.append((logit(p), churned))
        self.step_learnt += 1
        self.steps_per_horizon = steps_per_horizon
        if self.step_learnt - self.step_fitted_at < min(self.refit_every, self.min_labels):
            return
        self.step_fitted_at = self.step_learnt
        positives = sum(1 for _, y in self.step_recent if y)
        if len(self.step_recent) < self.min_labels or positives < LEVEL_MIN_CHURNS:
            return
        if positives == len(self.step_recent):
            return
        z = np.array([row[0] for row in self.step_recent])
        y = np.array([float(row[1]) for row in self.step_recent])
        fitted = _newton(np.column_stack([z, np.ones_like(z)]), y, np.array(IDENTITY[:2]))
        if fitted[0] >= MIN_SLOPE:  # it may stretch the scores, never turn them round
            self.step_theta = (float(fitted[0]), float(fitted[1]))

    def churn_rate(self, horizon_days: float) -> float:
        """The churn rate over a horizon: the churns seen so far, and the assumed rate.

        The posterior mean of the daily hazard under a Gamma prior worth
        ``LEVEL_PRIOR_CHURNS`` churns at ``LEVEL_PRIOR_MONTHLY_RATE``, held for
        ``horizon_days``.
        """
        prior_hazard = -math.log(1.0 - LEVEL_PRIOR_MONTHLY_RATE) / 30.0
        prior_days = LEVEL_PRIOR_CHURNS / prior_hazard
        hazard = (self.churns + LEVEL_PRIOR_CHURNS) / (self.exposure_days + prior_days)
        return 1.0 - math.exp(-hazard * horizon_days)

    def note(self, p: float, horizon_days: float) -> None:
        """Note one subscriber-day's blended probability ``p``, for the level's shift."""
        if self.active:
            return
        self.level_recent.append(logit(p))
        self.level_noted += 1
        if self.level_noted - self.level_fitted_at >= LEVEL_EVERY:
            self.level_fitted_at = self.level_noted
            rate = self.churn_rate(horizon_days)
            self.level_shift = _shift_to_mean(np.fromiter(self.level_recent, float), rate)

    def _platt(self, z: float, young: float) -> float:
        a, b, c, d = self.theta
        margin = a * z + b + (c * z + d) * young
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, margin))))

    def _isotonic(self, q: float) -> float:
        """Step 2: linear between the isotonic fit's points, towards 0 and 1 beyond them.

        Never flat at the ends: two different scores keep their order.
        """
        xs, ys = self.steps_x, self.steps_y
        if not xs:
            return q
        i = bisect.bisect_left(xs, q)
        if i == 0:
            return ys[0] * q / xs[0] if xs[0] > 0 else ys[0]
        if i == len(xs):
            top = xs[-1]
            return 1.0 - (1.0 - ys[-1]) * (1.0 - q) / (1.0 - top) if top < 1 else ys[-1]
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (q - x0) / (x1 - x0) if x1 > x0 else y1

    def _fit(self) -> None:
        self.fitted_at = self.learnt
        positives = sum(1 for row in self.recent if row[2])
        if len(self.recent) < self.min_labels or positives in (0, len(self.recent)):
            return
        z = np.array([row[0] for row in self.recent])
        young = np.array([row[1] for row in self.recent])
        y = np.array([float(row[2]) for row in self.recent])
        rows = np.column_stack([z, np.ones_like(z), z * young, young])
        self.youth_range = (float(young.min()), float(young.max()))
        theta = np.array(IDENTITY)
        for used in (4, 2):  # by history, else plain Platt scaling
            fitted = np.zeros(4)
            fitted[:used] = _newton(rows[:, :used], y, np.array(IDENTITY[:used]))
            if min(fitted[0], fitted[0] + fitted[2]) >= MIN_SLOPE:
                theta = fitted
                break
        self.theta = tuple(float(v) for v in theta)
        q = 1.0 / (1.0 + np.exp(-np.clip(rows @ theta, -50.0, 50.0)))
        self.steps_x, self.steps_y = _pool_adjacent_violators(q, y)
        self.active = True

    def summary(self) -> dict[str, Any]:
        """Its state for the model API."""
        a, b, c, d = self.theta
        return {
            "active": self.active,
            "labels_learnt": self.learnt,
            "slope": a,
            "intercept": b,
            "young_slope": c,
            "young_intercept": d,
            "isotonic_points": len(self.steps_x),
            "churns_seen": self.churns,
            "exposure_days": self.exposure_days,
            "level_shift": self.level_shift,
            "step_labels_learnt": self.step_learnt,
            "step_slope": self.step_theta[0] if self.step_theta else None,
            "step_intercept": self.step_theta[1] if self.step_theta else None,
        }


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


def _shift_to_mean(z: Any, rate: float) -> float:
    """The shift of the log-odds ``z`` that makes their mean probability ``rate`` (bisection)."""
    low, high = -20.0, 20.0
    for _ in range(50):
        middle = (low + high) / 2
        mean = float(np.mean(1.0 / (1.0 + np.exp(-np.clip(z + middle, -50.0, 50.0)))))
        if mean < rate:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _newton(rows: Any, y: Any, identity: Any) -> Any:
    """Logistic regression of ``y`` on ``rows`` (no intercept of its own), pulled to ``identity``.

    Newton's method with step halving, starting from the identity each time, so
    one bad window does not carry over to the next.
    """

    def loss(theta: Any) -> float:
        margin = rows @ theta
        value = np.logaddexp(0.0, margin) - y * margin  # log(1 + e^m) - y m, stably
        return float(np.sum(value)) + 0.5 * RIDGE * float(np.sum((theta - identity) ** 2))

    theta = identity.copy()
    current = loss(theta)
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(rows @ theta, -50.0, 50.0)))
        gradient = rows.T @ (p - y) + RIDGE * (theta - identity)
        hessian = (rows * (p * (1.0 - p))[:, None]).T @ rows + RIDGE * np.eye(len(theta))
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while scale > 1e-4:  # halve the step until the loss does not rise
            trial = loss(theta - scale * step)
            if trial <= current:
                break
            scale /= 2
        else:
            break
        theta, current = theta - scale * step, trial
        if scale * float(np.abs(step).sum()) < 1e-7:
            break
    return theta


def _pool_adjacent_violators(q: Any, y: Any) -> tuple[list[float], list[float]]:
    """Isotonic regression of ``y`` on ``q``: points (mean q, mean y) of the pooled blocks.

    Sorted by ``q``; neighbouring blocks whose means fall are pooled until the
    means rise. Each block becomes one point at its mean ``q``.
    """
    order = np.argsort(q, kind="stable")
    sums_y: list[float] = []
    sums_q: list[float] = []
    counts: list[int] = []
    for qi, yi in zip(q[order].tolist(), y[order].tolist(), strict=True):
        sums_y.append(yi)
        sums_q.append(qi)
        counts.append(1)
        while len(counts) > 1 and sums_y[-2] * counts[-1] >= sums_y[-1] * counts[-2]:
            sy, sq, n = sums_y.pop(), sums_q.pop(), counts.pop()
            sums_y[-1] += sy
            sums_q[-1] += sq
            counts[-1] += n
    xs = [s / n for s, n in zip(sums_q, counts, strict=True)]
    ys = [s / n for s, n in zip(sums_y, counts, strict=True)]
    return xs, ys
