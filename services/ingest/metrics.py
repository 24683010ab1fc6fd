"""Ingest metrics."""

from prometheus_client import Counter, Histogram

EVENTS = Counter(
    "churnwatch_ingest_events_total",
    "Events received, by event type and result (accepted, rejected, unavailable)",
    ["event_type", "result"],
)
BATCH_SIZE = Histogram(
    "churnwatch_ingest_batch_events",
    "Events per request",
    buckets=(1, 10, 100, 500, 1000, 5000, 10000),
)
PRODUCE_SECONDS = Histogram(
    "churnwatch_ingest_produce_duration_seconds",
    "Time from first send to the broker's last acknowledgement, per request",
)
