"""Prometheus metrics shared by every service, and the ``/metrics`` endpoint.

Labels are bounded: service, route template, method, status class, topic,
partition, event type, result. Never a subscriber id.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator.metrics import Info

HTTP_REQUESTS = Counter(
    "churnwatch_http_requests_total",
    "HTTP requests by route template, method and status",
    ["service", "route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "churnwatch_http_request_duration_seconds",
    "HTTP request latency by route template",
    ["service", "route", "method"],
)
CONSUMER_BATCHES = Counter(
    "churnwatch_consumer_batches_total",
    "Batches handled by a consumer loop, by result (ok, failed)",
    ["service", "result"],
)
CONSUMER_RECORDS = Counter(
    "churnwatch_consumer_records_total", "Records consumed", ["service", "topic"]
)
CONSUMER_BATCH_SIZE = Histogram(
    "churnwatch_consumer_batch_size",
    "Records per handled batch",
    ["service"],
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 5000),
)
CONSUMER_BATCH_SECONDS = Histogram(
    "churnwatch_consumer_batch_duration_seconds",
    "Time to handle one batch: DB transaction, produce acks, offset commit",
    ["service"],
)
CONSUMER_LAG = Gauge(
    "churnwatch_consumer_lag",
    "End offset minus consumer position, per assigned partition",
    ["service", "topic", "partition"],
)
DLQ_MESSAGES = Counter(
    "churnwatch_dlq_messages_total",
    "Messages sent to the dead-letter topic, by source topic and reason class",
    ["service", "topic", "reason"],
)
HEADER_MISMATCHES = Counter(
    "churnwatch_consumer_header_mismatches_total",
    "Records whose event_type header disagreed with their payload (the payload was used); "
    "only churnwatch's own producers write the events topic, so any is a misconfiguration",
    ["service", "topic"],
)
KAFKA_TOPICS_OK = Gauge(
    "churnwatch_kafka_topics_ok",
    "1 if the last check found every topic the service needs with the expected partitions",
    ["service"],
)
KAFKA_TOPIC_CHECKS_FAILED = Counter(
    "churnwatch_kafka_topic_checks_failed_total",
    "Topic checks that failed, by kind (unreachable, missing, partitions)",
    ["service", "kind"],
)
KAFKA_TOPICS_RECREATED = Counter(
    "churnwatch_kafka_topics_recreated_total",
    "Topics found missing and re-created empty (KAFKA_RECREATE_LOST_TOPICS): data was lost",
    ["service"],
)
CONSUMER_WAITING_FOR_TOPICS = Gauge(
    "churnwatch_consumer_waiting_for_topics",
    "1 while the consumer loop waits for its topics (lost, or broker unreachable)",
    ["service"],
)
CONSUMER_REWOUND_PAST_END = Counter(
    "churnwatch_consumer_rewound_past_end_total",
    "Partitions read again from the beginning because the consumer's position was past "
    "their end (the topic was re-created under it)",
    ["service"],
)


UNMATCHED = "unmatched"
"""The ``route`` label of a request no route matched (never the raw path: unbounded)."""


def _record(service: str) -> Callable[[Info], None]:
    """The instrumentation that feeds our two HTTP metrics from the instrumentator's view."""

    def record(info: Info) -> None:
        # The instrumentator resolves the route template (through included routers
        # and mounts) and groups unmatched paths as "none" and statuses as "2xx".
        route = UNMATCHED if info.modified_handler == "none" else info.modified_handler
        HTTP_REQUESTS.labels(service, route, info.method, info.modified_status).inc()
        HTTP_LATENCY.labels(service, route, info.method).observe(info.modified_duration)

    return record


def install_metrics(app: FastAPI, service: str) -> None:
    """Add the request metrics middleware and the ``GET /metrics`` endpoint.

    The middleware is prometheus-fastapi-instrumentator's (a plain ASGI
    middleware: a streamed response is timed to its last byte), writing our own
    ``churnwatch_http_*`` metrics, whose names and labels the dashboards and
    alerts use, instead of its defaults.
    """
    Instrumentator(
        should_group_status_codes=True,
        should_group_untemplated=True,
        should_respect_env_var=False,
        excluded_handlers=[],
    ).add(_record(service)).instrument(app)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
