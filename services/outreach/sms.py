"""SMS: the provider client over httpx, and the dispatcher loop.

Sending is an outbox: the consumer only stores tasks; the dispatcher claims
due SMS tasks from PostgreSQL, asks the contact policy (``policy``) about
each, sends the ones that may go through the provider with the task id as
idempotency key, no faster than the deployment's rate (``ratelimit``, shared
by all replicas), and records the outcome. Texts come from ``templates``.

Every retry is durable: a retryable failure puts the task back to
``pending`` with ``attempts`` and ``next_attempt_at`` in its row, so a
restart loses nothing. A crash between the provider's accept and our
``sent`` leaves the task in ``sending``; it is claimed again later and
resent with the same key, which the provider deduplicates, so no subscriber
gets the SMS twice. Delivery receipts (``contacts``) then move ``sent`` to
``delivered`` or ``failed``. A receipt the provider gave up on is made up
for by ``reconcile``, which asks the provider (``SmsClient.status``) about
SMS that have waited too long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, cast, get_args

import httpx
from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from tenacity import RetryCallState, Retrying, wait_random_exponential

from services.outreach import metrics, policy, service
from services.outreach.ratelimit import SharedTokenBucket
from services.outreach.schemas import SmsStatus
from services.outreach.settings import OutreachSettings
from services.outreach.templates import check_templates, render
from shared.clock import Clock, StreamClock, WallClock
from shared.periodic import Periodic
from shared.tracing import Tracing

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 3600.0
"""Longest wait between two attempts, whatever ``SMS_RETRY_BASE_S`` and the attempt count."""

MAX_SEND_CONCURRENCY = 64
"""Most provider requests in flight at once (the rate limit paces them)."""

DUE_MARGIN_S = 0.005
"""Added to a wait for a due time: the loop's timer may fire a hair early on the wall clock."""


class ProviderError(Exception):
    """The provider refused or failed; ``retryable`` says whether to try again.

    ``retry_after`` is the provider's ``Retry-After`` (seconds) on a 429 or
    503, which the next attempt waits at least.
    """

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


def _retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (the delta form only), if sane."""
    try:
        value = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return value if 0 <= value <= MAX_BACKOFF_S else None


class SmsTransport(Protocol):
    """How the dispatcher and the reconciler reach the SMS provider (``SMS_TRANSPORT``).

    ``SmsClient`` (the JSON HTTP protocol) and ``smpp.SmppTransport`` (SMPP 3.4
    to an SMSC). Both raise ``ProviderError`` with ``retryable`` set; a
    transport's delivery receipts end in ``service.apply_receipt``, the same
    state changes as the HTTP webhook's.
    """

    async def send(self, *, to: str, text: str, idempotency_key: str) -> str:
        """Submit one SMS (the task id is the key); return the provider's message id."""
        ...

    async def status(self, *, idempotency_key: str) -> ProviderStatus | None:
        """What became of the SMS sent with this key; None if the provider never took it."""
        ...


@dataclass
class SmsClient:
    """Client of the generic JSON HTTP SMS provider protocol (docs/operations.md)."""

    client: httpx.AsyncClient
    token: str
    sender_id: str

    async def send(self, *, to: str, text: str, idempotency_key: str) -> str:
        """Submit one SMS; return the provider's message id.

        Raises ``ProviderError``: retryable on timeouts, connection errors,
        429 and 5xx, and on a success answer without a message id (the same
        idempotency key makes the retry harmless); not retryable on other 4xx.
        """
        try:
            with metrics.PROVIDER_SECONDS.time():
                response = await self.client.post(
                    "/v1/messages",
                    json={
                        "to": to,
                        "text": text,
                        "sender": self.sender_id,
                        "reference": idempotency_key,
                    },
                    headers={
                        "Authorization": f"Bearer {self.token}",
                        "Idempotency-Key": idempotency_key,
                    },
                )
        except httpx.TimeoutException as exc:
            # The provider may have accepted it: only the idempotency key makes
            # the retry safe. Its receipt may still tell us (views.contacts.receipt).
            raise ProviderError(
                f"provider timed out ({type(exc).__name__})", retryable=True
            ) from exc
        except httpx.TransportError as exc:
            raise ProviderError(
                f"provider unreachable: {type(exc).__name__}", retryable=True
            ) from exc
        if response.status_code in (200, 201, 202):
            try:
                return str(response.json()["message_id"])
            except (ValueError, KeyError, TypeError) as exc:
                # Accepted but unreadable: retrying with the same idempotency key is safe.
                raise ProviderError("provider answer has no message_id", retryable=True) from exc
        retryable = response.status_code == 429 or response.status_code >= 500
        raise ProviderError(
            f"provider answered {response.status_code}",
            retryable=retryable,
            retry_after=_retry_after(response) if retryable else None,
        )

    async def status(self, *, idempotency_key: str) -> ProviderStatus | None:
        """Ask the provider what became of the SMS sent with ``idempotency_key``.

        ``GET /v1/status?idempotency_key=...``. None on a 404: the provider
        never took an SMS with this key, so sending it again with the same key
        is safe. Raises ``ProviderError`` on a timeout, a connection error,
        any other status, or an answer that is not a status.
        """
        try:
            with metrics.PROVIDER_SECONDS.time():
                response = await self.client.get(
                    "/v1/status",
                    params={"idempotency_key": idempotency_key},
                    headers={"Authorization": f"Bearer {self.token}"},
                )
        except httpx.TransportError as exc:  # timeouts included
            raise ProviderError(
                f"status query failed: {type(exc).__name__}", retryable=True
            ) from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ProviderError(
                f"status query answered {response.status_code}",
                retryable=response.status_code == 429 or response.status_code >= 500,
            )
        try:
            return _parse_status(response.json())
        except ValueError as exc:
            raise ProviderError(f"status answer unreadable: {exc}", retryable=True) from exc


ProviderState = Literal["accepted", "sent", "delivered", "failed", "unknown"]
"""What the provider knows of a message: the status query's ``state``."""


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    """The provider's answer to a status query (docs/operations.md, "Status query")."""

    state: ProviderState
    message_id: str
    updated_at: datetime | None
    error: str | None

    @property
    def final(self) -> bool:
        """Whether the provider knows the SMS's fate (delivered or failed)."""
        return self.state in ("delivered", "failed")


def _parse_status(body: Any) -> ProviderStatus:
    """A status answer's body; ValueError if it is not one."""
    if not isinstance(body, dict):
        raise ValueError("not an object")
    state, message_id = body.get("state"), body.get("message_id")
    if state not in get_args(ProviderState) or not isinstance(message_id, str) or not message_id:
        raise ValueError(f"bad state {state!r} or message_id")
    updated = body.get("updated_at")
    at = datetime.fromisoformat(updated) if isinstance(updated, str) else None
    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=UTC)  # a provider's naive time is taken as UTC
    error = body.get("error")
    return ProviderStatus(
        cast(ProviderState, state), message_id, at, str(error)[:500] if error else None
    )


_BACKOFF_STATE = Retrying()  # only a holder for RetryCallState; never runs anything


class Dispatcher:
    """Claims due SMS tasks, applies the contact policy, sends them, until stopped."""

    def __init__(
        self,
        settings: OutreachSettings,
        engine: AsyncEngine,
        sms: SmsTransport,
        *,
        clock: Clock | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """``clock``: what is due, and the times recorded (default: the wall clock).

        ``tracing`` on: each send is a ``send sms`` span in its task's trace.
        """
        self.tracing = tracing if tracing is not None and tracing.enabled else None
        self.clock: Clock = clock or WallClock()
        # Templates are checked here, when the service starts, not when the first
        # SMS with a typo is due at night.
        check_templates()
        self.settings = settings
        self.engine = engine
        self.sms = sms
        self.rules = policy.ContactRules.from_settings(settings)
        # The deployment's rate, shared with every other replica through PostgreSQL.
        self.bucket = SharedTokenBucket(engine, settings.sms_rate_limit_per_s)
        # Enough requests in flight to reach the rate with a second of provider latency.
        rate = settings.sms_rate_limit_per_s
        self.concurrency = max(1, min(MAX_SEND_CONCURRENCY, math.ceil(rate)))
        # tenacity's full-jitter exponential wait: uniform(0, base * 2**n), n the
        # attempts so far; the retry state itself lives in the task's row.
        self._backoff = wait_random_exponential(
            multiplier=settings.sms_retry_base_s, max=MAX_BACKOFF_S
        )
        self.next_due: datetime | None = None
        """When the next waiting SMS becomes due, as the last idle pass found (None: none)."""
        self._loop = Periodic(
            self._dispatch,
            interval_s=self.wait_s,
            log=log,
            failure="SMS dispatch failed; retrying",
        )
        # Set by whoever stores an SMS task (the consumer, the tasks API, escalation)
        # to end the dispatcher's wait: the loop's own wake-up event.
        self.wakeup = self._loop.wakeup
        self.passes = 0  # dispatch passes made (tests wait on it, as on batches_handled)

    def stop(self) -> None:
        """Exit after the SMS in hand."""
        self._loop.stop()

    async def run(self) -> None:
        """Dispatch until ``stop()``; a failure is logged and retried after the interval."""
        await self._loop.run()

    async def _dispatch(self) -> bool:
        # Tasks were due: more may be, so the next pass starts at once.
        return await self.dispatch_once() != 0

    def wait_s(self) -> float:
        """How long the loop sleeps after an idle pass: until ``next_due``, at most the interval.

        A new SMS is held (``OUTREACH_SMS_HOLD_S``), backs off, or is deferred
        to a later time; sleeping a fixed interval added up to that interval to
        every such SMS (issue 20: up to 1 s on top of the 3 s hold). A task
        stored meanwhile with an earlier time wakes the loop (``wakeup``), and
        the next idle pass looks again. With a stream clock, stream time does
        not pass between events, so its due times say nothing about wall time:
        the interval then, as before.
        """
        interval = self.settings.outreach_dispatch_interval_s
        if self.next_due is None or isinstance(self.clock, StreamClock):
            return interval
        until = (self.next_due - self.clock.now()).total_seconds() + DUE_MARGIN_S
        return min(interval, max(until, 0.0))

    def expect(self, at: datetime) -> None:
        """An SMS was stored (and committed) that may first go at ``at``: wake if that is sooner.

        The loop's wait already ends at ``next_due``; an SMS due no sooner is
        found by the pass then, so the store costs no pass of its own (with the
        hold, every new SMS is due after the ones already waiting). Otherwise,
        or when the loop is mid-pass or has no due time, it is woken to look.
        """
        waits_for = self.next_due
        if waits_for is None or at < waits_for or isinstance(self.clock, StreamClock):
            self.wakeup.set()

    def backoff_s(self, attempts: int, retry_after: float | None = None) -> float:
        """Seconds to wait before the next attempt, after ``attempts`` were made."""
        state = RetryCallState(_BACKOFF_STATE, None, (), {})
        state.attempt_number = attempts + 1
        delay = self._backoff(state)
        if retry_after is not None:
            delay = max(delay, retry_after)  # the provider said how long it needs
        return min(delay, MAX_BACKOFF_S)

    async def dispatch_once(self, *, now: datetime | None = None) -> int:
        """Expire overdue tasks, claim a batch, decide and send; return how many were due.

        ``now`` (default: the clock) decides what is due and what the contact
        policy allows: tests pass another time to act as if it had come.
        """
        now = now or self.clock.now()
        self.passes += 1
        # Unset until this pass has looked: a failed pass then waits the whole interval.
        self.next_due = None
        claimed, due, next_due = await self._claim(now)
        semaphore = asyncio.Semaphore(self.concurrency)

        async def send_one(task: dict[str, Any]) -> None:
            async with semaphore:
                if self._loop.stopping:
                    return  # left in 'sending'; reclaimed after the stale interval
                await self.bucket.acquire()
                try:
                    with self._span(task):
                        await self._send(task)
                except Exception:
                    # One task's surprise must not hold the rest of the batch in
                    # 'sending'; this one is reclaimed after OUTREACH_SENDING_STALE_S.
                    log.exception(
                        "SMS dispatch of one task failed", extra={"task_id": str(task["task_id"])}
                    )

        await asyncio.gather(*(send_one(task) for task in claimed))
        self.next_due = next_due
        return due

    def _span(self, task: dict[str, Any]) -> contextlib.AbstractContextManager[Any]:
        """The send's span, child of the task's stored trace (tracing off: nothing)."""
        if self.tracing is None:
            return contextlib.nullcontext()
        span = self.tracing.start_child(
            "send sms",
            task.get("traceparent"),
            attributes={
                "churnwatch.task.id": str(task["task_id"]),
                "churnwatch.task.kind": task["kind"],
                "churnwatch.sms.attempt": task["attempts"],
            },
        )
        return trace.use_span(span, end_on_exit=True)

    async def _claim(self, now: datetime) -> tuple[list[dict[str, Any]], int, datetime | None]:
        """In one transaction: expire, lock the due tasks, decide, mark the senders ``sending``.

        Returns the tasks to send now, how many were due (sent, deferred,
        suppressed or expired: all of them were work), and, when none was, when
        the next waiting SMS is due (when some were, the next pass comes at once).
        """
        stale_before = now - timedelta(seconds=self.settings.outreach_sending_stale_s)
        async with self.engine.begin() as conn:
            expired = await service.expire_overdue_sms(conn, now=now, stale_before=stale_before)
            metrics.CALL_QUEUE_DEPTH.set(await service.count_queued_calls(conn))
            due = await service.lock_due_sms(
                conn,
                limit=self.settings.outreach_dispatch_batch,
                now=now,
                stale_before=stale_before,
            )
            facts = await service.contact_facts(
                conn,
                subscriber_ids={t["subscriber_id"] for t in due if t["marketing"]},
                since=now - self.rules.cap_window,
                now=now,
                exclude={t["task_id"] for t in due},
            )
            claimed: list[dict[str, Any]] = []
            for task in due:
                subscriber = task["subscriber_id"]
                decision = policy.decide(
                    marketing=task["marketing"],
                    due_at=task["due_at"],
                    opted_out=subscriber in facts.opted_out,
                    sent_marketing=facts.sent_marketing.get(subscriber, ()),
                    now=now,
                    rules=self.rules,
                )
                if await self._apply(conn, task, decision, now):
                    claimed.append(task)
                    if task["marketing"]:
                        # Counts toward the cap of this subscriber's next task in the batch.
                        facts.sent_marketing.setdefault(subscriber, []).append(now)
            # The senders' move to 'sending', all in two statements (see mark_sending).
            await service.mark_sending(
                conn,
                claimed=[
                    (t["task_id"], t.pop("from_status"), t["attempts"], t.pop("claim_reason"))
                    for t in claimed
                ],
                now=now,
            )
            next_due = None if due else await service.next_sms_attempt(conn, after=now)
        if expired:
            metrics.SMS.labels("any", "expired").inc(expired)
        return claimed, len(due), next_due

    async def _apply(
        self, conn: AsyncConnection, task: dict[str, Any], decision: policy.Decision, now: datetime
    ) -> bool:
        """Record the policy's decision for a locked task; True if it is to be sent now.

        A task to send is only marked here (``from_status``, ``claim_reason``):
        the caller moves all of them to ``sending`` at once.
        """
        task_id, kind, status = task["task_id"], task["kind"], task["status"]
        if decision.action is policy.Action.SEND:
            task["attempts"] += 1
            reason = f"attempt {task['attempts']}"
            if status == SmsStatus.SENDING:
                reason += " (again: the outcome of the last one is unknown)"
            task["from_status"], task["claim_reason"] = status, reason
            task["status"] = SmsStatus.SENDING
            return True
        assert decision.reason is not None
        if decision.action is policy.Action.DEFER:
            to_status, values = SmsStatus.SCHEDULED, {"next_attempt_at": decision.until}
            metrics.SMS_DEFERRED.labels(decision.reason).inc()
        elif decision.action is policy.Action.SUPPRESS:
            to_status, values = SmsStatus.CANCELLED, {"next_attempt_at": None}
            metrics.SMS_SUPPRESSED.labels(decision.reason).inc()
        else:
            to_status, values = SmsStatus.EXPIRED, {"next_attempt_at": None}
            metrics.SMS.labels(kind, "expired").inc()
        await service.transition(
            conn,
            task_id=task_id,
            from_status=status,
            to_status=to_status,
            actor=service.DISPATCHER,
            reason=decision.note,
            now=now,
            **values,
        )
        return False

    async def _send(self, task: dict[str, Any]) -> None:
        """Send one claimed task and record the outcome in its own transaction."""
        task_id, kind, attempts = task["task_id"], task["kind"], task["attempts"]
        outcome: dict[str, Any]
        try:
            if not task["phone"]:
                raise ProviderError("subscriber has no phone number", retryable=False)
            # The task's own template, else the one named after its kind.
            text = render(
                task["template"] or kind,
                task["language"],
                task["params"],
                zone=self.rules.zone,
                marketing=task["marketing"],
            )
            message_id = await self.sms.send(
                to=task["phone"], text=text, idempotency_key=str(task_id)
            )
            sent_at = self.clock.now()
            outcome = {
                "to_status": SmsStatus.SENT,
                "reason": "provider accepted",
                "provider_message_id": message_id,
                "sent_at": sent_at,
                "next_attempt_at": None,
                "last_error": None,
            }
            metrics.SMS.labels(kind, "sent").inc()
            metrics.TASK_TO_SENT_SECONDS.observe((sent_at - task["created_at"]).total_seconds())
        except (ProviderError, ValueError) as exc:  # ValueError: TemplateError
            retryable = exc if isinstance(exc, ProviderError) and exc.retryable else None
            retry = retryable is not None and attempts < self.settings.sms_max_attempts
            if retryable is not None and retry:
                delay = self.backoff_s(attempts, retryable.retry_after)
                outcome = {
                    "to_status": SmsStatus.PENDING,
                    "reason": f"{exc}; attempt {attempts} of {self.settings.sms_max_attempts}, "
                    f"next in {delay:.1f}s",
                    "last_error": str(exc),
                    "next_attempt_at": self.clock.now() + timedelta(seconds=delay),
                }
                metrics.SMS.labels(kind, "retry").inc()
            else:
                gave_up = retryable is not None
                error = f"{exc}; gave up after {attempts} attempts" if gave_up else str(exc)
                outcome = {"to_status": SmsStatus.FAILED, "reason": error, "last_error": error}
                metrics.SMS.labels(kind, "failed").inc()
            log.warning(
                "SMS not sent", extra={"task_id": str(task_id), "error": str(exc), "retry": retry}
            )
        to_status, reason = outcome.pop("to_status"), outcome.pop("reason")
        # On the send's span when tracing is on (a no-op span otherwise).
        trace.get_current_span().set_attribute("churnwatch.sms.status", str(to_status))
        async with self.engine.begin() as conn:
            recorded = await service.transition(
                conn,
                task_id=task_id,
                from_status=SmsStatus.SENDING,
                to_status=to_status,
                actor=service.DISPATCHER,
                reason=reason,
                now=self.clock.now(),
                **outcome,
            )
        if not recorded:
            # Its receipt overtook the provider's answer and already moved it on
            # (sent, then delivered or failed): that is the truth, keep it.
            log.info(
                "SMS outcome not recorded: the task has moved on",
                extra={"task_id": str(task_id), "outcome": to_status},
            )
