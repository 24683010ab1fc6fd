"""``churnwatch sms-gateway``: a real HTTP SMS provider stand-in.

It speaks the same generic JSON protocol outreach uses for a real provider
(docs/operations.md, "SMS provider protocol"): ``POST /v1/messages`` with a
bearer token and an ``Idempotency-Key``, then a delivery receipt signed with
HMAC-SHA256 posted back to outreach, and ``GET /v1/status`` answers what
became of a message (by idempotency key or message id). It keeps what it was
sent in memory and lists it, and it can misbehave on demand (``Faults``: slow
answers, 500s, a hang after accepting, lost receipts, a status query that
fails or knows nothing) so tests can check what outreach does then. Every
route but the probes wants the bearer token (``SMS_GATEWAY_TOKEN``): the
listing holds phone numbers and texts, and the fault modes change what it
does. It stands in for the operator's SMS provider on the embedded stack and
in tests; it never sends a real SMS.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import httpx
import orjson
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from services.outreach.policy import SIGNATURE_HEADER, sign
from shared.errors import (
    Conflict,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
    UnprocessableEntity,
    install_error_handlers,
)
from shared.events import PhoneNumber

log = logging.getLogger(__name__)

RECEIPT_ATTEMPTS = 5
"""Tries to post one receipt (outreach restarting, a 5xx) before giving it up."""


class Faults(BaseModel):
    """Fault modes, for tests: set at start (``SMS_GATEWAY_FAULTS``) or by ``PUT /v1/faults``.

    A count (``error_500``, ``timeout_after_accept``) applies to the next N
    submissions and goes down as they come; ``null`` applies to every one
    until changed; 0 is off.
    """

    model_config = ConfigDict(extra="forbid")

    slow_s: float = Field(
        default=0, ge=0, le=600, description="Wait this long before answering each submission."
    )
    error_500: int | None = Field(
        default=0, ge=0, description="Answer 500 (storing nothing) to the next N submissions."
    )
    timeout_after_accept: int | None = Field(
        default=0,
        ge=0,
        description="Store the next N submissions (and send their receipts), then wait "
        "hang_s before answering: past the client's timeout.",
    )
    hang_s: float = Field(default=30, ge=0, le=3600, description="See timeout_after_accept.")
    drop_receipts: bool = Field(default=False, description="Never send delivery receipts.")
    fail_deliveries: bool = Field(
        default=False, description="Receipts say 'failed' instead of 'delivered'."
    )
    receipt_delay_s: float = Field(
        default=0, ge=0, le=600, description="Wait this long after accepting before the receipt."
    )
    status_error_500: bool = Field(
        default=False, description="Status queries answer 500 (a provider that never says)."
    )
    status_unknown: bool = Field(
        default=False,
        description="Status queries answer state 'unknown' (the provider has the message "
        "but does not know its fate).",
    )


class GatewaySettings(BaseSettings):
    """Settings of the stand-in gateway."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True
    sms_gateway_port: int = 8085
    sms_gateway_token: str = "dev-gateway-token"  # noqa: S105 - matches outreach's default
    sms_receipt_secret: SecretStr = SecretStr("dev-receipt-secret")  # matches outreach's
    sms_gateway_receipt_url: str = Field(
        default="http://127.0.0.1:8084/v1/sms/receipts",
        description="Where delivery receipts are posted; empty: none are sent.",
    )
    sms_gateway_inbound_url: str = Field(
        default="http://127.0.0.1:8084/v1/sms/inbound",
        description="Where POST /v1/simulate/inbound posts the subscriber's reply.",
    )
    sms_gateway_faults: Faults = Field(
        default_factory=Faults, description="Fault modes at start, as JSON."
    )


ProviderState = Literal["accepted", "sent", "delivered", "failed", "unknown"]
"""What a provider knows of a message (the status query's ``state``)."""


class MessageIn(BaseModel):
    """An SMS submitted by a client."""

    to: PhoneNumber
    text: str = Field(min_length=1, max_length=1600)
    sender: str | None = Field(default=None, max_length=11)
    reference: str | None = Field(default=None, max_length=128)


class MessageOut(MessageIn):
    """A stored SMS."""

    message_id: str
    status: ProviderState = Field(
        description="accepted, then delivered or failed (as its receipt says)."
    )
    idempotency_key: str | None
    received_at: datetime
    status_at: datetime | None = Field(
        default=None, description="When it was delivered or failed; null while accepted."
    )
    error: str | None = Field(default=None, description="Why its delivery failed.")
    receipt: str = Field(
        default="pending",
        description="What became of its receipt: pending, sent, dropped, off, or why it failed.",
    )


class MessageStatus(BaseModel):
    """The answer to ``GET /v1/status``: what became of one message."""

    state: ProviderState = Field(
        description="accepted (taken, not yet handed on), sent (handed to the network), "
        "delivered or failed (final), unknown (the provider has it but not its fate)."
    )
    message_id: str
    idempotency_key: str | None
    reference: str | None
    accepted_at: datetime
    updated_at: datetime = Field(description="When the state was last known to change.")
    error: str | None = Field(default=None, description="Why it failed, if it did.")


class InboundSimulation(BaseModel):
    """A reply to simulate, as if the subscriber had sent it."""

    model_config = ConfigDict(populate_by_name=True)

    sender: PhoneNumber = Field(alias="from")
    text: str = Field(min_length=1, max_length=1600)


class _RetryableAnswer(Exception):
    """Outreach answered 5xx: try the receipt again."""


class GatewayState:
    """The stand-in's memory: messages, fault modes, receipts in flight."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.messages: list[MessageOut] = []
        self.by_key: dict[str, MessageOut] = {}
        self.by_id: dict[str, MessageOut] = {}
        self.faults = settings.sms_gateway_faults.model_copy()
        self._background: set[asyncio.Task[None]] = set()

    def take(self, fault: Literal["error_500", "timeout_after_accept"]) -> bool:
        """Whether a counted fault applies to this submission (and count it down)."""
        remaining = getattr(self.faults, fault)
        if remaining is None:
            return True
        if remaining > 0:
            setattr(self.faults, fault, remaining - 1)
            return True
        return False

    def later(self, coroutine: Any) -> None:
        """Run in the background, keeping a reference so the task is not collected."""
        task: asyncio.Task[None] = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        """Cancel the receipts still in flight (at shutdown)."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def post_signed(self, url: str, payload: dict[str, Any]) -> httpx.Response:
        """POST ``payload`` as JSON with an ``X-Signature``, as a provider signs webhooks."""
        raw = orjson.dumps(payload)
        secret = self.settings.sms_receipt_secret.get_secret_value()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(raw, secret, timestamp=int(time.time())),
        }
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.post(url, content=raw, headers=headers)

    async def send_receipt(self, message: MessageOut) -> None:
        """Deliver (pretend to) and post the signed receipt; retried on errors and 5xx."""
        faults = self.faults
        if faults.receipt_delay_s:
            await asyncio.sleep(faults.receipt_delay_s)
        failed = faults.fail_deliveries
        message.status = "failed" if failed else "delivered"
        message.error = "fault mode fail_deliveries" if failed else None
        message.status_at = datetime.now(UTC)
        url = self.settings.sms_gateway_receipt_url
        if not url:
            message.receipt = "off"
            return
        if self.faults.drop_receipts:
            message.receipt = "dropped"
            return
        payload = {
            "message_id": message.message_id,
            "reference": message.reference,
            "status": message.status,
            "error": message.error,
            "at": message.status_at.isoformat(),
        }
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(RECEIPT_ATTEMPTS),
                wait=wait_random_exponential(multiplier=0.2, max=5),
                retry=retry_if_exception_type((httpx.TransportError, _RetryableAnswer)),
                reraise=True,
            ):
                with attempt:
                    response = await self.post_signed(url, payload)
                    if response.status_code >= 500:
                        raise _RetryableAnswer(f"answered {response.status_code}")
        except (httpx.TransportError, _RetryableAnswer) as exc:
            message.receipt = f"not delivered: {exc!r}"
            log.warning(
                "receipt not delivered",
                extra={"message_id": message.message_id, "error": repr(exc)},
            )
            return
        message.receipt = "sent" if response.is_success else f"refused with {response.status_code}"


def create_gateway_app(settings: GatewaySettings) -> FastAPI:
    """The stand-in provider: accepts, deduplicates by idempotency key, receipts, status, lists."""
    state = GatewayState(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await state.aclose()

    app = FastAPI(title="churnwatch SMS gateway (stand-in)", version="1", lifespan=lifespan)
    install_error_handlers(app)
    app.state.gateway = state
    app.state.messages = state.messages
    expected = f"Bearer {settings.sms_gateway_token}".encode()

    async def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        """401 unless ``Authorization: Bearer <SMS_GATEWAY_TOKEN>`` (compared in constant time)."""
        if authorization is None or not hmac.compare_digest(authorization.encode(), expected):
            raise Unauthorized("missing or wrong bearer token")

    @app.get("/healthz")
    @app.get("/readyz")
    async def healthz() -> dict[str, str]:
        """Liveness and readiness: the stand-in has no dependencies (no token: probes)."""
        return {"status": "ok"}

    # Everything else wants the token: the messages hold phone numbers and texts,
    # and the fault modes change what the gateway does for everyone.
    api = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])

    @api.post("/messages", status_code=202, response_model=MessageOut)
    async def submit(
        body: MessageIn,
        response: Response,
        idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
    ) -> Any:
        """Accept one SMS; the same Idempotency-Key again returns the first message (200).

        Fault modes apply in this order: ``slow_s``, ``error_500`` (nothing
        stored), then deduplication, then ``timeout_after_accept`` (stored, its
        receipt on the way, the answer held back).
        """
        if state.faults.slow_s:
            await asyncio.sleep(state.faults.slow_s)
        if state.take("error_500"):
            return JSONResponse({"error": "fault mode error_500"}, status_code=500)
        if idempotency_key and idempotency_key in state.by_key:
            response.status_code = 200
            return state.by_key[idempotency_key]
        message = MessageOut(
            **body.model_dump(),
            message_id=str(uuid.uuid4()),
            status="accepted",
            idempotency_key=idempotency_key,
            received_at=datetime.now(UTC),
        )
        state.messages.append(message)
        state.by_id[message.message_id] = message
        if idempotency_key:
            state.by_key[idempotency_key] = message
        log.info("SMS accepted", extra={"message_id": message.message_id})
        state.later(state.send_receipt(message))
        if state.take("timeout_after_accept"):
            await asyncio.sleep(state.faults.hang_s)
        return message

    @api.get("/messages")
    async def list_messages(
        to: str | None = None,
        reference: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> dict[str, list[MessageOut]]:
        """Messages received, oldest first, optionally for one number or reference."""
        found = [
            m
            for m in state.messages
            if (to is None or m.to == to) and (reference is None or m.reference == reference)
        ]
        return {"messages": found[:limit]}

    @api.get("/messages/{message_id}", response_model=MessageOut)
    async def get_message(message_id: str) -> MessageOut:
        """One received message."""
        if message_id in state.by_id:
            return state.by_id[message_id]
        raise NotFound(f"no message {message_id}")

    @api.get(
        "/status",
        response_model=MessageStatus,
        responses={404: {"description": "No message with this key or id: it was never taken."}},
    )
    async def message_status(
        idempotency_key: Annotated[str | None, Query(max_length=128)] = None,
        message_id: Annotated[str | None, Query(max_length=128)] = None,
    ) -> Any:
        """What became of one message, by idempotency key (or by message id).

        404 means the provider never took a message with this key: sending it
        again with the same key is safe. Fault modes ``status_error_500`` and
        ``status_unknown`` make it answer 500, or state ``unknown``.
        """
        if (idempotency_key is None) == (message_id is None):
            raise UnprocessableEntity("give exactly one of idempotency_key and message_id")
        if state.faults.status_error_500:
            return JSONResponse({"error": "fault mode status_error_500"}, status_code=500)
        if idempotency_key is not None:
            message = state.by_key.get(idempotency_key)
        else:
            message = state.by_id.get(message_id or "")
        if message is None:
            raise NotFound("no message with this idempotency key or id")
        known = message.status in ("delivered", "failed") and not state.faults.status_unknown
        return MessageStatus(
            state="unknown" if state.faults.status_unknown else message.status,
            message_id=message.message_id,
            idempotency_key=message.idempotency_key,
            reference=message.reference,
            accepted_at=message.received_at,
            updated_at=(message.status_at if known else None) or message.received_at,
            error=message.error if known else None,
        )

    @api.get("/faults", response_model=Faults)
    async def get_faults() -> Faults:
        """The fault modes in force."""
        return state.faults

    @api.put("/faults", response_model=Faults)
    async def put_faults(faults: Faults) -> Faults:
        """Replace the fault modes (``{}`` turns them all off)."""
        state.faults = faults
        log.info("fault modes changed", extra={"faults": faults.model_dump_json()})
        return faults

    @api.post("/simulate/inbound")
    async def simulate_inbound(body: InboundSimulation) -> dict[str, Any]:
        """Post a signed inbound reply to outreach, as if the subscriber had sent ``text``.

        Answers outreach's status and body.
        """
        url = settings.sms_gateway_inbound_url
        if not url:
            raise Conflict("SMS_GATEWAY_INBOUND_URL is empty")
        payload = {
            "from": body.sender,
            "text": body.text,
            "message_id": str(uuid.uuid4()),
            "at": datetime.now(UTC).isoformat(),
        }
        try:
            answer = await state.post_signed(url, payload)
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"outreach unreachable: {type(exc).__name__}") from exc
        try:
            content: Any = answer.json()
        except ValueError:
            content = answer.text
        return {"status": answer.status_code, "response": content}

    app.include_router(api)
    return app


def gateway_headers(token: str) -> dict[str, str]:
    """Headers for the stand-in's API (its listings, faults, status): the bearer token."""
    return {"Authorization": f"Bearer {token}"}
