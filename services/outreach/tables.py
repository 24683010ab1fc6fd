"""Outreach's tables (PostgreSQL schema ``outreach``)."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    Text,
    Uuid,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from shared.crypto import EncryptedPhone
from shared.db import make_metadata

metadata = make_metadata("outreach")

tasks = Table(
    "tasks",
    metadata,
    Column("task_id", Uuid, primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("channel", String(8), nullable=False),
    Column("status", String(16), nullable=False),
    Column("subscriber_id", String(64), nullable=False),
    Column("tier", String(16), nullable=False),
    # Encrypted (AES-GCM, OUTREACH_PHONE_KEY); the code reads and writes it plain.
    Column("phone", EncryptedPhone, nullable=True),
    # HMAC of the number: finds an inbound reply's sender without decrypting every row.
    Column("phone_hash", String(64), nullable=True, index=True),
    Column("language", String(2), nullable=False),
    Column("account_manager_id", String(64), nullable=True),
    Column("rule", String(64), nullable=True),  # the alerting rule that made the task
    # 'am:<account manager id>' or a shared queue such as 'general'; calls only.
    Column("queue", String(80), nullable=True),
    # SMS template name; null means the template named after the kind.
    Column("template", String(64), nullable=True),
    Column("marketing", Boolean, nullable=False, server_default=false()),
    Column("monthly_value", Numeric(14, 4), nullable=True),
    Column("priority", Float, nullable=False),
    Column("risk", Float, nullable=True),
    # Nothing is done before this: the dispatcher does not send, the call queue hides it.
    Column("not_before", DateTime(timezone=True), nullable=True),
    Column("due_at", DateTime(timezone=True), nullable=True),
    Column("reasons", JSONB, nullable=False),
    Column("reason_codes", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    # Set by a 'close' update from alerting, e.g. 'won_back'.
    Column("outcome", String(32), nullable=True),
    Column("params", JSONB, nullable=False),
    Column("cause_event_id", Uuid, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("provider_message_id", String(128), nullable=True, index=True),
    # Why alerting cancelled or closed it (paid, churned, ...): the KPI tells a
    # paid-up subscriber (not suspended) from one who was.
    Column("end_cause", String(16), nullable=True),
    # Reminders: when the subscriber is to be suspended (from the stop-notice).
    Column("suspension_at", DateTime(timezone=True), nullable=True),
    # Who made it: 'alerting', or the API client for tasks created by hand.
    Column("created_by", String(64), nullable=False, server_default="alerting"),
    # POST /v1/tasks is idempotent on the client's key (Idempotency-Key header).
    Column("client_key", String(128), nullable=True, unique=True),
    # Calls: who claimed it and when (an unfinished claim returns to the queue).
    Column("assigned_to", String(64), nullable=True),
    Column("assigned_at", DateTime(timezone=True), nullable=True),
    Column("callback_at", DateTime(timezone=True), nullable=True),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Column("delivered_at", DateTime(timezone=True), nullable=True),
    # When it reached a final state (delivered, failed, cancelled, expired, completed).
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # A VIP reminder not done by OUTREACH_ESCALATION_MARGIN_S before the suspension
    # is escalated (escalation.py): to the team lead's page, and an SMS if configured.
    Column("escalated_at", DateTime(timezone=True), nullable=True),
    # The W3C traceparent of the event behind it (tracing on, shared/tracing.py):
    # the SMS send, later and from here, joins that event's trace.
    Column("traceparent", String(55), nullable=True),
    Index("ix_tasks_subscriber_created", "subscriber_id", "created_at"),
    Index("ix_tasks_status_channel", "status", "channel"),
    Index("ix_tasks_created", "created_at", "task_id"),
    # The call queue filtered by queue: GET /v1/call-queue?queue=...
    Index("ix_tasks_queue_status", "queue", "status"),
    comment="Outreach tasks and their current state.",
)

task_transitions = Table(
    "task_transitions",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("task_id", Uuid, ForeignKey("outreach.tasks.task_id"), nullable=False, index=True),
    Column("from_status", String(16), nullable=True),
    Column("to_status", String(16), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("reason", Text, nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
    # The alerting TaskUpdate that caused this change, if any. Unique: an update
    # already applied (a redelivered batch) is recognised here and not applied again.
    Column("update_id", Uuid, nullable=True, unique=True),
    comment="Audit trail: every state change of every task, who/what, when and why.",
)

opt_outs = Table(
    "opt_outs",
    metadata,
    Column("subscriber_id", String(64), primary_key=True),
    # 'api' (PUT /v1/contacts/{id}/opt-out), 'sms_reply' (a T/TD reply) or 'call'
    # (do_not_contact recorded as a call's outcome).
    Column("source", String(16), nullable=False),
    Column("reason", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    comment="Do-not-contact list: no marketing SMS to these subscribers.",
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("topic", String(255), nullable=False),
    Column("key", String(64), nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=True),
    Index("ix_outbox_unpublished", "id", postgresql_where=text("published_at IS NULL")),
    # The retention purge looks for old published rows. BRIN: published_at grows
    # with the heap order, so the index is tiny and costs the relay nothing.
    Index("ix_outbox_published_at", "published_at", postgresql_using="brin"),
    comment="Transactional outbox: messages (task outcomes) written with the state change "
    "they report, published to Kafka by a relay.",
)


# --- the workbench: people who sign in to the browser pages (workbench/) ---------------

people = Table(
    "people",
    metadata,
    # The sign-in name.
    Column("person_id", String(64), primary_key=True),
    Column("display_name", String(128), nullable=False),
    # 'manager', 'team_lead' or 'admin'.
    Column("role", String(16), nullable=False),
    # The account manager id this person works as (tasks.account_manager_id, queue 'am:<id>').
    Column("manager_id", String(64), nullable=True, unique=True),
    # A manager's team lead (a person with the team_lead role).
    Column("team_lead_id", String(64), ForeignKey("outreach.people.person_id"), nullable=True),
    # Argon2id (argon2-cffi), with its parameters and salt in the string.
    Column("password_hash", Text, nullable=False),
    Column("failed_sign_ins", Integer, nullable=False, server_default="0"),
    Column("locked_until", DateTime(timezone=True), nullable=True),
    Column("disabled", Boolean, nullable=False, server_default=false()),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    comment="People who sign in to the workbench (not API keys), with their role and team.",
)

web_sessions = Table(
    "web_sessions",
    metadata,
    # SHA-256 of the cookie's random token: a database read does not give a session away.
    Column("token_hash", String(64), primary_key=True),
    Column("person_id", String(64), ForeignKey("outreach.people.person_id"), nullable=False),
    # Every form carries it; a POST without the session's token is refused.
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_seen_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
    comment="Signed-in browser sessions of the workbench.",
)

phone_reveals = Table(
    "phone_reveals",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("person_id", String(64), nullable=False),
    Column("subscriber_id", String(64), nullable=False, index=True),
    Column("task_id", Uuid, nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
    comment="Audit: every time a person revealed a subscriber's phone number to call it.",
)

# --- the deployment-wide SMS send rate (services/outreach/ratelimit.py) ----------------

send_rates = Table(
    "send_rates",
    metadata,
    # The bucket's name: 'sms', the provider's contracted rate, for the whole deployment.
    Column("name", String(32), primary_key=True),
    # Tokens left at updated_at (each one SMS), at most the bucket's capacity.
    Column("tokens", Float, nullable=False),
    # The database's clock (clock_timestamp()) when tokens was last refilled and taken.
    Column("updated_at", DateTime(timezone=True), nullable=False),
    comment="Token buckets shared by every outreach replica: one send rate per deployment.",
    # Rewritten tens of times a second: room on the page keeps the updates heap-only.
    postgresql_with={"fillfactor": 50},
)
