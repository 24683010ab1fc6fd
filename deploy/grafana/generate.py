"""Generate the Grafana dashboards in deploy/grafana/dashboards/ from one place.

Run ``python deploy/grafana/generate.py`` after editing a panel here; the JSON
files are committed so Grafana's file provisioning can load them as they are.
tests/test_ops_metrics.py checks the files are what this script writes, that
every metric a query names is exported by a running service, and
deploy/prometheus/check_dashboards.py runs every query against a real Prometheus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
# The provisioned data source's uid (provisioning/datasources/prometheus.yml).
DATASOURCE = {"type": "prometheus", "uid": "churnwatch-prometheus"}


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
                Panel("Up", (q('up{job="churnwatch"}', "{{component}}"),), kind="stat"),
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
    ),
)

MODEL = Dashboard(
    uid="churnwatch-model",
    title="churnwatch / model",
    description="The online churn model: prequential quality, drift, what it learned, scores.",
    rows=(
        (
            "Quality",
            (
                Panel("ROC AUC (rolling)", (q("churnwatch_scoring_model_roc_auc", "AUC"),)),
                Panel("Log loss (rolling)", (q("churnwatch_scoring_model_log_loss", "log loss"),)),
                Panel(
                    "Precision at top",
                    (q("churnwatch_scoring_model_precision_at_top", "precision"),),
                    unit="percentunit",
                ),
                Panel("Drift flag", (q("churnwatch_scoring_model_drift", "drift"),), kind="stat"),
            ),
        ),
        (
            "Learning",
            (
                Panel("Examples learned", (q("churnwatch_scoring_model_examples", "examples"),)),
                Panel(
                    "Model weight (vs prior)",
                    (q("churnwatch_scoring_model_weight", "weight"),),
                    unit="percentunit",
                ),
                Panel(
                    "Labels learned /s",
                    (q(rate("churnwatch_scoring_labels_total", "label"), "{{label}}"),),
                ),
                Panel(
                    "Checkpoints (1h)",
                    (q("sum(increase(churnwatch_scoring_checkpoints_total[1h]))", "checkpoints"),),
                ),
            ),
        ),
        (
            "Scores",
            (
                Panel(
                    "Score distribution (5m)",
                    (q("sum by (le) (increase(churnwatch_scoring_score_bucket[5m]))", "{{le}}"),),
                    kind="bargauge",
                ),
                Panel(
                    "Re-scores /s",
                    (q(rate("churnwatch_scoring_scores_total", "result"), "{{result}}"),),
                ),
                Panel(
                    "Events /s",
                    (
                        q(rate("churnwatch_scoring_events_total", "result"), "{{result}}"),
                        q("sum(rate(churnwatch_scoring_late_events_total[5m]))", "late"),
                    ),
                ),
                Panel(
                    "State cache hit ratio",
                    (
                        q(
                            'sum(rate(churnwatch_scoring_state_cache_total{result="hit"}[5m]))'
                            " / sum(rate(churnwatch_scoring_state_cache_total[5m]))",
                            "hit ratio",
                        ),
                    ),
                    unit="percentunit",
                ),
            ),
        ),
    ),
)

OUTREACH = Dashboard(
    uid="churnwatch-outreach",
    title="churnwatch / outreach and KPIs",
    description="For the retention team: alerts, SMS, the call queue and the business KPIs.",
    rows=(
        (
            "KPIs by tier",
            (
                Panel(
                    "Reminder before suspension (this month)",
                    (
                        q(
                            "churnwatch_outreach_kpi_reminder_before_suspension_ratio",
                            "{{tier}}",
                        ),
                    ),
                    unit="percentunit",
                    description="No series while no VIP was suspended this month.",
                ),
                Panel(
                    "Win-back rate (this month)",
                    (q("churnwatch_outreach_kpi_win_back_ratio", "{{tier}}"),),
                    unit="percentunit",
                    description="No series while no win-back offer reached anyone this month.",
                ),
                Panel(
                    "Churned share by tier",
                    (
                        q(
                            'sum by (tier) (churnwatch_alerting_subscribers{state="churned"})'
                            " / sum by (tier) (churnwatch_alerting_subscribers)",
                            "{{tier}}",
                        ),
                    ),
                    unit="percentunit",
                ),
                Panel(
                    "Retention call outcomes by tier (1d)",
                    (
                        q(
                            "sum by (tier, outcome) "
                            "(increase(churnwatch_outreach_retention_outcomes_total[1d]))",
                            "{{tier}} {{outcome}}",
                        ),
                    ),
                    description="No data until an agent records a call outcome.",
                ),
            ),
        ),
        (
            "Alerts",
            (
                Panel(
                    "Alerts fired (1h) by rule",
                    (
                        q(
                            "sum by (rule, tier) "
                            "(increase(churnwatch_alerting_alerts_fired_total[1h]))",
                            "{{rule}} {{tier}}",
                        ),
                    ),
                ),
                Panel(
                    "Suppressed (1h) by reason",
                    (
                        q(
                            "sum by (reason) (increase(churnwatch_alerting_suppressed_total[1h]))",
                            "{{reason}}",
                        ),
                    ),
                ),
                Panel(
                    "Tasks published /s",
                    (
                        q(
                            rate("churnwatch_alerting_tasks_total", "kind, channel"),
                            "{{kind}} {{channel}}",
                        ),
                    ),
                ),
                Panel("Open tasks by kind", (q("churnwatch_alerting_open_tasks", "{{kind}}"),)),
            ),
        ),
        (
            "SMS",
            (
                Panel(
                    "SMS /s by result",
                    (q(rate("churnwatch_outreach_sms_total", "result"), "{{result}}"),),
                ),
                Panel(
                    "Receipts /s (delivered, failed)",
                    (q(rate("churnwatch_outreach_receipts_total", "result"), "{{result}}"),),
                ),
                Panel(
                    "Provider latency p95",
                    (q(p95("churnwatch_outreach_provider_request_seconds"), "provider"),),
                    unit="s",
                ),
                Panel(
                    "Deferred and suppressed (1h)",
                    (
                        q(
                            "sum by (reason) "
                            "(increase(churnwatch_outreach_sms_deferred_total[1h]))",
                            "deferred {{reason}}",
                        ),
                        q(
                            "sum by (reason) "
                            "(increase(churnwatch_outreach_sms_suppressed_total[1h]))",
                            "suppressed {{reason}}",
                        ),
                    ),
                    description="No data means the contact policy held nothing back.",
                ),
            ),
        ),
        (
            "Call queue",
            (
                Panel("Calls waiting", (q("churnwatch_outreach_call_queue_depth", "queued"),)),
                Panel(
                    "Oldest due call",
                    (q("churnwatch_outreach_call_queue_oldest_seconds", "oldest"),),
                    unit="s",
                ),
                Panel(
                    "Call events (1h)",
                    (
                        q(
                            "sum by (event) (increase(churnwatch_outreach_calls_total[1h]))",
                            "{{event}}",
                        ),
                    ),
                    description="No data until a call is claimed, requeued or expires.",
                ),
                Panel(
                    "Opt-outs (1d)",
                    (
                        q(
                            "sum by (source) (increase(churnwatch_outreach_opt_outs_total[1d]))",
                            "{{source}}",
                        ),
                    ),
                    description="No data until someone opts out.",
                ),
            ),
        ),
    ),
)

DASHBOARDS = (PIPELINE, MODEL, OUTREACH)


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 6 if panel.kind == "stat" else 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {},
        "targets": [
            {
                "datasource": DATASOURCE,
                "refId": chr(ord("A") + i),
                "expr": expr,
                "legendFormat": legend,
                "range": True,
            }
            for i, (expr, legend) in enumerate(panel.queries)
        ],
    }


def render(dashboard: Dashboard) -> dict[str, Any]:
    """The Grafana dashboard JSON (schema of Grafana 10/11) for one dashboard."""
    panels: list[dict[str, Any]] = []
    y, panel_id = 0, 1
    for row_title, row_panels in dashboard.rows:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id, y, x = panel_id + 1, y + 1, 0
        for panel in row_panels:
            width = 6 if panel.kind == "stat" else 12
            if x + width > 24:  # wrap: two wide panels (or four stats) per line
                x, y = 0, y + 8
            panels.append(_panel_json(panel, panel_id, x, y))
            panel_id, x = panel_id + 1, x + width
        y += 8
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": list(dashboard.tags),
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": panels,
    }


def expected_files() -> dict[Path, str]:
    """Each dashboard file and the text this script writes to it."""
    return {
        OUT / f"{d.uid}.json": json.dumps(render(d), indent=2, sort_keys=True) + "\n"
        for d in DASHBOARDS
    }


def main() -> None:
    """Write every dashboard's JSON file."""
    OUT.mkdir(parents=True, exist_ok=True)
    for path, text in expected_files().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
