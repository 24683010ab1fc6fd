"""Contact policy endpoints: delivery receipts, inbound replies, the do-not-contact list.

The provider calls the two webhooks (``POST /v1/sms/receipts`` and
``POST /v1/sms/inbound``), each signed with an HMAC-SHA256 of the raw body
(``policy.verify``): a missing, wrong or stale signature is a 401 and
changes nothing; they carry no API key (the provider signs instead, see
docs/security.md). Other systems keep the do-not-contact list through
``/v1/contacts/{subscriber_id}``, with an API key: ``tasks:read`` to read,
``admin`` to change it.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, Header, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from services.outreach import metrics, policy, service
from services.outreach.deps import ClockDep, EngineDep, SettingsDep
from services.outreach.schemas import (
    ContactOut,
    InboundIn,
    InboundOut,
    OptOutIn,
    ReceiptIn,
    ReceiptOut,
)
from services.outreach.settings import OutreachSettings
from shared.auth import auth_responses, require_scope
from shared.errors import (
    API_MAX_BODY_BYTES,
    Conflict,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    error_responses,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["contacts"])

MAX_WEBHOOK_BYTES = 64 * 1024
"""Largest webhook body read; a receipt or a reply is a few hundred bytes."""

SUBSCRIBER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"  # as shared.events.SubscriberId


SubscriberPath = Annotated[str, Path(min_length=1, max_length=64, pattern=SUBSCRIBER_ID_PATTERN)]
SignatureHeader = Annotated[
    str | None,
    Header(
        alias=policy.SIGNATURE_HEADER,
        description="t=<unix seconds>,v1=<hex HMAC-SHA256 of f'{t}.{raw body}' with "
        "SMS_RECEIPT_SECRET>",
    ),
]

M = TypeVar("M", bound=BaseModel)


def _errors(**described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI for error answers (``status_NNN="meaning"``), all problem details."""
    return error_responses(
        described={int(key.removeprefix("status_")): text for key, text in described.items()}
    )


UNAUTHORIZED = "Missing, malformed, wrong or stale signature; nothing read or changed."
TOO_LARGE = f"Body over {MAX_WEBHOOK_BYTES} bytes."
INVALID = "Invalid parameters or body; errors lists each problem."
UNAVAILABLE = "The database is unavailable; retry after Retry-After."


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body the endpoint reads itself (raw bytes first, for the signature)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


async def _signed(
    request: Request,
    settings: OutreachSettings,
    signature: str | None,
    model: type[M],
    what: str,
) -> M:
    """The webhook's body, parsed, after checking its signature over the raw bytes."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_WEBHOOK_BYTES:
            raise PayloadTooLarge(f"{what} body over {MAX_WEBHOOK_BYTES} bytes")
    try:
        policy.verify(
            signature,
            bytes(raw),
            settings.sms_receipt_secret.get_secret_value(),
            now=time.time(),
            tolerance_s=settings.sms_receipt_tolerance_s,
        )
    except policy.SignatureError as exc:
        if what == "receipt":
            metrics.RECEIPTS.labels("rejected").inc()
        log.warning("signed webhook refused", extra={"webhook": what, "error": str(exc)})
        raise Unauthorized(f"{what} refused: {exc}") from exc
    try:
        return model.model_validate_json(bytes(raw))
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from exc


@router.post(
    "/sms/receipts",
    summary="Delivery receipt from the SMS provider (signed)",
    response_model=ReceiptOut,
    openapi_extra=_body_schema(ReceiptIn),
    responses=_errors(
        status_401=UNAUTHORIZED,
        status_404="No SMS with this message id (or reference).",
        status_409="The reference names a task that was never sent.",
        status_413=TOO_LARGE,
        status_422=INVALID,
        status_503=UNAVAILABLE,
    ),
)
async def receipt(
    request: Request,
    settings: SettingsDep,
    engine: EngineDep,
    clock: ClockDep,
    x_signature: SignatureHeader = None,
) -> ReceiptOut:
    """A delivery receipt from the SMS provider: moves ``sent`` to ``delivered`` or ``failed``.

    The task is found by ``reference`` (our task id), else by ``message_id``.
    A receipt that overtook the provider's answer (task still ``sending``, or
    waiting for a retry) records ``sent`` first. A repeated receipt, or one for
    a task already final, answers 200 with ``changed: false``.
    """
    body = await _signed(request, settings, x_signature, ReceiptIn, "receipt")
    now = clock.now()
    at = min(body.at, now) if body.at is not None else now  # never in the future
    async with engine.begin() as conn:
        result, task = await service.apply_receipt(
            conn,
            message_id=body.message_id,
            reference=body.reference,
            delivered=body.status == "delivered",
            error=body.error,
            at=at,
            now=now,
        )
    label = "unknown" if result is service.ReceiptResult.NOT_SENT else result.value
    metrics.RECEIPTS.labels(label).inc()
    if task is None:
        raise NotFound("no SMS with this message id")
    if result is service.ReceiptResult.NOT_SENT:
        raise Conflict("this SMS was never sent to the provider")
    return ReceiptOut(
        task_id=task["task_id"],
        status=task["status"],
        changed=result is not service.ReceiptResult.DUPLICATE,
    )


@router.post(
    "/sms/inbound",
    summary="Inbound SMS reply from a subscriber (signed)",
    response_model=InboundOut,
    openapi_extra=_body_schema(InboundIn),
    responses=_errors(
        status_401=UNAUTHORIZED,
        status_413=TOO_LARGE,
        status_422=INVALID,
        status_503=UNAVAILABLE,
    ),
)
async def inbound(
    request: Request,
    settings: SettingsDep,
    engine: EngineDep,
    clock: ClockDep,
    x_signature: SignatureHeader = None,
) -> InboundOut:
    """An SMS from a subscriber, forwarded by the provider.

    "T" or "TD" (trimmed, any case) opts out every subscriber whose tasks
    carry the sender's number; anything else is acknowledged and ignored.
    """
    body = await _signed(request, settings, x_signature, InboundIn, "inbound")
    if not policy.is_opt_out_reply(body.text):
        return InboundOut(action="ignored", subscribers=0)
    now = clock.now()
    new = cancelled = 0
    async with engine.begin() as conn:
        subscribers = await service.subscribers_with_phone(conn, phone=body.sender)
        for subscriber_id in subscribers:
            created, _, stopped = await service.opt_out(
                conn,
                subscriber_id=subscriber_id,
                source="sms_reply",
                reason=f"replied {body.text.strip()!r}",
                now=now,
            )
            new += created
            cancelled += stopped
    metrics.count_opt_out("sms_reply", new, cancelled)
    if not subscribers:
        # The number is not logged (PII); the provider's message id is enough to trace it.
        log.info("opt-out reply from an unknown number", extra={"message_id": body.message_id})
        return InboundOut(action="unknown_sender", subscribers=0)
    return InboundOut(action="opted_out", subscribers=len(subscribers))


def _contact(subscriber_id: str, entry: dict[str, Any] | None) -> ContactOut:
    return ContactOut(
        subscriber_id=subscriber_id,
        opted_out=entry is not None,
        source=entry["source"] if entry else None,
        reason=entry["reason"] if entry else None,
        opted_out_at=entry["created_at"] if entry else None,
    )


@router.get(
    "/contacts/{subscriber_id}",
    dependencies=[require_scope("tasks:read")],
    summary="A subscriber's opt-out status",
    response_model=ContactOut,
    responses={**_errors(status_422=INVALID), **auth_responses()},
)
async def get_contact(subscriber_id: SubscriberPath, engine: EngineDep) -> ContactOut:
    """A subscriber's contact status: whether they are on the do-not-contact list.

    Any well-formed id answers 200: a subscriber outreach never heard of is
    simply not opted out.
    """
    async with engine.connect() as conn:
        entry = await service.get_opt_out(conn, subscriber_id=subscriber_id)
    return _contact(subscriber_id, entry)


@router.put(
    "/contacts/{subscriber_id}/opt-out",
    dependencies=[require_scope("admin")],
    summary="Opt a subscriber out of marketing SMS",
    response_model=ContactOut,
    responses={
        201: {"description": "Put on the list now.", "model": ContactOut},
        **_errors(status_413=f"Body over {API_MAX_BODY_BYTES} bytes.", status_422=INVALID),
        **auth_responses(),
    },
)
async def put_opt_out(
    subscriber_id: SubscriberPath,
    engine: EngineDep,
    clock: ClockDep,
    response: Response,
    body: Annotated[OptOutIn | None, Body()] = None,
) -> ContactOut:
    """Put a subscriber on the do-not-contact list: no more marketing SMS.

    201 when added, 200 when they already were (the first entry is kept).
    Their marketing SMS still waiting to be sent are cancelled; service
    messages (reminders, care) still go.
    """
    async with engine.begin() as conn:
        created, entry, cancelled = await service.opt_out(
            conn,
            subscriber_id=subscriber_id,
            source="api",
            reason=body.reason if body else None,
            now=clock.now(),
        )
    metrics.count_opt_out("api", int(created), cancelled)
    response.status_code = 201 if created else 200
    return _contact(subscriber_id, entry)


@router.delete(
    "/contacts/{subscriber_id}/opt-out",
    dependencies=[require_scope("admin")],
    summary="Opt a subscriber back in",
    status_code=204,
    responses={**_errors(status_422=INVALID), **auth_responses()},
)
async def delete_opt_out(subscriber_id: SubscriberPath, engine: EngineDep) -> Response:
    """Take a subscriber off the do-not-contact list (204 whether or not they were on it).

    SMS cancelled because of the opt-out stay cancelled.
    """
    async with engine.begin() as conn:
        await service.remove_opt_out(conn, subscriber_id=subscriber_id)
    return Response(status_code=204)
