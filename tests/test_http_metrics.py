"""The HTTP request metrics (shared/metrics.py on prometheus-fastapi-instrumentator)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.responses import StreamingResponse
from prometheus_client import REGISTRY

from shared.metrics import HTTP_LATENCY, HTTP_REQUESTS, UNMATCHED, install_metrics

SERVICE = "http-metrics-test"


def _count(route: str, method: str, status: str) -> float:
    return float(HTTP_REQUESTS.labels(SERVICE, route, method, status)._value.get())


def _latency_sum(route: str) -> float:
    value = REGISTRY.get_sample_value(
        "churnwatch_http_request_duration_seconds_sum",
        {"service": SERVICE, "route": route, "method": "GET"},
    )
    return value or 0.0


def _app() -> FastAPI:
    router = APIRouter(prefix="/v1")

    @router.get("/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    @router.get("/broken")
    async def broken() -> None:
        raise RuntimeError("a bug")

    @router.get("/export")
    async def export() -> StreamingResponse:
        async def lines() -> AsyncIterator[bytes]:
            for n in range(3):
                await asyncio.sleep(0.1)  # a slow export: the body takes time to write
                yield f"{n}\n".encode()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    app = FastAPI()
    install_metrics(app, SERVICE)
    app.include_router(router)
    return app


@pytest.mark.asyncio
async def test_routes_statuses_and_unmatched_paths_are_labelled_boundedly() -> None:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    before = {
        "ok": _count("/v1/things/{thing_id}", "GET", "2xx"),
        "405": _count("/v1/things/{thing_id}", "POST", "4xx"),
        "404": _count(UNMATCHED, "GET", "4xx"),
        "500": _count("/v1/broken", "GET", "5xx"),
    }
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/v1/things/a")).status_code == 200
        assert (await client.get("/v1/things/b")).status_code == 200
        assert (await client.post("/v1/things/a")).status_code == 405
        assert (await client.get("/nowhere/+447700900123")).status_code == 404
        assert (await client.get("/v1/broken")).status_code == 500
        metrics = await client.get("/metrics")
    assert _count("/v1/things/{thing_id}", "GET", "2xx") == before["ok"] + 2
    assert _count("/v1/things/{thing_id}", "POST", "4xx") == before["405"] + 1
    assert _count(UNMATCHED, "GET", "4xx") == before["404"] + 1
    assert _count("/v1/broken", "GET", "5xx") == before["500"] + 1  # an exception is a 5xx
    # Neither a raw path nor the instrumentator's own default metrics are exported.
    text = metrics.text
    assert "7700900123" not in text and "/v1/things/a" not in text
    assert "churnwatch_http_requests_total{" in text
    assert "\nhttp_requests_total" not in text and "http_request_duration_highr" not in text
    assert HTTP_LATENCY._labelnames == ("service", "route", "method")
    assert HTTP_REQUESTS._labelnames == ("service", "route", "method", "status")


@pytest.mark.asyncio
async def test_a_streamed_response_is_timed_to_its_last_byte() -> None:
    transport = httpx.ASGITransport(app=_app())
    before = _latency_sum("/v1/export")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/v1/export")
    assert response.text == "0\n1\n2\n"
    assert _latency_sum("/v1/export") - before >= 0.3
