"""Kafka plumbing: client options, producer, topic creation and a broker probe.

The same code runs against the embedded Tansu broker and Apache Kafka; only
``KAFKA_*`` settings change.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.helpers import create_ssl_context

from shared.settings import BaseServiceSettings
from shared.topics import Topics

log = logging.getLogger(__name__)


def client_options(settings: BaseServiceSettings) -> dict[str, Any]:
    """Connection options common to producers, consumers and the admin client."""
    opts: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
        "request_timeout_ms": settings.kafka_request_timeout_ms,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        opts["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_sasl_mechanism:
        opts["sasl_mechanism"] = settings.kafka_sasl_mechanism
        opts["sasl_plain_username"] = settings.kafka_sasl_username
        opts["sasl_plain_password"] = (
            settings.kafka_sasl_password.get_secret_value()
            if settings.kafka_sasl_password
            else None
        )
    return opts


def topics_for(settings: BaseServiceSettings) -> Topics:
    """The topic names under the configured prefix."""
    return Topics(settings.kafka_topic_prefix)


def make_producer(settings: BaseServiceSettings, **overrides: Any) -> AIOKafkaProducer:
    """A producer that waits for every in-sync replica (``acks=all``)."""
    opts = client_options(settings)
    opts.update(
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        linger_ms=5,
        # Keep the whole send (incl. retries) within the request timeout, so a dead
        # broker surfaces as an error instead of a request that hangs.
        retry_backoff_ms=100,
    )
    opts.update(overrides)
    return AIOKafkaProducer(**opts)


async def ensure_topics(settings: BaseServiceSettings) -> list[str]:
    """Create any missing churnwatch topic; return the names created.

    Existing topics with a different partition count are reported, not altered:
    co-partitioning is broken and an operator must decide.
    """
    topics = topics_for(settings)
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        # list_topics first: a metadata request naming a missing topic makes some
        # brokers (Tansu, Kafka with auto.create.topics.enable) create it with
        # their default partition count, which would break co-partitioning.
        names = set(await admin.list_topics())
        wanted = [name for name in topics.all() if name in names]
        existing = await admin.describe_topics(wanted) if wanted else []
        present = {t["topic"]: len(t["partitions"]) for t in existing if t["error_code"] == 0}
        for name, partitions in present.items():
            if name != topics.dlq and partitions != settings.kafka_topic_partitions:
                log.warning(
                    "topic partition count differs from KAFKA_TOPIC_PARTITIONS",
                    extra={
                        "topic": name,
                        "partitions": partitions,
                        "expected": settings.kafka_topic_partitions,
                    },
                )
        missing = [name for name in topics.all() if name not in present]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        name=name,
                        num_partitions=settings.kafka_topic_partitions,
                        replication_factor=settings.kafka_replication_factor,
                    )
                    for name in missing
                ]
            )
            # 36 = TOPIC_ALREADY_EXISTS: another replica won the race; fine.
            for topic_error in response.topic_errors:
                name, code = topic_error[0], topic_error[1]
                if code not in (0, 36):
                    raise RuntimeError(f"could not create topic {name}: error code {code}")
            log.info("created topics", extra={"topics": missing})
        return missing
    finally:
        await admin.close()


async def ping_broker(settings: BaseServiceSettings) -> bool:
    """True if the broker answers a metadata request."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    try:
        await admin.start()
        await admin.describe_cluster()
    except Exception:
        return False
    finally:
        await admin.close()
    return True
