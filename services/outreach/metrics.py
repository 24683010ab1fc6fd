"""Outreach metrics."""

from prometheus_client import Counter, Gauge, Histogram

TASKS_STORED = Counter(
    "churnwatch_outreach_tasks_total", "Tasks stored, by kind and channel", ["kind", "channel"]
)
TASK_UPDATES = Counter(
    "churnwatch_outreach_task_updates_total",
    "Task updates from alerting, by action (cancel, close, reroute) and result "
    "(applied, ignored, unknown_task)",
    ["action", "result"],
)
SMS = Counter(
    "churnwatch_outreach_sms_total",
    "SMS outcomes, by task kind and result (sent, retry, failed, expired)",
    ["kind", "result"],
)
PROVIDER_SECONDS = Histogram(
    "churnwatch_outreach_provider_request_seconds", "SMS provider request latency"
)
TASK_TO_SENT_SECONDS = Histogram(
    "churnwatch_outreach_task_to_sent_seconds",
    "From task creation (alerting) to the provider accepting the SMS",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
)
CALL_QUEUE_DEPTH = Gauge("churnwatch_outreach_call_queue_depth", "Call tasks waiting in the queue")
