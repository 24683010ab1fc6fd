"""The model and the outreach/KPI dashboards (deploy/grafana/generate.py renders them)."""

from __future__ import annotations

from panels import Dashboard, Panel, p95, q, rate

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
                Panel(
                    "Task outcomes read /s",
                    (
                        q(
                            rate("churnwatch_scoring_outcomes_total", "outcome, result"),
                            "{{outcome}} {{result}}",
                        ),
                    ),
                    description="Outreach's outcomes topic: censored (an intervention), "
                    "recorded, duplicate.",
                ),
                Panel(
                    "Label snapshots censored (1d)",
                    (
                        q(
                            "sum(increase(churnwatch_scoring_snapshots_censored_total[1d]))",
                            "censored",
                        ),
                    ),
                    description="Pending snapshots discarded unlabelled because a retention "
                    "call kept the subscriber.",
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
                Panel(
                    "Task updates published /s",
                    (q(rate("churnwatch_alerting_task_updates_total", "action"), "{{action}}"),),
                    description="Cancel, close, reroute, sent by alerting to outreach. "
                    "No data until alerting updates a task.",
                ),
                Panel(
                    "Calls spilled to overflow (1d)",
                    (
                        q(
                            "sum by (how) (increase(churnwatch_alerting_calls_spilled_total[1d]))",
                            "{{how}}",
                        ),
                    ),
                    description="A manager's day was full: the new call (full) or a less "
                    "urgent one it replaced (bumped) went to the overflow queue. No data "
                    "until that happens.",
                ),
            ),
        ),
        (
            "Tasks in outreach",
            (
                Panel(
                    "Tasks stored /s",
                    (
                        q(
                            rate("churnwatch_outreach_tasks_total", "kind, channel"),
                            "{{kind}} {{channel}}",
                        ),
                    ),
                ),
                Panel(
                    "Task updates applied /s",
                    (
                        q(
                            rate("churnwatch_outreach_task_updates_total", "action, result"),
                            "{{action}} {{result}}",
                        ),
                    ),
                    description="No data until alerting updates a task.",
                ),
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
                Panel(
                    "SMS reconciled (1h) by result",
                    (
                        q(
                            "sum by (result) "
                            "(increase(churnwatch_outreach_sms_reconciled_total[1h]))",
                            "{{result}}",
                        ),
                    ),
                    description="Status queries of SMS without a final state (docs/operations.md"
                    ", Status query). No data until an SMS waits SMS_RECONCILE_AFTER_S.",
                ),
                Panel(
                    "SMPP binds and throttling (1h)",
                    (
                        q("sum(increase(churnwatch_outreach_smpp_binds_total[1h]))", "binds"),
                        q(
                            "sum(increase(churnwatch_outreach_smpp_throttled_total[1h]))",
                            "throttled",
                        ),
                    ),
                    description="SMS_TRANSPORT=smpp only (docs/smpp.md): more binds than "
                    "outreach processes means sessions were lost and bound again; throttled "
                    "submit_sm paused every send. No data with the HTTP transport.",
                ),
                Panel(
                    "Oldest SMS without a final state",
                    (q("churnwatch_outreach_sms_unfinished_oldest_seconds", "oldest"),),
                    unit="s",
                    description="Past SMS_FINAL_STATE_DEADLINE_S it becomes 'unknown' "
                    "(rule ChurnwatchSmsFinalStateUnknown).",
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
