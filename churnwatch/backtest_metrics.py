"""The backtest's figures: per-subscriber AUC, calibration, the baselines, lead times, capacity.

Computed from a ``churnwatch.backtest.Result``; ``main`` is ``churnwatch backtest``
(replay, figures, report). The headline is per subscriber
(``churnwatch.evaluation.figures``); AUCs pooled over snapshots are kept as
secondary figures, named ``pooled_*``. ``docs/backtest.md`` says what each
figure is.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson

from churnwatch.backtest import (
    EARLY_DAYS,
    LEAD_WINDOW_DAYS,
    Example,
    Result,
    run_backtest,
)
from churnwatch.evaluation.figures import (
    feature_importance,
    learning_curve,
    per_subscriber,
    table_points,
    weekly,
)
from churnwatch.evaluation.stats import RESAMPLES, log_loss, roc_auc
from services.scoring.scorer import DAY
from shared.events import TaskKind

POOLED_NOTE = (
    "secondary: pooled over every labelled snapshot, several per subscriber; in an imported "
    "table every subscriber lives on the same dates, so the snapshot's date alone can predict "
    "its label. Not comparable with a model that gives one score per subscriber."
)
TABLE_NOTE = (
    "not meaningful for a table: every row is placed on the same synthetic dates and replayed "
    "one subscriber after another, so days, lead times and calls per day describe the replay, "
    "not an operator's calendar"
)
CALENDAR_FIGURES = (
    "precision_at_capacity",
    "lead_time_median_days",
    "churners_alerted",
    "share_alerted_7d",
    "churners_with_warning_signs",
    "share_alerted_7d_with_warning_signs",
    "tasks_per_manager_per_day",
)
"""Figures that need a real calendar: null (and listed as such) for a table."""

# --- metrics --------------------------------------------------------------------


def offline_baseline(examples: Sequence[Example], *, seed: int, folds: int = 5) -> list[float]:
    """Out-of-fold churn probabilities from an analyst's model on the same snapshots.

    scikit-learn's HistGradientBoostingClassifier (defaults, ``random_state=seed``)
    with ``folds``-fold cross-validation, stratified by label and grouped by
    subscriber: all of one subscriber's snapshots fall in the same fold. Plain
    k-fold over snapshots would put a subscriber's neighbouring days in both
    train and test, and the trees would recognise the subscriber (tenure,
    monthly value) instead of churn: measured AUC 0.999 on synthetic data, a
    leak, not a model. It still sees every label at once, in hindsight, which
    the online model never can.
    """
    import numpy as np
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.array([e.label for e in examples], dtype=int)
    names = sorted({k for e in examples for k in e.x})
    x = np.array([[e.x.get(k, 0.0) for k in names] for e in examples], dtype=float)
    oof = np.full(len(examples), float(y.mean()) if len(y) else 0.0)
    if len(set(y.tolist())) < 2 or min(int(y.sum()), int(len(y) - y.sum())) < folds:
        return [float(v) for v in oof]
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    groups = [e.subscriber_id for e in examples]
    split = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    # One OpenMP thread: on the shared 2-core machine HistGBM's threads spin against
    # each other (mlc_churn's 40,000 snapshots: 19 s with the default threads, 3.3 s
    # with one, the same probabilities).
    with threadpool_limits(limits=1, user_api="openmp"):
        for train, test in split.split(x, y, groups):
            model = HistGradientBoostingClassifier(random_state=seed)
            model.fit(x[train], y[train])
            oof[test] = model.predict_proba(x[test])[:, 1]
    return [float(v) for v in oof]


def metrics(
    result: Result,
    *,
    offline: Sequence[float],
    capacity: int | None = None,
    seed: int = 42,
    resamples: int = RESAMPLES,
) -> dict[str, Any]:
    """The report's figures (``docs/backtest.md`` says what each one is).

    ``offline``: the baseline's out-of-fold probabilities, one per example
    (``offline_baseline``). ``capacity``: k of the daily top-k; default the
    number of account managers x the rules file's ``default_daily_calls``.
    ``seed`` and ``resamples``: the bootstrap intervals'.
    """
    ex = result.examples
    table = result.order == "subscriber"
    after = [e for e in ex if e.order >= result.min_labels]
    y_all = [e.label for e in ex]
    oof = list(offline)
    oof_after = [oof[e.order] for e in after]
    online_auc = roc_auc([e.label for e in after], [e.predicted for e in after])
    offline_auc = roc_auc([e.label for e in after], oof_after)
    k = capacity if capacity is not None else max(1, len(result.managers)) * result.daily_calls
    head = per_subscriber(result, seed=seed, resamples=resamples)
    bins = head.pop("calibration")

    lead = lead_times(result)
    churners = sorted(result.churn_at)
    early = [s for s in churners if (lead.get(s) or -1.0) >= EARLY_DAYS]
    warned = [s for s in churners if result.warning_signs.get(s)]
    early_warned = [s for s in warned if (lead.get(s) or -1.0) >= EARLY_DAYS]
    reminders = reminder_rate(result)
    figures: dict[str, Any] = {
        "events": result.events,
        "duplicate_events": result.duplicates,
        "subscribers": result.subscribers,
        "churners": len(churners),
        "order": result.order,
        "batches": result.batches,
        "start": result.start.isoformat(),
        "end": result.end.isoformat(),
        "labels": len(ex),
        "positive_labels": sum(y_all),
        "labels_at_end_of_data": sum(1 for e in ex if e.source == "end"),
        "unlabelled_at_end": result.unresolved,
        "warmup_labels": result.min_labels,
        "per_subscriber_roc_auc": head["roc_auc"],
        "per_subscriber_roc_auc_ci": head["roc_auc_ci"],
        "per_subscriber_log_loss": head["log_loss"],
        "per_subscriber_brier": head["brier"],
        "per_subscriber_offline_roc_auc": _offline_per_subscriber(result, oof) if table else None,
        "expected_calibration_error": head["expected_calibration_error"],
        "per_subscriber": head,
        "calibration": {
            "points": "subscriber" if table else "subscriber-day",
            "bins": bins,
            "expected_calibration_error": head["expected_calibration_error"],
        },
        "feature_importance": feature_importance(result),
        "learning_curve": (
            {"by": "labels_seen", "points": learning_curve(result)}
            if table
            else {"by": "week_of_snapshot", "points": weekly(ex)}
        ),
        "pooled_note": POOLED_NOTE,
        "pooled_snapshot_roc_auc": online_auc,
        "pooled_snapshot_roc_auc_all": roc_auc(y_all, [e.predicted for e in ex]),
        "pooled_snapshot_log_loss": log_loss(
            [e.label for e in after], [e.predicted for e in after]
        ),
        "pooled_prior_roc_auc": roc_auc([e.label for e in after], [e.prior for e in after]),
        "pooled_offline_roc_auc": offline_auc,
        "pooled_offline_roc_auc_all": roc_auc(y_all, oof),
        "pooled_auc_ratio": (
            online_auc / offline_auc if online_auc is not None and offline_auc else None
        ),
        "capacity_k": k,
        "precision_at_capacity": precision_at_capacity(result, k),
        "lead_time_median_days": statistics.median(lead.values()) if lead else None,
        "churners_alerted": len(lead),
        "share_alerted_7d": len(early) / len(churners) if churners else None,
        "churners_with_warning_signs": len(warned) if result.warning_signs else None,
        "share_alerted_7d_with_warning_signs": (
            len(early_warned) / len(warned) if warned else None
        ),
        "vip_stop_notices": reminders[1],
        "reminder_before_suspension_rate": reminders[0],
        "tasks": len(result.tasks),
        "tasks_by_kind": _count(t.kind for t in result.tasks),
        "tasks_by_channel": _count(t.channel for t in result.tasks),
        "managers": len(result.managers),
        "tasks_per_manager_per_day": tasks_per_manager_day(result),
        "not_meaningful_for_a_table": list(CALENDAR_FIGURES) if table else [],
        "model": result.model_summary,
    }
    if table:
        for key in CALENDAR_FIGURES:
            figures[key] = None
        figures["calendar_note"] = TABLE_NOTE
    return figures


def _offline_per_subscriber(result: Result, oof: Sequence[float]) -> float | None:
    # The offline baseline's out-of-fold probability of each subscriber's latest
    # labelled snapshot (the online headline's subscribers), against churned.
    points, _ = table_points(result)
    latest: dict[str, Example] = {}
    for e in result.examples:
        prev = latest.get(e.subscriber_id)
        if prev is None or (e.at, e.order) > (prev.at, prev.order):
            latest[e.subscriber_id] = e
    chosen = [
        (sid in result.churn_at, oof[latest[sid].order]) for sid in points.ids if sid in latest
    ]
    return roc_auc([c for c, _ in chosen], [p for _, p in chosen])


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for item in items:
        out[item] += 1
    return dict(sorted(out.items()))


def lead_times(result: Result) -> dict[str, float]:
    """Days from each churner's first retention alert to the churn.

    Any retention alert (held out or not: the system did warn) at most
    ``LEAD_WINDOW_DAYS`` before the churn; churners with none are left out.
    """
    first: dict[str, datetime] = {}
    for t in result.tasks:
        churn = result.churn_at.get(t.subscriber_id)
        if t.kind != TaskKind.RETENTION.value or churn is None:
            continue
        if churn - timedelta(days=LEAD_WINDOW_DAYS) <= t.created_at <= churn:
            prev = first.get(t.subscriber_id)
            first[t.subscriber_id] = t.created_at if prev is None else min(prev, t.created_at)
    return {s: (result.churn_at[s] - at).total_seconds() / DAY for s, at in first.items()}


def reminder_rate(result: Result) -> tuple[float | None, int]:
    """Share of VIP stop-notices whose reminder task was sent before the suspension."""
    reminded = {
        t.cause_id
        for t in result.tasks
        if t.kind == TaskKind.PRE_SUSPENSION_REMINDER.value and not t.held_out
    }
    due = [(eid, at, susp) for _, eid, at, susp in result.stop_notices if susp > at]
    if not due:
        return None, 0
    return sum(1 for eid, _, _ in due if eid in reminded) / len(due), len(due)


def tasks_per_manager_day(result: Result) -> dict[str, float | int | None]:
    """Calls in account managers' own queues per manager per day (after capacity)."""
    counts: dict[tuple[str, date], int] = defaultdict(int)
    for t in result.tasks:
        if t.queue and t.queue.startswith("am:") and not t.held_out:
            counts[(t.queue[3:], t.created_at.astimezone(UTC).date())] += 1
    days = (result.end.date() - result.start.date()).days + 1
    managers = len(result.managers)
    total = sum(counts.values())
    return {
        "mean": total / (managers * days) if managers else None,
        "max": max(counts.values(), default=0),
        "overflow_calls": sum(
            1 for t in result.tasks if t.channel == "call" and t.queue == "general"
        ),
    }


def precision_at_capacity(result: Result, k: int) -> dict[str, Any]:
    """Churners among each day's k riskiest subscribers, averaged over the days.

    At the end of each day every subscriber not yet churned is ranked by their
    latest score so far (what the retention team would see); a hit churns
    within the horizon after that day. Days with fewer than k candidates are
    skipped.
    """
    precisions: list[float] = []
    series: list[list[str | float]] = []
    current: dict[str, float] = {}
    for day in sorted(result.day_scores):
        current.update(result.day_scores[day])
        day_end = datetime.combine(day, datetime.min.time(), UTC) + timedelta(days=1)
        candidates = [
            (score, sid)
            for sid, score in current.items()
            if sid not in result.churn_at or result.churn_at[sid] >= day_end
        ]
        if len(candidates) < k:
            continue
        top = sorted(candidates, reverse=True)[:k]
        hits = sum(
            1
            for _, sid in top
            if sid in result.churn_at
            and (result.churn_at[sid] - day_end).total_seconds() <= result.horizon_s
        )
        precisions.append(hits / k)
        series.append([day.isoformat(), hits / k])
    return {
        "k": k,
        "days": len(precisions),
        "mean": statistics.fmean(precisions) if precisions else None,
        "by_day": series,
    }


def to_json(data: dict[str, Any]) -> bytes:
    """``metrics.json`` text (sorted keys, indented, NaN-free)."""
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def replay_with_progress(console: Any, **kwargs: Any) -> Result:
    """``run_backtest(**kwargs)`` with a progress bar on ``console``.

    Raises what ``run_backtest`` raises (``BacktestError``, ``RulesError``).
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("events"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("replay", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return run_backtest(progress=progress, **kwargs)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, float) for v in value):
        return f"[{value[0]:.4f}, {value[1]:.4f}]"
    return str(value)


def print_headline(figures: dict[str, Any], console: Any) -> None:
    """Print the headline: per-subscriber figures first, pooled ones labelled secondary."""
    head = figures["per_subscriber"]
    if head["method"] == "last_score_before_label":
        how = (
            f"one score per subscriber (the last served before the label): "
            f"{head['subscribers']} subscribers, {head['churners']} churners, "
            f"{head['warmup_subscribers']} warm-up subscribers left out"
        )
    else:
        how = (
            f"ROC AUC within each scoring day, averaged over {head['days']} days "
            f"({head['subscribers']} subscribers)"
        )
    console.print(f"per-subscriber figures: {how}", highlight=False)
    for key in ("events", "subscribers", "churners", "labels"):
        console.print(f"{key}: {figures[key]}", highlight=False)
    for key in (
        "per_subscriber_roc_auc",
        "per_subscriber_roc_auc_ci",
        "per_subscriber_log_loss",
        "per_subscriber_brier",
        "expected_calibration_error",
    ):
        console.print(f"{key}: {_fmt(figures[key])}", highlight=False)
    if head["method"] == "within_day":
        for cut in head["cutoffs"]:
            console.print(
                f"  at {cut['date']}: roc_auc {_fmt(cut['roc_auc'])} "
                f"{_fmt(cut.get('roc_auc_ci'))} ({cut['subscribers']} subscribers)",
                highlight=False,
            )
    console.print(f"pooled figures ({POOLED_NOTE})", highlight=False)
    for key in ("pooled_snapshot_roc_auc", "pooled_offline_roc_auc", "pooled_auc_ratio"):
        console.print(f"  {key}: {_fmt(figures[key])}", highlight=False)
    if figures["not_meaningful_for_a_table"]:
        console.print(
            f"lead times, precision per day, calls per manager per day: {TABLE_NOTE}",
            highlight=False,
        )
    else:
        for key in (
            "lead_time_median_days",
            "share_alerted_7d",
            "share_alerted_7d_with_warning_signs",
        ):
            console.print(f"{key}: {_fmt(figures[key])}", highlight=False)
        console.print(
            f"precision_at_capacity: {_fmt(figures['precision_at_capacity']['mean'])}",
            highlight=False,
        )
        console.print(
            f"tasks_per_manager_per_day: {_fmt(figures['tasks_per_manager_per_day']['mean'])}",
            highlight=False,
        )
    console.print(
        f"reminder_before_suspension_rate: {_fmt(figures['reminder_before_suspension_rate'])}",
        highlight=False,
    )
