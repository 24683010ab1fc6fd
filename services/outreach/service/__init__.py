"""Outreach's database work. Keyword-only; never commits: the caller owns the transaction.

One module per job; every public name is re-exported here, so callers use
``from services.outreach import service`` and ``service.store_tasks(...)``:

- ``tasks``: storing tasks, state transitions, the audit trail, the outcome outbox
- ``updates``: alerting's task updates (cancel, close, reroute)
- ``sms``: the SMS lifecycle (the dispatcher's and the reconciler's rows, contact facts)
- ``rate``: the deployment-wide send rate (a token bucket in one row)
- ``receipts``: delivery receipts
- ``opt_outs``: the do-not-contact list
- ``phones``: phone numbers at rest (lookup by phone, encrypting plain ones)
- ``listing``: reading tasks (the paged list and its cursors, one task, counts)
- ``manual``: tasks made and stopped through the API
- ``kpis``: the KPIs' queries (reminder before suspension, win-back)
- ``outbox``: the outcome outbox's relay side (lock, mark published, count)
- ``escalation``: escalating VIP reminder calls not done in time, their fallback SMS
- ``call_queue``: the call queue (listing, claiming, working calls; the keeper's passes)
- ``workbench``: the workbench's pages' reads and claims (my day, the subscriber card)
- ``team``: the team lead's figures (per manager and tier, for a month)
- ``people``: the workbench's people (accounts, password hashes, lockouts)
- ``sessions``: the workbench's browser sessions

They raise the domain errors of ``services.outreach.errors``, never HTTP statuses.
"""

from services.outreach.service.call_queue import (
    KEEPER,
    MAX_CALLBACK_AHEAD,
    OPT_OUT_SOURCE,
    URGENCY,
    WORKING,
    assign_call,
    claim_call,
    due_calls,
    expire_overdue_calls,
    in_queue,
    oldest_due_wait,
    queued_calls,
    record_outcome,
    requeue_timed_out,
    start_call,
)
from services.outreach.service.escalation import (
    ESCALATION,
    ESCALATION_BOOST,
    FALLBACK_TEMPLATE,
    SMS_ON_ITS_WAY,
    escalate_due_calls,
    fallback_sms_id,
    make_fallback_sms,
)
from services.outreach.service.kpis import (
    ALL_TIERS,
    NOT_SUSPENDED_CAUSES,
    VIP_TIERS,
    WON_BACK,
    Counts,
    offer_reached,
    reminded_before_suspension,
    reminder_counts,
    reminder_notices,
    win_back_counts,
    win_back_offers,
)
from services.outreach.service.listing import (
    count_queued_calls,
    decode_cursor,
    encode_cursor,
    get_task,
    list_tasks,
    newest_task_time,
)
from services.outreach.service.manual import cancel_task, create_manual_task, manual_task_id
from services.outreach.service.opt_outs import get_opt_out, opt_out, remove_opt_out
from services.outreach.service.outbox import count_unpublished, lock_unpublished, mark_published
from services.outreach.service.people import (
    Person,
    Role,
    get_person,
    insert_person,
    list_people,
    person_for_sign_in,
    person_of,
    person_with_manager_id,
    record_sign_in,
    unlock,
)
from services.outreach.service.phones import encrypt_plain_phones, subscribers_with_phone
from services.outreach.service.rate import Grant, take_tokens
from services.outreach.service.receipts import ReceiptResult, apply_receipt
from services.outreach.service.sessions import (
    TOUCH_EVERY,
    WebSession,
    end_session,
    load_session,
    start_session,
    token_hash,
)
from services.outreach.service.sms import (
    CONTACT_LOCK_CLASS,
    DISPATCHER,
    SMS_WAITING,
    UNFINISHED_SMS,
    ContactFacts,
    contact_facts,
    defer_checks,
    expire_overdue_sms,
    lock_due_sms,
    lock_unfinished_sms,
    mark_sending,
    next_sms_attempt,
    oldest_unfinished_sms,
)
from services.outreach.service.tasks import (
    CANCELLED,
    FINAL_STATES,
    OUTCOMES_TOPIC,
    STOPPABLE,
    enqueue_outcomes,
    initial_status,
    record_transitions,
    store_tasks,
    transition,
)
from services.outreach.service.team import (
    SAVES,
    UNKNOWN_MANAGER,
    Miss,
    TeamReport,
    TeamRow,
    team_report,
)
from services.outreach.service.updates import (
    ALERTING,
    Change,
    UpdateResult,
    apply_updates,
    plan_update,
)
from services.outreach.service.workbench import (
    OPEN_CALL,
    REMINDER,
    Scope,
    calls_made,
    calls_made_query,
    claim_task,
    in_hand,
    in_scope,
    manager_names,
    may_see,
    open_reminder,
    record_reveal,
    reminders_due,
    reveals,
    subscriber_tasks,
    task_for,
    todays_calls,
    visible_managers,
    warnings_today,
)

__all__ = [
    "ALERTING",
    "ALL_TIERS",
    "CANCELLED",
    "CONTACT_LOCK_CLASS",
    "DISPATCHER",
    "ESCALATION",
    "ESCALATION_BOOST",
    "FALLBACK_TEMPLATE",
    "FINAL_STATES",
    "KEEPER",
    "MAX_CALLBACK_AHEAD",
    "NOT_SUSPENDED_CAUSES",
    "OPEN_CALL",
    "OPT_OUT_SOURCE",
    "OUTCOMES_TOPIC",
    "REMINDER",
    "SAVES",
    "SMS_ON_ITS_WAY",
    "SMS_WAITING",
    "STOPPABLE",
    "TOUCH_EVERY",
    "UNFINISHED_SMS",
    "UNKNOWN_MANAGER",
    "URGENCY",
    "VIP_TIERS",
    "WON_BACK",
    "WORKING",
    "Change",
    "ContactFacts",
    "Counts",
    "Grant",
    "Miss",
    "Person",
    "ReceiptResult",
    "Role",
    "Scope",
    "TeamReport",
    "TeamRow",
    "UpdateResult",
    "WebSession",
    "apply_receipt",
    "apply_updates",
    "assign_call",
    "calls_made",
    "calls_made_query",
    "cancel_task",
    "claim_call",
    "claim_task",
    "contact_facts",
    "count_queued_calls",
    "count_unpublished",
    "create_manual_task",
    "decode_cursor",
    "defer_checks",
    "due_calls",
    "encode_cursor",
    "encrypt_plain_phones",
    "end_session",
    "enqueue_outcomes",
    "escalate_due_calls",
    "expire_overdue_calls",
    "expire_overdue_sms",
    "fallback_sms_id",
    "get_opt_out",
    "get_person",
    "get_task",
    "in_hand",
    "in_queue",
    "in_scope",
    "initial_status",
    "insert_person",
    "list_people",
    "list_tasks",
    "load_session",
    "lock_due_sms",
    "lock_unfinished_sms",
    "lock_unpublished",
    "make_fallback_sms",
    "manager_names",
    "manual_task_id",
    "mark_published",
    "mark_sending",
    "may_see",
    "newest_task_time",
    "next_sms_attempt",
    "offer_reached",
    "oldest_due_wait",
    "oldest_unfinished_sms",
    "open_reminder",
    "opt_out",
    "person_for_sign_in",
    "person_of",
    "person_with_manager_id",
    "plan_update",
    "queued_calls",
    "record_outcome",
    "record_reveal",
    "record_sign_in",
    "record_transitions",
    "reminded_before_suspension",
    "reminder_counts",
    "reminder_notices",
    "reminders_due",
    "remove_opt_out",
    "requeue_timed_out",
    "reveals",
    "start_call",
    "start_session",
    "store_tasks",
    "subscriber_tasks",
    "subscribers_with_phone",
    "take_tokens",
    "task_for",
    "team_report",
    "todays_calls",
    "token_hash",
    "transition",
    "unlock",
    "visible_managers",
    "warnings_today",
    "win_back_counts",
    "win_back_offers",
]
