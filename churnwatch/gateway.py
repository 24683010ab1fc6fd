"""``churnwatch sms-gateway``: a real HTTP SMS provider stand-in.

It speaks the same generic JSON protocol outreach uses for a real provider
(``POST /v1/messages`` with a bearer token and an ``Idempotency-Key``), keeps
what it was sent in memory and lets anyone list it. It stands in for the
operator's SMS provider on the embedded stack and in tests; it never sends a
real SMS.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, Query, Response
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import NotFound, install_error_handlers
from shared.events import PhoneNumber


class GatewaySettings(BaseSettings):
    """Settings of the stand-in gateway."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True
    sms_gateway_port: int = 8085
    sms_gateway_token: str = "dev-gateway-token"  # noqa: S105 - matches outreach's default


class MessageIn(BaseModel):
    """An SMS submitted by a client."""

    to: PhoneNumber
    text: str = Field(min_length=1, max_length=1600)
    sender: str | None = Field(default=None, max_length=11)
    reference: str | None = Field(default=None, max_length=128)


class MessageOut(MessageIn):
    """A stored SMS."""

    message_id: str
    status: str
    idempotency_key: str | None
    received_at: datetime


def create_gateway_app(settings: GatewaySettings) -> FastAPI:
    """The stand-in provider: accepts, deduplicates by idempotency key, lists."""
    app = FastAPI(title="churnwatch SMS gateway (stand-in)", version="1")
    install_error_handlers(app)
    messages: list[MessageOut] = []
    by_key: dict[str, MessageOut] = {}
    app.state.messages = messages

    def _authorised(authorization: str | None) -> bool:
        return authorization == f"Bearer {settings.sms_gateway_token}"

    @app.get("/healthz")
    @app.get("/readyz")
    async def healthz() -> dict[str, str]:
        """Liveness and readiness: the stand-in has no dependencies."""
        return {"status": "ok"}

    @app.post("/v1/messages", status_code=202, response_model=MessageOut)
    async def submit(
        body: MessageIn,
        response: Response,
        authorization: Annotated[str | None, Header()] = None,
        idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
    ) -> Any:
        """Accept one SMS; the same Idempotency-Key again returns the first message (200)."""
        if not _authorised(authorization):
            response.status_code = 401
            return Response(status_code=401)
        if idempotency_key and idempotency_key in by_key:
            response.status_code = 200
            return by_key[idempotency_key]
        message = MessageOut(
            **body.model_dump(),
            message_id=str(uuid.uuid4()),
            status="accepted",
            idempotency_key=idempotency_key,
            received_at=datetime.now(UTC),
        )
        messages.append(message)
        if idempotency_key:
            by_key[idempotency_key] = message
        return message

    @app.get("/v1/messages")
    async def list_messages(
        to: str | None = None,
        reference: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> dict[str, list[MessageOut]]:
        """Messages received, oldest first, optionally for one number or reference."""
        found = [
            m
            for m in messages
            if (to is None or m.to == to) and (reference is None or m.reference == reference)
        ]
        return {"messages": found[:limit]}

    @app.get("/v1/messages/{message_id}", response_model=MessageOut)
    async def get_message(message_id: str) -> MessageOut:
        """One received message."""
        for message in messages:
            if message.message_id == message_id:
                return message
        raise NotFound(f"no message {message_id}")

    return app
