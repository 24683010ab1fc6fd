"""Alerting metrics. Labels are rule names, tiers, kinds and reasons: never a subscriber."""

from prometheus_client import Counter, Gauge, Histogram

from shared.events import TaskKind

OPEN_KINDS = tuple(k.value for k in TaskKind)

FIRED = Counter(
    "churnwatch_alerting_alerts_fired_total",
    "Alerts fired and sent to outreach, by rule and tier",
    ["rule", "tier"],
)
SUPPRESSED = Counter(
    "churnwatch_alerting_suppressed_total",
    "Alerts or tasks not sent, by rule and reason (dedup, repeat, inhibited, silenced, "
    "control_group, churned, no_contact, opted_out, too_late)",
    ["rule", "reason"],
)
TASKS = Counter(
    "churnwatch_alerting_tasks_total",
    "Outreach tasks published, by kind and channel",
    ["kind", "channel"],
)
TASK_UPDATES = Counter(
    "churnwatch_alerting_task_updates_total",
    "Task updates published (cancel, close, reroute)",
    ["action"],
)
SPILLED = Counter(
    "churnwatch_alerting_calls_spilled_total",
    "Calls sent to the overflow queue because a manager's day was full, by how "
    "(full: the new call; bumped: a less urgent call it replaced)",
    ["how"],
)
OPEN_TASKS = Gauge(
    "churnwatch_alerting_open_tasks",
    "Tasks of open alerts (not cancelled, closed or past their window; held-out "
    "ones excluded), by kind",
    ["kind"],
)
MESSAGES = Counter(
    "churnwatch_alerting_messages_total",
    "Messages consumed by alerting, by result (handled, duplicate)",
    ["result"],
)
SWEEP_ERRORS = Counter(
    "churnwatch_alerting_sweep_errors_total",
    "Dwell sweeps that failed (retried on the next interval)",
)
SCORE_TO_DECISION_SECONDS = Histogram(
    "churnwatch_alerting_score_to_decision_seconds",
    "From a score's scored_at to alerting running the rules on it (any task it fires is "
    "published in that same batch)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
SUBSCRIBERS = Gauge(
    "churnwatch_alerting_subscribers",
    "Subscribers with a profile, by tier and state (active, churned); refreshed every sweep",
    ["tier", "state"],
)
