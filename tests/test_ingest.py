"""Ingest against the real broker: validation per event, acks before 202, limits, 503."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from churnwatch.embedded import EmbeddedBroker
from services.ingest.app import create_app
from services.ingest.landing import REASON_CLASSES, LandingParser, LandingRejected
from services.ingest.settings import IngestSettings
from shared.events import V2_FIELDS, SubscriberPayload
from shared.topics import Topics
from tests.helpers import calls, event, eventually, profile, read_topic, sid, stop_notice

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _client(settings: IngestSettings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            yield client


@pytest.fixture
async def client(env: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(IngestSettings(**env)):
        yield c


async def test_single_event_reaches_its_topic_keyed_by_subscriber(
    client: httpx.AsyncClient, env: dict[str, Any]
) -> None:
    subscriber = sid()
    body = stop_notice(subscriber)
    response = await client.post("/v1/events", json=body)
    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "rejected": []}
    topics = Topics(env["kafka_topic_prefix"])
    [record] = await read_topic(env["kafka_bootstrap_servers"], topics.events, count=1)
    assert record.key == subscriber.encode()
    assert orjson.loads(record.value)["event_id"] == body["event_id"]
    assert dict(record.headers)["event_type"] == b"stop_notice"


async def test_batch_rejects_bad_events_by_index_and_keeps_the_good(
    client: httpx.AsyncClient, env: dict[str, Any]
) -> None:
    subscriber = sid()
    good = calls(subscriber, n=3, competitor=True, days_ago=1)
    bad = event("cdr", subscriber, {"service": "fax", "direction": "outgoing"})
    response = await client.post("/v1/events", json=[good[0], bad, good[1], "junk", good[2]])
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 3
    assert [r["index"] for r in body["rejected"]] == [1, 3]
    assert body["rejected"][0]["event_id"] == bad["event_id"]
    assert "payload" in body["rejected"][0]["errors"][0]["loc"]
    records = await read_topic(
        env["kafka_bootstrap_servers"], Topics(env["kafka_topic_prefix"]).events, count=3
    )
    assert sorted(orjson.loads(r.value)["event_id"] for r in records) == sorted(
        e["event_id"] for e in good
    )
    # Same key, same partition: one subscriber's events stay in order.
    assert len({r.partition for r in records}) == 1


async def test_ndjson_with_a_broken_line(client: httpx.AsyncClient) -> None:
    subscriber = sid()
    lines = [orjson.dumps(profile(subscriber)), b"{not json", orjson.dumps(stop_notice(subscriber))]
    response = await client.post(
        "/v1/events",
        content=b"\n".join(lines) + b"\n",
        headers={"content-type": "application/x-ndjson"},
    )
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2
    assert [r["index"] for r in body["rejected"]] == [1]
    assert "invalid JSON" in body["rejected"][0]["errors"][0]["msg"]


async def test_nothing_valid_is_422_with_the_reasons(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/events", json=[{"event_type": "cdr"}])
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    error = response.json()
    assert error["code"] == "unprocessable_entity"
    assert error["details"]["accepted"] == 0
    assert error["details"]["rejected"][0]["index"] == 0


async def test_malformed_json_and_wrong_media_type(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/events", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"
    response = await client.post("/v1/events", content=b"a,b", headers={"content-type": "text/csv"})
    assert response.status_code == 415


async def test_limits_answer_413_naming_the_limit(env: dict[str, Any]) -> None:
    settings = IngestSettings(**env, ingest_max_batch_events=2, ingest_max_body_bytes=4096)
    async for client in _client(settings):
        subscriber = sid()
        response = await client.post(
            "/v1/events", json=calls(subscriber, n=3, competitor=False, days_ago=1)
        )
        assert response.status_code == 413
        assert "INGEST_MAX_BATCH_EVENTS" in response.json()["detail"]
        response = await client.post(
            "/v1/events",
            content=b"[" + b" " * 5000 + b"]",
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 413
        assert response.json()["details"]["limit"] == 4096


async def test_schemas_are_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/schemas")
    assert response.status_code == 200
    assert {"cdr", "stop_notice", "churn"} <= set(response.json())
    one = await client.get("/v1/schemas/stop_notice")
    assert one.json()["properties"]["event_type"]["const"] == "stop_notice"
    assert (await client.get("/v1/schemas/nope")).status_code == 404


async def test_probes_and_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"broker": True, "topics": True}
    await client.post("/v1/events", json=stop_notice(sid()))
    metrics = (await client.get("/metrics")).text
    assert 'churnwatch_ingest_events_total{event_type="stop_notice",result="accepted"}' in metrics
    assert "churnwatch_http_requests_total" in metrics


async def test_unreachable_broker_answers_503_and_accepts_nothing(
    env: dict[str, Any], tmp_path: Any
) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "broker.log").start()
    settings = IngestSettings(
        **{**env, "kafka_bootstrap_servers": broker.bootstrap_servers},
        ingest_produce_timeout_s=3,
        kafka_request_timeout_ms=2000,
    )
    try:
        async for client in _client(settings):
            assert (await client.post("/v1/events", json=stop_notice(sid()))).status_code == 202
            broker.stop()
            response = await client.post(
                "/v1/events", json=[stop_notice(sid()), stop_notice(sid())]
            )
            assert response.status_code == 503
            assert response.headers["retry-after"] == str(settings.ingest_retry_after_s)
            assert "nothing was accepted" in response.json()["detail"]
            assert (await client.get("/readyz")).status_code == 503
    finally:
        broker.stop()


async def test_event_ids_are_kept_verbatim(client: httpx.AsyncClient, env: dict[str, Any]) -> None:
    event_id = str(uuid.uuid4())
    await client.post("/v1/events", json=profile(sid()) | {"event_id": event_id})
    [record] = await read_topic(
        env["kafka_bootstrap_servers"], Topics(env["kafka_topic_prefix"]).events, count=1
    )
    assert orjson.loads(record.value)["event_id"] == event_id


# --- contract version 2 ---------------------------------------------------------------------


def _v2(item: dict[str, Any]) -> dict[str, Any]:
    return item | {"schema_version": 2}


def _locs(rejection: dict[str, Any]) -> dict[tuple[Any, ...], str]:
    return {tuple(e["loc"]): e["msg"] for e in rejection["errors"]}


async def test_v2_batch_rejects_wrong_types_by_index_and_accepts_unknown_categories(
    client: httpx.AsyncClient, env: dict[str, Any]
) -> None:
    subscriber = sid()
    good_profile = _v2(profile(subscriber))
    good_profile["payload"] |= {
        "handset": {"model": "Nokia 3310 (2031)", "age_months": 7, "capabilities": ["6g"]},
        "lines": 3,
        "credit_class": "ZZ-new-class",
        "age_band": "centenarian",
        "region": "moon-base",
        "contract": "lifetime",
        "contract_end_at": "2099-12-31T00:00:00Z",
        "plan": {"international": True, "data_allowance_mb": 0},
        "attributes": {"payment_method": "barter", "internet_service": "Fiber optic"},
    }
    bad_profile = _v2(profile(subscriber))
    bad_profile["payload"] |= {
        "handset": "iphone",
        "lines": -1,
        "contract_end_at": "soon",
        "attributes": {"payment method": "card"},
        "plan": {"international": True, "fax": True},
    }
    contact = _v2(event("contact", subscriber, {"team": "retention", "channel": "carrier pigeon"}))
    usage = _v2(
        event(
            "cdr",
            subscriber,
            {
                "service": "voice",
                "direction": "outgoing",
                "count": 12,
                "distinct_counterparts": 5,
                "time_band": "small_hours",
            },
        )
    )
    items = [good_profile, bad_profile, contact, usage]
    response = await client.post(
        "/v1/events",
        content=b"\n".join(orjson.dumps(item) for item in items) + b"\n",
        headers={"content-type": "application/x-ndjson"},
    )
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 3
    [rejection] = body["rejected"]
    assert rejection["index"] == 1
    assert rejection["event_id"] == bad_profile["event_id"]
    locs = _locs(rejection)
    # Every wrong field is reported, each where it is, in the one rejection.
    prefix = ("subscriber", "payload")
    assert locs[(*prefix, "handset")] == "Input should be a valid dictionary or instance of Handset"
    assert locs[(*prefix, "lines")] == "Input should be greater than or equal to 1"
    assert "datetime" in locs[(*prefix, "contract_end_at")]
    assert "pattern" in locs[(*prefix, "attributes", "payment method", "[key]")]
    assert locs[(*prefix, "plan", "fax")] == "Extra inputs are not permitted"
    assert len(locs) == 5

    records = await read_topic(
        env["kafka_bootstrap_servers"], Topics(env["kafka_topic_prefix"]).events, count=3
    )
    produced = {orjson.loads(r.value)["event_id"]: r for r in records}
    assert set(produced) == {good_profile["event_id"], contact["event_id"], usage["event_id"]}
    stored = orjson.loads(produced[good_profile["event_id"]].value)
    assert stored["schema_version"] == 2
    assert stored["payload"]["credit_class"] == "ZZ-new-class"
    assert stored["payload"]["handset"]["capabilities"] == ["6g"]
    assert stored["payload"]["attributes"]["payment_method"] == "barter"
    contact_record = produced[contact["event_id"]]
    assert dict(contact_record.headers)["event_type"] == b"contact"
    assert orjson.loads(contact_record.value)["payload"] == {
        "team": "retention",
        "channel": "carrier pigeon",
        "reason": None,
        "resolved": None,
    }
    assert orjson.loads(produced[usage["event_id"]].value)["payload"]["distinct_counterparts"] == 5


async def test_v1_events_using_v2_are_rejected_by_index_and_v1_is_unchanged(
    client: httpx.AsyncClient, env: dict[str, Any]
) -> None:
    subscriber = sid()
    plain = profile(subscriber)  # no schema_version: version 1
    uses_v2 = profile(subscriber)
    uses_v2["payload"] |= {"lines": 2, "handset": {"model": "x"}}
    v1_contact = event("contact", subscriber, {"team": "care"}) | {"schema_version": 1}
    v1_bill = event(
        "billing",
        subscriber,
        {"period": "2026-10", "amount_due": "40", "plan_id": "P-1", "overage_charge": "5"},
    )
    response = await client.post("/v1/events", json=[plain, uses_v2, v1_contact, v1_bill])
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 1
    assert [r["index"] for r in body["rejected"]] == [1, 2, 3]
    assert [r["event_id"] for r in body["rejected"]] == [
        uses_v2["event_id"],
        v1_contact["event_id"],
        v1_bill["event_id"],
    ]
    assert _locs(body["rejected"][0]) == {
        ("subscriber", "payload", "handset"): "handset needs schema_version 2",
        ("subscriber", "payload", "lines"): "lines needs schema_version 2",
    }
    assert _locs(body["rejected"][1]) == {
        ("contact", "event_type"): "event type contact needs schema_version 2"
    }
    assert _locs(body["rejected"][2]) == {
        ("billing", "payload", "overage_charge"): "overage_charge needs schema_version 2"
    }
    assert {e["type"] for r in body["rejected"] for e in r["errors"]} == {"needs_schema_version"}
    [record] = await read_topic(
        env["kafka_bootstrap_servers"], Topics(env["kafka_topic_prefix"]).events, count=1
    )
    stored = orjson.loads(record.value)
    assert stored["event_id"] == plain["event_id"]
    # A version 1 event goes on as version 1, without the fields it did not send.
    assert stored["schema_version"] == 1
    assert set(stored["payload"]) == set(SubscriberPayload.model_fields) - V2_FIELDS["subscriber"]


async def test_a_lone_bad_v2_profile_is_a_422_naming_its_index(client: httpx.AsyncClient) -> None:
    bad = _v2(profile(sid()))
    bad["payload"]["handset"] = {"model": "x", "colour": "red"}
    response = await client.post("/v1/events", json=bad)
    assert response.status_code == 422
    [rejection] = response.json()["details"]["rejected"]
    assert rejection["index"] == 0
    assert _locs(rejection) == {
        ("subscriber", "payload", "handset", "colour"): "Extra inputs are not permitted"
    }


async def test_duplicate_keys_are_rejected_by_index_and_the_rest_goes_on(
    client: httpx.AsyncClient, env: dict[str, Any]
) -> None:
    good = stop_notice(sid())
    twice = orjson.dumps(stop_notice(sid()))[:-1] + b',"source":"again"}'
    nested = orjson.dumps(stop_notice(sid())).replace(b'"reason":', b'"reason":"x","reason":', 1)
    body = b"\n".join([twice, orjson.dumps(good), nested])
    response = await client.post(
        "/v1/events", content=body, headers={"content-type": "application/x-ndjson"}
    )
    assert response.status_code == 202, response.text
    result = response.json()
    assert result["accepted"] == 1
    errors = {r["index"]: r["errors"][0] for r in result["rejected"]}
    assert errors[0]["msg"] == "duplicate key 'source'" and errors[0]["type"] == "duplicate_key"
    assert errors[2]["msg"] == "duplicate key 'reason'"
    # As a JSON array too, and only the good event reaches the topic.
    array = b"[" + b",".join([twice, orjson.dumps(stop_notice(sid()))]) + b"]"
    response = await client.post(
        "/v1/events", content=array, headers={"content-type": "application/json"}
    )
    assert response.status_code == 202 and [r["index"] for r in response.json()["rejected"]] == [0]
    records = await read_topic(
        env["kafka_bootstrap_servers"],
        Topics(env["kafka_topic_prefix"]).events,
        count=3,
        timeout_s=5,
    )
    assert len(records) == 2 and good["event_id"] in {
        orjson.loads(r.value)["event_id"] for r in records
    }


async def _drop_events_topic(env: dict[str, Any]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=env["kafka_bootstrap_servers"])
    await admin.start()
    try:
        await admin.delete_topics([Topics(env["kafka_topic_prefix"]).events])
    finally:
        await admin.close()


async def test_a_lost_events_topic_is_a_503_never_a_202_when_not_recreating(
    env: dict[str, Any],
) -> None:
    settings = IngestSettings(**env, kafka_recreate_lost_topics=False, ingest_topic_check_ttl_s=0)
    async for client in _client(settings):
        assert (await client.post("/v1/events", json=stop_notice(sid()))).status_code == 202
        await _drop_events_topic(env)
        response = await client.post("/v1/events", json=stop_notice(sid()))
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "https://churnwatch.dev/problems/service-unavailable"
        assert response.json()["details"]["reason"] == "missing"
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"] == {
            "broker": True,
            "topics": False,
        }
    # Nothing named the topic: it was not auto-created behind our back either.
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=env["kafka_bootstrap_servers"])
    await admin.start()
    try:
        assert Topics(env["kafka_topic_prefix"]).events not in await admin.list_topics()
    finally:
        await admin.close()


async def test_a_lost_events_topic_is_recreated_with_its_partitions_by_default(
    env: dict[str, Any],
) -> None:
    settings = IngestSettings(**env, ingest_topic_check_ttl_s=0)
    async for client in _client(settings):
        assert (await client.post("/v1/events", json=stop_notice(sid()))).status_code == 202
        await _drop_events_topic(env)
        # Re-created at once, then refused while it settles (INGEST_TOPIC_SETTLE_S).
        response = await client.post("/v1/events", json=stop_notice(sid()))
        assert response.status_code == 503, response.text
        assert response.json()["details"]["reason"] == "settling"
        metrics = (await client.get("/metrics")).text
        assert 'churnwatch_kafka_topics_recreated_total{service="ingest"}' in metrics
        accepted: list[str] = []
        refused: list[str] = []

        async def accepted_again(
            c: httpx.AsyncClient = client, ids: list[str] = accepted, no: list[str] = refused
        ) -> bool:
            item = stop_notice(sid())
            if (await c.post("/v1/events", json=item)).status_code == 202:
                ids.append(item["event_id"])
            else:
                no.append(item["event_id"])
            return bool(ids)

        await eventually(accepted_again, timeout_s=10, what="a 202 once the topic settled")
    topic = Topics(env["kafka_topic_prefix"]).events
    records = await read_topic(env["kafka_bootstrap_servers"], topic, count=10, timeout_s=5)
    on_topic = [orjson.loads(r.value)["event_id"] for r in records]
    # The re-created topic holds what was accepted after (the first event went with
    # the old one). A 503 means "not acknowledged, retry", not "absent": the first
    # write into the new log is refused because its offset went back (the ledger
    # cannot tell it from a phantom ack), and may still be there; consumers drop
    # the client's retry by event id.
    assert set(accepted) <= set(on_topic)
    assert set(on_topic) <= set(accepted) | set(refused)


# --- the landing topic's parser (the Kafka entry point, issue 18) ----------------------


def _landing(value: bytes | None, headers: list[tuple[str, bytes]] | None = None) -> Any:
    size = len(value) if value else 0
    return ConsumerRecord("p.events.in", 0, 7, 0, 0, b"k", value, None, 1, size, headers or [])


async def test_the_landing_parser_refuses_what_http_ingest_refuses_with_a_reason_class() -> None:
    parse = LandingParser(max_record_bytes=2048)
    subscriber = sid()
    notice = stop_notice(subscriber)
    assert parse(_landing(orjson.dumps(notice))).event_id == uuid.UUID(notice["event_id"])
    assert (
        parse(_landing(orjson.dumps(notice), [("event_type", b"stop_notice")])).subscriber_id
        == subscriber
    )
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    future = {**notice, "occurred_at": tomorrow.isoformat()}
    cases = {
        "empty": _landing(None),
        "too_large": _landing(orjson.dumps({**notice, "pad": "x" * 4096})),
        "decode": _landing(b'{"event_id": '),
        "not_an_event": _landing(orjson.dumps([notice])),
        "duplicate_key": _landing(orjson.dumps(notice)[:-1] + b',"event_type":"cdr"}'),
        "validation": _landing(orjson.dumps({**notice, "event_type": "fax"})),
        "future_time": _landing(orjson.dumps(future)),
        "header_mismatch": _landing(orjson.dumps(notice), [("event_type", b"cdr")]),
    }
    assert set(cases) == set(REASON_CLASSES)
    for reason_class, record in cases.items():
        with pytest.raises(LandingRejected) as refused:
            parse(record)
        assert refused.value.reason_class == reason_class, (reason_class, str(refused.value))
        assert str(refused.value)
