"""Property-based fuzzing of ingest: malformed bodies never get a 5xx nor crash it.

Ingest runs as its own process (``python -m services.ingest``) on loopback,
producing to the session broker; hypothesis throws random bytes, arbitrary JSON
(huge numbers, unicode, deep nesting), mutated events and NDJSON with bad lines
at ``POST /v1/events``. Every answer must be a 2xx or a 4xx with the one error
body shape, and the process must still be alive and accepting afterwards. The
events topic is read back: exactly the events ingest said it accepted landed,
each once, and nothing it refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from churnwatch.embedded import free_port
from shared.topics import Topics
from tests.conftest import REPO, Stack, as_environ, fresh_env
from tests.helpers import calls, event, profile, read_topic, sid, stop_notice

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


@dataclass(frozen=True)
class Ingest:
    """Where the ingest child listens, and the topic it produces to."""

    url: str
    bootstrap: str
    topic: str


@pytest.fixture(scope="module")
def ingest(stack: Stack) -> Iterator[Ingest]:
    """Ingest as a child process on a free port."""
    port = free_port()
    env = fresh_env(stack)
    environ = {
        **os.environ,
        **as_environ(env),
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
        yield Ingest(url, stack.bootstrap_servers, Topics(env["kafka_topic_prefix"]).events)
    finally:
        process.terminate()
        process.wait(30)


def _items(body: bytes, media: str) -> list[Any]:
    """The request's events as ingest splits them (None for a line that is not JSON)."""
    if "ndjson" in media.lower() or "jsonl" in media.lower():
        items: list[Any] = []
        for line in body.split(b"\n"):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except ValueError:
                    items.append(None)
        return items
    decoded = json.loads(body)
    return decoded if isinstance(decoded, list) else [decoded]


def test_malformed_bodies_never_get_a_5xx_and_ingest_stays_up(ingest: Ingest) -> None:
    seen: Counter[int] = Counter()
    client = httpx.Client(base_url=ingest.url, timeout=30)
    # The event ids ingest said it accepted: exactly these must be on the topic.
    accepted: list[str] = []

    def post(body: bytes, media: str) -> None:
        response = client.post("/v1/events", content=body, headers={"content-type": media})
        seen[response.status_code] += 1
        assert response.status_code < 500, (response.status_code, response.text[:500], body[:200])
        if response.status_code == 202:
            result = response.json()
            assert result["accepted"] >= 1
            rejected = {r["index"] for r in result["rejected"]}
            items = _items(body, media)
            ids = [str(item["event_id"]) for i, item in enumerate(items) if i not in rejected]
            assert len(ids) == result["accepted"], (result, body[:300])
            accepted.extend(ids)
        else:
            # Problem details (shared/problems.py), whatever the input.
            assert response.headers["content-type"] == "application/problem+json"
            error = response.json()
            assert error["status"] == response.status_code
            assert isinstance(error["code"], str) and isinstance(error["detail"], str)

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
        last = stop_notice(sid())
        answer = client.post("/v1/events", json=last)
        assert answer.status_code == 202 and answer.json()["accepted"] == 1
        accepted.append(last["event_id"])
    # Read the topic back: exactly the accepted events landed, each once, and
    # nothing a 4xx refused (one more than expected is asked for, so an extra
    # record would be read; the wait for it is the price).
    records = asyncio.run(
        read_topic(ingest.bootstrap, ingest.topic, count=len(accepted) + 1, timeout_s=10)
    )
    landed = Counter(json.loads(r.value)["event_id"] for r in records)
    assert landed == Counter(accepted), (
        f"{len(records)} records for {len(accepted)} accepted events; "
        f"extra {sorted(set(landed) - set(accepted))[:5]}, "
        f"missing {sorted(set(accepted) - set(landed))[:5]}, "
        f"twice {[i for i, n in landed.items() if n > 1][:5]}"
    )
