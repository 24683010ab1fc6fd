"""The SMS reconciler: every SMS reaches a final state, even when its receipt never comes.

Receipts can be lost: the provider gives up posting one while outreach is
down, or the task is stuck in ``sending`` because outreach crashed between
the provider's accept and our ``sent``. Every ``SMS_RECONCILE_INTERVAL_S``
the reconciler takes the SMS that have sat in ``sent`` for
``SMS_RECONCILE_AFTER_S``, or in ``sending`` for longer than a live
dispatcher can hold one (``SMS_TIMEOUT_S`` plus a batch at the rate limit,
if that is more), and asks the provider (``SmsClient.status``, by
idempotency key, which is the task id):

- delivered or failed: applied exactly as a receipt is
  (``service.apply_receipt``), so a receipt arriving later, or another
  replica applying the same answer, changes nothing twice;
- accepted, sent or unknown: a ``sending`` task is recorded ``sent`` (the
  provider has it: it must never be sent again); then we wait and ask again;
- 404 (the provider never took it): a ``sending`` task goes back to
  ``pending`` for the dispatcher, which sends it again with the same
  idempotency key, so even a send still in flight cannot make a second SMS;
- no answer (timeout, 5xx): asked again next time.

Each task is asked again at growing intervals (half its age, between
``SMS_RECONCILE_AFTER_S`` and an hour). Once ``SMS_FINAL_STATE_DEADLINE_S``
has passed since it was sent, the last answer that is not final makes it
``unknown``, a final state with the reason, counted in
``churnwatch_outreach_sms_final_unknown_total`` and alerted on: not silence.

Several replicas: a pass locks its candidates ``FOR UPDATE SKIP LOCKED`` and
writes their next check time (``next_attempt_at``, unused in these states)
before it asks, so another replica does not ask about them; every change is
conditional on the state the task is still in, so nothing is applied twice.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.outreach import metrics, service
from services.outreach.schemas import SmsStatus
from services.outreach.settings import OutreachSettings
from services.outreach.sms import ProviderError, ProviderStatus, SmsTransport
from shared.clock import Clock, WallClock
from shared.periodic import Periodic

log = logging.getLogger(__name__)

RECONCILER = "reconciler"
"""Actor of the audit rows the reconciler writes."""

SOURCE = "provider status query"
"""How the audit reasons name the reconciler's news (``apply_receipt``'s ``source``)."""

MAX_CHECK_INTERVAL = timedelta(hours=1)
"""Longest wait between two questions about one SMS."""

MAX_QUERY_CONCURRENCY = 16
"""Most status queries in flight at once."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What the provider said about one task: a status, None (404), or the error."""

    status: ProviderStatus | None
    error: str | None = None


class Reconciler:
    """Asks the provider about SMS without a final state, periodically, until stopped."""

    def __init__(
        self,
        settings: OutreachSettings,
        engine: AsyncEngine,
        sms: SmsTransport,
        *,
        clock: Clock | None = None,
    ) -> None:
        """``clock``: what is due and past its deadline (default: the wall clock)."""
        self.clock: Clock = clock or WallClock()
        self.settings = settings
        self.engine = engine
        self.sms = sms
        self.after = timedelta(seconds=settings.sms_reconcile_after_s)
        # A live dispatcher holds a task in 'sending' while it waits its turn in the
        # rate limit (a whole batch at most) and then for the provider's answer:
        # asking sooner would find the SMS not yet taken and send it back for a retry.
        hold_s = settings.sms_timeout_s + settings.outreach_dispatch_batch / (
            settings.sms_rate_limit_per_s
        )
        self.sending_after = max(self.after, timedelta(seconds=hold_s))
        self.deadline = timedelta(seconds=settings.sms_final_state_deadline_s)
        self._loop = Periodic(
            self._reconcile,
            interval_s=lambda: self.settings.sms_reconcile_interval_s,
            log=log,
            failure="SMS reconcile pass failed; retrying",
        )
        self.passes = 0  # passes made (tests can wait on it)

    def stop(self) -> None:
        """Return from ``run`` after the pass in hand."""
        self._loop.stop()

    async def run(self) -> None:
        """Reconcile until stopped; a failed pass is logged and retried next interval."""
        await self._loop.run()

    async def _reconcile(self) -> None:
        # None rather than the counts: the loop waits its interval after every pass,
        # a full batch too (what this pass left is still due at the next one).
        results = await self.reconcile_once()
        if results:
            log.info("SMS reconciled", extra={"results": results})

    def next_check(self, started_at: datetime, now: datetime) -> datetime:
        """When to ask again about an SMS sent at ``started_at``: half its age, bounded.

        Never past its deadline, so the last question is asked then.
        """
        wait = min(max(self.after, (now - started_at) / 2), MAX_CHECK_INTERVAL)
        deadline_at = started_at + self.deadline
        return min(now + wait, deadline_at) if deadline_at > now else now + self.after

    async def reconcile_once(self, *, now: datetime | None = None) -> dict[str, int]:
        """One pass: claim a batch, ask the provider, apply; return the results counted.

        ``now`` (default: the clock) decides what is due and what is past its
        deadline: tests pass a later time to act as if it had come.
        """
        now = now or self.clock.now()
        self.passes += 1
        async with self.engine.begin() as conn:
            due = await service.lock_unfinished_sms(
                conn,
                sent_before=now - self.after,
                sending_before=now - self.sending_after,
                now=now,
                limit=self.settings.outreach_dispatch_batch,
            )
            await service.defer_checks(
                conn, until={t["task_id"]: self.next_check(t["started_at"], now) for t in due}
            )
            metrics.SMS_UNFINISHED_OLDEST.set(await service.oldest_unfinished_sms(conn, now=now))
        semaphore = asyncio.Semaphore(MAX_QUERY_CONCURRENCY)

        async def ask(task: dict[str, Any]) -> str:
            async with semaphore:
                answer = await self._ask(task["task_id"])
            try:
                return await self._apply(task, answer, now)
            except Exception:
                # One task's surprise must not stop the rest; it is asked again later.
                log.exception("SMS reconcile failed", extra={"task_id": str(task["task_id"])})
                return "error"

        counted: dict[str, int] = {}
        for result in await asyncio.gather(*(ask(task) for task in due)):
            counted[result] = counted.get(result, 0) + 1
            metrics.SMS_RECONCILED.labels(result).inc()
        return counted

    async def _ask(self, task_id: uuid.UUID) -> Answer:
        try:
            return Answer(await self.sms.status(idempotency_key=str(task_id)))
        except ProviderError as exc:
            return Answer(None, str(exc))

    async def _apply(self, task: dict[str, Any], answer: Answer, now: datetime) -> str:
        """Act on one answer in its own transaction; return the result label."""
        task_id, status = task["task_id"], task["status"]
        late = now >= task["started_at"] + self.deadline
        found = answer.status
        async with self.engine.begin() as conn:
            if found is not None and found.final:
                # Exactly as a receipt: locks the row, and changes nothing if the
                # task is already final (a receipt or another replica got there first).
                result, _ = await service.apply_receipt(
                    conn,
                    message_id=found.message_id,
                    reference=str(task_id),
                    delivered=found.state == "delivered",
                    error=found.error,
                    at=min(found.updated_at or now, now),
                    now=now,
                    source=SOURCE,
                )
                if result is service.ReceiptResult.DUPLICATE:
                    return "waiting"
                if result in (service.ReceiptResult.DELIVERED, service.ReceiptResult.FAILED):
                    return result.value
                return "not_found"  # its message id is another one: not this task's answer
            never_taken = found is None and answer.error is None
            if late and not (status == SmsStatus.SENDING and never_taken):
                # A 'sending' task the provider never took is not unknown: it is
                # sent again below (its due time, if any, still expires it).
                return await self._give_up(conn, task_id, status, answer)
            if answer.error is not None:
                return "error"
            if status != SmsStatus.SENDING:
                return "not_found" if found is None else "waiting"
            if found is None:
                # The provider never took it (we crashed before the request reached
                # it): the dispatcher sends it again, with the same idempotency key.
                moved = await service.transition(
                    conn,
                    task_id=task_id,
                    from_status=SmsStatus.SENDING,
                    to_status=SmsStatus.PENDING,
                    actor=RECONCILER,
                    reason="the provider does not have it: to be sent again, same key",
                    now=now,
                    next_attempt_at=now,
                )
                return "resend" if moved else "waiting"
            # The provider has it but has not said its fate: record what it told
            # us, so the dispatcher never sends it again, and ask later.
            adopted = await service.transition(
                conn,
                task_id=task_id,
                from_status=SmsStatus.SENDING,
                to_status=SmsStatus.SENT,
                actor=RECONCILER,
                reason=f"the provider has it ({SOURCE}: {found.state})",
                now=now,
                provider_message_id=found.message_id,
                sent_at=min(found.updated_at or now, now),
                next_attempt_at=None,
                last_error=None,
            )
            return "adopted" if adopted else "waiting"

    async def _give_up(
        self, conn: AsyncConnection, task_id: uuid.UUID, status: str, answer: Answer
    ) -> str:
        """Past the deadline without a final answer: the task becomes ``unknown``."""
        found = answer.status
        if answer.error is not None:
            why = f"the provider did not answer ({answer.error})"
        elif found is None:
            why = "the provider does not know it"
        else:
            why = f"the provider still says {found.state}"
        reason = f"no final state within {self.deadline.total_seconds():g} s: {why}"
        now = self.clock.now()
        if not await service.transition(
            conn,
            task_id=task_id,
            from_status=status,
            to_status=SmsStatus.UNKNOWN,
            actor=RECONCILER,
            reason=reason,
            now=now,
            last_error=reason,
            next_attempt_at=None,
        ):
            return "waiting"  # it moved on meanwhile (a receipt, another replica)
        metrics.SMS_FINAL_UNKNOWN.inc()
        log.warning("SMS fate unknown", extra={"task_id": str(task_id), "reason": reason})
        return "unknown"
