"""Outreach's database work. Keyword-only; never commits: the caller owns the transaction.

One module per job; every public name is re-exported here, so callers use
``from services.outreach import service`` and ``service.store_tasks(...)``:

- ``tasks``: storing tasks, state transitions, the audit trail, the outcome outbox
- ``updates``: alerting's task updates (cancel, close, reroute)
- ``sms``: the SMS lifecycle (the dispatcher's and the reconciler's rows, contact facts)
- ``receipts``: delivery receipts
- ``opt_outs``: the do-not-contact list
- ``phones``: phone numbers at rest (lookup by phone, encrypting plain ones)
- ``listing``: reading tasks (the paged list and its cursors, one task, counts)
- ``manual``: tasks made and stopped through the API
"""

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
from services.outreach.service.phones import encrypt_plain_phones, subscribers_with_phone
from services.outreach.service.receipts import ReceiptResult, apply_receipt
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
from services.outreach.service.updates import (
    ALERTING,
    Change,
    UpdateResult,
    apply_updates,
    plan_update,
)

__all__ = [
    "ALERTING",
    "CANCELLED",
    "CONTACT_LOCK_CLASS",
    "DISPATCHER",
    "FINAL_STATES",
    "OUTCOMES_TOPIC",
    "SMS_WAITING",
    "STOPPABLE",
    "UNFINISHED_SMS",
    "Change",
    "ContactFacts",
    "ReceiptResult",
    "UpdateResult",
    "apply_receipt",
    "apply_updates",
    "cancel_task",
    "contact_facts",
    "count_queued_calls",
    "create_manual_task",
    "decode_cursor",
    "defer_checks",
    "encode_cursor",
    "encrypt_plain_phones",
    "enqueue_outcomes",
    "expire_overdue_sms",
    "get_opt_out",
    "get_task",
    "initial_status",
    "list_tasks",
    "lock_due_sms",
    "lock_unfinished_sms",
    "manual_task_id",
    "newest_task_time",
    "oldest_unfinished_sms",
    "opt_out",
    "plan_update",
    "record_transitions",
    "remove_opt_out",
    "store_tasks",
    "subscribers_with_phone",
    "transition",
]
