"""Topic configs on the real embedded broker (Tansu): created with them, drift reported.

``ensure_topics`` gives every topic it creates ``KAFKA_REPLICATION_FACTOR``,
``min.insync.replicas`` and the retention for its role (``topic_configs``); an
existing topic whose configs differ is reported and left as it is;
``KAFKA_CREATE_TOPICS=false`` creates nothing. Idempotence is checked offline: the
embedded broker answers ``InitProducerId`` with an error (docs/kafka-producers.md).
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from shared.kafka import (
    ConfigDrift,
    client_options,
    ensure_topics,
    make_producer,
    topic_config_drift,
    topic_configs,
)
from shared.settings import BaseServiceSettings
from shared.topics import Topics
from tests.helpers import eventually

DAY_MS = 86_400_000


def _settings(env: dict[str, Any], **overrides: Any) -> BaseServiceSettings:
    return BaseServiceSettings(
        **{
            **env,
            "kafka_min_insync_replicas": 1,
            "kafka_retention_ms": 7 * DAY_MS,
            "kafka_landing_retention_ms": 3 * DAY_MS,
            "kafka_dlq_retention_ms": 30 * DAY_MS,
            **overrides,
        }
    )


async def _configs(settings: BaseServiceSettings, names: list[str]) -> dict[str, dict[str, str]]:
    """Each topic's configs as the broker describes them."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        await admin.close()
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            assert resource["error_code"] == 0, resource
            out[resource["resource_name"]] = {
                e["config_names"]: e["config_value"] for e in resource["config_entries"]
            }
    return out


def test_topic_configs_per_role() -> None:
    settings = _settings({"kafka_topic_prefix": "cw"})
    topics = Topics("cw")
    pipeline = {"cleanup.policy": "delete", "min.insync.replicas": "1", "retention.ms": "604800000"}
    for name in (topics.events, topics.scores, topics.tasks, topics.outcomes):
        assert topic_configs(settings, name) == pipeline
    assert topic_configs(settings, topics.landing)["retention.ms"] == str(3 * DAY_MS)
    assert topic_configs(settings, topics.dlq)["retention.ms"] == str(30 * DAY_MS)
    # Unset: the broker's default, so nothing to give (and nothing to compare).
    assert topic_configs(BaseServiceSettings(), topics.events) == {"cleanup.policy": "delete"}


def test_min_insync_replicas_cannot_exceed_the_replication_factor() -> None:
    with pytest.raises(ValueError, match="KAFKA_MIN_INSYNC_REPLICAS"):
        BaseServiceSettings(kafka_replication_factor=2, kafka_min_insync_replicas=3)
    BaseServiceSettings(kafka_replication_factor=3, kafka_min_insync_replicas=2)


def test_sasl_needs_a_mechanism_and_credentials() -> None:
    with pytest.raises(ValueError, match="KAFKA_SASL_MECHANISM"):
        BaseServiceSettings(kafka_security_protocol="SASL_SSL")
    # Settings without a Kafka user build (the migration Job shares the ConfigMap) ...
    settings = BaseServiceSettings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512"
    )
    assert settings.missing_kafka_credentials() == ["KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"]
    # ... but no Kafka client is made from them.
    with pytest.raises(ValueError, match="KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"):
        client_options(settings)


async def test_created_topics_carry_the_configs(env: dict[str, Any]) -> None:
    settings = _settings(env)
    topics = Topics(settings.kafka_topic_prefix)
    created = await ensure_topics(settings)
    assert sorted(created) == sorted(topics.all())
    described = await _configs(settings, topics.all())
    for name in topics.all():
        for key, value in topic_configs(settings, name).items():
            assert described[name].get(key) == value, (name, key)
    assert described[topics.dlq]["retention.ms"] == str(30 * DAY_MS)
    # Created once: a second start finds them and reports no drift.
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        assert await topic_config_drift(admin, settings, topics.all()) == []
    finally:
        await admin.close()
    assert await ensure_topics(settings) == []


async def test_a_differing_config_is_reported_not_altered(
    env: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(env)
    topics = Topics(settings.kafka_topic_prefix)
    # An operator (or an older release) made the events topic with one day's retention.
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    topics.events,
                    settings.kafka_topic_partitions,
                    1,
                    topic_configs={
                        "retention.ms": str(DAY_MS),
                        "cleanup.policy": "delete",
                        "min.insync.replicas": "1",
                    },
                )
            ]
        )
        with caplog.at_level(logging.WARNING, logger="shared.kafka"):
            created = await ensure_topics(settings)
        assert topics.events not in created
        drift = await topic_config_drift(admin, settings, [topics.events])
    finally:
        await admin.close()
    assert ConfigDrift(topics.events, "retention.ms", str(DAY_MS), str(7 * DAY_MS)) in drift
    reported = [r for r in caplog.records if r.getMessage().startswith("topic config differs")]
    assert [(r.topic, r.config, r.actual) for r in reported] == [  # type: ignore[attr-defined]
        (topics.events, "retention.ms", str(DAY_MS))
    ]
    # Left as it was: the operator decides.
    assert (await _configs(settings, [topics.events]))[topics.events]["retention.ms"] == str(DAY_MS)


async def test_create_topics_off_creates_nothing(
    env: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(env, kafka_create_topics=False)
    with caplog.at_level(logging.ERROR, logger="shared.kafka"):
        assert await ensure_topics(settings) == []
    assert any("KAFKA_CREATE_TOPICS is false" in r.getMessage() for r in caplog.records)
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        listed = set(await admin.list_topics())
    finally:
        await admin.close()
    assert not listed & set(Topics(settings.kafka_topic_prefix).all())


async def test_ingest_waits_for_topics_it_may_not_create(env: dict[str, Any]) -> None:
    """KAFKA_CREATE_TOPICS=false: ingest starts, is not ready, and is once they exist.

    What production does while Strimzi's Topic Operator makes the topics.
    """
    settings = IngestSettings(
        **env, kafka_create_topics=False, ingest_topic_check_ttl_s=0, ingest_landing_enabled=False
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["topics"] is False
            # The guard did not make them either (KAFKA_RECREATE_LOST_TOPICS is on).
            admin = AIOKafkaAdminClient(**client_options(settings))
            await admin.start()
            try:
                assert Topics(settings.kafka_topic_prefix).events not in await admin.list_topics()
            finally:
                await admin.close()
            # The operator (here: a creating ensure_topics) makes them.
            await ensure_topics(_settings(env))

            async def is_ready() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await eventually(is_ready, timeout_s=30, what="ingest ready once the topics exist")


async def test_idempotent_producer_accepts_the_producer_settings() -> None:
    """aiokafka refuses idempotence with acks other than all; ours is all.

    aiokafka keeps one request in flight per broker connection (its sender skips
    a node with a request outstanding), within Kafka's limit of 5 for idempotent
    producers, so ordering and de-duplication hold without a max-in-flight setting.
    """
    settings = BaseServiceSettings(kafka_enable_idempotence=True)
    producer = make_producer(settings)
    try:
        assert producer._txn_manager is not None  # idempotence on
        assert producer._sender._acks == -1  # acks=all
    finally:
        await producer.stop()  # never started: closes its client only
    with pytest.raises(ValueError, match="acks"):
        make_producer(settings, acks=1)
