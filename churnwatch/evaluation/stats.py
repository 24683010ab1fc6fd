"""Scoring figures that do not depend on the replay: AUC, bootstrap intervals, calibration.

Point estimates use scikit-learn. The bootstrap needs one AUC per resample
(1,000 by default, and per scoring day for a history), which would take
minutes through ``roc_auc_score`` in a loop; ``weighted_auc`` computes many
at once from one sort, with each resample expressed as integer weights (how
many times each subscriber was drawn). ``tests/test_evaluate.py`` checks it
against ``roc_auc_score(sample_weight=...)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

RESAMPLES = 1000
"""Bootstrap resamples per interval."""
LEVEL = 0.95
"""Coverage of every bootstrap interval (percentile method)."""
CALIBRATION_BINS = 10
"""Equal-width probability bins of the reliability diagram and the ECE."""
_CHUNK = 100  # resamples held in memory at once: 100 x n float64 weights


def roc_auc(y: Sequence[bool], p: Sequence[float]) -> float | None:
    """ROC AUC (ties count half); None with one class only."""
    from sklearn.metrics import roc_auc_score

    if len(set(y)) < 2:
        return None
    return float(roc_auc_score(list(y), list(p)))


def log_loss(y: Sequence[bool], p: Sequence[float]) -> float | None:
    """Mean log loss, probabilities clipped to [1e-9, 1 - 1e-9]; None when empty."""
    if not y:
        return None
    total = 0.0
    for label, q in zip(y, p, strict=True):
        q = min(1 - 1e-9, max(1e-9, q))
        total -= math.log(q if label else 1 - q)
    return total / len(y)


def brier(y: Sequence[bool], p: Sequence[float]) -> float | None:
    """Mean squared difference between the probability and the outcome; None when empty."""
    if not y:
        return None
    from sklearn.metrics import brier_score_loss

    return float(brier_score_loss(np.asarray(y, dtype=int), np.asarray(p, dtype=float)))


def weighted_auc(y: BoolArray, p: FloatArray, weights: FloatArray) -> FloatArray:
    """ROC AUC of ``p`` against ``y`` under each row of ``weights`` (resamples x points).

    A point drawn ``k`` times in a resample has weight ``k``; ties in ``p``
    count half, as in ``roc_auc_score``. Returns one AUC per row, NaN for a
    row where one class has no weight.
    """
    order = np.argsort(p, kind="stable")
    ps = p[order]
    ys = y[order]
    ws = weights[:, order]
    # One group per distinct score: ties are compared as a block.
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    pos = np.add.reduceat(ws * ys, starts, axis=1)
    neg = np.add.reduceat(ws * ~ys, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    wins = (pos * (below + 0.5 * neg)).sum(axis=1)
    out = np.full(len(weights), np.nan)
    ok = pairs > 0
    out[ok] = wins[ok] / pairs[ok]
    return out


def resample_weights(rng: np.random.Generator, n: int, resamples: int) -> Iterator[FloatArray]:
    """Bootstrap resamples of ``n`` points as weights, ``_CHUNK`` rows at a time.

    Each row draws ``n`` points with replacement; its weights count the draws.
    """
    done = 0
    while done < resamples:
        rows = min(_CHUNK, resamples - done)
        draws = rng.integers(0, n, size=(rows, n))
        flat = (draws + n * np.arange(rows)[:, None]).ravel()
        yield np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)
        done += rows


def interval(values: FloatArray, level: float = LEVEL) -> list[float] | None:
    """The percentile interval of the finite ``values``; None when there are none."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return [float(lo), float(hi)]


def bootstrap_auc(
    y: Sequence[bool],
    p: Sequence[float],
    *,
    seed: int,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
) -> list[float] | None:
    """95 % (``level``) percentile interval of the ROC AUC, resampling the points.

    Seeded (``numpy.random.default_rng(seed)``); None with one class only.
    """
    if len(set(y)) < 2:
        return None
    ya = np.asarray(y, dtype=bool)
    pa = np.asarray(p, dtype=float)
    rng = np.random.default_rng(seed)
    aucs = np.concatenate(
        [weighted_auc(ya, pa, w) for w in resample_weights(rng, len(ya), resamples)]
    )
    return interval(aucs, level)


def reliability(
    y: Sequence[bool], p: Sequence[float], bins: int = CALIBRATION_BINS
) -> list[dict[str, Any]]:
    """The reliability diagram's bins: equal width on [0, 1], a score of 1 in the last.

    Each bin: ``lo``, ``hi``, ``count``, ``mean_predicted``, ``observed_rate``
    (the last two null for an empty bin).
    """
    pa = np.asarray(p, dtype=float)
    ya = np.asarray(y, dtype=float)
    index = np.minimum((pa * bins).astype(int), bins - 1)
    index = np.maximum(index, 0)
    out = []
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        out.append(
            {
                "lo": b / bins,
                "hi": (b + 1) / bins,
                "count": count,
                "mean_predicted": float(pa[inside].mean()) if count else None,
                "observed_rate": float(ya[inside].mean()) if count else None,
            }
        )
    return out


def expected_calibration_error(
    y: Sequence[bool], p: Sequence[float], bins: int = CALIBRATION_BINS
) -> float | None:
    """ECE: the count-weighted mean gap between mean score and churn rate over the bins.

    ``sum over bins b of (n_b / N) * |mean score in b - churn rate in b|``, with
    ``bins`` equal-width bins on [0, 1] (``reliability``). 0 for perfectly
    calibrated scores; scores that are all too high by ``d`` give about ``d``
    (in every bin the churn rate is the mean score less ``d``). None when
    there are no points.
    """
    total = len(y)
    if not total:
        return None
    gap = 0.0
    for b in reliability(y, p, bins):
        if b["count"]:
            gap += b["count"] / total * abs(b["mean_predicted"] - b["observed_rate"])
    return gap


def summary(
    y: Sequence[bool], p: Sequence[float], *, seed: int, resamples: int = RESAMPLES
) -> dict[str, Any]:
    """AUC with its bootstrap interval, log loss, Brier and ECE of one set of scores."""
    return {
        "roc_auc": roc_auc(y, p),
        "roc_auc_ci": bootstrap_auc(y, p, seed=seed, resamples=resamples),
        "log_loss": log_loss(y, p),
        "brier": brier(y, p),
        "expected_calibration_error": expected_calibration_error(y, p),
        "n": len(y),
        "positives": int(sum(y)),
    }
