"""Alerting metrics."""

from prometheus_client import Counter

TASKS = Counter(
    "churnwatch_alerting_tasks_total",
    "Outreach tasks published, by kind and channel",
    ["kind", "channel"],
)
SUPPRESSED = Counter(
    "churnwatch_alerting_suppressed_total",
    "Alerts not turned into a task, by kind and reason",
    ["kind", "reason"],
)
MESSAGES = Counter(
    "churnwatch_alerting_messages_total",
    "Messages consumed by alerting, by result (handled, duplicate)",
    ["result"],
)
