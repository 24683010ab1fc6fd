"""Ingest against the real broker: validation per event, acks before 202, limits, 503."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from churnwatch.embedded import EmbeddedBroker
from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from shared.topics import Topics
from tests.helpers import calls, event, profile, read_topic, sid, stop_notice

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
    error = response.json()["error"]
    assert error["code"] == "unprocessable_entity"
    assert error["details"]["accepted"] == 0
    assert error["details"]["rejected"][0]["index"] == 0


async def test_malformed_json_and_wrong_media_type(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/events", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"
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
        assert "INGEST_MAX_BATCH_EVENTS" in response.json()["error"]["message"]
        response = await client.post(
            "/v1/events",
            content=b"[" + b" " * 5000 + b"]",
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 413
        assert response.json()["error"]["details"]["limit"] == 4096


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
    assert ready.status_code == 200 and ready.json()["checks"] == {"broker": True}
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
            assert "nothing was accepted" in response.json()["error"]["message"]
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
