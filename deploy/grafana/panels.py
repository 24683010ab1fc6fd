"""The dashboards' building blocks and the pipeline dashboard (deploy/grafana/generate.py).

A panel names its PromQL as if there were one churnwatch deployment; generate.py adds
the job, namespace and instance variables to every selector when it renders the JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Panel:
    """One time-series (or stat) panel: a title, its queries and their legends."""

    title: str
    queries: tuple[tuple[str, str], ...]  # (PromQL, legend format)
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""


@dataclass(frozen=True)
class Dashboard:
    """A dashboard: rows of panels, laid out two (or four stats) per row."""

    uid: str
    title: str
    description: str
    rows: tuple[tuple[str, tuple[Panel, ...]], ...]
    tags: tuple[str, ...] = field(default=("churnwatch",))


def q(expr: str, legend: str = "") -> tuple[str, str]:
    """A query and its legend (Grafana ``legendFormat``)."""
    return (expr, legend)


def p95(metric: str, by: str = "") -> str:
    """The 95th percentile of a histogram over 5 minutes, optionally per label."""
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile(0.95, sum by ({labels}) (rate({metric}_bucket[5m])))"


def rate(metric: str, by: str, selector: str = "", window: str = "5m") -> str:
    """Per-second rate of a counter summed by some labels."""
    return f"sum by ({by}) (rate({metric}{selector}[{window}]))"


PIPELINE = Dashboard(
    uid="churnwatch-pipeline",
    title="churnwatch / pipeline",
    description="Throughput, consumer lag, latency and errors of the four services.",
    rows=(
        (
            "Services",
            (
                Panel("Up", (q("up", "{{component}} {{instance}}"),), kind="stat"),
                Panel(
                    "HTTP requests /s",
                    (q(rate("churnwatch_http_requests_total", "service"), "{{service}}"),),
                    unit="reqps",
                ),
                Panel(
                    "HTTP 5xx /s",
                    (
                        q(
                            rate(
                                "churnwatch_http_requests_total",
                                "service",
                                '{status="5xx", route!~"/healthz|/readyz"}',
                            ),
                            "{{service}}",
                        ),
                    ),
                    unit="reqps",
                    description="Probes excluded (/readyz answers 503 while a dependency is "
                    "down). No data means no 5xx since the services started.",
                ),
                Panel(
                    "HTTP latency p95",
                    (q(p95("churnwatch_http_request_duration_seconds", "service"), "{{service}}"),),
                    unit="s",
                ),
            ),
        ),
        (
            "Ingest",
            (
                Panel(
                    "Events accepted /s by type",
                    (
                        q(
                            rate(
                                "churnwatch_ingest_events_total",
                                "event_type",
                                '{result="accepted"}',
                            ),
                            "{{event_type}}",
                        ),
                    ),
                ),
                Panel(
                    "Events /s by result",
                    (q(rate("churnwatch_ingest_events_total", "result"), "{{result}}"),),
                ),
                Panel(
                    "Events per request p95",
                    (q(p95("churnwatch_ingest_batch_events"), "events"),),
                ),
                Panel(
                    "Produce latency p95",
                    (q(p95("churnwatch_ingest_produce_duration_seconds"), "produce"),),
                    unit="s",
                ),
            ),
        ),
        (
            "Kafka entry point (landing topic, docs/kafka-producers.md)",
            (
                Panel(
                    "Landing records /s: consumed, relayed, dead-lettered",
                    (
                        q(
                            'sum(rate(churnwatch_consumer_records_total{service="ingest"}[5m]))',
                            "consumed",
                        ),
                        q("sum(rate(churnwatch_ingest_landing_relayed_total[5m]))", "relayed"),
                        q(
                            'sum(rate(churnwatch_dlq_messages_total{service="ingest"}[5m]))',
                            "dead-lettered",
                        ),
                    ),
                    description="Records read from the landing topic; valid events written to "
                    "the events topic; records refused (by reason on the next panel).",
                ),
                Panel(
                    "Landing dead letters (1h) by reason",
                    (
                        q(
                            "sum by (reason) "
                            '(increase(churnwatch_dlq_messages_total{service="ingest"}[1h]))',
                            "{{reason}}",
                        ),
                    ),
                    description="No data means no landing record was refused since the start.",
                ),
                Panel(
                    "Landing lag",
                    (
                        q(
                            'sum by (partition) (churnwatch_consumer_lag{service="ingest"})',
                            "partition {{partition}}",
                        ),
                    ),
                ),
            ),
        ),
        (
            "Consumers",
            (
                Panel(
                    "Records consumed /s",
                    (
                        q(
                            rate("churnwatch_consumer_records_total", "service, topic"),
                            "{{service}} {{topic}}",
                        ),
                    ),
                ),
                Panel(
                    "Consumer lag per partition",
                    (q("churnwatch_consumer_lag", "{{service}} {{topic}}/{{partition}}"),),
                ),
                Panel(
                    "Batch size p95",
                    (q(p95("churnwatch_consumer_batch_size", "service"), "{{service}}"),),
                ),
                Panel(
                    "Batch duration p95",
                    (
                        q(
                            p95("churnwatch_consumer_batch_duration_seconds", "service"),
                            "{{service}}",
                        ),
                    ),
                    unit="s",
                ),
                Panel(
                    "Failed batches /s",
                    (
                        q(
                            rate(
                                "churnwatch_consumer_batches_total", "service", '{result="failed"}'
                            ),
                            "{{service}}",
                        ),
                    ),
                    description="No data means no batch has failed since the services started.",
                ),
                Panel(
                    "Dead-lettered records (1h)",
                    (
                        q(
                            "sum by (service, topic, reason) "
                            "(increase(churnwatch_dlq_messages_total[1h]))",
                            "{{service}} {{topic}} {{reason}}",
                        ),
                    ),
                    description="No data means nothing was dead-lettered since the start.",
                ),
            ),
        ),
        (
            "Latency through the pipeline",
            (
                Panel(
                    "Event -> scored p95",
                    (q(p95("churnwatch_scoring_event_to_score_seconds"), "event -> score"),),
                    unit="s",
                    description="From the event's occurred_at: large for historical imports.",
                ),
                Panel(
                    "Scored -> alerting decision p95",
                    (q(p95("churnwatch_alerting_score_to_decision_seconds"), "score -> task"),),
                    unit="s",
                ),
                Panel(
                    "Task -> SMS sent p95",
                    (q(p95("churnwatch_outreach_task_to_sent_seconds"), "task -> sent"),),
                    unit="s",
                ),
                Panel(
                    "Outbox pending",
                    (q("churnwatch_outreach_outbox_pending", "pending"),),
                ),
            ),
        ),
        (
            "Kafka topics (the services' topic checks, docs/operations.md)",
            (
                Panel(
                    "Topics usable",
                    (q("min by (service) (churnwatch_kafka_topics_ok)", "{{service}}"),),
                    kind="stat",
                    description="1: every topic the service needs exists with "
                    "KAFKA_TOPIC_PARTITIONS partitions. Rule ChurnwatchKafkaTopicsUnusable.",
                ),
                Panel(
                    "Consumers waiting for topics",
                    (
                        q(
                            "max by (service) (churnwatch_consumer_waiting_for_topics)",
                            "{{service}}",
                        ),
                    ),
                    kind="stat",
                    description="1 while a consumer loop waits for lost topics or the broker.",
                ),
                Panel(
                    "Topic checks failed (1h) by kind",
                    (
                        q(
                            "sum by (service, kind) "
                            "(increase(churnwatch_kafka_topic_checks_failed_total[1h]))",
                            "{{service}} {{kind}}",
                        ),
                    ),
                    description="No data means no topic check failed since the start.",
                ),
                Panel(
                    "Topics re-created empty (1d)",
                    (
                        q(
                            "sum by (service) "
                            "(increase(churnwatch_kafka_topics_recreated_total[1d]))",
                            "{{service}}",
                        ),
                    ),
                    description="What a re-created topic held is lost (rule "
                    "ChurnwatchKafkaTopicsRecreated). No data means none since the start.",
                ),
                Panel(
                    "Ingest refusals /s by reason",
                    (q(rate("churnwatch_ingest_refused_requests_total", "reason"), "{{reason}}"),),
                    unit="reqps",
                    description="Requests answered 503 with nothing accepted (rule "
                    "ChurnwatchIngestRefusingRequests). No data means none since the start.",
                ),
                Panel(
                    "Consumer anomalies (1d)",
                    (
                        q(
                            "sum by (service, topic) "
                            "(increase(churnwatch_consumer_header_mismatches_total[1d]))",
                            "header mismatch {{service}} {{topic}}",
                        ),
                        q(
                            "sum by (service) "
                            "(increase(churnwatch_consumer_rewound_past_end_total[1d]))",
                            "rewound past the end {{service}}",
                        ),
                    ),
                    description="An event_type header disagreeing with its payload (a foreign "
                    "producer on the events topic); partitions read again from the start "
                    "(a topic re-created under the consumer). No data means none.",
                ),
            ),
        ),
        (
            "Background loops",
            (
                Panel(
                    "Alerting messages /s by result",
                    (q(rate("churnwatch_alerting_messages_total", "result"), "{{result}}"),),
                ),
                Panel(
                    "Dwell sweep failures (1h)",
                    (
                        q(
                            "sum(increase(churnwatch_alerting_sweep_errors_total[1h]))",
                            "failed sweeps",
                        ),
                    ),
                    description="Rule ChurnwatchAlertingSweepFailing.",
                ),
                Panel(
                    "Outcomes published /s",
                    (
                        q(
                            "sum(rate(churnwatch_outreach_outcomes_published_total[5m]))",
                            "published",
                        ),
                    ),
                    description="Task outcomes the outbox relay published to the outcomes topic.",
                ),
                Panel(
                    "Outbox relay failures (1h)",
                    (
                        q(
                            "sum(increase(churnwatch_outreach_relay_failures_total[1h]))",
                            "failed passes",
                        ),
                    ),
                    description="Rule ChurnwatchOutboxRelayFailing.",
                ),
                Panel(
                    "Retention purge: rows deleted (1d)",
                    (
                        q(
                            "sum by (table) (increase(churnwatch_retention_purged_rows_total[1d]))",
                            "{{table}}",
                        ),
                    ),
                    description="RETENTION_DAYS. No data until the first purge deletes a row.",
                ),
            ),
        ),
    ),
)
