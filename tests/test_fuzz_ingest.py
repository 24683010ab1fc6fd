"""Property-based fuzzing of ingest: malformed bodies never get a 5xx nor crash it.

Ingest runs as its own process (``python -m services.ingest``) on loopback,
producing to the session broker; hypothesis throws random bytes, arbitrary JSON
(huge numbers, unicode, deep nesting), mutated events and NDJSON with bad lines
at ``POST /v1/events``. Every answer must be a 2xx or a 4xx with the one error
body shape, and the process must still be alive and accepting afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from churnwatch.embedded import free_port
from tests.conftest import REPO, Stack, as_environ, fresh_env
from tests.helpers import calls, event, profile, sid, stop_notice

EXAMPLES = 150  # per strategy; four strategies, ~600 requests, a few seconds in all
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # one request's time depends on the machine's load, not on the input
    database=None,  # no .hypothesis/ directory in the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MEDIA = [
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "application/x-ndjson",
    "application/jsonl",
    "text/plain",
    "multipart/form-data; boundary=x",
    "",
]

# Any JSON value: unbounded integers (beyond 64 bits), any unicode, nesting.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=25,
)
FIELDS = [
    "event_id",
    "event_type",
    "subscriber_id",
    "occurred_at",
    "source",
    "schema_version",
    "payload",
]
PAYLOAD_FIELDS = [
    "reason",
    "suspension_at",
    "amount_to_pay",
    "tier",
    "phone",
    "monthly_value",
    "service",
    "duration_s",
    "direction",
    "counterpart_network",
    "kind",
]


def _valid(kind: int) -> dict[str, Any]:
    subscriber = sid()
    if kind == 0:
        return stop_notice(subscriber)
    if kind == 1:
        return profile(subscriber)
    if kind == 2:
        return calls(subscriber, n=1, competitor=True, days_ago=1)[0]
    return event("churn", subscriber, {"kind": "port_out"})


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with a few fields replaced by anything, or removed."""
    item = _valid(draw(st.integers(0, 3)))
    for _ in range(draw(st.integers(1, 3))):
        in_payload = draw(st.booleans()) and isinstance(item.get("payload"), dict)
        target: dict[str, Any] = item["payload"] if in_payload else item
        key = draw(st.sampled_from(PAYLOAD_FIELDS if in_payload else FIELDS) | st.text(max_size=8))
        if draw(st.booleans()):
            target.pop(key, None)
        else:
            target[key] = draw(json_values)
    return item


def _dump(value: Any) -> bytes:
    # The stdlib, not orjson: it writes integers of any size, as a hostile client
    # would; raw UTF-8 rather than \u escapes, the harder case for the decoder.
    return json.dumps(value, ensure_ascii=False).encode()


@pytest.fixture(scope="module")
def ingest(stack: Stack) -> Iterator[str]:
    """Ingest as a child process on a free port; its base URL."""
    port = free_port()
    environ = {
        **os.environ,
        **as_environ(fresh_env(stack)),
        "INGEST_PORT": str(port),
        "PYTHONPATH": str(REPO),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.ingest"],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=url, timeout=2) as client:
            while True:
                assert process.poll() is None, "ingest exited at start"
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "ingest not ready after 60 s"
                time.sleep(0.1)  # polling a child process's port; there is nothing to await
        yield url
    finally:
        process.terminate()
        process.wait(30)


def test_malformed_bodies_never_get_a_5xx_and_ingest_stays_up(ingest: str) -> None:
    seen: Counter[int] = Counter()
    client = httpx.Client(base_url=ingest, timeout=30)

    def post(body: bytes, media: str) -> None:
        response = client.post("/v1/events", content=body, headers={"content-type": media})
        seen[response.status_code] += 1
        assert response.status_code < 500, (response.status_code, response.text[:500], body[:200])
        if response.status_code == 202:
            assert response.json()["accepted"] >= 1
        else:
            # The one error body shape (shared/errors.py), whatever the input.
            error = response.json()["error"]
            assert isinstance(error["code"], str) and isinstance(error["message"], str)

    @FUZZ
    @given(st.binary(max_size=2048), st.sampled_from(MEDIA))
    def random_bytes(body: bytes, media: str) -> None:
        post(body, media)

    @FUZZ
    @given(json_values, st.sampled_from(MEDIA[:3]))
    def any_json(value: Any, media: str) -> None:
        post(_dump(value), media)

    @FUZZ
    @given(st.lists(mutated_events(), min_size=1, max_size=4), st.booleans())
    def mutated(items: list[dict[str, Any]], add_a_good_one: bool) -> None:
        body = [*items, _valid(0)] if add_a_good_one else items
        post(_dump(body), "application/json")

    bad_line = st.binary(max_size=200).map(lambda b: b.replace(b"\n", b" ")) | st.text(
        max_size=80
    ).map(lambda t: t.replace("\n", " ").encode())

    @FUZZ
    @given(st.lists(mutated_events().map(_dump) | bad_line, min_size=1, max_size=6))
    def ndjson(lines: list[bytes]) -> None:
        post(b"\n".join(lines) + b"\n", "application/x-ndjson")

    with client:
        random_bytes()
        any_json()
        mutated()
        ndjson()
        # The fuzz reached both sides: events accepted and bodies refused.
        assert seen[202] > 0 and sum(n for s, n in seen.items() if 400 <= s < 500) > 0, seen
        # Still alive and still accepting after all of it.
        assert client.get("/healthz").status_code == 200
        answer = client.post("/v1/events", json=stop_notice(sid()))
        assert answer.status_code == 202 and answer.json()["accepted"] == 1
