"""The outreach REST API for other systems: manual tasks, filters, pagination, cancel,
error bodies and request ids, the OpenAPI document, and a schemathesis run over it.

Real PostgreSQL (the session fixtures); the consumer and the dispatcher do not
run (the routes need only the engine ``create_app`` makes).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import schemathesis
from hypothesis import given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from services.outreach import service
from services.outreach.app import create_app
from services.outreach.settings import OutreachSettings
from services.outreach.tables import outbox
from services.outreach.tables import tasks as tasks_table
from shared.db import to_async_url
from shared.errors import current_request_id
from shared.events import Channel, OutreachTask, TaskKind, Tier
from shared.logging import REQUEST_ID, RequestIdFilter
from tests.helpers import sid
from tests.outreach_api import OutreachApi, outreach_api

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Harness(OutreachApi):
    """The outreach API plus this module's shortcuts."""

    async def set_status(self, task_id: uuid.UUID, status: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(tasks_table).where(tasks_table.c.task_id == task_id).values(status=status)
            )


@pytest.fixture
async def harness(env: dict[str, Any]) -> AsyncIterator[Harness]:
    settings = OutreachSettings(**env)
    async with outreach_api(Harness, settings) as h:
        yield h


def task(**fields: Any) -> OutreachTask:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "task_id": uuid.uuid4(),
        "kind": TaskKind.RETENTION,
        "channel": Channel.CALL,
        "subscriber_id": sid(),
        "tier": Tier.GOLD,
        "phone": "+15550005000",
        "due_at": now + timedelta(days=1),
        "cause_event_id": uuid.uuid4(),
        "created_at": now,
    }
    if fields.get("channel") is Channel.SMS:
        # Not due for a month: the SMS tests' dispatcher passes must not send it.
        values |= {"not_before": now + timedelta(days=30), "due_at": now + timedelta(days=31)}
    return OutreachTask(**(values | fields))


def new_task_body(**fields: Any) -> dict[str, Any]:
    """A POST /v1/tasks body: a retention call for a fresh subscriber."""
    body: dict[str, Any] = {
        "created_by": "crm",
        "kind": "retention",
        "channel": "call",
        "subscriber_id": sid(),
        "tier": "gold",
        "monthly_value": "80.00",
        "account_manager_id": "AM-07",
        "queue": "am:AM-07",
        "priority": 75,
        "risk": 0.6,
        "due_at": (datetime.now(UTC) + timedelta(days=2)).isoformat(),
        "reasons": ["asked to be called about the new plans"],
        "reason_codes": ["PLAN_DOWNGRADE"],
    }
    return body | fields


def key() -> str:
    return f"crm-{uuid.uuid4()}"


# --- POST /v1/tasks -----------------------------------------------------------------------


async def test_a_manual_task_is_idempotent_on_its_key(harness: Harness) -> None:
    body, k = new_task_body(), key()
    first = await harness.api.post("/v1/tasks", json=body, headers={"Idempotency-Key": k})
    assert first.status_code == 201, first.text
    made = first.json()
    assert made["task_id"] == str(service.manual_task_id(k))
    assert first.headers["location"] == f"/v1/tasks/{made['task_id']}"
    assert (made["status"], made["queue"], made["created_by"]) == ("queued", "am:AM-07", "crm")
    assert (made["monthly_value"], made["priority"], made["rule"]) == ("80.0000", 75.0, None)

    # The same key and body again (a client retry): the same task, 200, nothing new.
    again = await harness.api.post("/v1/tasks", json=body, headers={"Idempotency-Key": k})
    assert again.status_code == 200
    assert again.json() == made
    row = await harness.task(made["task_id"])
    assert [(t["from_status"], t["to_status"], t["actor"]) for t in row["transitions"]] == [
        (None, "queued", "crm")
    ]

    # The same key with another body is a conflict, not a second task.
    other = await harness.api.post(
        "/v1/tasks", json=body | {"priority": 10}, headers={"Idempotency-Key": k}
    )
    assert other.status_code == 409
    error = other.json()
    assert error["code"] == "conflict" and error["details"] == {"task_id": made["task_id"]}


async def test_concurrent_creates_with_one_key_make_one_task(harness: Harness) -> None:
    body, k = new_task_body(), key()
    answers = await asyncio.gather(
        *(
            harness.api.post("/v1/tasks", json=body, headers={"Idempotency-Key": k})
            for _ in range(5)
        )
    )
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 200, 201], [
        a.text for a in answers
    ]
    assert len({a.json()["task_id"] for a in answers}) == 1


async def test_a_manual_sms_needs_a_phone_and_is_masked(harness: Harness) -> None:
    sms = new_task_body(channel="sms", queue=None, kind="care", template="arrears_care")
    no_phone = await harness.api.post("/v1/tasks", json=sms, headers={"Idempotency-Key": key()})
    assert no_phone.status_code == 422
    # A running dispatcher is woken to send it at once (the lifespan sets it; not here).
    wakeup = asyncio.Event()
    harness.app.state.dispatcher = SimpleNamespace(wakeup=wakeup)
    made = await harness.api.post(
        "/v1/tasks",
        json=sms | {"phone": "+15550009876", "params": {"amount": "9.00", "days_overdue": "3"}},
        headers={"Idempotency-Key": key()},
    )
    assert made.status_code == 201, made.text
    assert made.json()["status"] == "pending"
    assert made.json()["phone_masked"] == "*" * 9 + "876"
    assert "phone" not in made.json()
    assert wakeup.is_set()
    # Stopped again, so that no dispatcher of another test sends it.
    cancel = {"actor": "test", "reason": "only a test"}
    stopped = await harness.api.post(f"/v1/tasks/{made.json()['task_id']}/cancel", json=cancel)
    assert stopped.status_code == 200


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"channel": "sms", "phone": "+15550001234"}, "validation_error"),  # an SMS has no queue
        ({"kind": "upsell"}, "validation_error"),
        ({"priority": 1e12}, "validation_error"),
        ({"risk": 1.5}, "validation_error"),
        ({"surprise": True}, "validation_error"),  # unknown fields are refused
        ({"created_by": ""}, "validation_error"),
        ({"reasons": ["a\x00b"]}, "validation_error"),  # PostgreSQL cannot store NUL
        ({"due_at": "2030-01-01T00:00:00"}, "validation_error"),  # no offset
        (
            {"not_before": "2030-01-02T00:00:00Z", "due_at": "2030-01-01T00:00:00Z"},
            "validation_error",
        ),
        ({"due_at": "2020-01-01T00:00:00Z"}, "unprocessable_entity"),  # would expire at once
    ],
)
async def test_a_bad_manual_task_is_a_422(
    harness: Harness, change: dict[str, Any], code: str
) -> None:
    answer = await harness.api.post(
        "/v1/tasks", json=new_task_body() | change, headers={"Idempotency-Key": key()}
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == code


async def test_a_manual_task_needs_an_idempotency_key(harness: Harness) -> None:
    answer = await harness.api.post("/v1/tasks", json=new_task_body())
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    spaced = await harness.api.post(
        "/v1/tasks", json=new_task_body(), headers={"Idempotency-Key": "has spaces"}
    )
    assert spaced.status_code == 422


# --- GET /v1/tasks: filters and pages -------------------------------------------------------


async def test_tasks_are_filtered_by_creation_and_due_ranges(harness: Harness) -> None:
    subscriber, base = sid(), datetime.now(UTC).replace(microsecond=0)
    made = [
        task(
            subscriber_id=subscriber,
            created_at=base - timedelta(days=i),
            due_at=base + timedelta(days=i + 1),
        )
        for i in range(4)
    ]
    await harness.store(*made)

    async def ids(**params: Any) -> list[str]:
        answer = await harness.api.get("/v1/tasks", params={"subscriber_id": subscriber} | params)
        assert answer.status_code == 200, answer.text
        return [t["task_id"] for t in answer.json()["items"]]

    def of(*i: int) -> list[str]:
        return [str(made[n].task_id) for n in i]

    # Ranges include their start and exclude their end.
    start, end = (base - timedelta(days=2)).isoformat(), base.isoformat()
    assert await ids(created_from=start, created_to=end) == of(1, 2)
    assert await ids(created_from=start) == of(0, 1, 2)
    due_from = (base + timedelta(days=2)).isoformat()
    due_to = (base + timedelta(days=4)).isoformat()
    assert await ids(due_from=due_from, due_to=due_to) == of(1, 2)
    # Any offset means the same instant.
    plus8 = (base - timedelta(days=2)).astimezone(
        datetime.fromisoformat("2000-01-01T00:00:00+08:00").tzinfo
    )
    assert await ids(created_from=plus8.isoformat(), created_to=end) == of(1, 2)


async def test_the_general_queue_filter_includes_calls_without_a_queue(harness: Harness) -> None:
    subscriber = sid()
    general = harness.settings.outreach_general_queue
    named, unnamed = task(subscriber_id=subscriber, queue=general), task(subscriber_id=subscriber)
    sms = task(subscriber_id=subscriber, channel=Channel.SMS)  # no queue, but not a call
    other = task(subscriber_id=subscriber, queue="am:AM-3")
    await harness.store(named, unnamed, sms, other)
    listed = await harness.api.get(
        "/v1/tasks", params={"subscriber_id": subscriber, "queue": general}
    )
    assert {t["task_id"] for t in listed.json()["items"]} == {
        str(named.task_id),
        str(unnamed.task_id),
    }


async def test_filter_pages_chain_and_bad_parameters_are_refused(harness: Harness) -> None:
    subscriber, base = sid(), datetime.now(UTC)
    made = [
        task(subscriber_id=subscriber, created_at=base - timedelta(seconds=i)) for i in range(5)
    ]
    await harness.store(*made)
    seen: list[str] = []
    params: dict[str, Any] = {"subscriber_id": subscriber, "channel": "call", "limit": 2}
    while True:
        page = (await harness.api.get("/v1/tasks", params=params)).json()
        seen += [t["task_id"] for t in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == [str(t.task_id) for t in made]

    def cursor(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).decode()

    later, earlier = base.isoformat(), (base - timedelta(days=1)).isoformat()
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"created_from": later, "created_to": earlier}, 422, "validation_error"),
        ({"due_from": later, "due_to": earlier}, 422, "validation_error"),
        ({"created_from": "2026-01-01T00:00:00"}, 422, "validation_error"),  # no offset
        ({"kind": "upsell"}, 422, "validation_error"),
        ({"channel": "fax"}, 422, "validation_error"),
        ({"limit": 0}, 422, "validation_error"),
        ({"subscriber_id": "bad\x00id"}, 422, "validation_error"),
        ({"cursor": "!!!"}, 400, "bad_request"),
        ({"cursor": cursor("nonsense")}, 400, "bad_request"),
        ({"cursor": cursor(f"2026-01-01T00:00:00|{uuid.uuid4()}")}, 400, "bad_request"),
        ({"cursor": cursor(f"9999-12-31T23:59:59-23:59|{uuid.uuid4()}")}, 400, "bad_request"),
    ]
    for bad, status, code in cases:
        answer = await harness.api.get("/v1/tasks", params=bad)
        assert answer.status_code == status, (bad, answer.text)
        assert answer.json()["code"] == code
    inverted = await harness.api.get("/v1/tasks", params=cases[0][0])
    assert inverted.json()["errors"][0]["loc"] == ["query", "created_to"]


# --- POST /v1/tasks/{id}/cancel ---------------------------------------------------------


async def test_cancel_stops_a_task_not_yet_done_and_audits_who_and_why(harness: Harness) -> None:
    call, sms = task(), task(channel=Channel.SMS)
    await harness.store(call, sms)
    body = {"actor": "crm-user-9", "reason": "customer asked not to be called"}
    answer = await harness.api.post(f"/v1/tasks/{call.task_id}/cancel", json=body)
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    row = await harness.task(call.task_id)
    last = row["transitions"][-1]
    assert (last["from_status"], last["to_status"], last["actor"], last["reason"]) == (
        "queued",
        "cancelled",
        "crm-user-9",
        "customer asked not to be called",
    )
    assert row["finished_at"] is not None
    async with harness.engine.connect() as conn:
        published = (
            await conn.execute(
                select(outbox.c.payload).where(
                    outbox.c.payload["task_id"].astext == str(call.task_id)
                )
            )
        ).scalar_one()
    assert published["status"] == "cancelled"
    assert published["reason"] == "customer asked not to be called"

    again = await harness.api.post(f"/v1/tasks/{call.task_id}/cancel", json=body)
    assert again.status_code == 409
    assert again.json()["details"] == {"status": "cancelled"}

    assert (await harness.api.post(f"/v1/tasks/{sms.task_id}/cancel", json=body)).status_code == 200


async def test_cancel_refuses_what_cannot_be_stopped(harness: Harness) -> None:
    sending, working = task(channel=Channel.SMS), task()
    await harness.store(sending, working)
    await harness.set_status(sending.task_id, "sending")  # the provider may have it
    body = {"actor": "crm", "reason": "no longer needed"}
    refused = await harness.api.post(f"/v1/tasks/{sending.task_id}/cancel", json=body)
    assert refused.status_code == 409
    assert (await harness.task(sending.task_id))["status"] == "sending"
    # Final again, so that no dispatcher of another test takes it for a stale send.
    await harness.set_status(sending.task_id, "failed")
    # A call being worked can still be cancelled (the subscriber churned meanwhile).
    await harness.set_status(working.task_id, "in_progress")
    ok = await harness.api.post(f"/v1/tasks/{working.task_id}/cancel", json=body)
    assert ok.status_code == 200
    missing = await harness.api.post(f"/v1/tasks/{uuid.uuid4()}/cancel", json=body)
    assert missing.status_code == 404
    no_reason = await harness.api.post(f"/v1/tasks/{working.task_id}/cancel", json={"actor": "x"})
    assert no_reason.status_code == 422


# --- error bodies and request ids -------------------------------------------------------------


async def test_every_answer_carries_a_request_id(harness: Harness) -> None:
    ok = await harness.api.get("/v1/tasks", params={"limit": 1})
    assert ok.status_code == 200
    assert uuid.UUID(ok.headers["x-request-id"]).version == 4
    # A sane id from the caller is kept, so it can trace its call through our logs...
    mine = await harness.api.get(
        "/v1/tasks", params={"limit": 1}, headers={"X-Request-ID": "a1:b-2"}
    )
    assert mine.headers["x-request-id"] == "a1:b-2"
    # ...anything else is replaced.
    for bad in ("has space", "x" * 200, "-leading-dash", "ünïcode"):
        answer = await harness.api.get(
            "/v1/tasks", params={"limit": 1}, headers={"X-Request-ID": bad.encode()}
        )
        assert uuid.UUID(answer.headers["x-request-id"]).version == 4


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/nowhere", 404, "not_found"),
        ("DELETE", "/v1/tasks", 405, "method_not_allowed"),
        ("GET", f"/v1/tasks/{uuid.uuid4()}", 404, "not_found"),
        ("GET", "/v1/tasks/not-a-uuid", 422, "validation_error"),
        ("POST", "/v1/call-queues/general/claim", 422, "validation_error"),  # no body
    ],
)
async def test_errors_have_one_body_with_the_request_id(
    harness: Harness, method: str, path: str, status: int, code: str
) -> None:
    answer = await harness.api.request(method, path, headers={"X-Request-ID": "req-42"})
    assert answer.status_code == status
    assert answer.headers["x-request-id"] == "req-42"
    assert answer.headers["content-type"] == "application/problem+json"
    error = answer.json()
    assert set(error) - {"errors"} == {
        "type",
        "title",
        "status",
        "detail",
        "instance",
        "code",
        "request_id",
    }
    assert (error["code"], error["request_id"]) == (code, "req-42")
    assert (error["status"], error["instance"]) == (status, path)
    assert ("errors" in error) == (code == "validation_error")


async def test_unexpected_errors_are_500_or_503_in_the_same_shape(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    def raising(exc: Exception) -> Callable[[], Any]:
        async def endpoint() -> None:
            raise exc

        return endpoint

    async def whoami() -> dict[str, str | None]:
        return {"request_id": current_request_id()}

    harness.app.add_api_route("/test/boom", raising(RuntimeError("bug")))
    harness.app.add_api_route(
        "/test/db-down", raising(OperationalError("SELECT 1", {}, ConnectionRefusedError()))
    )
    harness.app.add_api_route("/test/whoami", whoami)

    with caplog.at_level(logging.ERROR, logger="shared.errors"):
        boom = await harness.api.get("/test/boom", headers={"X-Request-ID": "r-500"})
    assert boom.status_code == 500 and boom.headers["x-request-id"] == "r-500"
    assert boom.headers["content-type"] == "application/problem+json"
    assert boom.json() == {
        "type": "https://churnwatch.dev/problems/internal-error",
        "title": "Internal error",
        "status": 500,
        "detail": "internal error",
        "instance": "/test/boom",
        "code": "internal_error",
        "request_id": "r-500",
    }
    assert any(r.exc_info and "bug" in str(r.exc_info[1]) for r in caplog.records)
    down = await harness.api.get("/test/db-down")
    assert down.status_code == 503 and down.headers["retry-after"] == "5"
    assert down.json()["code"] == "service_unavailable"
    assert down.json()["request_id"] == down.headers["x-request-id"]
    # The handler sees the id (so every log line written meanwhile can carry it).
    me = await harness.api.get("/test/whoami", headers={"X-Request-ID": "r-me"})
    assert me.json() == {"request_id": "r-me"}


async def test_log_lines_carry_the_request_id() -> None:
    record = logging.makeLogRecord({"msg": "hello"})
    token = REQUEST_ID.set("r-log")
    try:
        assert RequestIdFilter().filter(record)
    finally:
        REQUEST_ID.reset(token)
    assert record.request_id == "r-log"
    outside = logging.makeLogRecord({"msg": "no request"})
    RequestIdFilter().filter(outside)
    assert not hasattr(outside, "request_id")


# --- the OpenAPI document -------------------------------------------------------------------


async def test_every_api_route_is_documented_with_problem_details(harness: Harness) -> None:
    doc = (await harness.api.get("/openapi.json")).json()
    ours = {
        (path, method): operation
        for path, methods in doc["paths"].items()
        for method, operation in methods.items()
        if path.startswith(("/v1/tasks", "/v1/call-queue"))
    }
    assert len(ours) == 8
    for (path, method), operation in ours.items():
        where = f"{method.upper()} {path}"
        assert operation.get("summary"), f"{where} has no summary"
        success = [s for s in operation["responses"] if s.startswith("2") and s != "204"]
        assert success and all("content" in operation["responses"][s] for s in success), (
            f"{where} has no response model"
        )
        assert "422" in operation["responses"], f"{where} does not document 422"
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")):
                assert list(response["content"]) == ["application/problem+json"], where
                ref = response["content"]["application/problem+json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/Problem", f"{where} {status}: {ref}"


# --- schemathesis over /openapi.json ----------------------------------------------------------


async def test_no_input_makes_a_server_error(harness: Harness, env: dict[str, Any]) -> None:
    """Schemathesis: generated valid and invalid requests to every operation; never a 5xx.

    Schemathesis calls the ASGI app from its own event loop thread, so the app
    gets an engine without a pool there: no connection outlives the loop that
    opened it. The consumer and dispatcher (the lifespan) are not needed.
    """
    app = create_app(harness.settings)
    app.state.runtime.engine = create_async_engine(
        to_async_url(env["database_url"]),
        poolclass=NullPool,
        json_serializer=lambda obj: orjson.dumps(obj).decode(),
        json_deserializer=orjson.loads,
    )

    async def without_lifespan(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            # Refusing the lifespan before receiving anything is how an ASGI app
            # says it has none; schemathesis then serves it without.
            raise RuntimeError("the lifespan is not run in this test")
        await app(scope, receive, send)

    # Something for the generated requests to find: a queue with calls, a call to
    # start, cancel and finish, and an SMS.
    queue = f"am:AM-{uuid.uuid4().hex[:8]}"
    calls = [task(queue=queue) for _ in range(3)]
    sms = task(channel=Channel.SMS)
    await harness.store(*calls, sms)
    known_ids = [str(t.task_id) for t in (*calls, sms)]

    def run() -> dict[str, str]:
        schema = schemathesis.openapi.from_asgi("/openapi.json", without_lifespan)
        failures: dict[str, str] = {}
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path == "/readyz":
                continue  # 503 is its answer while the consumer is not running, by design
            strategies = [
                operation.as_strategy(GenerationMode.POSITIVE),
                operation.as_strategy(GenerationMode.NEGATIVE),
            ]
            if "{task_id}" in operation.path:
                strategies += [
                    operation.as_strategy(path_parameters={"task_id": task_id})
                    for task_id in known_ids
                ]
            if "{queue}" in operation.path:
                strategies.append(operation.as_strategy(path_parameters={"queue": queue}))

            @given(case=st.one_of(strategies))
            @settings(max_examples=25, deadline=None, database=None)
            def no_server_error(case: Any) -> None:
                case.call_and_validate(checks=[not_a_server_error])

            try:
                no_server_error()
            except Exception as exc:  # collect every operation's failure, then report all
                failures[operation.label] = f"{type(exc).__name__}: {exc}"
        return failures

    # Schemathesis blocks while it waits for its own loop thread; keep ours free.
    failures = await asyncio.to_thread(run)
    assert not failures, "\n\n".join(f"{label}:\n{error}" for label, error in failures.items())
