"""SMPP 3.4 to the operator's SMSC (``SMS_TRANSPORT=smpp``), on aiosmpplib.

aiosmpplib keeps the session: it binds as a transceiver, sends ``enquire_link``
after ``SMPP_ENQUIRE_LINK_S`` without traffic, encodes and decodes the PDUs,
answers the SMSC's ``deliver_sm``, and binds again after a loss (waits from 1 s
doubling to ``SMPP_RECONNECT_MAX_S``). ``SmppTransport`` puts the dispatcher's
``send`` on top of it:

- the text becomes one short message or concatenated segments
  (``smpp_text``: GSM 7-bit when it fits, else UCS-2), each a ``submit_sm``
  with ``registered_delivery`` 1 (a final receipt, success or failure);
- at most ``SMPP_WINDOW`` submit_sm are unanswered at once;
- ``ESME_RTHROTTLED`` and ``ESME_RMSGQFUL`` pause every send, from
  ``SMPP_THROTTLE_BACKOFF_S`` doubling to 30 s, and the segment is submitted
  again; other refusals fail the SMS (or retry it later, for the SMSC's
  temporary errors);
- a send made while the session is down waits up to ``SMPP_RESPONSE_TIMEOUT_S``
  for the next bind, then fails retryable (the dispatcher's backoff).

**No idempotency key in SMPP.** A segment is "written" once aiosmpplib hands
it to the socket. One never written (queued when the session dropped, or
given up waiting) is withdrawn, never sent later, and safe to send again. One
written and unanswered when the session drops, or after
``SMPP_RESPONSE_TIMEOUT_S``, is ambiguous: the SMSC may have it. We submit it
again (at least once): an SMSC that read it and died before answering would
send it twice, one that never read it (the common case: a restart closes the
connection, and what it had not read is gone) does not lose it. The same
holds for outreach's own crash between the SMSC's answer and our ``sent``
record: the task stays ``sending`` and is sent again after
``OUTREACH_SENDING_STALE_S``. A planned SMSC restart (unbind, or closing the
connection after answering what it read) loses and doubles nothing. A resend
keeps each segment's concatenation reference and number, so a handset that
got part of the first try completes the message.

**Receipts.** ``deliver_sm`` with a delivery receipt (``esm_class`` 0x04) is
applied by ``service.apply_receipt``, as the HTTP webhook's: ``DELIVRD`` is
``delivered``, ``UNDELIV``/``EXPIRED``/``DELETED``/``REJECTD``/``UNKNOWN``
are ``failed``. The task's ``provider_message_id`` is its first segment's id;
a concatenated SMS is delivered once every segment's receipt says so, and
failed at the first that does not. The segments are remembered in memory
(the last 100,000 SMS): after outreach restarts, a receipt is matched by its
message id alone, so the first segment's decides. The SMSC acknowledges
nothing of ours until the receipt is in PostgreSQL (the ``deliver_sm_resp``
goes after), and receipts are stored by a worker of their own, in the order
read, so a slow database never holds back the answers to ``submit_sm`` read
on the same connection (``_Esme``: late answers would mean segments sent
twice). SMPP's ``query_sm`` is not in aiosmpplib: ``status`` answers
that the SMSC cannot be asked, and the reconciler makes an SMS without a
receipt ``unknown`` after ``SMS_FINAL_STATE_DEADLINE_S``.

Phone numbers and the password never reach a log: aiosmpplib's own log lines
are passed on without their fields (which carry whole PDUs).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmpplib import ESME, AbstractBroker, AbstractHook, AbstractRetryTimer, PhoneNumber
from aiosmpplib.correlator import SimpleCorrelator
from aiosmpplib.protocol import DeliverSm, DeliverSmResp, SmppMessage, SubmitSm, SubmitSmResp
from aiosmpplib.state import NPI, TON, PduHeader, SmppCommandStatus
from aiosmpplib.throttle import AbstractThrottleHandler
from sqlalchemy.ext.asyncio import AsyncEngine

from services.outreach import metrics, service
from services.outreach.settings import OutreachSettings
from services.outreach.smpp_text import prepare
from services.outreach.sms import ProviderError, ProviderStatus
from shared.clock import Clock

log = logging.getLogger(__name__)

ReceiptSink = Callable[..., Awaitable[None]]
"""``sink(message_id=..., reference=..., delivered=..., error=...)``: applies one receipt."""

THROTTLE_MAX_S = 30.0
"""Longest pause after the SMSC's throttling answers."""

MAX_TRIES = 8
"""Most submissions of one segment in one send (throttled, or lost with the session)."""

REMEMBERED = 100_000
"""SMS whose segments are remembered for their receipts."""

THROTTLING = {SmppCommandStatus.ESME_RTHROTTLED, SmppCommandStatus.ESME_RMSGQFUL}
TEMPORARY = {
    SmppCommandStatus.ESME_RSYSERR,
    SmppCommandStatus.ESME_RSUBMITFAIL,
    SmppCommandStatus.ESME_RX_T_APPN,
    SmppCommandStatus.ESME_RINVBNDSTS,
}
"""Refusals worth trying again later (the dispatcher's backoff); any other fails the SMS."""

FINAL_STATES = {"DELIVRD", "UNDELIV", "EXPIRED", "DELETED", "REJECTD", "UNKNOWN"}
"""Receipt ``stat`` values that are a message's fate (ACCEPTD and ENROUTE are not)."""


class _Lost(Exception):
    """The session ended with the segment written and unanswered."""


@dataclass(eq=False)
class _Message:
    """A sent SMS whose receipts are awaited: its task, first segment, and outcomes so far."""

    reference: str
    first_id: str
    parts: int
    outcomes: dict[str, str | None] = field(default_factory=dict)  # message id -> error


@dataclass(eq=False)
class _Pending:
    """One submit_sm on its way: whether it was written, its answer to come."""

    future: asyncio.Future[tuple[SmppCommandStatus, str]]
    sms: _Message
    written: bool = False
    abandoned: bool = False


class _Broker(AbstractBroker):
    """aiosmpplib's outbound queue, from which a segment not yet written can be withdrawn."""

    def __init__(self, live: Callable[[SmppMessage], bool]) -> None:
        self.queue: asyncio.Queue[SmppMessage] = asyncio.Queue()
        self.live = live

    async def enqueue(self, message: SmppMessage) -> None:
        """Queue one PDU for the session's sender."""
        await self.queue.put(message)

    async def dequeue(self) -> SmppMessage:
        """The next PDU to write (the session's sender waits here); withdrawn ones are dropped."""
        while True:
            message = await self.queue.get()
            if self.live(message):
                return message


class _NoThrottle(AbstractThrottleHandler):
    """Throttling is ``SmppTransport``'s (a pause and a resubmission), not aiosmpplib's."""

    async def throttled(self) -> None:
        """Nothing: the transport sees the answer."""

    async def not_throttled(self) -> None:
        """Nothing."""

    async def allow_request(self) -> bool:
        """Always."""
        return True

    async def throttle_delay(self) -> float:
        """Never asked."""
        return 0.0


class _Reconnect(AbstractRetryTimer):
    """Waits between binds (1 s doubling to the cap); tells the transport of binds and losses."""

    def __init__(self, transport: SmppTransport, max_s: float) -> None:
        self.transport, self.max_s, self.delay = transport, max_s, 0.0

    async def wait(self) -> None:
        """After a session ended (or a bind failed): fail what it left unanswered, then wait."""
        self.transport._session_lost()
        if self.delay:
            await asyncio.sleep(self.delay)
        self.delay = min(self.max_s, max(1.0, self.delay * 2))

    def reset(self) -> None:
        """Bound."""
        self.delay = 0.0
        self.transport._session_bound()

    def next_delay(self) -> float:
        """The wait before the next bind attempt."""
        return self.delay


class _Esme(ESME):
    """aiosmpplib's ESME, with receipts answered after they are stored and no socket left open.

    aiosmpplib reads one PDU at a time and awaits the hook before reading the
    next: applying a receipt in the hook (a database commit) would hold back
    the ``submit_sm_resp`` behind it. Under a slow database the answers then
    come after ``SMPP_RESPONSE_TIMEOUT_S``, or are still unread when the SMSC
    closes the connection, and the segments they answer are submitted again: a
    subscriber would get the SMS twice. So a ``deliver_sm`` is handed to the
    transport's receipt worker and not answered here; the worker answers it
    (``deliver_sm_resp``) once the receipt is in PostgreSQL, on the session it
    came on. aiosmpplib also drops a connection's writer without closing it
    (on a reconnect, a refused bind, a stop): closed here.
    """

    def __init__(self, *, receipts: Callable[[DeliverSm, int], None], **options: Any) -> None:
        super().__init__(**options)
        self._on_deliver = receipts

    async def _handle_request(self, pdu: bytes, header: PduHeader) -> SmppMessage | None:
        message = await super()._handle_request(pdu, header)
        if isinstance(message, DeliverSm):
            self._on_deliver(message, header.sequence_num)
            return None  # aiosmpplib then sends no answer: the receipt worker will
        return message

    async def answer_deliver(self, sequence_num: int) -> None:
        """Answer a ``deliver_sm`` (its receipt is stored) on the session it came on."""
        await self._send_data(DeliverSmResp(sequence_num))

    async def connect(self) -> None:
        if self._session_state != self.bind_mode.session_state:
            self.close_socket()  # the last session's, or a refused bind's
        await super().connect()

    async def _disconnect(self) -> None:
        writer: asyncio.StreamWriter | None = getattr(self, "_writer", None)
        await super()._disconnect()
        if writer is not None:
            writer.close()

    def close_socket(self) -> None:
        """Close the connection's socket, if one is left."""
        # aiosmpplib's attribute (untyped there): the open connection's writer, or None.
        writer: asyncio.StreamWriter | None = getattr(self, "_writer", None)
        if writer is not None:
            writer.close()
            self._writer = None


class _Hook(AbstractHook):
    """aiosmpplib's callbacks, passed to the transport."""

    def __init__(self, transport: SmppTransport) -> None:
        self.transport = transport

    async def sending(self, smpp_message: SmppMessage, pdu: bytes, client_id: str) -> None:
        """A PDU is about to be written; a withdrawn segment is refused (ValueError skips it)."""
        if isinstance(smpp_message, SubmitSm):
            self.transport._writing(smpp_message.log_id)

    async def received(self, smpp_message: SmppMessage | None, pdu: bytes, client_id: str) -> None:
        """An answer to a submit_sm (a deliver_sm goes to the receipt worker: ``_Esme``)."""
        if isinstance(smpp_message, SubmitSmResp):
            self.transport._answered(smpp_message)

    async def send_error(self, smpp_message: SmppMessage, error: Exception, client_id: str) -> None:
        """A PDU could not be written (or was refused by ``sending``): already accounted for."""


class _Scrubbed(logging.Handler):
    """aiosmpplib's log lines without their fields: those carry whole PDUs, phone numbers too."""

    def emit(self, record: logging.LogRecord) -> None:
        """Pass the event's name on to our logger."""
        event = str(record.msg).split(" >>> ", 1)[0]
        # Receipts are matched by the transport, not by aiosmpplib's correlator.
        level = logging.DEBUG if "correlate delivery receipt" in event else record.levelno
        log.log(level, "SMPP session: %s", event)


class SmppTransport:
    """SMS over SMPP 3.4: ``send`` returns the SMSC's message id; receipts go to ``sink``."""

    def __init__(self, settings: OutreachSettings, *, sink: ReceiptSink) -> None:
        """Configure the session (nothing connects before ``start``)."""
        self.settings = settings
        self.sink = sink
        self.timeout_s = settings.smpp_response_timeout_s
        self._broker = _Broker(self._live)
        self._esme = _Esme(
            receipts=self._queue_receipt,
            smsc_host=settings.smpp_host,
            smsc_port=settings.smpp_port,
            system_id=settings.smpp_system_id,
            password=settings.smpp_password.get_secret_value(),
            system_type=settings.smpp_system_type,
            client_id="churnwatch-outreach",
            enquire_link_interval=float(settings.smpp_enquire_link_s),
            socket_timeout=float(settings.smpp_response_timeout_s),
            log_level=logging.WARNING,
            log_handler=_Scrubbed(),
            hook=_Hook(self),
            broker=self._broker,
            throttle_handler=_NoThrottle(),
            # Its receipt correlation is not used (``_messages`` is ours): kept briefly.
            correlator=SimpleCorrelator(
                "churnwatch",
                max_ttl_response=max(1.0, float(settings.smpp_response_timeout_s)),
                max_ttl_delivery=60.0,
            ),
            retry_timer=_Reconnect(self, settings.smpp_reconnect_max_s),
        )
        self._source = PhoneNumber(
            settings.smpp_source_addr, TON(settings.smpp_source_ton), NPI(settings.smpp_source_npi)
        )
        self._window = asyncio.Semaphore(settings.smpp_window)
        self._pending: dict[str, _Pending] = {}
        self._messages: dict[str, _Message] = {}  # message id of every segment -> its SMS
        self._ids = itertools.count(1)
        self._bound = asyncio.Event()
        self._throttled_until = 0.0
        self._throttle_s = 0.0
        self._task: asyncio.Task[None] | None = None
        # deliver_sm waiting to be stored and answered, each with the session it came on.
        self._receipts: asyncio.Queue[tuple[DeliverSm, int, int]] = asyncio.Queue()
        self._receipt_worker: asyncio.Task[None] | None = None
        self.binds = 0  # sessions bound so far (tests and the log watch reconnects)

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start the session in the background; it binds, and binds again after a loss."""
        self._task = asyncio.create_task(self._esme.start(), name="outreach-smpp")
        self._receipt_worker = asyncio.create_task(self._store_receipts(), name="smpp-receipts")

    async def aclose(self) -> None:
        """Unbind and stop."""
        if self._task is None:
            return
        try:
            # The unbind's answer, or the SMSC closing: not forever.
            await asyncio.wait_for(self._esme.stop(), self.timeout_s)
        except TimeoutError:
            log.warning("SMPP unbind unanswered; closing anyway")
        if not self._task.done():
            self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        # Receipts not stored yet stay unanswered: the SMSC delivers them again.
        if self._receipt_worker is not None:
            self._receipt_worker.cancel()
            await asyncio.gather(self._receipt_worker, return_exceptions=True)
            self._receipt_worker = None
        self._esme.close_socket()
        self._bound.clear()  # closed, not lost: no rebind to announce
        self._session_lost()

    @property
    def bound(self) -> bool:
        """Whether a session is bound now."""
        return self._bound.is_set()

    def _session_bound(self) -> None:
        self.binds += 1
        metrics.SMPP_BINDS.inc()
        self._bound.set()
        log.info("SMPP session bound", extra={"binds": self.binds})

    def _session_lost(self) -> None:
        was_bound = self._bound.is_set()
        self._bound.clear()
        for pending in self._pending.values():
            if pending.written and not pending.future.done():
                pending.future.set_exception(_Lost())
        if was_bound:
            log.warning("SMPP session lost; binding again")

    # --- sending -----------------------------------------------------------------------

    async def send(self, *, to: str, text: str, idempotency_key: str) -> str:
        """Submit the SMS (all its segments); return the first segment's message id.

        Raises ``ProviderError``: retryable when the SMSC is unreachable, busy
        or failing for now; not retryable when it refuses the message itself.
        """
        try:
            encoded = prepare(text, key=idempotency_key)
        except ValueError as exc:
            raise ProviderError(str(exc), retryable=False) from exc
        destination = PhoneNumber(
            to.removeprefix("+"), TON(self.settings.smpp_dest_ton), NPI(self.settings.smpp_dest_npi)
        )
        # Remembered as each segment is taken: its receipt can come before the next answer.
        message = _Message(idempotency_key, "", len(encoded.parts))
        with metrics.PROVIDER_SECONDS.time():
            for part in encoded.parts:
                await self._submit_part(
                    SubmitSm(
                        short_message=" ",  # the encoded part below is what goes
                        source=self._source,
                        destination=destination,
                        esm_class=encoded.esm_class,
                        registered_delivery=0x01,
                        encoding=encoded.encoding,
                        auto_message_payload=True,  # never re-split by aiosmpplib
                    ),
                    part,
                    message,
                )
        return message.first_id

    async def status(self, *, idempotency_key: str) -> ProviderStatus | None:
        """SMPP cannot be asked by our key (and aiosmpplib has no ``query_sm``): always an error."""
        raise ProviderError("SMPP: the SMSC cannot be asked about a message", retryable=True)

    async def _submit_part(self, message: SubmitSm, part: bytes, sms: _Message) -> str:
        """Submit one segment until the SMSC takes or refuses it; return its message id."""
        for _ in range(MAX_TRIES):
            await self._wait_throttle()
            if not self._bound.is_set():
                try:
                    await asyncio.wait_for(self._bound.wait(), self.timeout_s)
                except TimeoutError:
                    raise ProviderError("SMSC not bound", retryable=True) from None
            async with self._window:
                try:
                    status, message_id = await self._exchange(message, part, sms)
                except _Lost:
                    continue  # written, unanswered: submitted again (at least once)
            if status == SmppCommandStatus.ESME_ROK:
                self._throttle_s = 0.0
                return message_id
            if status in THROTTLING:
                self._throttle()
                continue
            raise ProviderError(f"SMSC refused: {status.name}", retryable=status in TEMPORARY)
        raise ProviderError(f"SMSC did not take it in {MAX_TRIES} tries", retryable=True)

    async def _exchange(
        self, message: SubmitSm, part: bytes, sms: _Message
    ) -> tuple[SmppCommandStatus, str]:
        """Queue the segment and await its answer; ``_Lost`` if that is now unknowable."""
        log_id = f"sm-{next(self._ids)}"
        pending = _Pending(asyncio.get_running_loop().create_future(), sms)
        self._pending[log_id] = pending
        message.log_id = log_id
        message.set_encoded_message(part)
        try:
            await self._broker.enqueue(message)
            return await asyncio.wait_for(asyncio.shield(pending.future), self.timeout_s)
        except TimeoutError:
            pending.abandoned = True  # not written yet: it never will be
            if pending.written:
                raise _Lost() from None
            raise ProviderError("SMSC session not ready", retryable=True) from None
        finally:
            pending.abandoned = True
            del self._pending[log_id]

    def _live(self, message: SmppMessage) -> bool:
        """Whether a queued PDU is still wanted (a submit_sm not given up on)."""
        if not isinstance(message, SubmitSm):
            return True
        pending = self._pending.get(message.log_id)
        return pending is not None and not pending.abandoned

    def _writing(self, log_id: str) -> None:
        pending = self._pending.get(log_id)
        if pending is None or pending.abandoned:
            raise ValueError("withdrawn")  # aiosmpplib skips it: sent never
        pending.written = True

    def _answered(self, resp: SubmitSmResp) -> None:
        pending = self._pending.get(resp.log_id)
        if pending is not None and not pending.future.done():
            if resp.command_status == SmppCommandStatus.ESME_ROK:
                # Now, not when the sender wakes: its receipt may be the next PDU read.
                self._remember(pending.sms, resp.message_id)
            pending.future.set_result((resp.command_status, resp.message_id))

    async def _wait_throttle(self) -> None:
        # A pause can grow while we wait (another segment throttled): wait it out too.
        while (wait := self._throttled_until - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait)

    def _throttle(self) -> None:
        """The SMSC said it is too busy: every send pauses, longer each time in a row."""
        base = self.settings.smpp_throttle_backoff_s
        self._throttle_s = min(THROTTLE_MAX_S, self._throttle_s * 2 if self._throttle_s else base)
        self._throttled_until = max(self._throttled_until, time.monotonic() + self._throttle_s)
        metrics.SMPP_THROTTLED.inc()
        log.warning("SMSC throttling; pausing sends", extra={"pause_s": self._throttle_s})

    # --- receipts ----------------------------------------------------------------------

    def _remember(self, message: _Message, message_id: str) -> None:
        message.first_id = message.first_id or message_id
        self._messages[message_id] = message
        while len(self._messages) > REMEMBERED:
            del self._messages[next(iter(self._messages))]

    def _queue_receipt(self, pdu: DeliverSm, sequence_num: int) -> None:
        """A deliver_sm read (``_Esme``): stored and answered in order by ``_store_receipts``."""
        self._receipts.put_nowait((pdu, sequence_num, self.binds))

    async def _store_receipts(self) -> None:
        """Apply each deliver_sm in the order read, then answer it on the session it came on.

        A session lost meanwhile has taken the answer's sequence number with it:
        the receipt is stored all the same, and the SMSC, never answered,
        delivers it again on the next session (applied once: ``apply_receipt``
        sees the duplicate).
        """
        while True:
            pdu, sequence_num, session = await self._receipts.get()
            await self._deliver(pdu)
            if self._bound.is_set() and session == self.binds:
                try:
                    await self._esme.answer_deliver(sequence_num)
                except (OSError, RuntimeError, AttributeError):
                    log.info("SMPP session gone before a receipt could be answered")

    async def _deliver(self, pdu: DeliverSm) -> None:
        """A deliver_sm: a receipt is applied before the SMSC is answered; an MO SMS is not ours."""
        if not pdu.is_receipt():
            log.info("SMPP deliver_sm that is no receipt ignored (replies come by webhook)")
            return
        receipt = pdu.parse_receipt()
        message_id, stat = str(receipt.get("id") or ""), str(receipt.get("stat") or "").upper()
        if not message_id or stat not in FINAL_STATES:
            return  # not a final receipt (ENROUTE, ACCEPTD): the final one follows
        error = None if stat == "DELIVRD" else f"stat:{stat} err:{receipt.get('err', '')}"
        message = self._messages.get(message_id)
        if message is None:
            # Sent before outreach started: found by its message id (the first segment's).
            await self._apply(message_id, None, error)
            return
        message.outcomes[message_id] = error
        failed = next((e for e in message.outcomes.values() if e is not None), None)
        if failed is None and len(message.outcomes) < message.parts:
            return  # delivered so far; the other segments' receipts decide
        if failed is not None and sum(e is not None for e in message.outcomes.values()) > 1:
            return  # its failure was applied with the first failed segment
        await self._apply(message.first_id, message.reference, failed)

    async def _apply(self, message_id: str, reference: str | None, error: str | None) -> None:
        try:
            await self.sink(
                message_id=message_id, reference=reference, delivered=error is None, error=error
            )
        except Exception:
            # Acknowledged all the same (aiosmpplib answers once this returns): the
            # reconciler's deadline gives the SMS a final state ('unknown').
            log.exception("SMPP receipt not applied", extra={"message_id": message_id})


def receipt_sink(engine: AsyncEngine, clock: Clock) -> ReceiptSink:
    """Applies an SMPP receipt as the webhook applies an HTTP one (``service.apply_receipt``)."""

    async def apply(
        *, message_id: str, reference: str | None, delivered: bool, error: str | None
    ) -> None:
        now = clock.now()
        async with engine.begin() as conn:
            result, _ = await service.apply_receipt(
                conn,
                message_id=message_id,
                reference=reference,
                delivered=delivered,
                error=error,
                at=now,
                now=now,
                source="SMPP receipt",
            )
        log.debug("SMPP receipt applied", extra={"message_id": message_id, "result": result.value})
        metrics.RECEIPTS.labels(
            "unknown" if result is service.ReceiptResult.NOT_SENT else result.value
        ).inc()

    return apply
