"""The importer's and the simulator's resend of a 503 (churnwatch/resend.py, tenacity)."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import orjson
import pytest

from churnwatch.importer.output import post_events
from churnwatch.resend import RETRY_AFTER_CAP_S, post_with_resend, retry_after_s
from churnwatch.simulation import Simulation, SimulationConfig
from churnwatch.simulator_stream import stream_to_ingest


def _answers(*statuses: tuple[int, dict[str, str]]) -> tuple[httpx.Client, list[int]]:
    """A client whose ingest answers these (status, headers) in turn, then 202s."""
    queue = list(statuses)
    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = request.content
        n = len(orjson.loads(body)) if body.startswith(b"[") else len(body.splitlines())
        sizes.append(n)
        if queue:
            status, headers = queue.pop(0)
            return httpx.Response(status, headers=headers, json={"error": "unavailable"})
        return httpx.Response(202, json={"accepted": n, "rejected": []})

    return httpx.Client(transport=httpx.MockTransport(handler)), sizes


def test_retry_after_reads_seconds_and_http_dates() -> None:
    def answer(value: str | None) -> httpx.Response:
        return httpx.Response(503, headers={} if value is None else {"Retry-After": value})

    now = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
    assert retry_after_s(answer("7")) == 7.0
    assert retry_after_s(answer("2.5")) == 2.5
    assert retry_after_s(answer("-3")) == 0.0
    assert retry_after_s(answer("Mon, 07 Dec 2026 12:00:09 GMT"), now=now) == 9.0
    assert retry_after_s(answer("Mon, 07 Dec 2026 11:00:00 GMT"), now=now) == 0.0
    assert retry_after_s(answer(None)) == 1.0
    assert retry_after_s(answer("soon"), default_s=4.0) == 4.0


def test_a_503_is_resent_after_its_retry_after_capped() -> None:
    client, sizes = _answers((503, {"Retry-After": "3"}), (503, {"Retry-After": "3600"}), (503, {}))
    waits: list[float] = []
    response = post_with_resend(lambda: client.post("http://ingest/v1/events"), sleep=waits.append)
    assert response.status_code == 202
    assert waits == [3.0, RETRY_AFTER_CAP_S, 1.0]
    assert len(sizes) == 4


def test_the_last_503_is_returned_when_the_attempts_are_used_up() -> None:
    client, sizes = _answers(*[(503, {"Retry-After": "0"})] * 5)
    waits: list[float] = []
    response = post_with_resend(
        lambda: client.post("http://ingest/v1/events"), attempts=3, sleep=waits.append
    )
    assert response.status_code == 503
    assert len(sizes) == 3 and waits == [0.0, 0.0]


def test_other_errors_are_not_resent() -> None:
    client, sizes = _answers((500, {"Retry-After": "1"}))
    waits: list[float] = []
    response = post_with_resend(lambda: client.post("http://ingest/v1/events"), sleep=waits.append)
    assert response.status_code == 500 and len(sizes) == 1 and waits == []

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    down = httpx.Client(transport=httpx.MockTransport(refuse))
    with pytest.raises(httpx.ConnectError):
        post_with_resend(lambda: down.post("http://ingest/v1/events"), sleep=waits.append)
    assert waits == []


def test_the_importer_resends_and_then_gives_up_with_the_503() -> None:
    client, sizes = _answers((503, {"Retry-After": "2"}))
    waits: list[float] = []
    lines = [orjson.dumps({"n": i}) for i in range(3)]
    assert post_events(lines, "http://ingest", batch_size=2, client=client, sleep=waits.append) == (
        3,
        0,
    )
    assert sizes == [2, 2, 1] and waits == [2.0]

    client, sizes = _answers(*[(503, {"Retry-After": "0"})] * 5)
    with pytest.raises(httpx.HTTPStatusError) as refused:
        post_events(lines, "http://ingest", client=client, attempts=2, sleep=waits.append)
    assert refused.value.response.status_code == 503 and sizes == [3, 3]


def test_the_simulator_resends_a_503_after_its_retry_after() -> None:
    client, sizes = _answers((503, {"Retry-After": "4"}))
    waits: list[float] = []
    sim = Simulation(SimulationConfig(subscribers=20, days=1, seed=3, churn_rate=0.0))
    stats = stream_to_ingest(sim, "http://ingest", client=client, sleep=waits.append)
    assert waits == [4.0]
    assert stats.events == stats.accepted == sum(sizes) - sizes[0]
