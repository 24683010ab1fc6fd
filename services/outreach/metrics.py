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

# --- contact policy and receipts (sms.py, policy.py, views/contacts.py)
SMS_DEFERRED = Counter(
    "churnwatch_outreach_sms_deferred_total",
    "SMS held back by the contact policy, by reason (quiet_hours, frequency_cap)",
    ["reason"],
)
SMS_SUPPRESSED = Counter(
    "churnwatch_outreach_sms_suppressed_total",
    "SMS not sent because of the contact policy, by reason (opted_out)",
    ["reason"],
)
RECEIPTS = Counter(
    "churnwatch_outreach_receipts_total",
    "Delivery receipts received, by result (delivered, failed, rejected, unknown, duplicate)",
    ["result"],
)
SMS_RECONCILED = Counter(
    "churnwatch_outreach_sms_reconciled_total",
    "Status queries of SMS without a final state, by result (delivered, failed, adopted, "
    "resend, waiting, not_found, error, unknown)",
    ["result"],
)
SMS_FINAL_UNKNOWN = Counter(
    "churnwatch_outreach_sms_final_unknown_total",
    "SMS marked 'unknown': the provider had not told their fate by SMS_FINAL_STATE_DEADLINE_S",
)
SMS_UNFINISHED_OLDEST = Gauge(
    "churnwatch_outreach_sms_unfinished_oldest_seconds",
    "How long the oldest SMS in 'sending' or 'sent' has waited for a final state",
)
OPT_OUTS = Counter(
    "churnwatch_outreach_opt_outs_total",
    "Opt-outs recorded, by source (api, sms_reply, call)",
    ["source"],
)


def count_opt_out(source: str, new: int, cancelled: int) -> None:
    """Count ``new`` opt-outs from ``source`` and the marketing SMS they ``cancelled``."""
    if new:
        OPT_OUTS.labels(source).inc(new)
    if cancelled:
        SMS_SUPPRESSED.labels("opted_out").inc(cancelled)


# --- call queue (service/call_queue.py, queue.py)
CALLS = Counter(
    "churnwatch_outreach_calls_total",
    "Call queue events, by what happened (claimed, requeued, completed, expired) "
    "and outcome (for completed)",
    ["event", "outcome"],
)
RETENTION_OUTCOMES = Counter(
    "churnwatch_outreach_retention_outcomes_total",
    "Completed calls by the subscriber's tier and the call's outcome",
    ["tier", "outcome"],
)
CALL_QUEUE_AGE = Gauge(
    "churnwatch_outreach_call_queue_oldest_seconds",
    "Age of the oldest due call waiting in the queue",
)
ESCALATIONS = Counter(
    "churnwatch_outreach_escalations_total",
    "VIP pre-suspension reminders escalated: not done OUTREACH_ESCALATION_MARGIN_S before "
    "the suspension (escalation.py), by tier",
    ["tier"],
)

# --- feedback (feedback.py)
OUTCOMES_PUBLISHED = Counter(
    "churnwatch_outreach_outcomes_published_total",
    "Task outcomes published to the outcomes topic by the outbox relay",
)
OUTBOX_PENDING = Gauge("churnwatch_outreach_outbox_pending", "Outbox messages not yet published")
RELAY_FAILURES = Counter(
    "churnwatch_outreach_relay_failures_total",
    "Outbox relay passes that failed (broker or database unreachable); retried next interval",
)
KPI_REMINDER_BEFORE_SUSPENSION = Gauge(
    "churnwatch_outreach_kpi_reminder_before_suspension_ratio",
    "This month's VIP subscribers suspended who were reminded first / all VIPs suspended, by tier",
    ["tier"],
)
KPI_WIN_BACK = Gauge(
    "churnwatch_outreach_kpi_win_back_ratio",
    "This month's win-back offers that won the subscriber back / offers made, by tier",
    ["tier"],
)
# --- SMPP (smpp.py)
SMPP_THROTTLED = Counter(
    "churnwatch_outreach_smpp_throttled_total",
    "submit_sm answered ESME_RTHROTTLED or ESME_RMSGQFUL (sends paused, then submitted again)",
)
SMPP_BINDS = Counter(
    "churnwatch_outreach_smpp_binds_total",
    "SMPP sessions bound to the SMSC (more than one: it was lost and bound again)",
)
