"""Scoring metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from services.scoring.model import ChurnModel

EVENTS = Counter(
    "churnwatch_scoring_events_total",
    "Events consumed by scoring, by result (applied, duplicate)",
    ["result"],
)
LATE_EVENTS = Counter(
    "churnwatch_scoring_late_events_total",
    "Events older than the subscriber's newest event minus the allowed lateness",
)
SCORES = Histogram(
    "churnwatch_scoring_score",
    "Distribution of risk scores (every re-score, published or not)",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
LABELS = Counter("churnwatch_scoring_labels_total", "Labelled examples learned", ["label"])
EVENT_TO_SCORE_SECONDS = Histogram(
    "churnwatch_scoring_event_to_score_seconds",
    "From the event's occurred_at to its score being stored",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
)
STATE_CACHE = Counter(
    "churnwatch_scoring_state_cache_total",
    "Feature states found in this replica's cache (hit), read from PostgreSQL (miss), or new",
    ["result"],
)
PUBLISHED = Counter(
    "churnwatch_scoring_scores_total",
    "Re-scores published to the scores topic, or skipped as unchanged",
    ["result"],
)
# Bound once: labels() on the hot path costs more than the work it counts.
LABELS_CHURN, LABELS_NO_CHURN = LABELS.labels("churn"), LABELS.labels("no_churn")
SCORES_PUBLISHED, SCORES_UNCHANGED = PUBLISHED.labels("published"), PUBLISHED.labels("unchanged")
CHECKPOINTS = Counter("churnwatch_scoring_checkpoints_total", "Model checkpoints stored")
OUTCOMES = Counter(
    "churnwatch_scoring_outcomes_total",
    "Task outcomes read from the outcomes topic, by outcome (retained, offer_accepted, "
    "not_interested, unreachable, callback, reached, complaint_raised, do_not_contact, "
    "won_back, none, other) and result "
    "(censored: an intervention; recorded; duplicate)",
    ["outcome", "result"],
)
SNAPSHOTS_CENSORED = Counter(
    "churnwatch_scoring_snapshots_censored_total",
    "Pending label snapshots discarded unlabelled because an intervention (a retention "
    "call that kept the subscriber) came after them",
)
MODEL_EXAMPLES = Gauge("churnwatch_scoring_model_examples", "Labelled examples the model learned")
MODEL_WEIGHT = Gauge(
    "churnwatch_scoring_model_weight", "The model's share of the score (the rest is the prior)"
)
MODEL_AUC = Gauge("churnwatch_scoring_model_roc_auc", "Prequential rolling ROC AUC")
MODEL_LOGLOSS = Gauge("churnwatch_scoring_model_log_loss", "Prequential rolling log loss")
MODEL_PRECISION_TOP = Gauge(
    "churnwatch_scoring_model_precision_at_top",
    "Share of churners among the top riskiest recent predictions",
)
MODEL_DRIFT = Gauge(
    "churnwatch_scoring_model_drift", "1 when ADWIN flagged a change in the error stream"
)


def observe_model(model: ChurnModel) -> None:
    """Export the model's state and prequential quality."""
    MODEL_EXAMPLES.set(model.labels_seen)
    MODEL_WEIGHT.set(model.weight)
    if model.quality is None:
        return
    summary = model.quality.summary()
    for gauge, key in (
        (MODEL_AUC, "roc_auc"),
        (MODEL_LOGLOSS, "log_loss"),
        (MODEL_PRECISION_TOP, "precision_at_top"),
    ):
        if summary[key] is not None:
            gauge.set(summary[key])
    MODEL_DRIFT.set(1 if summary["drift_detected"] else 0)
