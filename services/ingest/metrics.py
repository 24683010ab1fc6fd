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
REFUSED = Counter(
    "churnwatch_ingest_refused_requests_total",
    "Requests answered 503 (nothing accepted), by reason: unreachable, missing, partitions "
    "(topic checks, before producing or after the acks), produce (the broker did not "
    "acknowledge), recreated (the topic was lost and re-created while producing), settling "
    "(a topic check failed less than INGEST_TOPIC_SETTLE_S ago), offsets_regressed (acked "
    "offsets went back: the broker's log was lost)",
    ["reason"],
)
LANDING_RELAYED = Counter(
    "churnwatch_ingest_landing_relayed_total",
    "Valid events read from the landing topic and written to the events topic (a batch "
    "retried after a failure counts again). Consumed records: churnwatch_consumer_records_total"
    '{service="ingest"}; dead letters by reason: churnwatch_dlq_messages_total{service='
    '"ingest"}; lag: churnwatch_consumer_lag{service="ingest"}',
)
