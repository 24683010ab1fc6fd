"""Per-subscriber figures of a replay: the headline AUC, calibration, importance, learning curve.

An AUC pooled over every labelled snapshot is not what an analyst compares
with a model trained on their table: in an imported table every subscriber
lives on the same two months, and the snapshot's date alone predicts its
label (AUC 0.57 on mlc_churn, 0.61 on ibm_telco). So the headline gives one
score per subscriber and moment:

- a **table** (``order == "subscriber"``): each subscriber's last served
  score before its label (``Result.final_scores``), label = churned;
- a **history** (``order == "time"``): at the end of each scoring day, every
  subscriber not yet churned with their latest score so far, label = churns
  within the horizon after that day; the AUC within each day, averaged.

``docs/backtest.md`` defines every figure.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np

from churnwatch.backtest import Example, Result
from churnwatch.evaluation.stats import (
    LEVEL,
    RESAMPLES,
    brier,
    expected_calibration_error,
    interval,
    log_loss,
    reliability,
    resample_weights,
    roc_auc,
    summary,
    weighted_auc,
)

CUTOFF_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
"""Default cut-off dates of a history: these fractions of the way through its scoring days."""
LEARNING_BUCKETS = 10
"""Subscribers per learning-curve point: the table's subscribers in this many equal groups."""


@dataclass(frozen=True, slots=True)
class Points:
    """Scores with their labels: one per subscriber (table) or per subscriber and day."""

    ids: list[str]
    y: list[bool]
    p: list[float]


def labels_before(result: Result) -> dict[str, int]:
    """For each subscriber with a labelled snapshot, the labels the model had learnt first.

    In subscriber order a subscriber's snapshots are labelled together after
    their last score, so the smallest ``order`` among them is the number of
    labels learnt before that subscriber was scored.
    """
    out: dict[str, int] = {}
    for e in result.examples:
        prev = out.get(e.subscriber_id)
        out[e.subscriber_id] = e.order if prev is None else min(prev, e.order)
    return out


def table_points(result: Result) -> tuple[Points, list[str]]:
    """Each subscriber's last served score and whether they churned; and the warm-up ones.

    A subscriber scored before the model had learnt ``min_labels`` labels is
    warm-up, left out of the points and returned apart. A subscriber with no
    labelled snapshot (so no known position in the replay) is kept.
    """
    before = labels_before(result)
    ids, y, p, warmup = [], [], [], []
    for sid in sorted(result.final_scores):
        if before.get(sid, result.min_labels) < result.min_labels:
            warmup.append(sid)
            continue
        ids.append(sid)
        y.append(sid in result.churn_at)
        p.append(result.final_scores[sid])
    return Points(ids, y, p), warmup


def day_end(day: date) -> datetime:
    """The end of a UTC calendar day (the next midnight)."""
    return datetime.combine(day, datetime.min.time(), UTC) + timedelta(days=1)


def day_points(result: Result) -> dict[date, Points]:
    """A history's scoring days whose labels are all known, with every alive subscriber.

    At the end of each day, every subscriber scored so far and not churned
    before the day's end, with their latest score; label: churns at most the
    horizon after the day's end. Only days at least a horizon before the end
    of the data count: later, a non-churner's label is not known yet.
    """
    current: dict[str, float] = {}
    last = result.end.timestamp() - result.horizon_s
    out: dict[date, Points] = {}
    for day in sorted(result.day_scores):
        current.update(result.day_scores[day])
        end = day_end(day)
        if end.timestamp() > last:
            continue
        ids, y, p = [], [], []
        for sid in sorted(current):
            churn = result.churn_at.get(sid)
            if churn is not None and churn < end:
                continue
            ids.append(sid)
            y.append(churn is not None and (churn - end).total_seconds() <= result.horizon_s)
            p.append(current[sid])
        out[day] = Points(ids, y, p)
    return out


def headline_points(result: Result) -> Points:
    """The points the headline judges: per subscriber (table) or per subscriber-day."""
    if result.order == "subscriber":
        return table_points(result)[0]
    ids, y, p = [], [], []
    for points in day_points(result).values():
        ids += points.ids
        y += points.y
        p += points.p
    return Points(ids, y, p)


def per_subscriber_table(
    result: Result, *, seed: int, resamples: int = RESAMPLES
) -> dict[str, Any]:
    """The table headline: last served score per subscriber, bootstrap over subscribers."""
    points, warmup = table_points(result)
    figures = summary(points.y, points.p, seed=seed, resamples=resamples)
    before = labels_before(result)
    return {
        "method": "last_score_before_label",
        **figures,
        "calibration": reliability(points.y, points.p),
        "subscribers": len(points.ids),
        "churners": sum(points.y),
        "warmup_subscribers": len(warmup),
        "subscribers_without_labels": sum(1 for s in points.ids if s not in before),
        "bootstrap": _bootstrap_note(seed, resamples, "subscriber"),
    }


def per_subscriber_time(
    result: Result,
    *,
    seed: int,
    resamples: int = RESAMPLES,
    cutoffs: Sequence[date] | None = None,
) -> dict[str, Any]:
    """The history headline: AUC within each scoring day, averaged, and at cut-off dates.

    The interval resamples subscribers (one draw shared by every day, so a
    resample is another population followed over the same days), not days:
    consecutive days share their subscribers and most of their scores, so
    treating days as independent would understate the uncertainty.
    """
    days = day_points(result)
    aucs = {d: roc_auc(pt.y, pt.p) for d, pt in days.items()}
    usable = [d for d in sorted(days) if aucs[d] is not None]
    pooled = headline_points(result)
    universe = sorted({s for d in usable for s in days[d].ids})
    column = {s: i for i, s in enumerate(universe)}
    arrays = [
        (
            np.asarray(days[d].y, dtype=bool),
            np.asarray(days[d].p, dtype=float),
            np.asarray([column[s] for s in days[d].ids], dtype=int),
        )
        for d in usable
    ]
    means: list[float] = []
    rng = np.random.default_rng(seed)
    if usable:
        for weights in resample_weights(rng, len(universe), resamples):
            per_day = np.vstack([weighted_auc(y, p, weights[:, cols]) for y, p, cols in arrays])
            # A day left with one class in a resample has no AUC (NaN) and is skipped
            # in that resample's mean; a resample with no day at all gives NaN.
            known = np.isfinite(per_day)
            counts = known.sum(axis=0)
            totals = np.where(known, per_day, 0.0).sum(axis=0)
            means += [float(t / n) if n else math.nan for t, n in zip(totals, counts, strict=True)]
    chosen = list(cutoffs) if cutoffs is not None else _default_cutoffs(usable)
    at_cutoffs = []
    for i, day in enumerate(chosen):
        pt = days.get(day)
        if pt is None:
            at_cutoffs.append({"date": day.isoformat(), "roc_auc": None, "subscribers": 0})
            continue
        at_cutoffs.append(
            {
                "date": day.isoformat(),
                **summary(pt.y, pt.p, seed=seed + 1 + i, resamples=resamples),
                "subscribers": len(pt.ids),
                "churners": sum(pt.y),
            }
        )
    mean_auc = float(np.mean([aucs[d] for d in usable])) if usable else None
    return {
        "method": "within_day",
        "roc_auc": mean_auc,
        "roc_auc_ci": interval(np.asarray(means)) if means else None,
        "log_loss": log_loss(pooled.y, pooled.p),
        "brier": brier(pooled.y, pooled.p),
        "expected_calibration_error": expected_calibration_error(pooled.y, pooled.p),
        "calibration": reliability(pooled.y, pooled.p),
        "n": len(pooled.y),
        "positives": sum(pooled.y),
        "days": len(usable),
        "days_with_one_class": len(days) - len(usable),
        "subscribers": len(universe),
        "by_day": [[d.isoformat(), aucs[d], len(days[d].ids), sum(days[d].y)] for d in usable],
        "cutoffs": at_cutoffs,
        "bootstrap": _bootstrap_note(seed, resamples, "subscriber"),
    }


def _default_cutoffs(days: Sequence[date]) -> list[date]:
    if not days:
        return []
    picked = [days[min(len(days) - 1, max(0, round(f * len(days)) - 1))] for f in CUTOFF_FRACTIONS]
    return sorted(set(picked))


def _bootstrap_note(seed: int, resamples: int, unit: str) -> dict[str, Any]:
    return {"resamples": resamples, "level": LEVEL, "seed": seed, "unit": unit}


def per_subscriber(result: Result, *, seed: int, resamples: int = RESAMPLES) -> dict[str, Any]:
    """The headline for the replay's order (``per_subscriber_table`` or ``_time``)."""
    if result.order == "subscriber":
        return per_subscriber_table(result, seed=seed, resamples=resamples)
    return per_subscriber_time(result, seed=seed, resamples=resamples)


def learning_curve(result: Result, buckets: int = LEARNING_BUCKETS) -> list[dict[str, Any]]:
    """A table's per-subscriber AUC by labels seen: the learning curve without a calendar.

    Subscribers in replay order (labels learnt before they were scored), cut
    into ``buckets`` groups of equal size, warm-up included; each group's AUC
    and log loss of the last served scores, and the range of labels seen.
    """
    before = labels_before(result)
    ordered = sorted((n, sid) for sid, n in before.items() if sid in result.final_scores)
    out = []
    for group in np.array_split(np.arange(len(ordered)), buckets):
        if not len(group):
            continue
        chosen = [ordered[i] for i in group]
        y = [sid in result.churn_at for _, sid in chosen]
        p = [result.final_scores[sid] for _, sid in chosen]
        out.append(
            {
                "labels_seen_from": chosen[0][0],
                "labels_seen_to": chosen[-1][0],
                "subscribers": len(chosen),
                "churners": sum(y),
                "roc_auc": roc_auc(y, p),
                "log_loss": log_loss(y, p),
            }
        )
    return out


def weekly(examples: Sequence[Example]) -> list[dict[str, Any]]:
    """A history's pooled prequential AUC and log loss by week of snapshot (secondary)."""
    by_week: dict[int, list[Example]] = defaultdict(list)
    for e in examples:
        by_week[int(e.at // (7 * 86_400))].append(e)
    out = []
    for w in sorted(by_week):
        group = by_week[w]
        y, p = [e.label for e in group], [e.predicted for e in group]
        auc = roc_auc(y, p)
        if auc is None:
            continue
        start = datetime.fromtimestamp(w * 7 * 86_400, UTC)
        out.append({"week": start.date().isoformat(), "roc_auc": auc, "log_loss": log_loss(y, p)})
    return out


def feature_importance(result: Result) -> dict[str, Any]:
    """Mean |contribution| of each feature to the served log-odds, at each subscriber's last point.

    The points: every subscriber's latest labelled snapshot (the features
    behind their last scores). The model: the one serving at the end of the
    replay (``Result.model``), prior and learned model blended by its weight,
    so this is what drives the scores served now. ``mean_contribution`` keeps
    the sign (positive: towards churn).
    """
    model = result.model
    latest: dict[str, Example] = {}
    for e in result.examples:
        prev = latest.get(e.subscriber_id)
        if prev is None or (e.at, e.order) > (prev.at, prev.order):
            latest[e.subscriber_id] = e
    if model is None or not latest:
        return {"points": 0, "model_weight": None, "features": []}
    sums: dict[str, float] = defaultdict(float)
    signed: dict[str, float] = defaultdict(float)
    for sid in sorted(latest):
        for name, c in model.contributions(latest[sid].x).items():
            sums[name] += abs(c)
            signed[name] += c
    n = len(latest)
    rows: list[dict[str, Any]] = [
        {
            "feature": name,
            "mean_abs_contribution": sums[name] / n,
            "mean_contribution": signed[name] / n,
        }
        for name in sorted(sums, key=lambda f: (-sums[f], f))
    ]
    return {"points": n, "model_weight": model.weight, "features": rows}
