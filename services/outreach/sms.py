"""SMS: the provider client over httpx, and the dispatcher loop (templates: ``templates``).

Sending is an outbox: the consumer only stores tasks; the dispatcher claims
pending SMS tasks from PostgreSQL, sends each through the provider with the
task id as idempotency key, and records the outcome. A crash between the
provider's accept and our ``sent`` leaves the task in ``sending``; it is
claimed again later and resent with the same key, which the provider
deduplicates, so no subscriber gets the SMS twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from services.outreach import metrics, service
from services.outreach.schemas import SmsStatus
from services.outreach.settings import OutreachSettings
from services.outreach.templates import render

log = logging.getLogger(__name__)


class ProviderError(Exception):
    """The provider refused or failed; ``retryable`` says whether to try again."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass
class SmsClient:
    """Client of the generic JSON HTTP SMS provider protocol (see docs/operations.md)."""

    client: httpx.AsyncClient
    token: str
    sender_id: str

    async def send(self, *, to: str, text: str, idempotency_key: str) -> str:
        """Submit one SMS; return the provider's message id.

        Raises ``ProviderError`` (retryable on timeouts, connection errors, 429 and
        5xx; not retryable on other 4xx).
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
        raise ProviderError(f"provider answered {response.status_code}", retryable=retryable)


class Dispatcher:
    """Claims due SMS tasks and sends them, until stopped."""

    def __init__(self, settings: OutreachSettings, engine: AsyncEngine, sms: SmsClient) -> None:
        self.settings = settings
        self.engine = engine
        self.sms = sms
        self.wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self.passes = 0  # dispatch passes made (tests wait on it, as on batches_handled)

    def stop(self) -> None:
        """Exit after the SMS in hand."""
        self._stopping.set()
        self.wakeup.set()

    async def run(self) -> None:
        """Dispatch until ``stop()``; a failure is logged and retried after the interval."""
        while not self._stopping.is_set():
            try:
                handled = await self.dispatch_once()
            except Exception:
                log.exception("SMS dispatch failed; retrying")
                handled = 0
            if handled == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self.wakeup.wait(), self.settings.outreach_dispatch_interval_s
                    )
                self.wakeup.clear()

    async def dispatch_once(self, *, now: datetime | None = None) -> int:
        """Expire overdue tasks, claim a batch, send each; return how many were claimed.

        ``now`` (default: the clock) decides what is due: tests pass a later
        time to act as if it had come.
        """
        now = now or datetime.now(UTC)
        self.passes += 1
        async with self.engine.begin() as conn:
            expired = await service.expire_overdue_sms(conn, now=now)
            metrics.CALL_QUEUE_DEPTH.set(await service.count_queued_calls(conn))
            claimed = await service.claim_sms(
                conn,
                limit=self.settings.outreach_dispatch_batch,
                now=now,
                stale_before=now - timedelta(seconds=self.settings.outreach_sending_stale_s),
            )
        if expired:
            metrics.SMS.labels("any", "expired").inc(expired)
        for task in claimed:
            if self._stopping.is_set():
                break  # left in 'sending'; reclaimed after the stale interval
            try:
                await self._send(task)
            except Exception:
                # One task's surprise must not hold the rest of the batch in 'sending';
                # this one is reclaimed after OUTREACH_SENDING_STALE_S.
                log.exception(
                    "SMS dispatch of one task failed", extra={"task_id": str(task["task_id"])}
                )
        return len(claimed)

    async def _send(self, task: dict[str, Any]) -> None:
        task_id, kind = task["task_id"], task["kind"]
        outcome: dict[str, Any]
        try:
            if not task["phone"]:
                raise ProviderError("subscriber has no phone number", retryable=False)
            # The task's own template, else the one named after its kind.
            text = render(task["template"] or kind, task["language"], task["params"])
            message_id = await self.sms.send(
                to=task["phone"], text=text, idempotency_key=str(task_id)
            )
            outcome = {
                "to_status": SmsStatus.SENT,
                "reason": "provider accepted",
                "provider_message_id": message_id,
                "last_error": None,
            }
            metrics.SMS.labels(kind, "sent").inc()
            metrics.TASK_TO_SENT_SECONDS.observe(
                (datetime.now(UTC) - task["created_at"]).total_seconds()
            )
        except (ProviderError, ValueError) as exc:
            retry = (
                isinstance(exc, ProviderError)
                and exc.retryable
                and task["attempts"] < self.settings.sms_max_attempts
            )
            if retry:
                # Exponential backoff with full jitter between attempts.
                delay = random.uniform(0, self.settings.sms_retry_base_s * 2 ** task["attempts"])
                outcome = {
                    "to_status": SmsStatus.PENDING,
                    "reason": str(exc),
                    "last_error": str(exc),
                    "next_attempt_at": datetime.now(UTC) + timedelta(seconds=delay),
                }
                metrics.SMS.labels(kind, "retry").inc()
            else:
                outcome = {
                    "to_status": SmsStatus.FAILED,
                    "reason": str(exc),
                    "last_error": str(exc),
                }
                metrics.SMS.labels(kind, "failed").inc()
            log.warning(
                "SMS not sent", extra={"task_id": str(task_id), "error": str(exc), "retry": retry}
            )
        to_status, reason = outcome.pop("to_status"), outcome.pop("reason")
        async with self.engine.begin() as conn:
            await service.transition(
                conn,
                task_id=task_id,
                from_status=SmsStatus.SENDING,
                to_status=to_status,
                actor="dispatcher",
                reason=reason,
                now=datetime.now(UTC),
                **outcome,
            )
