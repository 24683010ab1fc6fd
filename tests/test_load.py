"""A short, bounded load test of ingest (bench/load.py) on the session broker.

Five seconds of eight closed-loop clients posting NDJSON batches to an ingest
process on loopback: no error of any kind, and every accepted event on the topic.
The figures themselves are for ``python -m bench.load`` (docs/faults.md).
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.load import events_on_topic, ingest_process, run_load
from churnwatch.embedded import free_port
from shared.topics import Topics
from tests.conftest import as_environ

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.mark.timeout(90)
async def test_five_seconds_of_load_without_an_error_and_nothing_lost(
    env: dict[str, Any],
) -> None:
    async with ingest_process(as_environ(env), free_port()) as url:
        report = await run_load(url, seconds=5, concurrency=8, batch=50)
    assert report.errors == 0, report.error_kinds
    assert report.requests > 0 and report.events_accepted == report.requests * 50
    # Read back from a topic no other test writes: every accepted event, once.
    topic = Topics(env["kafka_topic_prefix"]).events
    stored = await events_on_topic(
        env["kafka_bootstrap_servers"], topic, expect=report.events_accepted
    )
    assert stored == report.events_accepted
    # Far below the produce timeout (INGEST_PRODUCE_TIMEOUT_S, 15 s): nothing stalled.
    assert report.max_ms < 5000, report.line()
