"""Scoring metrics."""

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "churnwatch_scoring_events_total",
    "Events consumed by scoring, by result (applied, duplicate)",
    ["result"],
)
SCORES = Histogram(
    "churnwatch_scoring_score",
    "Distribution of published risk scores",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
LABELS = Counter("churnwatch_scoring_labels_total", "Labelled examples learned", ["label"])
MODEL_TRAINED = Gauge(
    "churnwatch_scoring_model_trained", "1 when the online model (not the prior) scores"
)
EVENT_TO_SCORE_SECONDS = Histogram(
    "churnwatch_scoring_event_to_score_seconds",
    "From the event's occurred_at to its score being stored",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
)
